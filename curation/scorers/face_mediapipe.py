"""Face and head pose on the CPU ("lite") backend: MediaPipe Face Landmarker.

Frames are sampled at ``face.sample_fps`` and scaled to ``face.max_side`` for the model; landmarks are
normalised, so boxes come back in source (display) pixels whatever the decode scale.

Effective face resolution (``face_res_px``): per frame, ``min(width, height)`` of the tight box around the face
landmarks of the largest face, in source pixels: the side of the largest square that fits inside the detected
face. The paper's rule "face greater than 600 x 600" is ``face_res_px >= 600``. Per clip: the median over the
sampled frames where a face was found (``face_res_p10_px``: the 10th percentile).

Head pose: yaw/pitch/roll in degrees from the rotation part of MediaPipe's facial transformation matrix
(canonical face -> camera), decomposed as R = Rz(roll) Ry(yaw) Rx(pitch) (``curation.headpose``). 0/0/0 is a
frontal face. The columns and the per-clip statistics are shared with the DWPose backend (``face_track``).

Speed (version 1.1, ``bench/face_stage_rtf.py``): the decoder runs in one thread without H.264/HEVC deblocking
(``DECODER_OPTIONS``: every frame is still decoded, so each sampled timestamp gets its own picture), and the
landmarks are read from MediaPipe's C result as one numpy array instead of 478 Python objects per face: 11-16 %
less CPU. The landmark model itself (~8 ms a frame, 40 ms per second of video at 5 fps) is the floor. Against
1.0 (threaded decoder with deblocking), on the shared 512 px clips: ``face_res_px`` within 0.45 px, mean |yaw|
within 0.04 deg, presence and multi-face fractions unchanged; the tolerance the tests hold it to is 1 % / 0.5 deg
/ 0.02 and the same filter decisions (``tests/curation/test_face_speed.py``). ``analyse`` (IMAGE mode, one
frame; inference's FaceAnalyzer) gives the same numbers as 1.0 on the same frame. Measured and not taken: VIDEO
running mode (with ``num_faces`` > 1 the detector still runs on every frame unless that many faces are tracked;
with 1 it cannot count faces, smooths landmarks over time and moved one clip's ``face_res_px`` by 33 px),
decoding smaller than ``face.max_side`` (the landmark model's cost is per face crop, not per image pixel), and
``-skip_frame noref`` (drops pictures, so a timestamp would get an earlier picture)."""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import Any

import numpy as np

from curation import media, weights
from curation.headpose import euler_from_rotation
from curation.scorers.base import ClipSpan, Scorer
from curation.scorers.face_track import FACE_FIELDS, empty_point, summarise_track, tight_box

__all__ = ["MediaPipeFaceScorer", "euler_from_rotation"]


# One decoder thread: at 5 sampled frames/s of small video, frame threads cost more CPU than they save. No loop
# filter: deblocking is ~20 % of H.264 decoding, and the landmarks move by a fraction of a pixel without it.
DECODER_OPTIONS = {"threads": 1, "skip_loop_filter": "all"}


def _indices(connections) -> np.ndarray:
    return np.array(sorted({c.start for c in connections} | {c.end for c in connections}))


