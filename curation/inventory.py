"""The inventory: one row per source video file, before any clip is cut. It lists the datasets, fingerprints
each file (``content_id``), probes it, and answers "how many hours of what do we have" (``hours_by_dataset``).

A file that cannot be read or probed is a row with ``probe_status="error"``, the message and the
``MediaError`` reason; the run goes on. Entries the lister refused (``SourceFile.refused``: ``not_a_file``,
``outside_data_root``) are rows with that reason and are never opened; a file without read permission is
``unreadable``; other OS errors (a broken symlink, a vanished file) are ``io_error``. The only exceptions that
stop a run are about the run itself: a bad argument, or ffprobe missing (``ToolMissingError``), which would
otherwise turn every row into the same error.

``extra`` is a ``map<string, string>`` rather than a JSON string: Parquet stores it as a native map, DuckDB reads
it typed (``extra['split']`` is a VARCHAR, no JSON functions), and pandas gets dicts with
``to_pandas(maps_as_pydicts="strict")`` (the default gives a list of ``(key, value)`` pairs, which ``dict()``
turns into one). A JSON string would need parsing in both.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from curation.errors import ConfigError, MediaError, ToolMissingError
from curation.io import part_files, write_parquet_atomic
from curation.sources import CONTENT_ID_SCHEME, SourceAdapter, SourceFile, content_id

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1.0"

# The columns of ``curation.media.ProbeResult.as_dict()``, typed here so a missing or failed probe is a null.
PROBE_FIELDS = (
    pa.field("container", pa.string()),
    pa.field("duration_s", pa.float64()),
    pa.field("bit_rate", pa.int64()),
    pa.field("has_video", pa.bool_()),
    pa.field("video_codec", pa.string()),
    pa.field("width", pa.int32()),  # display size, after rotation
    pa.field("height", pa.int32()),
    pa.field("coded_width", pa.int32()),
    pa.field("coded_height", pa.int32()),
    pa.field("rotation", pa.int16()),
    pa.field("fps_avg", pa.float64()),
    pa.field("fps_nominal", pa.float64()),
    pa.field("vfr", pa.bool_()),
    pa.field("n_frames", pa.int64()),
    pa.field("has_audio", pa.bool_()),
    pa.field("audio_codec", pa.string()),
    pa.field("audio_sample_rate", pa.int32()),
    pa.field("audio_channels", pa.int16()),
)
INVENTORY_SCHEMA = pa.schema(
    (
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("source_relpath", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64()),  # null when the file could not be stat'ed
        pa.field("content_id", pa.string()),  # null when the file could not be read
        pa.field("origin_video_id", pa.string()),
        pa.field("speaker_id", pa.string()),
        pa.field("extra", pa.map_(pa.string(), pa.string()), nullable=False),
    )
    + PROBE_FIELDS
    + (
        pa.field("probe_status", pa.string(), nullable=False),  # ok | error
        pa.field("probe_error", pa.string()),
        pa.field("probe_error_reason", pa.string()),
        pa.field("probe_s", pa.float64(), nullable=False),  # wall seconds spent on the file (hash + probe)
    ),
    metadata={
        "megactor.schema_version": SCHEMA_VERSION,
        "megactor.content_id": CONTENT_ID_SCHEME,
    },
)
PROBE_COLUMNS = tuple(f.name for f in PROBE_FIELDS)

ProbeFn = Callable[..., Any]

_COERCE: dict[str, Callable[[Any], Any]] = {}
for _field in PROBE_FIELDS:
    if pa.types.is_integer(_field.type):
        _COERCE[_field.name] = lambda v: int(round(v)) if isinstance(v, float) else int(v)
    elif pa.types.is_floating(_field.type):
        _COERCE[_field.name] = float
    elif pa.types.is_boolean(_field.type):
        _COERCE[_field.name] = bool
    else:
        _COERCE[_field.name] = str


def _default_probe() -> ProbeFn:
    from curation.media import probe  # imported late: the inventory's listing and tests do not need it

    return probe


def _probe_columns(result: Any) -> dict[str, Any]:
    values = result.as_dict() if hasattr(result, "as_dict") else dict(result)
    columns = {}
    for name in PROBE_COLUMNS:
        value = values.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            columns[name] = None
        else:
            columns[name] = _COERCE[name](value)
    return columns


_REFUSALS = {
    "not_a_file": "not a regular file: a directory, named pipe, socket or device with a video name",
    "outside_data_root": "a symlink that leads out of the data root; not followed",
}


class _Refused(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def inventory_row(source: SourceFile, *, probe_fn: ProbeFn, timeout_s: float = 30.0) -> dict[str, Any]:
    """The inventory row of one file. Never raises for a bad file: the failure is recorded in the row."""
    started = time.perf_counter()
    row: dict[str, Any] = {
        "dataset": source.dataset,
        "source_path": source.path,
        "source_relpath": source.relpath,
        "size_bytes": source.size_bytes if source.size_bytes >= 0 else None,
        "content_id": None,
        "origin_video_id": source.origin_video_id,
        "speaker_id": source.speaker_id,
        "extra": dict(source.extra),
        **dict.fromkeys(PROBE_COLUMNS),
        "probe_status": "error",
        "probe_error": None,
        "probe_error_reason": None,
    }
    try:
        if source.refused:
            why = _REFUSALS.get(source.refused, source.refused)
            raise _Refused(source.refused, f"{source.path}: refused by the lister: {why}")
        if source.size_bytes < 0:
            raise FileNotFoundError(f"{source.path}: cannot be stat'ed (broken link or no permission)")
        if not stat.S_ISREG(os.stat(source.path).st_mode):  # opening a named pipe would block forever
            raise _Refused("not_a_file", f"{source.path}: {_REFUSALS['not_a_file']}")
        row["content_id"] = content_id(source.path, source.size_bytes)
        row.update(_probe_columns(probe_fn(source.path, timeout_s=timeout_s)))
        row["probe_status"] = "ok"
    except (MediaError, _Refused) as exc:
        row.update(probe_error=str(exc), probe_error_reason=exc.reason)
    except PermissionError as exc:
        row.update(probe_error=f"{type(exc).__name__}: {exc}", probe_error_reason="unreadable")
    except OSError as exc:
        row.update(probe_error=f"{type(exc).__name__}: {exc}", probe_error_reason="io_error")
    except ToolMissingError:
        raise
    except Exception as exc:  # a bug in a probe or a parser must not end a multi-day run
        log.exception("unexpected error inventorying %s", source.path)
        row.update(probe_error=f"{type(exc).__name__}: {exc}", probe_error_reason="internal_error")
    if row["probe_status"] == "error":
        row.update(dict.fromkeys(PROBE_COLUMNS))
    row["probe_s"] = time.perf_counter() - started
    return row


def inventory_rows(files: Iterable[SourceFile], *, probe_fn: ProbeFn | None = None,
                   timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Content id and probe for each file, in order; errors are data in the rows (see ``inventory_row``).
    ``probe_fn(path, *, timeout_s)`` defaults to ``curation.media.probe``."""
    probe = probe_fn or _default_probe()
    return [inventory_row(source, probe_fn=probe, timeout_s=timeout_s) for source in files]


