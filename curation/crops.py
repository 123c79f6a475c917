"""Face crops and region masks from a manifest row's stored face track: one implementation shared by the trainer
(``training.data``), the augmentation stage (the stylizer's face-centred crop) and inference (driving frames cut
and masked as in training), so that the three never drift apart.

Coordinates are source display pixels (after rotation), as the manifest stores them: ``face_track`` points hold
``t`` in source seconds and ``box`` / ``eyes_box`` / ``mouth_box`` as ``[x0, y0, x1, y1]``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from curation import decode_av, media
from curation.errors import DecodeError

# Spans of one file closer than this share one decode pass (ffmpeg decodes from the keyframe before the first;
# the frames between them cost less than a second seek into a long GOP, up to a few seconds of 512 px video).
MERGE_GAP_S = 4.0

# Where eyes and mouth sit inside a face box, for a track without eyes/mouth boxes (rows [top, bottom] as
# fractions of the box height, full width).
FALLBACK_ROWS = {"eyes_box": (0.2, 0.5), "mouth_box": (0.62, 0.92)}


def probe_from_row(row: dict[str, Any]) -> media.ProbeResult:
    """The probe columns the manifest stored (no ffprobe per sample); a row without a size is probed."""
    if not row.get("width") or not row.get("height"):
        return media.probe(row["source_path"])
    return media.ProbeResult(
        container="", duration_s=row.get("source_duration_s"), bit_rate=None,
        has_video=row.get("has_video") is not False, video_codec=row.get("video_codec"),
        width=int(row["width"]), height=int(row["height"]), coded_width=None, coded_height=None,
        rotation=int(row.get("rotation") or 0), fps_avg=row.get("fps"), fps_nominal=row.get("fps_nominal"),
        vfr=bool(row.get("vfr")), n_frames=None, has_audio=bool(row.get("has_audio")),
        audio_codec=row.get("audio_codec"), audio_sample_rate=row.get("audio_sample_rate"), audio_channels=None,
    )


def track_points(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Track points with a face box, in time order; the clip's median box at its start when there are none."""
    points = sorted((p for p in row.get("face_track") or [] if p.get("box") is not None), key=lambda p: p["t"])
    if not points:
        points = [{"t": row["start_s"], "box": row["face_box"], "eyes_box": None, "mouth_box": None}]
    return points


def square_crop(track: list[dict[str, Any]], face_box: list[float] | None, width: int, height: int,
                 crop_scale: float) -> tuple[float, float, float]:
    """A square of ``crop_scale`` x the larger side of the median face box, centred on it, shrunk and shifted to
    lie inside the frame: one crop per clip, so frames and reference share it."""
    boxes = np.array([p["box"] for p in track], dtype=np.float64)
    x0, y0, x1, y1 = np.median(boxes, axis=0) if len(boxes) else np.asarray(face_box, dtype=np.float64)
    side = min(crop_scale * max(x1 - x0, y1 - y0, 1.0), width, height)
    left = float(np.clip((x0 + x1) / 2 - side / 2, 0, width - side))
    top = float(np.clip((y0 + y1) / 2 - side / 2, 0, height - side))
    return left, top, float(side)


def decode_crops(path: str, probe: media.ProbeResult, start_s: float, count: int, rate: float,
                  crop: tuple[float, ...], resolution: int) -> np.ndarray:
    """``count`` frames at ``rate`` from ``start_s``, each cropped (x0, y0, side or w, h in the video's display
    pixels) and resized to ``resolution``: (count, R, R, 3) uint8. Decodes at the smallest size at which the crop
    still has ``resolution`` pixels, so a 1080p source never crosses the pipe at full size for a 512 crop."""
    x0, y0, w, h = crop if len(crop) == 4 else (*crop, crop[2])
    long_side = max(probe.width, probe.height)
    max_side = min(long_side, math.ceil(long_side * resolution / max(min(w, h), 1.0)) + 2)
    out = np.empty((count, resolution, resolution, 3), dtype=np.uint8)
    got = 0
    for _, frame in media.iter_frames(path, probe, start_s=max(start_s, 0.0), duration_s=count / rate, fps=rate,
                                      max_side=max_side):
        if got == count:
            break
        out[got] = cut(frame, (x0, y0, w, h), resolution, frame.shape[1] / probe.width,
                       frame.shape[0] / probe.height)
        got += 1
    if got < count:
        raise DecodeError(f"{got} of {count} frames decoded from {start_s:.3f} s", path=str(path))
    return out


