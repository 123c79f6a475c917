"""Visual amplitude adjustment (inference.amplitude): similarity fit, α-scaled warps, frame warping, α curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.amplitude import (
    Similarity,
    amplitude_warps,
    compose,
    fit_similarity,
    invert,
    load_curve,
    scale_similarity,
    transform_points,
    warp_frames,
)

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

# Known per-frame head motion about the landmark centroid: (angle rad, scale, tx, ty); frame 0 is the rest pose.
MOTIONS = [(0.0, 1.0, 0.0, 0.0), (0.20, 1.10, 6.0, -4.0), (-0.15, 0.92, -8.0, 3.0), (0.35, 1.05, 2.0, 10.0)]


def _face_points(n: int = 20, seed: int = 0) -> np.ndarray:
    """Points on and inside an upright face ellipse centred at (160, 120), like a sparse landmark set."""
    rng = np.random.default_rng(seed)
    phi = rng.uniform(0, 2 * np.pi, n)
    radius = rng.uniform(0.3, 1.0, n)
    return np.stack([160 + 45 * radius * np.cos(phi), 120 + 60 * radius * np.sin(phi)], axis=1)


def _apply_motion(points: np.ndarray, angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    centre = points.mean(axis=0)
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s], [s, c]])
    return scale * (points - centre) @ rotation.T + centre + np.array([tx, ty])


def _landmark_video(noise: float = 0.05, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rest = _face_points()
    frames = [rest] + [
        _apply_motion(rest, *motion) + rng.normal(0, noise, rest.shape) for motion in MOTIONS[1:]
    ]
    return np.stack(frames)


def _umeyama_reference(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Umeyama (1991) via SVD with the reflection fix, written independently of the complex-number solution."""
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    covariance = (xd * w[:, None]).T @ xs
    u, d, vt = np.linalg.svd(covariance)
    fix = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rotation = u @ fix @ vt
    scale = np.trace(np.diag(d) @ fix) / (w @ (xs**2).sum(axis=1))
    translation = mu_d - scale * rotation @ mu_s
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


# --- fit_similarity ----------------------------------------------------------------------------------------------


def test_fit_similarity_recovers_a_known_similarity_from_noisy_points():
    rng = np.random.default_rng(3)
    src = _face_points(40)
    truth = Similarity(scale=1.3, angle=0.4, tx=12.0, ty=-7.0, centre=tuple(src.mean(axis=0)))
    dst = transform_points(src, truth.matrix()) + rng.normal(0, 0.1, src.shape)
    fitted = Similarity.from_matrix(fit_similarity(src, dst), truth.centre)
    assert fitted.angle == pytest.approx(0.4, abs=2e-3)
    assert fitted.scale == pytest.approx(1.3, rel=2e-3)
    assert (fitted.tx, fitted.ty) == pytest.approx((12.0, -7.0), abs=0.1)
    exact = fit_similarity(src, transform_points(src, truth.matrix()))
    np.testing.assert_allclose(exact, truth.matrix(), atol=1e-9)


def test_fit_similarity_matches_weighted_umeyama():
    rng = np.random.default_rng(4)
    src = rng.normal(0, 30, (15, 2))
    dst = rng.normal(0, 30, (15, 2))  # unrelated points: the least-squares optimum is non-trivial
    weights = rng.uniform(0.1, 2.0, 15)
    np.testing.assert_allclose(
        fit_similarity(src, dst, weights), _umeyama_reference(src, dst, weights), atol=1e-9
    )
    np.testing.assert_allclose(fit_similarity(src, dst), _umeyama_reference(src, dst, np.ones(15)), atol=1e-9)


def test_fit_of_a_mirrored_point_set_is_a_rotation_not_a_flip():
    src = _face_points(20, seed=5)
    mirrored = src * np.array([-1.0, 1.0])
    linear = fit_similarity(src, mirrored)[:, :2]
    assert np.linalg.det(linear) > 0
    assert linear[0, 0] == pytest.approx(linear[1, 1])
    assert linear[0, 1] == pytest.approx(-linear[1, 0])
    # A flip would fit perfectly; the best rotation cannot, so it must be a worse fit than the reflection.
    residual = np.abs(transform_points(src, fit_similarity(src, mirrored)) - mirrored).max()
    assert residual > 1.0


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        (np.ones((5, 2)), np.random.default_rng(0).normal(size=(5, 2)), "coincide"),
        (np.random.default_rng(0).normal(size=(5, 2)), np.full((5, 2), 3.0), "coincide"),
        (np.array([[0.0, 0.0], [np.nan, 1.0]]), np.zeros((2, 2)), "finite"),
        (np.zeros((1, 2)), np.zeros((1, 2)), "at least 2"),
        (np.zeros((3, 2)), np.zeros((4, 2)), "shape"),
    ],
)
def test_fit_similarity_rejects_degenerate_input(src, dst, message):
    with pytest.raises(ValueError, match=message):
        fit_similarity(src, dst)


