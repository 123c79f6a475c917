"""The manifest: one row per clip, an explicit versioned pyarrow schema, sharded part files under
``OUTPUT/manifest/`` written atomically, provenance in every file's metadata.

Column groups: identity and span, source (from the probe), scene, ``face_*`` / pose, ``audio_*``, ``sync_*``
(null until the SyncNet scorer runs), the decision (``keep``, ``status``, ``reject_reasons``,
``unscored_rules``, ``error``), and the version of each scorer that produced the row's scores.

``megactor filter`` re-decides without copying the scores: its output directory holds *decisions parts*
(``clip_id`` and the four decision columns, in the scores' row order) whose metadata points at the scored parts
they re-decide; ``read_manifest`` joins them back, so every reader sees the new decisions."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import shutil
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.config import Thresholds
from curation.errors import MegactorError
from curation.filters import DECISION_INPUTS, decide, decide_columns, decision_inputs
from curation.io import part_files, write_parquet_atomic
from curation.scorers.audio_activity import AudioActivityScorer
from curation.scorers.face_mediapipe import MediaPipeFaceScorer
from curation.scorers.sync_syncnet import SyncNetScorer

log = logging.getLogger(__name__)

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


# -- decisions parts: re-thresholding without rewriting the scores -------------------------------------------

DECISION_COLUMNS = ("keep", "status", "reject_reasons", "unscored_rules")
DECISIONS_SCHEMA = pa.schema(_documented([SCHEMA.field("clip_id")] + [SCHEMA.field(c) for c in DECISION_COLUMNS]))
DECISIONS_KEY = b"megactor.decisions"  # file metadata of a decisions part: JSON, see ``_pointer``
DECISIONS_VERSION = "1"
DECISIONS_BATCH_ROWS = 500_000  # rows per decisions part (consecutive scored parts, never split)
READ_AHEAD = 64  # parts
# Every scored part's rule inputs in one file, written by the first ``megactor filter`` of a manifest and reused
# while the parts are unchanged (same paths, sizes, mtimes), so a re-threshold reads one file instead of opening
# thousands of parts. It lives outside the manifest directory (RUN/.megactor-cache/manifest/...): a glob over
# the manifest's files (duckdb's includes hidden ones) must never see it.
INPUTS_CACHE = "decision-inputs.parquet"
INPUTS_CACHE_KEY = b"megactor.decision_inputs"
# clip ids are unique: a dictionary would be tried and dropped for them, page after page
WRITE_OPTIONS = {"use_dictionary": ["status", "reject_reasons", "unscored_rules", "keep"]}


@dataclass(frozen=True)
class ScoredPart:
    path: Path
    rows: int


@dataclass
class Refiltered:
    """What ``refilter`` wrote and decided."""

    parts: list[Path]
    scores: list[ScoredPart]
    rows: int = 0
    status: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)

    @property
    def scores_dirs(self) -> list[Path]:
        return list(dict.fromkeys(part.path.parent for part in self.scores))


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise MegactorError(f"cannot read manifest part {path}: {error}") from None


def _pointer(path: Path, metadata: pq.FileMetaData) -> list[ScoredPart] | None:
    """The scored parts a decisions part re-decides, in order; None for a part holding its own scores."""
    raw = (metadata.metadata or {}).get(DECISIONS_KEY)
    if raw is None:
        return None
    pointer = json.loads(raw)
    scored = []
    for entry in pointer["scores"]:
        scores = Path(entry["path"])
        if not scores.is_file():  # moved together with its scores: the path relative to the decisions part
            scores = (path.parent / entry["relpath"]).resolve()
        if not scores.is_file():
            raise MegactorError(f"{path} re-decides {entry['path']}, which is gone (the scored manifest must stay "
                                "where it was; or write a standalone manifest with megactor filter --materialize)")
        scored.append(ScoredPart(scores, int(entry["rows"])))
    return scored


def scores_dir(manifest_dir: str | Path) -> Path:
    """Where the scores of a manifest directory are: itself, or the scored manifest a refilter re-decides."""
    parts = part_files(manifest_dir)
    pointed = _pointer(parts[0], _open(parts[0]).metadata) if parts else None
    return pointed[0].path.parent if pointed else Path(manifest_dir).resolve()


def _read_part(file: pq.ParquetFile, columns: Sequence[str] | None, *, use_threads: bool = True,
               present: set[str] | None = None) -> pa.Table:
    """A part's ``columns`` (all: None) with the schema's types, a column the file lacks as nulls.
    ``refilter`` reads many parts in parallel, each in one thread (``use_threads=False``): Arrow's own threads
    only add contention on parts of a few hundred rows."""
    wanted = tuple(SCHEMA.names if columns is None else columns)
    target = _schema_of(wanted)
    present = present or set(file.schema_arrow.names)  # the file's columns (a schema conversion: once a part)
    table = file.read(columns=[c for c in wanted if c in present], use_threads=use_threads)
    if table.schema.equals(target, check_metadata=False):
        return pa.Table.from_arrays(table.columns, schema=target)
    arrays = []
    for spec in target:
        if spec.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, spec.type))
            continue
        column = table.column(spec.name)
        arrays.append(column if column.type == spec.type else column.cast(spec.type))
    return pa.Table.from_arrays(arrays, schema=target)


@functools.lru_cache(maxsize=64)
def _schema_of(columns: tuple[str, ...]) -> pa.Schema:
    return pa.schema([SCHEMA.field(name) for name in columns], SCHEMA.metadata)


def _read_scores(part: ScoredPart, columns: Sequence[str] | None, *, use_threads: bool = True) -> pa.Table:
    table = _read_part(_open(part.path), columns, use_threads=use_threads)
    if table.num_rows != part.rows:
        raise MegactorError(f"{part.path} holds {table.num_rows} rows, its decisions {part.rows}: the scored "
                            "manifest changed after megactor filter ran; rerun it")
    return table


def _read_source(path: Path, columns: Sequence[str] | None) -> tuple[ScoredPart, pa.Table] | list[ScoredPart]:
    """A part of the manifest being re-decided, opened once: its scores read, or, for a decisions part, the
    scored parts it points at (read by the caller)."""
    file = _open(path)
    pointed = _pointer(path, file.metadata)
    if pointed is not None:
        return pointed
    present = set(file.schema_arrow.names)
    if "clip_id" not in present:
        raise MegactorError(f"{path} has no clip_id column: not a manifest part")
    return ScoredPart(path.resolve(), file.metadata.num_rows), _read_part(file, columns, use_threads=False,
                                                                           present=present)


def _scores_in_order(pool: ThreadPoolExecutor, parts: list[Path], columns: Sequence[str] | None,
                     ) -> Iterator[tuple[ScoredPart, pa.Table]]:
    """Every scored part behind ``parts`` with its ``columns``, in order, read ahead by the pool's threads
    (``READ_AHEAD`` parts in flight: they keep reading while a batch is decided, and memory holds a batch,
    not the manifest)."""
    ahead = READ_AHEAD
    pending: deque = deque()
    items = iter(parts)
    for path in items:
        pending.append(pool.submit(_read_source, path, columns))
        if len(pending) >= ahead:
            break
    while pending:
        opened = pending.popleft().result()
        following = next(items, None)
        if following is not None:
            pending.append(pool.submit(_read_source, following, columns))
        if isinstance(opened, tuple):
            yield opened
        else:  # a refilter's output: the original scores
            yield from zip(opened, pool.map(lambda p: _read_scores(p, columns, use_threads=False), opened),
                           strict=True)


def _apply_decisions(decisions_path: Path, decisions: pa.Table, scores: pa.Table) -> pa.Table:
    """``scores`` with the decision columns of ``decisions`` (same clips, same order, checked)."""
    ids, scored_ids = decisions.column("clip_id"), scores.column("clip_id")
    if len(ids) != len(scored_ids) or not ids.equals(scored_ids):
        mismatch = len(scored_ids) if len(ids) != len(scored_ids) else \
            int(pc.index(pc.not_equal(ids, scored_ids), True).as_py())
        raise MegactorError(f"{decisions_path}: its clip ids do not match the scores it points at ({len(ids)} "
                            f"decisions, {len(scored_ids)} scored rows; first difference at row {mismatch}); "
                            "rerun megactor filter on the scored manifest")
    for name in DECISION_COLUMNS:
        if name in scores.column_names:
            scores = scores.set_column(scores.schema.get_field_index(name), SCHEMA.field(name),
                                       decisions.column(name))
    return scores


def read_manifest(manifest_dir: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The manifest's rows with the schema's types (``columns``: only those). A ``megactor filter`` output is
    read as its scores with its own decisions."""
    parts = part_files(manifest_dir)
    if not parts:
        table = SCHEMA.empty_table()
        return table.select(list(columns)) if columns is not None else table
    tables = []
    for part in parts:
        file = _open(part)
        pointed = _pointer(part, file.metadata)
        if pointed is None:
            tables.append(_read_part(file, columns))
            continue
        needed = None if columns is None else list(dict.fromkeys(["clip_id", *columns]))
        scores = pa.concat_tables([_read_scores(p, needed) for p in pointed])
        decisions = file.read(columns=DECISIONS_SCHEMA.names).cast(DECISIONS_SCHEMA)
        table = _apply_decisions(part, decisions, scores)
        tables.append(table.select(list(columns)) if columns is not None else table)
    return pa.concat_tables(tables)


