"""The flicker ratio (metrics.temporal): mean frame-to-frame change of a variant over its original's."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metrics.temporal import FlickerMeter, flicker_ratio


def _moving(n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.integers(0, 256, (n, 16, 20, 3), dtype=np.uint8)


def test_static_variant_of_a_moving_original_has_ratio_zero():
    original = _moving()
    assert flicker_ratio(original, np.repeat(original[:1], len(original), axis=0)) == 0.0


def test_identical_variant_has_ratio_one():
    original = _moving()
    assert flicker_ratio(original, original.copy()) == 1.0


def test_noisy_variant_has_ratio_above_one():
    original = np.repeat(np.linspace(0, 200, 20, dtype=np.uint8)[None, None, :, None], 16, axis=1)
    original = np.stack([np.clip(original.astype(int) + t, 0, 255) for t in range(6)]).repeat(3, axis=3)
    noise = np.random.default_rng(3).integers(-20, 21, original.shape)
    assert flicker_ratio(original, np.clip(original + noise, 0, 255).astype(np.uint8)) > 3.0


def test_meter_streams_and_restricts_to_a_region():
    original = _moving(4)
    variant = original.copy()
    variant[:, :, 10:] = original[0, :, 10:]  # right half frozen
    meter = FlickerMeter((0, 0, 10, 16))  # left half: as steady as the source
    assert meter.ratio is None
    for o, v in zip(original, variant, strict=True):
        meter.update(o, v)
    assert meter.frames == 4 and meter.ratio == 1.0
    mask = np.zeros((16, 20), bool)
    mask[:, 10:] = True
    assert flicker_ratio(original, variant, mask) == 0.0
    expected = np.abs(np.diff(original.astype(float), axis=0))[:, :, :10].mean()
    assert meter.original_change == pytest.approx(expected)


def test_static_original_gives_one_or_inf_and_short_clips_are_refused():
    still = np.repeat(_moving(1), 3, axis=0)
    assert flicker_ratio(still, still) == 1.0
    assert flicker_ratio(still, _moving(3)) == math.inf
    with pytest.raises(ValueError, match="at least 2 frames"):
        flicker_ratio(still[:1], still[:1])
    with pytest.raises(ValueError, match="differ in shape"):
        FlickerMeter().update(still[0], still[0, :8])