# --- affine helpers and the decomposition -----------------------------------------------------------------------


def test_compose_applies_the_right_operand_first_and_invert_undoes():
    rng = np.random.default_rng(6)
    a = np.array([[1.2, -0.3, 5.0], [0.4, 0.9, -2.0]])
    b = np.array([[0.8, 0.1, -1.0], [-0.2, 1.1, 3.0]])
    points = rng.normal(0, 50, (10, 2))
    np.testing.assert_allclose(
        transform_points(points, compose(a, b)), transform_points(transform_points(points, b), a), atol=1e-9
    )
    np.testing.assert_allclose(compose(a, invert(a)), IDENTITY, atol=1e-12)
    np.testing.assert_allclose(compose(invert(a), a), IDENTITY, atol=1e-12)
    with pytest.raises(ValueError, match="singular"):
        invert(np.zeros((2, 3)))


def test_similarity_rotates_about_its_centre_and_round_trips():
    sim = Similarity(scale=1.5, angle=0.7, tx=0.0, ty=0.0, centre=(160.0, 120.0))
    np.testing.assert_allclose(transform_points(np.array([160.0, 120.0]), sim.matrix()), [160.0, 120.0])
    moved = Similarity(scale=0.8, angle=-1.1, tx=3.0, ty=-9.0, centre=(40.0, 70.0))
    back = Similarity.from_matrix(moved.matrix(), moved.centre)
    assert (back.scale, back.angle, back.tx, back.ty) == pytest.approx((0.8, -1.1, 3.0, -9.0))
    # The translation is the displacement of the centre, whatever the rotation.
    np.testing.assert_allclose(transform_points(np.array([40.0, 70.0]), moved.matrix()), [43.0, 61.0])


def test_scale_similarity_scales_angle_and_translation_linearly_and_scale_geometrically():
    sim = Similarity(scale=1.21, angle=0.3, tx=4.0, ty=-2.0, centre=(1.0, 2.0))
    half = scale_similarity(sim, 0.5)
    assert (half.scale, half.angle, half.tx, half.ty) == pytest.approx((1.1, 0.15, 2.0, -1.0))
    assert half.centre == (1.0, 2.0)
    np.testing.assert_allclose(scale_similarity(sim, 0.0).matrix(), IDENTITY, atol=1e-12)
    np.testing.assert_allclose(scale_similarity(sim, 1.0).matrix(), sim.matrix(), atol=1e-12)


# --- amplitude_warps ---------------------------------------------------------------------------------------------


def test_alpha_one_gives_identity_warps():
    warps = amplitude_warps(_landmark_video(), 1.0)
    assert warps.shape == (len(MOTIONS), 2, 3)
    assert np.array_equal(warps, np.broadcast_to(IDENTITY, warps.shape))


def test_alpha_zero_brings_every_frame_back_to_frame_zero_pose():
    landmarks = _landmark_video()
    warps = amplitude_warps(landmarks, 0.0)
    for i in range(len(landmarks)):
        back = transform_points(landmarks[i], warps[i])
        np.testing.assert_allclose(fit_similarity(landmarks[0], back), IDENTITY, atol=2e-3)
        assert np.abs(back - landmarks[0]).max() < 0.3  # within the landmark noise
        np.testing.assert_allclose(warps[i], invert(fit_similarity(landmarks[0], landmarks[i])), atol=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.5, 2.0])
def test_warped_motion_is_alpha_times_the_driving_motion(alpha):
    landmarks = _landmark_video()
    centre = tuple(landmarks[0].mean(axis=0))
    warps = amplitude_warps(landmarks, alpha)
    for i, (angle, scale, tx, ty) in enumerate(MOTIONS):
        warped = transform_points(landmarks[i], warps[i])
        motion = Similarity.from_matrix(fit_similarity(landmarks[0], warped), centre)
        assert motion.angle == pytest.approx(alpha * angle, abs=2e-3)
        assert motion.scale == pytest.approx(scale**alpha, rel=2e-3)
        assert (motion.tx, motion.ty) == pytest.approx((alpha * tx, alpha * ty), abs=0.1)


