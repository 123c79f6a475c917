"""Benchmark: the cascade against scoring every clip with every model, on the shared clips.

Runs the Prefect-free shard processor in this one process, twice on the same input: ``--score-all`` (every
clip, every measure, SyncNet included) as the baseline, and the default cascade (metadata gate, then audio
activity, then the face at a few frames per second, then SyncNet at 25 fps on the clips still alive). Reports
wall time, frames decoded per stage, seconds of video per wall second per stage, and what each stage stopped.

SyncNet uses the real weights when present, else random ones in the same architecture: the scores are then
meaningless but the cost is the same, and since SyncNet is the last stage no cascade decision depends on them.

    .venv/bin/python bench/curation_rtf.py [--input DIR] [--profile lite] [--no-sync] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402

from curation.config import load_config  # noqa: E402
from curation.inventory import inventory_rows  # noqa: E402
from curation.pipeline import ShardProcessor, cached_scorers  # noqa: E402
from curation.sources import make_source  # noqa: E402


def run(config, sources, output: Path) -> dict:
    scorers = cached_scorers(config)
    for scorer in scorers:
        scorer.ensure_setup()  # model load is per process, not part of the per-video cost
    started = time.perf_counter()
    result = ShardProcessor(config, output).process(0, sources)
    result["wall_s"] = time.perf_counter() - started
    return result


def _sync_weights(tmp: Path) -> str | None:
    from curation import weights

    if weights.status("syncnet_v2")[0] == "ok":
        return None
    import torch

    from metrics.syncnet import SyncNet

    torch.manual_seed(0)
    path = tmp / "syncnet_random.model"
    torch.save(SyncNet().eval().state_dict(), path)
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(os.environ.get("MEGACTOR_ASSETS", Path(__file__).resolve().parents[2] / "shared")) / "videos"
    parser.add_argument("--input", default=str(default))
    parser.add_argument("--profile", default="lite", choices=["lite", "paper"])
    parser.add_argument("--no-sync", action="store_true", help="leave SyncNet out (the issue-2 figures)")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    files = list(make_source("folder", args.input).iter_files())
    sources = inventory_rows(files)
    input_s = sum(s["duration_s"] or 0 for s in sources)

    figures = {"input": args.input, "sources": len(sources), "input_video_s": round(input_s, 2),
               "profile": args.profile, "command": "python bench/curation_rtf.py " + " ".join(sys.argv[1:])}
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"profile": args.profile, "sync.enabled": not args.no_sync, "runtime.device": "cpu"}
        if not args.no_sync:
            overrides["sync.weights"] = _sync_weights(Path(tmp))
            figures["sync_weights"] = "syncnet_v2" if overrides["sync.weights"] is None else "random"
        for label, score_all in (("score_all", True), ("cascade", False)):
            config = load_config(None, {**overrides, "runtime.score_all": score_all})
            result = run(config, sources, Path(tmp) / label)
            counters, scorers = result["counters"], result["scorers"]
            frames = counters.get("scene_frames_decoded", 0) + sum(
                s.get("frames_decoded", 0) for s in scorers.values())
            figures[label] = {
                "wall_s": round(result["wall_s"], 2),
                "rtf_per_core": round(input_s / result["wall_s"], 3),
                "video_s_scored": round(counters.get("video_s_scored", 0), 2),
                "frames_decoded": frames,
                "sources_gate_rejected": counters.get("sources_gate_rejected", 0),
                "video_s_gate_rejected": round(counters.get("video_s_gate_rejected", 0), 2),
                "stage_rtf": {name: round(s["video_s"] / s["wall_s"], 2) for name, s in scorers.items()
                              if s.get("wall_s")},
                "stage_wall_s": {name: round(s.get("wall_s", 0), 2) for name, s in scorers.items()},
                "stage_frames_decoded": {"scene_split": counters.get("scene_frames_decoded", 0),
                                         **{name: s.get("frames_decoded", 0) for name, s in scorers.items()}},
                "stage_video_s": {name: round(s.get("video_s", 0), 2) for name, s in scorers.items()},
                "stopped_after": {k.removeprefix("clips_stopped_after_"): v for k, v in counters.items()
                                  if k.startswith("clips_stopped_after_")},
                "sync_windows": scorers.get("sync_syncnet", {}).get("sync_windows", 0),
            }
    base, gated = figures["score_all"], figures["cascade"]
    figures["cascade_vs_score_all"] = {
        "wall_ratio": round(gated["wall_s"] / base["wall_s"], 3),
        "frames_decoded_ratio": round(gated["frames_decoded"] / base["frames_decoded"], 3),
        "input_rejected_by_gate_without_decoding_pct": round(100 * gated["video_s_gate_rejected"] / input_s, 1),
    }
    return emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
