"""Atomic writes: a reader (or a resumed run) never sees a half-written file.

Files are written to a hidden temporary name in the same directory, fsynced, then renamed; the hidden
prefix keeps pyarrow/pandas dataset discovery from picking up a temporary file in the meantime."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync_and_rename(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_parquet_atomic(table: pa.Table, path: str | Path, *, compression: str = "zstd", **options: Any) -> Path:
    """``options``: more ``pyarrow.parquet.write_table`` settings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        pq.write_table(table, tmp, compression=compression, **options)
        _fsync_and_rename(tmp, path)
    except OSError as error:
        if error.errno is None:
            raise
        # pyarrow does not always name the file (a full disk: "Error writing bytes to file"); say where
        raise OSError(error.errno, f"cannot write {path}: {error.strerror}") from error
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(text: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        _fsync_and_rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(data: Any, path: str | Path) -> Path:
    return write_text_atomic(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", path)


def part_files(directory: str | Path) -> list[Path]:
    """The committed Parquet part files of a directory (temporary and hidden files excluded), sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith((".", "_")))
