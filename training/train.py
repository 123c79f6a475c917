"""One training loop for the three stages, distributed with Ray Train (DDP, or FSDP for the full model): the same
code runs on one CPU, one GPU or a cluster by configuration.

Phases of ``train_loop_per_worker``: (1) build the frozen parts (VAE, Whisper) and the model, initialised from
PixArt-alpha or the previous stage; (2) freeze what the stage does not train; (3) the data, in a resumable order;
(4) optimizer, schedule, EMA; (5) resume from the newest checkpoint in the output directory, if any; (6) the loop:
encode, noise, predict, masked loss, step, EMA, log, checkpoint.

A checkpoint is one dict (``state.pt``): model, EMA, optimizer, scheduler, step, data position (epoch, batch),
the RNG states, and the config. Noise and timesteps are drawn from a generator derived from (seed, micro-batch,
rank), so a resumed run draws exactly what an uninterrupted one would. With ``accumulate`` > 1 an optimizer step
takes that many micro-batches, gradients synchronised across workers on the last one."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from curation.errors import ConfigError, MegactorError, TrainingError
from training import components, distributed
from training.components import STATE_FILE
from training.config import TrainConfig
from training.data import DRIVING_SOURCES
from training.export import export_state

log = logging.getLogger(__name__)



# -- helpers -----------------------------------------------------------------------------------------------------

def resolve_device(config: TrainConfig) -> torch.device:
    if config.use_gpu is False or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.precision == "fp32" or (config.precision == "auto" and device.type == "cpu"):
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "auto": torch.bfloat16}[config.precision]


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The RNG for one step's noise and timesteps: a function of (seed, step, rank) only."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step) * 1_009 + rank)
    return generator


class ResumableOrder:
    """A deterministic order over the dataset per epoch (a permutation from (seed, epoch)), sharded by rank, that
    can start in the middle of an epoch: the data position of a checkpoint."""

    def __init__(self, length: int, *, seed: int, rank: int, world: int, batch_size: int):
        self.length, self.seed, self.rank, self.world, self.batch_size = length, seed, rank, world, batch_size

    def batches_per_epoch(self) -> int:
        return max(1, (self.length // self.world) // self.batch_size)

    def batch_indices(self, epoch: int, start_batch: int) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        shard = order[self.rank:: self.world][: self.batches_per_epoch() * self.batch_size]
        for start in range(start_batch * self.batch_size, len(shard), self.batch_size):
            yield shard[start: start + self.batch_size]


# -- checkpoints -------------------------------------------------------------------------------------------------

def checkpoint_dir(config: TrainConfig) -> Path:
    return Path(config.output).resolve() / "checkpoints"


def latest_checkpoint(config: TrainConfig) -> Path | None:
    """The newest complete checkpoint (its state file is written last, by rename) in the run's output."""
    root = checkpoint_dir(config)
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(path: Path, state: dict[str, Any], config: TrainConfig) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    partial = path / (STATE_FILE + ".part")
    torch.save(state, partial)
    os.replace(partial, path / STATE_FILE)


