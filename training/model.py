"""MegActor-Σ: a PixArt-α diffusion transformer driven by audio and visual motion (arXiv 2408.14975).

One readable file, in reading order: helpers, embedders, attention, block, the three transformers (reference,
denoiser, whole model), weight loading from PixArt-α, the Whisper audio encoder, size presets.

Built on diffusers rather than beside it: the block is diffusers' `BasicTransformerBlock` in its PixArt-α form
(`norm_type="ada_norm_single"`), with the same parameter names, so a PixArt-α `transformer/` folder loads by
prefix; `PatchEmbed` and `AdaLayerNormSingle` are diffusers' own. What is new: the reference tokens appended to
self-attention's keys/values, the face-dropout mask, temporal attention in odd blocks, and audio attention in
place of the text cross-attention.

Conventions:
- Tensors named `noisy`, `driving` are per video (B, F, ...); inside the transformers frames are folded into the
  batch (B*F, N, D) for spatial work and unfolded for temporal attention.
- Output has `out_channels = 2 * latent_channels` like PixArt-α: channels [:4] predict the noise (epsilon), [4:]
  the learned variance interpolation (diffusers' `variance_type="learned_range"`).
- Audio absent for a sample is said by `audio_mask` (B,) bool: False multiplies that sample's audio attention
  residual by zero (zero features would not give zero: attention has biases). `audio_features=None` skips the
  audio branch for the whole batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import PatchEmbed, SinusoidalPositionalEmbedding
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MegActorConfig:
    num_layers: int = 28
    hidden_size: int = 1152
    num_heads: int = 16
    patch_size: int = 2
    latent_channels: int = 4  # the VAE latent
    out_channels: int = 8  # epsilon + learned-range variance, PixArt-α's convention
    sample_size: int = 64  # latent side: 64 for 512 px
    reference_blocks: int = 16  # reference features enter the last this-many blocks
    motion_channels: int = 4  # driven encoder output, concatenated with the noisy latent
    driven_encoder_channels: tuple[int, int, int] = (16, 32, 64)
    audio_dim: int = 384  # Whisper d_model (whisper-tiny: 384)
    use_audio: bool = True
    use_temporal: bool = True
    max_frames: int = 64  # length of the temporal sinusoidal position table
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if not 0 <= self.reference_blocks <= self.num_layers:
            raise ValueError(f"reference_blocks must be in [0, {self.num_layers}], got {self.reference_blocks}")
        if self.sample_size % self.patch_size:
            raise ValueError(f"sample_size {self.sample_size} is not divisible by patch_size {self.patch_size}")
        if self.motion_channels < 0:
            raise ValueError(f"motion_channels must be >= 0, got {self.motion_channels}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def temporal_blocks(self) -> list[int]:
        return [i for i in range(self.num_layers) if i % 2 == 1] if self.use_temporal else []


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def extend_input_projection(conv: nn.Conv2d, extra: int) -> nn.Conv2d:
    """A copy of `conv` with `extra` more input channels: the old ones keep their parameters, the new ones are zero,
    so the extended layer computes exactly what `conv` did whatever the extra channels hold."""
    if conv.groups != 1:
        raise ValueError("extend_input_projection needs an ungrouped convolution")
    extended = nn.Conv2d(
        conv.in_channels + extra,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        extended.weight.zero_()
        extended.weight[:, : conv.in_channels].copy_(conv.weight)
        if conv.bias is not None:
            extended.bias.copy_(conv.bias)
    return extended


def face_dropout_attention_mask(mouth_query_mask: torch.Tensor, driving_key_mask: torch.Tensor) -> torch.Tensor:
    """Spatial self-attention mask for face dropout: (B, F, N), (B, F, N) bool -> (B*F, N, N) bool, True = may attend.

    A query in the mouth region may not attend to keys in the driving region (only meaningful when the mouth is not
    driven; the data sets `mouth_query_mask` all False otherwise). A row left with no key at all (every token is
    driving) is let through unmasked so SDPA never sees an all -inf row. Reference tokens are appended unmasked by
    the attention processor.
    """
    if mouth_query_mask.shape != driving_key_mask.shape or mouth_query_mask.ndim != 3:
        raise ValueError(
            f"mouth_query_mask {tuple(mouth_query_mask.shape)} and driving_key_mask "
            f"{tuple(driving_key_mask.shape)} must both be (B, F, N)"
        )
    blocked = mouth_query_mask.bool()[..., :, None] & driving_key_mask.bool()[..., None, :]  # (B, F, N, N)
    allowed = ~blocked
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)  # no empty rows
    return allowed.flatten(0, 1)  # (B*F, N, N)


def audio_residual_weight(
    audio_scale: float | torch.Tensor, audio_mask: torch.Tensor | None, batch: int, frames: int, like: torch.Tensor
) -> torch.Tensor:
    """Per (sample, frame) factor on the audio attention residual: `audio_scale` (float, (B,) or (B, F): inference's
    audio amplitude) times `audio_mask` (B,) (0 where the sample has no audio). Returns (B*F, 1, 1)."""
    weight = torch.as_tensor(audio_scale, dtype=like.dtype, device=like.device)
    if weight.ndim == 0:
        weight = weight.expand(batch)
    if weight.ndim == 1:
        weight = weight[:, None].expand(batch, frames)
    if weight.shape != (batch, frames):
        raise ValueError(f"audio_scale must be a float, (B,) or (B, F) = ({batch}, {frames}); got {tuple(weight.shape)}")
    if audio_mask is not None:
        weight = weight * audio_mask.to(like.dtype).reshape(batch, 1)
    return weight.reshape(batch * frames, 1, 1)


def _zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# ----------------------------------------------------------------------------------------------------------------
# Embedders
# ----------------------------------------------------------------------------------------------------------------


class DrivenEncoder(nn.Module):
    """Four 2D convs: driving frames (N, 3, H, W), masked to the driven regions, -> motion features (N, C, H/8, W/8).

    The last conv is not zero-initialised: the new input-projection channels already are, and zeroing both would
    leave each with a zero gradient forever."""

    def __init__(self, motion_channels: int, channels: Sequence[int] = (16, 32, 64)):
        super().__init__()
        c1, c2, c3 = channels
        self.conv_in = nn.Conv2d(3, c1, 3, stride=2, padding=1)  # H/2
        self.conv_1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)  # H/4
        self.conv_2 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)  # H/8
        self.conv_out = nn.Conv2d(c3, motion_channels, 3, padding=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(frames))  # (N, c1, H/2, W/2)
        x = F.silu(self.conv_1(x))  # (N, c2, H/4, W/4)
        x = F.silu(self.conv_2(x))  # (N, c3, H/8, W/8)
        return self.conv_out(x)  # (N, motion_channels, H/8, W/8)


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------


class ReferenceAttnProcessor:
    """diffusers attention processor: SDPA whose keys/values are the queries' own tokens followed by optional extra
    tokens (the reference transformer's features), with an optional boolean mask (B, Nq, Nk) over the own tokens
    (True = may attend). Extra tokens are never masked. `extra_kv_states` may be per video (B/F, Nref, D): it is
    projected once and shared by the video's F frames."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        extra_kv_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, n_query, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)  # (B, N, D)
        if extra_kv_states is not None:
            frames = batch // extra_kv_states.shape[0]
            key = torch.cat([key, attn.to_k(extra_kv_states).repeat_interleave(frames, 0)], dim=1)  # (B, N+Nref, D)
            value = torch.cat([value, attn.to_v(extra_kv_states).repeat_interleave(frames, 0)], dim=1)
            if attention_mask is not None:
                keep = attention_mask.new_ones(*attention_mask.shape[:-1], extra_kv_states.shape[1])
                attention_mask = torch.cat([attention_mask, keep], dim=-1)  # (B, Nq, N + Nref)
        head_dim = query.shape[-1] // attn.heads
        query, key, value = (t.unflatten(-1, (attn.heads, head_dim)).transpose(1, 2) for t in (query, key, value))
        if attention_mask is not None:
            attention_mask = attention_mask[:, None]  # (B, 1, Nq, Nk): broadcast over heads
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)  # (B, heads, Nq, hd)
        out = out.transpose(1, 2).reshape(batch, n_query, -1)  # (B, Nq, D)
        return attn.to_out[1](attn.to_out[0](out))


