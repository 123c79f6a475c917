"""The shard processor without Prefect or Ray: planning, accounting for every source, gate behaviour."""

from __future__ import annotations

import json

import pytest

from curation import pipeline
from curation.config import load_config
from curation.inventory import inventory_rows
from curation.manifest import read_manifest
from curation.sources import make_source


def _row(path, dataset="d", duration=600.0, relpath=None):
    return {"source_path": path, "dataset": dataset, "source_relpath": relpath or path, "duration_s": duration}


def test_plan_is_deterministic_and_sized_by_footage():
    rows = [_row(f"/v/{i:03d}.mp4", duration=900.0) for i in range(10)]  # 15 min each
    plan = pipeline.plan_shards(rows[::-1], shard_hours=1.0, max_files=100)
    assert plan == pipeline.plan_shards(rows, shard_hours=1.0, max_files=100)  # input order does not matter
    assert [len(s) for s in plan] == [4, 4, 2]
    assert sorted(p for s in plan for p in s) == sorted(r["source_path"] for r in rows)  # each source once
    assert [len(s) for s in pipeline.plan_shards(rows, shard_hours=10, max_files=3)] == [3, 3, 3, 1]


def test_plan_of_a_4670_hour_corpus_is_thousands_of_tasks_not_millions():
    # VoxCeleb2-like: 8 s utterances; HDTF-like: 5 min videos
    rows = [_row(f"/vox/{i:07d}.mp4", "vox", 8.0) for i in range(1_000_000)]  # 2,222 h
    rows += [_row(f"/hdtf/{i:05d}.mp4", "hdtf", 300.0) for i in range(29_136)]  # 2,428 h
    plan = pipeline.plan_shards(rows, shard_hours=1.0, max_files=2000)
    assert 2_000 <= len(plan) <= 10_000


def test_a_changed_input_or_scoring_is_refused(tmp_path):
    layout = pipeline.OutputLayout(tmp_path)
    config = load_config()
    pipeline.load_or_save_plan(layout, [["/a"], ["/b"]], config)
    assert pipeline.load_or_save_plan(layout, [["/a"], ["/b"]], config) == [["/a"], ["/b"]]
    with pytest.raises(Exception, match="1 new, 0 missing"):
        pipeline.load_or_save_plan(layout, [["/a"], ["/b", "/c"]], config)
    with pytest.raises(Exception, match="different scoring settings"):
        pipeline.load_or_save_plan(layout, [["/a"], ["/b"]], config.with_overrides({"face.sample_fps": 1}))


def test_shard_accounts_for_every_source_and_the_gate_decodes_nothing(tmp_path, videos_dir, weights_root,
                                                                      monkeypatch):
    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(weights_root))
    for name in ("liveportrait_d0_noaudio.mp4", "pcavs_pose_517600055.mp4"):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).symlink_to(videos_dir / name)
    (tmp_path / "in" / "broken.mp4").write_text("not a video")
    sources = inventory_rows(make_source("folder", tmp_path / "in").iter_files())
    result = pipeline.ShardProcessor(load_config(), tmp_path / "out").process(7, sources)
    counters = result["counters"]
    assert counters["sources"] == 3 and counters["sources_probe_error"] == 1
    assert counters["sources_gate_rejected"] == 2 and counters["frames_decoded_gate_rejected_sources"] == 0
    table = read_manifest(tmp_path / "out" / "manifest").to_pylist()
    assert len(table) == 3 and all(row["keep"] is False for row in table)
    done = json.loads((tmp_path / "out" / "_state" / "shards" / "shard-00007.json").read_text())
    assert done["rows"] == 3


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(Exception, match="use --profile lite"):
        pipeline.build_scorers(load_config(None, {"profile": "paper"}))
