"""Our SyncNet scores against the reference evaluation (syncnet-python) on the same clip and the same weights."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from curation.config import SyncConfig
from curation.scorers.sync_syncnet import score_video
from metrics import syncnet
from tests.conftest import REPO
from tests.metrics import reference_syncnet


@pytest.fixture(scope="module")
def example_clip(tmp_path_factory, videos_dir):
    """The first 6 s of the reference example, re-encoded losslessly (FFV1 + PCM), to keep the test short."""
    path = tmp_path_factory.mktemp("clip") / "syncnet_example_6s.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(videos_dir / "syncnet_example.avi"), "-t", "6",
                    "-c:v", "ffv1", "-c:a", "pcm_s16le", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def reference_frames(tmp_path_factory, example_clip):
    folder = tmp_path_factory.mktemp("reference")
    reference_syncnet.extract_like_reference(example_clip, folder)
    return folder


@pytest.fixture(scope="module")
def reference_scores(random_syncnet_weights, reference_frames):
    return reference_syncnet.evaluate(random_syncnet_weights, reference_frames)


def test_scores_match_the_reference_evaluation_on_random_weights(random_syncnet_weights, example_clip, reference_frames,
                                                                 reference_scores):
    ref_offset, ref_c, ref_d = reference_scores
    ours = score_video(str(example_clip), SyncConfig(weights=random_syncnet_weights, batch_size=48))

    assert ours["sync_offset"] == ref_offset
    assert ours["sync_c"] == pytest.approx(ref_c, abs=1e-3)
    assert ours["sync_d"] == pytest.approx(ref_d, abs=1e-3)
    frames = len(list(reference_frames.glob("*.jpg")))
    audio_frames = (reference_frames / "audio.wav").stat().st_size // (2 * 640)  # ~: the 44-byte header is < 640
    assert ours["sync_windows"] == min(frames, audio_frames) - 5
    # the comparison means something only if the best offset is well separated from the runner-up
    assert ref_c > 0.05


def test_offset_and_confidence_follow_the_reference_formulas():
    lip = torch.randn(40, syncnet.FEATURES)
    aud = torch.roll(lip, shifts=3, dims=0) + 0.01 * torch.randn(40, syncnet.FEATURES)  # audio 3 windows late
    scores = syncnet.sync_scores(lip, aud, vshift=15)
    assert scores.offset == -3
    assert scores.sync_d == pytest.approx(float(scores.mean_dists.min()))
    assert scores.sync_c == pytest.approx(float(np.median(scores.mean_dists) - scores.mean_dists.min()), abs=1e-5)
    assert scores.frame_conf.shape == (40,)


def test_streamed_lip_batches_equal_one_pass(random_syncnet_weights):
    net = syncnet.load_syncnet(random_syncnet_weights)
    frames = [np.random.default_rng(i).integers(0, 255, (224, 224, 3), dtype=np.uint8) for i in range(12)]
    one, seen_one = syncnet.embed_lips(net, iter(frames), 8, batch_size=64, device="cpu")
    small, seen_small = syncnet.embed_lips(net, iter(frames), 8, batch_size=3, device="cpu")
    assert seen_one == seen_small == 12 and one.shape == (8, syncnet.FEATURES)
    torch.testing.assert_close(one, small, rtol=1e-4, atol=1e-4)


def test_too_short_spans_are_a_clear_error(random_syncnet_weights):
    net = syncnet.load_syncnet(random_syncnet_weights)
    frames = [np.zeros((224, 224, 3), np.uint8)] * 10
    with pytest.raises(ValueError, match="too short"):
        syncnet.evaluate(net, iter(frames), np.zeros(640 * 5, np.int16))  # 5 audio frames: no window
    with pytest.raises(ValueError, match="too short"):
        syncnet.evaluate(net, iter(frames[:5]), np.zeros(640 * 40, np.int16))  # 5 video frames: none either


def test_audio_must_be_16_bit_pcm():
    with pytest.raises(TypeError, match="int16"):
        syncnet.mfcc_features(np.zeros(16000, dtype=np.float32))


def test_sync_command_prints_the_reference_numbers(random_syncnet_weights, example_clip, reference_scores):
    done = subprocess.run([sys.executable, "-m", "flows.cli", "sync", str(example_clip), "--weights",
                           str(random_syncnet_weights), "--json", "--device", "cpu"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(printed) == {"offset", "sync_c", "sync_d"}
    ref_offset, ref_c, ref_d = reference_scores
    assert printed["offset"] == ref_offset
    assert printed["sync_c"] == pytest.approx(ref_c, abs=1e-3)
    assert printed["sync_d"] == pytest.approx(ref_d, abs=1e-3)


def test_sync_command_errors_are_one_line(tmp_path):
    silent = tmp_path / "video_only.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=224x224:rate=25:duration=1",
                    str(silent)], check=True)
    for args, expected in (([str(tmp_path / "missing.mp4")], "video not found"),
                           ([str(silent), "--weights", str(silent)], "no audio stream")):
        done = subprocess.run([sys.executable, "-m", "flows.cli", "sync", *args], capture_output=True, text=True,
                              cwd=REPO, timeout=120)
        assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr


def _real_weights_or_skip():
    from curation import weights

    state, path = weights.status("syncnet_v2")
    if state != "ok":
        pytest.skip(f"the real SyncNet weights are not here ({path} is {state}); `megactor weights fetch syncnet_v2`")
    return path


def test_real_weights_give_the_reference_published_numbers(videos_dir):
    path = _real_weights_or_skip()
    config = SyncConfig(weights=path)
    example = score_video(str(videos_dir / "syncnet_example.avi"), config)
    # the reference's published output on its example: offset 3, Sync-D 5.353, Sync-C 10.021 (its frames went
    # through JPEG, ours are decoded directly, hence a tolerance beyond rounding)
    assert example["sync_offset"] == 3
    assert example["sync_d"] == pytest.approx(5.353, abs=0.05)
    assert example["sync_c"] == pytest.approx(10.021, abs=0.05)
    delayed = score_video(str(videos_dir / "syncnet_example_audio_delayed_400ms.avi"), config)
    assert abs(delayed["sync_offset"] - example["sync_offset"]) == 10  # 400 ms = 10 frames at 25 fps
