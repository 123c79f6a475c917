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
    """SyncNet in the real architecture with fixed random weights, saved in the original ``syncnet_v2.model``
    format (a state dict). The BatchNorm statistics are measured on the reference example clip (as a trained
    network's would be), so features depend on the input and the best AV offset stands clear of the rest."""
    import numpy as np
    import torch

    from curation import media
    from curation.scorers.sync_syncnet import to_int16
    from metrics.syncnet import SyncNet, mfcc_features

    clip = videos_dir / "syncnet_example.avi"
    frames = [f[:, :, ::-1] for _, f in media.iter_frames(clip, media.probe(clip), duration_s=2.0, fps=25)]
    audio = to_int16(media.decode_audio(clip, duration_s=4.0))
    torch.manual_seed(1234)
    net = SyncNet()
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average over the calibration batches
    net.train()
    with torch.no_grad():
        video = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float()
        net.forward_lip(torch.stack([video[:, i: i + 5] for i in range(0, len(frames) - 5, 2)]))
        mfcc = torch.from_numpy(mfcc_features(audio))
        net.forward_aud(torch.stack([mfcc[:, 4 * v: 4 * v + 20] for v in range(0, 90, 3)])[:, None])
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_random.model"
    torch.save(net.eval().state_dict(), path)
    return path
