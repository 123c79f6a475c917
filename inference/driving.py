"""Preparing inference's inputs the way training prepared its samples: faces found by the project's face backend,
the square crop, eye and mouth regions from ``curation.crops`` (the one implementation training and augmentation
use), and the geometry that moves driving frames: alignment to the reference and motion amplitude
(``inference.amplitude``).

A driving video becomes a ``Driving``: its crops at the output frame rate, eye and mouth masks, and landmarks in
crop pixels. A reference image becomes a ``Reference``: its crop and landmarks. ``driving_inputs`` then applies,
per frame, one affine warp (align ∘ amplitude) to the crops and masks, and keeps the driven regions as training
did (``training.driving_aug.augment_driving`` with no augmentation draws): black elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from curation import media
from curation.config import FaceConfig
from curation.crops import box_masks, cut, decode_crops, square_crop
from curation.errors import DecodeError, NoFaceFoundError
from inference import amplitude

# MediaPipe Face Mesh points that move with the head but not with the mouth, jaw or eyelids: eye corners, nose
# bridge and tip, forehead, temples and cheekbones. Fitting the head's similarity transform on them keeps
# speech and blinks out of the head motion.
RIGID_LANDMARKS = (33, 133, 362, 263, 1, 4, 5, 6, 168, 197, 195, 10, 151, 9, 8, 234, 454, 127, 356, 93, 323)
ANALYSIS_SIDE = 640  # faces are found on frames at most this large (landmarks come back in display pixels)


class FaceAnalyzer:
    """The lite face backend (MediaPipe Face Landmarker), as curation runs it, on images and whole videos: the
    manifest's track points plus the landmarks. Heavy state is built on first use; ``close()`` releases it."""

    def __init__(self, config: FaceConfig | None = None):
        from curation.scorers.face_mediapipe import MediaPipeFaceScorer

        self.config = config or FaceConfig()
        self._scorer = MediaPipeFaceScorer(self.config)

    def image(self, rgb: np.ndarray) -> tuple[dict[str, Any], np.ndarray | None]:
        self._scorer.ensure_setup()
        height, width = rgb.shape[:2]
        small = _shrink(rgb, ANALYSIS_SIDE)
        return self._scorer.analyse(0.0, small, width, height)

    def video(self, path: str | Path, fps: float, max_frames: int | None = None) -> FaceVideo:
        """Every frame at ``fps`` (up to ``max_frames``): track points and landmarks (NaN without a face)."""
        self._scorer.ensure_setup()
        probe = media.probe(path)
        if not probe.has_video or not probe.width or not probe.height:
            raise DecodeError("no video stream", path=str(path))
        duration = None if max_frames is None else max_frames / fps
        track, marks = [], []
        for t, rgb in media.iter_frames(path, probe, fps=fps, duration_s=duration, max_side=ANALYSIS_SIDE):
            point, landmarks = self._scorer.analyse(t, rgb, probe.width, probe.height)
            track.append(point)
            marks.append(landmarks)
        if not track:
            raise DecodeError("no frame decoded", path=str(path))
        size = next((m.shape[0] for m in marks if m is not None), 478)
        landmarks = np.stack([m if m is not None else np.full((size, 2), np.nan) for m in marks])
        return FaceVideo(str(path), probe, fps, track, landmarks)

    def close(self) -> None:
        self._scorer.close()


@dataclass
class FaceVideo:
    path: str
    probe: media.ProbeResult
    fps: float
    track: list[dict[str, Any]]  # track points (curation.scorers.face_track.TRACK_POINT), t in seconds
    landmarks: np.ndarray  # (F, 478, 2) display pixels, NaN where no face was found


@dataclass
class Reference:
    image: np.ndarray  # (R, R, 3) uint8 RGB crop
    landmarks: np.ndarray | None  # (N, 2) crop pixels


@dataclass
class Driving:
    frames: np.ndarray  # (F, R, R, 3) uint8 RGB crops, unmasked
    eyes: np.ndarray  # (F, R, R) float32 0/1
    mouth: np.ndarray  # (F, R, R) float32 0/1
    landmarks: np.ndarray | None  # (F, N, 2) crop pixels, NaN rows without a face; None: not known

    def __len__(self) -> int:
        return len(self.frames)

    def extended(self, frames: int) -> Driving:
        """``frames`` long: cut, or played back and forth (ping-pong) when the audio outlasts the video."""
        if frames <= len(self):
            index = np.arange(frames)
        else:
            cycle = np.concatenate([np.arange(len(self)), np.arange(len(self) - 2, 0, -1)]) if len(self) > 1 \
                else np.zeros(1, dtype=np.int64)
            index = np.resize(cycle, frames)
        return Driving(self.frames[index], self.eyes[index], self.mouth[index],
                       None if self.landmarks is None else self.landmarks[index])


def to_crop(points: np.ndarray, crop: tuple[float, float, float], resolution: int) -> np.ndarray:
    left, top, side = crop
    return (points - np.array([left, top])) * (resolution / side)


