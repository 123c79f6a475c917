"""Fréchet Video Distance with the PyTorch I3D port that TATS and cd-fvd use, so that our scores can be set
beside numbers computed with those tools (FVD is comparable only within one port and one protocol).

The network is the Kinetics-400 Inception-v1 I3D of Carreira & Zisserman in piergiaj/pytorch-i3d's layout, as
copied into VideoGPT, TATS and cd-fvd (``InceptionI3d``; ``Unit3D`` convolutions with TensorFlow "SAME"
padding; BatchNorm eps 1e-5, where piergiaj's original and TF use 1e-3: one of the things that make a port's
numbers its own). Its parameter names are theirs, so ``i3d_pretrained_400.pt`` (VideoGPT's
conversion of TF-Hub ``deepmind/i3d-kinetics-400/1``, the network of the original TensorFlow FVD) loads strictly.
``tests/metrics/test_fvd.py`` runs it against cd-fvd's copy on the same random weights.

The protocol (:data:`PROTOCOL`, recorded with every :class:`FVDScore`):

- clips of exactly 16 RGB frames, (N, 16, H, W, 3), uint8 in 0..255 or float in [0, 1];
- every frame resized straight to 224x224 with ``F.interpolate(mode="bilinear", align_corners=False)``
  (no antialiasing, aspect ratio not kept: a non-square clip is stretched), then scaled to [-1, 1] as
  ``2 * x / 255 - 1``: TATS's and cd-fvd's ``preprocess``, the steps of the TensorFlow FVD (whose TF1
  bilinear resize places pixel centres differently);
- features: the 400-d Kinetics logits before softmax, i.e. Mixed_5c -> AvgPool3d(2, 7, 7) -> 1x1x1 conv,
  averaged over the remaining time steps (one for 16 frames): what TATS's ``get_fvd_logits`` and cd-fvd's
  ``get_i3d_logits`` return, and what StyleGAN-V's TorchScript detector returns with ``return_features=True``;
- distance: Fréchet distance between Gaussians fitted to the two feature sets, with the unbiased (N - 1)
  covariance of TATS and pytorch-fid. (cd-fvd's and StyleGAN-V's ``FeatureStats`` divide by N; the difference
  is a factor (N - 1) / N on the covariances, negligible at the usual 2048 clips, visible on small sets.)

Not followed: VideoGPT's current ``get_fvd_logits`` routes clips through its dataset ``preprocess`` (short
side resized to 224, centre crop, values shifted to [-0.5, 0.5]); its numbers are a different protocol."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metrics.frechet import feature_statistics, frechet_distance

FRAMES = 16
RESOLUTION = 224
FEATURES = 400  # Kinetics-400 classes


@dataclass(frozen=True)
class FVDProtocol:
    """Everything that makes two FVD numbers comparable, stored next to each score."""

    port: str = "TATS / cd-fvd InceptionI3d (piergiaj/pytorch-i3d layout, BatchNorm eps 1e-5)"
    weights: str = "i3d_pretrained_400.pt (VideoGPT's conversion of TF-Hub deepmind/i3d-kinetics-400/1)"
    weights_sha256: str | None = None  # of the file the network was loaded from; None: not loaded from a file
    frames: int = FRAMES
    resolution: int = RESOLUTION
    resize: str = ("every frame straight to 224x224, F.interpolate bilinear, align_corners=False, "
                   "no antialias, aspect ratio not kept")
    value_range: str = "[-1, 1] as 2 * x / 255 - 1"
    feature_layer: str = "logits before softmax (400-d): Mixed_5c -> AvgPool3d(2,7,7) -> 1x1x1 conv, mean over time"
    covariance: str = "unbiased (N - 1), as TATS and pytorch-fid"


PROTOCOL = FVDProtocol()


# -- the network ------------------------------------------------------------------------------------------------

def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one dimension: the output has ceil(size / stride) positions and the odd
    padding pixel goes at the end (TF's rule, which a symmetric PyTorch ``padding=`` cannot express)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    (t0, t1), (h0, h1), (w0, w1) = (same_padding(s, k, st) for s, k, st in zip(x.shape[2:], kernel, stride, strict=True))
    return F.pad(x, (w0, w1, h0, h1, t0, t1))


class MaxPool3dSamePadding(nn.MaxPool3d):
    """Max pooling with "SAME" padding. Padding with zeros rather than -inf matches TF here because every
    pool in I3D follows a ReLU (inputs are >= 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_pad_same(x, self.kernel_size, self.stride))


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm + ReLU with "SAME" padding computed from the input size, so that the
    converted TF weights see the same borders as in TF."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int] = (1, 1, 1),
                 stride: Sequence[int] = (1, 1, 1), *, batch_norm: bool = True, bias: bool = False,
                 relu: bool = True) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.001) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    """Four branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3; pool -> 1x1) concatenated on channels. ``widths`` are the
    output channels of b0, b1a, b1b, b2a, b2b, b3b in that order."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = widths
        self.b0 = Unit3D(in_channels, c0)
        self.b1a = Unit3D(in_channels, c1a)
        self.b1b = Unit3D(c1a, c1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, c2a)
        self.b2b = Unit3D(c2a, c2b, (3, 3, 3))
        self.b3a = MaxPool3dSamePadding((3, 3, 3), stride=(1, 1, 1))
        self.b3b = Unit3D(in_channels, c3)
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (name, widths) of the Inception modules, and the pools between them, in the order they run
_TRUNK: tuple[tuple[str, tuple[int, ...] | None], ...] = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", None),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", None),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


class InceptionI3d(nn.Module):
    """Inception-v1 I3D with a 400-way Kinetics head. Child names (``Conv3d_1a_7x7`` ... ``Mixed_5c``,
    ``logits``) are the port's, which fixes the state-dict keys of ``i3d_pretrained_400.pt``. Always used in
    eval mode (BatchNorm on running statistics, dropout off)."""

    def __init__(self, num_classes: int = FEATURES, in_channels: int = 3) -> None:
        super().__init__()
        self.weights_sha256: str | None = None
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSamePadding((1, 3, 3), stride=(1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSamePadding((1, 3, 3), stride=(1, 2, 2))
        channels = 192
        self.endpoints = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                          *(name for name, _ in _TRUNK))
        for name, widths in _TRUNK:
            if widths is None:
                kernel = (3, 3, 3) if name == "MaxPool3d_4a_3x3" else (2, 2, 2)
                self.add_module(name, MaxPool3dSamePadding(kernel, stride=(2, 2, 2)))
            else:
                module = InceptionModule(channels, widths)
                self.add_module(name, module)
                channels = module.out_channels
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=(1, 1, 1))
        self.dropout = nn.Dropout(0.5)  # the port's (keep_prob passed as p); inactive in eval mode
        self.logits = Unit3D(channels, num_classes, batch_norm=False, bias=True, relu=False)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) in [-1, 1] -> Mixed_5c output (N, 1024, ~T/8, ~H/32, ~W/32)."""
        for name in self.endpoints:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, 224, 224) in [-1, 1] -> (N, 400) logits, averaged over time."""
        x = self.logits(self.dropout(self.avg_pool(self.trunk(x))))  # (N, 400, T', 1, 1)
        return x.squeeze(4).squeeze(3).mean(dim=2)

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu") -> InceptionI3d:
        """The network with weights from a state-dict file in the port's format (``i3d_pretrained_400.pt``),
        loaded strictly and in eval mode; its sha256 is kept for :class:`FVDScore`'s protocol."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"I3D weights file not found: {path} (expected i3d_pretrained_400.pt)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
        net = cls()
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{path} is not an InceptionI3d (Kinetics-400) state dict: {error}") from None
        net.weights_sha256 = _sha256(path)
        return net.to(device).eval()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- inputs and features ----------------------------------------------------------------------------------------

