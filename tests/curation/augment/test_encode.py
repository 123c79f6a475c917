"""The variant writer: H.264 in mp4 at the clip's rate, frame k = the clip's frame k, the clip's audio from its first
sample, written atomically."""

from __future__ import annotations

import numpy as np
import pytest

from curation import media
from curation.encode import AudioSpan, VideoWriter, rate_text, remove_stale_temporaries

CLIP = "sadtalker_WDA_KatieHill_000.mp4"


def test_frames_and_audio_of_a_span_survive_the_round_trip(videos_dir, tmp_path):
    source = videos_dir / CLIP
    probe = media.probe(source)
    start, duration = 2.0, 2.0
    frames = [f for _, f in media.iter_frames(source, probe, start_s=start, duration_s=duration, fps=25)]
    out = tmp_path / "v.mp4"
    with VideoWriter(out, width=probe.width, height=probe.height, fps=25,
                     audio=AudioSpan(str(source), start, duration)) as writer:
        for frame in frames:
            writer.write(frame)
    written = media.probe(out)
    assert written.video_codec == "h264" and written.has_audio and written.audio_codec == "aac"
    assert written.fps_nominal == 25 and abs(written.duration_s - duration) < 0.05
    decoded = [f for _, f in media.iter_frames(out, written, fps=25)]
    assert len(decoded) == len(frames) == 50
    # frame k is frame k: each decoded frame is nearest its own source frame (x264 at crf 18 is near lossless)
    for k in (0, 17, 49):
        errors = [np.abs(decoded[k].astype(int) - frames[j]).mean() for j in range(max(0, k - 1), min(50, k + 2))]
        assert int(np.argmin(errors)) == min(k, 1) and min(errors) < 4
    original = media.decode_audio(source, start_s=start, duration_s=duration)
    copied = media.decode_audio(out)[: len(original)]
    middle = slice(1600, len(original) - 1600)
    lags = {lag: np.corrcoef(original[middle], np.roll(copied, lag)[middle])[0, 1] for lag in range(-80, 81, 16)}
    assert max(lags, key=lags.get) == 0 and lags[0] > 0.99  # aligned to the sample, not just correlated


def test_a_failed_write_leaves_no_file(tmp_path):
    out = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(out, width=64, height=64, fps=25) as writer:
            writer.write(np.zeros((64, 64, 3), np.uint8))
            raise RuntimeError("stop")
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="64x64x3"):
        with VideoWriter(out, width=64, height=64, fps=25) as writer:
            writer.write(np.zeros((32, 32, 3), np.uint8))
    assert not list(tmp_path.iterdir())


def test_stale_temporaries_of_one_file_are_removed_and_no_others(tmp_path):
    (tmp_path / ".x.1234abcd.tmp.mp4").write_bytes(b"half of x")
    (tmp_path / ".y.5678abcd.tmp.mp4").write_bytes(b"y, being written by another worker")
    (tmp_path / "kept.mp4").write_bytes(b"whole")
    assert remove_stale_temporaries(tmp_path / "x.mp4") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".y.5678abcd.tmp.mp4", "kept.mp4"]


def test_rates_are_exact_rationals():
    assert rate_text(25.0) == "25" and rate_text(30000 / 1001) == "30000/1001"
