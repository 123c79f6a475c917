"""What the training loop is made of: the frozen VAE and Whisper encoder, the model (from PixArt-alpha or the
previous stage), which parameters train, the dataset, the noise schedule and the loss. Loading reads local
directories in their published formats; nothing is downloaded."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from curation.errors import ConfigError
from training.config import TrainConfig

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"  # a checkpoint directory's state dict
VAE_SCALE = 0.18215  # Stable Diffusion's (and PixArt-alpha's) latent scaling factor
TRAIN_TIMESTEPS = 1000


def _require(path: Path | None, what: str, key: str, config: TrainConfig) -> None:
    if path is None and config.model.preset == "full":
        raise ConfigError(f"the full model needs {what}: set {key} to a local directory (see `megactor weights list`)")


def build_vae(config: TrainConfig, device: torch.device):
    """The frozen AutoencoderKL: sd-vae-ft-ema from ``model.vae_dir``, or (tiny preset, tests) a small random one
    with the same 8x downsampling and 4 latent channels."""
    from diffusers import AutoencoderKL

    _require(config.model.vae_dir, "the SD VAE", "model.vae_dir", config)
    if config.model.vae_dir is not None:
        vae = AutoencoderKL.from_pretrained(str(config.model.vae_dir))
    else:
        with torch.random.fork_rng():  # fixed weights, without resetting the trainer's seeded global RNG
            torch.manual_seed(0)
            vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                                block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=4,
                                norm_num_groups=8)
    return vae.to(device).eval().requires_grad_(False)


def build_audio_encoder(config: TrainConfig, device: torch.device):
    from training.model import AudioEncoder

    _require(config.model.whisper_dir, "Whisper", "model.whisper_dir", config)
    if config.model.whisper_dir is not None:
        encoder = AudioEncoder.from_pretrained(config.model.whisper_dir, layers=config.model.whisper_layers)
    else:  # tests and CPU benchmarks: a one-layer Whisper as wide as the preset's audio features
        from training.model import megactor_config

        with torch.random.fork_rng():
            torch.manual_seed(0)
            encoder = AudioEncoder.tiny(megactor_config(config.model.preset).audio_dim,
                                        layers=config.model.whisper_layers)
    return encoder.to(device).eval().requires_grad_(False)


def build_model(config: TrainConfig):
    """The stage's model: from the previous stage's checkpoint (``init_from``; modules new in this stage keep
    their initialisation), else from PixArt-alpha (``model.pixart_dir``), else randomly initialised."""
    from training.model import MegActorModel, megactor_config

    model_config = megactor_config(config.model.preset, use_audio=config.model.use_audio,
                                   use_temporal=config.model.use_temporal)
    if config.init_from is not None:
        model = MegActorModel(model_config)
        state_file = config.init_checkpoint / STATE_FILE
        if not state_file.is_file():
            raise ConfigError(f"init_from: no checkpoint at {state_file} (run the previous stage first)")
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        new_here = [k for k in missing if not _is_new_module(k, config)]
        if new_here or unexpected:
            raise ConfigError(f"init_from {config.init_from}: the checkpoint does not fit this model "
                              f"(missing {new_here[:5]}, unexpected {list(unexpected)[:5]})")
        log.info("initialised from %s (step %s); new modules: %d tensors", config.init_from, state["step"], len(missing))
        return model
    if config.model.pixart_dir is not None:
        return MegActorModel.from_pixart(config.model.pixart_dir, model_config)  # its sizes must match the preset
    if config.model.preset == "full":
        log.warning("no model.pixart_dir: the full model starts from random weights, not from PixArt-alpha")
    return MegActorModel(model_config)


def _is_new_module(key: str, config: TrainConfig) -> bool:
    return ("audio" in key and config.model.use_audio) or ("temporal" in key and config.model.use_temporal)


def set_trainable(model: torch.nn.Module, groups: tuple[str, ...]) -> dict[str, torch.nn.Parameter]:
    """Freeze everything, then unfreeze the named parameter groups; returns the trainable parameters by name."""
    model.requires_grad_(False)
    by_group = model.parameter_groups()
    trainable: dict[str, torch.nn.Parameter] = {}
    for group in groups:
        for name, parameter in by_group[group].items():
            parameter.requires_grad_(True)
            trainable[name] = parameter
    if not trainable:
        raise ConfigError(f"the groups {groups} hold no parameters in this model")
    return trainable


def build_dataset(config: TrainConfig):
    from training.data import ManifestDataset

    return ManifestDataset(build_data_config(config), stage=config.stage)


def build_data_config(config: TrainConfig):
    from training.data import DataConfig

    return DataConfig(**{"seed": config.seed, **config.data})


def noise_schedule():
    """PixArt-alpha's diffusion: 1,000 steps, linear betas (IDDPM's)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear")


