"""The PyAV loader (``data.decoder: pyav``, ``curation.decode_av``) against the ffmpeg one: the same frames (every
pixel), the same failures, the audio within a stated tolerance, and deterministic across calls and processes.

Audio tolerance: 16-bit steps (2e-4) everywhere but the first audio frame of a window (its first 1100 samples
at 16 kHz, an AAC frame and the resampler's start), where the ffmpeg path decodes without the previous frame's
MDCT overlap after its seek (up to ~0.45 off a decode from the file start on these clips) and PyAV, which starts
half a second early, does not (within one step of it). Fixtures: ``tests/training/test_loader_fast.py``'s."""

from __future__ import annotations

import multiprocessing
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch

from curation import decode_av, media
from curation.errors import ConfigError, DecodeError
from tests.training.test_loader_fast import _ffmpeg, _items, table  # noqa: F401 - the shared fixture
from training import data as training_data
from training.data import VARIANT_COLUMNS, DataConfig, ManifestDataset

pytestmark = pytest.mark.skipif(not decode_av.available(), reason="PyAV (`av`, the train extra) not installed")

AUDIO_STEP_TOL = 2e-4
AUDIO_HEAD = 1100  # samples at 16 kHz after the window's start where the two decoders may differ more
STAGES = ((1, 1), (2, 1), (3, 8))


def _loaders(table, stage: int, num_frames: int, **settings):  # noqa: F811 - table is the fixture
    config = DataConfig(num_frames=num_frames, resolution=48, color_prob=0.5, grayscale_prob=0.3, **settings)
    return (ManifestDataset(config, stage=stage, table=table),
            ManifestDataset(DataConfig(**{**config.__dict__, "decoder": "pyav"}), stage=stage, table=table))


def _assert_close(new: dict | None, old: dict | None, what, audio_start: int = 0) -> None:
    """Every value equal, bit for bit, but ``audio`` (see the module's tolerance)."""
    assert (new is None) == (old is None), what
    if new is None:
        return
    assert new.keys() == old.keys(), what
    for key, value in old.items():
        if key == "audio":
            assert value.shape == new[key].shape and value.dtype == new[key].dtype, what
            diff = (value - new[key]).abs()
            assert float(diff[audio_start + AUDIO_HEAD:].max()) <= AUDIO_STEP_TOL, (what, key)
            assert float(diff.max()) <= 0.5, (what, key)
        elif torch.is_tensor(value):
            assert value.dtype == new[key].dtype and value.shape == new[key].shape, (what, key)
            assert torch.equal(value, new[key]), (what, key)
        else:
            assert value == new[key], (what, key)


def _audio_start(dataset: ManifestDataset, item: tuple[int, int]) -> int:
    plan = dataset.sample_plan(item[1], item[0])
    row = dataset.rows.slice(plan.index, 1).to_pylist()[0]
    return dataset._audio_window(row, row["start_s"] + plan.start_frame / dataset.config.fps)[1]


@pytest.mark.parametrize(("stage", "num_frames"), STAGES)
def test_pyav_samples_equal_the_ffmpeg_loaders(table, stage, num_frames):  # noqa: F811
    ffmpeg_loader, pyav_loader = _loaders(table, stage, num_frames)
    items = _items(ffmpeg_loader, 5)
    sources = Counter()
    for item in items:
        new, old = pyav_loader[item], ffmpeg_loader[item]
        _assert_close(new, old, (stage, item), _audio_start(pyav_loader, item))
        sources[new["driving_source"]] += 1
        if stage > 1 and new["modality"] != training_data.MODALITY_VISUAL and not new["unconditional"]:
            assert new["audio"].abs().max() > 0.01
    assert set(sources) >= {"real", "faceswap"}, sources
    assert not ffmpeg_loader.failures and not pyav_loader.failures


def _plain(sample: dict) -> dict:
    return {key: value.numpy() if torch.is_tensor(value) else value for key, value in sample.items()}


def _sample_in_child(dataset, items, queue) -> None:
    queue.put([_plain(dataset[item]) for item in items])  # numpy: torch's tensor sharing outlives no child


def test_pyav_samples_are_deterministic_across_calls_and_forked_workers(table):  # noqa: F811
    """The same (seed, epoch, index) gives the same sample again, after other samples moved the open decoders,
    and in a forked worker that inherited this process's open containers."""
    _, loader = _loaders(table, 3, 4)
    items = _items(loader, 4)
    first = [loader[item] for item in items]
    again = [loader[item] for item in reversed(items)][::-1]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_sample_in_child, args=(loader, items[::-1], queue))
    child.start()
    forked = queue.get(timeout=120)[::-1]
    child.join(timeout=30)
    assert child.exitcode == 0
    for a, b, c, item in zip(first, again, forked, items, strict=True):
        for other in (_plain(b), c):
            assert a.keys() == other.keys(), item
            for key, value in _plain(a).items():
                assert (np.array_equal(value, other[key]) if isinstance(value, np.ndarray) else value == other[key]), \
                    (item, key)