def _scored_parts(parts: list[Path]) -> list[Path]:
    """The scored part files behind a manifest directory's parts (a refilter's output: those it points at)."""
    if _pointer(parts[0], _open(parts[0]).metadata) is None:  # a directory holds scores or decisions, not both
        return parts
    return [scored.path for part in parts for scored in _pointer(part, _open(part).metadata) or []]


def _cache_path(scores_dir: Path) -> Path:
    scores_dir = scores_dir.resolve()
    return scores_dir.parent / ".megactor-cache" / scores_dir.name / INPUTS_CACHE


def _stamp(parts: list[Path]) -> list[list[Any]]:
    stamps = []
    for part in parts:
        stat = part.stat()
        stamps.append([str(part.resolve()), stat.st_size, stat.st_mtime_ns])
    return stamps


def _cached_inputs(parts: list[Path], columns: list[str]) -> Iterator[tuple[ScoredPart, pa.Table]] | None:
    """The scored parts' ``columns`` from the inputs cache beside them, part by part; None when there is no
    cache, it lacks a column, or any part changed since it was written."""
    cache = _cache_path(parts[0].parent)
    if not cache.is_file() or len({p.parent for p in parts}) != 1:
        return None
    try:
        file = pq.ParquetFile(cache)
        entry = json.loads((file.metadata.metadata or {}).get(INPUTS_CACHE_KEY, b"{}"))
        if entry.get("parts") != _stamp(parts) or not set(columns) <= set(entry.get("columns", ())):
            return None
        table = _read_part(file, columns)
    except (OSError, ValueError, pa.ArrowInvalid):
        return None
    rows = entry["rows"]
    if sum(rows) != table.num_rows:
        return None
    offsets = [0, *itertools.accumulate(rows)]
    return ((ScoredPart(part.resolve(), n), table.slice(offsets[i], n))
            for i, (part, n) in enumerate(zip(parts, rows, strict=True)))


