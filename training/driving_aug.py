"""Augmentations of the driving frames (one draw per sample, applied alike to every frame of it): keep the driven
regions, zoom and stretch about the centre, colour jitter, grayscale. The draws live in the sample plan
(``training.data.SamplePlan``); these functions only apply them."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np


def augment_driving(frames: np.ndarray, driven: np.ndarray, plan: Any) -> tuple[np.ndarray, np.ndarray]:
    """Keep the driven regions (black elsewhere), then zoom/stretch about the centre (black borders), colour
    jitter and grayscale, the same for every frame of the sample. Returns the frames (F,R,R,3) uint8 and the
    driven region in their geometry (F,R,R), a new array of ``driven``'s dtype (the dataset's uint8 0/1)."""
    driving = frames * _per_channel(driven.astype(np.uint8, copy=False))
    mask = driven
    if plan.scale != 1.0 or plan.aspect != 1.0:
        size = frames.shape[1]
        sx, sy = plan.scale * math.sqrt(plan.aspect), plan.scale / math.sqrt(plan.aspect)
        centre = (size - 1) / 2
        affine = np.array([[sx, 0, (1 - sx) * centre], [0, sy, (1 - sy) * centre]], dtype=np.float64)
        driving = _warp(driving, affine, cv2.INTER_LINEAR)
        mask = _warp(mask, affine, cv2.INTER_NEAREST)
        driving = driving * _per_channel(mask > 0)  # bilinear edges do not bleed past the region
    if plan.color != (1.0, 1.0, 1.0):
        driving = jitter_colour(driving, mask > 0, *plan.color)
    if plan.grayscale:
        gray = (driving.astype(np.float32) @ LUMA).round().astype(np.uint8)  # in [0, 255]: the same bytes
        driving = np.repeat(gray[..., None], 3, axis=-1)
    return np.ascontiguousarray(driving.astype(np.uint8, copy=False)), np.ascontiguousarray(mask.astype(driven.dtype))


LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PIXEL = np.dtype((np.void, 3))  # one uint8 RGB pixel as one item


def _warp(frames: np.ndarray, affine: np.ndarray, flags: int) -> np.ndarray:
    """Each frame through ``cv2.warpAffine`` (black borders), written in place of one output array (no stack)."""
    frames = np.ascontiguousarray(frames)
    out = np.empty_like(frames)
    size = frames.shape[1]
    for frame, warped in zip(frames, out, strict=True):
        result = cv2.warpAffine(frame, affine, (size, size), dst=warped, flags=flags, borderValue=0)
        if result is not warped:  # a binding that returns a new array instead
            warped[...] = result
    return out


def _per_channel(mask: np.ndarray) -> np.ndarray:
    """(F,R,R) -> (F,R,R,3), repeated: a product with (F,R,R,3) frames then runs without a broadcast of a
    3-long last axis (numpy's slow path, ~4x the time), the same values."""
    return np.repeat(mask[..., None], 3, axis=-1)


def jitter_colour(frames: np.ndarray, inside: np.ndarray, brightness: float, contrast: float,
                   saturation: float) -> np.ndarray:
    """(F,R,R,3) uint8 -> uint8: brightness scales, contrast pulls towards or away from the driven region's mean
    (one mean for the whole sample), saturation towards or away from each pixel's luma; outside the region
    stays black.

    Computed on the region's pixels only (gathered in C order, the order ``frames[inside]`` has): every pixel
    and the mean take the same float32 operations on the same values as over the whole frames
    (``tests/training/test_loader_python.py`` checks it against that form), the rest is black."""
    frames = np.ascontiguousarray(frames)
    out = np.zeros(frames.shape, dtype=np.uint8)
    if not inside.any():
        return out
    pixel = np.dtype((np.void, 3 * frames.itemsize))  # one RGB pixel as one item: indexing moves it at once
    pixels = frames.view(pixel).reshape(frames.shape[:-1])[inside]  # (N,) pixels, in frames[inside]'s order
    x = pixels.view(frames.dtype).reshape(-1, 3).astype(np.float32) * brightness
    mean = float(x.mean())
    x = (x - mean) * contrast + mean
    luma = np.repeat((x @ LUMA)[:, None], 3, axis=1)  # not broadcast along a 3-long axis: numpy's slow path
    x = luma + (x - luma) * saturation
    kept = np.ascontiguousarray(np.clip(x, 0, 255).round().astype(np.uint8))
    out.view(_PIXEL).reshape(out.shape[:-1])[inside] = kept.view(_PIXEL).reshape(-1)
    return out
