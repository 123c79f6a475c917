"""Filters decide; scorers only annotate. Every rule reads stored columns and answers pass, fail (with a
snake_case reason) or "not scored" (its inputs are null). A clip is kept only when every rule was scored and
passed; a clip that failed nothing but has unscored rules is ``pending`` (for example Sync-C/Sync-D before
SyncNet runs), never silently passed or failed.

The metadata gate is the subset of rules that read only the probe and the span; the runner applies it before
decoding anything, and the filter re-applies all of them, so re-thresholding never needs a re-score.

Each rule is declared once, as the columns it reads and a test written with operators that work on a row's
values and on NumPy columns alike: ``decide`` applies it to one row (the runner, a few thousand rows per shard),
``decide_columns`` to a whole Arrow table at once (``megactor filter`` over millions of rows)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import ge, gt, le, lt
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.config import Thresholds

Verdict = bool | None  # True: pass, False: fail, None: not scored


def _always(t: Thresholds) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    name: str
    reason: str
    metadata_only: bool  # decidable from the probe and span alone (the gate)
    inputs: tuple[str, ...]  # the stored columns it reads; a null in any of them means "not scored"
    # test(*values, thresholds) -> passed, for a row's values or NumPy columns (float64 or bool) alike
    test: Callable[..., Any]
    applies: Callable[[Thresholds], bool] = _always
    # A threshold rule passes when ``compare(value, limit)`` (what the report sweeps): ``value`` names the
    # compared quantity (its one input, or a derived one: frame_size's ``frame_min_side``), ``limit`` a
    # Thresholds field or a constant. A flag rule (one boolean input, True passes) has neither.
    compare: Callable[[Any, Any], Any] | None = None
    limit: str | float | None = None
    value: str | None = None

    def check(self, row: dict[str, Any], t: Thresholds) -> Verdict:
        values = [row.get(column) for column in self.inputs]
        if any(value is None for value in values):
            return None
        return bool(self.test(*values, t))

    def bound(self, t: Thresholds) -> float:
        """The threshold rule's limit under ``t``."""
        return float(getattr(t, self.limit)) if isinstance(self.limit, str) else float(self.limit)


def _flag(name: str, reason: str, column: str, applies: Callable[[Thresholds], bool] = _always) -> Rule:
    return Rule(name, reason, True, (column,), lambda has, t: has, applies)


def _threshold(name: str, reason: str, metadata_only: bool, column: str, compare: Callable[[Any, Any], Any],
               limit: str | float, applies: Callable[[Thresholds], bool] = _always) -> Rule:
    """A rule passing when ``compare(row[column], limit)``."""
    rule = Rule(name, reason, metadata_only, (column,), lambda value, t: compare(value, rule.bound(t)), applies,
                compare, limit, column)
    return rule


def _needs_audio(t: Thresholds) -> bool:
    return t.require_lip_sync or t.speech_frac_min > 0


def _lip_sync(t: Thresholds) -> bool:
    return t.require_lip_sync


RULES: tuple[Rule, ...] = (
    _flag("video_stream", "no_video_stream", "has_video"),
    Rule("frame_size", "frame_too_small", True, ("width", "height"),
         lambda w, h, t: np.minimum(w, h) >= t.face_res_px_min,
         compare=ge, limit="face_res_px_min", value="frame_min_side"),  # a face cannot outgrow its frame
    _flag("audio_stream", "no_audio_stream", "has_audio", _needs_audio),
    _threshold("clip_length", "clip_too_short", True, "duration_s", ge, "clip_s_min"),
    _threshold("face_found", "no_face", False, "face_present_frac", gt, 0.0),
    _threshold("face_presence", "face_missing_in_frames", False, "face_present_frac", ge, "face_present_frac_min"),
    _threshold("single_face", "multiple_faces", False, "multi_face_frac", le, "multi_face_frac_max"),
    _threshold("face_resolution", "face_too_small", False, "face_res_px", ge, "face_res_px_min"),
    _threshold("head_yaw", "yaw_too_large", False, "yaw_abs_mean_deg", le, "yaw_abs_mean_deg_max"),
    _threshold("speech", "no_speech", False, "audio_speech_frac", ge, "speech_frac_min",
               lambda t: t.speech_frac_min > 0),
    _threshold("sync_confidence", "sync_conf_too_low", False, "sync_c", gt, "sync_c_min", _lip_sync),
    _threshold("sync_distance", "sync_dist_too_high", False, "sync_d", lt, "sync_d_max", _lip_sync),
)
REASONS = tuple(rule.reason for rule in RULES)
# Everything a decision reads: what ``megactor filter`` loads from the scores (never the face tracks).
DECISION_INPUTS = tuple(dict.fromkeys(c for rule in RULES for c in rule.inputs)) + ("error", "error_reason")


def decision_inputs(thresholds: Thresholds) -> tuple[str, ...]:
    """The columns a decision under ``thresholds`` reads (the rules that apply, and the error)."""
    rules = [rule for rule in RULES if rule.applies(thresholds)]
    return tuple(dict.fromkeys(c for rule in rules for c in rule.inputs)) + ("error", "error_reason")
STATUSES = ("kept", "rejected", "pending", "error")


@dataclass(frozen=True)
class Decision:
    keep: bool
    status: str  # kept | rejected | pending | error
    reject_reasons: list[str]
    unscored_rules: list[str]


