"""Stylized driving videos: a distilled diffusion model run image-to-image on a face-centred crop of every frame,
pasted back into the whole frame, so the model trained on them cannot copy identity from the driving video
(MegActor-Σ, Yang et al. 2024, after MegActor's augmentation).

What the authors did (the first MegActor): SDXL-Turbo image-to-image on each frame at 512²,
30 scheduler steps at strength 0.5 (15 denoising steps, each two UNet evaluations with classifier-free guidance),
the seed reset to the same value for every frame and no sharing between frames: 30 UNet evaluations per frame and
nothing but the seed holding frames together.

What we do: SD-Turbo (or any diffusers img2img folder) with ``steps`` x ``strength`` UNet passes per frame
(default 2 x 0.5 = 1, guidance 0 as Turbo models want), frames in batches, and two things that make the result
temporally stable by construction:

1. Shared noise: every frame of a clip gets a ``torch.Generator`` seeded with the clip's seed. diffusers draws,
   for a list of generators, each sample's VAE posterior sample, its initial noise and any per-step scheduler
   noise (Euler ``s_churn``, Euler-ancestral) from that sample's own generator, in the same order for every
   sample, so all frames, in every batch, see identical noise (the tests check it for Euler and Euler-ancestral).
2. Anchor attention: each UNet self-attention layer (attn1) attends to [own keys/values, frame 0's keys/values].
   While the batch holding frame 0 runs, each layer records frame 0's keys/values per denoising step; later
   batches of the clip reuse them, so frame 0 anchors the style of the whole clip. Frame 0 itself attends to its
   own tokens twice, which is the same softmax as attending to them once: it is what it would be alone.

``shared_noise=False`` seeds frame i with ``seed + i``: the independent per-frame noise baseline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from curation import weights
from curation.augment.config import StylizeConfig
from curation.component import Component

Crop = tuple[float, float, float]  # (x0, y0, side) in the frame's pixels, as curation.crops.square_crop gives


def _pixel_box(crop: Crop, width: int, height: int) -> tuple[int, int, int, int]:
    """The crop's integer (left, top, right, bottom), inside the frame; cut and paste share it exactly."""
    x0, y0, side = crop
    left = min(max(int(round(x0)), 0), width - 1)
    top = min(max(int(round(y0)), 0), height - 1)
    size = max(int(round(side)), 1)
    return left, top, min(left + size, width), min(top + size, height)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    shrink = image.shape[0] > height or image.shape[1] > width
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def cut_crop(frame: np.ndarray, crop: Crop, resolution: int) -> np.ndarray:
    """The crop of an (H, W, 3) uint8 frame, resized to ``resolution``²."""
    left, top, right, bottom = _pixel_box(crop, frame.shape[1], frame.shape[0])
    return _resize(frame[top:bottom, left:right], resolution, resolution)


def paste_crop(frame: np.ndarray, stylized: np.ndarray, crop: Crop, feather: float) -> np.ndarray:
    """``frame`` with ``stylized`` resized back onto the crop and blended in by a square mask whose alpha ramps
    from 0 at the crop's border to 1 over ``feather`` x side pixels; pixels outside the crop are untouched."""
    left, top, right, bottom = _pixel_box(crop, frame.shape[1], frame.shape[0])
    width, height = right - left, bottom - top
    patch = _resize(stylized, width, height).astype(np.float32)
    ramp = feather * max(width, height)

    def axis(n: int) -> np.ndarray:  # alpha along one axis, by distance of pixel centres to the nearer border
        inward = np.minimum(np.arange(n) + 0.5, n - np.arange(n) - 0.5)
        return np.clip(inward / ramp, 0.0, 1.0) if ramp > 0 else np.ones(n)

    alpha = np.minimum(axis(height)[:, None], axis(width)[None, :])[..., None].astype(np.float32)
    out = frame.copy()
    region = out[top:bottom, left:right].astype(np.float32)
    out[top:bottom, left:right] = np.clip(np.rint(alpha * patch + (1.0 - alpha) * region), 0, 255).astype(np.uint8)
    return out


class AnchorState:
    """Frame 0's keys/values of the clip being stylized, keyed by (attn1 layer, denoising step)."""

    def __init__(self) -> None:
        self.anchors: dict[tuple[str, int], tuple[Any, Any]] | None = None  # None: plain self-attention
        self.recording = False  # this batch starts with frame 0: record its keys/values
        self.step = 0  # advanced by the pipeline's step-end callback

    def anchor(self, layer: str, key: Any, value: Any) -> tuple[Any, Any]:
        assert self.anchors is not None
        slot = (layer, self.step)
        if self.recording:
            self.anchors[slot] = (key[:1].detach(), value[:1].detach())
        if slot not in self.anchors:
            raise RuntimeError(f"no frame-0 keys/values for {layer} at step {self.step}: a clip's frame 0 must go "
                               "through the pipeline first, with the same steps and strength")
        return self.anchors[slot]


class AnchorAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` for self-attention, with frame 0's keys/values appended to every frame's
    (same norms, residual and rescaling; like it, the default 1/sqrt(head_dim) scale)."""

    def __init__(self, state: AnchorState, layer: str):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.state, self.layer = state, layer
        self.plain = AttnProcessor2_0()

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                 temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        import torch
        import torch.nn.functional as F

        if self.state.anchors is None or encoder_hidden_states is not None:  # outside a clip, or cross-attention
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape  # (B, T, C)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        # attn.norm_cross applies to encoder states only, which self-attention does not have
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        anchor_key, anchor_value = self.state.anchor(self.layer, key, value)  # (1, heads, T, d)
        key = torch.cat([key, anchor_key.expand(batch, -1, -1, -1)], dim=2)  # (B, heads, 2T, d)
        value = torch.cat([value, anchor_value.expand(batch, -1, -1, -1)], dim=2)
        if attention_mask is not None:  # the anchor's tokens are frame 0's: frame 0's mask columns
            attention_mask = torch.cat([attention_mask, attention_mask[:1].expand_as(attention_mask)], dim=-1)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                       is_causal=False)  # (B, heads, T, d)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear projection, dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class Stylizer(Component):
    """Loads the img2img pipeline once per worker process (``setup``) and stylizes clips through :meth:`clip`."""

    name = "stylize"
    version = "1.0"
    requires = {"diffusers": "train", "transformers": "train", "torch": "train"}
    num_cpus = 1.0
    num_gpus = 0.5  # on a GPU two workers share one (SD-Turbo: about 1.3 B parameters, 2.6 GB in fp16)
    config: StylizeConfig

    def __init__(self, config: StylizeConfig, *, device: str = "cpu"):
        super().__init__(config, device=device)
        self.pipe: Any = None
        self._anchor: AnchorState | None = None

    def __getstate__(self) -> dict[str, Any]:
        # a copy sent to a worker loads its own pipeline there
        return {**self.__dict__, "pipe": None, "_anchor": None, "_ready": False}

    def weight_sources(self) -> dict[str, Path | None]:
        return {self.config.model: self.config.model_dir}

    def setup(self) -> None:
        import torch
        from diffusers import AutoPipelineForImage2Image
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # a worker's log is not a terminal: no loading bars in it
        transformers_logging.disable_progress_bar()
        folder = weights.resolve_or_local(self.config.model, self.config.model_dir)
        # the registry's SD-Turbo folder holds only *.fp16.safetensors; a local folder may hold plain files
        variant = "fp16" if any(folder.rglob("*.fp16.safetensors")) else None
        dtype = torch.float16 if str(self.device).startswith("cuda") else torch.float32
        pipe = AutoPipelineForImage2Image.from_pretrained(folder, local_files_only=True, dtype=dtype, variant=variant)
        if getattr(pipe, "safety_checker", None) is not None:
            pipe.safety_checker = None  # stylized faces are training inputs, not published images
        pipe.set_progress_bar_config(disable=True)
        pipe.to(self.device)
        if self.config.anchor_attention:
            self._anchor = AnchorState()
            pipe.unet.set_attn_processor({
                name: AnchorAttnProcessor(self._anchor, name) if name.endswith("attn1.processor") else processor
                for name, processor in pipe.unet.attn_processors.items()
            })
        self.pipe = pipe

    def close(self) -> None:
        self.pipe, self._anchor = None, None
        self._ready = False

    def clip(self, prompt: str, seed: int) -> ClipStylizer:
        """A stylizer for one clip: call it with the clip's crops in order, frame 0 first."""
        self.ensure_setup()
        return ClipStylizer(self, prompt, seed)


class ClipStylizer:
    """One clip's state: its prompt and seed, how many frames went through, frame 0's keys/values."""

    def __init__(self, stylizer: Stylizer, prompt: str, seed: int):
        self.stylizer, self.prompt, self.seed = stylizer, prompt, seed
        self.frames_done = 0
        self._anchors: dict[tuple[str, int], tuple[Any, Any]] = {}

    def __call__(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """RGB uint8 crops of ``resolution``² in, stylized crops of the same size out, in the same order."""
        size = self.stylizer.config.batch_size
        return [out for start in range(0, len(crops), size) for out in self._batch(crops[start:start + size])]

    def _batch(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        stylizer, config = self.stylizer, self.stylizer.config
        side = config.resolution
        for crop in crops:
            if crop.shape != (side, side, 3) or crop.dtype != np.uint8:
                raise ValueError(f"crops must be ({side}, {side}, 3) uint8, got {crop.shape} {crop.dtype}")
        count, first = len(crops), self.frames_done
        seeds = [self.seed] * count if config.shared_noise else [self.seed + first + i for i in range(count)]
        # CPU generators: the same noise on any device, so a clip stylizes alike on a GPU worker and in tests
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        anchor = stylizer._anchor
        if anchor is not None:
            anchor.anchors, anchor.recording, anchor.step = self._anchors, first == 0, 0

        def step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if anchor is not None:
                anchor.step = step + 1
            stylizer.counters["unet_passes"] += count
            return {}

        started = time.perf_counter()
        try:
            images = stylizer.pipe(
                prompt=[self.prompt] * count, image=np.stack(crops).astype(np.float32) / 255.0,
                num_inference_steps=config.steps, strength=config.strength, guidance_scale=0.0,
                generator=generators, output_type="np", callback_on_step_end=step_end,
            ).images  # (B, H, W, 3) float in [0, 1]
        finally:
            if anchor is not None:  # another clip sharing the pipeline must not attend to this clip's frame 0
                anchor.anchors, anchor.recording = None, False
        self.frames_done += count
        stylizer.counters["frames"] += count
        stylizer.counters["wall_s"] += time.perf_counter() - started
        return [np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8) for image in images]
