"""DWPose through ONNX Runtime: a YOLOX-L person detector (``yolox_l.onnx``) and the DWPose-L wholebody model
(``dw-ll_ucoco_384.onnx``, 133 COCO-WholeBody keypoints). Plain numpy + cv2, no torch, no mmpose.

The pure steps are module functions so they can be tested alone: letterbox, YOLOX grid decode, NMS,
box -> centre/scale, the crop affine, SimCC decode and the mapping back to the frame.

Detector: the frame is letterboxed to 640x640 (aspect kept, placed top-left, pad value 114) and handed over as
BGR 0-255 float without normalisation, as YOLOX's own ONNX demo does. DWPose's ControlNet wrapper passes the
RGB frame it receives instead; the detector is trained on BGR, so we follow YOLOX. The raw head output
``(N, 8400, 85)`` is decoded on the stride 8/16/32 grids; a box's score is objectness x class probability.
Deviation: DWPose runs class-agnostic NMS over every class and then keeps persons; we keep person boxes
(class 0, score > ``det_score_min``) first and run NMS among them, so no other object can suppress a person.

Pose: each person box is padded 1.25x, its aspect fixed to the model's 288:384 (w:h), and cropped by an affine
warp to 288x384; the crop is RGB normalised with ImageNet mean/std. The SimCC outputs are decoded by argmax
(split ratio 2: two bins per input pixel); a keypoint's score is min(max_x, max_y).

Batching: when a model's batch dimension is dynamic, several frames go through the detector per call and
several person crops through the pose model per call (``batch_size`` each). The public DWPose files export a
fixed batch of 1: then items are run one per call (a fixed batch b > 1 is filled up with zero inputs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

NUM_KEYPOINTS = 133
FACE_SLICE = slice(23, 91)  # the 68 face points (iBUG 68 order) in the 133-point COCO-WholeBody layout
PAD_VALUE = 114
YOLOX_STRIDES = (8, 16, 32)
POSE_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # RGB
POSE_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
BOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0


@dataclass(frozen=True)
class Person:
    """One detected person, in the pixels of the frame that was passed in."""

    box: np.ndarray  # (4,) x0, y0, x1, y1
    box_score: float
    keypoints: np.ndarray  # (133, 2) x, y
    scores: np.ndarray  # (133,)


# -- detector: pure pieces ---------------------------------------------------------------------------------------

def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """``image`` resized into ``size`` = (h, w) keeping its aspect ratio, placed top-left on a canvas of
    ``PAD_VALUE``; returns the canvas and the ratio r (canvas pixel = source pixel * r)."""
    height, width = size
    ratio = min(height / image.shape[0], width / image.shape[1])
    resized_w, resized_h = int(image.shape[1] * ratio), int(image.shape[0] * ratio)
    canvas = np.full((height, width, image.shape[2]), PAD_VALUE, dtype=image.dtype)
    canvas[:resized_h, :resized_w] = cv2.resize(image, (resized_w, resized_h), interpolation=cv2.INTER_LINEAR)
    return canvas, ratio


def yolox_grid(size: tuple[int, int], strides: Sequence[int] = YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Anchor-point grid of YOLOX's raw output for an input of ``size`` = (h, w): (A, 2) cell x, y and (A, 1)
    strides, in the head's order (stride by stride, rows then columns); A = 8400 for 640x640."""
    cells, cell_strides = [], []
    for stride in strides:
        rows, cols = size[0] // stride, size[1] // stride
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        cell_strides.append(np.full((rows * cols, 1), stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(cell_strides).astype(np.float32)


def decode_yolox(raw: np.ndarray, grid: np.ndarray, strides: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw output (A, 5 + classes) -> boxes (A, 4) x0 y0 x1 y1 in input pixels, scores (A,) and
    classes (A,). The head has already applied the sigmoids; the offsets and log-sizes are decoded here."""
    centres = (raw[:, :2] + grid) * strides
    sizes = np.exp(raw[:, 2:4]) * strides
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    class_probs = raw[:, 5:]
    classes = class_probs.argmax(axis=1)
    scores = raw[:, 4] * class_probs[np.arange(len(raw)), classes]
    return boxes, scores, classes


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        x0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        overlap = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        iou = overlap / np.maximum(areas[best] + areas[rest] - overlap, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def person_boxes(raw: np.ndarray, grid: np.ndarray, strides: np.ndarray, ratio: float, *,
                 score_min: float, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes (K, 4) in source pixels and their scores (K,), best first, from one image's raw output."""
    boxes, scores, classes = decode_yolox(raw, grid, strides)
    persons = (classes == 0) & (scores > score_min)
    boxes, scores = boxes[persons], scores[persons]
    keep = nms(boxes, scores, iou_threshold)
    return boxes[keep] / ratio, scores[keep]


# -- pose: pure pieces -------------------------------------------------------------------------------------------

def box_to_centre_scale(box: np.ndarray, aspect: float, padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """Centre (2,) and scale (2,) = crop width, height in source pixels for a box, padded and widened or
    heightened (never shrunk) to ``aspect`` = w / h of the model input."""
    x0, y0, x1, y1 = box
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2], dtype=np.float64)
    w, h = (x1 - x0) * padding, (y1 - y0) * padding
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return centre, np.array([w, h], dtype=np.float64)


def crop_affine(centre: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """2x3 matrix taking source pixels to crop pixels: the rectangle ``centre +- scale / 2`` onto ``size`` =
    (w, h). (The aspect is already fixed, so the scale factors in x and y agree, as mmpose's warp has them.)"""
    sx, sy = size[0] / scale[0], size[1] / scale[1]
    x0, y0 = centre - scale / 2
    return np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy]], dtype=np.float64)


