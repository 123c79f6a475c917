"""DWPose through ONNX Runtime, head pose from 68 landmarks, and the paper profile's face scorer.

The DWPose tests run tiny ONNX models built here with onnx.helper in the real models' input/output contract:
a "detector" whose raw YOLOX output holds two persons at known letterbox boxes (plus a duplicate, a weak
person and a non-person that must all be dropped) and a "pose model" whose SimCC outputs peak at known bins.
Their only use of the pixels is the input's mean m: person B's objectness is m / 100 (so a dark frame has no
person B) and every SimCC peak is raised by m / 100 (so a keypoint's score says which crop it came from).
What is checked is the plumbing: letterbox and grid decoding, NMS, crops, batching and its order, SimCC
decoding and the mapping back to source pixels."""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from curation import dwpose, media, weights
from curation.config import load_config
from curation.errors import WeightsMissingError
from curation.headpose import _CV_TO_GL, MODEL_POINTS, POSE_INDICES, camera_matrix, head_pose
from curation.scorers.base import ClipSpan
from curation.scorers.face_dwpose import DWPoseFaceScorer
from tests.tiny_dwpose import (
    FACE_CROP,
    LOW_SCORE_FACE_POINTS,
    PERSON_A,
    PERSON_B,
    _anchor,
    make_detector,
    make_pose,
)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("tiny_dwpose")
    return {
        "dynamic": (make_detector(root / "det_dyn.onnx", "N"), make_pose(root / "pose_dyn.onnx", "N")),
        "fixed": (make_detector(root / "det_1.onnx", 1), make_pose(root / "pose_1.onnx", 1)),
        "fixed2": (make_detector(root / "det_2.onnx", 2), make_pose(root / "pose_2.onnx", 2)),  # filled up
    }


def expected_source(box_lb, crop_points: np.ndarray, ratio: float) -> np.ndarray:
    """Where the pose model's crop points land in a source frame letterboxed with ``ratio``, written out
    independently of curation.dwpose: pad the box 1.25x, widen it to 3:4, scale the crop back."""
    x0, y0, x1, y1 = box_lb
    w, h = (x1 - x0) * 1.25, (y1 - y0) * 1.25
    w, h = max(w, h * 0.75), max(h, w / 0.75)
    lb = np.stack([(x0 + x1) / 2 - w / 2 + crop_points[:, 0] * w / 288,
                   (y0 + y1) / 2 - h / 2 + crop_points[:, 1] * h / 384], axis=1)
    return lb / ratio


# -- (b) the pure pieces ------------------------------------------------------------------------------------------

def test_letterbox_keeps_aspect_top_left_with_grey_padding():
    image = np.full((100, 200, 3), 7, np.uint8)
    canvas, ratio = dwpose.letterbox(image, (640, 640))
    assert ratio == 3.2 and canvas.shape == (640, 640, 3)
    assert (canvas[:320] == 7).all() and (canvas[320:] == 114).all()
    tall, ratio = dwpose.letterbox(np.zeros((1280, 320, 3), np.uint8), (640, 640))
    assert ratio == 0.5 and (tall[:, :160] == 0).all() and (tall[:, 160:] == 114).all()


def test_yolox_grid_decode_and_nms():
    grid, strides = dwpose.yolox_grid((640, 640))
    assert grid.shape == (8400, 2) and strides[0, 0] == 8 and strides[-1, 0] == 32
    assert tuple(grid[6400 + 1600 + 5 * 20 + 6]) == (6, 5)  # stride 32, row 5, column 6
    raw = np.zeros((1, 8400, 85), np.float32)
    _anchor(raw, 32, PERSON_A, 0.9, 0, 0.95)
    _anchor(raw, 16, (104, 54, 304, 334), 0.8, 0, 0.9)
    _anchor(raw, 32, PERSON_B, 0.9, 0, 0.5)
    _anchor(raw, 8, (500, 500, 560, 560), 0.9, 2, 0.9)
    boxes, scores, classes = dwpose.decode_yolox(raw[0], grid, strides)
    best = int(np.argmax(scores))
    np.testing.assert_allclose(boxes[best], PERSON_A, atol=1e-3)
    assert scores[best] == pytest.approx(0.855) and classes[best] == 0
    found, found_scores = dwpose.person_boxes(raw[0], grid, strides, 0.5, score_min=0.3, iou_threshold=0.45)
    np.testing.assert_allclose(found, np.array([PERSON_A, PERSON_B]) / 0.5, atol=1e-2)  # dup and car dropped
    np.testing.assert_allclose(found_scores, [0.855, 0.45], atol=1e-6)
    keep = dwpose.nms(np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]]), np.array([0.5, 0.9, 0.1]), 0.45)
    assert keep.tolist() == [1, 2]


