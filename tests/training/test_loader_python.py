"""The training loader's per-sample array work, restructured for speed, against the implementations it replaced
(kept here verbatim as the reference): the same bytes and floats for random inputs, draws and regions."""

from __future__ import annotations

import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from curation.crops import box_masks, interpolate_boxes
from training.driving_aug import LUMA, augment_driving, jitter_colour


# -- the implementations before the restructuring ------------------------------------------------------------
def reference_augment_driving(frames, driven, plan):
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
        driving = driving * (mask[..., None] > 0)
    if plan.color != (1.0, 1.0, 1.0):
        driving = reference_jitter_colour(driving, mask > 0, *plan.color)
    if plan.grayscale:
        gray = (driving.astype(np.float32) @ LUMA).round()
        driving = np.repeat(gray[..., None], 3, axis=-1)
    return np.ascontiguousarray(driving.astype(np.uint8)), np.ascontiguousarray(mask.astype(np.float32))


def reference_jitter_colour(frames, inside, brightness, contrast, saturation):
    x = frames.astype(np.float32) * brightness
    if inside.any():
        mean = float(x[inside].mean())
        x = (x - mean) * contrast + mean
    luma = (x @ LUMA)[..., None]
    x = luma + (x - luma) * saturation
    return (np.clip(x, 0, 255).round() * inside[..., None]).astype(np.uint8)


def reference_box_masks(track, key, times, crop, resolution, dilation):
    left, top, side = crop
    scale = resolution / side
    masks = np.zeros((len(times), resolution, resolution), dtype=np.float32)
    for mask, (x0, y0, x1, y1) in zip(masks, interpolate_boxes(track, key, times), strict=True):
        dx, dy = dilation * (x1 - x0), dilation * (y1 - y0)
        c0 = int(np.clip(np.floor((x0 - dx - left) * scale), 0, resolution))
        c1 = int(np.clip(np.ceil((x1 + dx - left) * scale), 0, resolution))
        r0 = int(np.clip(np.floor((y0 - dy - top) * scale), 0, resolution))
        r1 = int(np.clip(np.ceil((y1 + dy - top) * scale), 0, resolution))
        mask[r0:r1, c0:c1] = 1.0
    return masks


# -- inputs --------------------------------------------------------------------------------------------------
def regions(rng, count, size):
    """0/1 float32 masks of a few random rectangles per frame (some frames empty, some rectangles off the edge)."""
    masks = np.zeros((count, size, size), dtype=np.float32)
    for mask in masks:
        for _ in range(rng.integers(0, 4)):
            r0, c0 = rng.integers(-size // 4, size, size=2)
            h, w = rng.integers(1, size // 2, size=2)
            mask[max(r0, 0): max(r0 + h, 0), max(c0, 0): max(c0 + w, 0)] = 1.0
    return masks


def draws(rng):
    return SimpleNamespace(
        scale=float(rng.uniform(0.8, 1.2)) if rng.random() < 0.5 else 1.0,
        aspect=float(np.exp(rng.uniform(*np.log((0.8, 1.25))))) if rng.random() < 0.5 else 1.0,
        color=tuple(float(rng.uniform(0.8, 1.2)) for _ in range(3)) if rng.random() < 0.6 else (1.0, 1.0, 1.0),
        grayscale=bool(rng.random() < 0.4))


def equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.flags.c_contiguous == b.flags.c_contiguous and \
        torch.equal(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b)))


# -- the checks ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_jitter_colour_equals_the_whole_frame_form(seed):
    rng = np.random.default_rng(seed)
    count, size = int(rng.integers(1, 5)), int(rng.choice([7, 32, 65]))
    frames = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
    inside = regions(rng, count, size) > 0
    if seed % 2:
        frames[~inside] = 0  # as the driving frames arrive
    for brightness, contrast, saturation in [(1.0, 1.0, 1.0), (0.0, 1.0, 1.0), (1.0, 0.0, 0.0),
                                             tuple(rng.uniform(0.5, 1.6, size=3))]:
        args = (float(brightness), float(contrast), float(saturation))
        assert equal(jitter_colour(frames, inside, *args), reference_jitter_colour(frames, inside, *args))
    nothing = np.zeros_like(inside)
    assert equal(jitter_colour(frames, nothing, 1.1, 0.9, 1.2), reference_jitter_colour(frames, nothing, 1.1, 0.9,
                                                                                         1.2))