def prepare_reference(rgb: np.ndarray, analyzer: FaceAnalyzer, *, resolution: int, crop_scale: float,
                      source: str = "reference image") -> Reference:
    """The reference's square crop around its face, as training crops a clip (``crop_scale`` x the face box)."""
    point, landmarks = analyzer.image(rgb)
    if point["box"] is None:
        raise NoFaceFoundError("no face found", path=source)
    height, width = rgb.shape[:2]
    crop = square_crop([point], point["box"], width, height, crop_scale)
    return Reference(cut(rgb, crop, resolution), to_crop(landmarks, crop, resolution))


def prepare_driving(video: FaceVideo, *, resolution: int, crop_scale: float, mask_dilation: float) -> Driving:
    """Crops, eye/mouth masks and landmarks of an analysed driving video, one crop for the whole video (the
    median face box, as training's ``square_crop``)."""
    found = [p for p in video.track if p["box"] is not None]
    if not found:
        raise NoFaceFoundError("no face found in any frame", path=video.path)
    crop = square_crop(found, None, video.probe.width, video.probe.height, crop_scale)
    times = np.array([p["t"] for p in video.track])
    frames = decode_crops(video.path, video.probe, 0.0, len(times), video.fps, crop, resolution)
    eyes = box_masks(found, "eyes_box", times, crop, resolution, mask_dilation)
    mouth = box_masks(found, "mouth_box", times, crop, resolution, mask_dilation)
    return Driving(frames, eyes, mouth, to_crop(video.landmarks, crop, resolution))


def driving_warps(driving: Driving, reference: Reference | None, alpha: float | np.ndarray,
                  align: bool) -> np.ndarray:
    """(F, 2, 3) warps: the motion amplitude (``alpha`` per frame) then, with ``align``, the similarity that
    takes the driving's first face onto the reference's face (so the driven regions sit where the reference's
    eyes and mouth are). Identity warps without landmarks when nothing asks for a change."""
    frames = len(driving)
    alphas = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (frames,))
    needs_motion = not np.allclose(alphas, 1.0)
    needs_align = align and reference is not None and reference.landmarks is not None
    if not (needs_motion or needs_align):
        return np.repeat(np.eye(3)[None, :2], frames, axis=0)
    if driving.landmarks is None:
        raise ValueError("motion amplitude and alignment need the driving frames' landmarks")
    rigid = driving.landmarks[:, list(RIGID_LANDMARKS)]
    valid = ~np.isnan(rigid).any(axis=(1, 2))
    if not valid.any():
        raise NoFaceFoundError("no landmarks in any driving frame")
    warps = amplitude.amplitude_warps(rigid, alphas, valid) if needs_motion \
        else np.repeat(np.eye(3)[None, :2], frames, axis=0)
    if needs_align:
        anchor = rigid[int(np.argmax(valid))]
        to_reference = amplitude.fit_similarity(anchor, reference.landmarks[list(RIGID_LANDMARKS)])
        warps = np.stack([amplitude.compose(to_reference, w) for w in warps])
    return warps


def driving_inputs(driving: Driving, warps: np.ndarray, *, drive_eyes: bool, drive_mouth: bool,
                   grayscale: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the model reads for these modalities: driving pixels (F, R, R, 3) uint8 with only the driven regions
    kept (black elsewhere), the driven region (F, R, R) and the mouth region (F, R, R), all warped alike."""
    from training.driving_aug import augment_driving

    frames = amplitude.warp_frames(driving.frames, warps)
    eyes = amplitude.warp_frames(driving.eyes, warps, interpolation=cv2.INTER_NEAREST)
    mouth = amplitude.warp_frames(driving.mouth, warps, interpolation=cv2.INTER_NEAREST)
    driven = np.zeros_like(eyes)
    if drive_eyes:
        driven = np.maximum(driven, eyes)
    if drive_mouth:
        driven = np.maximum(driven, mouth)
    plan = _NO_AUGMENTATION if not grayscale else replace(_NO_AUGMENTATION, grayscale=True)
    pixels, driven = augment_driving(frames, driven, plan)
    return pixels, driven, mouth


@dataclass(frozen=True)
class _Draws:  # the augmentation draws of training's sample plan, set to "none"
    scale: float = 1.0
    aspect: float = 1.0
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    grayscale: bool = False


_NO_AUGMENTATION = _Draws()


def frame_count(audio_s: float | None, driving_frames: int | None, fps: float) -> int:
    """Frames to generate: the audio's duration at ``fps`` (rounded up: the audio is never cut), else the driving
    video's length."""
    if audio_s is not None:
        return max(1, math.ceil(audio_s * fps - 1e-6))
    if driving_frames is None:
        raise ValueError("give an audio track or a driving video: the output's length comes from one of them")
    return driving_frames


def _shrink(rgb: np.ndarray, max_side: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
