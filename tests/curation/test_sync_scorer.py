"""The SyncNet scorer's face crops: the reference geometry, from the stored face track."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from curation.scorers.sync_syncnet import PAD_VALUE, crop_boxes, crop_face


def _reference_crop(frame, x, y, half, scale):
    """The reference's crop (run_pipeline.py), written out: pad the frame, slice, resize."""
    pad = int(half * (1 + 2 * scale))
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="constant", constant_values=PAD_VALUE)
    my, mx = y + pad, x + pad
    window = padded[int(my - half): int(my + half * (1 + 2 * scale)),
                    int(mx - half * (1 + scale)): int(mx + half * (1 + scale))]
    return cv2.resize(window, (224, 224))


@pytest.mark.parametrize("x, y, half", [(960.4, 540.7, 180.2), (30.0, 20.0, 150.0), (1900.0, 1070.0, 90.5),
                                        (500.0, 300.0, 700.0), (-10.0, 1075.0, 60.0)])
def test_crop_equals_the_reference_pad_and_slice(x, y, half):
    frame = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crop_face(frame, x, y, half, 0.4), _reference_crop(frame, x, y, half, 0.4))


def test_boxes_are_interpolated_to_every_frame_and_median_filtered():
    track = [{"t": 0.0, "box": [100, 100, 200, 300]}, {"t": 0.2, "box": None},
             {"t": 0.4, "box": [140, 100, 240, 300]}, {"t": 0.6, "box": [900, 900, 1000, 1100]},  # a glitch
             {"t": 0.8, "box": [140, 100, 240, 300]}]
    times = np.arange(0, 1.0, 0.04)
    raw = crop_boxes(track, times, smooth_frames=1)
    assert raw[0].tolist() == [150.0, 200.0, 100.0]  # centre and half of max(w, h)
    assert raw[5, 0] == pytest.approx(170.0)  # t = 0.2: halfway between the boxes around the missing one
    assert raw[15, 0] == pytest.approx(950.0)  # unfiltered, the glitch shows
    assert raw[-1, 0] == pytest.approx(190.0)  # held after the last box
    smooth = crop_boxes(track, times, smooth_frames=13)  # 0.52 s: 3 samples at this track's 5 fps
    assert smooth[15, 0] == pytest.approx(190.0)  # the one-sample glitch at t = 0.6 is filtered out
    assert crop_boxes([{"t": 0.0, "box": None}], times, 13) is None