def test_decode_spans_chooses_the_frames_of_ffmpegs_fps_filter(table):  # noqa: F811
    """Spans at the file's start and end (the last picture held), across a keyframe, scaled and unscaled, at a
    rate that is not the source's, against ``media.iter_frames``; with and without skipping the non-reference
    pictures."""
    row = table.slice(0, 1).to_pylist()[0]
    variant = row[VARIANT_COLUMNS["faceswap"]]
    cases = [(row["source_path"], [media.FrameSpan(0.0, 3, 25.0), media.FrameSpan(row["start_s"] + 0.37, 5, 12.5),
                                   media.FrameSpan(row["start_s"] + 1.0, 2, 30.0, 300),
                                   media.FrameSpan(row["end_s"] - 0.1, 3, 25.0, 200)]),
             (variant, [media.FrameSpan(0.0, 4, 12.5, 100), media.FrameSpan(row["duration_s"] - 0.08, 3, 25.0)])]
    for path, spans in cases:
        probe = media.probe(path)
        for skip in (True, False):
            got = decode_av.decode_spans(path, probe, spans, skip_nonref=skip)
            for span, frames in zip(spans, got, strict=True):
                expected = np.stack([f for _, f in media.iter_frames(path, probe, start_s=span.start_s,
                                                                    duration_s=span.count / span.fps, fps=span.fps,
                                                                    max_side=span.max_side)])
                assert frames.dtype == np.uint8 and np.array_equal(frames, expected), (path, span, skip)


def test_decode_audio_within_tolerance(table):  # noqa: F811
    row = table.slice(0, 1).to_pylist()[0]
    path = row["source_path"]
    for start, duration in ((0.0, 0.5), (row["start_s"] + 0.26, 1.1), (row["end_s"] - 0.3, 0.3)):
        expected = media.decode_audio(path, start_s=start, duration_s=duration)
        got = decode_av.decode_audio(path, start_s=start, duration_s=duration)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.abs(got - expected)[AUDIO_HEAD:].max(initial=0.0) <= AUDIO_STEP_TOL
        assert np.abs(got - expected).max() <= 0.5


def test_unusable_variants_and_sources_fail_alike(table, tmp_path):  # noqa: F811
    """A variant that cannot be probed or decoded is counted and drives from the real frames, as in the ffmpeg
    loader; a source that is gone fails the sample with the same reason."""
    source = table.column(VARIANT_COLUMNS["faceswap"]).to_pylist()[0]
    truncated = tmp_path / "truncated.mp4"
    _ffmpeg("-i", source, "-c", "copy", "-movflags", "+faststart", tmp_path / "whole.mp4")
    whole = (tmp_path / "whole.mp4").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 20])
    column = VARIANT_COLUMNS["faceswap"]
    for broken, reason in ((tmp_path / "gone.mp4", "variant_probe_failed"), (truncated, "variant_decode_failed")):
        paths = table.column(column).to_pylist()
        broken_table = table.set_column(table.column_names.index(column), column,
                                        pa.array([str(broken), *paths[1:]], pa.string()))
        ffmpeg_loader, pyav_loader = _loaders(broken_table, 2, 1, driving_mix={"faceswap": 1.0, "real": 1e-6})
        epoch = next(e for e in range(100) if pyav_loader.sample_plan(0, e).driving_source == "faceswap")
        new, old = pyav_loader[(epoch, 0)], ffmpeg_loader[(epoch, 0)]
        _assert_close(new, old, broken, _audio_start(pyav_loader, (epoch, 0)))
        assert new["driving_source"] == "real"
        assert pyav_loader.failures == ffmpeg_loader.failures == Counter({reason: 1})
    gone = table.set_column(table.column_names.index("source_path"), "source_path",
                            pa.array([str(tmp_path / "gone-source.mp4")] * len(table), pa.string()))
    ffmpeg_loader, pyav_loader = _loaders(gone, 1, 1)
    assert pyav_loader[(0, 0)] is None and ffmpeg_loader[(0, 0)] is None
    assert pyav_loader.failures == ffmpeg_loader.failures == Counter({DecodeError.reason: 1})


def test_decoder_setting_is_checked():
    with pytest.raises(ConfigError, match="decoder"):
        DataConfig(decoder="opencv")
