"""Prefect and Ray overhead, per shard task and per run, on a corpus of many short clips: the ceiling on task count
that ``runtime.shard_hours`` must respect.

Two measurements in one process, each against a baseline run in the same command:
1. Per task: ``--tasks`` no-op Prefect tasks submitted to the Ray task runner (what every shard pays: a task run
   recorded on the server, a Ray task scheduled, its result returned), against the same number of plain
   function calls (the baseline; effectively zero). Reported as seconds per task.
2. Per run: ``megactor curate``'s flow on ``--sources`` short clips (made here from a shared clip: 1 s each,
   stream-copied under distinct names so each is its own source), with ``--shard-files`` sources per shard,
   against listing, inventory and the Prefect-free ``ShardProcessor`` on the same sources in this process (the
   baseline: the same work without Prefect or Ray, one process). The difference over the number of shards is the orchestration's cost per
   shard; its fixed part (server round trips, Ray start-up) is the per-run cost.

    .venv/bin/python bench/orchestration_overhead.py [--sources 1000] [--shard-files 50] [--tasks 200] [--json F]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import emit  # noqa: E402

CLIP = "mimictalk_German_20s.mp4"


def make_corpus(videos: Path, folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "clip-00000.mp4"
    if not first.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "2", "-t", "1", "-i", str(videos / CLIP), "-c", "copy",
                        str(first)], check=True)
    data = first.read_bytes()
    for i in range(1, count):
        path = folder / f"clip-{i:05d}.mp4"
        if not path.exists():  # distinct content ids: one trailing byte differs (ffmpeg ignores it)
            path.write_bytes(data + i.to_bytes(4, "big"))
    return folder


def per_task(tasks: int) -> dict:
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from flows.curate import ray_task_runner

    @task(cache_policy=NO_CACHE)
    def noop(i: int) -> int:
        return i

    @flow(name="bench-overhead")
    def many(n: int) -> float:
        started = time.perf_counter()
        futures = [noop.submit(i) for i in range(n)]
        assert [f.result() for f in futures] == list(range(n))
        return time.perf_counter() - started

    started = time.perf_counter()
    for i in range(tasks):
        noop.fn(i)
    baseline = time.perf_counter() - started
    wall = many.with_options(task_runner=ray_task_runner(None))(tasks)
    return {"tasks": tasks, "s_per_task": round(wall / tasks, 4), "s_per_plain_call": baseline / tasks}


def per_run(corpus: Path, shard_files: int, work: Path) -> dict:
    from curation.config import config_for_inputs
    from curation.inventory import inventory_rows
    from curation.pipeline import ShardProcessor, close_cached_scorers
    from curation.sources import make_source
    from flows.curate import run_curation

    overrides = {"sync.enabled": False, "thresholds.require_lip_sync": False, "runtime.shard_max_files": shard_files,
                 "runtime.device": "cpu"}
    config = config_for_inputs([str(corpus)], overrides=overrides)
    started = time.perf_counter()  # the baseline lists, probes and hashes too, as the flow's inventory does
    rows = inventory_rows(list(make_source("folder", corpus).iter_files()))
    for start in range(0, len(rows), shard_files):
        ShardProcessor(config, work / "direct").process(start // shard_files, rows[start:start + shard_files])
    direct = time.perf_counter() - started
    close_cached_scorers()
    started = time.perf_counter()
    summary = run_curation(config, work / "flow")
    flow_wall = time.perf_counter() - started
    shards = -(-len(rows) // shard_files)
    return {"sources": len(rows), "shards": shards, "direct_s": round(direct, 1), "flow_s": round(flow_wall, 1),
            "flow_over_direct": round(flow_wall / direct, 2),
            "overhead_s_per_shard": round((flow_wall - direct) / shards, 2), "clips": summary["clips"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--shard-files", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--json")
    args = parser.parse_args()
    videos = Path(os.environ.get("MEGACTOR_ASSETS", Path(__file__).resolve().parents[2] / "shared")) / "videos"
    from flows.server import LocalPrefectServer, _free_port

    with tempfile.TemporaryDirectory() as tmp, LocalPrefectServer(port=_free_port()):
        corpus = make_corpus(videos, Path(tmp) / "corpus", args.sources)
        figures = {"per_task": per_task(args.tasks), "per_run": per_run(corpus, args.shard_files, Path(tmp))}
    return emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