class _InputsCacheWriter:
    """Streams every scored part's rule inputs into the cache (a hidden temporary renamed at the end); a
    directory that cannot be written just goes without one."""

    def __init__(self, parts: list[Path]):
        self.parts, self.rows = parts, []
        self.path = _cache_path(parts[0].parent)
        self.tmp = self.path.with_name(f".{uuid.uuid4().hex[:8]}.{INPUTS_CACHE}.tmp")
        self.stamps = _stamp(parts)
        self.writer: pq.ParquetWriter | None = None
        self.failed = len({p.parent for p in parts}) != 1

    def add(self, table: pa.Table) -> None:
        if self.failed:
            return
        try:
            if self.writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd",
                                               use_dictionary=["error_reason"])
            self.writer.write_table(table)
            self.rows.append(table.num_rows)
        except OSError as error:
            self._give_up(error)

    def commit(self) -> None:
        if self.failed or self.writer is None:
            return self._give_up(None)
        try:
            self.writer.add_key_value_metadata({INPUTS_CACHE_KEY: json.dumps(
                {"parts": self.stamps, "rows": self.rows, "columns": list(self.writer.schema.names)})})
            self.writer.close()
            os.replace(self.tmp, self.path)
        except OSError as error:
            self._give_up(error)

    def _give_up(self, error: OSError | None) -> None:
        if error is not None:
            log.info("no decision-inputs cache beside %s: %s", self.path.parent, error)
        self.failed = True
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:
                pass
        self.tmp.unlink(missing_ok=True)