class TemporalAttention(nn.Module):
    """Attention over the frame axis for each spatial token, with a sinusoidal frame position; the output projection
    starts at zero so inserting the module is an identity (EasyAnimate/AnimateDiff style)."""

    def __init__(self, dim: int, heads: int, max_frames: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pos = SinusoidalPositionalEmbedding(dim, max_seq_length=max_frames)
        self.attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=True)
        _zero_module(self.attn.to_out[0])

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        bf, n, d = x.shape
        t = x.reshape(bf // num_frames, num_frames, n, d).transpose(1, 2).reshape(-1, num_frames, d)  # (B*N, F, D)
        t = self.attn(self.pos(self.norm(t)))  # (B*N, F, D)
        t = t.reshape(bf // num_frames, n, num_frames, d).transpose(1, 2).reshape(bf, n, d)  # (B*F, N, D)
        return x + t


# ----------------------------------------------------------------------------------------------------------------
# Block
# ----------------------------------------------------------------------------------------------------------------


class MegActorBlock(BasicTransformerBlock):
    """PixArt-α's block (adaLN-single, self-attention, feed-forward; same parameter names) with reference tokens in
    self-attention, an optional temporal module after self-attention, and audio attention where PixArt-α has its
    text cross-attention (also un-normalised queries, as in PixArt-α)."""

    def __init__(self, config: MegActorConfig, temporal: bool, audio: bool):
        super().__init__(
            config.hidden_size,
            config.num_heads,
            config.head_dim,
            cross_attention_dim=None,  # the text cross-attention is replaced by `audio_attn`
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            attention_bias=True,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=config.norm_eps,
        )
        self.attn1.set_processor(ReferenceAttnProcessor())
        self.temporal = (
            TemporalAttention(config.hidden_size, config.num_heads, config.max_frames, config.norm_eps)
            if temporal
            else None
        )
        self.audio_attn = None
        if audio:
            self.audio_attn = Attention(
                query_dim=config.hidden_size,
                cross_attention_dim=config.audio_dim,
                heads=config.num_heads,
                dim_head=config.head_dim,
                bias=True,
            )
            _zero_module(self.audio_attn.to_out[0])  # adding audio (stage 2) starts from the stage-1 model

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        num_frames: int = 1,
        attention_mask: torch.Tensor | None = None,
        reference_states: torch.Tensor | None = None,
        audio_states: torch.Tensor | None = None,
        audio_weight: torch.Tensor | None = None,
        attention_input_only: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """x (B*F, N, D), timestep (B*F, 6D) -> (x, the self-attention input), the latter being what the reference
        transformer hands over to the denoiser. `attention_input_only` stops there and returns (None, input): the
        reference transformer's last block needs no more (a keyword of forward, not a method, so that FSDP and
        DDP wrappers see the call)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + timestep.reshape(x.shape[0], 6, -1)
        ).chunk(6, dim=1)  # each (B*F, 1, D)
        attn_input = self.norm1(x) * (1 + scale_msa) + shift_msa  # (B*F, N, D)
        if attention_input_only:
            return None, attn_input
        x = x + gate_msa * self.attn1(
            attn_input, attention_mask=attention_mask, extra_kv_states=reference_states
        )  # (B*F, N, D)
        if self.temporal is not None:
            x = self.temporal(x, num_frames)  # (B*F, N, D)
        if self.audio_attn is not None and audio_states is not None:
            x = x + audio_weight * self.audio_attn(x, encoder_hidden_states=audio_states)  # (B*F, N, D)
        ff_input = self.norm2(x) * (1 + scale_mlp) + shift_mlp  # (B*F, N, D)
        x = x + gate_mlp * self.ff(ff_input)  # (B*F, N, D)
        return x, attn_input


def _run_block(block: MegActorBlock, checkpointing: bool, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Transformers
# ----------------------------------------------------------------------------------------------------------------


def _patch_embed(config: MegActorConfig) -> PatchEmbed:
    return PatchEmbed(
        height=config.sample_size,
        width=config.sample_size,
        patch_size=config.patch_size,
        in_channels=config.latent_channels,
        embed_dim=config.hidden_size,
        interpolation_scale=max(config.sample_size // 64, 1),  # PixArt-α's rule
    )


class ReferenceTransformer(nn.Module):
    """PixArt-α's input and blocks (no audio, no temporal, no output head), run on the clean reference latent at
    timestep 0; returns the self-attention inputs of the last `reference_blocks` blocks."""

    def __init__(self, config: MegActorConfig):
        super().__init__()
        self.config = config
        self.pos_embed = _patch_embed(config)
        self.adaln_single = AdaLayerNormSingle(config.hidden_size, use_additional_conditions=False)
        self.transformer_blocks = nn.ModuleList(
            [MegActorBlock(config, temporal=False, audio=False) for _ in range(config.num_layers)]
        )
        self.gradient_checkpointing = False

    def forward(self, reference_latent: torch.Tensor) -> list[torch.Tensor]:
        n_blocks = self.config.reference_blocks
        if n_blocks == 0:
            return []
        batch = reference_latent.shape[0]
        x = self.pos_embed(reference_latent)  # (B, N, D)
        timestep = torch.zeros(batch, device=x.device, dtype=torch.long)
        t_mod, _ = self.adaln_single(timestep, batch_size=batch, hidden_dtype=x.dtype)  # (B, 6D)
        first, last = self.config.num_layers - n_blocks, self.config.num_layers - 1
        states = []
        for i, block in enumerate(self.transformer_blocks):
            if i == last:  # only its self-attention input is read: its attention and feed-forward are not run
                states.append(block(x, t_mod, attention_input_only=True)[1])
                break
            x, attn_input = _run_block(block, self.gradient_checkpointing, x, t_mod)  # (B, N, D) x 2
            if i >= first:
                states.append(attn_input)
        return states  # reference_blocks x (B, N, D)

    def unread_parameter_names(self) -> list[str]:
        """Parameters the forward never reads (names relative to this module): the last block's attention and
        feed-forward, or everything when no block hands features over. Kept, so that PixArt-alpha's weights load
        unchanged, but never trained: they would get no gradient."""
        if self.config.reference_blocks == 0:
            return [name for name, _ in self.named_parameters()]
        last = f"transformer_blocks.{self.config.num_layers - 1}."
        return [name for name, _ in self.named_parameters()
                if name.startswith(last) and name != last + "scale_shift_table"]


class Denoiser(nn.Module):
    """PixArt-α's DiT with an input projection extended for motion features, reference tokens in the last
    `reference_blocks` blocks' self-attention, temporal attention in odd blocks, audio attention in every block."""

    def __init__(self, config: MegActorConfig):
        super().__init__()
        self.config = config
        self.pos_embed = _patch_embed(config)
        self.pos_embed.proj = extend_input_projection(self.pos_embed.proj, config.motion_channels)
        self.adaln_single = AdaLayerNormSingle(config.hidden_size, use_additional_conditions=False)
        self.transformer_blocks = nn.ModuleList(
            [
                MegActorBlock(config, temporal=i in config.temporal_blocks, audio=config.use_audio)
                for i in range(config.num_layers)
            ]
        )
        # output head, as PixArtTransformer2DModel's
        self.norm_out = nn.LayerNorm(config.hidden_size, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, config.hidden_size) / config.hidden_size**0.5)
        self.proj_out = nn.Linear(config.hidden_size, config.patch_size**2 * config.out_channels)
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        num_frames: int,
        attention_mask: torch.Tensor | None = None,
        reference_states: Sequence[torch.Tensor] = (),
        audio_states: torch.Tensor | None = None,
        audio_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B*F, 4+M, h, w), timesteps (B,), reference_states R x (B, N, D) -> (B, F, out_channels, h, w)."""
        bf, _, h, w = x.shape
        batch, p = bf // num_frames, self.config.patch_size
        tokens = self.pos_embed(x)  # (B*F, N, D)
        t_mod, t_emb = self.adaln_single(timesteps, batch_size=batch, hidden_dtype=tokens.dtype)  # (B, 6D), (B, D)
        t_mod, t_emb = t_mod.repeat_interleave(num_frames, 0), t_emb.repeat_interleave(num_frames, 0)  # per frame
        first_reference = self.config.num_layers - len(reference_states)
        for i, block in enumerate(self.transformer_blocks):
            reference = reference_states[i - first_reference] if i >= first_reference else None
            tokens, _ = _run_block(
                block,
                self.gradient_checkpointing,
                tokens,
                t_mod,
                num_frames=num_frames,
                attention_mask=attention_mask,
                reference_states=reference,
                audio_states=audio_states,
                audio_weight=audio_weight,
            )  # (B*F, N, D)
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).chunk(2, dim=1)  # (B*F, 1, D) x 2
        tokens = self.proj_out(self.norm_out(tokens) * (1 + scale) + shift)  # (B*F, N, p*p*C)
        tokens = tokens.reshape(bf, h // p, w // p, p, p, self.config.out_channels)
        # a new tensor, not a view: DDP/FSDP hook the output, and a view invites in-place edits that bypass them
        return torch.einsum("nhwpqc->nchpwq", tokens).reshape(batch, num_frames, self.config.out_channels, h, w)


class MegActorModel(nn.Module):
    def __init__(self, config: MegActorConfig):
        super().__init__()
        self.config = config
        self.driven_encoder = DrivenEncoder(config.motion_channels, config.driven_encoder_channels)
        self.reference = ReferenceTransformer(config)
        self.denoiser = Denoiser(config)

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        reference_latent: torch.Tensor,
        driving: torch.Tensor,
        audio_features: torch.Tensor | None = None,
        mouth_query_mask: torch.Tensor | None = None,
        driving_key_mask: torch.Tensor | None = None,
        audio_scale: float | torch.Tensor = 1.0,
        audio_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """noisy (B, F, 4, h, w), timesteps (B,), reference_latent (B, 4, h, w), driving (B, F, 3, 8h, 8w) in
        pixels, audio_features (B, F, T, audio_dim) or None, masks (B, F, N) bool with N = (h/p)*(w/p) in
        row-major patch order, audio_mask (B,) bool -> (B, F, out_channels, h, w): epsilon then variance."""
        batch, frames = noisy.shape[:2]
        motion = self.driven_encoder(driving.flatten(0, 1))  # (B*F, M, h, w)
        x = torch.cat([noisy.flatten(0, 1), motion], dim=1)  # (B*F, 4+M, h, w)
        reference = self.reference(reference_latent)  # R x (B, N, D), shared by each video's frames
        attention_mask = None
        if (mouth_query_mask is None) != (driving_key_mask is None):
            raise ValueError("mouth_query_mask and driving_key_mask are given together or not at all")
        if mouth_query_mask is not None:
            attention_mask = face_dropout_attention_mask(mouth_query_mask, driving_key_mask)  # (B*F, N, N)
        audio_states = audio_weight = None
        if audio_features is not None and self.config.use_audio:
            audio_states = audio_features.flatten(0, 1).to(x.dtype)  # (B*F, T, audio_dim)
            audio_weight = audio_residual_weight(audio_scale, audio_mask, batch, frames, x)  # (B*F, 1, 1)
        return self.denoiser(x, timesteps, frames, attention_mask, reference, audio_states, audio_weight)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.denoiser.gradient_checkpointing = enabled
        self.reference.gradient_checkpointing = enabled

    def parameter_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """Named parameters by what a stage may train: denoiser (less audio/temporal), reference, driven_encoder,
        audio (the audio attention layers), temporal, and unread (what the forward never reads: see
        ReferenceTransformer.unread_parameter_names; no stage trains it). Every parameter is in exactly one group."""
        groups: dict[str, dict[str, nn.Parameter]] = {
            k: {} for k in ("denoiser", "reference", "driven_encoder", "audio", "temporal", "unread")
        }
        unread = {"reference." + name for name in self.reference.unread_parameter_names()}
        for name, param in self.named_parameters():
            if name in unread:
                groups["unread"][name] = param
            elif ".audio_attn." in name:
                groups["audio"][name] = param
            elif ".temporal." in name:
                groups["temporal"][name] = param
            else:
                groups[name.split(".", 1)[0]][name] = param
        return groups

    @classmethod
    def from_pixart(
        cls, pixart_dir: str | Path, config: MegActorConfig | None = None, strict: bool = True, **overrides
    ) -> MegActorModel:
        """A model whose denoiser and reference transformer start from PixArt-α: a diffusers pipeline folder (its
        `transformer/` is read) or that `transformer/` folder itself (local only). Without `config`, sizes come from
        the transformer's config.json; `overrides` set the rest."""
        from diffusers import PixArtTransformer2DModel

        folder = Path(pixart_dir)
        if (folder / "transformer" / "config.json").is_file():  # the pipeline folder, as published
            folder = folder / "transformer"
        pixart = PixArtTransformer2DModel.from_pretrained(str(folder), local_files_only=True)
        if config is None:
            config = config_from_pixart(dict(pixart.config), **overrides)
        elif overrides:
            config = replace(config, **overrides)
        model = cls(config)
        report = load_pixart_weights(model, pixart.state_dict())
        logger.info("from_pixart(%s): %s", pixart_dir, report.summary())
        if strict:
            report.raise_if_unexplained()
        return model


