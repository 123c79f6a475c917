"""End to end: `megactor train --stage all` on a tiny manifest curated from the shared clips, through the Prefect
flows (tiny model, a few steps per stage, CPU): the chain with the local executor (the session's ``trained``
fixture; Ray Train's start is ~1.5 min a stage on 2 cores), Ray Train's own launch with two FSDP workers."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def _state(path):
    return torch.load(path / "final" / "state.pt", map_location="cpu", weights_only=True)


def test_three_stages_chain_through_the_flow(trained):
    output, done = trained
    for stage in (1, 2, 3):
        run = output / f"stage{stage}"
        assert (run / "final" / "state.pt").is_file() and (run / "final" / "config.yaml").is_file()
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [row["step"] for row in lines] == [1, 2] and all(row["loss"] > 0 for row in lines)
        assert any((run / "tensorboard").iterdir())
        assert not (run / "ray").exists()  # the local executor: in the CLI's process, no Ray Train
        assert f"stage {stage}: 2 steps" in done.stdout
        meta = json.loads((run / "final" / "model.json").read_text())  # the pickle-free inference export
        assert (run / "final" / "model.safetensors").is_file() and meta["stage"] == stage
        assert meta["weights"] == "ema" and meta["step"] == 2 and meta["data"]["resolution"] == 64
    assert _state(output / "stage2")["config"]["init_from"] == str(output / "stage1" / "final")
    assert _state(output / "stage3")["config"]["init_from"] == str(output / "stage2" / "final")


def test_each_stage_adds_its_modules_and_stage_3_trains_only_the_temporal_layers(trained):
    output, _ = trained
    one, two, three = (_state(output / f"stage{n}")["model"] for n in (1, 2, 3))
    assert not any("audio" in k for k in one) and any("audio" in k for k in two)
    assert not any("temporal" in k for k in two) and any("temporal" in k for k in three)
    changed = [k for k in two if not torch.equal(two[k], three[k])]
    assert changed == []  # everything stage 2 had is frozen in stage 3
    temporal_out = [v for k, v in three.items() if "temporal" in k and "to_out" in k and k.endswith("weight")]
    assert temporal_out and all(v.abs().sum() > 0 for v in temporal_out)  # zero at init: it trained


def test_stage_1_freezes_nothing_it_should_train(trained):
    output, _ = trained
    state = _state(output / "stage1")
    assert state["step"] == 2 and set(state["config"]["trains"]) == {"denoiser", "reference", "driven_encoder"}
    assert len(state["ema"]) > 0 and state["optimizer"]["state"]


def test_two_ray_train_workers_shard_the_model_with_fsdp(tmp_path, megactor, tiny_manifest):
    """Ray Train's own launch (process group, ranks) with two CPU workers and FSDP, through the CLI."""
    output = tmp_path / "fsdp"
    megactor("train", "--stage", "1", "--manifest", str(tiny_manifest.parent), "--output", str(output),
             "--set", "model.preset=tiny", "--set", "data.resolution=64", "--set", "steps=2",
             "--set", "loader_workers=0", "--set", "num_workers=2", "--set", "strategy=fsdp", timeout=900)
    run = output / "stage1"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in lines] == [1, 2] and all(row["workers"] == 2 for row in lines)
    state = _state(run)
    from training.model import MegActorModel, megactor_config

    fresh = MegActorModel(megactor_config("tiny", use_audio=False, use_temporal=False)).state_dict()
    assert state["model"].keys() == fresh.keys()  # gathered whole, under the model's own names
    assert all(state["model"][k].shape == v.shape for k, v in fresh.items())
    assert (run / "ray").is_dir()  # Ray Train's run directory


def test_the_local_executor_trains_one_worker_and_says_so(tmp_path, megactor, tiny_manifest):
    done = megactor("train", "--stage", "1", "--manifest", str(tiny_manifest.parent), "--output", str(tmp_path),
                    "--executor", "local", "--set", "num_workers=2", check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "the local executor trains in one process: num_workers is 2" in done.stdout + done.stderr
