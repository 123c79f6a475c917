"""End to end: the real flow (Prefect + Ray, MediaPipe on CPU) on the shared talking-head clips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from curation.manifest import REQUIRED_COLUMNS, read_manifest, read_provenance
from tests.flows.conftest import REPO, subset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def score_all_run(tmp_path_factory, megactor, videos_dir):
    output = tmp_path_factory.mktemp("score-all")
    done = megactor("curate", "--input", str(videos_dir), "--dataset", "shared", "--output", str(output),
                    "--score-all", "--no-sync")  # SyncNet on every clip would take minutes on CPU
    return output, pd.read_parquet(output / "manifest"), done


def _clips(df, name):
    rows = df[df["source_path"].str.endswith("/" + name)]
    assert len(rows), f"{name} missing from the manifest"
    return rows


def test_every_source_is_accounted_for_and_loadable(score_all_run, videos_dir):
    output, df, done = score_all_run
    assert set(REQUIRED_COLUMNS) <= set(df.columns)
    assert {p.rsplit("/", 1)[1] for p in df["source_path"]} == {p.name for p in videos_dir.iterdir()}
    assert df["clip_id"].is_unique
    assert duckdb.sql(f"SELECT count(*) FROM '{output}/manifest/*.parquet'").fetchall() == [(len(df),)]
    provenance = read_provenance(next((output / "manifest").glob("part-*.parquet")))
    assert provenance["models"]["face_landmarker"].startswith("64184e22")
    assert provenance["config_hash"] and provenance["code_version"]
    assert (output / "README.md").read_text().startswith("# Curated talking-head manifest")
    summary = json.loads((output / "summary.json").read_text())
    assert summary["clips"] == len(df) and summary["shards"]["done"] == summary["shards"]["planned"]
    assert "manifest:" in done.stdout and "(PREFECT_API_URL)" in done.stdout  # reported to the given server


def test_face_resolution_rule_on_real_clips(score_all_run):
    _, df, _ = score_all_run
    big = _clips(df, "derived_katiehill_upscaled_1280.mp4")
    assert (big["face_res_px"] >= 600).all()
    assert not any("face_too_small" in r for r in big["reject_reasons"])
    small = _clips(df, "musetalk_sun_noaudio.mp4")
    assert (small["face_res_px"] < 600).all()
    assert all("face_too_small" in r for r in small["reject_reasons"])


def test_no_audio_clips_carry_the_gate_reason(score_all_run):
    _, df, _ = score_all_run
    for name in ("liveportrait_d0_noaudio.mp4", "musetalk_sun_noaudio.mp4"):
        assert all("no_audio_stream" in r for r in _clips(df, name)["reject_reasons"])
    assert all("no_speech" in r for r in _clips(df, "liveportrait_d3_silenttrack.mp4")["reject_reasons"])


def test_two_shots_split_at_the_cut(score_all_run):
    _, df, _ = score_all_run
    clips = _clips(df, "derived_two_shots_german_kim.mp4").sort_values("start_s")
    assert len(clips) == 2
    assert abs(clips.iloc[0]["end_s"] - 6.0) <= 0.5
    assert clips.iloc[1]["start_s"] == clips.iloc[0]["end_s"]


def test_turned_head_has_larger_mean_yaw(score_all_run):
    _, df, _ = score_all_run
    turned = _clips(df, "pcavs_pose_517600055.mp4")["yaw_abs_mean_deg"].mean()
    frontal = _clips(df, "mimictalk_German_20s.mp4")["yaw_abs_mean_deg"].mean()
    assert turned > frontal


def test_unscored_lip_sync_leaves_good_clips_pending(score_all_run):
    _, df, _ = score_all_run
    big = _clips(df, "derived_katiehill_upscaled_1280.mp4")
    assert (big["status"] == "pending").all() and not big["keep"].any()
    assert all(list(r) == ["sync_confidence", "sync_distance"] for r in big["unscored_rules"])


def test_refilter_changes_decisions_not_scores(score_all_run, megactor, tmp_path):
    output, df, _ = score_all_run
    megactor("filter", "--manifest", str(output), "--output", str(tmp_path), "--face-res-min", "200",
             "--no-require-lip-sync")
    new = read_manifest(tmp_path / "manifest").to_pandas().set_index("clip_id").loc[df["clip_id"]]  # scores + decisions
    pd.testing.assert_series_equal(new["face_res_px"], df.set_index("clip_id")["face_res_px"])
    katie = new[new["source_path"].str.endswith("/sadtalker_WDA_KatieHill_000.mp4")]  # face ~256 px
    assert not any("face_too_small" in r for r in katie["reject_reasons"])
    assert (new["status"] != "pending").all()


@pytest.fixture(scope="module")
def gated_input(tmp_path_factory, videos_dir):
    return subset(tmp_path_factory.mktemp("gated-input"), videos_dir, [
        "derived_katiehill_upscaled_1280.mp4",  # passes the gate
        "liveportrait_d0_noaudio.mp4",  # no audio stream
        "mimictalk_German_20s.mp4",  # frame smaller than 600 px
        "pcavs_pose_517600055.mp4",  # frame smaller than 600 px
        "w2lgfpgan_kim_7s_raw.mp4",  # passes the gate; scored last, so an interruption leaves it undone
    ])


GATED = ("--set", "runtime.shard_max_files=1")  # one source per shard: five shards to interrupt between


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory, megactor, gated_input):
    output = tmp_path_factory.mktemp("gated")
    megactor("curate", "--input", str(gated_input), "--output", str(output), "--executor", "local", *GATED)
    return output


def test_gate_rejected_sources_decode_no_frames(gated_run):
    summary = json.loads((gated_run / "summary.json").read_text())
    counters = summary["counters"]
    assert counters["sources_gate_rejected"] == 3
    assert counters["frames_decoded_gate_rejected_sources"] == 0
    assert counters["frames_decoded_gate_passed_sources"] > 100
    df = pd.read_parquet(gated_run / "manifest")
    gated = df["reject_reasons"].map(lambda r: bool({"frame_too_small", "no_audio_stream"} & set(r)))
    rejected, passed = df[gated], df[~gated]
    assert len(rejected) == 3 and rejected["face_res_px"].isna().all()
    assert len(passed) == 2 and passed["face_res_px"].notna().all()
    assert rejected["scene_index"].isna().all()  # rejected before shot splitting


def test_cascade_runs_syncnet_only_on_clips_still_alive(gated_run):
    df = pd.read_parquet(gated_run / "manifest")
    big = _clips(df, "derived_katiehill_upscaled_1280.mp4")  # passes every rule before lip sync
    assert (big["sync_version"] == "sync_syncnet@1.0").all() and big["sync_c"].notna().all()
    assert big["cascade_stop"].isna().all()
    for windows, conf, duration in zip(big["sync_windows"], big["sync_frame_conf"], big["duration_s"], strict=True):
        assert windows == round(duration * 25) - 5 and len(conf) == windows
    presenter = _clips(df, "w2lgfpgan_kim_7s_raw.mp4")  # face ~311 px: rejected by the face stage
    assert (presenter["cascade_stop"] == "face_mediapipe").all()
    assert presenter["sync_c"].isna().all() and presenter["sync_version"].isna().all()
    assert all("face_too_small" in r for r in presenter["reject_reasons"])
    gated = df[df["reject_reasons"].map(lambda r: bool({"frame_too_small", "no_audio_stream"} & set(r)))]
    assert (gated["cascade_stop"] == "metadata_gate").all()
    counters = json.loads((gated_run / "summary.json").read_text())["counters"]
    assert counters["clips_stopped_after_face_mediapipe"] == len(presenter)


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, gated_run, gated_input, prefect_api,
                                                                  weights_root, megactor, random_syncnet_weights):
    output = tmp_path / "resumed"
    env = {**os.environ, "PREFECT_API_URL": prefect_api[0], "MEGACTOR_WEIGHTS_DIR": str(weights_root),
           "MEGACTOR_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "curate", "--input", str(gated_input),
                                "--output", str(output), "--executor", "local", *GATED,
                                "--set", f"sync.weights={random_syncnet_weights}"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = output / "_state" / "shards" / "shard-00000.json"
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # a crash, not a clean stop
    process.wait()
    done_before = sorted(p.name for p in (output / "_state" / "shards").glob("*.json"))
    assert 1 <= len(done_before) < 5, "the run must be stopped part-way"
    kept_part = output / "manifest" / "part-00000.parquet"
    mtime = kept_part.stat().st_mtime_ns

    megactor("curate", "--input", str(gated_input), "--output", str(output), "--executor", "local", *GATED)
    assert kept_part.stat().st_mtime_ns == mtime  # committed shards are not redone
    resumed = pd.read_parquet(output / "manifest").sort_values("clip_id").reset_index(drop=True)
    reference = pd.read_parquet(gated_run / "manifest").sort_values("clip_id").reset_index(drop=True)
    assert resumed["clip_id"].is_unique
    columns = [c for c in reference.columns if c not in ("source_path",)]
    pd.testing.assert_frame_equal(resumed[columns], reference[columns])


def test_bad_inputs_all_end_with_a_status(tmp_path, megactor, videos_dir):
    from tests.curation.badinputs import make_bad_inputs

    bad = make_bad_inputs(tmp_path / "bad", videos_dir / "mimictalk_German_20s.mp4")
    output = tmp_path / "out"
    megactor("curate", "--input", str(tmp_path / "bad"), "--output", str(output), "--executor", "local")
    df = pd.read_parquet(output / "manifest")
    listed = {str(p) for p in bad.values()}  # as listed: links, the directory and the pipe are rows too
    assert listed == set(df["source_path"])  # nothing dropped, odd paths included, nothing extra
    for path in listed:
        rows = df[df["source_path"] == path]
        assert (rows["status"].isin(["kept", "rejected", "pending", "error"])).all()
        assert all(len(r) or s == "kept" for r, s in zip(rows["reject_reasons"], rows["status"], strict=True))
    errors = df[df["status"] == "error"]
    assert errors["error"].notna().all() and errors["error_reason"].notna().all()
    by_name = {p.rsplit("/", 1)[1]: r for p, r in zip(df["source_path"], df["reject_reasons"], strict=True)}
    assert "empty_file" in by_name[bad["zero_byte"].name]
    assert "probe_failed" in by_name[bad["text_as_mp4"].name]
    assert "no_video_stream" in by_name[bad["audio_only"].name]
    assert "not_a_file" in by_name[bad["dir_named_mp4"].name] and "not_a_file" in by_name[bad["fifo"].name]
    assert "io_error" in by_name[bad["dangling"].name]
    assert "outside_data_root" in by_name[bad["link_dotdot"].name]  # a relative link climbing out: refused
    # an absolute link out of the root is followed by default (sources.py's symlink policy): scored like valid
    assert list(by_name[bad["link_outside"].name]) == list(by_name[bad["valid"].name])


def test_cli_errors_are_one_line_not_tracebacks(megactor, tmp_path):
    done = megactor("curate", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"), check=False)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    done = megactor("curate", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                    "--set", "face.sample_fps=-1", check=False)
    assert done.returncode == 2 and "face.sample_fps" in done.stderr and "Traceback" not in done.stderr
    done = megactor("filter", "--manifest", str(tmp_path), "--output", str(tmp_path / "f"), check=False)
    assert done.returncode == 2 and "no manifest part files" in done.stderr


def test_manifest_is_readable_without_our_code(score_all_run):
    output, _, _ = score_all_run
    table = pq.read_table(output / "manifest")
    assert table.schema.metadata[b"megactor.schema_version"] == b"1.2"
    assert table.schema.field("face_res_px").metadata[b"description"].startswith(b"effective face resolution")


def test_paper_profile_runs_end_to_end_on_tiny_dwpose_models(tmp_path, megactor, videos_dir):
    from curation.weights import sha256_file
    from tests.tiny_dwpose import make_detector, make_pose

    detector = make_detector(tmp_path / "yolox_tiny.onnx", "N")
    pose = make_pose(tmp_path / "dwpose_tiny.onnx", "N")
    source = subset(tmp_path / "input", videos_dir, ["derived_katiehill_upscaled_1280.mp4", "musetalk_sun_noaudio.mp4"])
    output = tmp_path / "out"
    megactor("curate", "--input", str(source), "--output", str(output), "--profile", "paper", "--score-all",
             "--executor", "local",
             "--set", f"face.dwpose.detector_weights={detector}", "--set", f"face.dwpose.pose_weights={pose}")
    df = pd.read_parquet(output / "manifest")
    assert len(df) >= 2 and (df["face_version"] == "face_dwpose@1.0").all()
    assert df["face_res_px"].notna().all() and df["face_track"].map(len).gt(0).all()
    with_audio = df[df["has_audio"]]
    assert with_audio["sync_c"].notna().all() and (with_audio["sync_version"] == "sync_syncnet@1.0").all()
    assert df.loc[~df["has_audio"], "sync_c"].isna().all()
    provenance = read_provenance(next((output / "manifest").glob("*.parquet")))
    assert provenance["profile"] == "paper"
    assert provenance["models"]["yolox_l"] == sha256_file(detector)
    assert provenance["models"]["dw-ll_ucoco_384"] == sha256_file(pose)
    assert {"syncnet_v2", "yolox_l", "dw-ll_ucoco_384"} <= set(provenance["models"])

    # the same run on Ray with the GPU pool forced on (its actors on CPU here): the models run in the actors,
    # the shard tasks decode, and the rows are the local run's
    pooled = tmp_path / "pooled"
    done = megactor("curate", "--input", str(source), "--output", str(pooled), "--profile", "paper", "--score-all",
                    "--set", f"face.dwpose.detector_weights={detector}", "--set", f"face.dwpose.pose_weights={pose}",
                    "--set", "runtime.gpu_pool.mode=on")
    assert "GPU pool of" in done.stdout + done.stderr
    pooled_df = pd.read_parquet(pooled / "manifest").sort_values("clip_id", ignore_index=True)
    local_df = df.sort_values("clip_id", ignore_index=True)
    assert list(pooled_df.columns) == list(local_df.columns)
    for column in local_df.columns:
        assert pooled_df[column].map(repr).tolist() == local_df[column].map(repr).tolist(), column
