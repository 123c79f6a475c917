"""Re-thresholding at corpus scale: ``megactor filter`` (``curation.manifest.refilter``: reads the rules'
columns only, from a one-file cache of them after the first time, decides column-wise, writes decisions parts
beside the untouched scores) on a 3-million-clip
manifest, against the row-by-row refilter it replaced (``to_pylist`` + ``decide`` per row + every column
rewritten; run on a subsample and extrapolated linearly) and against DuckDB rewriting the table with the new
decisions (the rules as SQL).

The manifest is synthetic but shaped like a real run's: the schema's types, one part per curation shard of
``--part-rows`` clips (the paper's 4,670 h in 1-hour shards is ~4,700 parts: 3 million clips are ~640 a part,
between ~120 spans of 30 s and ~450 VoxCeleb2 utterances of 8 s an hour), ~70 % of the clips stopped by
the metadata gate (frame under 600 px or no audio, so no face scores), the others with face scores and a
50-point ``face_track`` (boxes, eyes, mouth, pose per sampled frame), lip-sync scores on part of those, 1 % errors.
It is written once under ``--cache`` and reused. Every measurement runs in its own process; its peak memory is
that process's maximum resident set size.

    .venv/bin/python bench/refilter_scale.py [--rows 3000000] [--part-rows 640] [--old-rows 100000]
        [--duckdb-rows 300000] [--cache /tmp/megactor-refilter-bench] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from _report import emit  # noqa: E402

DATASETS = ("hdtf", "celebv_hq", "voxceleb2", "talkinghead_1kh", "multitalk")
FRAMES = ((224, 224), (512, 512), (1280, 720), (1920, 1080))
POINTS = 50
# The thresholds the measured refilters apply (they flip decisions both ways against the defaults).
NEW = {"face_res_px_min": 400.0, "yaw_abs_mean_deg_max": 25.0, "require_lip_sync": False}


# -- the synthetic manifest ----------------------------------------------------------------------------------

def _face_track(rng: np.random.Generator, with_face: np.ndarray) -> pa.Array:
    from curation.manifest import SCHEMA

    point_type = SCHEMA.field("face_track").type.value_type
    n = len(with_face)
    counts = np.where(with_face, POINTS, 0)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    total = int(offsets[-1])
    centre = np.repeat(rng.uniform(300, 900, (n, 2)), counts, axis=0)  # one face per clip, moving a little
    side = np.repeat(rng.uniform(150, 700, n), counts)
    drift = np.round(rng.normal(0, 3, (total, 2)) * 2) / 2  # a smooth track: boxes move by half pixels

    def box(scale: float) -> pa.Array:
        half = (side * scale / 2)[:, None]
        corners = np.concatenate([centre + drift - half, centre + drift + half], axis=1).astype(np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(corners.ravel()), 4)

    frame = np.arange(total) - np.repeat(offsets[:-1], counts)
    angles = np.round(rng.normal(0, 12, (total, 3)), 1).astype(np.float32)
    points = pa.StructArray.from_arrays(
        [pa.array(frame * 0.2), pa.array(np.ones(total, np.int8)), box(1.0), box(0.6), box(0.3),
         pa.array(angles[:, 0]), pa.array(angles[:, 1]), pa.array(angles[:, 2])],
        fields=list(point_type))
    return pa.ListArray.from_arrays(pa.array(offsets), points)


def synthetic_part(n: int, seed: int) -> pa.Table:
    from curation.config import Thresholds
    from curation.filters import decide_columns
    from curation.manifest import DECISION_COLUMNS, SCHEMA, provenance_metadata

    rng = np.random.default_rng(seed)
    frame = rng.choice(len(FRAMES), n, p=[0.35, 0.3, 0.2, 0.15])
    width, height = np.array(FRAMES)[frame].T
    has_audio = rng.random(n) < 0.95
    duration = rng.uniform(2, 30, n)
    scored = (np.minimum(width, height) >= 600) & has_audio & (duration >= 4)  # what the gate lets through
    synced = scored & (rng.random(n) < 0.5)
    error = rng.random(n) < 0.01
    video = rng.integers(0, 1 << 40, n)
    dataset = np.array(DATASETS)[rng.integers(0, len(DATASETS), n)]

    def floats(low: float, high: float, where: np.ndarray) -> pa.Array:
        return pa.array(rng.uniform(low, high, n), mask=~where)

    columns = {
        "clip_id": pa.array([str(uuid.UUID(bytes=rng.bytes(16))) for _ in range(n)]),  # uuid5s look random
        "video_id": pa.array([f"{v:032x}" for v in video]),
        "dataset": pa.array(dataset),
        "source_path": pa.array([f"/data/{d}/{v:012x}.mp4" for d, v in zip(dataset, video, strict=True)]),
        "clip_index": pa.array(rng.integers(0, 20, n), pa.int32()),
        "start_s": pa.array(np.zeros(n)), "end_s": pa.array(duration), "duration_s": pa.array(duration),
        "fps": pa.array(np.full(n, 25.0, np.float32)), "width": pa.array(width, pa.int32()),
        "height": pa.array(height, pa.int32()), "has_video": pa.array(np.ones(n, bool)),
        "has_audio": pa.array(has_audio), "video_codec": pa.array(["h264"] * n),
        "face_frames_sampled": pa.array(np.where(scored, POINTS, 0), pa.int32(), mask=~scored),
        "face_present_frac": floats(0.8, 1.0, scored), "multi_face_frac": floats(0.0, 0.15, scored),
        "face_res_px": floats(300, 1000, scored), "yaw_abs_mean_deg": floats(0, 45, scored),
        "face_track": _face_track(rng, scored),
        "audio_speech_frac": floats(0.2, 1, has_audio), "audio_rms_dbfs": floats(-40, -10, has_audio),
        "sync_c": floats(3, 10, synced), "sync_d": floats(5, 10, synced),
        "error": pa.array(np.where(error, "ffmpeg exited 1", None), pa.string()),
        "error_reason": pa.array(np.where(error, "decode_failed", None), pa.string()),
        "cascade_stop": pa.array(np.where(scored, None, "metadata_gate"), pa.string()),
        "gate_version": pa.array(["gate-1"] * n), "face_version": pa.array(["face_mediapipe-1"] * n),
    }
    table = pa.table({name: columns.get(name, pa.nulls(n, SCHEMA.field(name).type))
                      for name in SCHEMA.names if name not in DECISION_COLUMNS})
    decisions = decide_columns(table, Thresholds())
    arrays = [columns[name] if name in columns else decisions.get(name, pa.nulls(n, SCHEMA.field(name).type))
              for name in SCHEMA.names]
    table = pa.Table.from_arrays([pa.array(a, SCHEMA.field(i).type) if not isinstance(a, pa.Array) else
                                  a.cast(SCHEMA.field(i).type) for i, a in enumerate(arrays)], schema=SCHEMA)
    return table.replace_schema_metadata(provenance_metadata({"code_version": "bench", "profile": "lite"}))


def build_manifest(directory: Path, rows: int, part_rows: int) -> Path:
    from curation.io import write_parquet_atomic

    done = directory / "_done"
    manifest = directory / "manifest"
    if done.is_file():
        return manifest
    shutil.rmtree(directory, ignore_errors=True)
    for number, start in enumerate(range(0, rows, part_rows)):
        table = synthetic_part(min(part_rows, rows - start), seed=number)
        write_parquet_atomic(table, manifest / f"part-{number:05d}.parquet")
    done.write_text("")
    return manifest


def subsample(manifest: Path, directory: Path, rows: int) -> Path:
    """The first parts of ``manifest`` holding about ``rows`` clips (links, not copies)."""
    out = directory / "manifest"
    shutil.rmtree(directory, ignore_errors=True)
    out.mkdir(parents=True)
    total = 0
    for part in sorted(manifest.glob("part-*.parquet")):
        if total >= rows:
            break
        (out / part.name).symlink_to(part)
        total += pq.ParquetFile(part).metadata.num_rows
    return out


# -- the measured runs, each in its own process --------------------------------------------------------------

def _old_refilter(source: Path, output: Path, thresholds) -> None:
    """The row-by-row refilter as it was before decisions parts (curation.manifest at commit bfb5550)."""
    from curation.io import part_files, write_parquet_atomic
    from curation.manifest import SCHEMA, apply_decision, read_provenance, to_table

    for part in part_files(source):
        table = pq.read_table(part, schema=SCHEMA)
        rows = [apply_decision(row, thresholds) for row in table.to_pylist()]
        provenance = {**read_provenance(part), "thresholds": thresholds.model_dump()}
        write_parquet_atomic(to_table(rows, provenance), output / part.name)


SQL_RULES = (  # NEW's rules as SQL, for DuckDB (require_lip_sync off, speech_frac_min 0.3 on): test, inputs
    ("video_stream", "has_video", ("has_video",), "no_video_stream"),
    ("frame_size", "least(width, height) >= {face_res_px_min}", ("width", "height"), "frame_too_small"),
    ("audio_stream", "has_audio", ("has_audio",), "no_audio_stream"),
    ("clip_length", "duration_s >= {clip_s_min}", ("duration_s",), "clip_too_short"),
    ("face_found", "face_present_frac > 0", ("face_present_frac",), "no_face"),
    ("face_presence", "face_present_frac >= {face_present_frac_min}", ("face_present_frac",),
     "face_missing_in_frames"),
    ("single_face", "multi_face_frac <= {multi_face_frac_max}", ("multi_face_frac",), "multiple_faces"),
    ("face_resolution", "face_res_px >= {face_res_px_min}", ("face_res_px",), "face_too_small"),
    ("head_yaw", "yaw_abs_mean_deg <= {yaw_abs_mean_deg_max}", ("yaw_abs_mean_deg",), "yaw_too_large"),
    ("speech", "audio_speech_frac >= {speech_frac_min}", ("audio_speech_frac",), "no_speech"),
)


def _duckdb_rewrite(source: Path, output: Path, thresholds) -> None:
    import duckdb

    t = thresholds.model_dump()
    fails = [f"CASE WHEN NOT ({test.format(**t)}) THEN '{reason}' END" for _, test, _, reason in SQL_RULES]
    nulls = [f"CASE WHEN {' OR '.join(f'{c} IS NULL' for c in inputs)} THEN '{name}' END"
             for name, _, inputs, _ in SQL_RULES]
    error = "coalesce(length(error), 0) > 0"
    reasons = (f"list_filter([{', '.join(fails)}, CASE WHEN {error} THEN coalesce(nullif(error_reason, ''), "
               "'error') END], lambda x: x IS NOT NULL)")
    unscored = f"list_filter([{', '.join(nulls)}], lambda x: x IS NOT NULL)"
    output.mkdir(parents=True)
    connection = duckdb.connect()
    connection.execute("SET threads = 2; SET preserve_insertion_order = true")
    connection.execute(f"""
        COPY (SELECT * REPLACE (
                CASE WHEN {error} THEN 'error' WHEN len({reasons}) > 0 THEN 'rejected'
                     WHEN len({unscored}) > 0 THEN 'pending' ELSE 'kept' END AS status,
                NOT {error} AND len({reasons}) = 0 AND len({unscored}) = 0 AS keep,
                {reasons} AS reject_reasons, {unscored} AS unscored_rules)
              FROM read_parquet('{source}/*.parquet'))
        TO '{output}/part-00000.parquet' (FORMAT parquet, COMPRESSION zstd)""")


def measure(kind: str, source: str, output: str) -> dict:
    """One measurement in this process: seconds and this process's peak resident memory."""
    import pandas  # noqa: F401  (pyarrow imports it on first use: start-up, outside the timings)

    from curation.config import Thresholds
    from curation.manifest import refilter

    thresholds = Thresholds(**NEW)
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    started = time.perf_counter()
    if kind == "new":
        result = refilter(Path(source), Path(output), thresholds, {"thresholds": thresholds.model_dump()})
        rows = result.rows
    elif kind == "old":
        _old_refilter(Path(source), Path(output), thresholds)
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in Path(output).glob("*.parquet"))
    else:
        _duckdb_rewrite(Path(source), Path(output), thresholds)
        rows = pq.ParquetFile(Path(output) / "part-00000.parquet").metadata.num_rows
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime - cpu_before
    # wall seconds, CPU seconds (all threads; on a shared machine the steadier figure), peak RSS (KiB on Linux)
    return {"rows": rows, "seconds": round(seconds, 2), "cpu_s": round(cpu_s, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def run_measure(kind: str, source: Path, output: Path) -> dict:
    shutil.rmtree(output, ignore_errors=True)
    done = subprocess.run([sys.executable, __file__, "--measure", kind, str(source), str(output)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_cli(manifest: Path, output: Path) -> float:
    """``megactor filter`` end to end: interpreter start-up, imports, the refilter, its report."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", "filter", "--manifest", str(manifest), "--output",
                    str(output), "--face-res-min", str(NEW["face_res_px_min"]), "--yaw-max",
                    str(NEW["yaw_abs_mean_deg_max"]), "--no-require-lip-sync"],
                   check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])
    return round(time.perf_counter() - started, 2)


def _size_mb(directory: Path) -> float:
    return round(sum(p.stat().st_size for p in directory.rglob("*.parquet")) / 2**20, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--part-rows", type=int, default=640, help="clips per part file (one curation shard)")
    parser.add_argument("--old-rows", type=int, default=100_000, help="subsample for the row-by-row refilter")
    parser.add_argument("--duckdb-rows", type=int, default=300_000, help="subsample for DuckDB (0: all rows)")
    parser.add_argument("--cache", default="/tmp/megactor-refilter-bench")
    parser.add_argument("--json")
    parser.add_argument("--measure", nargs=3, metavar=("KIND", "SOURCE", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0

    cache = Path(args.cache)
    started = time.perf_counter()
    manifest = build_manifest(cache / f"scores-{args.rows}-{args.part_rows}", args.rows, args.part_rows)
    built_s = time.perf_counter() - started
    work = cache / "work"
    # the first filter of a manifest reads every part and writes the rule-inputs cache; later ones read the cache
    shutil.rmtree(manifest.parent / ".megactor-cache", ignore_errors=True)
    first = run_measure("new", manifest, work / "first" / "manifest")
    new = run_measure("new", manifest, work / "new" / "manifest")
    cli_s = run_cli(manifest, work / "cli")
    old_source = subsample(manifest, work / "old-input", args.old_rows)
    old = run_measure("old", old_source, work / "old" / "manifest")
    duck_source = subsample(manifest, work / "duck-input", args.duckdb_rows) if args.duckdb_rows else manifest
    duck = run_measure("duckdb", duck_source, work / "duckdb")
    old_full_s = old["seconds"] * new["rows"] / old["rows"]
    duck_full_s = duck["seconds"] * new["rows"] / duck["rows"]
    load = os.getloadavg()[0]
    figures = {
        "command": " ".join(["bench/refilter_scale.py", *sys.argv[1:]]),
        "manifest": {"rows": new["rows"], "parts": len(list(manifest.glob("*.parquet"))),
                     "size_mb": _size_mb(manifest), "built_or_reused_s": round(built_s, 1)},
        "thresholds": NEW,
        "first_refilter_of_the_manifest": {**first, "note": "reads every part, writes the rule-inputs cache"},
        "new_refilter": {**new, "decisions_mb": _size_mb(work / "new"), "megactor_filter_cli_s": cli_s,
                         "note": "re-thresholding: the rule inputs from the cache"},
        "row_by_row_refilter": {**old, "extrapolated_s": round(old_full_s, 1)},
        "duckdb_rewrite": {**duck, "extrapolated_s": round(duck_full_s, 1), "output_mb": _size_mb(work / "duckdb")},
        "speedup_vs_row_by_row": round(old_full_s / new["seconds"], 1),
        "speedup_vs_duckdb": round(duck_full_s / new["seconds"], 1),
        "first_refilter_speedup_vs_row_by_row": round(old_full_s / first["seconds"], 1),
        "first_refilter_speedup_vs_duckdb": round(duck_full_s / first["seconds"], 1),
        "cpu_ratio_vs_row_by_row": round(old["cpu_s"] * new["rows"] / old["rows"] / new["cpu_s"], 1),
        "cpu_ratio_vs_duckdb": round(duck["cpu_s"] * new["rows"] / duck["rows"] / new["cpu_s"], 1),
        "machine": {"cpus": os.cpu_count(), "load_average_1min_at_end": round(load, 1)},
    }
    shutil.rmtree(work, ignore_errors=True)
    return emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
