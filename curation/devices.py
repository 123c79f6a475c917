"""Where models run. ``auto`` picks CUDA when this process can see a GPU (through torch or ONNX Runtime), else
the CPU; ``cuda`` insists on a GPU and fails at start, naming what is missing, when there is none."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from curation.errors import ConfigError

log = logging.getLogger(__name__)

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


# -- hardware decoding -------------------------------------------------------------------------------------------

HWACCELS = ("auto", "cuda", "off")


def gpu_visible() -> bool:
    """A CUDA device is visible to this process: a driver device node, and CUDA_VISIBLE_DEVICES (which Ray sets
    to "" for tasks that asked for no GPU) not hiding it. Cheap: no torch or CUDA import."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "NoDevFiles"):
        return False
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


def ffmpeg_hwaccels(ffmpeg: str | None = None) -> tuple[str, ...]:
    """The hardware decoders this ffmpeg build lists (``ffmpeg -hwaccels``); () when it cannot say."""
    from curation import media

    try:
        out = subprocess.run([ffmpeg or media.FFMPEG, "-hide_banner", "-hwaccels"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    lines = [line.strip() for line in out.splitlines()]
    return tuple(line for line in lines[1:] if line)  # after "Hardware acceleration methods:"


def nvdec_decodes(ffmpeg: str | None = None) -> bool:
    """One frame of a small H.264 stream decodes with ``-hwaccel cuda`` (the device opens; ffmpeg fails the
    whole decode when it cannot create it, rather than fall back)."""
    from curation import media

    ffmpeg = ffmpeg or media.FFMPEG
    with tempfile.TemporaryDirectory() as folder:
        sample = str(Path(folder) / "nvdec_check.mp4")
        try:
            subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=256x256:rate=25", "-frames:v",
                            "2", "-c:v", "libx264", "-pix_fmt", "yuv420p", sample], check=True, capture_output=True,
                           timeout=30)
            subprocess.run([ffmpeg, "-v", "error", "-hwaccel", "cuda", "-i", sample, "-frames:v", "1", "-f", "null",
                            "-"], check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return False
    return True


@functools.cache
def decode_hwaccel(requested: str) -> str | None:
    """The ``hwaccel`` for ``media.iter_frames`` from ``runtime.hwaccel`` (auto | cuda | off), decided once per
    process: "cuda" when a GPU is visible here, ffmpeg lists cuda among its hwaccels and a test frame decodes with
    it; else None (the CPU decoder, as without the setting), with a log line saying why when it was asked for."""
    if requested not in HWACCELS:
        raise ConfigError(f"unknown hwaccel {requested!r}; use one of {', '.join(HWACCELS)}")
    if requested == "off":
        return None
    if not gpu_visible():
        if requested == "cuda":
            log.warning("hwaccel cuda: no GPU visible to this process (CUDA_VISIBLE_DEVICES=%r); decoding on the "
                        "CPU", os.environ.get("CUDA_VISIBLE_DEVICES"))
        return None
    from curation import media

    if shutil.which(media.FFMPEG) is None or "cuda" not in ffmpeg_hwaccels():
        log.warning("hwaccel %s: this ffmpeg does not list cuda in `ffmpeg -hwaccels`; decoding on the CPU", requested)
        return None
    if not nvdec_decodes():
        log.warning("hwaccel %s: a test decode with -hwaccel cuda failed; decoding on the CPU", requested)
        return None
    log.info("decoding with NVDEC (ffmpeg -hwaccel cuda)")
    return "cuda"
