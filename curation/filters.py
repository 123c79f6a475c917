"""Filters decide; scorers only annotate. Every rule reads stored columns and answers pass, fail (with a
snake_case reason) or "not scored" (its inputs are null). A clip is kept only when every rule was scored and
passed; a clip that failed nothing but has unscored rules is ``pending`` (for example Sync-C/Sync-D before
SyncNet runs), never silently passed or failed.

The metadata gate is the subset of rules that read only the probe and the span; the runner applies it before
decoding anything, and the filter re-applies all of them, so re-thresholding never needs a re-score."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import ge, gt, le, lt
from typing import Any

from curation.config import Thresholds

Verdict = bool | None  # True: pass, False: fail, None: not scored


@dataclass(frozen=True)
class Rule:
    name: str
    reason: str
    metadata_only: bool  # decidable from the probe and span alone (the gate)
    check: Callable[[dict[str, Any], Thresholds], Verdict]
    applies: Callable[[Thresholds], bool] = lambda t: True


def _known(*values: Any) -> bool:
    return all(v is not None for v in values)


def _compare(column: str, op: Callable[[Any, Any], bool], limit: str) -> Callable[[dict, Thresholds], Verdict]:
    """A rule check ``op(row[column], thresholds.<limit>)``, not scored when the column is null."""

    def check(row: dict[str, Any], t: Thresholds) -> Verdict:
        value = row.get(column)
        return bool(op(value, getattr(t, limit))) if value is not None else None

    return check


def _video_stream(row, t):
    return row.get("has_video")


def _frame_size(row, t):
    w, h = row.get("width"), row.get("height")
    return min(w, h) >= t.face_res_px_min if _known(w, h) else None


def _audio_stream(row, t):
    return row.get("has_audio")


def _face_found(row, t):
    frac = row.get("face_present_frac")
    return frac > 0 if _known(frac) else None


def _needs_audio(t: Thresholds) -> bool:
    return t.require_lip_sync or t.speech_frac_min > 0


RULES: tuple[Rule, ...] = (
    Rule("video_stream", "no_video_stream", True, _video_stream),
    Rule("frame_size", "frame_too_small", True, _frame_size),
    Rule("audio_stream", "no_audio_stream", True, _audio_stream, _needs_audio),
    Rule("clip_length", "clip_too_short", True, _compare("duration_s", ge, "clip_s_min")),
    Rule("face_found", "no_face", False, _face_found),
    Rule("face_presence", "face_missing_in_frames", False, _compare("face_present_frac", ge, "face_present_frac_min")),
    Rule("single_face", "multiple_faces", False, _compare("multi_face_frac", le, "multi_face_frac_max")),
    Rule("face_resolution", "face_too_small", False, _compare("face_res_px", ge, "face_res_px_min")),
    Rule("head_yaw", "yaw_too_large", False, _compare("yaw_abs_mean_deg", le, "yaw_abs_mean_deg_max")),
    Rule("speech", "no_speech", False, _compare("audio_speech_frac", ge, "speech_frac_min"),
         lambda t: t.speech_frac_min > 0),
    Rule("sync_confidence", "sync_conf_too_low", False, _compare("sync_c", gt, "sync_c_min"),
         lambda t: t.require_lip_sync),
    Rule("sync_distance", "sync_dist_too_high", False, _compare("sync_d", lt, "sync_d_max"),
         lambda t: t.require_lip_sync),
)
REASONS = tuple(rule.reason for rule in RULES)


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