def refilter(source_dir: str | Path, output_dir: str | Path, thresholds: Thresholds,
             provenance_update: dict[str, Any], *, materialize: bool = False,
             batch_rows: int = DECISIONS_BATCH_ROWS, workers: int | None = None) -> Refiltered:
    """Re-apply thresholds to an existing manifest without re-scoring. Reads only the columns the rules need
    and decides column-wise (``curation.filters.decide_columns``). Writes decisions parts (``clip_id`` and the
    decision columns, about ``batch_rows`` rows each) that point at the scored parts, or, with ``materialize``,
    a standalone copy of every scored part with its decision columns replaced. The source may itself be a
    refilter's output: its scores are the original ones."""
    output_dir = Path(output_dir).resolve()
    parts = part_files(source_dir)
    if not parts:
        raise MegactorError(f"no manifest part files in {source_dir}")
    # Written beside the output and swapped in at the end: a reader never sees old and new parts mixed.
    staging = output_dir.with_name(f".{output_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
    result = Refiltered([], [])
    columns = None if materialize else ["clip_id", *decision_inputs(thresholds)]
    scored = _scored_parts(parts)
    cached = None if materialize else _cached_inputs(scored, columns)
    # without a cache, every rule's inputs are read (not only these thresholds') and the cache is built
    cache = _InputsCacheWriter(scored) if cached is None and not materialize else None
    batch: list[tuple[ScoredPart, pa.Table]] = []
    batched = 0
    # Parts are read by a pool (Parquet decoding frees the GIL), decided here, and written by another thread.
    readers = ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1))
    writer = ThreadPoolExecutor(1)
    writes = []

    def write(decide: Callable[..., tuple[pa.Table, str]], *args: Any) -> None:
        table, name = decide(*args, thresholds, provenance_update, output_dir, result)
        options = {} if materialize else WRITE_OPTIONS
        writes.append(writer.submit(write_parquet_atomic, table, staging / name, **options))
        result.parts.append(output_dir / name)

    try:
        if cached is not None:
            source: Iterable[tuple[ScoredPart, pa.Table]] = cached
        else:
            source = _scores_in_order(readers, parts, ["clip_id", *DECISION_INPUTS] if cache else columns)
        for part, table in source:
            result.scores.append(part)
            if cache is not None:
                writes.append(writer.submit(cache.add, table))
            if materialize:
                write(_materialized, part, table)
                continue
            if batch and batched + table.num_rows > batch_rows:
                write(_decisions, list(batch), len(result.parts))
                batch, batched = [], 0
            batch.append((part, table))
            batched += table.num_rows
        if batch:
            write(_decisions, batch, len(result.parts))
        for done in writes:
            done.result()
        _swap_in(staging, output_dir)
        if cache is not None:
            cache.commit()
    finally:
        readers.shutdown(cancel_futures=True)
        writer.shutdown(cancel_futures=True)
        shutil.rmtree(staging, ignore_errors=True)
        if cache is not None and cache.tmp.exists():  # not committed: an error stopped the refilter
            cache._give_up(None)
    return result


def _swap_in(staging: Path, output_dir: Path) -> None:
    staging.mkdir(parents=True, exist_ok=True)  # an empty manifest still replaces the old one
    old = output_dir.with_name(f".{output_dir.name}.{uuid.uuid4().hex[:8]}.old")
    if output_dir.exists():
        os.replace(output_dir, old)
    os.replace(staging, output_dir)
    shutil.rmtree(old, ignore_errors=True)


def _decisions(batch: list[tuple[ScoredPart, pa.Table]], number: int, thresholds: Thresholds,
               provenance_update: dict[str, Any], output_dir: Path, result: Refiltered) -> tuple[pa.Table, str]:
    """A decisions part: ``clip_id`` and the decisions of consecutive scored parts, with its pointer to them."""
    table = pa.concat_tables([t for _, t in batch])
    decisions = decide_columns(table, thresholds)
    _count(result, decisions)
    out = pa.table([table.column("clip_id")] + [decisions[c] for c in DECISION_COLUMNS], schema=DECISIONS_SCHEMA)
    metadata = provenance_metadata({**read_provenance(batch[0][0].path), **provenance_update})
    metadata[DECISIONS_KEY] = json.dumps({
        "version": DECISIONS_VERSION,
        "scores": [{"path": str(p.path), "relpath": os.path.relpath(p.path, output_dir), "rows": p.rows}
                   for p, _ in batch],
    }).encode()
    return out.replace_schema_metadata(metadata), f"part-{number:05d}.parquet"


def _materialized(part: ScoredPart, table: pa.Table, thresholds: Thresholds, provenance_update: dict[str, Any],
                  output_dir: Path, result: Refiltered) -> tuple[pa.Table, str]:
    """A standalone copy of a scored part with its decision columns replaced."""
    decisions = decide_columns(table, thresholds)
    _count(result, decisions)
    for name in DECISION_COLUMNS:
        table = table.set_column(table.schema.get_field_index(name), SCHEMA.field(name), decisions[name])
    provenance = {**read_provenance(part.path), **provenance_update}
    return table.replace_schema_metadata(provenance_metadata(provenance)), part.path.name


def _count(result: Refiltered, decisions: dict[str, pa.Array]) -> None:
    result.rows += len(decisions["status"])
    for entry in decisions["status"].value_counts().to_pylist():
        result.status[entry["values"]] += entry["counts"]
    for entry in pc.list_flatten(decisions["reject_reasons"]).value_counts().to_pylist():
        result.reasons[entry["values"]] += entry["counts"]