def test_per_frame_alpha_curve_applies_each_frames_own_alpha():
    landmarks = _landmark_video()
    alphas = np.array([0.0, 1.0, 0.5, 2.0])
    warps = amplitude_warps(landmarks, alphas)
    for i, alpha in enumerate(alphas):
        np.testing.assert_allclose(warps[i], amplitude_warps(landmarks, float(alpha))[i], atol=1e-12)
    assert np.array_equal(warps[1], IDENTITY)
    centre = tuple(landmarks[0].mean(axis=0))
    motion = Similarity.from_matrix(
        fit_similarity(landmarks[0], transform_points(landmarks[3], warps[3])), centre
    )
    assert motion.angle == pytest.approx(2 * MOTIONS[3][0], abs=3e-3)
    with pytest.raises(ValueError, match="alpha"):
        amplitude_warps(landmarks, np.ones(3))


def test_frames_without_landmarks_reuse_the_nearest_valid_frames_motion():
    base = _landmark_video()
    landmarks = np.concatenate([base, base[1:3]])  # six frames
    missing = landmarks.copy()
    missing[[3, 4]] = np.nan  # frame 3 is nearest to 2, frame 4 to 5
    alphas = np.array([0.0, 0.5, 0.5, 0.7, 1.3, 0.5])
    warps = amplitude_warps(missing, alphas)
    filled = landmarks.copy()
    filled[3], filled[4] = landmarks[2], landmarks[5]
    np.testing.assert_allclose(warps, amplitude_warps(filled, alphas), atol=1e-12)
    # The valid mask drops frames the same way as NaN landmarks do.
    masked = amplitude_warps(landmarks, alphas, valid=np.array([True, True, True, False, False, True]))
    np.testing.assert_allclose(masked, warps, atol=1e-12)
    # A tie goes to the earlier frame.
    tied = landmarks.copy()
    tied[2] = np.nan  # equidistant from 1 and 3
    expected = landmarks.copy()
    expected[2] = landmarks[1]
    np.testing.assert_allclose(amplitude_warps(tied, 0.0)[2], amplitude_warps(expected, 0.0)[2], atol=1e-12)


def test_the_first_frame_with_landmarks_anchors_when_frame_zero_has_none():
    landmarks = _landmark_video()
    landmarks[0] = np.nan
    warps = amplitude_warps(landmarks, 0.0)
    # Frame 0 reuses frame 1's motion, which is the anchor's own: the identity.
    np.testing.assert_allclose(warps[0], IDENTITY, atol=1e-9)
    np.testing.assert_allclose(warps[1], IDENTITY, atol=1e-9)
    back = transform_points(landmarks[2], warps[2])
    assert np.abs(back - landmarks[1]).max() < 0.3
    with pytest.raises(ValueError, match="no frame has landmarks"):
        amplitude_warps(np.full((3, 5, 2), np.nan), 0.5)


# --- warp_frames -------------------------------------------------------------------------------------------------


def _drawn_face() -> tuple[np.ndarray, np.ndarray]:
    """A 240x320 face of ellipses (smoothed, so bilinear resampling is accurate) and its landmark points."""
    image = np.full((240, 320, 3), 40, np.uint8)
    cv2.ellipse(image, (160, 120), (60, 80), 0, 0, 360, (180, 160, 140), -1)
    cv2.ellipse(image, (135, 100), (12, 7), 0, 0, 360, (30, 30, 90), -1)
    cv2.ellipse(image, (185, 100), (12, 7), 0, 0, 360, (30, 30, 90), -1)
    cv2.ellipse(image, (160, 125), (5, 14), 0, 0, 360, (120, 100, 90), -1)
    cv2.ellipse(image, (160, 160), (25, 8), 0, 0, 360, (40, 40, 160), -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.5)
    points = np.array(
        [[135, 100], [185, 100], [123, 100], [147, 100], [173, 100], [197, 100], [160, 125], [160, 111],
         [135, 160], [185, 160], [160, 152], [160, 168], [100, 120], [220, 120], [160, 40], [160, 200]],
        dtype=np.float64,
    )  # fmt: skip
    return image, points


def test_alpha_one_returns_frames_bit_identical():
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, (len(MOTIONS), 48, 64, 3), dtype=np.uint8)
    out = warp_frames(frames, amplitude_warps(_landmark_video(), 1.0))
    assert out.dtype == np.uint8 and np.array_equal(out, frames)
    gray = rng.random((2, 48, 64), dtype=np.float32)
    assert np.array_equal(warp_frames(gray, np.stack([IDENTITY, IDENTITY])), gray)


def test_identity_warps_skip_the_resample(monkeypatch: pytest.MonkeyPatch):
    calls = []
    monkeypatch.setattr(cv2, "warpAffine", lambda *args, **kwargs: calls.append(args) or args[0])
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    near_identity = IDENTITY + 1e-13  # float rounding from composing a motion with its inverse
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])
    warp_frames(frames, np.stack([IDENTITY, near_identity, shift]))
    assert len(calls) == 1