def test_crop_affine_and_its_inverse():
    centre, scale = dwpose.box_to_centre_scale(np.array([100, 50, 300, 330]), 288 / 384)
    np.testing.assert_allclose(centre, [200, 190])
    np.testing.assert_allclose(scale, [262.5, 350])  # 250 x 350 after padding, widened to 3:4
    image = np.zeros((400, 400, 3), np.uint8)
    image[120:124, 180:184] = 255  # a bright dot centred on (181.5, 121.5)
    crop = dwpose.pose_input(image, centre, scale, (288, 384))
    ys, xs = np.nonzero(crop[0] > 0)
    dot_crop = np.array([[xs.mean(), ys.mean()]])
    np.testing.assert_allclose(dwpose.crop_to_source(dot_crop, centre, scale, (288, 384))[0], [181.5, 121.5], atol=0.5)
    matrix = dwpose.crop_affine(centre, scale, (288, 384))
    np.testing.assert_allclose(matrix @ [68.75, 15, 1], [0, 0])  # the crop's corner
    assert crop.shape == (3, 384, 288) and crop[0, 0, 0] == pytest.approx(-123.675 / 58.395)


def test_simcc_decoding_and_mapping_back():
    simcc_x, simcc_y = np.zeros((2, 133, 576)), np.zeros((2, 133, 768))
    simcc_x[0, 5, 101], simcc_y[0, 5, 300] = 0.8, 0.6
    simcc_x[1, 40, 575], simcc_y[1, 40, 0] = 0.4, 0.9
    points, scores = dwpose.decode_simcc(simcc_x, simcc_y)
    assert points.shape == (2, 133, 2) and scores.shape == (2, 133)
    np.testing.assert_allclose(points[0, 5], [50.5, 150])
    np.testing.assert_allclose(points[1, 40], [287.5, 0])
    assert scores[0, 5] == pytest.approx(0.6) and scores[1, 40] == pytest.approx(0.4) and scores[0, 0] == 0
    source = dwpose.crop_to_source(points[0, 5], np.array([200.0, 190]), np.array([262.5, 350]), (288, 384))
    np.testing.assert_allclose(source, [68.75 + 50.5 * 262.5 / 288, 15 + 150 * 350 / 384])


# -- (a) the whole DWPose pipeline on the tiny models ---------------------------------------------------------------

# (h, w, grey level): different letterbox ratios; dark frames (mean under 33.3 after letterboxing) have no
# person B, so the persons of a batch are not the same on every frame. Person crops lie inside the frames.
FRAMES = ((768, 1280, 0), (480, 640, 255), (640, 640, 0), (1080, 1440, 255), (480, 640, 0))
IMAGENET_MEAN, IMAGENET_STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])


@pytest.mark.parametrize(("variant", "batch_size"), [("dynamic", 1), ("dynamic", 3), ("fixed", 4), ("fixed2", 4)])
def test_dwpose_recovers_boxes_and_keypoints_in_source_pixels(tiny_models, variant, batch_size):
    model = dwpose.DWPose(*tiny_models[variant], ["CPUExecutionProvider"], batch_size=batch_size)
    assert model.detector.fixed_batch == {"dynamic": None, "fixed": 1, "fixed2": 2}[variant]
    results = model([np.full((h, w, 3), grey, np.uint8) for h, w, grey in FRAMES])
    assert len(results) == len(FRAMES)
    for (h, w, grey), persons in zip(FRAMES, results, strict=True):
        ratio = min(640 / h, 640 / w)
        content = int(w * ratio) * int(h * ratio) / 640**2
        detector_mean = grey * content + 114 * (1 - content)
        expected = [(0.855, PERSON_A), (0.9 * detector_mean / 100, PERSON_B)]  # B's objectness is mean / 100
        expected = sorted((item for item in expected if item[0] > 0.3), key=lambda item: -item[0])
        assert len(persons) == len(expected)
        crop_mean = np.mean((grey - IMAGENET_MEAN) / IMAGENET_STD)
        for person, (box_score, box) in zip(persons, expected, strict=True):
            assert person.box_score == pytest.approx(box_score, rel=1e-2) and person.keypoints.shape == (133, 2)
            np.testing.assert_allclose(person.box, np.array(box) / ratio, atol=0.05)
            face = person.keypoints[dwpose.FACE_SLICE]
            np.testing.assert_allclose(face, expected_source(box, FACE_CROP, ratio), atol=0.01)
            assert person.scores[30] == pytest.approx(0.9 + crop_mean / 100, abs=1e-3)  # this crop's score
            assert person.scores[23] == pytest.approx(0.2 + crop_mean / 100, abs=1e-3)
    assert model([]) == []