# ----------------------------------------------------------------------------------------------------------------
# Loading PixArt-α
# ----------------------------------------------------------------------------------------------------------------

_NEW_MODULES = (".audio_attn.", ".temporal.", "driven_encoder.")
_REPLACED_PIXART = (".attn2.", "caption_projection.")  # the text cross-attention and its caption projection


@dataclass
class PixArtLoadReport:
    loaded: list[str] = field(default_factory=list)  # model keys filled from PixArt-α
    new: list[str] = field(default_factory=list)  # model keys PixArt-α has no counterpart for (audio, temporal, ...)
    missing: list[str] = field(default_factory=list)  # model keys PixArt-α should have had but did not
    replaced: list[str] = field(default_factory=list)  # PixArt-α keys dropped by design (text cross-attention)
    unexpected: list[str] = field(default_factory=list)  # other PixArt-α keys left unused

    def summary(self) -> str:
        return (
            f"{len(self.loaded)} loaded, {len(self.new)} new, {len(self.replaced)} replaced (text cross-attention), "
            f"missing={self.missing}, unexpected={self.unexpected}"
        )

    def raise_if_unexplained(self) -> None:
        if self.missing or self.unexpected:
            raise ValueError(f"PixArt-α checkpoint does not fit the model: {self.summary()}")


