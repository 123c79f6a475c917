"""Face and head pose on the CPU ("lite") backend: MediaPipe Face Landmarker.

Frames are sampled at ``face.sample_fps`` and scaled to ``face.max_side`` for the model; landmarks are
normalised, so boxes come back in source (display) pixels whatever the decode scale.

Effective face resolution (``face_res_px``): per frame, ``min(width, height)`` of the tight box around the face
landmarks of the largest face, in source pixels: the side of the largest square that fits inside the detected
face. The paper's rule "face greater than 600 x 600" is ``face_res_px >= 600``. Per clip: the median over the
sampled frames where a face was found (``face_res_p10_px``: the 10th percentile).

Head pose: yaw/pitch/roll in degrees from the rotation part of MediaPipe's facial transformation matrix
(canonical face -> camera), decomposed as R = Rz(roll) Ry(yaw) Rx(pitch) (``curation.headpose``). 0/0/0 is a
frontal face. The columns and the per-clip statistics are shared with the DWPose backend (``face_track``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from curation import media, weights
from curation.headpose import euler_from_rotation
from curation.scorers.base import ClipSpan, Scorer
from curation.scorers.face_track import FACE_FIELDS, empty_point, summarise_track, tight_box

__all__ = ["MediaPipeFaceScorer", "euler_from_rotation"]


def _indices(connections) -> np.ndarray:
    return np.array(sorted({c.start for c in connections} | {c.end for c in connections}))


class MediaPipeFaceScorer(Scorer):
    name = "face_mediapipe"
    version = "1.0"
    version_column = "face_version"
    requires = {"mediapipe": "curation"}
    fields = FACE_FIELDS

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

    def weight_sources(self) -> dict[str, Any]:
        return {"face_landmarker": None}

    def analyse(self, t: float, rgb: np.ndarray, width: int, height: int) -> tuple[dict[str, Any], np.ndarray | None]:
        """One frame's track point and the largest face's 478 landmarks (x, y in a ``width`` x ``height`` frame;
        None without a face): inference reads the landmarks for alignment and motion amplitude."""
        result = self._landmarker.detect(self._image(image_format=self._srgb, data=np.ascontiguousarray(rgb)))
        faces = result.face_landmarks
        point = empty_point(t, len(faces))
        if not faces:
            return point, None
        all_points = [np.array([(p.x * width, p.y * height) for p in face]) for face in faces]
        boxes = [tight_box(points, width, height) for points in all_points]
        largest = int(np.argmax([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]))
        points = all_points[largest]
        yaw, pitch, roll = euler_from_rotation(np.asarray(result.facial_transformation_matrixes[largest])[:3, :3])
        point.update(box=boxes[largest], eyes_box=tight_box(points[self._eyes], width, height),
                     mouth_box=tight_box(points[self._mouth], width, height), yaw=yaw, pitch=pitch, roll=roll)
        return point, points

    def score(self, clip: ClipSpan, upstream: Mapping[str, Any]) -> dict[str, Any]:
        width, height = clip.probe.width, clip.probe.height
        track = []
        for t, rgb in media.iter_frames(clip.path, clip.probe, start_s=clip.start_s, duration_s=clip.duration_s,
                                        fps=self.config.sample_fps, max_side=self.config.max_side):
            self.counters["frames_decoded"] += 1
            track.append(self.analyse(t, rgb, width, height)[0])
        return summarise_track(track)