def preprocess(videos: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, 16, H, W, 3) uint8 (0..255) or float ([0, 1]) clips -> (N, 3, 16, 224, 224) float32 in [-1, 1]."""
    clips = torch.as_tensor(videos)
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"FVD takes (N, T, H, W, 3) RGB clips, got shape {tuple(clips.shape)}")
    if clips.shape[1] != FRAMES:
        raise ValueError(f"FVD's protocol takes clips of {FRAMES} frames, got {clips.shape[1]}: cut them first")
    if clips.dtype == torch.uint8:
        clips = clips.float()
    elif clips.is_floating_point():
        low, high = float(clips.min()), float(clips.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise ValueError(f"float clips must be in [0, 1] (got {low:.3g}..{high:.3g}); pass uint8 for 0..255")
        clips = clips.float() * 255.0
    else:
        raise TypeError(f"FVD clips must be uint8 or float, got {clips.dtype}")
    n, t, h, w, c = clips.shape
    frames = clips.reshape(n * t, h, w, c).permute(0, 3, 1, 2)  # (N*T, 3, H, W)
    frames = F.interpolate(frames, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False)
    clips = frames.reshape(n, t, c, RESOLUTION, RESOLUTION).transpose(1, 2)  # (N, 3, T, 224, 224)
    return (2.0 * clips / 255.0 - 1.0).contiguous()


@torch.inference_mode()
def i3d_features(net: InceptionI3d, videos: np.ndarray | torch.Tensor, *, batch_size: int = 16,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """(N, 400) float64 FVD features of (N, 16, H, W, 3) clips, preprocessed one batch at a time so that
    memory stays bounded on large sets."""
    if net.training:
        raise ValueError("the I3D network must be in eval mode (BatchNorm on running statistics)")
    feats = [net(preprocess(videos[start: start + batch_size]).to(device)).double().cpu()
             for start in range(0, len(videos), batch_size)]
    return torch.cat(feats).numpy() if feats else np.zeros((0, FEATURES))


# -- the score --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FVDScore:
    fvd: float
    n_real: int
    n_fake: int
    protocol: dict[str, object] = field(default_factory=lambda: asdict(PROTOCOL))


def fvd_from_features(real: np.ndarray, fake: np.ndarray, *, weights_sha256: str | None = None) -> FVDScore:
    """FVD between two (N, 400) feature sets (each needs N >= 2 for a covariance)."""
    for name, feats in (("real", real), ("fake", fake)):
        if feats.ndim != 2 or len(feats) < 2:
            raise ValueError(f"{name} features must be (N >= 2, D), got shape {feats.shape}")
    value = frechet_distance(*feature_statistics(real), *feature_statistics(fake))
    protocol = asdict(FVDProtocol(weights_sha256=weights_sha256))
    return FVDScore(fvd=float(value), n_real=len(real), n_fake=len(fake), protocol=protocol)


def compute_fvd(net: InceptionI3d, real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, *,
                batch_size: int = 16, device: str | torch.device = "cpu") -> FVDScore:
    """FVD between two sets of (N, 16, H, W, 3) clips under :data:`PROTOCOL`, with the network's sha256."""
    real_feats = i3d_features(net, real, batch_size=batch_size, device=device)
    fake_feats = i3d_features(net, fake, batch_size=batch_size, device=device)
    return fvd_from_features(real_feats, fake_feats, weights_sha256=net.weights_sha256)
