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
    driven region in their geometry (F,R,R) float32."""
    driving = frames * driven[..., None].astype(np.uint8)
    mask = driven
    if plan.scale != 1.0 or plan.aspect != 1.0:
        size = frames.shape[1]
        sx, sy = plan.scale * math.sqrt(plan.aspect), plan.scale / math.sqrt(plan.aspect)
        centre = (size - 1) / 2
        affine = np.array([[sx, 0, (1 - sx) * centre], [0, sy, (1 - sy) * centre]], dtype=np.float64)
        driving = np.stack([cv2.warpAffine(f, affine, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
                            for f in driving])
        mask = np.stack([cv2.warpAffine(m, affine, (size, size), flags=cv2.INTER_NEAREST, borderValue=0)
                         for m in mask])
        driving = driving * (mask[..., None] > 0)  # bilinear edges do not bleed past the region
    if plan.color != (1.0, 1.0, 1.0):
        driving = jitter_colour(driving, mask > 0, *plan.color)
    if plan.grayscale:
        gray = (driving.astype(np.float32) @ LUMA).round()
        driving = np.repeat(gray[..., None], 3, axis=-1)
    return np.ascontiguousarray(driving.astype(np.uint8)), np.ascontiguousarray(mask.astype(np.float32))


LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def jitter_colour(frames: np.ndarray, inside: np.ndarray, brightness: float, contrast: float,
                   saturation: float) -> np.ndarray:
    """(F,R,R,3) uint8 -> uint8: brightness scales, contrast pulls towards or away from the driven region's mean
    (one mean for the whole sample), saturation towards or away from each pixel's luma; outside the region
    stays black."""
    x = frames.astype(np.float32) * brightness
    if inside.any():
        mean = float(x[inside].mean())
        x = (x - mean) * contrast + mean
    luma = (x @ LUMA)[..., None]
    x = luma + (x - luma) * saturation
    return (np.clip(x, 0, 255).round() * inside[..., None]).astype(np.uint8)
