"""Shared fixtures. Tests that need ``../shared`` read it through ``MEGACTOR_ASSETS`` /
``MEGACTOR_WEIGHTS_DIR``; under CI (``CI=true``) a missing asset fails the test instead of skipping it."""

from __future__ import annotations

import os
import subprocess
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


# -- augmentation: tiny InsightFace-contract models, a tiny diffusers folder, a curated run of short spans --

@pytest.fixture(scope="session")
def tiny_faceswap_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-insightface-session")
    from tests import tiny_insightface

    return {"arcface": tiny_insightface.arcface(folder / "arcface.onnx"),
            "swapper": tiny_insightface.swapper(folder / "colour.onnx", "colour")}


@pytest.fixture(scope="session")
def tiny_stylizer(tmp_path_factory):
    from tests.tiny_diffusers import build_tiny_img2img

    return build_tiny_img2img(tmp_path_factory.mktemp("tiny-sd") / "pipeline")


@pytest.fixture(scope="session")
def augment_overrides(tiny_faceswap_models, tiny_stylizer, weights_root):
    """Settings for runs on tiny models: the real light detector, tiny ArcFace/swapper/diffusion, a 64 px
    stylization crop, and checks opened up (tiny models' faces are not faces: the checks' own tests use
    controlled swappers)."""
    os.environ.setdefault("MEGACTOR_WEIGHTS_DIR", str(weights_root))
    return {
        "faceswap.detector": "scrfd_500m",
        "faceswap.embedder_weights": str(tiny_faceswap_models["arcface"]),
        "faceswap.swapper_weights": str(tiny_faceswap_models["swapper"]),
        "stylize.model_dir": str(tiny_stylizer), "stylize.resolution": 64, "stylize.batch_size": 8,
        "checks.same_person_min": -1.0, "checks.closer_to_original_frac_max": 1.0,
        "checks.mouth_open_error_max": 10.0, "checks.eye_open_error_max": 10.0,
        "checks.min_motion_frames_frac": 0.0, "checks.flicker_ratio_max": None,
        "runtime.device": "cpu",
    }


@pytest.fixture(scope="session")
def faceless_clip(tmp_path_factory):
    """A 2 s talking-head-sized video with audio and no face in it."""
    path = tmp_path_factory.mktemp("faceless") / "wall.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=s=512x512:r=25",
                    "-f", "lavfi", "-i", "sine=f=220:sample_rate=16000", "-t", "2", "-pix_fmt", "yuv420p",
                    "-c:v", "libx264", "-c:a", "aac", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, tiny_manifest, faceless_clip):
    """A curated run: the two tiny-manifest clips cut to 2 s, a clip whose file is gone, a clip without a face."""
    from curation.io import part_files
    from curation.manifest import read_manifest
    from tests.tiny_manifest import shortened_manifest

    template = read_manifest(tiny_manifest).to_pylist()[0]
    gone = {**template, "clip_id": "00-gone", "video_id": "gone", "source_path": "/nonexistent/gone.mp4",
            "start_s": 0.0, "end_s": 2.0, "duration_s": 2.0}
    wall = {**template, "clip_id": "01-wall", "video_id": "wall", "source_path": str(faceless_clip),
            "start_s": 0.0, "end_s": 2.0, "duration_s": 2.0, "source_duration_s": 2.0,
            "face_track": [p for p in template["face_track"] if p["t"] < 2.0]}
    run = shortened_manifest(tiny_manifest, tmp_path_factory.mktemp("short-run"), 2.0, [gone, wall])
    assert len(part_files(run / "manifest")) == 1
    return run
