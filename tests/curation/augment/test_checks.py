"""The motion check's openings from each face backend's landmarks, and the decisions the checks make."""

from __future__ import annotations

import numpy as np
import pytest

from curation import media
from curation.augment import checks
from curation.augment.config import load_augment_config
from curation.config import DWPoseConfig
from tests.tiny_dwpose import make_detector, make_pose


def test_openings_are_gaps_over_widths_in_either_layout():
    mesh = np.zeros((478, 2))
    mesh[[78, 308]] = [[100, 200], [160, 200]]  # mouth corners, 60 px apart
    mesh[[13, 14]] = [[130, 190], [130, 205]]  # inner lips 15 px apart: 0.25
    for upper, lower, left, right in checks.MEDIAPIPE_EYES:
        mesh[[left, right]] = [[0, 100], [30, 100]]
        mesh[[upper, lower]] = [[15, 97], [15, 103]]  # 6 / 30 = 0.2
    assert checks.openings(mesh, "mediapipe") == pytest.approx((0.25, 0.2))
    ibug = np.zeros((68, 2))
    ibug[[60, 64, 62, 66]] = [[0, 0], [40, 0], [20, -4], [20, 4]]
    ibug[36:42] = [[0, 0], [8, -5], [18, -5], [26, 0], [18, 5], [8, 5]]
    ibug[42:48] = ibug[36:42] + [60, 0]
    assert checks.openings(ibug, "ibug68") == pytest.approx((0.2, 10 / 26))


def test_motion_errors_and_reasons():
    config = load_augment_config().checks
    original = [(0.30, 0.25), (0.05, 0.25), None, (0.20, 0.05)]
    frozen = [(0.10, 0.25), (0.10, 0.25), (0.1, 0.25), None]  # a stiff mouth; the last face not found
    columns = checks.motion_columns(original, frozen)
    assert columns["motion_frames"] == 2
    assert columns["mouth_open_error"] == pytest.approx((0.20 + 0.05) / 2) and columns["eye_open_error"] == 0
    assert checks.motion_reasons(columns, 3, config) == ["mouth_motion_lost"]
    unmeasured = checks.motion_columns(original, [None] * 4)
    assert checks.motion_reasons(unmeasured, 3, config) == ["motion_unmeasured"]
    assert checks.motion_reasons(unmeasured, 0, config) == []  # no face in the original either: nothing to say


def test_identity_columns():
    source = np.array([1.0, 0.0])
    original = np.array([[0.0, 1.0]] * 4)
    swapped = np.array([[0.9, 0.436], [0.8, 0.6], [0.1, 0.995], [0.95, 0.312]])
    columns = checks.identity_columns(swapped, original, source)
    assert columns["id_frames_checked"] == 4 and columns["id_closer_to_original_frac"] == 0.25
    assert columns["id_sim_source"] == pytest.approx(np.median(swapped[:, 0]))
    config = load_augment_config().checks
    assert checks.identity_reasons(columns, config) == ["original_identity_kept"]  # 25 % > 10 %
    assert checks.identity_reasons(checks.identity_columns(np.zeros((0, 2)), np.zeros((0, 2)), source),
                                   config) == ["identity_unchecked"]


def test_mediapipe_openings_follow_a_talking_mouth(videos_dir, weights_root, monkeypatch):
    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(weights_root))
    path = videos_dir / "sadtalker_WDA_KatieHill_000.mp4"
    frames = [f for _, f in media.iter_frames(path, media.probe(path), start_s=0.0, duration_s=2.0, fps=5)]
    meter = checks.OpeningMeter("mediapipe")
    try:
        measured = meter.measure(frames)
    finally:
        meter.close()
    assert all(m is not None for m in measured)
    mouth, eyes = np.array(measured).T
    assert 0 <= mouth.min() and mouth.max() < 1.0 and mouth.std() > 0.02  # she speaks: the mouth moves
    assert 0.1 < np.median(eyes) < 0.5  # open eyes: a lid gap of a fifth to a half of the eye's width


def test_dwpose_openings_use_the_68_face_points(tmp_path):
    config = DWPoseConfig(detector_weights=make_detector(tmp_path / "det.onnx", "N"),
                          pose_weights=make_pose(tmp_path / "pose.onnx", "N"))
    meter = checks.OpeningMeter("dwpose", dwpose=config)
    frame = np.full((480, 640, 3), 120, np.uint8)
    mouth, eyes = meter.measure([frame])[0]
    # the tiny pose model's face: inner lips 8 px apart over 40, eyes 8 px over 26 (tests/tiny_dwpose.py)
    assert mouth == pytest.approx(8 / 40, abs=0.02) and eyes == pytest.approx(8 / 26, abs=0.02)
