"""LPIPS as the field reports it: the ``lpips`` package's v0.1 metric on AlexNet features.

The computation is the package's ``lpips.LPIPS(net="alex", version="0.1")`` in eval mode: shift and scale the
[-1, 1] input channels (its ScalingLayer), run AlexNet's ``features`` up to each of relu1 .. relu5, normalise each
feature vector to unit length over channels, square the difference of the two images' features, weight channels
with the learned 1x1 convolutions ``lin0 .. lin4``, average over space and sum over the five layers.

It is defined here because the package builds AlexNet from torchvision, which cannot enter this environment (see
pyproject.toml). The AlexNet layers keep torchvision's ``features`` indices, so ``alexnet-owt-7be5be79.pth``
(torchvision's ImageNet weights, which LPIPS uses unchanged) loads, and the linear layers keep the package's
names (``lin0.model.1.weight``: slot 0 held the dropout used only while training them), so the package's
``weights/v0.1/alex.pth`` loads. Both load strictly: the package itself loads its linear layers with
``strict=False``, so a renamed key there silently leaves random weights. ``tests/metrics/test_lpips.py`` runs the
package on the same weights and images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from metrics.fid import load_strict, read_state_dict

CHANNELS = (64, 192, 384, 256, 256)  # AlexNet's relu1 .. relu5
SLICE_ENDS = (2, 5, 8, 10, 12)  # torchvision features index after each of relu1 .. relu5
LIN_WEIGHTS_IN_PACKAGE = "weights/v0.1/alex.pth"  # inside the installed ``lpips`` package


class AlexNetFeatures(nn.Module):
    """torchvision's ``AlexNet.features`` (the "one weird trick" AlexNet), with its layer indices."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # not used by LPIPS; kept so the layout is torchvision's
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations after relu1 .. relu5."""
        outs, start = [], 0
        for end in SLICE_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs


class NetLinLayer(nn.Module):
    """One learned channel weighting (a 1x1 convolution to one channel, no bias)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # slot 0 is the reference's training-time dropout (identity at evaluation); kept so the key is model.1
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, stride=1, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # the package's normalize_tensor: eps added to the norm, not under the square root
    return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 (AlexNet) distance between two batches of images in [-1, 1]: (N, 3, H, W) x 2 -> (N,).
    Build it with :meth:`from_files` for real numbers; the plain constructor has random weights (tests)."""

    def __init__(self) -> None:
        super().__init__()
        # the package's ScalingLayer constants; non-persistent: they are not in either weights file
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None], persistent=False)
        self.net = AlexNetFeatures()
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (NetLinLayer(c) for c in CHANNELS)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, alexnet_path: str | Path, lin_path: str | Path) -> LPIPS:
        """The metric with torchvision's AlexNet weights (``alexnet-owt-7be5be79.pth``; its ``classifier`` head
        is not used) and the package's v0.1 linear layers (``alex.pth``), every key checked."""
        model = cls()
        alexnet = read_state_dict(alexnet_path, "AlexNet")
        stray = sorted(k for k in alexnet if not k.startswith(("features.", "classifier.")))
        if stray:
            raise ValueError(f"{alexnet_path} is not a torchvision AlexNet state dict: unexpected keys {stray[:5]}")
        load_strict(model.net, {k: v for k, v in alexnet.items() if k.startswith("features.")}, alexnet_path)
        lins = nn.ModuleDict({f"lin{i}": getattr(model, f"lin{i}") for i in range(len(CHANNELS))})
        load_strict(lins, read_state_dict(lin_path, "LPIPS linear layers"), lin_path)
        return model

    def forward(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        if in0.shape != in1.shape or in0.ndim != 4 or in0.shape[1] != 3:
            raise ValueError(f"LPIPS compares two (N, 3, H, W) batches of one shape, got {tuple(in0.shape)} and "
                             f"{tuple(in1.shape)}")
        feats0 = self.net((in0 - self.shift) / self.scale)
        feats1 = self.net((in1 - self.shift) / self.scale)
        total = 0
        for lin, f0, f1 in zip((self.lin0, self.lin1, self.lin2, self.lin3, self.lin4), feats0, feats1, strict=True):
            diff = (_unit_normalize(f0) - _unit_normalize(f1)) ** 2  # (N, C, h, w)
            total = total + lin(diff).mean((2, 3), keepdim=True)  # (N, 1, 1, 1)
        return total.flatten()  # (N,)

    def forward_unit(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        """The distance for images in [0, 1] (what decoders and video readers give; the package's
        ``normalize=True``)."""
        return self(2 * in0 - 1, 2 * in1 - 1)


def packaged_lin_weights() -> Path | None:
    """The v0.1 AlexNet linear layers shipped inside an installed ``lpips`` package, if there is one (found
    without importing the package, which imports torchvision)."""
    spec = importlib.util.find_spec("lpips")
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    paths = [Path(folder) / LIN_WEIGHTS_IN_PACKAGE for folder in folders]
    return next((path for path in paths if path.is_file()), None)
