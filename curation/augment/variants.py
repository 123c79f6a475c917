"""The augmentation run's two tables, as code: an explicit, versioned pyarrow schema each, every column documented in
the Parquet field metadata, provenance in every part file, parts written atomically (``curation.io``).

- **variants** (``OUTPUT/variants/part-NNNNN.parquet``): one row per variant of a kept clip (several per clip
  allowed), linked to the curated manifest by ``clip_id``. A variant that could not be made is a row too, with
  ``status`` ``error`` and a reason; one that was made but failed a check is ``rejected`` with its reasons. Only
  ``status == "ok"`` rows are for training (``usable``).
- **identities** (``OUTPUT/identities/part-NNNNN.parquet``): the pool the face swap draws its source identities
  from, one row per candidate (a frame of a kept clip, or an image of a folder) with its ArcFace embedding, or the
  reason it cannot serve (no face in it, unreadable)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.io import part_files, write_parquet_atomic

SCHEMA_VERSION = "1.0"
VARIANT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "megactor-pipeline:variant")
IDENTITY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "megactor-pipeline:identity")
STATUSES = ("ok", "rejected", "error")

VARIANT_FIELDS = (
    # identity and the clip it renders
    ("variant_id", pa.string(), False, "uuid5 of (clip_id, kind, variant_index): stable across reruns"),
    ("clip_id", pa.string(), False, "the curated manifest's clip this variant renders (join key)"),
    ("kind", pa.string(), False, "faceswap | stylized"),
    ("variant_index", pa.int16(), False, "0-based index among the clip's variants of this kind"),
    ("video_id", pa.string(), True, "content id of the clip's source file (from the manifest)"),
    ("dataset", pa.string(), True, "the clip's dataset (from the manifest)"),
    ("speaker", pa.string(), True, "the clip's speaker: speaker_id, or video_id when the dataset has none"),
    ("source_path", pa.string(), True, "the clip's source video (from the manifest)"),
    ("start_s", pa.float64(), True, "the clip's start in the source; the variant's time 0"),
    ("duration_s", pa.float64(), True, "the clip's duration; the variant covers exactly this span"),
    # the file
    ("path", pa.string(), True, "absolute path of the variant video when it was written (null when none)"),
    ("relpath", pa.string(), True, "the video's path relative to the augmentation run's directory (portable)"),
    ("fps", pa.float32(), True, "frame rate of the variant: frame k is the clip's frame k (at k / fps)"),
    ("frames", pa.int32(), True, "frames written"),
    ("width", pa.int32(), True, "frame width (the source's display width unless video.max_side is set)"),
    ("height", pa.int32(), True, "frame height"),
    ("has_audio", pa.bool_(), True, "the clip's audio is in the file (AAC, cut at the clip's first sample)"),
    # how it was made
    ("seed", pa.int64(), True, "the seed every random choice of this variant derives from"),
    ("identity_id", pa.string(), True, "faceswap: the source identity (identities table)"),
    ("identity_speaker", pa.string(), True, "faceswap: that identity's speaker (never the clip's own)"),
    ("identity_source", pa.string(), True, "faceswap: the image or video the identity's face comes from"),
    ("prompt", pa.string(), True, "stylized: the prompt drawn for this variant"),
    # face track of the swap
    ("face_detected_frac", pa.float32(), True, "faceswap: share of frames where the detector found the face"),
    ("face_interpolated_frames", pa.int32(), True, "faceswap: frames whose keypoints were interpolated over a "
                                                   "detection gap"),
    ("face_unswapped_frames", pa.int32(), True, "faceswap: frames left with the original face (gap too long)"),
    # checks
    ("id_frames_checked", pa.int32(), True, "faceswap: sampled frames compared by ArcFace"),
    ("id_sim_source", pa.float32(), True, "faceswap: median ArcFace cosine of the swapped face to the source "
                                          "identity"),
    ("id_sim_original", pa.float32(), True, "faceswap: median ArcFace cosine of the swapped face to the original "
                                            "face of the same frame"),
    ("id_closer_to_original_frac", pa.float32(), True, "faceswap: share of checked frames whose swapped face is "
                                                       "nearer the original than the source"),
    ("motion_frames", pa.int32(), True, "sampled frames where the face backend found landmarks on both the "
                                        "original and the variant"),
    ("mouth_open_error", pa.float32(), True, "mean |mouth opening of variant - original| (inner-lip gap / mouth "
                                             "width), from the face backend's landmarks"),
    ("eye_open_error", pa.float32(), True, "mean |eye opening of variant - original| (lid gap / eye width)"),
    ("flicker_ratio", pa.float32(), True, "mean absolute frame-to-frame change of the variant over the "
                                          "original's, inside the changed region (1: as steady as the source)"),
    # outcome
    ("status", pa.string(), False, "ok | rejected (a check failed) | error (no variant could be made)"),
    ("usable", pa.bool_(), False, "status == 'ok': the trainer draws only these"),
    ("reject_reasons", pa.list_(pa.string()), False, "every check the variant failed (snake_case), plus the error "
                                                     "reason if any"),
    ("error", pa.string(), True, "error message (null when none)"),
    ("error_reason", pa.string(), True, "snake_case code of the error"),
    ("wall_s", pa.float32(), True, "seconds spent making and checking this variant"),
    ("augment_version", pa.string(), True, "the maker and its version (faceswap@1.0, stylize@1.0)"),
)

IDENTITY_FIELDS = (
    ("identity_id", pa.string(), False, "uuid5 of the candidate's source (and time, for a clip frame)"),
    ("speaker", pa.string(), True, "who it is: the clip's speaker_id (else video_id), or the image's folder/name"),
    ("origin", pa.string(), False, "clip_frame | image"),
    ("source_path", pa.string(), False, "the video or image the face was taken from"),
    ("clip_id", pa.string(), True, "clip_frame: the clip"),
    ("t_s", pa.float64(), True, "clip_frame: the frame's time in the source, seconds"),
    ("det_score", pa.float32(), True, "detector score of the face"),
    ("face_px", pa.float32(), True, "width of the detected face box, pixels"),
    ("embedding", pa.list_(pa.float32()), True, "L2-normalised ArcFace embedding (512-d for w600k_r50)"),
    ("status", pa.string(), False, "ok | error"),
    ("error", pa.string(), True, "why this candidate cannot serve (null when ok)"),
    ("error_reason", pa.string(), True, "snake_case code: no_face, face_too_small, unreadable_image, ..."),
)


def _schema(fields, table: str) -> pa.Schema:
    return pa.schema([pa.field(name, kind, nullable=nullable, metadata={"description": doc})
                      for name, kind, nullable, doc in fields],
                     metadata={"megactor.table": table, "megactor.schema_version": SCHEMA_VERSION})


VARIANTS_SCHEMA = _schema(VARIANT_FIELDS, "variants")
IDENTITIES_SCHEMA = _schema(IDENTITY_FIELDS, "identities")
VARIANT_DOCS = {name: doc for name, _, _, doc in VARIANT_FIELDS}
IDENTITY_DOCS = {name: doc for name, _, _, doc in IDENTITY_FIELDS}


def variant_id(clip_id: str, kind: str, index: int) -> str:
    return str(uuid.uuid5(VARIANT_NAMESPACE, f"{clip_id}:{kind}:{index}"))


def identity_id(source: str, t_s: float | None = None) -> str:
    return str(uuid.uuid5(IDENTITY_NAMESPACE, source if t_s is None else f"{source}:{t_s:.3f}"))


def _table(rows: Iterable[dict[str, Any]], schema: pa.Schema, provenance: dict[str, Any]) -> pa.Table:
    rows = list(rows)
    for row in rows:
        unknown = set(row) - set(schema.names)
        if unknown:
            raise ValueError(f"row has columns outside the {schema.metadata[b'megactor.table'].decode()} schema: "
                             f"{sorted(unknown)}")
    table = pa.Table.from_pylist(rows, schema=schema)
    metadata = dict(schema.metadata or {})
    metadata[b"megactor.provenance"] = json.dumps(provenance, sort_keys=True).encode()
    return table.replace_schema_metadata(metadata)


def variants_table(rows: Iterable[dict[str, Any]], provenance: dict[str, Any]) -> pa.Table:
    return _table(rows, VARIANTS_SCHEMA, provenance)


def identities_table(rows: Iterable[dict[str, Any]], provenance: dict[str, Any]) -> pa.Table:
    return _table(rows, IDENTITIES_SCHEMA, provenance)


def write_part(table: pa.Table, directory: str | Path, shard: int) -> Path:
    return write_parquet_atomic(table, Path(directory) / f"part-{shard:05d}.parquet")


def _read(directory: str | Path, schema: pa.Schema) -> pa.Table:
    parts = part_files(directory)
    if not parts:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=schema) for p in parts])


def read_variants(directory: str | Path) -> pa.Table:
    """Every committed variants part of ``directory`` (an augmentation run's ``variants/``)."""
    return _read(directory, VARIANTS_SCHEMA)


def read_identities(directory: str | Path) -> pa.Table:
    return _read(directory, IDENTITIES_SCHEMA)


def decided(row: dict[str, Any], reasons: list[str]) -> dict[str, Any]:
    """``row`` with its outcome: ``error`` when it carries an error, else ``rejected`` when a check failed, else
    ``ok``; the error reason joins ``reject_reasons`` so that one column lists every why."""
    if row.get("error_reason"):
        status = "error"
        reasons = [*reasons, row["error_reason"]]
    else:
        status = "rejected" if reasons else "ok"
    return {**row, "status": status, "usable": status == "ok", "reject_reasons": reasons}


# -- an augmentation run, as the trainer reads it --------------------------------------------------------------

SOURCE_FILE = "source.json"  # in an augmentation run: the curated manifest it augments


def is_augment_run(path: str | Path) -> bool:
    return (Path(path) / SOURCE_FILE).is_file()


def write_source(run: str | Path, manifest: Path) -> None:
    from curation.io import write_json_atomic

    run = Path(run).resolve()
    write_json_atomic({"manifest": str(manifest), "manifest_relpath": os.path.relpath(manifest, run),
                       "variants": "variants"}, run / SOURCE_FILE)


def source_manifest(run: str | Path) -> Path:
    """The curated manifest directory an augmentation run augments: the stored relative path first (the two runs
    moved together), else the absolute one."""
    run = Path(run).resolve()
    source = json.loads((run / SOURCE_FILE).read_text())
    relative = (run / source.get("manifest_relpath", "")).resolve()
    return relative if source.get("manifest_relpath") and relative.is_dir() else Path(source["manifest"])


def usable_variants(run: str | Path) -> dict[str, dict[str, list[str]]]:
    """clip_id -> kind -> the paths of its usable variant videos, in variant order (relative paths resolved
    against the run, so a moved run still works)."""
    run = Path(run).resolve()
    table = read_variants(run / "variants")
    out: dict[str, dict[str, list[str]]] = {}
    rows = sorted((r for r in table.to_pylist() if r["usable"]), key=lambda r: (r["clip_id"], r["kind"],
                                                                                 r["variant_index"]))
    for row in rows:
        local = run / row["relpath"] if row["relpath"] else None
        path = str(local) if local is not None and local.is_file() else row["path"]
        out.setdefault(row["clip_id"], {}).setdefault(row["kind"], []).append(path)
    return out
