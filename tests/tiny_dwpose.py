"""Tiny ONNX models in DWPose's input/output contract (YOLOX-L detector, DWPose-L SimCC pose model), built with
onnx.helper, with known answers: a "detector" whose raw YOLOX output holds two persons at known letterbox boxes
(plus a duplicate, a weak person and a non-person that must all be dropped) and a "pose model" whose SimCC
outputs peak at known bins. Their only use of the pixels is the input's mean m: person B's objectness is m / 100
(so a dark frame has no person B) and every SimCC peak is raised by m / 100 (so a keypoint's score says which
crop it came from)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from curation import dwpose

# -- the tiny models' known answers ---------------------------------------------------------------------------

PERSON_A = (100.0, 50.0, 300.0, 330.0)  # letterbox (640x640) pixels; the larger face
PERSON_B = (420.0, 200.0, 500.0, 300.0)
LOW_SCORE_FACE_POINTS = (0, 1, 2, 3)  # jaw points under keypoint_score_min: they must not shape the box


def _face_layout() -> np.ndarray:
    """68 iBUG points of a frontal face in pose-crop pixels (288x384), on the SimCC half-pixel grid."""
    points = np.zeros((68, 2))
    theta = np.pi * np.arange(17) / 16
    points[0:17] = np.stack([144 - 50 * np.cos(theta), 80 + 96 * np.sin(theta)], axis=1)  # jaw, 8 = chin
    points[17:27] = np.stack([np.r_[np.linspace(100, 130, 5), np.linspace(158, 188, 5)], np.full(10, 66)], 1)
    points[27:31] = np.stack([np.full(4, 144), np.linspace(80, 110, 4)], 1)  # 30 = nose tip
    points[31:36] = np.stack([np.linspace(132, 156, 5), np.full(5, 118)], 1)
    eye = np.array([[0, 0], [8, -4], [18, -4], [26, 0], [18, 4], [8, 4]])  # iBUG order: outer/left corner first
    points[36:42] = eye + [99, 76]  # 36: outer corner, image left
    points[42:48] = eye + [163, 76]  # 45: outer corner, image right
    outer, inner = np.linspace(0, 2 * np.pi, 13)[:-1], np.linspace(0, 2 * np.pi, 9)[:-1]
    points[48:60] = np.stack([144 - 30 * np.cos(outer), 140 + 10 * np.sin(outer)], 1)  # 48, 54: corners
    points[60:68] = np.stack([144 - 20 * np.cos(inner), 140 + 4 * np.sin(inner)], 1)
    return np.round(points * 2) / 2


FACE_CROP = _face_layout()


def _plus_mean_times(input_name: str, constant: str, slope: str, output: str) -> list:
    """Nodes computing ``constant + mean(input) * slope``, the input's mean taken per batch item."""
    return [
        helper.make_node("ReduceMean", [input_name], [f"{output}_mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", [f"{output}_mean", "shape"], [f"{output}_mean3"]),  # (N, 1, 1)
        helper.make_node("Mul", [f"{output}_mean3", slope], [f"{output}_term"]),
        helper.make_node("Add", [f"{output}_term", constant], [output]),
    ]


def _save(path: Path, nodes, inputs, outputs, constants: dict[str, np.ndarray]) -> Path:
    constants = {"shape": np.array([-1, 1, 1], np.int64), **constants}
    graph = helper.make_graph(nodes, "tiny", inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # old enough for any ONNX Runtime we support
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _anchor(raw: np.ndarray, stride: int, box, objectness: float, cls: int, cls_prob: float) -> int:
    """Write ``box`` into the raw YOLOX output row of the grid cell holding its centre; returns the row."""
    grid, strides = dwpose.yolox_grid((640, 640))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    row = int(np.flatnonzero((strides[:, 0] == stride) & (grid[:, 0] == cx // stride) & (grid[:, 1] == cy // stride))[0])
    raw[0, row, :4] = [cx / stride - grid[row, 0], cy / stride - grid[row, 1],
                       math.log((box[2] - box[0]) / stride), math.log((box[3] - box[1]) / stride)]
    raw[0, row, 4], raw[0, row, 5 + cls] = objectness, cls_prob
    return row


def make_detector(path: Path, batch: int | str) -> Path:
    raw = np.zeros((1, 8400, 85), np.float32)
    _anchor(raw, 32, PERSON_A, 0.9, 0, 0.95)
    _anchor(raw, 16, (104, 54, 304, 334), 0.8, 0, 0.9)  # a duplicate of A: NMS drops it
    row_b = _anchor(raw, 32, PERSON_B, 0.0, 0, 0.9)
    _anchor(raw, 8, (500, 500, 560, 560), 0.9, 2, 0.9)  # a car: not a person
    _anchor(raw, 16, (20, 400, 120, 600), 0.5, 0, 0.5)  # a person at score 0.25 <= det_score_min
    slope = np.zeros_like(raw)
    slope[0, row_b, 4] = 0.01  # B's objectness = mean / 100: B scores over 0.3 iff the input's mean > 33.3
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 640, 640])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 8400, 85])
    return _save(path, _plus_mean_times("images", "raw", "slope", "output"), [image], [output],
                 {"raw": raw, "slope": slope})


def make_pose(path: Path, batch: int | str) -> Path:
    points = np.full((133, 2), (144.0, 192.0))
    points[dwpose.FACE_SLICE] = FACE_CROP
    scores = np.full(133, 0.5, np.float32)
    scores[dwpose.FACE_SLICE] = 0.9
    scores[23 + np.array(LOW_SCORE_FACE_POINTS)] = 0.2
    constants = {name: np.zeros((1, 133, bins), np.float32)
                 for name, bins in (("sx", 576), ("sy", 768), ("slope_x", 576), ("slope_y", 768))}
    for axis, (constant, slope) in enumerate((("sx", "slope_x"), ("sy", "slope_y"))):
        peaks = (np.arange(133), (points[:, axis] * 2).astype(int))
        constants[constant][0][peaks] = scores + 0.05 * axis  # the score is the smaller maximum: x's
        constants[slope][0][peaks] = 0.01  # every peak rises by mean / 100
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 384, 288])
    outputs = [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [batch, 133, 576]),
               helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [batch, 133, 768])]
    nodes = [*_plus_mean_times("input", "sx", "slope_x", "simcc_x"),
             *_plus_mean_times("input", "sy", "slope_y", "simcc_y")]
    return _save(path, nodes, [image], outputs, constants)