def config_from_pixart(pixart_config: dict, **overrides) -> MegActorConfig:
    config = MegActorConfig(
        num_layers=pixart_config["num_layers"],
        hidden_size=pixart_config["num_attention_heads"] * pixart_config["attention_head_dim"],
        num_heads=pixart_config["num_attention_heads"],
        patch_size=pixart_config["patch_size"],
        latent_channels=pixart_config["in_channels"],
        out_channels=pixart_config["out_channels"] or pixart_config["in_channels"],
        sample_size=pixart_config["sample_size"],
        reference_blocks=min(MegActorConfig.reference_blocks, pixart_config["num_layers"]),
    )
    return replace(config, **overrides)


def load_pixart_weights(model: MegActorModel, pixart_state: dict[str, torch.Tensor]) -> PixArtLoadReport:
    """Copy a `PixArtTransformer2DModel` state dict into the denoiser and the reference transformer, in place.

    Shapes must match exactly, except the denoiser's input projection, whose first `latent_channels` input channels
    take PixArt-α's weights while the motion channels are set to zero. A shape mismatch raises with every one
    listed; missing and unexpected keys are returned in the report."""
    report, mismatched, used = PixArtLoadReport(), [], set()
    in_proj = "denoiser.pos_embed.proj.weight"
    with torch.no_grad():
        for key, target in model.state_dict().items():
            if any(m in key for m in _NEW_MODULES):
                report.new.append(key)
                continue
            source_key = key.split(".", 1)[1]
            if source_key not in pixart_state:
                report.missing.append(key)
                continue
            source = pixart_state[source_key]
            used.add(source_key)
            if key == in_proj and source.shape[1] <= target.shape[1] and source.shape[2:] == target.shape[2:]:
                target.zero_()
                target = target[:, : source.shape[1]]
            if source.shape != target.shape:
                mismatched.append(f"{key}: model {tuple(target.shape)} vs PixArt-α {tuple(source.shape)}")
                continue
            target.copy_(source)
            report.loaded.append(key)
    if mismatched:
        raise ValueError("PixArt-α weights do not fit the model's shapes:\n  " + "\n  ".join(mismatched))
    for key in sorted(set(pixart_state) - used):
        (report.replaced if any(r in key or key.startswith(r) for r in _REPLACED_PIXART) else report.unexpected).append(
            key
        )
    return report


