"""Training flows: one per stage, and one that chains the three (each stage initialises from the previous
stage's final checkpoint). Flows only compose: the loop is ``training.train``; Ray Train runs it on one CPU,
one GPU or a cluster (or, with the local executor, this process trains one worker without Ray). The final checkpoint and the last metrics are recorded as Prefect artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from curation.errors import TrainingError
from training.config import TrainConfig
from training.train import run_training


@flow(name="megactor-train-stage", log_prints=True)
def train_stage(config: TrainConfig, ray_address: str | None = None, executor: str = "ray") -> dict[str, Any]:
    logger = get_run_logger()
    logger.info("stage %d: %d steps, training %s, output %s", config.stage, config.steps, list(config.trains),
                config.output)
    # Ray Train's driver runs here, in the flow's own thread (it is not a task: it owns the workers itself); the
    # local executor runs the loop itself here
    result = run_training(config, ray_address=ray_address, executor=executor)
    metrics = result["metrics"]
    create_table_artifact(
        key=f"train-stage{config.stage}",
        table=[{"stage": config.stage, "steps": result["steps"], "final_checkpoint": result["final_checkpoint"],
                **{k: v for k, v in metrics.items()
                   if k in ("loss", "grad_norm", "lr", "decode_failures") or k.startswith("driving_")}}],
        description=f"stage {config.stage}: final checkpoint and last metrics ({config.output})",
    )
    return result


@flow(name="megactor-train", log_prints=True)
def train_all(configs: list[TrainConfig], ray_address: str | None = None,
              executor: str = "ray") -> list[dict[str, Any]]:
    """Stages in order; stage n+1 starts from stage n's final checkpoint."""
    results: list[dict[str, Any]] = []
    previous: str | None = None
    for config in sorted(configs, key=lambda c: c.stage):
        if previous is not None:
            config = config.with_overrides({"init_from": previous})
        result = train_stage(config, ray_address=ray_address, executor=executor)
        previous = result["final_checkpoint"]
        if previous is None:
            raise TrainingError(f"stage {config.stage} left no final checkpoint in {Path(config.output)}")
        results.append(result)
    return results
