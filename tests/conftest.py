"""Shared fixtures. Tests that need ``../shared`` read it through ``MEGACTOR_ASSETS`` /
``MEGACTOR_WEIGHTS_DIR``; under CI (``CI=true``) a missing asset fails the test instead of skipping it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"


def _need(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path}; set MEGACTOR_ASSETS / MEGACTOR_WEIGHTS_DIR (CI: ../shared)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(Path(os.environ.get("MEGACTOR_ASSETS", DEFAULT_SHARED)), "shared assets")


@pytest.fixture(scope="session")
def videos_dir(shared_dir: Path) -> Path:
    return _need(shared_dir / "videos", "shared videos")


@pytest.fixture(scope="session")
def weights_root() -> Path:
    return _need(Path(os.environ.get("MEGACTOR_WEIGHTS_DIR", DEFAULT_SHARED / "weights")), "shared weights")


@pytest.fixture(scope="session")
def face_landmarker_path(weights_root: Path) -> Path:
    return _need(weights_root / "mediapipe" / "face_landmarker.task", "MediaPipe face landmarker")


@pytest.fixture(scope="session")
def random_syncnet_weights(tmp_path_factory, videos_dir) -> Path:
    """SyncNet in the real architecture with fixed random weights, in the original file format (see
    tests.metrics.reference_syncnet.random_weights)."""
    from tests.metrics.reference_syncnet import random_weights

    return random_weights(videos_dir / "syncnet_example.avi", tmp_path_factory.mktemp("syncnet") / "random.model")


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory, videos_dir, weights_root) -> Path:
    """Two shared clips curated by the real code into a manifest whose clips are all kept."""
    from tests.tiny_manifest import build_tiny_manifest

    os.environ.setdefault("MEGACTOR_WEIGHTS_DIR", str(weights_root))
    return build_tiny_manifest(videos_dir, tmp_path_factory.mktemp("tiny-manifest"))
