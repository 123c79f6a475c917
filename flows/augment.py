"""The augmentation flow: a curated run's kept clips -> identity pool -> face-swapped and stylized variants on Ray
-> summary, card and artifacts.

Flows only compose: every step calls Prefect-free code in ``curation.augment``. Tasks are shards of kept clips
(``runtime.shard_clips`` each), never single clips. Done shards are skipped on rerun, so a crashed run resumes where
it stopped and never duplicates a row. The identity pool is complete before the first variant is made: pairing
draws from the whole pool, which is what makes it independent of the number of workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Failed
from tqdm import tqdm

from curation.augment import pipeline
from curation.augment.config import AugmentConfig
from curation.augment.summary import build_summary, write_card, write_summary
from curation.errors import ShardsFailedError
from curation.io import write_text_atomic
from flows.curate import _submit, task_runner


@task(name="augment-identities", cache_policy=NO_CACHE)
def identity_shard(shard: int, items: list, config: AugmentConfig, output: str, manifest: str,
                   backend: str) -> dict[str, Any]:
    result = pipeline.Augmenter(config, output, Path(manifest), backend).identities(shard, items)
    get_run_logger().info("identity shard %d: %s", shard, result["counts"])
    return result


@task(name="augment-variants", cache_policy=NO_CACHE)
def variant_shard(shard: int, rows: list[dict[str, Any]], config: AugmentConfig, output: str, manifest: str,
                  backend: str) -> dict[str, Any]:
    result = pipeline.Augmenter(config, output, Path(manifest), backend).variants(shard, rows)
    counters = result["counters"]
    get_run_logger().info("variant shard %d: %d clips, %d variants (ok %d, rejected %d, error %d) in %.1f s", shard,
                          result["clips"], result["rows"], counters.get("ok", 0), counters.get("rejected", 0),
                          counters.get("error", 0), result["wall_s"])
    return result


def _run_phase(name: str, task_fn, todo: list[tuple], resources: dict[str, float], total: int, done: int,
               key: str) -> list[str]:
    """Submit a phase's shards, follow them in the terminal and the UI; failures are reported, not raised."""
    logger = get_run_logger()
    progress = create_progress_artifact(progress=100.0 * done / max(total, 1), key=key,
                                        description=f"{name} shards done of {total}")
    failures = []
    for future in tqdm(as_completed(_submit(task_fn, todo, resources)), total=len(todo), desc=name, unit="shard",
                       disable=not todo):
        try:
            future.result()
        except Exception as error:  # one shard failing must not lose the others: the rerun retries it
            failures.append(str(error))
            logger.error("a %s shard failed: %s", name, error)
        done += 1
        update_progress_artifact(progress, 100.0 * done / max(total, 1))
    return failures


@flow(name="megactor-augment")
def augment(config: AugmentConfig, output: str, manifest: str) -> dict[str, Any]:
    logger = get_run_logger()
    layout = pipeline.AugmentLayout(Path(output))
    layout.state.mkdir(parents=True, exist_ok=True)
    write_text_atomic(yaml.safe_dump(config.to_dict(), sort_keys=False), layout.root / "config.yaml")
    source = Path(manifest)
    backend = pipeline.landmark_backend(config, source)
    resources = pipeline.ray_resources(config, backend)

    # 1. plan: shards of kept clips (deterministic; an existing plan is reused exactly)
    clips = pipeline.kept_clips(source)
    positions = {clip: i for i, clip in enumerate(clips["clip_id"].to_pylist())}
    plan = pipeline.load_or_save_plan(layout, pipeline.plan_shards(clips, config.runtime.shard_clips), config, source)
    args = (config, output, manifest, backend)

    # 2. the identity pool (face swap only), complete before any variant is made
    identity_plan = pipeline.identity_plan(config, plan) if config.variants_per_clip("faceswap") else []
    from_clips = config.identity.pool == "clips"
    todo = [(i, pipeline.shard_rows(clips, positions, shard) if from_clips else shard, *args)
            for i, shard in enumerate(identity_plan) if not layout.done("identities", i).exists()]
    failures = _run_phase("identities", identity_shard, todo, resources, len(identity_plan),
                          len(identity_plan) - len(todo), "augment-identities")
    if failures:
        return Failed(message=f"{len(failures)} shard(s) failed; rerun the same command to retry them: "
                              f"{failures[:3]}")

    # 3. variants
    todo = [(i, pipeline.shard_rows(clips, positions, shard), *args) for i, shard in enumerate(plan)
            if not layout.done("variants", i).exists()]
    logger.info("%d kept clips in %d shards, %d to augment", clips.num_rows, len(plan), len(todo))
    failures = _run_phase("variants", variant_shard, todo, resources, len(plan), len(plan) - len(todo),
                          "augment-progress")

    # 4. summarise what is on disk (so a resumed run reports everything)
    summary = build_summary(layout, config, pipeline.provenance(config, source), clips=clips.num_rows,
                            shards_planned=len(plan), identity_shards_planned=len(identity_plan))
    summary["failed_shards"] = failures
    write_summary(layout, summary)
    write_card(layout, summary)
    create_table_artifact(
        key="augment-variants",
        table=[{"kind": kind, **{k: v for k, v in d.items() if k not in ("status", "reasons")},
                **{f"variants_{s}": n for s, n in d["status"].items()}} for kind, d in summary["kinds"].items()],
        description=f"variants of {layout.root} by kind",
    )
    if failures:
        return Failed(message=f"{len(failures)} shard(s) failed; rerun the same command to retry them: "
                              f"{failures[:3]}", data=summary)
    return summary


def run_augment(config: AugmentConfig, manifest: str | Path, output: str | Path,
                executor: str = "ray") -> dict[str, Any]:
    """Run the flow; returns the summary, or raises ShardsFailedError (after writing what it could)."""
    source = pipeline.manifest_dir(manifest)
    pipeline.preflight(config, source)
    flow_fn = augment.with_options(task_runner=task_runner(config, executor))
    state = flow_fn(config, str(Path(output).resolve()), str(source), return_state=True)
    if state.is_completed():
        return state.result()
    if state.message and "shard(s) failed" in state.message:
        raise ShardsFailedError(state.message)
    return state.result()
