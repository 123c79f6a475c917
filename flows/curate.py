"""The curation flow: list sources -> inventory batches -> plan shards -> score shards on Ray -> summarise.

Flows only compose: every step calls Prefect-free code in ``curation``. Tasks are shards (about an hour of
footage each), never clips. Completed inventory batches and shards are skipped on rerun, so a crashed run
resumes where it stopped and never duplicates a row."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_ray.context import remote_options
from tqdm import tqdm

from curation import inventory, pipeline
from curation.config import CurationConfig
from curation.errors import ConfigError, ShardsFailedError
from curation.gpu_pool import GpuPool
from curation.io import write_json_atomic, write_text_atomic
from curation.report import build_report
from curation.sources import SourceFile, make_source
from curation.summary import build_summary, write_card, write_summary

ENV_FOR_WORKERS = ("PREFECT_API_URL", "MEGACTOR_WEIGHTS_DIR", "MEGACTOR_WEIGHTS_MIRROR", "MEGACTOR_OFFLINE",
                   "MEGACTOR_ASSETS", "PREFECT_SERVER_ANALYTICS_ENABLED")


@task(name="inventory-batch", cache_policy=NO_CACHE, retries=1)
def inventory_batch(batch: int, files: list[SourceFile], config: CurationConfig, output: str) -> int:
    layout = pipeline.OutputLayout(Path(output))
    rows = inventory.inventory_rows(files, timeout_s=config.runtime.probe_timeout_s)
    inventory.write_inventory(inventory.to_table(rows), layout.inventory, part_name=f"part-{batch:05d}.parquet")
    write_json_atomic({"batch": batch, "files": len(files)}, layout.inventory_done(batch))
    return len(rows)


@task(name="score-shard", cache_policy=NO_CACHE)
def score_shard(shard: int, sources: list[dict[str, Any]], config: CurationConfig, output: str,
                pool: GpuPool | None = None) -> dict[str, Any]:
    result = pipeline.ShardProcessor(config, output, pool=pool).process(shard, sources)
    get_run_logger().info("shard %d: %d sources, %d clips in %.1f s", shard, len(sources), result["rows"],
                          result["wall_s"])
    return result


def _list_files(config: CurationConfig) -> tuple[list[SourceFile], dict[str, Any]]:
    files: list[SourceFile] = []
    ignored: dict[str, Any] = {}
    for source_config in config.sources:
        adapter = make_source(source_config.kind, source_config.root, source_config.dataset,
                              follow_symlinks_outside_root=source_config.follow_symlinks_outside_root)
        files.extend(adapter.iter_files())
        ignored[f"{adapter.dataset}:{source_config.root}"] = adapter.stats()
    return files, ignored


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _check_listing(layout: pipeline.OutputLayout, files: list[SourceFile]) -> None:
    digest = pipeline.listing_digest(f.path for f in files)
    marker = layout.state / "listing.json"
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved["digest"] != digest:
            raise ConfigError(
                f"the input files differ from those {layout.root} was started with ({saved['files']} then, "
                f"{len(files)} now); use another --output"
            )
    else:
        write_json_atomic({"digest": digest, "files": len(files)}, marker)


def _submit(task_fn, items: list[tuple], resources: dict[str, float]):
    """Submit with Ray resource requests (read by the Ray runner; ignored by the local one)."""
    with remote_options(**resources):
        return [task_fn.submit(*args) for args in items]


@flow(name="megactor-curate", log_prints=True)
def curate(config: CurationConfig, output: str) -> dict[str, Any]:
    logger = get_run_logger()
    layout = pipeline.OutputLayout(Path(output))
    layout.state.mkdir(parents=True, exist_ok=True)
    write_text_atomic(yaml.safe_dump(config.to_dict(), sort_keys=False), layout.root / "config.yaml")

    # 1. list the sources (cheap, on the driver)
    files, ignored = _list_files(config)
    if not files:
        raise ConfigError("no video files found under " + ", ".join(str(s.root) for s in config.sources))
    _check_listing(layout, files)
    logger.info("%d video files listed; listing counters: %s", len(files), ignored)

    # 2. inventory: probe and hash every file, in batches (skipping batches already committed)
    batches = _chunks(files, config.runtime.inventory_batch_files)
    todo = [(i, list(b), config, output) for i, b in enumerate(batches) if not layout.inventory_done(i).exists()]
    for future in tqdm(as_completed(_submit(inventory_batch, todo, {"num_cpus": 1})), total=len(todo),
                       desc="inventory", unit="batch", disable=not todo):
        future.result()
    inventory_rows = inventory.read_inventory(layout.inventory).to_pylist()
    by_path = {row["source_path"]: row for row in inventory_rows}

    # 3. plan shards (deterministic; an existing plan is reused exactly)
    plan = pipeline.load_or_save_plan(layout, pipeline.plan_shards(
        inventory_rows, shard_hours=config.runtime.shard_hours, max_files=config.runtime.shard_max_files), config)
    done = [i for i in range(len(plan)) if layout.shard_done(i).exists()]
    # the GPU scorers' models in a pool of Ray actors (runtime.gpu_pool), fed by shard tasks that decode on CPUs
    to_score = [i for i in range(len(plan)) if not layout.shard_done(i).exists()]
    pool = pipeline.start_gpu_pool(config) if to_score else None
    resources = pipeline.ray_resources(config, pool)
    todo = [(i, [by_path[p] for p in plan[i]], config, output, pool) for i in to_score]
    logger.info("%d shards planned, %d already done, %d to score%s", len(plan), len(done), len(todo),
                f"; GPU pool of {len(pool.actors)} actors" if pool else "")

    # 4. score shards on the task runner (Ray by default), with progress in the terminal and the UI
    progress_id = create_progress_artifact(progress=100.0 * len(done) / len(plan), key="curation-progress",
                                           description=f"shards scored of {len(plan)}")
    failures = []
    finished = len(done)
    for future in tqdm(as_completed(_submit(score_shard, todo, resources)), total=len(todo), desc="shards",
                       unit="shard", disable=not todo):
        try:
            future.result()
        except Exception as error:  # one shard failing must not lose the others: report it, rerun resumes it
            failures.append(str(error))
            logger.error("a shard failed: %s", error)
        finished += 1
        update_progress_artifact(progress_id, 100.0 * finished / len(plan))
    if pool is not None:
        pool.shutdown()

    # 5. summarise what is on disk (so a resumed run reports everything)
    provenance = pipeline.provenance(config)
    summary = build_summary(layout, config, provenance, shards_planned=len(plan))
    summary["listing"] = ignored
    summary["failed_shards"] = failures
    write_summary(layout, summary)
    write_card(layout, summary)
    create_table_artifact(
        key="curation-datasets",
        table=[{**{k: v for k, v in d.items() if k != "status"}, **{f"clips_{k}": n for k, n in d["status"].items()}}
               for d in summary["datasets"]],
        description=f"per-dataset totals of {layout.root}",
    )
    logger.info("dataset report: %s", publish_report(layout.root, summary))
    if failures:
        return Failed(message=f"{len(failures)} shard(s) failed; rerun the same command to retry them: "
                              f"{failures[:3]}", data=summary)
    return summary


def publish_report(root: Path, summary: dict[str, Any]) -> Path:
    """Build the run's dataset report and link it, with the main numbers, as a Markdown artifact."""
    page = build_report(root)
    lines = [f"# Dataset report: {root}", "", f"[open the report]({page.resolve().as_uri()})", "",
             "| dataset | hours in | hours kept | kept % (hours) | clips kept |", "|---|---|---|---|---|"]
    lines += [f"| {d['dataset']} | {d['hours_in']:.3f} | {d['hours_kept']:.3f} | {d['kept_pct_hours']:.1f} | "
              f"{d['clips_kept']}/{d['clips']} |" for d in summary["datasets"]]
    lines += ["", "Status: " + (", ".join(f"{k} {v}" for k, v in summary["status"].items()) or "no clips"),
              "", "Reject reasons: " + (", ".join(f"`{k}` {v}" for k, v in summary["reject_reasons"].items())
                                        or "none")]
    create_markdown_artifact(key="curation-report", markdown="\n".join(lines),
                             description=f"dataset report of {root}")
    return page


