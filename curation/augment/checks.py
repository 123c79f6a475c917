"""The checks every variant gets, stored as columns; thresholds (``CheckConfig``) decide its status.

None of the public pipelines checks that a swap worked. Ours, on frames sampled at ``checks.sample_fps``:

- **Identity** (face swap): ArcFace cosine of the swapped face to the source identity and to the original face of
  the same frame (the same aligned crop, before and after). A swap that kept the original face is rejected
  (``identity_not_transferred``: median cosine to the source under ``same_person_min``, 0.4 as InsightFace's
  "same person"; ``original_identity_kept``: more than ``closer_to_original_frac_max`` of the frames nearer the
  original than the source).
- **Motion** (both kinds): mouth and eye opening of the variant against the original, from the face backend's own
  landmarks (MediaPipe's 478-point mesh in the lite profile, DWPose's 68 face points in the paper profile): the
  swap contract is known for stiff mouths and blinks, stylization can close them. Opening = lid or inner-lip gap
  over the eye's or mouth's width, so it does not depend on the face's size.
- **Flicker** (stylization): ``metrics.temporal``'s flicker ratio inside the stylized crop.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from curation import devices, weights
from curation.augment.config import CheckConfig
from curation.component import Component
from curation.config import DWPoseConfig
from curation.dwpose import FACE_SLICE

# MediaPipe face mesh indices: inner lips (upper, lower, corners); each eye (upper lid, lower lid, corners)
MEDIAPIPE_MOUTH = (13, 14, 78, 308)
MEDIAPIPE_EYES = ((159, 145, 33, 133), (386, 374, 362, 263))
# iBUG 68-point indices (DWPose's face points): inner lips; eyes as pairs of lid points
IBUG_MOUTH = (62, 66, 60, 64)
IBUG_EYES = (((37, 38), (41, 40), 36, 39), ((43, 44), (47, 46), 42, 45))
MAX_SIDE = 640  # sampled frames are measured at most this large


def _gap(points: np.ndarray, upper, lower, left: int, right: int) -> float:
    top = points[list(upper)].mean(axis=0) if isinstance(upper, tuple) else points[upper]
    bottom = points[list(lower)].mean(axis=0) if isinstance(lower, tuple) else points[lower]
    width = np.linalg.norm(points[left] - points[right])
    return float(np.linalg.norm(top - bottom) / width) if width > 1e-6 else float("nan")


def openings(points: np.ndarray, layout: str) -> tuple[float, float]:
    """(mouth opening, mean eye opening) of one face's landmarks in ``layout`` "mediapipe" or "ibug68"."""
    mouth, eyes = (MEDIAPIPE_MOUTH, MEDIAPIPE_EYES) if layout == "mediapipe" else (IBUG_MOUTH, IBUG_EYES)
    return _gap(points, *mouth), float(np.mean([_gap(points, *eye) for eye in eyes]))


