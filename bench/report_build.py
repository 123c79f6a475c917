"""The dataset report's build time on a 100k-clip manifest, beside the time to read that manifest (the floor:
every report starts by reading it).

The manifest is the tiny manifest's real rows (face tracks included, so the Parquet is as heavy per row as a
real run's) replicated to ``--rows`` clips over five datasets and ten part files, with drawn scores; decisions
come from the report's vectorised rules (checked clip by clip against curation.filters in the tests).

    .venv/bin/python bench/report_build.py [--rows 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import yaml  # noqa: E402
from _report import emit  # noqa: E402

DATASETS = ("hdtf", "celebv_hq", "voxceleb2", "talkinghead_1kh", "multitalk")


def _set(table: pa.Table, name: str, values) -> pa.Table:
    index = table.schema.get_field_index(name)
    field = table.schema.field(index)
    return table.set_column(index, field, pa.array(values, type=field.type))


def synthetic_manifest(tiny: Path, root: Path, rows: int, parts: int = 10, seed: int = 0) -> Path:
    from curation import report
    from curation.config import Thresholds
    from curation.filters import RULES
    from curation.manifest import read_manifest, write_part

    template = read_manifest(tiny)
    table = template.take(np.arange(rows) % template.num_rows)
    rng = np.random.default_rng(seed)
    duration = rng.uniform(4, 20, rows)
    sync_missing = rng.random(rows) < 0.15
    columns = {
        "clip_id": [f"clip-{i:07d}" for i in range(rows)], "dataset": [DATASETS[i % 5] for i in range(rows)],
        "source_path": [f"/data/source-{i // 5:06d}.mp4" for i in range(rows)], "start_s": np.zeros(rows),
        "end_s": duration, "duration_s": duration, "source_duration_s": duration * 5,
        "face_res_px": rng.uniform(300, 1100, rows), "yaw_abs_mean_deg": rng.uniform(0, 60, rows),
        "sync_c": np.where(sync_missing, np.nan, rng.uniform(1, 11, rows)),
        "sync_d": np.where(sync_missing, np.nan, rng.uniform(5, 12, rows)),
        "width": np.full(rows, 1920), "height": np.full(rows, 1080),
    }
    for name, values in columns.items():
        values = [None if isinstance(v, float) and np.isnan(v) else v for v in values] \
            if name.startswith("sync_") else values
        table = _set(table, name, values)
    votes = report.verdicts(report.frame_from_table(table), Thresholds())
    reason_of = {rule.name: rule.reason for rule in RULES}
    failed = np.column_stack([votes.failed[name] for name in votes.failed])
    names = [reason_of[name] for name in votes.failed]
    reasons = [[names[j] for j in np.flatnonzero(row)] for row in failed]
    keep = votes.kept()
    status = np.where(keep, "kept", np.where(failed.any(axis=1), "rejected", "pending"))
    table = _set(_set(_set(table, "reject_reasons", reasons), "keep", keep), "status", status)
    table = _set(table, "error", [None] * rows)
    bounds = np.linspace(0, rows, parts + 1).astype(int)
    for part in range(parts):
        write_part(table.slice(bounds[part], bounds[part + 1] - bounds[part]).replace_schema_metadata(
            template.schema.metadata), root / "manifest", part)
    (root / "config.yaml").write_text(yaml.safe_dump({"thresholds": Thresholds().model_dump()}))
    return root


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("MEGACTOR_ASSETS", Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--videos", default=str(shared / "videos"))
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("MEGACTOR_WEIGHTS_DIR", str(shared / "weights"))
    from curation.manifest import read_manifest
    from curation.report import build_report
    from tests.tiny_manifest import build_tiny_manifest

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny = build_tiny_manifest(Path(args.videos), work / "tiny")
        run = synthetic_manifest(tiny, work / "run", args.rows)
        size = sum(p.stat().st_size for p in (run / "manifest").glob("*.parquet"))
        read_s = _timed(lambda: read_manifest(run / "manifest"), args.repeats)
        build_s = _timed(lambda: build_report(run, thumbnails=0), args.repeats)
        with_thumbs_s = _timed(lambda: build_report(run), 1)
        page = run / "report" / "index.html"
        figures = {
            "rows": args.rows, "manifest_mib": round(size / 2**20, 1), "read_manifest_s": round(read_s, 3),
            "build_report_s": round(build_s, 3), "build_report_over_read": round(build_s / read_s, 2),
            "build_report_with_12_thumbnails_s": round(with_thumbs_s, 3),
            "page_kib": round(page.stat().st_size / 1024, 1),
            "figures": len(list(page.parent.glob("*.png"))), "cpu_count": os.cpu_count(),
        }
    return emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
