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
from curation.scorers.sync_syncnet import SyncNetScorer

SCHEMA_VERSION = "1.2"  # 1.1: sync_windows, sync_frame_conf, cascade_stop; 1.2: driving_* variant paths
# Fixed namespace so clip ids are reproducible across machines and runs.
CLIP_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "megactor-pipeline:clip")

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
AUGMENTATION = (  # filled by the augmentation stage (face swap, stylization); null until then
    pa.field("driving_faceswap_path", pa.string()),
    pa.field("driving_stylized_path", pa.string()),
)
DECISION = (
    pa.field("keep", pa.bool_(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # kept | rejected | pending | error
    pa.field("reject_reasons", pa.list_(pa.string()), nullable=False),
    pa.field("unscored_rules", pa.list_(pa.string()), nullable=False),
    pa.field("error", pa.string()),
    pa.field("error_reason", pa.string()),
    pa.field("cascade_stop", pa.string()),
)
VERSIONS = (
    pa.field("gate_version", pa.string()),
    pa.field("scene_version", pa.string()),
    pa.field("face_version", pa.string()),
    pa.field("audio_version", pa.string()),
    pa.field("sync_version", pa.string()),
)
COLUMN_DOCS = {
    "clip_id": "uuid5 of the source's content id and the span: stable across reruns",
    "video_id": "content id of the source file (sampled blake2b; same bytes, same id, wherever the file lives)",
    "dataset": "dataset name from the source configuration",
    "source_path": "absolute path of the source video at curation time",
    "source_relpath": "path relative to the dataset root (portable across machines)",
    "origin_video_id": "id of the original video the dataset cut the file from (e.g. YouTube id), if known",
    "speaker_id": "speaker/identity id from the dataset layout, if known",
    "clip_index": "position of the clip within its source (0-based)",
    "scene_index": "shot the clip belongs to (null when the source was rejected before shot splitting)",
    "start_s": "clip start in source seconds", "end_s": "clip end in source seconds",
    "duration_s": "end_s - start_s",
    "fps": "source average frame rate", "fps_nominal": "source nominal (r_frame_rate) frame rate",
    "vfr": "source has a variable frame rate", "width": "source display width (after rotation)",
    "height": "source display height (after rotation)", "rotation": "rotation metadata in degrees",
    "video_codec": "source video codec", "has_video": "source has a video stream",
    "has_audio": "source has an audio stream", "audio_codec": "source audio codec",
    "audio_sample_rate": "source audio sample rate (Hz)", "source_duration_s": "source duration (s)",
    "source_size_bytes": "source file size", "scene_detector": "shot detector and its settings",
    "face_frames_sampled": "frames sent to the face model",
    "face_present_frac": "fraction of sampled frames with at least one face",
    "face_count_max": "most faces seen in one sampled frame",
    "multi_face_frac": "fraction of sampled frames with more than one face",
    "face_res_px": "effective face resolution: median over frames of min(w, h) of the face landmark box, "
                   "source pixels (the side of the largest square inside the face)",
    "face_res_p10_px": "10th percentile of the per-frame effective face resolution",
    "face_box": "median face box [x0, y0, x1, y1], source pixels",
    "face_track": "per sampled frame: time, face count, face/eyes/mouth boxes (source pixels), yaw/pitch/roll",
    "yaw_abs_mean_deg": "mean |yaw| of the head over frames with a face (degrees; 0 = frontal)",
    "pose_yaw_mean_deg": "mean signed yaw (degrees)", "pose_yaw_abs_p90_deg": "90th percentile of |yaw|",
    "pose_pitch_mean_deg": "mean pitch (degrees)", "pose_roll_mean_deg": "mean roll (degrees)",
    "audio_speech_frac": "fraction of 30 ms audio frames WebRTC VAD marks as speech",
    "audio_rms_dbfs": "RMS level of the clip's audio (dBFS)",
    "sync_offset": "SyncNet AV offset in 25 fps frames (15 - argmin of the offset-averaged distances)",
    "sync_c": "SyncNet confidence, Sync-C: median minus minimum of the offset-averaged distances (reference)",
    "sync_d": "SyncNet distance, Sync-D: minimum of the offset-averaged lip-audio distances (reference)",
    "sync_windows": "number of 5-frame SyncNet windows the scores average over",
    "sync_frame_conf": "per window: median distance minus the window's distance at the best offset, "
                       "median-filtered over 9 windows (the reference's framewise confidence)",
    "driving_faceswap_path": "a face-swapped version of the clip's span (another identity driving the same "
                             "motion), time 0 = start_s; null until the augmentation stage has made one",
    "driving_stylized_path": "a stylized version of the clip's span, time 0 = start_s; null until made",
    "keep": "true when every rule was scored and passed",
    "status": "kept | rejected | pending (nothing failed, some rule not scored) | error",
    "reject_reasons": "every rule the clip failed (snake_case), plus the error reason if any",
    "unscored_rules": "rules whose inputs were not computed for this clip",
    "error": "error message (null when none)", "error_reason": "snake_case code of the error",
    "cascade_stop": "the stage after which scoring stopped because the clip was already rejected "
                    "(metadata_gate or a scorer name); null when every stage ran",
    "gate_version": "metadata gate version", "scene_version": "shot detector version",
    "face_version": "face scorer and version (face_mediapipe: lite profile; face_dwpose: paper profile)",
    "audio_version": "audio scorer version", "sync_version": "lip-sync scorer version",
}


def _documented(fields) -> list[pa.Field]:
    return [f.with_metadata({"description": COLUMN_DOCS[f.name]}) for f in fields]


SCHEMA = pa.schema(
    _documented(IDENTITY + SOURCE + (pa.field("scene_detector", pa.string()),)
                + MediaPipeFaceScorer.fields + AudioActivityScorer.fields + SyncNetScorer.fields + AUGMENTATION + DECISION
                + VERSIONS),
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
    metadata = dict(SCHEMA.metadata or {})
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
