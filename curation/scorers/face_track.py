"""What every face backend writes: the per-frame face track point, the manifest columns, and the per-clip
statistics computed from the track, so the lite (MediaPipe) and paper (DWPose) backends fill the same columns
with the same definitions.

``face_res_px``: per frame, ``min(width, height)`` of the tight landmark box of the largest face in source
pixels; per clip, the median over the frames with a face (``face_res_p10_px``: the 10th percentile). The pose
columns average the frames where a pose was found."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

TRACK_POINT = pa.struct(
    [
        ("t", pa.float64()),
        ("n_faces", pa.int8()),
        ("box", pa.list_(pa.float32(), 4)),  # x0, y0, x1, y1 of the largest face, source pixels
        ("eyes_box", pa.list_(pa.float32(), 4)),  # both eyes and brows
        ("mouth_box", pa.list_(pa.float32(), 4)),
        ("yaw", pa.float32()),
        ("pitch", pa.float32()),
        ("roll", pa.float32()),
    ]
)

FACE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("face_frames_sampled", pa.int32()),
    pa.field("face_present_frac", pa.float32()),
    pa.field("face_count_max", pa.int16()),
    pa.field("multi_face_frac", pa.float32()),
    pa.field("face_res_px", pa.float32()),
    pa.field("face_res_p10_px", pa.float32()),
    pa.field("face_box", pa.list_(pa.float32(), 4)),
    pa.field("face_track", pa.list_(TRACK_POINT)),
    pa.field("yaw_abs_mean_deg", pa.float32()),
    pa.field("pose_yaw_mean_deg", pa.float32()),
    pa.field("pose_yaw_abs_p90_deg", pa.float32()),
    pa.field("pose_pitch_mean_deg", pa.float32()),
    pa.field("pose_roll_mean_deg", pa.float32()),
)


def empty_point(t: float, n_faces: int = 0) -> dict[str, Any]:
    return {"t": t, "n_faces": n_faces, "box": None, "eyes_box": None, "mouth_box": None,
            "yaw": None, "pitch": None, "roll": None}


def tight_box(points: np.ndarray, width: int, height: int) -> list[float]:
    """x0, y0, x1, y1 around (N, 2) points, clipped to the frame."""
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return [float(np.clip(x0, 0, width)), float(np.clip(y0, 0, height)),
            float(np.clip(x1, 0, width)), float(np.clip(y1, 0, height))]


def summarise_track(track: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-clip statistics of a face track (frames without a face count against presence only)."""
    found = [p for p in track if p["n_faces"] > 0]
    row: dict[str, Any] = {
        "face_frames_sampled": len(track),
        "face_present_frac": len(found) / len(track) if track else None,
        "face_count_max": max((p["n_faces"] for p in track), default=None),
        "multi_face_frac": sum(p["n_faces"] > 1 for p in track) / len(track) if track else None,
        "face_track": track,
    }
    if not found:
        return row
    boxes = np.array([p["box"] for p in found])
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    row.update(
        face_res_px=float(np.median(sides)),
        face_res_p10_px=float(np.percentile(sides, 10)),
        face_box=[float(v) for v in np.median(boxes, axis=0)],
    )
    posed = [p for p in found if p["yaw"] is not None]  # a landmark backend may miss the pose on a frame
    if not posed:
        return row
    yaw = np.array([p["yaw"] for p in posed])
    row.update(
        yaw_abs_mean_deg=float(np.mean(np.abs(yaw))),
        pose_yaw_mean_deg=float(np.mean(yaw)),
        pose_yaw_abs_p90_deg=float(np.percentile(np.abs(yaw), 90)),
        pose_pitch_mean_deg=float(np.mean([p["pitch"] for p in posed])),
        pose_roll_mean_deg=float(np.mean([p["roll"] for p in posed])),
    )
    return row
