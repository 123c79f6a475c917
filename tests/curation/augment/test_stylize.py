"""The stylizer through a tiny but real diffusers img2img folder (random weights, SD-Turbo's layout and scheduler),
on real talking-head frames; the flicker meter on synthetic arrays."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from curation import media
from curation.augment.config import load_augment_config
from curation.augment.stylize import Stylizer, cut_crop, paste_crop
from curation.crops import square_crop
from curation.errors import MissingDependencyError, WeightsMissingError
from metrics.temporal import FlickerMeter

CLIP = "sadtalker_WDA_KatieHill_000.mp4"  # 512x512, 25 fps, face box about x 130..380, y 90..450
FACE_BOX = [130.0, 90.0, 380.0, 450.0]
RESOLUTION = 64
PROMPT = "an anime-style portrait of the same person"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    from tests.tiny_diffusers import build_tiny_img2img

    return build_tiny_img2img(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="module")
def clip_frames(videos_dir: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """16 consecutive frames (0.64 s at 25 fps) of a shared clip and its face-centred square crop."""
    path = videos_dir / CLIP
    probe = media.probe(path)
    frames = np.stack([frame for _, frame in media.iter_frames(path, probe, start_s=1.0, duration_s=0.64, fps=25)])
    crop = square_crop([{"box": FACE_BOX}], None, probe.width, probe.height, crop_scale=1.2)
    return frames, crop


@pytest.fixture(scope="module")
def face_crops(clip_frames) -> list[np.ndarray]:
    frames, crop = clip_frames
    return [cut_crop(frame, crop, RESOLUTION) for frame in frames]


def make_stylizer(folder: Path, **overrides: Any) -> Stylizer:
    settings = {"stylize.model_dir": str(folder), "stylize.resolution": RESOLUTION, "stylize.batch_size": 4}
    settings.update({f"stylize.{key}": value for key, value in overrides.items()})
    stylizer = Stylizer(load_augment_config(None, settings).stylize)
    stylizer.setup()
    return stylizer


def run(stylizer: Stylizer, crops: list[np.ndarray], seed: int = 7) -> np.ndarray:
    return np.stack(stylizer.clip(PROMPT, seed)(crops)).astype(np.int16)


# -- the stylizer ------------------------------------------------------------------------------------------------

def test_tiny_pipeline_loads_and_keeps_count_shape_and_order(tiny_folder, face_crops):
    stylizer = make_stylizer(tiny_folder)
    out = stylizer.clip(PROMPT, 1)(face_crops[:6])
    assert len(out) == 6
    assert all(o.shape == (RESOLUTION, RESOLUTION, 3) and o.dtype == np.uint8 for o in out)
    assert type(stylizer.pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert stylizer.pipe.scheduler.config.timestep_spacing == "trailing"
    # default recipe: 2 steps x strength 0.5 = one UNet pass per frame
    assert stylizer.counters["frames"] == 6 and stylizer.counters["unet_passes"] == 6
    assert stylizer.clip(PROMPT, 1)([]) == []
    assert set(stylizer.models()) == {"sd-turbo"} and len(stylizer.models()["sd-turbo"]) == 64


def test_same_seed_same_output_other_seed_other_output(tiny_folder, face_crops):
    stylizer = make_stylizer(tiny_folder)
    first, again = run(stylizer, face_crops[:5], seed=3), run(stylizer, face_crops[:5], seed=3)
    assert np.array_equal(first, again)
    assert np.abs(first - run(stylizer, face_crops[:5], seed=4)).mean() > 1.0


@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"])
def test_shared_noise_gives_every_frame_the_same_noise(tiny_folder, face_crops, scheduler):
    """The same crop five times, over three batches: with one generator per frame all seeded alike, every frame
    gets the same VAE sample, initial noise and (ancestral) per-step noise, so the outputs are equal (up to a
    rounding step: batches of other sizes take other float summation orders)."""
    import diffusers

    outputs = {}
    for shared in (True, False):
        # 4 x 0.5: two denoising steps, so the ancestral scheduler draws noise between them
        stylizer = make_stylizer(tiny_folder, shared_noise=shared, anchor_attention=False, steps=4, batch_size=2)
        stylizer.pipe.scheduler = getattr(diffusers, scheduler).from_config(stylizer.pipe.scheduler.config)
        outputs[shared] = run(stylizer, [face_crops[0]] * 5)
        assert stylizer.counters["unet_passes"] == 10
    shared_gaps = np.abs(outputs[True][1:] - outputs[True][0])
    assert shared_gaps.max() <= 1 and shared_gaps.mean() < 0.01
    assert min(np.abs(outputs[False][0] - frame).mean() for frame in outputs[False][1:]) > 1.0


def test_shared_noise_and_anchor_attention_flicker_less_than_independent_noise(tiny_folder, face_crops):
    originals = np.stack(face_crops)
    ratios = {}
    for shared, anchor in ((True, True), (False, False)):
        meter = FlickerMeter()
        for original, variant in zip(originals, run(make_stylizer(tiny_folder, shared_noise=shared,
                                                                  anchor_attention=anchor), face_crops), strict=True):
            meter.update(original, variant)
        ratios[shared, anchor] = meter.ratio
    print(f"flicker ratio: shared noise + anchor attention {ratios[True, True]:.3f}, "
          f"independent noise without anchor {ratios[False, False]:.3f}")
    assert ratios[False, False] > 2.0  # per-frame noise adds flicker of its own
    assert ratios[True, True] < 0.6 * ratios[False, False]


def test_anchor_attention_changes_later_frames_and_leaves_frame_zero(tiny_folder, face_crops):
    crops = face_crops[:8]
    anchored = run(make_stylizer(tiny_folder, batch_size=3), crops)
    plain = run(make_stylizer(tiny_folder, batch_size=3, anchor_attention=False), crops)
    later = np.abs(anchored[1:] - plain[1:])
    assert later.mean() > 0.1 and later.reshape(len(later), -1).max(axis=1).min() >= 2  # every later frame moved
    # frame 0 attends to its own keys/values twice: the same softmax as once, i.e. the stock processor
    assert np.abs(anchored[0] - plain[0]).max() <= 1
    alone = run(make_stylizer(tiny_folder, batch_size=3), crops[:1])
    assert np.abs(alone[0] - anchored[0]).max() <= 1


def test_frame_zero_keys_values_carry_across_batches(tiny_folder, face_crops):
    """Batches of 3 (frame 0's keys/values recorded in the first, reused in the others) give what one batch
    of all 8 frames gives; so do separate calls of one clip session."""
    crops = face_crops[:8]
    one_batch = run(make_stylizer(tiny_folder, batch_size=8), crops)
    assert np.abs(run(make_stylizer(tiny_folder, batch_size=3), crops) - one_batch).max() <= 1
    session = make_stylizer(tiny_folder, batch_size=8).clip(PROMPT, 7)
    in_calls = np.stack(session(crops[:2]) + session(crops[2:5]) + session(crops[5:])).astype(np.int16)
    assert np.abs(in_calls - one_batch).max() <= 1


def test_fp16_variant_folder_loads_with_the_variant(tmp_path, tiny_folder, face_crops):
    from tests.tiny_diffusers import build_tiny_img2img

    folder = build_tiny_img2img(tmp_path / "fp16", variant="fp16")  # same seed: the same weights
    assert list(folder.rglob("*.fp16.safetensors")) and not list(folder.rglob("*model.safetensors"))
    assert np.array_equal(run(make_stylizer(folder), face_crops[:3]), run(make_stylizer(tiny_folder), face_crops[:3]))


def test_crops_of_the_wrong_size_are_refused(tiny_folder, face_crops):
    with pytest.raises(ValueError, match=r"\(64, 64, 3\) uint8"):
        make_stylizer(tiny_folder).clip(PROMPT, 0)([np.zeros((32, 32, 3), np.uint8)])


def test_stylizer_pickles_before_and_after_setup(tiny_folder):
    stylizer = make_stylizer(tiny_folder)
    copy = pickle.loads(pickle.dumps(stylizer))
    assert copy.pipe is None and copy.config == stylizer.config and stylizer.pipe is not None


def test_missing_local_folder_raises_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    stylizer = Stylizer(load_augment_config(None, {"stylize.model_dir": str(missing)}).stylize)
    with pytest.raises(WeightsMissingError, match="folder configured for sd-turbo does not exist: .*no-such-model"):
        stylizer.check_weights()
    with pytest.raises(WeightsMissingError):
        stylizer.setup()


def test_missing_registry_model_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("MEGACTOR_WEIGHTS_MIRROR", raising=False)
    stylizer = Stylizer(load_augment_config().stylize)
    assert stylizer.weight_sources() == {"sd-turbo": None}
    with pytest.raises(WeightsMissingError, match="megactor weights fetch sd-turbo"):
        stylizer.check_weights()


def test_missing_package_names_the_train_extra(monkeypatch):
    monkeypatch.setattr(Stylizer, "requires", {"no_such_module_for_megactor": "train"})
    with pytest.raises(MissingDependencyError, match=r"pip install 'megactor-pipeline\[train\]'"):
        Stylizer.check_requirements()


# -- cut and paste -------------------------------------------------------------------------------------------------

def test_paste_leaves_outside_bit_identical_and_changes_inside():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    crop = (30.4, 20.2, 50.0)  # pixels x 30..79, y 20..69
    cut = cut_crop(frame, crop, RESOLUTION)
    assert cut.shape == (RESOLUTION, RESOLUTION, 3)
    pasted = paste_crop(frame, 255 - cut, crop, feather=0.1)
    inside = np.zeros(frame.shape[:2], bool)
    inside[20:70, 30:80] = True
    assert np.array_equal(pasted[~inside], frame[~inside])
    centre = (slice(30, 60), slice(40, 70))
    assert np.abs(pasted[centre].astype(int) - frame[centre]).mean() > 50
    # feathered: the crop's border pixels stay close to the frame, its centre takes the stylized crop
    assert np.abs(pasted[20, 30:80].astype(int) - frame[20, 30:80]).mean() < 30


def test_hard_paste_of_an_uncut_crop_returns_the_frame():
    frame = np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    crop = (8.0, 0.0, 64.0)
    assert np.array_equal(paste_crop(frame, cut_crop(frame, crop, 64), crop, feather=0.0), frame)