# ----------------------------------------------------------------------------------------------------------------
# Audio: frozen Whisper encoder
# ----------------------------------------------------------------------------------------------------------------


class AudioEncoder(nn.Module):
    """Frozen Whisper encoder: 16 kHz waveforms (B, S) -> per-video-frame tokens (B, F, window_tokens x layers,
    d_model).

    Whisper's encoder emits 50 tokens per second over a fixed window (30 s for released models; longer audio is
    encoded in consecutive windows). Frame i (at `fps`) gets the `window_tokens` tokens centred on its middle
    instant, edges clamped: at 25 fps the default 10 tokens are the frame and two frames either side. Each token
    is taken from the last `layers` hidden states (None: all of them, the embedding output and every layer, as
    the authors' code does with whisper-tiny: 10 tokens x 5 = 50 per frame; 1: the last layer only)."""

    def __init__(self, encoder: nn.Module, feature_extractor, window_tokens: int = 10, layers: int | None = None):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.feature_extractor = feature_extractor
        self.window_tokens = window_tokens
        available = encoder.config.encoder_layers + 1  # the embedding output and each layer's
        if layers is not None and not 1 <= layers <= available:
            raise ValueError(f"layers must be 1..{available} for this Whisper encoder, got {layers}")
        self.layers = layers or available
        conv_stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]
        self.window_samples = encoder.config.max_source_positions * conv_stride * feature_extractor.hop_length
        self.token_rate = feature_extractor.sampling_rate / (feature_extractor.hop_length * conv_stride)

    @classmethod
    def from_config(cls, whisper_config, window_tokens: int = 10, layers: int | None = None) -> AudioEncoder:
        from transformers import WhisperFeatureExtractor
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        extractor = WhisperFeatureExtractor(feature_size=whisper_config.num_mel_bins)
        return cls(WhisperEncoder(whisper_config), extractor, window_tokens, layers)

    @classmethod
    def tiny(cls, width: int, window_tokens: int = 10, layers: int | None = None) -> AudioEncoder:
        """A one-layer, randomly initialised Whisper encoder ``width`` wide (tests and CPU benchmarks)."""
        from transformers import WhisperConfig

        return cls.from_config(WhisperConfig(d_model=width, encoder_layers=1, decoder_layers=1,
                                             encoder_attention_heads=2, decoder_attention_heads=2,
                                             encoder_ffn_dim=2 * width, decoder_ffn_dim=2 * width),
                               window_tokens, layers)

    @classmethod
    def from_pretrained(cls, path: str | Path, window_tokens: int = 10, layers: int | None = None) -> AudioEncoder:
        """From a local Whisper checkpoint directory (model and preprocessor config); never downloads."""
        from transformers import WhisperFeatureExtractor, WhisperModel

        extractor = WhisperFeatureExtractor.from_pretrained(str(path), local_files_only=True)
        encoder = WhisperModel.from_pretrained(str(path), local_files_only=True).get_encoder()
        return cls(encoder, extractor, window_tokens, layers)

    def train(self, mode: bool = True) -> AudioEncoder:
        return super().train(False)  # always frozen

    @torch.no_grad()
    def encode(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, S) at 16 kHz -> (B, ceil(S * rate / 16000), layers, d): each token from the last `layers` hidden
        states."""
        device = next(self.encoder.parameters()).device
        n_tokens = math.ceil(waveforms.shape[1] * self.token_rate / self.feature_extractor.sampling_rate)
        chunks = []
        for start in range(0, waveforms.shape[1], self.window_samples):
            piece = waveforms[:, start : start + self.window_samples].float().cpu().numpy()
            mel = self.feature_extractor(
                list(piece),
                sampling_rate=self.feature_extractor.sampling_rate,
                max_length=self.window_samples,
                padding="max_length",
                return_tensors="pt",
            ).input_features  # (B, mels, 2 * max_source_positions)
            hidden = self.encoder(mel.to(device, self.encoder.dtype), output_hidden_states=True).hidden_states
            chunks.append(torch.stack(hidden[-self.layers:], dim=2))  # (B, tokens, layers, d)
        return torch.cat(chunks, dim=1)[:, :n_tokens]

    def forward(self, waveforms: torch.Tensor, num_frames: int, fps: float, offset_s: float = 0.0) -> torch.Tensor:
        """``offset_s``: where the first frame starts in the waveform (audio context kept before it)."""
        tokens = self.encode(waveforms)  # (B, S_tok, L, d)
        frame_middle_s = (torch.arange(num_frames, device=tokens.device) + 0.5) / fps + offset_s
        centre = (frame_middle_s * self.token_rate).floor().long()
        index = centre[:, None] - self.window_tokens // 2 + torch.arange(self.window_tokens, device=tokens.device)
        index = index.clamp(0, tokens.shape[1] - 1)  # (F, T)
        return tokens[:, index].flatten(2, 3)  # (B, F, T * L, d)


# ----------------------------------------------------------------------------------------------------------------
# Size presets
# ----------------------------------------------------------------------------------------------------------------

PRESETS: dict[str, MegActorConfig] = {
    # PixArt-α XL/2 at 512 px: 28 blocks, 1152 wide, 16 heads, patch 2 on a 64x64x4 latent; whisper-tiny audio.
    "full": MegActorConfig(),
    "tiny": MegActorConfig(
        num_layers=4,
        hidden_size=64,
        num_heads=2,
        sample_size=8,
        reference_blocks=2,
        motion_channels=4,
        driven_encoder_channels=(8, 8, 8),
        audio_dim=32,
        max_frames=16,
    ),
    # For CPU benchmarks: a 12-block, 384-wide DiT at 256 px (32x32 latent), whisper-tiny-wide audio.
    "mid": MegActorConfig(
        num_layers=12,
        hidden_size=384,
        num_heads=6,
        sample_size=32,
        reference_blocks=6,
        audio_dim=384,
        max_frames=32,
    ),
}


def megactor_config(preset: str, **overrides) -> MegActorConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[preset], **overrides)
