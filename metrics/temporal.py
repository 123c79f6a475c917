"""Temporal steadiness of a video variant against its source (pure numpy).

flicker ratio = mean |v[t+1]-v[t]| / mean |o[t+1]-o[t]|: 1 = as steady as the source; above 1 = added flicker.

The means run over every pixel and channel of every consecutive frame pair, inside an optional region (a
``(x0, y0, x1, y1)`` box in pixels, end-exclusive, or a boolean ``(H, W)`` mask), so a face-centred region
measures the stylized face rather than the untouched background. A source with no change at all has no scale to
compare with: the ratio is then 1.0 when the variant is static too, and ``inf`` when it is not (any added change
on a still source is added flicker, and ``inf`` fails every finite threshold)."""

from __future__ import annotations

import math

import numpy as np

Region = tuple[int, int, int, int] | np.ndarray


def _region_mask(region: Region | None, height: int, width: int) -> np.ndarray | None:
    if region is None:
        return None
    if isinstance(region, np.ndarray) and region.dtype == bool:
        if region.shape != (height, width):
            raise ValueError(f"region mask has shape {region.shape}, frames are {(height, width)}")
        mask = region
    else:
        x0, y0, x1, y1 = (int(v) for v in region)
        mask = np.zeros((height, width), dtype=bool)
        mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    if not mask.any():
        raise ValueError(f"region {region if not isinstance(region, np.ndarray) else 'mask'} holds no pixel")
    return mask


class FlickerMeter:
    """Accumulates, one (original, variant) frame pair at a time, the mean absolute frame-to-frame change of the
    variant and of the original, so a long clip is measured while it streams (no frame kept but the last)."""

    def __init__(self, region: Region | None = None):
        self.region = region
        self.frames = 0
        self._mask: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None
        self._previous: tuple[np.ndarray, np.ndarray] | None = None
        self._variant_sum = 0.0
        self._original_sum = 0.0
        self._values = 0  # pixel-channel values summed per side

    def update(self, original_frame: np.ndarray, variant_frame: np.ndarray) -> None:
        # float32 holds every uint8 difference exactly; uint8 arithmetic would wrap around
        original = np.asarray(original_frame, dtype=np.float32)
        variant = np.asarray(variant_frame, dtype=np.float32)
        if original.shape != variant.shape:
            raise ValueError(f"original frame {original.shape} and variant frame {variant.shape} differ in shape")
        if self._shape is None:
            self._shape = original.shape
            self._mask = _region_mask(self.region, original.shape[0], original.shape[1])
        elif original.shape != self._shape:
            raise ValueError(f"frame {self.frames} has shape {original.shape}, earlier ones {self._shape}")
        if self._mask is not None:
            original, variant = original[self._mask], variant[self._mask]  # (pixels, channels)
        if self._previous is not None:
            last_original, last_variant = self._previous
            self._original_sum += float(np.abs(original - last_original).sum(dtype=np.float64))
            self._variant_sum += float(np.abs(variant - last_variant).sum(dtype=np.float64))
            self._values += original.size
        self._previous = (original, variant)
        self.frames += 1

    @property
    def variant_change(self) -> float | None:
        """Mean |v[t+1]-v[t]| over the region (frame units, e.g. 0..255); None before two frames."""
        return self._variant_sum / self._values if self._values else None

    @property
    def original_change(self) -> float | None:
        """Mean |o[t+1]-o[t]| over the region; None before two frames."""
        return self._original_sum / self._values if self._values else None

    @property
    def ratio(self) -> float | None:
        """The flicker ratio; None with fewer than 2 frames; for a static original 1.0 or inf (module doc)."""
        if not self._values:
            return None
        if self._original_sum == 0.0:
            return 1.0 if self._variant_sum == 0.0 else math.inf
        return self._variant_sum / self._original_sum


def flicker_ratio(original: np.ndarray, variant: np.ndarray, region: Region | None = None) -> float:
    """The flicker ratio of two whole clips, (N, H, W, 3) arrays of the same shape with N >= 2."""
    if original.shape != variant.shape:
        raise ValueError(f"original {original.shape} and variant {variant.shape} differ in shape")
    if len(original) < 2:
        raise ValueError(f"the flicker ratio needs at least 2 frames, got {len(original)}")
    meter = FlickerMeter(region)
    for original_frame, variant_frame in zip(original, variant, strict=True):
        meter.update(original_frame, variant_frame)
    assert meter.ratio is not None  # two frames or more were given
    return meter.ratio
