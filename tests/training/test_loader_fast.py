"""The one-process loader (issue 12) yields the samples the loader before it did, bit for bit.

The reference is ``ManifestDataset(legacy_decode=True)``: the decoding as it was (``curation.crops.decode_crops``
over ``media.iter_frames`` for the segment, the reference frame and the variant, an ffprobe per variant sample,
``media.decode_audio`` for the audio). Clips: the tiny manifest's two shared clips (a 512 px H.264 clip with
10 s between keyframes, taken from 6 s to 12 s so that a sample can straddle a keyframe, and an MPEG-4 clip
that ends where its source ends), each with a face-swap stand-in (negated, at half size) and a stylized one."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from curation import media
from curation.crops import CropSpan, decode_crop_spans, decode_crops
from curation.manifest import read_manifest, read_provenance, to_table
from training import data as training_data
from training.data import VARIANT_COLUMNS, DataConfig, ManifestDataset

# (stage, num_frames): stage 1 and 2 are image level, stage 3 takes 8 frames here (16 in its config: the same
# code path, twice the pictures)
STAGES = ((1, 1), (2, 1), (3, 8))
SAMPLES_PER_STAGE = 6


def _ffmpeg(*args) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def table(tiny_manifest, tmp_path_factory) -> pa.Table:
    """The tiny manifest's clips (the long one cut to 6-12 s), each with a face-swap and a stylized variant in
    the manifest's variant columns."""
    folder = tmp_path_factory.mktemp("variants")
    rows = []
    for row in read_manifest(tiny_manifest).to_pylist():
        if row["end_s"] - row["start_s"] > 12:
            start, end = 6.0, 12.0
            row = {**row, "start_s": start, "end_s": end, "duration_s": end - start, "clip_id": row["clip_id"] + "-6",
                   "face_track": [p for p in row["face_track"] if start <= p["t"] < end]}
        for kind, video_filter in (("faceswap", "negate,scale=256:256"), ("stylized", "hue=s=0")):
            path = folder / f"{row['clip_id']}-{kind}.mp4"
            _ffmpeg("-ss", row["start_s"], "-t", row["duration_s"], "-i", row["source_path"], "-an", "-vf",
                    video_filter, "-c:v", "libx264", "-preset", "ultrafast", "-g", 100, path)
            row[VARIANT_COLUMNS[kind]] = str(path)
        rows.append(row)
    provenance = read_provenance(sorted(Path(tiny_manifest).glob("*.parquet"))[0])
    return to_table(rows, provenance)


def _pairs(table: pa.Table, stage: int, num_frames: int, **settings):
    config = DataConfig(num_frames=num_frames, resolution=48, **settings)
    return (ManifestDataset(config, stage=stage, table=table),
            ManifestDataset(config, stage=stage, table=table, legacy_decode=True))


def _assert_same(new: dict | None, old: dict | None, what) -> None:
    assert (new is None) == (old is None), what
    if new is None:
        return
    assert new.keys() == old.keys(), what
    for key, value in old.items():
        if torch.is_tensor(value):
            assert value.dtype == new[key].dtype and value.shape == new[key].shape, (what, key)
            assert torch.equal(value, new[key]), (what, key)
        else:
            assert value == new[key], (what, key)


def _items(dataset: ManifestDataset, count: int) -> list[tuple[int, int]]:
    """``count`` (epoch, index) pairs covering every driving source of every clip, and audio when the stage has
    it, in plan order (plans are cheap)."""
    wanted, items = {}, []
    for epoch in range(200):
        for index in range(len(dataset)):
            plan = dataset.sample_plan(index, epoch)
            key = (index, plan.driving_source, plan.modality != training_data.MODALITY_VISUAL)
            if key not in wanted:
                wanted[key] = (epoch, index)
    items = sorted(wanted.values())
    return items[:count]