def task_runner(config: CurationConfig, executor: str = "ray"):
    """Ray (local by default, or ``runtime.ray_address``) or, for debugging, Prefect's thread pool."""
    return ray_task_runner(config.runtime.ray_address, num_cpus=config.runtime.ray_num_cpus, executor=executor)


def ray_task_runner(address: str | None, *, num_cpus: int | None = None, executor: str = "ray"):
    """Every flow's runner: Ray at ``address`` (None: a local Ray without its dashboard, ``num_cpus`` CPUs), with
    the settings workers need passed on, or (``executor="local"``) Prefect's thread pool, one task at a time."""
    if executor == "local":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_ray import RayTaskRunner

    env = {name: os.environ[name] for name in ENV_FOR_WORKERS if name in os.environ}
    init_kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "ignore_reinit_error": True}
    if address is None:
        init_kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    return RayTaskRunner(address=address, init_kwargs=init_kwargs)


def run_curation(config: CurationConfig, output: str | Path, executor: str = "ray") -> dict[str, Any]:
    """Run the flow; returns the summary, or raises ShardsFailedError (after writing the summary)."""
    pipeline.preflight(config)
    flow_fn = curate.with_options(task_runner=task_runner(config, executor))
    state = flow_fn(config, str(Path(output).resolve()), return_state=True)
    if state.is_completed():
        return state.result()
    if state.message and "shard(s) failed" in state.message:
        raise ShardsFailedError(state.message)
    return state.result()  # re-raises the flow's exception
