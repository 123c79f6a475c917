"""Face swap with InsightFace's published contract, in-process through ONNX Runtime (CPU or CUDA).

The contract (insightface 2.1: ``model_zoo/scrfd.py``, ``arcface_onnx.py``, ``inswapper.py``, ``utils/face_align.py``;
see also ``../shared/PAPER_NOTES.md``):

- **Detection**: SCRFD (``det_10g``, or ``scrfd_500m``: same outputs at lower cost), BGR input normalised as
  (x - 127.5) / 128 on a 640x640 letterbox, score 0.5, NMS 0.4, strides 8/16/32 with 5 keypoints per face
  (eyes, nose, mouth corners). InsightFace's ``SCRFD`` class does all of it.
- **Identity**: ArcFace ``w600k_r50`` on the face aligned by a 5-point similarity transform to ArcFace's template
  at 112 px (``face_align.norm_crop``), (x - 127.5) / 127.5, RGB; identity = output / ||output||.
- **Swap**: ``inswapper_128`` takes the target face aligned to the same template at 128 px (scaled 128/128 and
  shifted +8 px in x: ``estimate_norm``'s rule for sizes that are multiples of 128, not 112), RGB / 255, and the
  source latent = normalise(identity @ emap), where ``emap`` (512x512) is the swapper graph's last initializer;
  its 128 px output is pasted back through the inverse affine with a white mask eroded (kernel ~ mask size / 10)
  and blurred (~ mask size / 20) as the alpha. InsightFace's ``INSwapper.get`` is that paste-back; we call it on a
  region of the frame around the face rather than the whole frame (identical pixels: the region holds the whole
  warped mask plus a margin wider than the erosion and blur, and its offset is whole pixels), which saves the
  full-frame warps on 1080p sources.

What we add around the per-frame contract, for video (the failure modes swap tools are known for: identity flicker
from frames left unswapped, jitter from per-frame detection): one face is followed through the clip (the detection
nearest the previous one), its keypoints are linearly interpolated over detection gaps up to ``max_gap_s`` and
smoothed by a centred moving average over ``smooth_window_s``; frames in longer gaps are counted as unswapped, and
the variant is rejected when they exceed ``max_unswapped_frac`` (never silently left with the original face).
ArcFace runs batched (its batch axis is dynamic); SCRFD and the swapper have a fixed batch of 1 and run per frame.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from curation import devices, weights
from curation.augment.config import FaceSwapConfig
from curation.component import Component

log = logging.getLogger(__name__)

ARCFACE_SIZE = 112
SWAP_SIZE = 128


class NoFaceError(ValueError):
    """An image (an identity candidate) holds no detectable face."""


@dataclass
class FaceTrack:
    """One face followed through a clip, per frame: keypoints (5, 2) in frame pixels after interpolation and
    smoothing (NaN where the frame cannot be swapped), and what the detector did."""

    kps: np.ndarray  # (N, 5, 2) float64
    detected: np.ndarray  # (N,) bool: the detector found the face on this frame
    interpolated: np.ndarray  # (N,) bool: keypoints filled over a detection gap

    @property
    def swappable(self) -> np.ndarray:
        return ~np.isnan(self.kps[:, 0, 0])

    @property
    def detected_frac(self) -> float:
        return float(self.detected.mean()) if len(self.detected) else 0.0


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box ``a`` (4,) with boxes ``b`` (K, 4)."""
    x0, y0 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x1, y1 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / np.maximum(_area(a) + _area(b) - inter, 1e-9)


def _area(box: np.ndarray) -> np.ndarray:
    return (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])


