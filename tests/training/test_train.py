"""The training loop's pieces: the masked loss, the resumable data order, token masks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.components import latent_mask, masked_mse, token_mask
from training.train import ResumableOrder


def test_masked_loss_ignores_pixels_outside_the_mask():
    target = torch.zeros(2, 1, 4, 8, 8)
    prediction = torch.zeros_like(target)
    mask = torch.zeros(2, 1, 1, 8, 8)
    mask[..., 2:5, 3:6] = 1
    prediction[..., 2:5, 3:6] = 0.5  # inside: error 0.25 per element
    outside = prediction.clone()
    outside[..., 6:, :] = 100.0  # anything outside the region of interest
    assert masked_mse(prediction, target, mask) == torch.tensor(0.25)
    assert masked_mse(outside, target, mask) == torch.tensor(0.25)
    assert masked_mse(outside, target, None) > 1.0  # unmasked, the outside counts


def test_token_masks_follow_the_pixel_regions():
    mask = torch.zeros(1, 2, 1, 64, 64)
    mask[:, :, :, 40:56, 16:48] = 1  # a mouth-like band, low in the frame
    tokens = token_mask(mask, (4, 4))  # 16 px per token
    assert tokens.shape == (1, 2, 16)
    grid = tokens[0, 0].view(4, 4)
    assert grid[2:4, 1:3].all() and not grid[0:2].any()
    assert latent_mask(mask, (8, 8)).shape == (1, 2, 1, 8, 8)


def test_data_order_is_deterministic_and_resumes_mid_epoch():
    order = ResumableOrder(23, seed=3, rank=0, world=1, batch_size=4)
    epoch0 = list(order.batch_indices(0, 0))
    assert len(epoch0) == order.batches_per_epoch() == 5
    assert list(order.batch_indices(0, 2)) == epoch0[2:]  # the data position of a checkpoint
    assert list(order.batch_indices(1, 0)) != epoch0  # a new permutation each epoch
    ranks = [set(i for b in ResumableOrder(23, seed=3, rank=r, world=2, batch_size=4).batch_indices(0, 0) for i in b)
             for r in (0, 1)]
    assert not ranks[0] & ranks[1]  # workers see disjoint samples


def _tiny(stage: int, manifest, output, **overrides):
    from training.config import load_train_config

    values = {"model.preset": "tiny", "data.manifest_dir": str(manifest), "data.resolution": 64,
              "loader_workers": 0, "output": str(output), "checkpoint_every": 2, "steps": 4}
    values.update(overrides)
    return load_train_config(stage=stage, overrides=values)


def _losses(output) -> dict[int, float]:
    import json

    lines = (output / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row["loss"] for row in map(json.loads, lines)}


@pytest.mark.parametrize("accumulate", [1, 3])
def test_resume_from_a_checkpoint_reproduces_the_next_losses(tmp_path, tiny_manifest, accumulate):
    from training.train import train_loop_per_worker

    straight = tmp_path / "straight"  # accumulate 3: steps straddle the 2-batch epochs
    train_loop_per_worker(_tiny(1, tiny_manifest, straight, accumulate=accumulate).to_dict())
    interrupted = tmp_path / "interrupted"  # decoding in 2 threads: the order of completion must not matter
    train_loop_per_worker(_tiny(1, tiny_manifest, interrupted, steps=2, loader_workers=2,
                                accumulate=accumulate).to_dict())  # stops at 2
    train_loop_per_worker(_tiny(1, tiny_manifest, interrupted, loader_workers=2,
                                accumulate=accumulate).to_dict())  # resumes from step 2
    expected, resumed = _losses(straight), _losses(interrupted)
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7)
    assert expected[3] != expected[4]  # the comparison is between real, changing losses


def test_variational_bound_vanishes_for_the_true_posterior_and_grows_away_from_it():
    from training.components import noise_schedule, variational_bound

    schedule = noise_schedule()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 8, 8, generator=generator)
    noise = torch.randn(3, 4, 8, 8, generator=generator)
    t = torch.tensor([10, 500, 999])
    xt = schedule.add_noise(x0, noise, t)
    exact = variational_bound(schedule, x0, xt, noise, -torch.ones_like(x0), t)  # exact noise, posterior variance
    assert exact.abs().max() < 1e-3
    wrong_variance = variational_bound(schedule, x0, xt, noise, torch.ones_like(x0), t)
    wrong_noise = variational_bound(schedule, x0, xt, noise + 0.5, -torch.ones_like(x0), t)
    assert wrong_variance.mean() > 1e-3 and wrong_noise.mean() > 1e-2


def test_stage_configs_validate_and_refuse_what_is_not_supported(tmp_path):
    from curation.errors import ConfigError
    from training.config import load_train_config

    for stage in (1, 2, 3):
        config = load_train_config(stage=stage)
        assert config.optim.lr == 1e-5 and config.steps == 30_000 and config.data["resolution"] == 512
    assert load_train_config(stage=3).trains == ("temporal",)
    assert load_train_config(stage=1, overrides={"strategy": "fsdp"}).strategy == "fsdp"
    with pytest.raises(ConfigError, match="fp16"):
        load_train_config(stage=1, overrides={"strategy": "fsdp", "precision": "fp16"})
    with pytest.raises(ConfigError, match="init_from"):
        load_train_config(stage=2, overrides={"init_from": None})
    with pytest.raises(ConfigError, match="use_temporal"):
        load_train_config(stage=1, overrides={"trains": ["temporal"]})
    with pytest.raises(ConfigError, match="data"):
        load_train_config(stage=1, overrides={"data.no_such_key": 1})
    listed = tmp_path / "list.yaml"
    listed.write_text("- stage: 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_train_config(listed)


def test_a_manifest_whose_clips_all_fail_stops_with_a_message(tmp_path, tiny_manifest):
    from curation.errors import TrainingError
    from tests.tiny_manifest import manifest_with_missing_clips
    from training.train import train_loop_per_worker

    manifest = manifest_with_missing_clips(tiny_manifest, tmp_path / "manifest", copies=1, missing=2)
    with pytest.raises(TrainingError, match="nothing trained in the last 4 batches .*: 4 clip"):
        train_loop_per_worker(_tiny(1, manifest, tmp_path / "out").to_dict())


def test_a_failed_worker_is_reported_in_one_readable_message():
    from ray.train import WorkerGroupError

    from curation.errors import TrainingError
    from training.config import load_train_config
    from training.train import training_error

    config = load_train_config(stage=1)
    failure = WorkerGroupError("...", {1: RuntimeError("Traceback ...\n  File x\nValueError: bad shape"),
                                       0: TrainingError("nothing trained")})
    message = str(training_error(failure, config))
    assert message.splitlines() == ["stage 1 failed on 2 worker(s):", "  worker 0: nothing trained",
                                    "  worker 1: ValueError: bad shape"]


def test_a_relative_init_from_sits_beside_the_stages_output(tmp_path):
    from training.config import load_train_config

    config = load_train_config(stage=3, overrides={"output": str(tmp_path / "run" / "stage3")})
    assert config.init_checkpoint == tmp_path / "run" / "stage2" / "final"  # `--stage 3 --output run` finds stage 2
    assert load_train_config(stage=2).init_checkpoint == Path("runs/stage1/final")  # the defaults' own layout
    absolute = load_train_config(stage=2, overrides={"init_from": str(tmp_path / "elsewhere")})
    assert absolute.init_checkpoint == tmp_path / "elsewhere"


def test_a_fetched_vae_and_whisper_load_as_the_trainer_loads_them(tmp_path, monkeypatch):
    """`megactor weights fetch` gets the folders (config included) that model.vae_dir / whisper_dir take."""
    import hashlib

    from diffusers import AutoencoderKL
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from curation import weights
    from training import components
    from training.config import load_train_config

    hub = tmp_path / "hub"
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8,
                  latent_channels=4).save_pretrained(hub / "vae")
    WhisperModel(WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                               num_mel_bins=80, max_source_positions=1500)).save_pretrained(hub / "whisper")
    WhisperFeatureExtractor().save_pretrained(hub / "whisper")
    for name, folder in (("sd-vae-ft-ema", "vae"), ("whisper-tiny", "whisper")):
        real = weights.get_spec(name)
        files = tuple(weights.FolderFile(f.relpath, f.sha256 and hashlib.sha256(
            (hub / folder / f.relpath).read_bytes()).hexdigest()) for f in real.files)  # same files, our bytes
        monkeypatch.setitem(weights.REGISTRY, name, weights.WeightSpec(
            name, real.relpath, ((hub / folder).as_uri(),), "", 0, real.licence, real.description, files=files))
    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(tmp_path / "cache"))
    vae_dir, whisper_dir = weights.fetch("sd-vae-ft-ema", progress=False), weights.fetch("whisper-tiny", progress=False)
    assert vae_dir == tmp_path / "cache" / "vae" / "sd-vae-ft-ema"
    config = load_train_config(stage=2, overrides={"model.preset": "tiny", "model.vae_dir": str(vae_dir),
                                                   "model.whisper_dir": str(whisper_dir)})
    vae = components.build_vae(config, torch.device("cpu"))
    encoder = components.build_audio_encoder(config, torch.device("cpu"))
    assert vae.config.latent_channels == 4 and encoder is not None
