"""Data parallelism for the training loop, in plain torch.distributed: DDP, or FSDP (PyTorch's ``fully_shard``,
one shard group per transformer block) for the full model. Whoever starts the workers (Ray Train's TorchTrainer,
torchrun, a test's process group) initialises the process group; without one the loop runs as a single worker.

Checkpoints hold full, unsharded tensors under the model's own parameter names whatever the strategy, so a
checkpoint written with FSDP resumes under DDP (or on one worker) and the other way round, and inference reads it
without torch.distributed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    return rank_and_world()[1] > 1


def wrap(model: torch.nn.Module, strategy: str, device: torch.device) -> torch.nn.Module:
    """The module the loop calls. DDP returns a wrapper around ``model``; FSDP shards ``model`` in place (each
    transformer block of both transformers is one group, the rest the root's) and returns it. Call it after
    freezing: FSDP keeps ``requires_grad`` per parameter, DDP registers hooks for the trainable ones only. Build
    the optimizer afterwards, from the parameters ``model`` holds then (FSDP replaces them with shards)."""
    if not is_distributed():
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        for transformer in (model.reference, model.denoiser):
            for block in transformer.transformer_blocks:
                fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"unknown strategy {strategy!r}")


@contextlib.contextmanager
def gradient_sync(wrapped: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Around a micro-batch's forward and backward: gradients are synchronised across workers only when
    ``enabled`` (the last micro-batch of an optimizer step); before, each worker accumulates its own."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(wrapped, DistributedDataParallel) and not enabled:
        with wrapped.no_sync():
            yield
        return
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP: unsharded gradients kept until the last one
        wrapped.set_requires_gradient_sync(enabled)
    yield


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full tensors on the CPU, by parameter name (rank 0 holds them; a collective under FSDP: every rank calls)."""
    if not is_distributed():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=_FULL)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name (not position), full tensors, rank 0 holding them."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    if not is_distributed():
        model.load_state_dict(state)
        return
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole (a collective), or the tensor itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A full tensor laid out as ``reference``: sharded the same way when it is a DTensor."""
    value = value.to(device=reference.device, dtype=value.dtype)
    if isinstance(reference, DTensor):
        return distribute_tensor(value, reference.device_mesh, reference.placements)
    return value


def mean_over_workers(value: torch.Tensor) -> float:
    """A scalar averaged over the workers (what the logs show), or itself on one worker."""
    value = full(value).detach().float()
    if is_distributed():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return float(value)


def sum_over_workers(values: list[int], device: torch.device) -> list[int]:
    """Integers summed over the workers (one small collective), or themselves on one worker."""
    if not is_distributed():
        return list(values)
    total = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return [int(v) for v in total.tolist()]