@pytest.mark.parametrize(("stage", "num_frames"), STAGES)
def test_one_process_samples_equal_the_legacy_loaders(table, stage, num_frames):
    fast, legacy = _pairs(table, stage, num_frames, color_prob=0.5, grayscale_prob=0.3)
    items = _items(fast, SAMPLES_PER_STAGE)
    sources = Counter()
    for item in items:
        new, old = fast[item], legacy[item]
        _assert_same(new, old, (stage, item))
        sources[new["driving_source"]] += 1
        if stage > 1 and new["modality"] != training_data.MODALITY_VISUAL and not new["unconditional"]:
            assert new["audio"].abs().max() > 0.01  # real audio came through the shared process
    assert set(sources) >= {"real", "faceswap"}, sources
    assert not fast.failures and not legacy.failures


def test_unusable_variants_fall_back_to_the_real_frames_alike(table, tmp_path):
    """A variant that cannot be probed, and one that probes but cannot be decoded (its picture data cut), are
    counted the same way and drive from the real frames in both loaders."""
    source = table.column(VARIANT_COLUMNS["faceswap"]).to_pylist()[0]
    truncated = tmp_path / "truncated.mp4"
    _ffmpeg("-i", source, "-c", "copy", "-movflags", "+faststart", tmp_path / "whole.mp4")
    whole = (tmp_path / "whole.mp4").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 20])
    for broken, reason in ((tmp_path / "gone.mp4", "variant_probe_failed"), (truncated, "variant_decode_failed")):
        column = VARIANT_COLUMNS["faceswap"]
        paths = table.column(column).to_pylist()
        broken_table = table.set_column(table.column_names.index(column), column,
                                        pa.array([str(broken), *paths[1:]], pa.string()))
        fast, legacy = _pairs(broken_table, 2, 1, driving_mix={"faceswap": 1.0, "real": 1e-6})
        epoch = next(e for e in range(100) if fast.sample_plan(0, e).driving_source == "faceswap")
        new, old = fast[(epoch, 0)], legacy[(epoch, 0)]
        _assert_same(new, old, broken)
        assert new["driving_source"] == "real"
        assert fast.failures == legacy.failures == Counter({reason: 1}), (fast.failures, legacy.failures)


def test_decode_crop_spans_equals_decode_crops_and_decode_audio(table):
    """The shared multi-span decode (inference's too) against one call per span, with spans of one file close
    together (one decode pass), far apart (two seeks) and of another file, and the audio."""
    row = table.slice(0, 1).to_pylist()[0]
    path, probe = row["source_path"], media.probe(row["source_path"])
    variant = row[VARIANT_COLUMNS["faceswap"]]
    variant_probe = media.probe(variant)
    crop = (100.0, 80.0, 300.0)
    spans = [CropSpan(path, probe, row["start_s"] + 0.4, 5, 12.5, crop),
             CropSpan(path, probe, row["start_s"] + 1.0, 1, 25.0, crop),
             CropSpan(path, probe, row["end_s"] - 0.5, 2, 25.0, crop),
             CropSpan(variant, variant_probe, 0.4, 5, 12.5, (50.0, 40.0, 150.0))]
    audio = media.AudioSpan(path, row["start_s"] + 0.2, 1.1, 16000)
    crops, samples = decode_crop_spans(spans, 40, audio=audio)
    for span, got in zip(spans, crops, strict=True):
        expected = decode_crops(span.path, span.probe, span.start_s, span.count, span.rate, span.crop, 40)
        assert got.dtype == np.uint8 and np.array_equal(got, expected), span
    expected_audio = media.decode_audio(path, start_s=audio.start_s, duration_s=audio.duration_s)
    assert samples.dtype == np.float32 and np.array_equal(samples, expected_audio)


# -- the trainer's conversion (model_inputs) against the loader's floats before it returned uint8 -------------
def _old_floats(pixels: torch.Tensor, kind: str) -> torch.Tensor:
    """What the loader returned before, from the bytes it now returns: (..., 3, H, W) uint8 channels first ->
    float32 by numpy's float32 division of the channels-last bytes (``x / 127.5 - 1``, ``x / 255``), channels
    first again."""
    values = np.moveaxis(pixels.numpy(), -3, -1).astype(np.float32)
    if kind == "signed":
        values = np.subtract(np.divide(values, np.float32(127.5), out=values), np.float32(1.0), out=values)
    else:
        values = np.divide(values, np.float32(255.0), out=values)
    return torch.from_numpy(np.moveaxis(values, -1, -3))