class _CResults:
    """Reads MediaPipe's C result (mediapipe >= 0.10.30 C bindings) straight into numpy: ``detect()`` builds
    478 Python objects per face (~0.7 ms of a frame's ~9 ms). Same floats as ``detect()``; ``create`` returns
    None when this MediaPipe has another layout, and the scorer then uses ``detect()``."""

    def __init__(self, module: Any, landmarker: Any) -> None:
        self._result_type, self._lib, self._handle = module.MpFaceLandmarkerResultC, landmarker._lib, landmarker._handle
        self._stride = ctypes.sizeof(module.landmark_c_lib.MpNormalizedLandmarkC)

    @classmethod
    def create(cls, landmarker: Any) -> _CResults | None:
        from mediapipe.tasks.python.vision import face_landmarker as module

        point = getattr(getattr(module, "landmark_c_lib", None), "MpNormalizedLandmarkC", None)
        needed = (hasattr(module, "MpFaceLandmarkerResultC"), hasattr(landmarker, "_lib"), point is not None)
        if not all(needed) or (point.x.offset, point.y.offset, point.x.size) != (0, 4, 4):
            return None
        return cls(module, landmarker)

    def detect(self, image: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
        result = self._result_type()
        self._lib.MpFaceLandmarkerDetectImage(self._handle, image._image_ptr, None, ctypes.byref(result))
        try:
            faces = []
            for i in range(result.face_landmarks_count):
                face = result.face_landmarks[i]
                n = face.landmarks_count
                raw = (ctypes.c_uint8 * (n * self._stride)).from_address(ctypes.addressof(face.landmarks.contents))
                xy = np.ndarray((n, 2), np.float32, buffer=raw, strides=(self._stride, 4))
                faces.append(xy.astype(np.float64))  # copies out before the C result is freed
            matrices = [result.facial_transformation_matrixes[i].to_numpy()
                        for i in range(result.facial_transformation_matrixes_count)]
        finally:
            self._lib.MpFaceLandmarkerCloseResult(ctypes.byref(result))
        return faces, matrices


class MediaPipeFaceScorer(Scorer):
    name = "face_mediapipe"
    version = "1.1"
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
        self._c_results = _CResults.create(self._landmarker)
        connections = vision.FaceLandmarksConnections
        self._eyes = np.concatenate([_indices(c) for c in (
            connections.FACE_LANDMARKS_LEFT_EYE, connections.FACE_LANDMARKS_RIGHT_EYE,
            connections.FACE_LANDMARKS_LEFT_EYEBROW, connections.FACE_LANDMARKS_RIGHT_EYEBROW)])
        self._mouth = _indices(connections.FACE_LANDMARKS_LIPS)

    def close(self) -> None:
        if getattr(self, "_landmarker", None) is not None:
            self._landmarker.close()
            self._landmarker = self._c_results = None
            self._ready = False

    def weight_sources(self) -> dict[str, Any]:
        return {"face_landmarker": None}

    def analyse(self, t: float, rgb: np.ndarray, width: int, height: int) -> tuple[dict[str, Any], np.ndarray | None]:
        """One frame's track point and the largest face's 478 landmarks (x, y in a ``width`` x ``height`` frame;
        None without a face): inference reads the landmarks for alignment and motion amplitude."""
        image = self._image(image_format=self._srgb, data=np.ascontiguousarray(rgb))
        faces, matrices = self._detect(image)
        point = empty_point(t, len(faces))
        if not faces:
            return point, None
        all_points = [face * (width, height) for face in faces]
        boxes = [tight_box(points, width, height) for points in all_points]
        largest = int(np.argmax([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]))
        points = all_points[largest]
        yaw, pitch, roll = euler_from_rotation(np.asarray(matrices[largest])[:3, :3])
        point.update(box=boxes[largest], eyes_box=tight_box(points[self._eyes], width, height),
                     mouth_box=tight_box(points[self._mouth], width, height), yaw=yaw, pitch=pitch, roll=roll)
        return point, points

    def _detect(self, image: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Normalised (478, 2) x, y of every face, and their 4x4 facial transformation matrices."""
        if self._c_results is not None:
            return self._c_results.detect(image)
        result = self._landmarker.detect(image)
        faces = [np.array([(p.x, p.y) for p in face]) for face in result.face_landmarks]
        return faces, list(result.facial_transformation_matrixes)

    def score(self, clip: ClipSpan, upstream: Mapping[str, Any]) -> dict[str, Any]:
        width, height = clip.probe.width, clip.probe.height
        track = []
        for t, rgb in media.iter_frames(clip.path, clip.probe, start_s=clip.start_s, duration_s=clip.duration_s,
                                        fps=self.config.sample_fps, max_side=self.config.max_side,
                                        decoder_options=DECODER_OPTIONS):
            self.counters["frames_decoded"] += 1
            track.append(self.analyse(t, rgb, width, height)[0])
        return summarise_track(track)

