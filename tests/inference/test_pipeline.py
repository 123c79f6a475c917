"""The animation pipeline on a tiny model exported in the real format (safetensors + model.json), real shared
clips as reference, driving video and audio, and the project's face backend."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from curation.encode import AudioSpan
from curation.errors import ConfigError, NoFaceFoundError
from inference import driving as driving_module
from inference.driving import Driving, driving_inputs, driving_warps, frame_count
from inference.pipeline import AnimationPipeline, windows
from training.export import export_state, find_export, load_model

SPEAKER = "mimictalk_German_20s.mp4"
OTHER = "sadtalker_WDA_KatieHill_000.mp4"


def _tiny_state(seed: int = 0, *, ema_shift: float = 0.0) -> dict:
    from training.config import validate
    from training.model import MegActorModel, megactor_config

    config = validate({"stage": 3, "init_from": "x", "trains": ["temporal"], "data": {"resolution": 64},
                       "model": {"preset": "tiny", "use_audio": True, "use_temporal": True}})
    torch.manual_seed(seed)
    model = MegActorModel(megactor_config("tiny", use_audio=True, use_temporal=True))
    with torch.no_grad():  # the zero-initialised layers (audio, temporal outputs) made non-zero, so they matter
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.2)
    ema = {k: v + ema_shift for k, v in model.state_dict().items() if ".temporal." in k}
    return {"model": model.state_dict(), "ema": ema, "step": 7, "config": config.to_dict()}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return export_state(_tiny_state(), tmp_path_factory.mktemp("export") / "run" / "stage3" / "final")


@pytest.fixture(scope="module")
def pipeline(export_dir, weights_root):
    pipe = AnimationPipeline.from_pretrained(export_dir.parent.parent)  # a run's root finds its last stage
    yield pipe
    pipe.close()


@pytest.fixture(scope="module")
def reference(videos_dir, tmp_path_factory):
    from curation import media

    path = videos_dir / SPEAKER
    _, rgb = next(iter(media.iter_frames(path, media.probe(path), start_s=5.0, duration_s=0.1)))
    out = tmp_path_factory.mktemp("ref") / "reference.png"
    cv2.imwrite(str(out), rgb[:, :, ::-1])
    return out


def test_export_holds_the_ema_weights_and_loads_strictly(tmp_path):
    state = _tiny_state(ema_shift=0.5)
    folder = export_state(state, tmp_path / "final")
    model, meta = load_model(folder)
    loaded = model.state_dict()
    for name, value in state["model"].items():
        expected = state["ema"].get(name, value)
        assert torch.equal(loaded[name], expected), name
    assert meta["weights"] == "ema" and meta["step"] == 7 and meta["data"]["resolution"] == 64
    assert meta["model_config"]["num_layers"] == 4
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ConfigError, match="sha256"):
        load_model(folder)


def test_find_export_names_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match="no trained model"):
        find_export(tmp_path)
    (tmp_path / "final").mkdir()
    torch.save({"step": 1}, tmp_path / "final" / "state.pt")
    with pytest.raises(ConfigError, match="megactor export"):
        find_export(tmp_path)


def test_windows_cover_every_frame_and_overlap_by_half():
    assert windows(10, 16, temporal=True) == [(0, 10)]
    spans = windows(37, 16, temporal=True)
    assert spans[0] == (0, 16) and spans[-1] == (21, 37) and all(b - a == 16 for a, b in spans)
    covered = np.zeros(37, int)
    for a, b in spans:
        covered[a:b] += 1
    assert covered.min() >= 1 and spans[1][0] == 8
    assert windows(40, 16, temporal=False) == [(0, 16), (16, 32), (24, 40)]


def test_frame_count_never_cuts_the_audio():
    assert frame_count(1.3, None, 25.0) == 33 and frame_count(2.0, 10, 25.0) == 50
    assert frame_count(None, 78, 25.0) == 78
    with pytest.raises(ValueError):
        frame_count(None, None, 25.0)


def test_driving_extends_back_and_forth():
    frames = np.arange(4)[:, None, None, None] * np.ones((4, 2, 2, 3), np.uint8)
    masks = np.zeros((4, 2, 2), np.float32)
    longer = Driving(frames, masks, masks, None).extended(9)
    assert [int(f[0, 0, 0]) for f in longer.frames] == [0, 1, 2, 3, 2, 1, 0, 1, 2]


def _landmarked_driving(frames: int = 6, angle_step: float = 4.0) -> Driving:
    """A synthetic face whose landmarks rotate by ``angle_step`` degrees per frame about its centre."""
    rng = np.random.default_rng(0)
    base = rng.uniform(20, 44, size=(478, 2))
    centre = base[list(driving_module.RIGID_LANDMARKS)].mean(axis=0)
    marks, images = [], []
    for i in range(frames):
        m = cv2.getRotationMatrix2D(tuple(centre), angle_step * i, 1.0)
        marks.append(base @ m[:, :2].T + m[:, 2])
        image = np.zeros((64, 64, 3), np.uint8)
        cv2.ellipse(image, (32, 32), (14, 20), angle_step * i, 0, 360, (200, 150, 120), -1)
        images.append(image)
    ones = np.ones((frames, 64, 64), np.float32)
    return Driving(np.stack(images), ones, ones, np.stack(marks))


def _fitted_angle(src: np.ndarray, dst: np.ndarray) -> float:
    from inference.amplitude import fit_similarity

    m = fit_similarity(src, dst)
    return math.degrees(math.atan2(m[1, 0], m[0, 0]))


def test_alpha_one_returns_the_driving_frames_and_alpha_zero_freezes_the_pose():
    drive = _landmarked_driving()
    warps = driving_warps(drive, None, 1.0, align=False)
    pixels, driven, _ = driving_inputs(drive, warps, drive_eyes=True, drive_mouth=True)
    assert np.array_equal(pixels, drive.frames)  # everything driven, no warp: the frames themselves
    rigid = list(driving_module.RIGID_LANDMARKS)
    from inference.amplitude import transform_points

    frozen = driving_warps(drive, None, 0.0, align=False)
    for i in range(len(drive)):
        moved = transform_points(drive.landmarks[i][rigid], frozen[i])
        assert np.allclose(moved, drive.landmarks[0][rigid], atol=1e-6)
    angles = {}
    for alpha in (0.5, 1.0, 2.0):
        w = driving_warps(drive, None, alpha, align=False)
        angles[alpha] = _fitted_angle(drive.landmarks[0][rigid], transform_points(drive.landmarks[5][rigid], w[5]))
    assert angles[1.0] == pytest.approx(-20.0, abs=1e-6)  # cv2's positive angle turns the image clockwise
    assert angles[0.5] == pytest.approx(angles[1.0] / 2, abs=1e-6)
    assert angles[2.0] == pytest.approx(angles[1.0] * 2, abs=1e-6)


def test_the_pipeline_uses_the_training_crop_code():
    from curation import crops

    assert driving_module.decode_crops is crops.decode_crops and driving_module.box_masks is crops.box_masks
    assert driving_module.square_crop is crops.square_crop


def test_every_mode_makes_a_video_of_the_audio_length(pipeline, reference, videos_dir, tmp_path):
    from curation import media

    audio = AudioSpan(str(videos_dir / SPEAKER), 2.0, 1.0)
    for mode in ("visual", "audio", "mixed"):
        out = tmp_path / f"{mode}.mp4"
        animation = pipeline(reference, videos_dir / SPEAKER, audio, mode=mode, steps=2, visual_alpha=0.5,
                             output=out)
        assert animation.frames.shape == (25, 64, 64, 3)
        probe = media.probe(out)
        assert probe.has_audio and probe.width == 64
        frames = sum(1 for _ in media.iter_frames(out, probe, fps=25))
        assert frames == 25
        assert abs(probe.duration_s - 1.0) < 0.1


def test_without_audio_the_driving_video_sets_the_length(pipeline, reference, videos_dir):
    animation = pipeline(reference, videos_dir / "liveportrait_d0_noaudio.mp4", None, mode="visual", steps=1,
                         guidance=1.0)
    assert len(animation.frames) == 78  # 3.12 s at 25 fps
    assert animation.audio is None


def test_audio_scale_zero_is_the_audio_free_path(pipeline, reference, videos_dir):
    def run(source: str, scale: float) -> np.ndarray:
        return pipeline(reference, None, AudioSpan(str(videos_dir / source), 1.0, 0.4), mode="audio", steps=2,
                        audio_scale=scale).frames

    assert np.array_equal(run(SPEAKER, 0.0), run(OTHER, 0.0))  # nothing of the audio reaches the output
    assert not np.array_equal(run(SPEAKER, 1.0), run(OTHER, 1.0))


def test_a_per_frame_curve_and_the_settings_are_recorded(pipeline, reference, videos_dir, tmp_path):
    curve = tmp_path / "alpha.json"
    curve.write_text(json.dumps({"t": [0.0, 0.4], "value": [0.0, 1.5]}))
    animation = pipeline(reference, videos_dir / SPEAKER, AudioSpan(str(videos_dir / SPEAKER), 0.0, 0.4),
                         mode="mixed", steps=1, visual_alpha=curve, audio_scale=0.7)
    assert animation.settings["visual_alpha"] == str(curve) and animation.settings["audio_scale"] == 0.7
    assert animation.settings["weights"] == "ema" and animation.seconds_per_frame > 0


def test_bad_inputs_are_clear_errors(pipeline, reference, videos_dir, tmp_path):
    with pytest.raises(ConfigError, match="needs a driving video"):
        pipeline(reference, None, AudioSpan(str(videos_dir / SPEAKER), 0.0, 0.4), mode="mixed")
    with pytest.raises(ConfigError, match="needs an audio track"):
        pipeline(reference, videos_dir / SPEAKER, None, mode="audio")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((128, 128, 3), 127, np.uint8))
    with pytest.raises(NoFaceFoundError):
        pipeline(blank, None, AudioSpan(str(videos_dir / SPEAKER), 0.0, 0.4), mode="audio")
    with pytest.raises(ConfigError, match="visual_alpha"):
        pipeline(reference, videos_dir / SPEAKER, None, mode="visual", visual_alpha=tmp_path / "missing.txt")