def test_model_inputs_give_the_old_floats_for_every_byte():
    """Every byte in every SIMD and tail lane, through the CPU's division and through the table other devices
    take, equals the old numpy formula (and torch's ops on the CPU, which the division is)."""
    values = torch.from_numpy(np.tile(np.arange(256, dtype=np.uint8), 3 * 40 * 41).reshape(-1, 40, 41, 3))
    values = values.permute(0, 3, 1, 2)  # channels first, a view: as a sample holds it
    for kind, key in (("signed", "frames"), ("unit", "driving")):
        expected = _old_floats(values, kind)
        got = training_data.model_inputs({key: values}, "cpu")[key]
        assert got.dtype == torch.float32 and torch.equal(got, expected), kind
        assert torch.equal(training_data._lookup(values, kind), expected), kind
        assert torch.equal(got, training_data._divide(values, kind)), kind
    torch_ops = values.float().div_(127.5).sub_(1.0), values.float().div_(255.0)
    assert torch.equal(torch_ops[0], _old_floats(values, "signed"))
    assert torch.equal(torch_ops[1], _old_floats(values, "unit"))


@pytest.mark.parametrize(("stage", "num_frames"), ((1, 1), (3, 8)))
def test_a_collated_batch_through_model_inputs_equals_the_old_float_samples(table, stage, num_frames):
    """The samples are compact (uint8 pixels, uint8 0/1 masks), the same from the legacy and the one-process
    loader; a collated batch through ``model_inputs`` holds the float tensors the loader used to return, and
    the batch itself is left as it was."""
    fast, legacy = _pairs(table, stage, num_frames, color_prob=0.5, grayscale_prob=0.3)
    items = _items(fast, 4)
    samples = [fast[item] for item in items]
    for sample, item in zip(samples, items, strict=True):
        _assert_same(sample, legacy[item], (stage, item))
        for key in ("frames", "reference", "driving", *training_data.MASK_KEYS):
            assert sample[key].dtype == torch.uint8, key
        for key in training_data.MASK_KEYS:
            assert set(sample[key].unique().tolist()) <= {0, 1}, key
    batch = training_data.collate_skip_failed(samples)
    kept = {key: value.clone() if torch.is_tensor(value) else value for key, value in batch.items()}
    inputs = training_data.model_inputs(batch, torch.device("cpu"))
    assert inputs.keys() == batch.keys()
    expected = {"frames": torch.stack([_old_floats(s["frames"], "signed") for s in samples]),
                "reference": torch.stack([_old_floats(s["reference"], "signed") for s in samples]),
                "driving": torch.stack([_old_floats(s["driving"], "unit") for s in samples]),
                **{key: torch.stack([torch.from_numpy(s[key].numpy().astype(np.float32)) for s in samples])
                   for key in training_data.MASK_KEYS}}
    for key, value in expected.items():
        assert inputs[key].dtype == torch.float32 and inputs[key].shape == value.shape, key
        assert torch.equal(inputs[key], value), key
    for key in ("audio", "modality", "drive_eyes", "drive_mouth", "unconditional"):
        assert inputs[key].dtype == batch[key].dtype and torch.equal(inputs[key], batch[key]), key
    for key in ("clip_id", "driving_source", "num_skipped"):
        assert inputs[key] == batch[key], key
    for key, value in kept.items():  # nothing converted in place
        assert (torch.equal(value, batch[key]) and value.dtype == batch[key].dtype) if torch.is_tensor(value) \
            else value == batch[key], key
    with pytest.raises(TypeError, match="uint8"):
        training_data.model_inputs({"frames": inputs["frames"]}, "cpu")