@torch.no_grad()
def encode(vae, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> scaled latents (N, 4, H/8, W/8), sampled from the posterior."""
    posterior = vae.encode(pixels.to(vae.dtype)).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator, device=pixels.device, dtype=posterior.mean.dtype)
    return (posterior.mean + posterior.std * noise) * VAE_SCALE


def training_loss(model, vae, audio_encoder, schedule, batch: dict[str, Any], config: TrainConfig,
                  device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """PixArt-alpha's loss for one batch (noise MSE + the learned variance's variational bound), masked to the
    region of interest in stage 1. ``batch``: collated ``ManifestDataset`` samples (uint8 pixels and masks),
    moved to ``device`` and converted there (``training.data.model_inputs``)."""
    from training.data import model_inputs

    batch = model_inputs(batch, device)
    frames = batch["frames"]  # (B, F, 3, H, W) float32 in [-1, 1]
    b, f = frames.shape[:2]
    latents = encode(vae, frames.flatten(0, 1), generator).unflatten(0, (b, f))  # (B, F, 4, h, w)
    reference = encode(vae, batch["reference"], generator)  # (B, 4, h, w)
    audio, audio_mask = None, None
    if audio_encoder is not None:
        data = build_data_config(config)
        with torch.no_grad():  # (B, F, T, D): Whisper tokens around each frame (frames are frame_stride apart)
            audio = audio_encoder(batch["audio"], num_frames=f, fps=data.fps / data.frame_stride,
                                  offset_s=data.audio_context_s)
        audio_mask = batch["modality"] != 0  # visual-only samples: the audio branch is off
        if "unconditional" in batch:  # and the unconditional ones (no driving frames either)
            audio_mask = audio_mask & ~batch["unconditional"].bool()

    noise = torch.randn(latents.shape, generator=generator, device=device)
    timesteps = torch.randint(0, TRAIN_TIMESTEPS, (b,), generator=generator, device=device)
    noisy = schedule.add_noise(latents.flatten(0, 1), noise.flatten(0, 1),
                               timesteps.repeat_interleave(f)).unflatten(0, (b, f))

    # face dropout in attention: where the mouth is not driven, mouth queries may not see the driving region
    grid = (latents.shape[-2] // model_patch(model), latents.shape[-1] // model_patch(model))
    mouth_not_driven = ~batch["drive_mouth"].bool()
    mouth_query = token_mask(batch["mouth_mask"], grid) & mouth_not_driven.view(b, 1, 1)
    driving_key = token_mask(batch["driving_mask"], grid)

    prediction = model(noisy, timesteps, reference, batch["driving"], audio,
                       mouth_query_mask=mouth_query, driving_key_mask=driving_key,
                       audio_mask=audio_mask)  # (B, F, C, h, w)
    eps, variance = prediction[:, :, :4], prediction[:, :, 4:]
    mask = latent_mask(batch["loss_mask"], latents.shape[-2:]) if config.stage == 1 else None
    # PixArt-alpha's (IDDPM's) loss: noise MSE plus the variational bound term that trains the learned variance
    # (through a mean that does not carry gradient back into the noise prediction)
    vb = variational_bound(schedule, latents.flatten(0, 1), noisy.flatten(0, 1), eps.detach().flatten(0, 1),
                           variance.flatten(0, 1), timesteps.repeat_interleave(f)).unflatten(0, (b, f))
    return masked_mse(eps, noise, mask) + masked_mean(vb, mask)


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_nll(x, mean, log_scale):
    """Negative log-likelihood of ``x`` in [-1, 1] bins of 2/255 under a Gaussian (IDDPM's decoder term at t = 0)."""
    def cdf(v):
        return 0.5 * (1.0 + torch.tanh((2.0 / torch.pi) ** 0.5 * (v + 0.044715 * v ** 3)))

    centred, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus, cdf_min = cdf(inv_std * (centred + 1 / 255)), cdf(inv_std * (centred - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(
        x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))))
    return -log_probs


def variational_bound(schedule, x0, xt, eps, variance_values, t) -> torch.Tensor:
    """Per-element variational bound (bits) of IDDPM with a learned-range variance: KL between the true
    posterior q(x_{t-1} | x_t, x_0) and the model's p(x_{t-1} | x_t), the decoder's NLL at t = 0."""
    betas = schedule.betas.to(xt.device, torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    posterior_variance = betas * (1 - previous) / (1 - alphas_cumprod)
    posterior_log_variance = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
    coef_x0 = betas * previous.sqrt() / (1 - alphas_cumprod)
    coef_xt = (1 - previous) * (1 - betas).sqrt() / (1 - alphas_cumprod)

    def at(values):  # (T,) -> (N, 1, 1, 1) for these timesteps, float32
        return values[t].float().view(-1, 1, 1, 1)

    x0, xt, eps, variance_values = x0.float(), xt.float(), eps.float(), variance_values.float()
    true_mean = at(coef_x0) * x0 + at(coef_xt) * xt
    true_log_variance = at(posterior_log_variance).expand_as(xt)
    fraction = (variance_values + 1) / 2  # learned range between the posterior's and beta_t's log variance
    model_log_variance = fraction * torch.log(at(betas)) + (1 - fraction) * at(posterior_log_variance)
    predicted_x0 = (xt - at((1 - alphas_cumprod).sqrt()) * eps) / at(alphas_cumprod.sqrt())
    model_mean = at(coef_x0) * predicted_x0 + at(coef_xt) * xt
    kl = _normal_kl(true_mean, true_log_variance, model_mean, model_log_variance) / math.log(2.0)
    nll = _discretized_gaussian_nll(x0, model_mean, 0.5 * model_log_variance) / math.log(2.0)
    return torch.where((t == 0).view(-1, 1, 1, 1), nll, kl)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def model_patch(model) -> int:
    inner = getattr(model, "module", model)  # DDP / FSDP wrappers
    return inner.config.patch_size


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the pixels where ``mask`` is 1 (broadcast over channels); pixels outside the
    region of interest contribute nothing, whatever their values."""
    return masked_mean((prediction.float() - target.float()) ** 2, mask)



def latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, F, 1, H, W) pixel mask -> (B, F, 1, h, w) at latent resolution (a latent pixel counts if any of its
    pixels does)."""
    b, f = mask.shape[:2]
    pooled = F.adaptive_max_pool2d(mask.flatten(0, 1).float(), size)
    return pooled.unflatten(0, (b, f))


def token_mask(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, F, 1, H, W) pixel mask -> (B, F, N) bool over the denoiser's patch tokens."""
    return latent_mask(mask, grid).flatten(2) > 0