class OpeningMeter(Component):
    """Mouth and eye opening of the main face of RGB frames, with the curated run's face backend."""

    name = "openings"
    version = "1.0"
    num_cpus = 1.0

    def __init__(self, backend: str, *, device: str = "cpu", dwpose: DWPoseConfig | None = None):
        super().__init__(backend, device=device)
        self.backend = backend  # "mediapipe" | "dwpose"
        self.dwpose_config = dwpose or DWPoseConfig()

    def weight_sources(self) -> dict[str, Any]:
        if self.backend == "mediapipe":
            return {"face_landmarker": None}
        return {"yolox_l": self.dwpose_config.detector_weights, "dw-ll_ucoco_384": self.dwpose_config.pose_weights}

    def setup(self) -> None:
        if self.backend == "mediapipe":
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision

            self._image, self._srgb = mp.Image, mp.ImageFormat.SRGB
            options = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(weights.resolve("face_landmarker"))),
                running_mode=vision.RunningMode.IMAGE, num_faces=1)
            self._model = vision.FaceLandmarker.create_from_options(options)
        else:
            from curation.dwpose import DWPose

            detector, pose = (weights.resolve_or_local(n, p) for n, p in self.weight_sources().items())
            self._model = DWPose.from_config(detector, pose, devices.onnx_providers(self.device), self.dwpose_config)

    def close(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None and self.backend == "mediapipe":
            try:
                model.close()
            except RuntimeError:  # at interpreter exit MediaPipe's executor is already gone: nothing to release
                pass
        self._model = None
        self._ready = False

    def measure(self, frames: list[np.ndarray]) -> list[tuple[float, float] | None]:
        """Per RGB frame, (mouth opening, eye opening) of its main face, or None where no face was found."""
        self.ensure_setup()
        frames = [shrink(frame) for frame in frames]
        if self.backend == "mediapipe":
            out = []
            for frame in frames:
                faces = self._model.detect(self._image(image_format=self._srgb, data=frame)).face_landmarks
                if not faces:
                    out.append(None)
                    continue
                points = np.array([(p.x * frame.shape[1], p.y * frame.shape[0]) for p in faces[0]])
                out.append(openings(points, "mediapipe"))
            return out
        out = []
        for persons in self._model(frames):
            faces = [p for p in persons if (p.scores[FACE_SLICE] >= self.dwpose_config.keypoint_score_min).sum()
                     >= self.dwpose_config.face_points_min]
            out.append(openings(faces[0].keypoints[FACE_SLICE], "ibug68") if faces else None)
        return out


def shrink(frame: np.ndarray) -> np.ndarray:
    """A frame at most MAX_SIDE large (what the landmark models measure)."""
    scale = MAX_SIDE / max(frame.shape[:2])
    if scale >= 1:
        return frame
    return cv2.resize(frame, (round(frame.shape[1] * scale), round(frame.shape[0] * scale)),
                      interpolation=cv2.INTER_AREA)


def motion_columns(original: list[tuple[float, float] | None],
                   variant: list[tuple[float, float] | None]) -> dict[str, Any]:
    """Mouth and eye opening errors over the sampled frames where both faces were measured."""
    pairs = [(o, v) for o, v in zip(original, variant, strict=True)
             if o is not None and v is not None and np.isfinite(o).all() and np.isfinite(v).all()]
    if not pairs:
        return {"motion_frames": 0, "mouth_open_error": None, "eye_open_error": None}
    o, v = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    return {"motion_frames": len(pairs), "mouth_open_error": float(np.mean(np.abs(v[:, 0] - o[:, 0]))),
            "eye_open_error": float(np.mean(np.abs(v[:, 1] - o[:, 1])))}


def motion_reasons(columns: dict[str, Any], originals_measured: int, config: CheckConfig) -> list[str]:
    """Why the variant's motion fails: landmarks missing on too many of the frames where the original has them
    (the variant's face is no longer a face to the backend), or mouth/eye opening off by more than allowed."""
    if originals_measured == 0:  # the backend cannot see the original face either: nothing to compare
        return []
    reasons = []
    if columns["motion_frames"] < config.min_motion_frames_frac * originals_measured:
        reasons.append("motion_unmeasured")
    if columns["mouth_open_error"] is not None and columns["mouth_open_error"] > config.mouth_open_error_max:
        reasons.append("mouth_motion_lost")
    if columns["eye_open_error"] is not None and columns["eye_open_error"] > config.eye_open_error_max:
        reasons.append("eye_motion_lost")
    return reasons


def identity_columns(swapped: np.ndarray, original: np.ndarray, source: np.ndarray) -> dict[str, Any]:
    """ArcFace comparisons of the swapped faces (K, D) with the same frames' original faces (K, D) and the source
    identity (D,), all L2-normalised."""
    if len(swapped) == 0:
        return {"id_frames_checked": 0, "id_sim_source": None, "id_sim_original": None,
                "id_closer_to_original_frac": None}
    to_source = swapped @ source
    to_original = np.sum(swapped * original, axis=1)
    return {"id_frames_checked": len(swapped), "id_sim_source": float(np.median(to_source)),
            "id_sim_original": float(np.median(to_original)),
            "id_closer_to_original_frac": float(np.mean(to_original > to_source))}


def identity_reasons(columns: dict[str, Any], config: CheckConfig) -> list[str]:
    if not columns["id_frames_checked"]:
        return ["identity_unchecked"]
    reasons = []
    if columns["id_sim_source"] < config.same_person_min:
        reasons.append("identity_not_transferred")
    if columns["id_closer_to_original_frac"] > config.closer_to_original_frac_max:
        reasons.append("original_identity_kept")
    return reasons
