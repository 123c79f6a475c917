"""Where models run. ``auto`` picks CUDA when this process can see a GPU (through torch or ONNX Runtime), else
the CPU; ``cuda`` insists on a GPU and fails at start, naming what is missing, when there is none."""

from __future__ import annotations

import importlib.util

from curation.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return True
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return False


def resolve_device(requested: str) -> str:
    """``"cpu"`` or ``"cuda"`` for a configured ``auto | cpu | cuda``."""
    if requested not in DEVICES:
        raise ConfigError(f"unknown device {requested!r}; use one of {', '.join(DEVICES)}")
    if requested == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if requested == "cuda":
        raise ConfigError(
            "device 'cuda' was asked for, but this process sees no GPU (torch.cuda.is_available() is false and "
            "ONNX Runtime has no CUDAExecutionProvider); install the CUDA builds or use --device cpu"
        )
    return "cpu"


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime execution providers for a resolved device (CUDA first, the CPU as fallback)."""
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