def build_inventory(sources: Sequence[SourceAdapter], *, workers: int = 4, progress: bool = True,
                    probe_fn: ProbeFn | None = None, timeout_s: float = 30.0) -> pa.Table:
    """List every source, then fingerprint and probe the files on a thread pool (ffprobe runs as a
    subprocess, so threads run probes in parallel). Rows follow the listing order: sources in the order
    given, each in its adapter's sorted order. Several sources may share a dataset name (one dataset spread
    over disks). Each source's listing counters (unparsed, ignored by extension, hidden) go into the table's
    metadata under ``megactor.listing``, a JSON list in source order."""
    if workers < 1:
        raise ConfigError(f"inventory workers must be >= 1, got {workers!r}")
    probe = probe_fn or _default_probe()
    files: list[SourceFile] = []
    listing: list[dict[str, Any]] = []
    for source in sources:
        files.extend(source.iter_files())
        listing.append({"dataset": source.dataset, **source.stats()})
        log.info("%s: %d video files (%d unparsed), ignored %s", source.dataset, source.listed,
                 source.unparsed, dict(source.ignored) or "nothing")

    def one(source_file: SourceFile) -> dict[str, Any]:
        return inventory_row(source_file, probe_fn=probe, timeout_s=timeout_s)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inventory") as pool:
        results = pool.map(one, files)  # map keeps the input order
        if progress:
            results = tqdm(results, total=len(files), desc="inventory", unit="file")
        rows = list(results)
    table = to_table(rows)
    metadata = dict(table.schema.metadata or {})
    metadata[b"megactor.listing"] = json.dumps(listing, sort_keys=True).encode()
    return table.replace_schema_metadata(metadata)