def follow_face(detections: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per frame, the detection of the face being followed: keypoints (N, 5, 2), NaN where none.
    The first face is the one SCRFD ranks first for a single subject (largest, nearest the centre); afterwards the
    detection overlapping the last kept box most (a clip of the curated manifest holds one speaker)."""
    count = len(detections)
    kps = np.full((count, 5, 2), np.nan)
    last: np.ndarray | None = None
    for i, (boxes, points) in enumerate(detections):
        if len(boxes) == 0:
            continue
        if last is None:
            pick = int(np.argmax(_area(boxes[:, :4])))
        else:
            overlap = _iou(last, boxes[:, :4])
            pick = int(np.argmax(overlap))
            if overlap[pick] <= 0.0:  # a different face (or a cut): treat as a miss
                continue
        last = boxes[pick, :4]
        kps[i] = points[pick]
    return kps


def fill_and_smooth(kps: np.ndarray, *, max_gap: int, window: int) -> FaceTrack:
    """Interpolate keypoints linearly over gaps of at most ``max_gap`` frames (held over such gaps at the clip's
    ends), then average them over a centred window of ``window`` frames within each run of swappable frames."""
    detected = ~np.isnan(kps[:, 0, 0])
    out = kps.copy()
    interpolated = np.zeros(len(kps), dtype=bool)
    found = np.flatnonzero(detected)
    if len(found):
        gaps = [(a, b) for a, b in zip(found[:-1], found[1:], strict=True) if 1 < b - a <= max_gap + 1]
        for a, b in gaps:  # inner gaps: linear between the detections on either side
            weights_ = (np.arange(a + 1, b) - a) / (b - a)
            out[a + 1:b] = kps[a] + weights_[:, None, None] * (kps[b] - kps[a])
            interpolated[a + 1:b] = True
        head, tail = found[0], len(kps) - 1 - found[-1]
        if 0 < head <= max_gap:
            out[:head], interpolated[:head] = kps[found[0]], True
        if 0 < tail <= max_gap:
            out[found[-1] + 1:], interpolated[found[-1] + 1:] = kps[found[-1]], True
    if window > 1:
        valid = ~np.isnan(out[:, 0, 0])
        smoothed = out.copy()
        half = window // 2
        for i in np.flatnonzero(valid):
            lo, hi = i, i
            while lo > max(0, i - half) and valid[lo - 1]:
                lo -= 1
            while hi < min(len(out) - 1, i + half) and valid[hi + 1]:
                hi += 1
            reach = min(i - lo, hi - i)  # symmetric, so a smoothed track is not pulled ahead or behind
            smoothed[i] = out[i - reach:i + reach + 1].mean(axis=0)
        out = smoothed
    return FaceTrack(kps=out, detected=detected, interpolated=interpolated)


def swap_region(kps: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The whole-pixel region (x0, y0, x1, y1) of a frame that the swapper's paste-back can touch for a face with
    these keypoints: the 128 px aligned square mapped back into the frame, plus half its size of margin (wider
    than the erosion and blur of the mask), clipped to the frame."""
    from insightface.utils import face_align

    matrix = face_align.estimate_norm(np.asarray(kps, dtype=np.float32), SWAP_SIZE)
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [SWAP_SIZE, 0, 1], [0, SWAP_SIZE, 1], [SWAP_SIZE, SWAP_SIZE, 1]], np.float64)
    mapped = corners @ inverse.T
    (x0, y0), (x1, y1) = mapped.min(axis=0), mapped.max(axis=0)
    margin = 0.5 * max(x1 - x0, y1 - y0)
    return (int(max(0, np.floor(x0 - margin))), int(max(0, np.floor(y0 - margin))),
            int(min(width, np.ceil(x1 + margin))), int(min(height, np.ceil(y1 + margin))))


