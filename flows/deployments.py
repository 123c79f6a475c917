"""Every flow as a Prefect deployment with typed parameters, served by ``megactor serve``: a run triggered from
the UI, ``prefect deployment run`` or the API is the run the CLI makes (the same configuration code, the same
flow, with its tasks on Ray), here as a subflow of a small entry flow whose parameters a form can show.

    megactor serve                                   # against PREFECT_API_URL (or a local server it starts)
    prefect deployment run megactor-curate-run/curate --params '{"inputs": ["/data/HDTF"], "output": "runs/h"}'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow

from curation.errors import ConfigError


@flow(name="megactor-curate-run")
def curate_run(inputs: list[str], output: str, kind: str = "folder", dataset: str | None = None,
               config_file: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Curate the videos under ``inputs`` into ``output`` (rerun: resumes)."""
    from curation.config import config_for_inputs
    from curation.pipeline import preflight
    from flows.curate import run_curation

    config = config_for_inputs(inputs, kind=kind, dataset=dataset, config_file=config_file, overrides=overrides)
    preflight(config)
    return run_curation(config, output)


@flow(name="megactor-augment-run")
def augment_run(manifest: str, output: str, config_file: str | None = None,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Face-swapped and stylized variants of a curated run's kept clips."""
    from curation.augment.config import load_augment_config
    from flows.augment import run_augment

    return run_augment(load_augment_config(config_file, overrides or {}), manifest, output)


@flow(name="megactor-train-run")
def train_run(manifest: str, output: str, stage: Literal["1", "2", "3", "all"] = "all",
              overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train one stage or the three, chained, on a curated (or augmented) run."""
    from flows.train import train_all, train_stage
    from training.config import load_train_config

    stages = [1, 2, 3] if stage == "all" else [int(stage)]
    configs = []
    for number in stages:
        settings = {**(overrides or {}), "data.manifest_dir": str(Path(manifest).resolve()),
                    "output": str(Path(output).resolve() / f"stage{number}")}
        configs.append(load_train_config(None, stage=number, overrides=settings))
    return [train_stage(configs[0])] if len(configs) == 1 else train_all(configs)


@flow(name="megactor-animate-run")
def animate_run(jobs_file: str, checkpoint: str, device: str = "auto", scheduler: str = "ddim",
                overwrite: bool = False) -> list[dict[str, Any]]:
    """A batch of animation jobs (YAML or CSV), a row per job in ``JOBS.results.csv``."""
    from flows.animate import run_animate_batch

    return run_animate_batch(jobs_file, checkpoint, device=device, scheduler=scheduler, overwrite=overwrite)


@flow(name="megactor-evaluate-run")
def evaluate_run(manifest: str, output: str, checkpoint: str | None = None, videos: dict[str, str] | None = None,
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Split, generate, score and tabulate (``settings``: flows.evaluation_config.EvalConfig fields)."""
    from flows.evaluate import run_evaluation
    from flows.evaluation_config import EvalConfig

    try:
        config = EvalConfig.model_validate(settings or {})
    except Exception as error:  # pydantic names the bad key
        raise ConfigError(f"invalid evaluation settings: {error}") from None
    return run_evaluation(manifest, output, config, checkpoint=checkpoint, videos=videos)


ENTRY_FLOWS = {"curate": curate_run, "augment": augment_run, "train": train_run, "animate": animate_run,
               "evaluate": evaluate_run}


def serve(names: list[str] | None = None, limit: int | None = None) -> None:
    """Register the deployments and run them as they are triggered (blocks until interrupted)."""
    from prefect import serve as prefect_serve

    chosen = names or list(ENTRY_FLOWS)
    unknown = sorted(set(chosen) - set(ENTRY_FLOWS))
    if unknown:
        raise ConfigError(f"unknown flows {unknown}; choose from {sorted(ENTRY_FLOWS)}")
    deployments = [ENTRY_FLOWS[name].to_deployment(name=name, tags=["megactor"]) for name in chosen]
    prefect_serve(*deployments, limit=limit, print_starting_message=True)
