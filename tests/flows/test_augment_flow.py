"""End to end: `megactor augment` on a curated run of short spans of the shared clips, through the Prefect flow on
Ray (tiny swap and diffusion models, the real SCRFD); a resume after `kill -9`; and stage-1 training drawing the
variants it made."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from curation import media
from curation.augment.variants import read_variants
from tests.flows.conftest import REPO

pytestmark = pytest.mark.slow


def _sets(overrides: dict) -> list[str]:
    args = []
    for key, value in overrides.items():
        args += ["--set", f"{key}={'null' if value is None else value}"]
    return args


@pytest.fixture(scope="module")
def augmented(tmp_path_factory, megactor, short_run, augment_overrides):
    output = tmp_path_factory.mktemp("augmented")
    done = megactor("augment", "--manifest", str(short_run), "--output", str(output), *_sets(augment_overrides),
                    timeout=900)
    return output, done


def test_the_flow_makes_every_variant_and_documents_the_run(augmented, short_run):
    output, done = augmented
    variants = pd.read_parquet(output / "variants")
    assert len(variants) == 8 and variants["variant_id"].is_unique  # 4 kept clips x (faceswap, stylized)
    assert set(variants["status"]) == {"ok", "error"}
    assert set(variants.loc[variants["status"] == "error", "error_reason"]) == {"source_missing",
                                                                                 "no_face_detected"}
    for row in variants[variants["usable"]].itertuples():
        probe = media.probe(output / row.relpath)
        assert probe.n_frames == row.frames == 50 and probe.has_audio
    summary = json.loads((output / "summary.json").read_text())
    assert summary["shards"]["done"] == summary["shards"]["planned"] and summary["variants"] == 8
    assert summary["kinds"]["faceswap"]["clips_with_usable"] == 2
    provenance = summary["provenance"]
    assert provenance["models"]["scrfd_500m"].startswith("b467f878") and provenance["seed"] == 0
    assert provenance["prompts"] and provenance["code_version"]
    card = (output / "README.md").read_text()
    assert card.startswith("# Augmented driving variants") and "non-commercial research" in card
    assert "`id_sim_source`" in card and "(PREFECT_API_URL)" not in done.stdout
    assert f"megactor train --stage 1 --manifest {output}" in done.stdout
    assert "non-commercial research only" in done.stderr  # the licence, said up front


def test_a_bad_run_is_refused_with_one_line(megactor, tmp_path, short_run, augment_overrides):
    done = megactor("augment", "--manifest", str(tmp_path / "nothing"), "--output", str(tmp_path / "o"), check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no curated manifest" in done.stderr
    # the swap refuses to start without its models, naming the command that fetches them
    done = megactor("augment", "--manifest", str(short_run), "--output", str(tmp_path / "o"), check=False)
    assert done.returncode == 2 and "megactor weights fetch det_10g" in done.stderr
    done = megactor("augment", "--manifest", str(short_run), "--output", str(tmp_path / "o"),
                    *_sets({**augment_overrides, "faceswap.swapper_weights": "/nope.onnx"}), check=False)
    assert done.returncode == 2 and "does not exist: /nope.onnx" in done.stderr
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_resume_after_kill_gives_the_uninterrupted_table(tmp_path, prefect_api, short_run, augment_overrides,
                                                         augmented, weights_root):
    output = tmp_path / "resumed"
    args = [sys.executable, "-m", "flows.cli", "augment", "--manifest", str(short_run), "--output", str(output),
            "--executor", "local", *_sets({**augment_overrides, "runtime.shard_clips": 1})]
    env = {**os.environ, "PREFECT_API_URL": prefect_api[0], "MEGACTOR_WEIGHTS_DIR": str(weights_root),
           "MEGACTOR_OFFLINE": "1"}
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    marker = output / "_state" / "variants" / "shard-00002.json"  # two of the four clip shards committed
    deadline = time.monotonic() + 600
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert marker.exists(), "the run ended before it could be interrupted"
    done_before = sorted(p.name for p in (output / "_state" / "variants").glob("*.json"))
    assert len(done_before) < 4
    committed = {p.name: p.stat().st_mtime_ns for p in (output / "variants").glob("part-*.parquet")}
    rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name, mtime in committed.items():  # committed shards are not redone
        assert (output / "variants" / name).stat().st_mtime_ns == mtime
    resumed = read_variants(output / "variants").to_pandas().set_index("variant_id").sort_index()
    straight = read_variants(augmented[0] / "variants").to_pandas().set_index("variant_id").sort_index()
    assert list(resumed.index) == list(straight.index)  # every variant once, none twice
    columns = ["clip_id", "kind", "status", "error_reason", "identity_id", "prompt", "seed", "frames", "relpath"]
    pd.testing.assert_frame_equal(resumed[columns], straight[columns])
    assert not list(output.rglob(".*.tmp.mp4"))  # no half-written video left behind


def test_stage_one_trains_on_swapped_and_stylized_driving_frames(augmented, megactor, tmp_path):
    output, _ = augmented
    train = tmp_path / "train"
    megactor("train", "--stage", "1", "--manifest", str(output), "--output", str(train), "--executor", "local",
             "--set", "model.preset=tiny", "--set", "data.resolution=64", "--set", "steps=8",
             "--set", "loader_workers=1", "--set", "checkpoint_every=8",
             "--set", "data.driving_mix={real: 0.2, faceswap: 0.4, stylized: 0.4}", timeout=900)
    last = json.loads((train / "stage1" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 8  # (the run's clip whose source is gone fails to decode and is skipped, counted)
    assert last["driving_faceswap"] > 0 and last["driving_stylized"] > 0
    assert last["driving_real"] + last["driving_faceswap"] + last["driving_stylized"] == 8