def gate_reasons(row: dict[str, Any], thresholds: Thresholds, *, clip_level: bool) -> list[str]:
    """Reasons the metadata gate rejects a source (``clip_level=False``: rules that hold for the whole file)
    or a clip span (``clip_level=True``: also its length)."""
    reasons = []
    for rule in RULES:
        if not rule.metadata_only or not rule.applies(thresholds):
            continue
        if rule.name == "clip_length" and not clip_level:
            continue
        if rule.check(row, thresholds) is False:
            reasons.append(rule.reason)
    return reasons


def decide(row: dict[str, Any], thresholds: Thresholds) -> Decision:
    reasons: list[str] = []
    unscored: list[str] = []
    for rule in RULES:
        if not rule.applies(thresholds):
            continue
        verdict = rule.check(row, thresholds)
        if verdict is False:
            reasons.append(rule.reason)
        elif verdict is None:
            unscored.append(rule.name)
    if row.get("error"):
        reasons.append(row.get("error_reason") or "error")
        return Decision(False, "error", reasons, unscored)
    if reasons:
        return Decision(False, "rejected", reasons, unscored)
    if unscored:
        return Decision(False, "pending", reasons, unscored)
    return Decision(True, "kept", reasons, unscored)


# -- the same decisions over whole columns -------------------------------------------------------------------

def _column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(values, valid)`` as NumPy: booleans stay boolean, numbers become float64 (as Python compares a row's
    ints and floats: exactly, never in float32). A column the table lacks is all null, as ``row.get`` is."""
    if name not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool), np.zeros(table.num_rows, dtype=bool)
    column = table.column(name)
    valid = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else np.ones(len(column), bool)
    if pa.types.is_boolean(column.type):
        return pc.fill_null(column, False).to_numpy(zero_copy_only=False), valid
    values = pc.cast(column, pa.float64())
    if column.null_count:
        values = pc.fill_null(values, 0.0)
    return values.to_numpy(zero_copy_only=False), valid


def _lists(hits: list[np.ndarray], pool: pa.Array, n: int, *, last_is_own: bool = False) -> pa.ListArray:
    """One list per row: ``pool[j]`` for each ``hits[j]`` set on the row, in ``j`` order. With ``last_is_own``,
    the last of ``hits`` picks the row's own entry ``pool[len(hits) - 1 + row]`` (its error reason)."""
    counts = np.zeros(n, dtype=np.int32)
    for hit in hits:
        counts += hit
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    cursor = offsets[:-1].copy()
    indices = np.empty(int(offsets[-1]), dtype=np.int64)
    for j, hit in enumerate(hits):
        rows = np.flatnonzero(hit)
        indices[cursor[rows]] = j + rows if last_is_own and j == len(hits) - 1 else j
        cursor[rows] += 1
    return pa.ListArray.from_arrays(pa.array(offsets), pool.take(pa.array(indices)))


def decide_columns(table: pa.Table, thresholds: Thresholds) -> dict[str, pa.Array]:
    """``decide`` for every row of ``table`` at once (it needs the ``DECISION_INPUTS`` columns only):
    ``keep``, ``status``, ``reject_reasons`` and ``unscored_rules`` as Arrow arrays, row for row equal to
    ``decide`` (same reasons in the same order: the rules' order, then the error reason)."""
    table = table.select([c for c in DECISION_INPUTS if c in table.column_names]).combine_chunks()
    rules = [rule for rule in RULES if rule.applies(thresholds)]
    inputs = {name: _column(table, name) for name in dict.fromkeys(c for rule in rules for c in rule.inputs)}
    failed, unscored = [], []
    for rule in rules:
        values = [inputs[c][0] for c in rule.inputs]
        scored = np.logical_and.reduce([inputs[c][1] for c in rule.inputs])
        passed = np.asarray(rule.test(*values, thresholds), dtype=bool)
        failed.append(scored & ~passed)
        unscored.append(~scored)

    error, error_reason = _error_columns(table)
    rejected = np.logical_or.reduce(failed) if failed else np.zeros(table.num_rows, dtype=bool)
    pending = np.logical_or.reduce(unscored) if unscored else np.zeros(table.num_rows, dtype=bool)
    codes = np.where(error, 3, np.where(rejected, 1, np.where(pending, 2, 0))).astype(np.int8)
    reason_pool = pa.concat_arrays([pa.array([rule.reason for rule in rules], pa.string()), error_reason])
    return {
        "keep": pa.array(codes == 0),
        "status": pa.array(STATUSES, pa.string()).take(pa.array(codes)),
        "reject_reasons": _lists([*failed, error], reason_pool, table.num_rows, last_is_own=True),
        "unscored_rules": _lists(unscored, pa.array([rule.name for rule in rules], pa.string()), table.num_rows),
    }


def _error_columns(table: pa.Table) -> tuple[np.ndarray, pa.Array]:
    """Rows with an error (a non-empty ``error``, as ``if row.get("error")``) and, per row, the reason
    ``decide`` records for it (``error_reason``, or ``"error"`` when that is null or empty)."""
    n, names = table.num_rows, table.column_names
    error, reason = (table.column(c).cast(pa.string()) if c in names else pa.chunked_array([pa.nulls(n, pa.string())])
                     for c in ("error", "error_reason"))
    has_error = pc.fill_null(pc.greater(pc.utf8_length(error), 0), False).to_numpy(zero_copy_only=False)
    named = pc.fill_null(pc.greater(pc.utf8_length(reason), 0), False)
    return has_error, pc.if_else(named, reason, "error").combine_chunks()