@dataclass(frozen=True)
class CropSpan:
    """One ``decode_crops`` request: ``count`` frames at ``rate`` from ``start_s`` of ``path``, each cut to
    ``crop``."""

    path: str
    probe: media.ProbeResult
    start_s: float
    count: int
    rate: float
    crop: tuple[float, ...]


def decode_crop_spans(spans: list[CropSpan] | tuple[CropSpan, ...], resolution: int, *,
                      audio: media.AudioSpan | None = None,
                      merge_gap_s: float | None = None,
                      decoder: str = "ffmpeg") -> tuple[list[np.ndarray], np.ndarray | None]:
    """What ``decode_crops`` returns for each span (bit-identical), and the ``audio`` window as
    ``media.decode_audio`` returns it, from ONE ffmpeg process (``media.decode_spans``): a training sample's
    segment, reference frame, driving variant and audio cost one process start instead of four. Spans of one
    file less than ``merge_gap_s`` (default ``MERGE_GAP_S``) apart are one decode pass.

    ``decoder="pyav"``: the same frames decoded in this process (``curation.decode_av``: no process start, the
    containers kept open, non-reference pictures before the spans skipped); the same pixels, the audio within one
    16-bit step (``tests/training/test_loader_pyav.py``). Calls with a rotated video use the ffmpeg path."""
    if decoder not in ("ffmpeg", "pyav"):
        raise ValueError(f"decoder must be 'ffmpeg' or 'pyav', got {decoder!r}")
    merge_gap_s = MERGE_GAP_S if merge_gap_s is None else merge_gap_s
    order = sorted(range(len(spans)), key=lambda k: (str(spans[k].path), spans[k].start_s))
    groups: list[list[int]] = []
    for k in order:
        span, last = spans[k], groups[-1][-1] if groups else None
        if last is not None and str(spans[last].path) == str(span.path) and \
                span.start_s - (spans[last].start_s + spans[last].count / spans[last].rate) < merge_gap_s:
            groups[-1].append(k)
        else:
            groups.append([k])
    inputs = [media.SpanInput(str(spans[g[0]].path), spans[g[0]].probe,
                              tuple(media.FrameSpan(max(spans[k].start_s, 0.0), spans[k].count, spans[k].rate,
                                                    _decode_side(spans[k].probe, spans[k].crop, resolution))
                                    for k in g))
              for g in groups]
    if decoder == "pyav" and decode_av.available() and all(decode_av.supports(item.probe) for item in inputs):
        decoded = [decode_av.decode_spans(item.path, item.probe, item.spans) for item in inputs]
        samples = None if audio is None else decode_av.decode_audio(
            audio.path, start_s=audio.start_s, duration_s=audio.duration_s, sample_rate=audio.sample_rate)
    else:
        decoded, samples = media.decode_spans(inputs, audio)
    out: list[np.ndarray] = [np.empty(0)] * len(spans)
    for group, frames_per_span in zip(groups, decoded, strict=True):
        for k, frames in zip(group, frames_per_span, strict=True):
            span = spans[k]
            if len(frames) < span.count:
                raise DecodeError(f"{len(frames)} of {span.count} frames decoded from {span.start_s:.3f} s",
                                  path=str(span.path))
            crop = span.crop if len(span.crop) == 4 else (*span.crop, span.crop[2])
            fx, fy = frames.shape[2] / span.probe.width, frames.shape[1] / span.probe.height
            cuts = np.empty((span.count, resolution, resolution, 3), dtype=np.uint8)
            for n in range(span.count):
                cuts[n] = cut(frames[n], crop, resolution, fx, fy)
            out[k] = cuts
    return out, samples