def test_alpha_zero_undoes_a_cv2_rotation():
    face, points = _drawn_face()
    motion = cv2.getRotationMatrix2D((160.0, 120.0), 12.0, 1.08)
    motion[:, 2] += (6.0, -4.0)
    moved = cv2.warpAffine(face, motion, (320, 240), flags=cv2.INTER_LINEAR, borderValue=(40, 40, 40))
    frames = np.stack([face, moved])
    landmarks = np.stack([points, transform_points(points, motion)])
    out = warp_frames(frames, amplitude_warps(landmarks, 0.0), border_value=40)
    interior = (slice(50, 190), slice(90, 230))
    before = np.abs(moved[interior].astype(float) - face[interior]).mean()
    after = np.abs(out[1][interior].astype(float) - face[interior]).mean()
    assert before > 10  # the rotation is visible...
    assert after < 1.5  # ...and undone up to resampling blur
    assert np.array_equal(out[0], face)


def test_warp_frames_keeps_single_channel_and_float_layouts():
    face, _ = _drawn_face()
    shift = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]])
    gray = face[None, :, :, :1].astype(np.float32) / 255
    out = warp_frames(gray, shift[None])
    assert out.shape == gray.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 52:100, 53:100, 0], gray[0, 54:102, 50:97, 0], atol=1e-6)
    with pytest.raises(ValueError, match="warps must have shape"):
        warp_frames(gray, np.stack([shift, shift]))


# --- load_curve --------------------------------------------------------------------------------------------------


def test_load_curve_constants():
    np.testing.assert_array_equal(load_curve(1.5, 4, 25.0), [1.5] * 4)
    np.testing.assert_array_equal(load_curve("0.5", 3, 25.0), [0.5] * 3)
    assert load_curve(2, 2, 25.0).dtype == np.float64


def test_load_curve_per_frame_text_and_json(tmp_path: Path):
    txt = tmp_path / "alpha.txt"
    txt.write_text("# amplitude per frame\n0\n0.5\n\n1\n2\n")
    np.testing.assert_array_equal(load_curve(txt, 4, 25.0), [0.0, 0.5, 1.0, 2.0])
    listed = tmp_path / "alpha.json"
    listed.write_text(json.dumps([1, 1.5, 0]))
    np.testing.assert_array_equal(load_curve(str(listed), 3, 25.0), [1.0, 1.5, 0.0])


def test_load_curve_timed_curves_interpolate_and_hold(tmp_path: Path):
    csv = tmp_path / "alpha.csv"
    csv.write_text("t,value\n0.1,0\n0.3,2\n")
    # Frames at 0, 0.1, 0.2, 0.3, 0.4, 0.5 s: held at 0 before 0.1 s, linear to 2 at 0.3 s, then held.
    np.testing.assert_allclose(load_curve(csv, 6, 10.0), [0, 0, 1, 2, 2, 2], atol=1e-12)
    timed = tmp_path / "timed.json"
    timed.write_text(json.dumps({"t": [0, 1], "value": [1, 3]}))
    np.testing.assert_allclose(load_curve(timed, 5, 4.0), [1, 1.5, 2, 2.5, 3])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("short.txt", "1\n1\n", "2 per-frame values for 3 frames"),
        ("nan.txt", "1\nnan\n1\n", "finite"),
        ("negative.csv", "1\n-0.5\n1\n", "non-negative"),
        ("word.txt", "1\nfast\n1\n", "not a number"),
        ("two_columns.csv", "1,2\n1,2\n1,2\n", "one value per line"),
        ("unsorted.csv", "t,value\n1,1\n0.5,1\n", "increasing"),
        ("bad.json", "[1, 2,", "invalid JSON"),
        ("short.json", "[1]", "1 per-frame values"),
        ("mismatch.json", '{"t": [0, 1], "value": [1]}', "'t' has 2 entries"),
        ("strings.json", '["1", "2", "3"]', "list of numbers"),
        ("empty.txt", "\n\n", "empty"),
        ("curve.yaml", "1", "must be a .txt, .csv or .json"),
    ],
)
def test_load_curve_errors_are_clear(tmp_path: Path, name: str, content: str, message: str):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_curve(path, 3, 25.0)


def test_load_curve_rejects_bad_constants_and_missing_files(tmp_path: Path):
    with pytest.raises(ValueError, match="non-negative"):
        load_curve(-1.0, 3, 25.0)
    with pytest.raises(ValueError, match="finite"):
        load_curve("nan", 3, 25.0)
    with pytest.raises(ValueError, match="cannot read"):
        load_curve(tmp_path / "missing.txt", 3, 25.0)
    with pytest.raises(ValueError, match="fps"):
        load_curve(1.0, 3, 0.0)