def prune_checkpoints(config: TrainConfig) -> None:
    done = sorted(p for p in checkpoint_dir(config).glob("step-*") if (p / STATE_FILE).is_file())
    for old in done[: -config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """The global RNG states (rank 0's, which writes the checkpoint; noise and timesteps come from the per-step
    generators, so the other ranks' global states do not decide a resumed run's draws)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    # numpy's state as plain values and a tensor: the checkpoint then loads with torch.load(weights_only=True)
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- the EMA -----------------------------------------------------------------------------------------------------

class EMA:
    """Exponential moving average of the trainable parameters (fp32), the weights used for inference. Under FSDP
    each worker keeps the average of its own shards; the checkpoint holds the gathered, full tensors."""

    def __init__(self, named: dict[str, torch.nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in named.items()}

    @torch.no_grad()
    def update(self, named: dict[str, torch.nn.Parameter]) -> None:
        for name, p in named.items():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full tensors on the CPU (a collective under FSDP: every worker calls it, in the same order)."""
        return {name: distributed.full(value).cpu() for name, value in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.shadow.keys():
            raise ValueError(f"the checkpoint's EMA holds other parameters ({len(state)} vs {len(self.shadow)})")
        self.shadow = {name: distributed.like(state[name].float(), self.shadow[name]) for name in self.shadow}


# -- the loop ----------------------------------------------------------------------------------------------------

def train_loop_per_worker(config_dict: dict[str, Any]) -> None:
    """Ray Train's per-worker function (also callable directly, without Ray, as a single worker)."""
    from training.config import validate

    config = validate(config_dict, origin="trainer")
    rank, world = distributed.rank_and_world()
    launched = _ray_world_size()
    if launched is not None and launched != world:  # each worker would train a model of its own, unnoticed
        raise TrainingError(f"Ray Train started {launched} workers but torch.distributed sees {world}: the process "
                            f"group was not set up")
    device = resolve_device(config)

    # 1. frozen parts and the model, initialised alike on every worker (FSDP keeps each worker's own shard)
    torch.manual_seed(config.seed)
    vae = components.build_vae(config, device)
    audio_encoder = components.build_audio_encoder(config, device) if config.model.use_audio else None
    model = components.build_model(config).to(device)
    scheduler_noise = components.noise_schedule()
    random.seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    torch.manual_seed(config.seed + rank)

    # 2. what trains, then data parallelism (FSDP replaces the parameters with shards: collect them after)
    components.set_trainable(model, config.trains)
    if config.model.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    wrapped = distributed.wrap(model, config.strategy, device)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}

    # 3. data, in an order that a checkpoint can resume exactly
    dataset = components.build_dataset(config)
    order = ResumableOrder(len(dataset), seed=config.seed, rank=rank, world=world, batch_size=config.batch_size)

    # 4. optimizer, schedule, EMA
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.optim.lr, betas=config.optim.betas,
                                  weight_decay=config.optim.weight_decay)
    warmup = config.optim.warmup_steps
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    ema = EMA(trainable, config.ema_decay)
    scaler = torch.amp.GradScaler(enabled=config.precision == "fp16" and device.type == "cuda")

    # 5. resume
    step, epoch, batch_in_epoch, failures = 0, 0, 0, 0
    drawn = dict.fromkeys(DRIVING_SOURCES, 0)  # driving sources of the samples trained on, over all workers
    resume = latest_checkpoint(config)
    if resume is not None:
        state = torch.load(resume / STATE_FILE, map_location="cpu", weights_only=True)  # never runs code from a file
        distributed.load_model_state(model, state["model"])
        ema.load_state_dict(state["ema"])
        distributed.load_optimizer_state(model, optimizer, state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        failures = state.get("decode_failures", 0)
        drawn.update(state.get("driving_drawn", {}))
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", resume, step)

    if rank == 0:
        Path(config.output).resolve().mkdir(parents=True, exist_ok=True)
    writer = _tensorboard(config) if rank == 0 else None
    amp = autocast_dtype(config, device)
    started, last, first_step = time.perf_counter(), None, step
    micro, micro_losses = 0, []  # micro-batches accumulated towards the next optimizer step
    skipped_in_a_row = 0

    # 6. the loop
    while step < config.steps:
        epoch_started_at = batch_in_epoch
        # closing(): a break stops the decoding threads now, not when the generator is collected
        with contextlib.closing(_loader(dataset, order, epoch, batch_in_epoch, config)) as batches:
            for batch in batches:
                batch_in_epoch += 1
                # clips that failed to decode were dropped by the collate function (the sampler's batches are
                # full); counted over all workers, and a step that any worker has nothing for is skipped by all
                # of them, so that they stay in step (a collective waits for every worker)
                sources = batch["driving_source"] if batch is not None else []
                failed, empty, *counts = distributed.sum_over_workers(
                    [config.batch_size - (0 if batch is None else len(batch["frames"])), int(batch is None),
                     *(sources.count(source) for source in DRIVING_SOURCES)], device)
                failures += failed
                for source, count in zip(DRIVING_SOURCES, counts, strict=True):  # the real/swap/stylized mix drawn
                    drawn[source] += count
                if empty:  # every clip of some worker's batch failed: skipped and counted
                    skipped_in_a_row += 1
                    if skipped_in_a_row >= 2 * order.batches_per_epoch():  # samples differ per epoch: two
                        raise TrainingError(f"nothing trained in the last {skipped_in_a_row} batches (two epochs): "
                                            f"{failures} clip(s) failed to decode so far and each of those "
                                            f"batches had a worker with nothing left; check the manifest's "
                                            f"source paths")
                    continue
                skipped_in_a_row = 0
                # gradient accumulation: `accumulate` micro-batches per optimizer step, gradients synchronised
                # across workers on the last one only
                generator = step_generator(config.seed, step * config.accumulate + micro, rank, device)
                with distributed.gradient_sync(wrapped, micro + 1 == config.accumulate):
                    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        loss = components.training_loss(wrapped, vae, audio_encoder, scheduler_noise, batch, config,
                                                        device, generator)
                    scaler.scale(loss / config.accumulate).backward()
                micro_losses.append(loss.detach())
                micro += 1
                if micro < config.accumulate:
                    continue
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(list(trainable.values()), config.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                lr_schedule.step()
                ema.update(trainable)
                step += 1
                last = distributed.mean_over_workers(torch.stack(micro_losses).mean())
                micro, micro_losses = 0, []
                metrics = {"step": step, "loss": last, "grad_norm": float(distributed.full(grad_norm)),
                           "lr": lr_schedule.get_last_lr()[0], "decode_failures": failures, "workers": world,
                           **{f"driving_{source}": count for source, count in drawn.items()}}
                if rank == 0:  # every step's metrics, one JSON line each (TensorBoard gets every log_every-th)
                    with open(Path(config.output).resolve() / "metrics.jsonl", "a") as handle:
                        handle.write(json.dumps(metrics) + "\n")
                if writer and (step % config.log_every == 0 or step == config.steps):
                    for key in ("loss", "grad_norm", "lr", "decode_failures"):
                        writer.add_scalar(f"train/{key}", metrics[key], step)
                    writer.add_scalar("train/samples_per_s", (step - first_step) * config.batch_size * world
                                      * config.accumulate / (time.perf_counter() - started), step)
                if step % config.checkpoint_every == 0 or step == config.steps:
                    # gathered on every worker (collectives under FSDP), written by rank 0
                    state = {"model": distributed.model_state(model), "ema": ema.state_dict(),
                             "optimizer": distributed.optimizer_state(model, optimizer),
                             "lr_schedule": lr_schedule.state_dict(), "scaler": scaler.state_dict(), "step": step,
                             "epoch": epoch, "batch_in_epoch": batch_in_epoch, "decode_failures": failures,
                             "driving_drawn": dict(drawn),
                             "rng": rng_state(),
                             "config": config.to_dict()}
                    if rank == 0:
                        save_checkpoint(checkpoint_dir(config) / f"step-{step:08d}", state, config)
                        prune_checkpoints(config)
                        if step == config.steps:  # the stage's result, and its pickle-free inference export
                            final = Path(config.output).resolve() / "final"
                            save_checkpoint(final, state, config)
                            export_state(state, final)
                _report(metrics)
                if step >= config.steps:
                    break
            else:
                if batch_in_epoch == epoch_started_at == 0:
                    raise TrainingError(f"epoch {epoch} had no batch: {len(dataset)} samples for {world} worker(s)")
                epoch, batch_in_epoch = epoch + 1, 0
    if writer:
        writer.close()
    log.info("finished at step %d, last loss %s", step, last)


def _loader(dataset, order: ResumableOrder, epoch: int, start_batch: int, config: TrainConfig):
    """This epoch's batches from ``start_batch`` on, ``loader_workers`` samples decoding at a time, a few batches
    ahead of the model. Threads, not processes: the decoding runs in ffmpeg subprocesses and OpenCV/numpy, which
    release the GIL, and a DataLoader's forked (or forkserver) workers hang inside a Ray Train worker. Each
    sample's randomness comes from (seed, epoch, index), so the order of completion does not matter."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from training.data import collate_skip_failed

    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    batches = order.batch_indices(epoch, start_batch)
    if config.loader_workers == 0:
        for indices in batches:
            yield collate_skip_failed([dataset[i] for i in indices])
        return
    with ThreadPoolExecutor(config.loader_workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for indices in batches:
            pending.append([pool.submit(dataset.__getitem__, i) for i in indices])
            if len(pending) > 2:  # two batches decoding ahead of the one handed over
                yield collate_skip_failed([future.result() for future in pending.popleft()])
        while pending:
            yield collate_skip_failed([future.result() for future in pending.popleft()])


def _ray_world_size() -> int | None:
    """The number of workers Ray Train started, or None outside Ray Train."""
    try:
        import ray.train

        return ray.train.get_context().get_world_size()
    except Exception:
        return None


def _report(metrics: dict[str, Any]) -> None:
    try:
        import ray.train

        ray.train.report(metrics)
    except Exception:
        pass


def _tensorboard(config: TrainConfig):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: no TensorBoard logs")
        return None
    return SummaryWriter(str(Path(config.output).resolve() / "tensorboard"))


EXECUTORS = ("ray", "local")


def run_training(config: TrainConfig, *, ray_address: str | None = None, executor: str = "ray") -> dict[str, Any]:
    """Train one stage on Ray Train (``config.num_workers`` workers, GPUs if asked for and present); returns
    the last metrics and the final checkpoint's path. Rerunning the same config resumes from its newest
    checkpoint.

    ``executor="local"``: the same loop in this process, one worker, no Ray (a laptop run or a debugger without
    Ray Train's start, ~1 min a stage on 2 cores; no worker-group restarts: ``max_failures`` does not apply)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "local" and config.num_workers != 1:
        raise ConfigError(f"the local executor trains in one process: num_workers is {config.num_workers} "
                          f"(use the ray executor for more workers)")
    output = Path(config.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    if executor == "local":
        try:
            train_loop_per_worker(config.to_dict())
        except MegactorError:
            raise
        except Exception as error:  # the same one-line failure as a Ray Train worker's
            raise TrainingError(f"stage {config.stage} failed: {type(error).__name__}: {error}") from error
        return _result(config, output, {})

    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = torch.cuda.is_available() if config.use_gpu == "auto" else bool(config.use_gpu)
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("MEGACTOR_")},
                              "worker_process_setup_hook": "training.train.quiet_ray_workers"})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config.to_dict(),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=use_gpu),
        # a restarted worker group resumes from the newest checkpoint in `output` (preemptions: always retried)
        run_config=RunConfig(name=f"stage{config.stage}", storage_path=str(output / "ray"),
                             failure_config=FailureConfig(max_failures=config.max_failures)),
    )
    try:
        result = trainer.fit()
    except Exception as error:  # Ray Train raises a worker's failure from fit() as well as returning it
        raise training_error(error, config) from error
    if result.error:
        raise training_error(result.error, config) from result.error
    return _result(config, output, dict(result.metrics or {}))


