"""A tiny curated manifest, made by the real curation code (lite profile, no SyncNet, the face threshold lowered
so that 512 px talking heads are kept) from shared clips: the training tests' and benchmarks' input."""

from __future__ import annotations

from pathlib import Path

CLIPS = ("sadtalker_WDA_KatieHill_000.mp4", "mimictalk_German_20s.mp4")


def build_tiny_manifest(videos_dir: Path, work: Path, clips: tuple[str, ...] = CLIPS) -> Path:
    """Curate ``clips`` into ``work``; returns the manifest directory (every clip kept)."""
    from curation.config import load_config
    from curation.inventory import inventory_rows
    from curation.manifest import read_manifest
    from curation.pipeline import ShardProcessor, close_cached_scorers
    from curation.sources import make_source

    source = work / "input"
    source.mkdir(parents=True, exist_ok=True)
    for name in clips:
        if not (source / name).exists():
            (source / name).symlink_to(Path(videos_dir) / name)
    config = load_config(None, {"sync.enabled": False, "thresholds.require_lip_sync": False,
                                "thresholds.face_res_px_min": 150, "runtime.device": "cpu"})
    rows = inventory_rows(list(make_source("folder", source).iter_files()))
    ShardProcessor(config, work / "curated").process(0, rows)
    close_cached_scorers()  # MediaPipe must be closed before the interpreter's exit tears its threads down
    manifest = work / "curated" / "manifest"
    kept = [row for row in read_manifest(manifest).to_pylist() if row["keep"]]
    if len(kept) < len(clips):
        raise RuntimeError(f"the tiny manifest kept {len(kept)} of {len(clips)} clips")
    return manifest


def manifest_with_missing_clips(tiny_manifest: Path, directory: Path, copies: int, missing: int) -> Path:
    """The tiny manifest's rows ``copies`` times over (new clip ids), the first ``missing`` pointing nowhere."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (part,) = sorted(tiny_manifest.glob("*.parquet"))
    table = pq.read_table(part)
    tables = []
    for copy in range(copies):
        ids = [f"{clip}-{copy}" for clip in table.column("clip_id").to_pylist()]
        tables.append(table.set_column(table.schema.get_field_index("clip_id"), "clip_id", [ids]))
    table = pa.concat_tables(tables)
    paths = table.column("source_path").to_pylist()
    paths[:missing] = [str(directory / f"missing-{n}.mp4") for n in range(missing)]
    directory.mkdir()
    pq.write_table(table.set_column(table.schema.get_field_index("source_path"), "source_path", [paths]),
                   directory / part.name)
    return directory


def shortened_manifest(tiny_manifest: Path, directory: Path, seconds: float = 2.0,
                       extra_rows: list[dict] | None = None) -> Path:
    """A curated run (``directory/manifest``) holding the tiny manifest's kept clips cut to their first ``seconds``
    (spans of the same sources, face tracks cut alike), plus ``extra_rows``: quick inputs for augmentation."""
    from curation.io import part_files
    from curation.manifest import read_manifest, read_provenance, to_table, write_part

    rows = []
    for row in read_manifest(tiny_manifest).to_pylist():
        end = row["start_s"] + seconds
        rows.append({**row, "end_s": end, "duration_s": seconds,
                     "face_track": [p for p in row["face_track"] if p["t"] < end]})
    rows += extra_rows or []
    write_part(to_table(rows, read_provenance(part_files(tiny_manifest)[0])), directory / "manifest", 0)
    return directory
