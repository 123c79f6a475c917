"""Face swap on InsightFace's contract: real SCRFD (scrfd_500m_bnkps.onnx from ../shared) on the shared clips, tiny
ArcFace-shaped and inswapper-shaped ONNX models in the real I/O contracts (tests/tiny_insightface.py)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from curation import media
from curation.augment import checks
from curation.augment.config import load_augment_config
from curation.augment.faceswap import FaceSwapper, fill_and_smooth, follow_face, swap_region
from tests import tiny_insightface

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-image's estimate(), inside face_align
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-insightface")
    return {"arcface": tiny_insightface.arcface(folder / "arcface.onnx"),
            "colour": tiny_insightface.swapper(folder / "colour.onnx", "colour"),
            "mirror": tiny_insightface.swapper(folder / "mirror.onnx", "mirror"),
            "folder": folder}


def _swapper(tiny_models, weights_root, monkeypatch, swapper: str = "colour") -> FaceSwapper:
    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(weights_root))  # the real scrfd_500m_bnkps.onnx
    config = load_augment_config(None, {"faceswap.detector": "scrfd_500m",
                                        "faceswap.embedder_weights": str(tiny_models["arcface"]),
                                        "faceswap.swapper_weights": str(tiny_models[swapper])}).faceswap
    made = FaceSwapper(config)
    made.ensure_setup()
    return made


@pytest.fixture(scope="module")
def katie(videos_dir):
    path = videos_dir / "sadtalker_WDA_KatieHill_000.mp4"
    return [f for _, f in media.iter_frames(path, media.probe(path), start_s=0.0, duration_s=1.0, fps=25)]


@pytest.fixture(scope="module")
def anchor_face(videos_dir):
    path = videos_dir / "mimictalk_German_20s.mp4"
    return next(iter(media.iter_frames(path, media.probe(path), start_s=1.0, duration_s=0.04, fps=25)))[1]


def test_real_scrfd_finds_five_keypoints_that_align_to_arcfaces_template(tiny_models, weights_root, monkeypatch,
                                                                          katie):
    from insightface.utils import face_align

    swapper = _swapper(tiny_models, weights_root, monkeypatch)
    boxes, kps = swapper.detect(katie[0])
    assert len(boxes) == 1 and boxes[0, 4] > 0.5
    x0, y0, x1, y1 = boxes[0, :4]
    assert 100 < x0 < x1 < 420 and 50 < y0 < y1 < 480  # the face of this 512 px clip (~250 x 360 px)
    assert ((kps[0] >= [x0, y0]) & (kps[0] <= [x1, y1])).all()
    assert kps[0, 0, 0] < kps[0, 1, 0] and kps[0, 3, 0] < kps[0, 4, 0]  # eyes and mouth corners, left to right
    assert kps[0, 0, 1] < kps[0, 2, 1] < kps[0, 3, 1]  # eye above nose above mouth
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        matrix = face_align.estimate_norm(kps[0], 112)
    aligned = np.c_[kps[0], np.ones(5)] @ matrix.T
    assert np.abs(aligned - ARCFACE_TEMPLATE).max() < 6  # a similarity transform puts the five points on it
    face = swapper.aligned(katie[0], kps[0])
    assert face.shape == (112, 112, 3)


def test_detection_gaps_are_interpolated_short_and_counted_long():
    n = 40
    kps = np.stack([np.full((5, 2), float(i)) for i in range(n)])
    kps[10:12] = np.nan  # 2-frame gap: interpolated
    kps[20:30] = np.nan  # 10-frame gap: left unswappable
    kps[:1] = np.nan  # a miss at the start: held from the first detection
    track = fill_and_smooth(kps, max_gap=3, window=1)
    assert track.interpolated[10:12].all() and track.interpolated[0]
    np.testing.assert_allclose(track.kps[10:12, 0, 0], [10.0, 11.0])  # on the line between frames 9 and 12
    assert (~track.swappable).sum() == 10 and not track.swappable[20:30].any()
    assert track.detected.sum() == n - 13


def test_smoothing_removes_detector_jitter_without_lag():
    rng = np.random.default_rng(0)
    n = 100
    truth = np.stack([np.full((5, 2), 100.0 + i) for i in range(n)])  # steady motion, 1 px per frame
    noisy = truth + rng.normal(0, 2.0, truth.shape)
    track = fill_and_smooth(noisy, max_gap=3, window=5)
    inner = slice(5, n - 5)
    assert np.abs(track.kps[inner] - truth[inner]).mean() < 0.6 * np.abs(noisy[inner] - truth[inner]).mean()
    assert abs((track.kps[inner] - truth[inner]).mean()) < 0.3  # centred: no lag behind the motion


def test_the_followed_face_is_the_one_that_overlaps():
    def det(box, kp):
        return np.array([[*box, 0.9]]), np.full((1, 5, 2), kp, dtype=float)

    big, small = [0, 0, 100, 100], [200, 200, 230, 230]
    both = (np.array([[*small, 0.9], [*big, 0.9]]), np.stack([np.full((5, 2), 2.0), np.full((5, 2), 1.0)]))
    kps = follow_face([det(big, 1.0), both, det(small, 2.0)])
    assert kps[0, 0, 0] == 1.0 and kps[1, 0, 0] == 1.0  # the largest first, then the one that overlaps it
    assert np.isnan(kps[2, 0, 0])  # a face elsewhere is not the speaker jumping there


def test_the_chosen_identity_is_what_reaches_the_swapper(tiny_models, weights_root, monkeypatch, katie,
                                                         anchor_face):
    swapper = _swapper(tiny_models, weights_root, monkeypatch, "colour")
    track = swapper.track(katie[:10], fps=25)
    frame, kps = katie[5], track.kps[5]
    identities = [swapper.identity(anchor_face)[0], swapper.identity(katie[0])[0]]
    nose = tuple(int(v) for v in kps[2])
    painted = []
    for source in identities:
        out = swapper.swap(frame, kps, source)
        painted.append(out[nose[1], nose[0]].astype(float))
        np.testing.assert_allclose(painted[-1], tiny_insightface.expected_colour(source), atol=2)
    assert np.abs(painted[0] - painted[1]).max() > 20  # another identity, another face


def test_paste_back_touches_only_the_face_region_and_equals_insightfaces_own(tiny_models, weights_root,
                                                                            monkeypatch, katie, anchor_face):
    swapper = _swapper(tiny_models, weights_root, monkeypatch, "colour")
    kps = swapper.track(katie[:3], fps=25).kps[1]
    source = swapper.identity(anchor_face)[0]
    out = swapper.swap(katie[1], kps, source)
    changed = (out != katie[1]).any(axis=2)
    x0, y0, x1, y1 = swap_region(kps, katie[1].shape[1], katie[1].shape[0])
    outside = np.ones_like(changed)
    outside[y0:y1, x0:x1] = False
    assert changed.sum() > 5000 and not changed[outside].any()
    # and within the region, only inside the aligned face's own 128 px square mapped back into the frame
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from insightface.utils import face_align

        inverse = cv2.invertAffineTransform(face_align.estimate_norm(kps.astype(np.float32), 128))
    square = cv2.warpAffine(np.ones((128, 128), np.uint8), inverse, changed.shape[::-1]) > 0
    distance = cv2.distanceTransform((~square).astype(np.uint8), cv2.DIST_L2, 5)
    assert distance[changed].max() <= 4  # the mask's blur reaches a few pixels past its edge, no further
    strong = (np.abs(out.astype(int) - katie[1]) > 10).any(axis=2)
    rim = square & (cv2.distanceTransform(square.astype(np.uint8), cv2.DIST_L2, 5) < 6)
    assert strong[rim].mean() < 0.05  # eroded and feathered: the square's rim keeps the original
    whole = swapper.swapper.get(np.ascontiguousarray(katie[1][..., ::-1]), SimpleNamespace(kps=kps.astype(np.float32)),
                                SimpleNamespace(normed_embedding=source), paste_back=True)[..., ::-1]
    assert np.array_equal(whole, out)  # the region shortcut is InsightFace's paste-back, pixel for pixel


def _identity_check(swapper: FaceSwapper, frames, source) -> dict:
    track = swapper.track(frames, fps=25)
    swapped, original = [], []
    for frame, kps in zip(frames, track.kps, strict=True):
        out = swapper.swap(frame, kps, source)
        swapped.append(swapper.aligned(out, kps))
        original.append(swapper.aligned(frame, kps))
    return checks.identity_columns(swapper.embed(swapped), swapper.embed(original), source)


def test_identity_check_rejects_a_swap_that_keeps_the_original_and_accepts_one_that_gives_the_source(
        tiny_models, weights_root, monkeypatch, katie, anchor_face):
    config = load_augment_config().checks
    mirror = _swapper(tiny_models, weights_root, monkeypatch, "mirror")
    source = mirror.identity(anchor_face)[0]
    kept = _identity_check(mirror, katie[:8], source)
    assert kept["id_sim_original"] > 0.99 and kept["id_closer_to_original_frac"] == 1.0
    assert "original_identity_kept" in checks.identity_reasons(kept, config)
    # a swapper that returns the source's own aligned face: what a working swap does
    boxes, kps = mirror.detect(anchor_face)
    source_face = mirror.aligned(anchor_face, kps[0], 128)[..., ::-1]  # RGB 128 px, the swapper's geometry
    constant = tiny_insightface.swapper(tiny_models["folder"] / "constant.onnx", "constant", face=source_face)
    monkeypatch.setitem(tiny_models, "constant", constant)
    working = _swapper(tiny_models, weights_root, monkeypatch, "constant")
    given = _identity_check(working, katie[:8], source)
    assert given["id_sim_source"] > 0.6 and given["id_closer_to_original_frac"] == 0.0
    assert checks.identity_reasons(given, config) == []