def test_models_get_bgr_letterbox_and_normalised_rgb_crops(tiny_models, monkeypatch):
    model = dwpose.DWPose(*tiny_models["dynamic"], ["CPUExecutionProvider"])
    seen = {}

    def record(part: str) -> None:
        original = getattr(model, part).run

        def run(batch: np.ndarray, batch_size: int) -> list[np.ndarray]:
            seen[part] = batch
            return original(batch, batch_size)

        monkeypatch.setattr(getattr(model, part), "run", run)

    record("detector")
    record("pose")
    frame = np.zeros((320, 640, 3), np.uint8)
    frame[..., 0] = 200  # pure red
    model([frame])
    detector_input = seen["detector"]
    assert detector_input.shape == (1, 3, 640, 640) and detector_input.dtype == np.float32
    assert detector_input[0, :, 0, 0].tolist() == [0, 0, 200]  # BGR, 0-255, not normalised
    assert detector_input[0, :, 400, 0].tolist() == [114, 114, 114]  # padding below the image
    pose_input = seen["pose"]
    assert pose_input.shape == (2, 3, 384, 288)  # two persons, one call
    centre = pose_input[0, :, 192, 144]  # person A's crop centre lies inside the red image
    np.testing.assert_allclose(centre, (np.array([200, 0, 0]) - dwpose.POSE_MEAN) / dwpose.POSE_STD, rtol=1e-5)


# -- (c) head pose ----------------------------------------------------------------------------------------------------

def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    y, p, r = np.radians([yaw, pitch, roll])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rz @ ry @ rx


def _project(angles, size=(1280, 720), translation=(3.0, -2.0, 60.0)) -> np.ndarray:
    """68 landmarks (NaN except the pose points) of the generic model turned by ``angles``, seen by the
    pinhole camera headpose assumes."""
    model = np.array([MODEL_POINTS[i] for i in POSE_INDICES])
    rvec, _ = cv2.Rodrigues(_CV_TO_GL @ _rotation(*angles))
    projected, _ = cv2.projectPoints(model, rvec, np.array(translation), camera_matrix(*size), None)
    landmarks = np.full((68, 2), np.nan)
    landmarks[list(POSE_INDICES)] = projected[:, 0]
    return landmarks


@pytest.mark.parametrize("angles", [(0, 0, 0), (25, 0, 0), (-40, 10, 5), (55, -20, -15), (-10, 30, 25)])
def test_head_pose_recovers_known_rotations(angles):
    np.testing.assert_allclose(head_pose(_project(angles), (1280, 720)), angles, atol=1.0)


def test_head_pose_sign_convention_and_missing_points():
    turned = _project((30, 0, 0))
    # positive yaw: the nose moves towards the image's right, relative to the eyes
    assert turned[30, 0] - (turned[36, 0] + turned[45, 0]) / 2 > 0
    frontal = _project((0, 0, 0))
    down, ccw = _project((0, 20, 0)), _project((0, 0, 20))
    assert down[30, 1] - down[36, 1] > frontal[30, 1] - frontal[36, 1]  # pitch > 0: the nose drops (image y down)
    assert ccw[45, 1] < ccw[36, 1]  # roll > 0: counter-clockwise, the image-right eye rises
    scores = np.ones(68)
    scores[8] = 0.1
    assert head_pose(frontal, (1280, 720), scores, 0.3) is None
    assert head_pose(frontal, (1280, 720), scores, 0.05) is not None
    frontal[54] = np.nan
    assert head_pose(frontal, (1280, 720)) is None


# -- (d) the scorer end to end on real clips -------------------------------------------------------------------------

def _scorer(tiny_models, variant="dynamic", batch_size=4) -> DWPoseFaceScorer:
    detector, pose = tiny_models[variant]
    config = load_config(None, {"face.dwpose.detector_weights": str(detector), "face.dwpose.pose_weights": str(pose),
                                "face.dwpose.batch_size": batch_size})
    return DWPoseFaceScorer(config.face, device="cpu")


def _clip(videos_dir: Path, name: str, start: float, end: float) -> ClipSpan:
    path = str(videos_dir / name)
    return ClipSpan(path, start, end, media.probe(path))


