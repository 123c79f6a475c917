"""The manifest: one row per clip, an explicit versioned pyarrow schema, sharded part files under
``OUTPUT/manifest/`` written atomically, provenance in every file's metadata.

Column groups: identity and span, source (from the probe), scene, ``face_*`` / pose, ``audio_*``, ``sync_*``
(null until the SyncNet scorer runs), the decision (``keep``, ``status``, ``reject_reasons``,
``unscored_rules``, ``error``), and the version of each scorer that produced the row's scores."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import Thresholds
from curation.filters import decide
from curation.io import part_files, write_parquet_atomic
from curation.scorers.audio_activity import AudioActivityScorer
from curation.scorers.face_mediapipe import MediaPipeFaceScorer

SCHEMA_VERSION = "1.0"
# Fixed namespace so clip ids are reproducible across machines and runs.
CLIP_NAMESPACE = uuid.UUID("5b0c7f4e-2a51-5c39-9d8e-6d65676163746f")

IDENTITY = (
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),  # the source file's content id
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("source_path", pa.string(), nullable=False),
    pa.field("source_relpath", pa.string()),
    pa.field("origin_video_id", pa.string()),  # e.g. the YouTube id the dataset cut the file from
    pa.field("speaker_id", pa.string()),
    pa.field("clip_index", pa.int32()),  # position of the clip in its source
    pa.field("scene_index", pa.int32()),  # shot it belongs to (null when the source was not split)
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("duration_s", pa.float64(), nullable=False),
)
SOURCE = (
    pa.field("fps", pa.float32()),  # average frame rate
    pa.field("fps_nominal", pa.float32()),
    pa.field("vfr", pa.bool_()),
    pa.field("width", pa.int32()),  # display size, after rotation
    pa.field("height", pa.int32()),
    pa.field("rotation", pa.int16()),
    pa.field("video_codec", pa.string()),
    pa.field("has_video", pa.bool_()),
    pa.field("has_audio", pa.bool_()),
    pa.field("audio_codec", pa.string()),
    pa.field("audio_sample_rate", pa.int32()),
    pa.field("source_duration_s", pa.float64()),
    pa.field("source_size_bytes", pa.int64()),
)
SYNC = (
    pa.field("sync_offset", pa.int16()),
    pa.field("sync_c", pa.float32()),
    pa.field("sync_d", pa.float32()),
)
DECISION = (
    pa.field("keep", pa.bool_(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # kept | rejected | pending | error
    pa.field("reject_reasons", pa.list_(pa.string()), nullable=False),
    pa.field("unscored_rules", pa.list_(pa.string()), nullable=False),
    pa.field("error", pa.string()),
    pa.field("error_reason", pa.string()),
)
VERSIONS = (
    pa.field("gate_version", pa.string()),
    pa.field("scene_version", pa.string()),
    pa.field("face_version", pa.string()),
    pa.field("audio_version", pa.string()),
    pa.field("sync_version", pa.string()),
)
SCHEMA = pa.schema(
    IDENTITY + SOURCE + (pa.field("scene_detector", pa.string()),)
    + MediaPipeFaceScorer.fields + AudioActivityScorer.fields + SYNC + DECISION + VERSIONS,
    metadata={"megactor.schema_version": SCHEMA_VERSION},
)
REQUIRED_COLUMNS = (
    "clip_id", "video_id", "dataset", "source_path", "start_s", "end_s", "duration_s", "fps", "width", "height",
    "has_audio", "face_res_px", "yaw_abs_mean_deg", "keep", "reject_reasons", "error",
)


def clip_id(content_id: str, start_s: float, end_s: float) -> str:
    """uuid5 of the source's content id and the span (to the millisecond): reruns give the same ids."""
    return str(uuid.uuid5(CLIP_NAMESPACE, f"{content_id}:{start_s:.3f}:{end_s:.3f}"))


def apply_decision(row: dict[str, Any], thresholds: Thresholds) -> dict[str, Any]:
    decision = decide(row, thresholds)
    row.update(keep=decision.keep, status=decision.status, reject_reasons=decision.reject_reasons,
               unscored_rules=decision.unscored_rules)
    return row


def to_table(rows: Iterable[dict[str, Any]], provenance: dict[str, Any]) -> pa.Table:
    names = set(SCHEMA.names)
    rows = list(rows)
    for row in rows:
        unknown = set(row) - names
        if unknown:
            raise ValueError(f"manifest row has columns outside the schema: {sorted(unknown)}")
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    return table.replace_schema_metadata(provenance_metadata(provenance))


def provenance_metadata(provenance: dict[str, Any]) -> dict[bytes, bytes]:
    metadata = {k.encode(): v.encode() for k, v in (SCHEMA.metadata or {}).items()}
    metadata[b"megactor.provenance"] = json.dumps(provenance, sort_keys=True).encode()
    return metadata


def read_provenance(path: str | Path) -> dict[str, Any]:
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(b"megactor.provenance", b"{}"))


def write_part(table: pa.Table, manifest_dir: str | Path, shard: int) -> Path:
    return write_parquet_atomic(table, Path(manifest_dir) / f"part-{shard:05d}.parquet")


def read_manifest(manifest_dir: str | Path) -> pa.Table:
    parts = part_files(manifest_dir)
    if not parts:
        return SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in parts])


def refilter(source_dir: str | Path, output_dir: str | Path, thresholds: Thresholds,
             provenance_update: dict[str, Any]) -> list[Path]:
    """Re-apply thresholds to an existing manifest without re-scoring: same rows and scores, new decisions,
    one output part per input part."""
    written = []
    for part in part_files(source_dir):
        table = pq.read_table(part, schema=SCHEMA)
        rows = [apply_decision(row, thresholds) for row in table.to_pylist()]
        provenance = {**read_provenance(part), **provenance_update}
        written.append(write_parquet_atomic(to_table(rows, provenance), Path(output_dir) / part.name))
    return written
