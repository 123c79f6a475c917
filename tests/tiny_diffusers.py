"""A tiny but real Stable Diffusion image-to-image folder, built offline with seeded random weights.

It has SD-Turbo's layout (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``) and SD-Turbo's scheduler configuration, so ``AutoPipelineForImage2Image.from_pretrained(folder,
local_files_only=True)`` loads it exactly as it loads the real model, and a 64x64 crop goes through it in a few
milliseconds on a CPU. The CLIP tokenizer's byte-level vocabulary and merges are generated here (no download)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

# SD-Turbo's scheduler/scheduler_config.json (stabilityai/sd-turbo): Euler with "trailing" timestep spacing, so
# 1-4 steps start from the last training timestep, as the adversarial distillation was trained.
SD_TURBO_SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "timestep_type": "discrete",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

# Text the tokenizer's merges are learnt from: the kind of prompts the stylizer sends.
_CORPUS = (
    "an anime-style portrait of the same person, keeping the expression, mouth movement and head pose. "
    "a watercolor painting portrait, same expression, mouth and pose. a 3D cartoon character portrait. "
    "an oil painting portrait of a person with the same face, mouth, eyes and head pose. a photo."
)
_MODEL_MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable unicode character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def _learn_merges(text: str, count: int) -> list[tuple[str, str]]:
    """A few BPE merges learnt from ``text`` (CLIP marks a word's last symbol with ``</w>``)."""
    words = Counter(text.lower().replace(",", " ").replace(".", " ").replace("-", " ").split())
    symbols = {word: [*word[:-1], word[-1] + "</w>"] for word in words}
    merges: list[tuple[str, str]] = []
    for _ in range(count):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, parts in symbols.items():
            for pair in zip(parts, parts[1:], strict=False):
                pairs[pair] += words[word]
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda pair: pairs[pair])  # sorted first: ties break the same way every run
        merges.append(best)
        for word, parts in symbols.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            symbols[word] = merged
    return merges


def _write_tokenizer(folder: Path, merges: list[tuple[str, str]]) -> int:
    """CLIP's vocabulary layout: 256 byte symbols, the same with ``</w>``, the merges, then the two special
    tokens. Returns the vocabulary size."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    # Round-trip through transformers so the folder also holds the configuration files it writes itself.
    CLIPTokenizer.from_pretrained(folder, model_max_length=_MODEL_MAX_LENGTH).save_pretrained(folder)
    return len(vocab)


def build_tiny_img2img(folder: Path, *, seed: int = 0, variant: str | None = None) -> Path:
    """Write a loadable tiny SD image-to-image folder (random weights drawn from ``seed``) to ``folder``.
    ``variant="fp16"`` names the weight files ``*.fp16.safetensors`` as SD-Turbo's are (the tensors stay
    float32: only the file names matter to the loader)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    vocab_size = _write_tokenizer(folder / "tokenizer", _learn_merges(_CORPUS, 64))
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        # attention (and so anchor attention) at both resolutions, as in SD's upper blocks
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_MODEL_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    with torch.no_grad():
        # Shaped like a trained model where it matters to the tests, still random: a trained VAE's posterior is
        # narrow (else the latent is mostly posterior noise and the image barely shows through), its latents are
        # scaled to unit variance (SD's 0.18215 is that factor), and a trained UNet predicts unit-variance noise.
        vae.quant_conv.bias[vae.config.latent_channels:] = -12.0  # log-variance: posterior std e^-6
        probe = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        vae.register_to_config(scaling_factor=1.0 / vae.encode(probe).latent_dist.mean.std().item())
        unet.conv_out.weight *= 3.0
        unet.conv_out.bias *= 3.0
        # self-attention's output projection larger, so that what anchor attention changes shows through the
        # random VAE decoder by more than a rounding step
        for name, module in unet.named_modules():
            if name.endswith("attn1"):
                module.to_out[0].weight *= 4.0
    # saved as SD-Turbo's folder is (a text-to-image StableDiffusionPipeline): the auto pipeline maps it to
    # StableDiffusionImg2ImgPipeline, as it does the real one
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(**SD_TURBO_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True, variant=variant)
    return folder
