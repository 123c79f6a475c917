"""Batch animation: a YAML or CSV list of jobs, one Prefect task each, fanned out over Ray (a GPU per job where the
cluster has GPUs, else a CPU). Every job ends as a result row (``ok``, ``skipped`` when its output already
exists, or ``error`` with the reason), written to ``results.csv`` beside the jobs' outputs; one failing job
never stops the others. The animation itself is ``inference.pipeline``; the pipeline is loaded once per Ray
worker process and reused by the jobs that land there."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from curation.errors import ConfigError, MegactorError
from curation.io import write_text_atomic

JOB_FIELDS = ("reference", "driving", "audio", "mode", "visual_alpha", "audio_scale", "steps", "guidance", "seed",
              "output")


class AnimateJob(BaseModel):
    """One video to make. ``visual_alpha`` / ``audio_scale``: a number, or a file with a per-frame curve."""

    model_config = ConfigDict(extra="forbid")
    reference: str
    driving: str | None = None
    audio: str | None = None
    mode: Literal["visual", "audio", "mixed"] = "mixed"
    visual_alpha: float | str = 1.0
    audio_scale: float | str = 1.0
    steps: int = Field(25, ge=1)
    guidance: float = Field(2.0, ge=0)
    seed: int = 0
    output: str


def load_jobs(path: str | Path) -> list[AnimateJob]:
    """Jobs from a YAML list (or ``{defaults: {...}, jobs: [...]}``) or a CSV with a header row. Relative paths
    are relative to the jobs file; every bad job is reported at once, by its position."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"jobs file not found: {path}")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as handle:
            raw = [{k.strip(): v.strip() for k, v in row.items() if k and v and v.strip()}
                   for row in csv.DictReader(handle)]
        defaults: dict[str, Any] = {}
    else:
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        defaults = data.get("defaults", {}) if isinstance(data, dict) else {}
        raw = data.get("jobs") if isinstance(data, dict) else data
        if not isinstance(raw, list) or not all(isinstance(j, dict) for j in raw):
            raise ConfigError(f"{path}: expected a list of jobs (mappings), or a mapping with 'jobs:'")
    jobs, problems = [], []
    for number, item in enumerate(raw, start=1):
        try:
            job = AnimateJob.model_validate({**defaults, **item})
        except ValidationError as error:
            problems.append(f"job {number}: " + "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()))
            continue
        jobs.append(_resolve(job, path.parent))
    if problems:
        raise ConfigError(f"{path}: {len(problems)} bad job(s):\n  " + "\n  ".join(problems))
    if not jobs:
        raise ConfigError(f"{path}: no jobs")
    outputs = [job.output for job in jobs]
    duplicates = sorted({o for o in outputs if outputs.count(o) > 1})
    if duplicates:
        raise ConfigError(f"{path}: several jobs write the same output: {duplicates[:3]}")
    return jobs


def _resolve(job: AnimateJob, base: Path) -> AnimateJob:
    def absolute(value: str | None) -> str | None:
        return None if value is None else str((base / value).resolve())

    curves = {k: absolute(v) if isinstance(v, str) else v for k, v in
              (("visual_alpha", job.visual_alpha), ("audio_scale", job.audio_scale))}
    return job.model_copy(update={"reference": absolute(job.reference), "driving": absolute(job.driving),
                                  "audio": absolute(job.audio), "output": absolute(job.output), **curves})


_PIPELINES: dict[tuple[str, str, str], Any] = {}  # per worker process: loaded once, reused by its jobs


def pipeline_for(checkpoint: str, device: str, scheduler: str):
    from inference.pipeline import AnimationPipeline

    key = (checkpoint, device, scheduler)
    if key not in _PIPELINES:
        _PIPELINES[key] = AnimationPipeline.from_pretrained(checkpoint, device=device, scheduler=scheduler)
    return _PIPELINES[key]


def run_job(job: AnimateJob, checkpoint: str, device: str, scheduler: str, overwrite: bool = False) -> dict[str, Any]:
    """One job to a result row; an input that cannot be animated is a row with its reason, not an exception."""
    row: dict[str, Any] = {"output": job.output, "status": "ok", "frames": None, "seconds": None,
                           "seconds_per_frame": None, "error": None}
    if Path(job.output).is_file() and not overwrite:
        return {**row, "status": "skipped"}
    try:
        pipeline = pipeline_for(checkpoint, device, scheduler)
        animation = pipeline(job.reference, job.driving, job.audio, mode=job.mode, visual_alpha=job.visual_alpha,
                             audio_scale=job.audio_scale, steps=job.steps, guidance=job.guidance, seed=job.seed,
                             output=job.output)
    except MegactorError as error:
        return {**row, "status": "error", "error": str(error)}
    return {**row, "frames": len(animation.frames), "seconds": round(animation.seconds, 3),
            "seconds_per_frame": round(animation.seconds_per_frame, 4)}


@task(name="animate-job", cache_policy=NO_CACHE)
def animate_task(job: AnimateJob, checkpoint: str, device: str, scheduler: str, overwrite: bool) -> dict[str, Any]:
    result = run_job(job, checkpoint, device, scheduler, overwrite)
    get_run_logger().info("%s: %s (%s frames, %s s/frame)%s", job.output, result["status"], result["frames"],
                          result["seconds_per_frame"], f": {result['error']}" if result["error"] else "")
    return result


@flow(name="megactor-animate")
def animate_batch(jobs: list[AnimateJob], checkpoint: str, results: str, device: str = "auto",
                  scheduler: str = "ddim", overwrite: bool = False, gpus_per_job: float = 0.0) -> list[dict[str, Any]]:
    from prefect_ray.context import remote_options

    logger = get_run_logger()
    resources = {"num_gpus": gpus_per_job} if gpus_per_job else {"num_cpus": 1}
    job_device = ("cuda" if gpus_per_job else "cpu") if device == "auto" else device
    with remote_options(**resources):
        futures = [animate_task.submit(job, checkpoint, job_device, scheduler, overwrite) for job in jobs]
    rows = []
    for future in tqdm(as_completed(futures), total=len(futures), desc="animate", unit="video"):
        try:
            rows.append(future.result())
        except Exception as error:  # a crashed worker: the job is reported, the others go on
            logger.error("a job failed: %s", error)
            rows.append({"output": None, "status": "error", "error": str(error)})
    order = {job.output: i for i, job in enumerate(jobs)}
    rows.sort(key=lambda r: order.get(r["output"], len(order)))
    write_results(rows, Path(results))
    create_table_artifact(key="animate-results", table=rows, description=f"{len(rows)} jobs ({results})")
    return rows


def write_results(rows: list[dict[str, Any]], path: Path) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["output", "status", "frames", "seconds", "seconds_per_frame",
                                                "error"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(buffer.getvalue(), path)


def run_animate_batch(jobs_file: str | Path, checkpoint: str | Path, *, device: str = "auto",
                      scheduler: str = "ddim", ray_address: str | None = None, overwrite: bool = False,
                      executor: str = "ray") -> list[dict[str, Any]]:
    from flows.curate import ray_task_runner
    from training.export import find_export

    jobs = load_jobs(jobs_file)
    folder = str(find_export(checkpoint).resolve())  # fails now, not in every task, when nothing is there
    runner, gpus = ray_task_runner(ray_address, executor=executor), 0.0
    if executor != "local":  # one GPU per job where the cluster has GPUs
        import ray

        ray.init(address=ray_address, **runner.init_kwargs)
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 and device in ("auto", "cuda") else 0.0
    results = Path(jobs_file).resolve().with_suffix(".results.csv")
    flow_fn = animate_batch.with_options(task_runner=runner)
    return flow_fn(jobs, folder, str(results), device=device, scheduler=scheduler, overwrite=overwrite,
                   gpus_per_job=gpus)