@pytest.mark.parametrize("seed", range(12))
def test_augment_driving_equals_the_per_frame_form(seed):
    rng = np.random.default_rng(100 + seed)
    count, size = int(rng.integers(1, 6)), int(rng.choice([16, 33, 64]))
    frames = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
    driven = regions(rng, count, size)
    plan = draws(rng)
    if seed < 4:  # every augmentation at once, then none
        plan = SimpleNamespace(scale=0.9, aspect=1.1, color=(1.1, 0.85, 1.2), grayscale=True) if seed < 2 else \
            SimpleNamespace(scale=1.0, aspect=1.0, color=(1.0, 1.0, 1.0), grayscale=False)
    got, expected = augment_driving(frames, driven, plan), reference_augment_driving(frames, driven, plan)
    assert all(equal(a, b) for a, b in zip(got, expected, strict=True)), plan
    assert not np.shares_memory(got[1], driven)
    # the dataset's uint8 0/1 regions: the same frames, the region as uint8
    compact = augment_driving(frames, driven.astype(np.uint8), plan)
    assert equal(compact[0], expected[0]) and equal(compact[1], expected[1].astype(np.uint8)), plan


def test_augment_driving_keeps_the_byte_product_for_a_non_binary_region():
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    driven = rng.choice(np.array([0.0, 0.5, 1.0, 2.0, 3.7], dtype=np.float32), size=(2, 16, 16))
    plan = SimpleNamespace(scale=1.0, aspect=1.0, color=(1.0, 1.0, 1.0), grayscale=False)
    got, expected = augment_driving(frames, driven, plan), reference_augment_driving(frames, driven, plan)
    assert all(equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("seed", range(8))
def test_box_masks_equal_the_per_frame_form(seed):
    rng = np.random.default_rng(200 + seed)
    points = []
    for t in np.sort(rng.uniform(0, 4, size=int(rng.integers(1, 6)))):
        x0, y0 = rng.uniform(-50, 600, size=2)
        w, h = rng.uniform(1, 300, size=2)
        box = [float(x0), float(y0), float(x0 + w), float(y0 + h)]
        points.append({"t": float(t), "box": box,
                       "eyes_box": [box[0] + 5, box[1] + 10, box[2] - 5, box[1] + 30] if rng.random() < 0.7
                       else None, "mouth_box": None})
    times = np.sort(rng.uniform(-1, 5, size=int(rng.integers(0, 17))))
    crop = (float(rng.uniform(0, 200)), float(rng.uniform(0, 200)), float(rng.uniform(50, 500)))
    resolution, dilation = int(rng.choice([8, 64, 256])), float(rng.choice([0.0, 0.1, 0.37]))
    for key in ("box", "eyes_box", "mouth_box"):
        expected = reference_box_masks(points, key, times, crop, resolution, dilation)
        assert equal(box_masks(points, key, times, crop, resolution, dilation), expected), key
        # the training loader's uint8 0/1 masks: the same rectangles
        assert equal(box_masks(points, key, times, crop, resolution, dilation, np.uint8), expected.astype(np.uint8))


def test_box_masks_refuse_a_nan_box_as_before():
    points = [{"t": 0.0, "box": [float("nan"), 0.0, 10.0, 10.0]}]
    with pytest.raises(ValueError):
        reference_box_masks(points, "box", np.array([0.0]), (0.0, 0.0, 20.0), 8, 0.1)
    with pytest.raises(ValueError):
        box_masks(points, "box", np.array([0.0]), (0.0, 0.0, 20.0), 8, 0.1)


def test_jitter_colour_of_wider_pixels_equals_the_whole_frame_form():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, size=(2, 9, 9, 3)).astype(np.int16)
    inside = regions(rng, 2, 9) > 0
    inside[0, 0, 0] = True
    assert equal(jitter_colour(frames, inside, 1.1, 0.9, 1.2), reference_jitter_colour(frames, inside, 1.1, 0.9, 1.2))


@pytest.mark.parametrize("view", ["contiguous", "strided", "transposed"])
def test_float_conversions_equal_the_table_lookup(view):
    """The trainer's conversion (``model_inputs``: torch's division on the CPU, a table elsewhere) of bytes in
    any layout equals the lookup in the tables the torch ops make, byte by byte."""
    from training import data as training_data

    values = np.random.default_rng(11).integers(0, 256, size=(3, 20, 22, 3), dtype=np.uint8)
    values = {"contiguous": values, "strided": values[:, ::2, 1:], "transposed": values.transpose(0, 2, 1, 3)}[view]
    pixels = torch.from_numpy(values).permute(0, 3, 1, 2)  # channels first, as a sample holds them
    # the tables the torch ops make, byte by byte (the conversion used to run them on every pixel)
    signed = torch.arange(256, dtype=torch.uint8).float().div_(127.5).sub_(1.0).numpy()
    unit = torch.arange(256, dtype=torch.uint8).float().div_(255.0).numpy()
    for key, kind, table in (("frames", "signed", signed), ("driving", "unit", unit)):
        expected = torch.from_numpy(table[values]).permute(0, 3, 1, 2)
        for got in (training_data.model_inputs({key: pixels}, "cpu")[key], training_data._lookup(pixels, kind)):
            assert torch.equal(got, expected) and got.dtype == expected.dtype and got.shape == expected.shape
