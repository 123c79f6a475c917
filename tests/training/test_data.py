"""training.data on a tiny manifest of real clips from ../shared/videos.

The face tracks are real: curation's MediaPipe face scorer runs on three short spans (a few seconds of CPU), so
"the masks land on the face" is checked against landmarks the dataset never saw, not against boxes written to
agree with it. The rows go through curation.manifest.to_table / write_part like the curation flow's."""

from __future__ import annotations

import pickle
import subprocess
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from curation import media
from curation.config import load_config
from curation.errors import ConfigError
from curation.manifest import clip_id, to_table, write_part
from curation.scorers.base import ClipSpan
from curation.scorers.face_mediapipe import MediaPipeFaceScorer
from training.data import (
    MODALITY_AUDIO,
    MODALITY_MIXED,
    MODALITY_VISUAL,
    VARIANT_COLUMNS,
    DataConfig,
    ManifestDataset,
    collate_skip_failed,
    model_inputs,
)

# (file, start_s, end_s): a 512x512 talking head with speech, a 1920x1080 portrait-orientation clip with audio, and
# a clip without an audio stream.
CLIPS = (
    ("mimictalk_German_20s.mp4", 2.0, 5.0),
    ("latentsync_demo1_video.mp4", 0.0, 3.0),
    ("liveportrait_d0_noaudio.mp4", 0.0, 3.12),
)
NO_AUGMENT = {"grayscale_prob": 0.0, "scale_prob": 0.0, "aspect_prob": 0.0, "color_prob": 0.0}


def _row(path: Path, start: float, end: float, face: dict, keep: bool = True, real: Path | None = None) -> dict:
    """A manifest row for ``path`` (probed from ``real`` when ``path`` is a deliberately broken stand-in)."""
    probe = media.probe(real or path)
    return dict(
        clip_id=clip_id(path.name, start, end), video_id=path.name, dataset="shared", source_path=str(path),
        start_s=start, end_s=end, duration_s=end - start, fps=probe.fps_avg, fps_nominal=probe.fps_nominal,
        width=probe.width, height=probe.height, rotation=probe.rotation, has_video=True,
        has_audio=probe.has_audio, keep=keep, status="kept" if keep else "rejected",
        reject_reasons=[] if keep else ["face_too_small"], unscored_rules=[], **face,
    )