def _result(config: TrainConfig, output: Path, reported: dict[str, Any]) -> dict[str, Any]:
    """The last metrics (the run's metrics.jsonl, else what the workers reported) and the final checkpoint."""
    final = output / "final"
    history = output / "metrics.jsonl"
    last = json.loads(history.read_text().splitlines()[-1]) if history.is_file() else reported
    return {"metrics": last, "final_checkpoint": str(final) if final.exists() else None, "steps": config.steps}


def quiet_ray_workers() -> None:
    """Ray's worker setup hook: without the dashboard (not started, to keep a laptop run light) Ray Train's
    placement-group cleaner cannot query actor states and warns about it every second of the run."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def training_error(error: BaseException, config: TrainConfig) -> TrainingError:
    """Ray Train's failure as one readable message: each failed worker's own error, last line first."""
    failures = getattr(error, "worker_failures", None) or {}
    if not failures:
        return TrainingError(f"stage {config.stage} failed: {_last_line(error)}")
    lines = [f"stage {config.stage} failed on {len(failures)} worker(s):"]
    lines += [f"  worker {rank}: {_last_line(failure)}" for rank, failure in sorted(failures.items())]
    return TrainingError("\n".join(lines))


def _last_line(error: BaseException) -> str:
    """A worker's exception arrives wrapped with its remote traceback; its last line names the error."""
    cause = getattr(error, "cause", None) or error.__cause__
    if isinstance(cause, BaseException) and cause is not error:
        return _last_line(cause)
    if isinstance(error, MegactorError):  # ours: written to be read whole
        return str(error)
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
