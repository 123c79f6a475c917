"""Train/test split of a curated manifest by identity (the paper's 9:1): every clip of one speaker (else of one
source video) falls on the same side, so a test identity is never seen in training.

Deterministic and stable: an identity's side comes from a hash of (seed, identity) alone, so adding clips or
identities never moves an existing one. A manifest whose hashes put no identity on the test side (a handful of
identities) gets the identity with the smallest hash there, so a test set is never empty."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.augment.identity import speaker_of
from curation.errors import ConfigError
from curation.manifest import read_manifest

SPLIT_FILE = "split.parquet"
SPLIT_SCHEMA = pa.schema([("clip_id", pa.string()), ("identity", pa.string()), ("split", pa.string())])


def identity_key(row: dict[str, Any]) -> str:
    return speaker_of(row)


def _fraction(seed: int, identity: str) -> float:
    digest = hashlib.sha256(f"{seed}:{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_rows(rows: list[dict[str, Any]], *, test_fraction: float = 0.1, seed: int = 0) -> pa.Table:
    """(clip_id, identity, split) for every row, split "train" or "test"."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    identities = {row["clip_id"]: identity_key(row) for row in rows}
    fractions = {identity: _fraction(seed, identity) for identity in set(identities.values())}
    test = {identity for identity, f in fractions.items() if f < test_fraction}
    if not test and fractions:
        test = {min(fractions, key=fractions.get)}
    return pa.table({"clip_id": list(identities), "identity": list(identities.values()),
                     "split": ["test" if identities[c] in test else "train" for c in identities]},
                    schema=SPLIT_SCHEMA)


def split_manifest(manifest_dir: str | Path, *, test_fraction: float = 0.1, seed: int = 0,
                   only_kept: bool = True) -> tuple[pa.Table, pa.Table]:
    """The manifest's (kept) rows and their split."""
    table = read_manifest(manifest_dir)
    if only_kept:
        table = table.filter(pc.equal(table["keep"], True))
    if table.num_rows == 0:
        raise ConfigError(f"{manifest_dir}: no {'kept ' if only_kept else ''}clips to split")
    return table, split_rows(table.select(["clip_id", "source_path", *[c for c in ("speaker_id", "video_id")
                                                                       if c in table.column_names]]).to_pylist(),
                             test_fraction=test_fraction, seed=seed)


def write_split(split: pa.Table, folder: str | Path) -> Path:
    path = Path(folder) / SPLIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".parquet.part")
    pq.write_table(split, partial)
    partial.replace(path)
    return path