def to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    rows = list(rows)
    names = set(INVENTORY_SCHEMA.names)
    for row in rows:
        unknown = set(row) - names
        if unknown:
            raise ValueError(f"inventory row has columns outside the schema: {sorted(unknown)}")
    return pa.Table.from_pylist(rows, schema=INVENTORY_SCHEMA)


def write_inventory(table: pa.Table, directory: str | Path, part_name: str = "part-00000.parquet") -> Path:
    if not table.schema.equals(INVENTORY_SCHEMA, check_metadata=False):
        raise ValueError("table does not have the inventory schema; build it with to_table()")
    return write_parquet_atomic(table, Path(directory) / part_name)


def read_inventory(directory: str | Path) -> pa.Table:
    """All committed part files of an inventory directory, concatenated in file-name order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"inventory directory does not exist: {str(directory)!r}")
    tables = []
    for part in part_files(directory):
        metadata = pq.read_schema(part).metadata or {}
        version = metadata.get(b"megactor.schema_version", b"<none>").decode()
        if version != SCHEMA_VERSION:
            raise ConfigError(f"{part}: inventory schema_version {version!r}, this code reads {SCHEMA_VERSION!r}")
        tables.append(pq.read_table(part, schema=INVENTORY_SCHEMA))
    if not tables:
        return INVENTORY_SCHEMA.empty_table()
    return pa.concat_tables(tables)


def hours_by_dataset(table: pa.Table) -> pd.DataFrame:
    """Per dataset: files, probed_ok, errors, hours (summed durations of files that probed ok) and size_gb
    (10^9 bytes, all files). One row per dataset, sorted by name."""
    frame = table.select(["dataset", "probe_status", "duration_s", "size_bytes"]).to_pandas()
    ok = frame["probe_status"] == "ok"
    frame = frame.assign(
        ok=ok.astype("int64"),
        error=(~ok).astype("int64"),
        ok_seconds=frame["duration_s"].where(ok, 0.0).fillna(0.0),
        size=frame["size_bytes"].fillna(0),
    )
    grouped = frame.groupby("dataset", sort=True)
    summary = pd.DataFrame({
        "files": grouped.size(),
        "probed_ok": grouped["ok"].sum(),
        "errors": grouped["error"].sum(),
        "hours": grouped["ok_seconds"].sum() / 3600.0,
        "size_gb": grouped["size"].sum() / 1e9,
    }).rename_axis("dataset").reset_index()
    return summary.astype({"files": "int64", "probed_ok": "int64", "errors": "int64",
                           "hours": "float64", "size_gb": "float64"})


def format_hours_table(df: pd.DataFrame) -> str:
    """A fixed-width text table of ``hours_by_dataset`` with a total line, for the CLI."""
    header = ("dataset", "files", "probed_ok", "errors", "hours", "size_gb")
    body = [
        (str(r.dataset), f"{r.files:,}", f"{r.probed_ok:,}", f"{r.errors:,}", f"{r.hours:,.2f}", f"{r.size_gb:,.2f}")
        for r in df.itertuples(index=False)
    ]
    total = ("TOTAL", f"{int(df['files'].sum()):,}", f"{int(df['probed_ok'].sum()):,}",
             f"{int(df['errors'].sum()):,}", f"{float(df['hours'].sum()):,.2f}", f"{float(df['size_gb'].sum()):,.2f}")
    widths = [max(len(line[i]) for line in [header, *body, total]) for i in range(len(header))]

    def render(line: tuple[str, ...]) -> str:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        return "  ".join(cells)

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule, *(render(line) for line in body), rule, render(total)])