def _decode_side(probe: media.ProbeResult, crop: tuple[float, ...], resolution: int) -> int:
    """The smallest long side at which ``crop`` still has ``resolution`` pixels (``decode_crops``' rule)."""
    w, h = (crop[2], crop[3]) if len(crop) == 4 else (crop[2], crop[2])
    long_side = max(probe.width, probe.height)
    return min(long_side, math.ceil(long_side * resolution / max(min(w, h), 1.0)) + 2)


def cut(frame: np.ndarray, crop: tuple[float, ...], resolution: int, fx: float = 1.0, fy: float = 1.0) -> np.ndarray:
    """The crop (x0, y0, side or w, h in display pixels) of one frame decoded at (fx, fy) x the display size,
    resized to ``resolution`` x ``resolution`` (area filter when shrinking); a still image is a frame too."""
    x0, y0, w, h = crop if len(crop) == 4 else (*crop, crop[2])
    left, top = int(round(x0 * fx)), int(round(y0 * fy))
    right = min(frame.shape[1], max(left + 1, int(round((x0 + w) * fx))))
    bottom = min(frame.shape[0], max(top + 1, int(round((y0 + h) * fy))))
    patch = frame[top:bottom, left:right]
    shrink = patch.shape[0] > resolution
    return cv2.resize(patch, (resolution, resolution), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def interpolate_boxes(track: list[dict[str, Any]], key: str, times: np.ndarray) -> np.ndarray:
    """(len(times), 4) boxes linearly interpolated over the track points that have ``key`` (held at the ends);
    eyes/mouth boxes fall back to fixed bands of the face box when the track has none."""
    points = [p for p in track if p.get(key) is not None]
    if points:
        t = np.array([p["t"] for p in points])
        boxes = np.array([p[key] for p in points], dtype=np.float64)
        return np.stack([np.interp(times, t, boxes[:, c]) for c in range(4)], axis=1)
    face = interpolate_boxes(track, "box", times)
    top, bottom = FALLBACK_ROWS[key]
    heights = face[:, 3] - face[:, 1]
    return np.stack([face[:, 0], face[:, 1] + top * heights, face[:, 2], face[:, 1] + bottom * heights], axis=1)


def box_masks(track: list[dict[str, Any]], key: str, times: np.ndarray, crop: tuple[float, float, float],
               resolution: int, dilation: float, dtype: Any = np.float32) -> np.ndarray:
    """(F, R, R) 0/1 rectangles of the ``key`` boxes at ``times``, grown by ``dilation`` of their size on each
    side and mapped through the crop; float32, or ``dtype`` (the training loader's uint8)."""
    left, top, side = crop
    scale = resolution / side
    masks = np.zeros((len(times), resolution, resolution), dtype=dtype)
    x0, y0, x1, y1 = interpolate_boxes(track, key, times).T  # the bounds of all frames at once, same float64 ops
    dx, dy = dilation * (x1 - x0), dilation * (y1 - y0)
    bounds = np.clip(np.stack([np.floor((y0 - dy - top) * scale), np.ceil((y1 + dy - top) * scale),
                               np.floor((x0 - dx - left) * scale), np.ceil((x1 + dx - left) * scale)], axis=1),
                     0, resolution)
    if np.isnan(bounds).any():  # as int() of a NaN bound did, one frame at a time
        raise ValueError("cannot convert float NaN to integer")
    for mask, (r0, r1, c0, c1) in zip(masks, bounds.astype(np.int64).tolist(), strict=True):
        mask[r0:r1, c0:c1] = 1
    return masks