class FaceSwapper(Component):
    """SCRFD + ArcFace + inswapper_128 for one worker process. Frames are RGB uint8 (as ``curation.media``
    decodes them); InsightFace's BGR convention stays inside this class."""

    name = "faceswap"
    version = "1.0"
    requires = {"insightface": "augment", "onnx": "augment", "onnxruntime": "paper"}
    num_cpus = 1.0
    num_gpus = 0.5  # on a GPU: two workers share one (the models are small; decoding and paste-back are CPU)
    config: FaceSwapConfig

    def weight_sources(self) -> dict[str, Any]:
        cfg = self.config
        return {cfg.detector: cfg.detector_weights, "w600k_r50": cfg.embedder_weights,
                "inswapper_128": cfg.swapper_weights}

    def setup(self) -> None:
        import onnxruntime
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX
        from insightface.model_zoo.inswapper import INSwapper
        from insightface.model_zoo.scrfd import SCRFD

        # scikit-image 0.26 deprecates the SimilarityTransform.estimate that face_align (the contract) calls
        warnings.filterwarnings("ignore", message="`estimate` is deprecated", category=FutureWarning)
        paths = {name: weights.resolve_or_local(name, local) for name, local in self.weight_sources().items()}
        providers = devices.onnx_providers(self.device)

        def session(path):
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)

        cfg = self.config
        detector_path = paths[cfg.detector]
        self.detector = SCRFD(str(detector_path), session=session(detector_path))
        self.detector.prepare(0 if self.device == "cuda" else -1, input_size=(cfg.det_size, cfg.det_size),
                              det_thresh=cfg.det_score_min, nms_thresh=cfg.nms_iou)
        self.embedder = ArcFaceONNX(str(paths["w600k_r50"]), session=session(paths["w600k_r50"]))
        if "inswapper_128" not in paths:  # FaceIdentity: detection and identity only
            return
        with contextlib.redirect_stdout(io.StringIO()):  # INSwapper prints its input shape
            self.swapper = INSwapper(str(paths["inswapper_128"]), session=session(paths["inswapper_128"]))
        if self.swapper.input_size != (SWAP_SIZE, SWAP_SIZE):
            raise ValueError(f"{paths['inswapper_128']}: expected a {SWAP_SIZE}px swapper, got {self.swapper.input_size}")

    def close(self) -> None:
        self.detector = self.embedder = self.swapper = None
        self._ready = False

    # -- the pieces ------------------------------------------------------------------------------------------
    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Faces on one RGB frame: boxes with scores (K, 5) and keypoints (K, 5, 2), in its pixels."""
        self.ensure_setup()
        boxes, kps = self.detector.detect(np.ascontiguousarray(rgb[..., ::-1]))
        self.counters["frames_detected"] += 1
        return boxes, (kps if kps is not None else np.zeros((len(boxes), 5, 2), np.float32))

    def aligned(self, rgb: np.ndarray, kps: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
        """The face aligned to ArcFace's 5-point template at ``size`` px (BGR, as InsightFace's models take it)."""
        from insightface.utils import face_align

        return face_align.norm_crop(np.ascontiguousarray(rgb[..., ::-1]), np.asarray(kps, np.float32), size)

    def embed(self, faces_bgr: list[np.ndarray]) -> np.ndarray:
        """L2-normalised ArcFace embeddings (K, D) of aligned BGR faces, in batches."""
        self.ensure_setup()
        if not faces_bgr:
            return np.zeros((0, 512), np.float32)
        out = np.concatenate([self.embedder.get_feat(faces_bgr[i:i + 32]) for i in range(0, len(faces_bgr), 32)])
        self.counters["faces_embedded"] += len(faces_bgr)
        return (out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)

    def identity(self, rgb: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(embedding, detector score, face width in px) of the main face of an image; NoFaceError without one."""
        boxes, kps = self.detect(rgb)
        if len(boxes) == 0:
            raise NoFaceError("no face detected")
        best = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        embedding = self.embed([self.aligned(rgb, kps[best])])[0]
        return embedding, float(boxes[best, 4]), float(boxes[best, 2] - boxes[best, 0])

    def swap(self, rgb: np.ndarray, kps: np.ndarray, source: np.ndarray) -> np.ndarray:
        """``rgb`` with the face at ``kps`` replaced by identity ``source`` (a normalised embedding), through
        InsightFace's own ``INSwapper.get`` (alignment, emap latent, paste-back) on the region around the face."""
        self.ensure_setup()
        height, width = rgb.shape[:2]
        x0, y0, x1, y1 = swap_region(kps, width, height)
        region = np.ascontiguousarray(rgb[y0:y1, x0:x1, ::-1])
        target = SimpleNamespace(kps=np.asarray(kps, np.float32) - np.array([x0, y0], np.float32))
        merged = self.swapper.get(region, target, SimpleNamespace(normed_embedding=source), paste_back=True)
        out = rgb.copy()
        out[y0:y1, x0:x1] = merged[..., ::-1]
        self.counters["frames_swapped"] += 1
        return out

    def track(self, frames_rgb: Iterable[np.ndarray], fps: float, scale: tuple[float, float] = (1.0, 1.0)) -> FaceTrack:
        """Detect on every frame of an iterable and follow, fill and smooth the face (``FaceSwapConfig``);
        ``scale`` takes the frames' pixels to the output's (detection may run on frames decoded smaller)."""
        factor = np.array([*scale, *scale, 1.0])
        detections = []
        for rgb in frames_rgb:
            boxes, kps = self.detect(rgb)
            detections.append((boxes * factor, kps * np.asarray(scale)))
        kps = follow_face(detections)
        cfg = self.config
        return fill_and_smooth(kps, max_gap=int(round(cfg.max_gap_s * fps)),
                               window=max(1, int(round(cfg.smooth_window_s * fps)) | 1))


class FaceIdentity(FaceSwapper):
    """SCRFD + ArcFace only (no swapper weights needed): identity similarity for evaluation (CSIM) with the same
    detector, alignment and embedding as the augmentation's identity check."""

    name = "face_identity"
    num_gpus = 0.25

    def weight_sources(self) -> dict[str, Any]:
        cfg = self.config
        return {cfg.detector: cfg.detector_weights, "w600k_r50": cfg.embedder_weights}
