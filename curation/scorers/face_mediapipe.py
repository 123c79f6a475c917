"""Face and head pose on the CPU ("lite") backend: MediaPipe Face Landmarker.

Frames are sampled at ``face.sample_fps`` and scaled to ``face.max_side`` for the model; landmarks are
normalised, so boxes come back in source (display) pixels whatever the decode scale.

Effective face resolution (``face_res_px``): per frame, ``min(width, height)`` of the tight box around the face
landmarks of the largest face, in source pixels: the side of the largest square that fits inside the detected
face. The paper's rule "face greater than 600 x 600" is ``face_res_px >= 600``. Per clip: the median over the
sampled frames where a face was found (``face_res_p10_px``: the 10th percentile).

Head pose: yaw/pitch/roll in degrees from the rotation part of MediaPipe's facial transformation matrix
(canonical face -> camera), decomposed as R = Rz(roll) Ry(yaw) Rx(pitch). 0/0/0 is a frontal face."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from curation import media, weights
from curation.scorers.base import ClipSpan, Scorer

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


def _indices(connections) -> np.ndarray:
    return np.array(sorted({c.start for c in connections} | {c.end for c in connections}))


def euler_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from a 3x3 rotation (columns normalised first: the matrix may scale)."""
    r = rotation / np.linalg.norm(rotation, axis=0, keepdims=True)
    yaw = np.degrees(np.arctan2(-r[2, 0], np.hypot(r[2, 1], r[2, 2])))
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return float(yaw), float(pitch), float(roll)


def _box(points: np.ndarray, width: int, height: int) -> list[float]:
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return [float(np.clip(x0, 0, width)), float(np.clip(y0, 0, height)),
            float(np.clip(x1, 0, width)), float(np.clip(y1, 0, height))]


class MediaPipeFaceScorer(Scorer):
    name = "face_mediapipe"
    version = "1.0"
    version_column = "face_version"
    requires = {"mediapipe": "curation"}
    fields = (
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

    def setup(self) -> None:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self._image, self._srgb = mp.Image, mp.ImageFormat.SRGB

        self._model_path = weights.resolve("face_landmarker")
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self._model_path)),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=self.config.num_faces,
            min_face_detection_confidence=self.config.min_detection_confidence,
            output_facial_transformation_matrixes=True,
        )
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        connections = vision.FaceLandmarksConnections
        self._eyes = np.concatenate([_indices(c) for c in (
            connections.FACE_LANDMARKS_LEFT_EYE, connections.FACE_LANDMARKS_RIGHT_EYE,
            connections.FACE_LANDMARKS_LEFT_EYEBROW, connections.FACE_LANDMARKS_RIGHT_EYEBROW)])
        self._mouth = _indices(connections.FACE_LANDMARKS_LIPS)

    def close(self) -> None:
        if getattr(self, "_landmarker", None) is not None:
            self._landmarker.close()
            self._landmarker = None
            self._ready = False

    def models(self) -> dict[str, str]:
        return {"face_landmarker": weights.get_spec("face_landmarker").sha256}

    def _frame(self, t: float, rgb: np.ndarray, width: int, height: int) -> dict[str, Any]:
        result = self._landmarker.detect(self._image(image_format=self._srgb, data=rgb))
        faces = result.face_landmarks
        point = {"t": t, "n_faces": len(faces), "box": None, "eyes_box": None, "mouth_box": None,
                 "yaw": None, "pitch": None, "roll": None}
        if not faces:
            return point
        all_points = [np.array([(p.x * width, p.y * height) for p in face]) for face in faces]
        boxes = [_box(points, width, height) for points in all_points]
        largest = int(np.argmax([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]))
        points = all_points[largest]
        yaw, pitch, roll = euler_from_rotation(np.asarray(result.facial_transformation_matrixes[largest])[:3, :3])
        point.update(box=boxes[largest], eyes_box=_box(points[self._eyes], width, height),
                     mouth_box=_box(points[self._mouth], width, height), yaw=yaw, pitch=pitch, roll=roll)
        return point

    def score(self, clip: ClipSpan, upstream: Mapping[str, Any]) -> dict[str, Any]:
        width, height = clip.probe.width, clip.probe.height
        track = []
        for t, rgb in media.iter_frames(clip.path, clip.probe, start_s=clip.start_s, duration_s=clip.duration_s,
                                        fps=self.config.sample_fps, max_side=self.config.max_side):
            self.counters["frames_decoded"] += 1
            track.append(self._frame(t, rgb, width, height))
        return summarise_track(track)


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
    yaw = np.array([p["yaw"] for p in found])
    row.update(
        face_res_px=float(np.median(sides)),
        face_res_p10_px=float(np.percentile(sides, 10)),
        face_box=[float(v) for v in np.median(boxes, axis=0)],
        yaw_abs_mean_deg=float(np.mean(np.abs(yaw))),
        pose_yaw_mean_deg=float(np.mean(yaw)),
        pose_yaw_abs_p90_deg=float(np.percentile(np.abs(yaw), 90)),
        pose_pitch_mean_deg=float(np.mean([p["pitch"] for p in found])),
        pose_roll_mean_deg=float(np.mean([p["roll"] for p in found])),
    )
    return row
