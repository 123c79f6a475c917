"""One worker's augmentation end to end, without Prefect or Ray: identity pool, variants of a shard, the table,
bad inputs as rows with reasons (tiny models; the real SCRFD on short spans of the shared clips)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from curation import media
from curation.augment import pipeline
from curation.augment.config import load_augment_config
from curation.augment.variants import read_identities, read_variants, usable_variants

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _run(config, run, output):
    manifest = pipeline.manifest_dir(run)
    clips = pipeline.preflight(config, manifest)
    rows = clips.to_pylist()
    layout = pipeline.AugmentLayout(output)
    plan = pipeline.load_or_save_plan(layout, pipeline.plan_shards(clips, 100), config, manifest)
    augmenter = pipeline.Augmenter(config, output, manifest, "mediapipe")
    by_id = {row["clip_id"]: row for row in rows}
    for shard, items in enumerate(pipeline.identity_plan(config, plan)):
        augmenter.identities(shard, [by_id[c] for c in items] if config.identity.pool == "clips" else items)
    for shard, ids in enumerate(plan):
        augmenter.variants(shard, [by_id[c] for c in ids])
    return {(r["clip_id"], r["kind"]): r for r in read_variants(layout.variants).to_pylist()}, rows


@pytest.fixture(scope="module")
def made(short_run, augment_overrides, tmp_path_factory):
    config = load_augment_config(None, augment_overrides)
    output = tmp_path_factory.mktemp("augmented")
    variants, rows = _run(config, short_run, output)
    return config, output, variants, rows


def test_every_kept_clip_gets_a_row_per_variant(made):
    config, _, variants, rows = made
    assert len(variants) == 2 * len(rows) == 8
    assert {kind for _, kind in variants} == {"faceswap", "stylized"}


def test_good_clips_get_checked_variants_that_cover_their_span(made, videos_dir):
    config, output, variants, rows = made
    speakers = {row["clip_id"]: row["video_id"] for row in rows}
    good = [row for row in rows if row["clip_id"] not in ("00-gone", "01-wall")]
    assert len(good) == 2
    for row in good:
        swap, styled = variants[(row["clip_id"], "faceswap")], variants[(row["clip_id"], "stylized")]
        for variant in (swap, styled):
            assert variant["status"] == "ok", variant["reject_reasons"]
            path = output / variant["relpath"]
            probe = media.probe(path)
            assert probe.video_codec == "h264" and probe.has_audio and variant["has_audio"]
            assert variant["frames"] == probe.n_frames == 50 and probe.fps_nominal == variant["fps"] == 25
            assert (probe.width, probe.height) == (row["width"], row["height"])  # whole frames
            assert variant["motion_frames"] is not None and variant["wall_s"] > 0
        # the swap drew another speaker's identity, and was checked on the sampled frames
        assert swap["identity_speaker"] != swap["speaker"] == speakers[row["clip_id"]]
        assert swap["id_frames_checked"] == len(range(0, 50, 12))  # 2 frames/s of 25: every 12th
        assert -1 <= swap["id_sim_source"] <= 1
        assert swap["face_detected_frac"] > 0.9 and swap["face_unswapped_frames"] == 0
        assert styled["prompt"] in config.stylize.prompts and np.isfinite(styled["flicker_ratio"])
        # only the face region changed: the frame's corners are the source's
        original = next(iter(media.iter_frames(row["source_path"], media.probe(row["source_path"]),
                                               start_s=row["start_s"], duration_s=0.04, fps=25)))[1]
        swapped = next(iter(media.iter_frames(output / swap["relpath"], media.probe(output / swap["relpath"]),
                                              duration_s=0.04, fps=25)))[1]
        corner = (slice(0, 40), slice(0, 40))
        assert np.abs(swapped[corner].astype(int) - original[corner]).mean() < 3  # codec noise only
        face = tuple(slice(int(v) - 20, int(v) + 20) for v in ((row["face_box"][1] + row["face_box"][3]) / 2,
                                                                (row["face_box"][0] + row["face_box"][2]) / 2))
        assert np.abs(swapped[face].astype(int) - original[face]).mean() > 20


def test_bad_inputs_end_as_rows_with_reasons(made):
    _, output, variants, _ = made
    for kind in ("faceswap", "stylized"):
        gone = variants[("00-gone", kind)]
        assert gone["status"] == "error" and gone["error_reason"] == "source_missing" and gone["path"] is None
    wall = variants[("01-wall", "faceswap")]
    assert wall["status"] == "error" and wall["error_reason"] == "no_face_detected"
    assert wall["reject_reasons"] == ["no_face_detected"] and wall["relpath"] is None
    assert not list((output / "videos" / "faceswap").rglob("01-wall*"))  # no file without a usable row
    identities = {r["clip_id"]: r for r in read_identities(output / "identities").to_pylist()}
    assert identities["00-gone"]["status"] == "error" and identities["00-gone"]["error_reason"] == "probe_failed"
    assert identities["01-wall"]["error_reason"] == "no_face"
    assert sum(r["status"] == "ok" for r in identities.values()) == 2


def test_the_trainer_sees_the_usable_variants(made):
    _, output, variants, _ = made
    usable = usable_variants(output)
    assert set(usable) == {clip for (clip, _), r in variants.items() if r["usable"]}
    for kinds in usable.values():
        assert all(path.endswith(".mp4") for paths in kinds.values() for path in paths)


def test_an_identity_folder_with_bad_images(short_run, augment_overrides, tmp_path, videos_dir):
    folder = tmp_path / "faces"
    (folder / "anchor").mkdir(parents=True)
    path = videos_dir / "dreamtalk_codeformer_sr_1024.mp4"
    frame = next(iter(media.iter_frames(path, media.probe(path), start_s=1.0, duration_s=0.04, fps=25)))[1]
    cv2.imwrite(str(folder / "anchor" / "face.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "blank.png"), np.zeros((256, 256, 3), np.uint8))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    config = load_augment_config(None, {**augment_overrides, "kinds": ["faceswap"], "identity.pool": "folder",
                                        "identity.folder": str(folder)})
    variants, _ = _run(config, short_run, tmp_path / "out")
    identities = {r["speaker"]: r for r in read_identities(tmp_path / "out" / "identities").to_pylist()}
    assert identities["anchor"]["status"] == "ok"
    assert identities["blank"]["error_reason"] == "no_face"
    assert identities["broken"]["error_reason"] == "unreadable_image"
    swapped = [r for r in variants.values() if r["status"] == "ok"]
    assert len(swapped) == 2 and all(r["identity_speaker"] == "anchor" for r in swapped)

    for image in folder.rglob("*.jpg"):  # a folder whose every image is broken: the run still completes
        image.write_bytes(b"garbage")
    config = config.with_overrides({"seed": 1})
    variants, _ = _run(config, short_run, tmp_path / "out-broken")
    assert {r["error_reason"] for r in variants.values()} == {"identity_pool_empty", "source_missing",
                                                             "no_face_detected"}


def test_the_trainer_draws_every_kind_of_variant_from_the_run(made, short_run, caplog):
    from collections import Counter

    from training.data import DataConfig, ManifestDataset

    _, output, _, _ = made
    mix = {"real": 0.2, "faceswap": 0.4, "stylized": 0.4}
    data = ManifestDataset(DataConfig(manifest_dir=str(output), num_frames=1, resolution=64, driving_mix=mix),
                           stage=1)
    assert len(data) == 4 and data.variant_clips == {"faceswap": 2, "stylized": 3}  # no swap of the faceless clip
    plans = [data.sample_plan(i, epoch) for i in range(len(data)) for epoch in range(30)]
    assert set(Counter(p.driving_source for p in plans)) == {"real", "faceswap", "stylized"}
    swap = next(p for p in plans if p.driving_source == "faceswap")
    sample = data[(swap.epoch, swap.index)]
    assert sample["driving_source"] == "faceswap" and sample["driving"].shape == (1, 3, 64, 64)
    # the curated run alone: the countermeasure would be off, and the trainer says so
    caplog.clear()
    plain = ManifestDataset(DataConfig(manifest_dir=str(short_run), num_frames=1, driving_mix=mix), stage=1)
    assert plain.variant_clips == {"faceswap": 0, "stylized": 0}
    assert "identity-leakage countermeasure is off" in caplog.text


def test_several_variants_per_clip_are_all_drawn(short_run, tmp_path):
    from curation.augment.variants import variant_id, variants_table, write_part, write_source
    from curation.io import part_files
    from curation.manifest import read_manifest
    from training.data import DataConfig, ManifestDataset

    manifest = short_run / "manifest"
    clip = next(r for r in read_manifest(manifest).to_pylist() if r["clip_id"] not in ("00-gone", "01-wall"))
    run = tmp_path / "aug"
    rows = []
    for index, status in enumerate(("ok", "ok", "rejected")):
        relpath = f"videos/faceswap/{clip['clip_id'][:2]}/{clip['clip_id']}-{index}.mp4"
        (run / relpath).parent.mkdir(parents=True, exist_ok=True)
        (run / relpath).write_bytes(b"")
        rows.append({"variant_id": variant_id(clip["clip_id"], "faceswap", index), "clip_id": clip["clip_id"],
                     "kind": "faceswap", "variant_index": index, "relpath": relpath, "path": "/moved/away.mp4",
                     "status": status, "usable": status == "ok", "reject_reasons": [] if status == "ok" else ["x"]})
    write_part(variants_table(rows[::-1], {}), run / "variants", 0)  # stored in any order
    write_source(run, manifest)
    assert part_files(run / "variants")
    data = ManifestDataset(DataConfig(manifest_dir=str(run), num_frames=1,
                                      driving_mix={"real": 0.1, "faceswap": 0.9, "stylized": 0.0}), stage=1)
    position = data.rows.column("clip_id").to_pylist().index(clip["clip_id"])
    assert data._variants["faceswap"][position] == [str(run / r["relpath"]) for r in rows[:2]]  # resolved in the run
    drawn = {data.sample_plan(position, epoch).driving_variant for epoch in range(40)
             if data.sample_plan(position, epoch).driving_source == "faceswap"}
    assert drawn == {0, 1}