@pytest.mark.parametrize("name", ["w2lgfpgan_kim_7s_raw.mp4", "mimictalk_German_20s.mp4"])
def test_scorer_fills_the_face_columns_in_source_pixels(tiny_models, videos_dir, name):
    clip = _clip(videos_dir, name, 0.0, 2.0)  # 1920x1080 decoded at 1280x720; 512x512 decoded as is
    width, height = clip.probe.width, clip.probe.height
    ratio = min(640 / width, 640 / height)
    counted = np.setdiff1d(np.arange(68), LOW_SCORE_FACE_POINTS)
    face = expected_source(PERSON_A, FACE_CROP, ratio)
    box = np.r_[face[counted].min(axis=0), face[counted].max(axis=0)]

    scorer = _scorer(tiny_models)
    row, reason, message = scorer.run(clip)
    assert reason is None, message
    assert set(row) <= {field.name for field in scorer.fields}
    assert row["face_frames_sampled"] == 10 and scorer.counters["frames_decoded"] == 10  # 2 s at 5 fps
    assert row["face_present_frac"] == 1.0 and row["face_count_max"] == 2 and row["multi_face_frac"] == 1.0
    assert row["face_res_px"] == pytest.approx(min(box[2] - box[0], box[3] - box[1]), abs=1.0)
    np.testing.assert_allclose(row["face_box"], box, atol=1.0)
    point = row["face_track"][0]
    np.testing.assert_allclose(point["mouth_box"], np.r_[face[48:68].min(axis=0), face[48:68].max(axis=0)], atol=1.0)
    eyes = face[np.r_[17:27, 36:48]]
    np.testing.assert_allclose(point["eyes_box"], np.r_[eyes.min(axis=0), eyes.max(axis=0)], atol=1.0)
    # A symmetric face left of the optical axis is turned towards the camera: positive yaw, about the angle of
    # the line of sight (the test layout is not exactly the generic 3D model, hence the tolerance).
    sight = math.degrees(math.atan2(width / 2 - face[30, 0], max(width, height)))
    assert sight > 5 and abs(row["pose_yaw_mean_deg"] - sight) < 2 and abs(row["pose_roll_mean_deg"]) < 2
    assert row["yaw_abs_mean_deg"] is not None and row["pose_pitch_mean_deg"] is not None
    assert scorer.models() == {"yolox_l": weights.sha256_file(tiny_models["dynamic"][0]),
                               "dw-ll_ucoco_384": weights.sha256_file(tiny_models["dynamic"][1])}


def test_scorer_counts_faces_by_their_points_and_agrees_across_batch_shapes(tiny_models, videos_dir):
    clip = _clip(videos_dir, "mimictalk_German_20s.mp4", 1.0, 2.4)  # 7 frames: batches of 3 leave a remainder
    dynamic, _, _ = _scorer(tiny_models, "dynamic", 3).run(clip)
    fixed, _, _ = _scorer(tiny_models, "fixed", 16).run(clip)
    assert dynamic == fixed and dynamic["face_frames_sampled"] == 7
    detector, pose = tiny_models["dynamic"]
    strict = load_config(None, {"face.dwpose.detector_weights": str(detector), "face.dwpose.pose_weights": str(pose),
                                "face.dwpose.face_points_min": 65})  # only 64 face points reach the score
    none, reason, _ = DWPoseFaceScorer(strict.face).run(clip)
    assert reason is None and none["face_present_frac"] == 0.0 and none["face_count_max"] == 0
    assert "face_res_px" not in none


# -- (e) the real weights, when they are there -------------------------------------------------------------------------

def _real_weights_or_skip() -> None:
    for name in ("yolox_l", "dw-ll_ucoco_384"):
        try:
            state, path = weights.status(name)
        except WeightsMissingError as error:
            pytest.skip(f"{name} is not in the weights registry: {error}")
        if state != "ok":
            pytest.skip(f"real DWPose weights not available: {path} is {state} "
                        f"(MEGACTOR_WEIGHTS_DIR={os.environ.get('MEGACTOR_WEIGHTS_DIR', '<default>')})")


def test_real_dwpose_finds_the_face_and_its_pose(videos_dir):
    _real_weights_or_skip()
    scorer = DWPoseFaceScorer(load_config().face)
    big, reason, message = scorer.run(_clip(videos_dir, "derived_katiehill_upscaled_1280.mp4", 0, 2))
    assert reason is None, message
    assert big["face_present_frac"] == 1.0 and big["face_count_max"] == 1
    assert 450 <= big["face_res_px"] <= 750  # MediaPipe: ~640 wide; the 68-point box has no forehead
    small, _, _ = scorer.run(_clip(videos_dir, "sadtalker_WDA_KatieHill_000.mp4", 0, 2))
    assert big["face_res_px"] / small["face_res_px"] == pytest.approx(2.5, rel=0.08)  # the 1280/512 upscale
    turned, _, _ = scorer.run(_clip(videos_dir, "pcavs_pose_517600055.mp4", 0, 4))
    frontal, _, _ = scorer.run(_clip(videos_dir, "mimictalk_German_20s.mp4", 0, 4))
    assert turned["yaw_abs_mean_deg"] > 12 > 8 > frontal["yaw_abs_mean_deg"]
    scorer.close()
