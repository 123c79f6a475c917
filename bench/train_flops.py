"""Benchmark: the full model's work per training sample, counted rather than timed (no GPU needed): FLOPs of the
frozen VAE encoder and Whisper encoder against the denoiser's forward and backward, per stage shape, and the
training state each GPU holds under DDP and under FSDP. It answers two planning questions without a GPU:
whether caching VAE latents or Whisper features would pay (their share of a step), and what a step costs.

Everything is built on PyTorch's meta device (shapes only, no memory, no weights) and counted with
``torch.utils.flop_counter.FlopCounterMode``: matrix multiplications, convolutions and attention, which is
where the work is. The VAE is sd-vae-ft-ema's architecture (SD's AutoencoderKL config), Whisper is
whisper-tiny's encoder (one 30 s window per sample, as the trainer runs it).

    .venv/bin/python bench/train_flops.py [--gpus 8] [--global-batch 8] [--hours 313] [--tflops 400]

Latent caching: encoding every frame of the curated set once costs ``frames x VAE``; encoding on the fly costs
``steps x global batch x images per sample x VAE``. Caching pays only when training would encode more images
than the set holds, i.e. when frames are revisited; the script prints both sides per stage.

``--tflops`` is an assumed sustained bf16 rate per GPU, used only for the printed step-time estimate (labelled
as such); the FLOP counts and state sizes are exact for these shapes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _report import emit  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from training.model import MegActorModel, megactor_config  # noqa: E402

RESOLUTION, LATENT = 512, 64
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
              block_out_channels=(128, 256, 512, 512), sample_size=512,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
WHISPER_TINY = dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                    decoder_layers=4, decoder_attention_heads=6, decoder_ffn_dim=1536, num_mel_bins=80)
STAGES = {  # what the trainer's stage configs train, and the model each builds
    1: dict(use_audio=False, use_temporal=False, trains=("denoiser", "reference", "driven_encoder")),
    2: dict(use_audio=True, use_temporal=False, trains=("denoiser", "reference", "driven_encoder", "audio")),
    3: dict(use_audio=True, use_temporal=True, trains=("temporal",)),
}


def count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def vae_encode_flops(images: int) -> int:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**SD_VAE).requires_grad_(False)
        pixels = torch.empty(images, 3, RESOLUTION, RESOLUTION)
    return count(lambda: vae.encode(pixels))


def whisper_flops() -> int:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    with torch.device("meta"):
        encoder = WhisperEncoder(WhisperConfig(**WHISPER_TINY)).requires_grad_(False)
        mel = torch.empty(1, 80, 3000)  # one 30 s window
    return count(lambda: encoder(mel))


def model_flops(stage: int, frames: int) -> dict[str, int]:
    """The denoiser's forward and backward for one sample of ``frames`` frames, with what the stage trains."""
    setup = STAGES[stage]
    config = megactor_config("full", use_audio=setup["use_audio"], use_temporal=setup["use_temporal"])
    with torch.device("meta"):
        model = MegActorModel(config)
        model.requires_grad_(False)
        groups = model.parameter_groups()
        for group in setup["trains"]:
            for parameter in groups[group].values():
                parameter.requires_grad_(True)
        tokens = (LATENT // config.patch_size) ** 2
        inputs = dict(
            noisy=torch.empty(1, frames, 4, LATENT, LATENT), timesteps=torch.zeros(1, dtype=torch.long),
            reference_latent=torch.empty(1, 4, LATENT, LATENT),
            driving=torch.empty(1, frames, 3, RESOLUTION, RESOLUTION),
            audio_features=torch.empty(1, frames, 50, config.audio_dim) if setup["use_audio"] else None,  # 10 x 5
            mouth_query_mask=torch.zeros(1, frames, tokens, dtype=torch.bool),
            driving_key_mask=torch.zeros(1, frames, tokens, dtype=torch.bool),
        )
    outputs = {}

    def forward():
        outputs["y"] = model(**inputs)

    forward_flops = count(forward)
    backward_flops = count(lambda: outputs["y"].float().square().mean().backward())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"forward": forward_flops, "backward": backward_flops, "parameters": sum(p.numel() for p in model.parameters()),
            "trainable": trainable}


def state_gib(parameters: int, trainable: int, gpus: int) -> dict[str, float]:
    """Training state per GPU: fp32 weights, fp32 gradients and AdamW's two moments for the trained part, the
    fp32 EMA of the trained part; FSDP splits all of it over the GPUs (activations not included)."""
    total = 4 * parameters + 4 * trainable + 8 * trainable + 4 * trainable
    return {"ddp_gib": round(total / 2**30, 1), f"fsdp_{gpus}_gpus_gib": round(total / gpus / 2**30, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--global-batch", type=int, default=8, help="samples per optimizer step, all GPUs")
    parser.add_argument("--hours", type=float, default=313.0, help="hours of curated video (the paper: ~313)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs that FSDP shards the state over")
    parser.add_argument("--tflops", type=float, default=400.0,
                        help="ASSUMED sustained bf16 TFLOP/s per GPU, for the step-time estimate only")
    parser.add_argument("--json")
    args = parser.parse_args()
    figures: dict = {"command": "python bench/train_flops.py " + " ".join(sys.argv[1:]),
                     "resolution": RESOLUTION, "assumed_tflops_per_gpu": args.tflops,
                     "global_batch": args.global_batch, "hours": args.hours}
    from training.config import load_train_config

    whisper = whisper_flops()
    dataset_frames = args.hours * 3600 * 25
    per_image = vae_encode_flops(1)
    for stage in (1, 2, 3):
        stage_config = load_train_config(stage=stage)
        frames = stage_config.data["num_frames"]
        vae = per_image * (frames + 1)  # the target frames and the reference frame (the encoder is per image)
        on_the_fly = stage_config.steps * args.global_batch * (frames + 1) * per_image
        audio = whisper if STAGES[stage]["use_audio"] else 0
        model = model_flops(stage, frames)
        step = vae + audio + model["forward"] + model["backward"]
        figures[f"stage{stage}_{frames}f"] = {
            "tflop_per_sample": round(step / 1e12, 2),
            "vae_encode_tflop": round(vae / 1e12, 3), "whisper_tflop": round(audio / 1e12, 4),
            "model_forward_tflop": round(model["forward"] / 1e12, 2),
            "model_backward_tflop": round(model["backward"] / 1e12, 2),
            "vae_share": round(vae / step, 3), "whisper_share": round(audio / step, 4),
            "parameters_m": round(model["parameters"] / 1e6, 1), "trainable_m": round(model["trainable"] / 1e6, 1),
            "estimated_s_per_sample_at_assumed_rate": round(step / (args.tflops * 1e12), 3),
            **state_gib(model["parameters"], model["trainable"], args.gpus),
            "latent_cache": {"images_encoded_in_training": stage_config.steps * args.global_batch * (frames + 1),
                             "frames_in_dataset": int(dataset_frames),
                             "on_the_fly_pflop": round(on_the_fly / 1e15, 1),
                             "encode_every_frame_once_pflop": round(dataset_frames * per_image / 1e15, 1)},
        }
    return emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
