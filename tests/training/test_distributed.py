"""Two training workers on CPU (gloo), DDP and FSDP: the same steps, checkpoints that resume exactly whatever
the strategy, stage 3 under FSDP trains only the temporal layers, and workers stay in step when one of them has
nothing to train on."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tiny_manifest import manifest_with_missing_clips
from tests.training.workers import run_workers


def _config(stage: int, manifest, output, **overrides):
    from training.config import load_train_config

    values = {"model.preset": "tiny", "data.manifest_dir": str(manifest), "data.resolution": 64,
              "loader_workers": 0, "output": str(output), "checkpoint_every": 2, "steps": 4, "num_workers": 2}
    values.update(overrides)
    return load_train_config(stage=stage, overrides=values).to_dict()


def _losses(output) -> dict[int, float]:
    lines = (output / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row["loss"] for row in map(json.loads, lines)}


def _state(output) -> dict:
    return torch.load(output / "final" / "state.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_manifest):
    """Two micro-batches per step: gradients are synchronised on the second only (DDP's no_sync, FSDP's
    requires_gradient_sync), so the comparisons below also cover accumulation; the FSDP run also checkpoints
    activations."""
    root = tmp_path_factory.mktemp("distributed")
    run_workers(_config(1, tiny_manifest, root / "ddp", strategy="ddp", accumulate=2))
    # with gradient checkpointing: recomputing a sharded block in the backward gathers its weights again
    run_workers(_config(1, tiny_manifest, root / "fsdp", strategy="fsdp", accumulate=2,
                        **{"model.gradient_checkpointing": True}))
    # interrupted under FSDP at step 2, resumed under DDP: the checkpoint does not depend on the strategy
    run_workers(_config(1, tiny_manifest, root / "switch", strategy="fsdp", accumulate=2, steps=2))
    run_workers(_config(1, tiny_manifest, root / "switch", strategy="ddp", accumulate=2))
    return root


def test_fsdp_takes_the_same_steps_as_ddp(runs):
    ddp, fsdp = _losses(runs / "ddp"), _losses(runs / "fsdp")
    assert sorted(ddp) == sorted(fsdp) == [1, 2, 3, 4]
    for step in ddp:
        assert fsdp[step] == pytest.approx(ddp[step], rel=1e-5)
    assert len(set(ddp.values())) == 4  # real, changing losses
    a, b = _state(runs / "ddp"), _state(runs / "fsdp")
    assert a["model"].keys() == b["model"].keys() and a["ema"].keys() == b["ema"].keys()
    for name, tensor in a["model"].items():  # full tensors under the model's own names, sharded or not
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    for name, tensor in a["ema"].items():
        torch.testing.assert_close(b["ema"][name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_an_fsdp_checkpoint_resumes_exactly_under_ddp(runs):
    straight, switched = _losses(runs / "ddp"), _losses(runs / "switch")
    assert sorted(switched) == [1, 2, 3, 4]
    for step in (3, 4):
        assert switched[step] == pytest.approx(straight[step], rel=1e-5)
    end, expected = _state(runs / "switch")["model"], _state(runs / "ddp")["model"]
    for name, tensor in expected.items():
        torch.testing.assert_close(end[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_stage_3_under_fsdp_trains_only_the_temporal_layers(runs, tiny_manifest, tmp_path):
    start = _state(runs / "fsdp")["model"]
    output = tmp_path / "stage3"
    # stage 3 straight from the stage-1 checkpoint: audio and temporal layers start fresh
    run_workers(_config(3, tiny_manifest, output, strategy="fsdp", steps=2, init_from=str(runs / "fsdp" / "final")))
    end = _state(output)["model"]
    changed = {n for n in end if n in start and not torch.equal(end[n], start[n])}
    assert not changed  # every stage-1 tensor is frozen
    outputs = [n for n in end if ".temporal." in n and n.endswith("to_out.0.weight")]
    assert outputs and all(end[n].abs().sum() > 0 for n in outputs)  # zero-initialised, now trained


def test_workers_skip_a_step_together_when_one_has_nothing(tiny_manifest, tmp_path):
    """One clip in four cannot be decoded: in each epoch one worker's batch is empty once. Both workers must skip
    that step (a worker that went ahead would wait for the other in the next collective), count the failure,
    and take the same number of steps."""
    manifest = manifest_with_missing_clips(tiny_manifest, tmp_path / "manifest", copies=2, missing=1)
    output = tmp_path / "out"
    run_workers(_config(1, manifest, output, strategy="ddp", steps=3), timeout_s=180)
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert rows[-1]["decode_failures"] == 3  # one per epoch, counted over both workers
    assert _state(output)["step"] == 3
