"""The shard processor without Prefect or Ray: planning, accounting for every source, gate behaviour."""

from __future__ import annotations

import json
import types
from collections import Counter

import pytest

from curation import filters, pipeline
from curation.config import load_config
from curation.inventory import inventory_rows
from curation.manifest import read_manifest
from curation.scorers.base import ClipSpan, Scorer
from curation.scorers.face_dwpose import DWPoseFaceScorer
from curation.scorers.sync_syncnet import SyncNetScorer
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


def test_profiles_choose_their_scorers_in_cascade_order():
    names = lambda config: [s.name for s in pipeline.build_scorers(config, device="cpu")]  # noqa: E731
    assert names(load_config()) == ["audio_activity", "face_mediapipe", "sync_syncnet"]
    assert names(load_config(None, {"profile": "paper"})) == ["audio_activity", "face_dwpose", "sync_syncnet"]
    assert names(load_config(None, {"sync.enabled": False})) == ["audio_activity", "face_mediapipe"]


def test_ray_requests_gpus_only_for_a_gpu_device_and_no_more_than_one_scorer_needs():
    cpu = pipeline.ray_resources(load_config(None, {"runtime.device": "cpu", "profile": "paper"}))
    assert cpu["num_gpus"] == 0
    paper = pipeline.ray_resources(load_config(None, {"runtime.device": "cuda", "profile": "paper"}))
    lite = pipeline.ray_resources(load_config(None, {"runtime.device": "cuda"}))
    assert paper["num_gpus"] == DWPoseFaceScorer.num_gpus  # scorers run one after another: the max, not the sum
    assert lite["num_gpus"] == SyncNetScorer.num_gpus
    assert 0 < lite["num_gpus"] < 1  # several shards share a GPU, a bounded number of them
    assert paper["max_calls"] == 0 and "max_calls" not in cpu  # GPU workers live on with their models loaded


class _Fixed(Scorer):
    """A scorer double that returns fixed columns and counts its calls."""

    version = "test"
    fields = ()

    def __init__(self, name: str, column: str, columns: dict):
        super().__init__(None)
        self.name, self.version_column, self.columns, self.calls = name, column, columns, 0

    def score(self, clip, upstream):
        self.calls += 1
        return self.columns


def _cascade(score_all: bool, face_res: float):
    config = load_config(None, {"runtime.score_all": score_all})
    scorers = [_Fixed("audio", "audio_version", {"audio_speech_frac": 0.8}),
               _Fixed("face", "face_version", {"face_present_frac": 1.0, "multi_face_frac": 0.0,
                                               "face_res_px": face_res, "yaw_abs_mean_deg": 5.0}),
               _Fixed("sync", "sync_version", {"sync_c": 8.0, "sync_d": 6.0, "sync_offset": 0})]
    probe = types.SimpleNamespace(has_audio=True)
    row = {"has_video": True, "has_audio": True, "width": 1280, "height": 1280, "duration_s": 5.0}
    counters = Counter()
    pipeline.ShardProcessor(config, "/unused")._score(row, ClipSpan("x.mp4", 0, 5, probe), scorers, counters)
    return row, [s.calls for s in scorers], counters


def test_cascade_stops_at_the_first_stage_that_rejects():
    row, calls, counters = _cascade(score_all=False, face_res=300)
    assert calls == [1, 1, 0]  # SyncNet never sees a clip whose face is too small
    assert row["cascade_stop"] == "face" and counters["clips_stopped_after_face"] == 1
    assert "sync_version" not in row  # the version column names only the scorers that ran
    assert "face_too_small" in filters.decide(row, load_config().thresholds).reject_reasons

    row, calls, _ = _cascade(score_all=False, face_res=700)
    assert calls == [1, 1, 1] and "cascade_stop" not in row
    assert filters.decide(row, load_config().thresholds).status == "kept"


def test_score_all_runs_every_stage_on_rejected_clips():
    row, calls, _ = _cascade(score_all=True, face_res=300)
    assert calls == [1, 1, 1] and "cascade_stop" not in row and row["sync_c"] == 8.0