def crop_to_source(points: np.ndarray, centre: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop pixels (..., 2) back to source pixels: the inverse of :func:`crop_affine`."""
    return points / np.asarray(size, dtype=np.float64) * scale + centre - scale / 2


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray,
                 split_ratio: float = SIMCC_SPLIT_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, Wx), (N, K, Hy) -> keypoints (N, K, 2) in crop pixels and scores (N, K) = min of the two maxima."""
    x_bins, y_bins = simcc_x.argmax(axis=-1), simcc_y.argmax(axis=-1)
    x_max = np.take_along_axis(simcc_x, x_bins[..., None], axis=-1)[..., 0]
    y_max = np.take_along_axis(simcc_y, y_bins[..., None], axis=-1)[..., 0]
    keypoints = np.stack([x_bins, y_bins], axis=-1).astype(np.float64) / split_ratio
    return keypoints, np.minimum(x_max, y_max)


def pose_input(rgb: np.ndarray, centre: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One normalised CHW float32 crop for the pose model."""
    crop = cv2.warpAffine(rgb, crop_affine(centre, scale, size), size, flags=cv2.INTER_LINEAR)
    return ((crop.astype(np.float32) - POSE_MEAN) / POSE_STD).transpose(2, 0, 1)


# -- the model pair ----------------------------------------------------------------------------------------------

class _Model:
    """An ONNX Runtime session and what it says about itself: input name, spatial size, batch dimension."""

    def __init__(self, path: Path | str, providers: Sequence[str]):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # ONNX Runtime ignores OMP_NUM_THREADS and would use every core; Ray sets it to the task's CPU share,
        # so several shard workers on one machine do not oversubscribe it
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.fixed_batch = spec.shape[0] if isinstance(spec.shape[0], int) else None
        self.height, self.width = spec.shape[2], spec.shape[3]
        if not all(isinstance(side, int) for side in (self.height, self.width)):
            raise ValueError(f"{path}: the model's input needs a fixed spatial size, got shape {spec.shape}")

    def run(self, batch: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """Outputs for ``batch`` (N, ...), in calls of ``batch_size`` items, or of the model's fixed batch."""
        step = self.fixed_batch or batch_size
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(batch), step):
            chunk = batch[start:start + step]
            if self.fixed_batch and len(chunk) < step:  # a fixed batch is filled up; the filler is dropped
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            outputs = self.session.run(self.output_names, {self.input_name: chunk})
            parts.append([output[:len(batch) - start] for output in outputs])
        return [np.concatenate([part[i] for part in parts]) for i in range(len(self.output_names))]


class DWPose:
    """Person detection + wholebody keypoints on RGB frames. Build it once per worker; call it on lists of
    frames (any sizes). Thresholds as in :class:`curation.config.DWPoseConfig`."""

    def __init__(self, detector_path: Path | str, pose_path: Path | str, providers: Sequence[str], *,
                 det_score_min: float = 0.3, nms_iou: float = 0.45, batch_size: int = 16):
        self.detector = _Model(detector_path, providers)
        self.pose = _Model(pose_path, providers)
        self.det_score_min, self.nms_iou, self.batch_size = det_score_min, nms_iou, batch_size
        self._grid, self._strides = yolox_grid((self.detector.height, self.detector.width))
        if set(self.pose.output_names) != {"simcc_x", "simcc_y"}:
            raise ValueError(f"{pose_path}: expected SimCC outputs simcc_x and simcc_y, got {self.pose.output_names}")

    @classmethod
    def from_config(cls, detector_path: Path | str, pose_path: Path | str, providers: Sequence[str],
                    config) -> DWPose:
        return cls(detector_path, pose_path, providers, det_score_min=config.det_score_min,
                   nms_iou=config.nms_iou, batch_size=config.batch_size)

    def detect(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per RGB frame: person boxes (K, 4) in frame pixels and their scores (K,), best first."""
        if not frames:
            return []
        size = (self.detector.height, self.detector.width)
        canvases, ratios = zip(*(letterbox(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), size) for frame in frames),
                               strict=True)
        batch = np.stack(canvases).astype(np.float32).transpose(0, 3, 1, 2)  # N, 3 (BGR), H, W; 0-255
        raw = self.detector.run(np.ascontiguousarray(batch), self.batch_size)[0]
        if raw.ndim != 3 or raw.shape[1] != len(self._grid) or raw.shape[2] < 6:  # e.g. exported with decoding
            raise ValueError(f"detector output {raw.shape} is not YOLOX's raw (N, {len(self._grid)}, 5 + classes)")
        return [person_boxes(raw[i], self._grid, self._strides, ratios[i], score_min=self.det_score_min,
                             iou_threshold=self.nms_iou) for i in range(len(frames))]

    def keypoints(self, crops: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Wholebody keypoints (P, 133, 2) in frame pixels and scores (P, 133) for (RGB frame, box) pairs."""
        size = (self.pose.width, self.pose.height)
        if not crops:
            return np.zeros((0, NUM_KEYPOINTS, 2)), np.zeros((0, NUM_KEYPOINTS))
        placed = [box_to_centre_scale(box, size[0] / size[1]) for _, box in crops]
        points, scores = [], []
        for start in range(0, len(crops), self.batch_size):  # built one call at a time: a crowd cannot fill memory
            batch = np.stack([pose_input(rgb, *placed[start + i], size)
                              for i, (rgb, _) in enumerate(crops[start:start + self.batch_size])])
            outputs = dict(zip(self.pose.output_names, self.pose.run(batch, self.batch_size), strict=True))
            batch_points, batch_scores = decode_simcc(outputs["simcc_x"], outputs["simcc_y"])
            points.append(batch_points)
            scores.append(batch_scores)
        centres = np.stack([centre for centre, _ in placed])[:, None, :]
        scales = np.stack([scale for _, scale in placed])[:, None, :]
        return crop_to_source(np.concatenate(points), centres, scales, size), np.concatenate(scores)

    def __call__(self, frames: Sequence[np.ndarray]) -> list[list[Person]]:
        """Per RGB frame (HxWx3 uint8), the persons found with their 133 keypoints, best detection first."""
        detections = self.detect(frames)
        crops = [(frames[i], box) for i, (boxes, _) in enumerate(detections) for box in boxes]
        points, scores = self.keypoints(crops)
        persons: list[list[Person]] = []
        k = 0
        for boxes, box_scores in detections:
            persons.append([Person(boxes[j], float(box_scores[j]), points[k + j], scores[k + j])
                            for j in range(len(boxes))])
            k += len(boxes)
        return persons
