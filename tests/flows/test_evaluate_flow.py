"""End to end: ``megactor evaluate`` on the tiny curated manifest with the trained tiny checkpoint, the metric
networks in their real architectures and file formats with random weights (tests.tiny_metrics), the real SCRFD
detector, a tiny ArcFace and SyncNet with random weights. The numbers mean nothing; every one of them is
computed by the real code, and the table, split and protocol are checked."""

from __future__ import annotations

import json
import math
import shutil

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def eval_config(tmp_path_factory, weights_root, random_syncnet_weights, tiny_faceswap_models):
    from tests.tiny_metrics import write_metric_weights

    folder = tmp_path_factory.mktemp("metric-weights")
    weights = {k: str(v) for k, v in write_metric_weights(folder).items()}
    weights.update(syncnet_v2=str(random_syncnet_weights), w600k_r50=str(tiny_faceswap_models["arcface"]),
                   scrfd_500m=str(weights_root / "insightface" / "scrfd_500m_bnkps.onnx"))
    path = folder / "eval.yaml"
    path.write_text(json.dumps({"weights": weights, "face_detector": "scrfd_500m", "seconds": 1.4, "steps": 2,
                                "max_clips": 2, "device": "cpu"}))
    return path


@pytest.fixture(scope="module")
def evaluated(megactor, trained, tiny_manifest, eval_config, tmp_path_factory):
    output = tmp_path_factory.mktemp("eval")
    done = megactor("evaluate", "--manifest", str(tiny_manifest.parent), "--output", str(output), "--checkpoint",
                    str(trained[0]), "--config", str(eval_config), timeout=1200)
    return output, done


def test_every_mode_gets_every_metric(evaluated):
    output, done = evaluated
    results = json.loads((output / "results.json").read_text())
    rows = {r["method"]: r for r in results["results"]}
    assert set(rows) == {"A", "V", "A+V"}
    for row in rows.values():
        assert row["clips"] >= 1 and row["missing"] == 0
        for key in ("fid", "fvd", "lpips", "sync_c", "sync_d", "csim"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["method"], key)
        assert row["fid"] >= 0 and row["fvd"] >= 0 and row["lpips"] >= 0 and -1 <= row["csim"] <= 1
    protocol = results["protocol"]
    assert protocol["resolution"] == 64 and protocol["stage"] == 3 and protocol["weights"] == "ema"
    assert {"pt_inception", "i3d_400", "alexnet", "lpips_alex_v0.1", "syncnet_v2", "w600k_r50"} <= set(
        protocol["weights_sha256"])
    table = (output / "results.md").read_text()
    assert "| Method | FID ↓ | FVD ↓ | LPIPS ↓ | Sync-C ↑ | Sync-D ↓ | CSIM ↑ | clips |" in table
    assert "| A+V |" in table and "n/a" not in table.split("## Protocol")[0]
    assert "| A+V |" in done.stdout


def test_the_split_is_by_identity_and_recorded(evaluated):
    output, _ = evaluated
    split = pq.read_table(output / "split.parquet").to_pylist()
    sides = {}
    for row in split:
        sides.setdefault(row["identity"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())  # no identity on both sides
    assert any("test" in s for s in sides.values()) and any("train" in s for s in sides.values())
    test_clips = {r["clip_id"] for r in split if r["split"] == "test"}
    assert {p.stem for p in (output / "real").glob("*.mp4")} <= test_clips
    assert {p.stem for p in (output / "mixed").glob("*.mp4")} == {p.stem for p in (output / "real").glob("*.mp4")}


def test_another_methods_videos_are_scored_against_the_same_ground_truth(evaluated, tiny_manifest, eval_config,
                                                                         tmp_path, prefect_api):
    from flows.evaluate import EvalConfig, run_evaluation

    output, _ = evaluated
    other = tmp_path / "copy-of-real"
    shutil.copytree(output / "real", other)  # a perfect method: the ground truth itself
    config = EvalConfig.model_validate({**json.loads(eval_config.read_text()), "metrics": ["fid", "lpips"]})
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # the session's server: Prefect read its settings when first imported, before the fixture set the variable,
    # and would otherwise start a temporary server of its own (slow to start on a loaded machine)
    with temporary_settings(updates={PREFECT_API_URL: prefect_api[0]}):
        summary = run_evaluation(tiny_manifest.parent, output, config, videos={"perfect": str(other)},
                                 executor="local")
    rows = {r["method"]: r for r in summary["results"]}
    assert set(rows) == {"perfect"} and rows["perfect"]["clips"] >= 1
    assert rows["perfect"]["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert rows["perfect"]["fid"] == pytest.approx(0.0, abs=1e-3)
    assert "| perfect |" in (output / "results.md").read_text()