@pytest.fixture(scope="module")
def faces(videos_dir, weights_root):
    """Face columns of each clip in CLIPS, from the real MediaPipe scorer; the scorer is kept for the landmark
    check."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEGACTOR_WEIGHTS_DIR", str(weights_root))
        scorer = MediaPipeFaceScorer(load_config().face)
        columns = []
        for name, start, end in CLIPS:
            path = videos_dir / name
            face, reason, message = scorer.run(ClipSpan(str(path), start, end, media.probe(path)))
            assert reason is None, message
            columns.append(face)
        yield columns, scorer
        scorer.close()


@pytest.fixture(scope="module")
def rows(faces, videos_dir):
    return [_row(videos_dir / name, start, end, face)
            for (name, start, end), face in zip(CLIPS, faces[0], strict=True)]


@pytest.fixture(scope="module")
def manifest_dir(rows, faces, videos_dir, tmp_path_factory):
    """The three clips plus a rejected row (a copy of the first under another id)."""
    rejected = _row(videos_dir / CLIPS[0][0], 5.0, 8.0, faces[0][0], keep=False)
    directory = tmp_path_factory.mktemp("manifest")
    write_part(to_table(rows[:2], {"test": "data"}), directory, 0)
    write_part(to_table([rows[2], rejected], {"test": "data"}), directory, 1)
    return directory


def _dataset(manifest_dir, stage=2, **overrides) -> ManifestDataset:
    settings = {"num_frames": 4, "frame_stride": 2, "resolution": 64, **overrides}
    return ManifestDataset(DataConfig(manifest_dir=str(manifest_dir), **settings), stage=stage)


def _ffmpeg(*args) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="modality_mix"):
        DataConfig(modality_mix={"visual": 1.0, "speech": 1.0})
    with pytest.raises(ConfigError, match="grayscale_prob"):
        DataConfig(grayscale_prob=1.5)
    assert DataConfig(modality_mix={"visual": 1, "audio": 2, "mixed": 7}).modality_mix["mixed"] == pytest.approx(0.7)
    assert DataConfig().audio_samples == round((16 * 2 / 25 + 0.4) * 16000)


def test_selection_reads_kept_rows_and_drops_audioless_clips_in_audio_stages(manifest_dir):
    stage2 = _dataset(manifest_dir, stage=2)
    assert len(stage2) == 2 and stage2.excluded["not_kept"] == 1 and stage2.excluded["no_audio"] == 1
    stage1 = _dataset(manifest_dir, stage=1)
    assert len(stage1) == 3 and stage1.excluded["no_audio"] == 0
    assert len(_dataset(manifest_dir, only_kept=False, audioless="visual")) == 4
    as_visual = _dataset(manifest_dir, stage=2, audioless="visual")
    silent = as_visual.rows.column("has_audio").to_pylist().index(False)
    assert {as_visual.sample_plan(silent, epoch).modality for epoch in range(200)} == {MODALITY_VISUAL}


def test_sample_shapes_and_ranges(manifest_dir):
    dataset = _dataset(manifest_dir, stage=2)
    samples = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        samples += 1
        F, R = 4, 64
        assert sample["frames"].shape == (F, 3, R, R) and sample["driving"].shape == (F, 3, R, R)
        assert sample["reference"].shape == (3, R, R)
        for key in ("eye_mask", "mouth_mask", "loss_mask", "driving_mask"):
            assert sample[key].shape == (F, 1, R, R) and sample[key].dtype == torch.uint8
            assert set(sample[key].unique().tolist()) <= {0, 1}
        for key in ("frames", "reference", "driving"):  # compact: the decoded bytes
            assert sample[key].dtype == torch.uint8, key
        assert sample["frames"].float().std() > 0.1 * 127.5  # real pictures, not a constant
        inputs = model_inputs(collate_skip_failed([sample]), "cpu")  # as the trainer gets them
        assert inputs["frames"].dtype == inputs["reference"].dtype == inputs["driving"].dtype == torch.float32
        assert -1.0 <= inputs["frames"].min() and inputs["frames"].max() <= 1.0
        assert -1.0 <= inputs["reference"].min() and inputs["reference"].max() <= 1.0
        assert 0.0 <= inputs["driving"].min() and inputs["driving"].max() <= 1.0
        for key in ("eye_mask", "mouth_mask", "loss_mask", "driving_mask"):
            assert inputs[key].dtype == torch.float32 and set(inputs[key].unique().tolist()) <= {0.0, 1.0}
        assert sample["audio"].shape == (dataset.config.audio_samples,) and sample["audio"].dtype == torch.float32
        assert sample["modality"].dtype == torch.int64 and sample["drive_eyes"].dtype == torch.bool
        assert not torch.equal(sample["reference"], sample["frames"][0])  # another time of the clip
        assert isinstance(sample["clip_id"], str) and sample["driving_source"] == "real"
        assert torch.equal(sample["loss_mask"], torch.ones_like(sample["loss_mask"]))  # stage 2: full frame
    assert samples == 2 and not dataset.failures


def test_modality_mix_matches_10_20_70(manifest_dir):
    dataset = _dataset(manifest_dir, stage=2)
    plans = [dataset.sample_plan(index, epoch) for epoch in range(6000) for index in range(len(dataset))]
    counts = Counter(plan.modality for plan in plans)
    for modality, share in ((MODALITY_VISUAL, 0.1), (MODALITY_AUDIO, 0.2), (MODALITY_MIXED, 0.7)):
        assert counts[modality] / len(plans) == pytest.approx(share, abs=0.015)
    for plan in plans:
        if plan.modality == MODALITY_AUDIO:
            assert not plan.drive_eyes and not plan.drive_mouth
        elif plan.modality == MODALITY_MIXED:
            assert plan.drive_eyes and not plan.drive_mouth  # audio + eyes-only visual
        else:
            assert plan.drive_eyes or plan.drive_mouth
    assert len({(plan.start_frame, plan.reference_frame) for plan in plans}) > 100  # segments move about


def test_stage1_face_dropout_is_eyes_mouth_or_both_uniformly(manifest_dir):
    dataset = _dataset(manifest_dir, stage=1, num_frames=1)
    plans = [dataset.sample_plan(index, epoch) for epoch in range(3000) for index in range(len(dataset))]
    assert {plan.modality for plan in plans} == {MODALITY_VISUAL}
    regions = Counter((plan.drive_eyes, plan.drive_mouth) for plan in plans)
    assert set(regions) == {(True, False), (False, True), (True, True)}
    for count in regions.values():
        assert count / len(plans) == pytest.approx(1 / 3, abs=0.02)
    assert all(plan.reference_frame != plan.start_frame for plan in plans)


def test_audio_only_samples_have_black_driving_frames_and_real_audio(manifest_dir):
    dataset = _dataset(manifest_dir, stage=2, modality_mix={"audio": 1.0})
    sample = dataset[0]  # the speech clip
    assert sample["modality"] == MODALITY_AUDIO
    assert torch.count_nonzero(sample["driving"]) == 0 and torch.count_nonzero(sample["driving_mask"]) == 0
    audio = sample["audio"]
    assert audio.abs().max() > 0.05  # speech
    context = int(dataset.config.audio_context_s * dataset.config.audio_sample_rate)
    assert audio[context:-context].abs().mean() > 0.005


@pytest.mark.parametrize("dropout", ["eyes", "mouth", "both"])
def test_driving_frames_keep_only_the_driven_regions(manifest_dir, dropout):
    dataset = _dataset(manifest_dir, stage=1, face_dropout={dropout: 1.0}, **NO_AUGMENT)
    sample = dataset[1]
    driven = {"eyes": sample["eye_mask"], "mouth": sample["mouth_mask"],
              "both": torch.maximum(sample["eye_mask"], sample["mouth_mask"])}[dropout].expand(-1, 3, -1, -1)
    assert bool(sample["drive_eyes"]) == (dropout != "mouth") and bool(sample["drive_mouth"]) == (dropout != "eyes")
    assert torch.count_nonzero(sample["driving"][driven == 0]) == 0
    assert 0.01 < driven.float().mean() < 0.3
    # inside the regions: the target frames themselves (real driving), byte for byte
    assert torch.equal(sample["driving"][driven == 1], sample["frames"][driven == 1])
    assert torch.equal(sample["driving_mask"], driven[:, :1])


def test_augmented_driving_frames_stay_black_outside_the_moved_region(manifest_dir):
    dataset = _dataset(manifest_dir, stage=1, face_dropout={"both": 1.0}, grayscale_prob=1.0, scale_prob=1.0,
                       aspect_prob=1.0, scale_range=(0.7, 0.75), color_prob=1.0)
    sample = dataset[0]
    driving, region = sample["driving"], sample["driving_mask"].expand(-1, 3, -1, -1)
    assert torch.count_nonzero(driving[region == 0]) == 0
    assert torch.equal(driving[:, 0], driving[:, 1]) and torch.equal(driving[:, 1], driving[:, 2])  # gray
    eyes_or_mouth = torch.maximum(sample["eye_mask"], sample["mouth_mask"])
    assert sample["driving_mask"].sum() < 0.7 * eyes_or_mouth.sum()  # zoomed out to ~0.7 x 0.7 of the area


def test_colour_jitter_moves_brightness_contrast_and_saturation_inside_the_region_only():
    from training.driving_aug import jitter_colour

    rng = np.random.default_rng(0)
    frames = rng.integers(40, 200, size=(2, 16, 16, 3)).astype(np.uint8)
    inside = np.zeros((2, 16, 16), dtype=bool)
    inside[:, 4:12, 4:12] = True
    frames[~inside] = 0  # as the driving frames arrive: black outside the driven region
    same = jitter_colour(frames, inside, 1.0, 1.0, 1.0)
    assert np.abs(same.astype(int) - frames).max() <= 1
    brighter = jitter_colour(frames, inside, 1.2, 1.0, 1.0)
    assert np.allclose(brighter[inside], np.clip(frames[inside] * 1.2, 0, 255), atol=1)
    flat = jitter_colour(frames, inside, 1.0, 0.0, 1.0)  # no contrast: one value, the region's mean
    assert np.ptp(flat[inside]) <= 1 and abs(float(flat[inside].mean()) - float(frames[inside].mean())) < 1
    gray = jitter_colour(frames, inside, 1.0, 1.0, 0.0)  # no saturation: R = G = B
    assert np.abs(gray[inside].astype(int) - gray[inside][:, :1]).max() <= 1
    for out in (brighter, flat, gray):
        assert not out[~inside].any()


def test_masks_land_on_the_face(manifest_dir, faces):
    """MediaPipe, run again on the dataset's own crops, finds eyes inside ``eye_mask``, the mouth inside
    ``mouth_mask`` and both inside the stage-1 loss region; the mouth is below the eyes."""
    _, scorer = faces
    dataset = _dataset(manifest_dir, stage=1, num_frames=2, resolution=192)
    for index in range(len(dataset)):
        sample = dataset[index]
        for f in range(2):
            eyes, mouth, face = (sample[k][f, 0].numpy() for k in ("eye_mask", "mouth_mask", "loss_mask"))
            rows = np.arange(192)[:, None]
            assert (rows * mouth).sum() / mouth.sum() > (rows * eyes).sum() / eyes.sum() + 20
            assert face[eyes > 0].all() and face[mouth > 0].all()
            rgb = np.ascontiguousarray(sample["frames"][f].permute(1, 2, 0).numpy())
            point, _ = scorer.analyse(0.0, rgb, 192, 192)
            assert point["n_faces"] == 1
            for key, mask in (("eyes_box", eyes), ("mouth_box", mouth)):
                x0, y0, x1, y1 = point[key]
                assert mask[int((y0 + y1) / 2), int((x0 + x1) / 2)] == 1, (index, f, key)
            x0, y0, x1, y1 = point["box"]
            inside = face[int(y0):int(y1), int(x0):int(x1)].mean()
            assert inside > 0.9


def test_same_seed_epoch_index_gives_identical_samples(manifest_dir):
    first = _dataset(manifest_dir, stage=2, grayscale_prob=0.5)
    second = pickle.loads(pickle.dumps(_dataset(manifest_dir, stage=2, grayscale_prob=0.5)))  # as a worker gets it
    torch.manual_seed(123)
    np.random.seed(123)
    a = first[(3, 1)]
    torch.manual_seed(7)
    np.random.seed(7)
    second.set_epoch(3)
    b = second[1]
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]) if torch.is_tensor(value) else value == b[key], key
    plans = [first.sample_plan(1, epoch) for epoch in range(20)]
    assert len({(p.start_frame, p.modality, p.reference_frame) for p in plans}) > 10  # epochs differ
    assert _dataset(manifest_dir, stage=2, seed=1).sample_plan(1, 3) != first.sample_plan(1, 3)


def test_undecodable_clips_are_counted_and_skipped(rows, videos_dir, tmp_path):
    good = rows[0]
    broken = tmp_path / "broken.mp4"
    _ffmpeg("-ss", good["start_s"], "-t", 3, "-i", good["source_path"], "-c:v", "libx264", "-preset", "ultrafast",
            "-c:a", "aac", "-movflags", "+faststart", tmp_path / "whole.mp4")
    data = (tmp_path / "whole.mp4").read_bytes()
    broken.write_bytes(data[: len(data) // 20])  # index intact, picture data cut at 5 %
    garbage = tmp_path / "garbage.mp4"
    garbage.write_text("not a video\n")
    stand_ins = [{**good, "clip_id": f"bad-{n}", "source_path": str(path), "start_s": 0.0, "end_s": 3.0,
                  "duration_s": 3.0} for n, path in enumerate((tmp_path / "missing.mp4", broken, garbage))]
    directory = tmp_path / "manifest"
    write_part(to_table([good, *stand_ins], {"test": "failures"}), directory, 0)

    dataset = _dataset(directory, stage=2)
    assert len(dataset) == 4
    batches = list(DataLoader(dataset, batch_size=2, collate_fn=collate_skip_failed))
    assert dataset.failures == Counter({"decode_failed": 3})
    kept = [b for b in batches if b is not None]
    assert sum(len(b["clip_id"]) for b in kept) == 1 and kept[0]["clip_id"] == [good["clip_id"]]
    assert kept[0]["frames"].shape == (1, 4, 3, 64, 64) and kept[0]["num_skipped"] == 1
    assert collate_skip_failed([None, None]) is None

    # worker processes: the dataset pickles, failures stay in the workers but reach the batches as a count
    parallel = list(DataLoader(_dataset(directory, stage=2), batch_size=2, num_workers=2,
                               collate_fn=collate_skip_failed))
    assert sum(b["num_skipped"] for b in parallel if b is not None) + sum(b is None for b in parallel) * 2 == 3


def test_variant_columns_follow_the_driving_mix(rows, videos_dir, tmp_path):
    """A face-swap stand-in (the clip's span negated, at half size) and a stylized one; rows without variants
    drive from real frames only."""
    good = rows[0]
    faceswap, stylized = tmp_path / "faceswap.mp4", tmp_path / "stylized.mp4"
    for path, video_filter in ((faceswap, "negate,scale=256:256"), (stylized, "hue=s=0")):
        _ffmpeg("-ss", good["start_s"], "-t", good["duration_s"], "-i", good["source_path"], "-an", "-vf",
                video_filter, "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", path)
    table = to_table(rows[:2], {"test": "variants"})
    for source, path in (("faceswap", faceswap), ("stylized", stylized)):  # manifest columns since schema 1.2
        column = VARIANT_COLUMNS[source]
        table = table.set_column(table.schema.get_field_index(column), column,
                                 pa.array([str(path), None], pa.string()))
    config = DataConfig(num_frames=4, resolution=64, face_dropout={"both": 1.0}, modality_mix={"visual": 1.0},
                        **NO_AUGMENT)
    dataset = ManifestDataset(config, stage=2, table=table)

    with_variants = Counter(dataset.sample_plan(0, epoch).driving_source for epoch in range(8000))
    for source, share in (("real", 0.5), ("faceswap", 0.4), ("stylized", 0.1)):
        assert with_variants[source] / 8000 == pytest.approx(share, abs=0.015)
    assert {dataset.sample_plan(1, epoch).driving_source for epoch in range(500)} == {"real"}

    epoch = next(e for e in range(100) if dataset.sample_plan(0, e).driving_source == "faceswap")
    swapped = dataset[(epoch, 0)]
    assert swapped["driving_source"] == "faceswap"
    region = swapped["driving_mask"].expand(-1, 3, -1, -1) == 1
    inputs = {key: value[0] for key, value in model_inputs(collate_skip_failed([swapped]), "cpu").items()
              if torch.is_tensor(value)}
    negated = 1 - (inputs["frames"] + 1) / 2  # what the variant shows, mapped through the scaled crop
    assert (inputs["driving"][region] - negated[region]).abs().mean() < 0.06
    assert torch.count_nonzero(swapped["driving"][~region]) == 0

    # a variant that cannot be decoded: counted, and the sample drives from the real frames
    broken = ManifestDataset(config, stage=2, table=table.set_column(
        table.column_names.index(VARIANT_COLUMNS["faceswap"]), VARIANT_COLUMNS["faceswap"],
        pa.array([str(tmp_path / "gone.mp4"), None], pa.string())))
    fallback = broken[(epoch, 0)]
    assert fallback["driving_source"] == "real" and broken.failures["variant_probe_failed"] == 1


def test_no_plan_asks_for_a_frame_past_the_end_of_the_video(tiny_manifest, videos_dir, monkeypatch):
    """sadtalker_WDA_KatieHill_000.mp4's container says 8.064 s (its audio) and its video holds 200 frames
    (8.0 s): a clip that ends at the source's end must not plan frames 200 or 201."""
    import dataclasses

    dataset = _dataset(tiny_manifest, stage=1, num_frames=1)
    paths = dataset.rows.column("source_path").to_pylist()
    probes = [media.probe(path) for path in paths]
    for index, (path, probe) in enumerate(zip(paths, probes, strict=True)):
        video_frames = probe.n_frames
        assert video_frames and dataset._clip_frames[index] <= video_frames, Path(path).name
        # the last frame any plan can name, as segment and reference, decodes
        last = int(dataset._clip_frames[index]) - dataset.config.segment_frames
        plan = dataclasses.replace(dataset.sample_plan(index, 0), start_frame=last, reference_frame=last)
        monkeypatch.setattr(dataset, "sample_plan", lambda *_args, plan=plan: plan)
        assert dataset[index] is not None, Path(path).name
        monkeypatch.undo()
    assert any(probe.duration_s > probe.n_frames / probe.fps_avg for probe in probes)  # the case is present


def test_unconditional_samples_have_neither_driving_frames_nor_audio(manifest_dir):
    dataset = _dataset(manifest_dir, stage=2, modality_mix={"mixed": 1.0}, uncond_prob=0.05)
    plans = [dataset.sample_plan(i % len(dataset), epoch) for epoch in range(1000) for i in range(len(dataset))]
    share = sum(plan.unconditional for plan in plans) / len(plans)
    assert share == pytest.approx(0.05, abs=0.01)
    # drawn last: switching it off changes no other decision of any sample
    off = _dataset(manifest_dir, stage=2, modality_mix={"mixed": 1.0}, uncond_prob=0.0)
    same = [off.sample_plan(p.index, p.epoch) for p in plans[:200]]
    assert [replace(p, unconditional=False) for p in plans[:200]] == same
    epoch, index = next((p.epoch, p.index) for p in plans if p.unconditional and p.index == 0)
    sample = dataset[(epoch, index)]
    assert bool(sample["unconditional"]) and sample["modality"] == MODALITY_MIXED
    assert torch.count_nonzero(sample["driving"]) == 0 and torch.count_nonzero(sample["audio"]) == 0
    with pytest.raises(ConfigError, match="uncond_prob"):
        DataConfig(uncond_prob=1.0)


def test_holdout_leaves_out_the_identities_evaluation_tests_on(manifest_dir):
    from curation.splits import split_manifest

    _, split = split_manifest(manifest_dir, test_fraction=0.1, seed=3)
    test_clips = {c for c, s in zip(split["clip_id"].to_pylist(), split["split"].to_pylist(), strict=True)
                  if s == "test"}
    assert test_clips  # a test side is never empty
    full = _dataset(manifest_dir, stage=1)
    held = _dataset(manifest_dir, stage=1, holdout_fraction=0.1, holdout_seed=3)
    assert set(held.rows.column("clip_id").to_pylist()) == set(full.rows.column("clip_id").to_pylist()) - test_clips
    assert held.excluded["held_out_for_evaluation"] == len(test_clips)
