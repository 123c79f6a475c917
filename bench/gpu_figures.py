"""GPU figures (issue 12, goal 5), each with its CPU figure measured in the same run and the ratio: one command,
a few minutes on an H200. GPU-only: never run by the tests or CI; it exits with status 2 and a message when no
CUDA GPU is visible. Needs the CUDA builds (torch, and onnxruntime-gpu for the DWPose section).

- ``decode``: ffmpeg decode of the 1080p H.264 shared clip at full size and 25 fps (SyncNet's input) on the CPU
  and with NVDEC (``-hwaccel cuda``, as ``runtime.hwaccel`` runs it), output frames/s of one process; NVDEC's
  frames are compared with the CPU decoder's (mean absolute difference of the RGB values);
- ``dwpose``: DWPose frames/s (YOLOX-L + DWPose-L through ONNX Runtime, ``curation.dwpose.DWPose``, batches of
  16 frames at 1280x720) on CUDA and on the CPU, with the real weights when the registry has them. Without them
  (or without onnxruntime-gpu) a stand-in is timed instead and named so: a stack of 3x3 convolutions in torch with
  YOLOX-L's FLOPs at 640x640 (155.6 GFLOP, not its architecture), which measures what ``gpu_hours_estimate.py``
  assumes (the effective TFLOP/s of such convnets);
- ``syncnet``: ``megactor sync``'s code path on the reference example clip on CUDA and on the CPU, and the
  reference evaluation (syncnet-python, as ``bench/syncnet_vs_reference.py`` runs it) on both devices; real
  weights when present, else random ones in the real architecture;
- ``train``: the full preset's training step at 512 px x 16 frames (stage 3's shape), ``bench/train_throughput.py``'s
  code path: seconds per step and peak GPU memory, and one CPU step for the ratio (``--no-cpu-train`` skips it). The
  SD VAE and Whisper-tiny come from the registry when present, else random weights in their real architectures.

    .venv/bin/python bench/gpu_figures.py [--json gpu_figures.json] [--sections decode dwpose syncnet train]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _report import emit  # noqa: E402

from curation import media, weights  # noqa: E402

SECTIONS = ("decode", "dwpose", "syncnet", "train")


def _ratio(gpu: float, cpu: float) -> float:
    return round(gpu / cpu, 2) if cpu else float("nan")


def _registry_path(name: str) -> Path | None:
    try:
        state, path = weights.status(name)
    except Exception:  # not registered, or the registry cannot say
        return None
    return path if state == "ok" else None


# -- decode ------------------------------------------------------------------------------------------------------

def decode_figures(clip: Path, seconds: float = 10.0) -> dict[str, Any]:
    probe = media.probe(clip)

    def run(hwaccel: str | None) -> tuple[float, np.ndarray]:
        started = time.perf_counter()
        frames = [f for _, f in media.iter_frames(clip, probe, duration_s=seconds, fps=25, hwaccel=hwaccel)]
        return len(frames) / (time.perf_counter() - started), np.stack(frames[:25])

    cpu_fps, cpu_frames = run(None)
    gpu_fps, gpu_frames = run("cuda")
    return {"clip": clip.name, "cpu_fps": round(cpu_fps, 1), "nvdec_fps": round(gpu_fps, 1),
            "ratio_nvdec_over_cpu": _ratio(gpu_fps, cpu_fps),
            "nvdec_vs_cpu_mean_abs_rgb_diff": round(float(np.abs(gpu_frames.astype(np.int16)
                                                                 - cpu_frames.astype(np.int16)).mean()), 3),
            "note": "one ffmpeg process each; the estimate's --nvdec-fps is the whole GPU's (several processes)"}


# -- DWPose ------------------------------------------------------------------------------------------------------

def _frames(clip: Path, count: int = 32) -> list[np.ndarray]:
    probe = media.probe(clip)
    return [f for _, f in media.iter_frames(clip, probe, fps=5, max_side=1280, duration_s=count / 5)][:count]


def _dwpose_rate(model, frames: list[np.ndarray], batch: int = 16, repeats: int = 3) -> float:
    model(frames[:batch])  # warm-up (CUDA kernels, arena)
    started = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(frames), batch):
            model(frames[i:i + batch])
    return repeats * len(frames) / (time.perf_counter() - started)


class _ConvStack(torch.nn.Module):
    """Not YOLOX-L: 3x3 convolutions with its FLOPs at 640x640 (a stride-8 feature map, 256 channels)."""

    def __init__(self, layers: int):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, 2, 1), torch.nn.SiLU(),
                                        torch.nn.Conv2d(64, 128, 3, 2, 1), torch.nn.SiLU(),
                                        torch.nn.Conv2d(128, 256, 3, 2, 1), torch.nn.SiLU())
        self.body = torch.nn.Sequential(*[m for _ in range(layers) for m in (torch.nn.Conv2d(256, 256, 3, 1, 1),
                                                                                torch.nn.SiLU())])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


def _stand_in_rate(device: str, batch: int = 16, repeats: int = 5) -> tuple[float, float]:
    """(frames/s, effective TFLOP/s) of the stand-in at 640x640 on ``device``."""
    from torch.utils.flop_counter import FlopCounterMode

    layers = 20  # 20 x 7.55 + 7.9 (the stem) = 159 GFLOP per 640x640 frame: YOLOX-L's 155.6, within 2 %
    net = _ConvStack(layers).eval().to(device)
    x = torch.randn(batch, 3, 640, 640, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x[:1])
    flop = counter.get_total_flops()
    reps = repeats if device == "cuda" else 1
    with torch.no_grad():
        net(x)
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(reps):
            net(x)
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / (reps * batch)
    return 1 / seconds, flop / seconds / 1e12


def dwpose_figures(clip: Path) -> dict[str, Any]:
    import onnxruntime

    from curation.config import DWPoseConfig
    from curation.devices import onnx_providers
    from curation.dwpose import DWPose

    detector, pose = _registry_path("yolox_l"), _registry_path("dw-ll_ucoco_384")
    has_cuda_ep = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if detector and pose and has_cuda_ep:
        frames = _frames(clip)
        rates = {device: _dwpose_rate(DWPose.from_config(detector, pose, onnx_providers(device), DWPoseConfig()),
                                      frames if device == "cuda" else frames[:16]) for device in ("cuda", "cpu")}
        return {"model": "DWPose (YOLOX-L + DWPose-L), real weights, ONNX Runtime", "frames": "1280x720, batches of 16",
                "cuda_frames_per_s": round(rates["cuda"], 1), "cpu_frames_per_s": round(rates["cpu"], 2),
                "ratio_gpu_over_cpu": _ratio(rates["cuda"], rates["cpu"])}
    why = ("the real DWPose weights are not in the registry" if not (detector and pose)
           else "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    gpu_fps, gpu_tflops = _stand_in_rate("cuda")
    cpu_fps, cpu_tflops = _stand_in_rate("cpu", batch=2)
    return {"model": f"stand-in, not DWPose ({why}): 3x3 convolutions with YOLOX-L's 155.6 GFLOP per 640x640 frame, "
                     "torch, TF32 allowed", "cuda_frames_per_s": round(gpu_fps, 1),
            "cuda_effective_tflops": round(gpu_tflops, 1), "cpu_frames_per_s": round(cpu_fps, 3),
            "cpu_effective_tflops": round(cpu_tflops, 3), "ratio_gpu_over_cpu": _ratio(gpu_fps, cpu_fps)}


# -- SyncNet ------------------------------------------------------------------------------------------------------

def _reference_on(device: str, clip: Path, model: Path, tmp: Path) -> float:
    """The reference demo's steps (bench/syncnet_vs_reference.py's) on ``device``: seconds."""
    from syncnet_vs_reference import _reference

    return _reference(clip, model, tmp, device=device)[0]


def syncnet_figures(clip: Path, tmp: Path) -> dict[str, Any]:
    from curation.config import SyncConfig
    from curation.scorers.sync_syncnet import score_video
    from tests.metrics import reference_syncnet

    model = _registry_path("syncnet_v2")
    kind = "syncnet_v2 (real)"
    if model is None:
        model, kind = reference_syncnet.random_weights(clip, tmp / "random.model"), "random, real architecture"
    config = SyncConfig(weights=model, batch_size=64)
    figures: dict[str, Any] = {"clip": clip.name, "weights": kind}
    for device in ("cuda", "cpu"):
        score_video(str(clip), config, device=device)  # warm-up
        started = time.perf_counter()
        scores = score_video(str(clip), config, device=device)
        figures[f"ours_{device}_s"] = round(time.perf_counter() - started, 2)
        figures[f"ours_{device}_scores"] = {k: scores[k] for k in ("sync_offset", "sync_c", "sync_d")}
        try:
            figures[f"reference_{device}_s"] = round(_reference_on(device, clip, model, tmp), 2)
        except Exception as error:  # the reference's device handling is its own: report, do not stop
            figures[f"reference_{device}_error"] = f"{type(error).__name__}: {error}"
    figures["ratio_ours_gpu_over_cpu_speed"] = _ratio(figures["ours_cpu_s"], figures["ours_cuda_s"])
    if "reference_cuda_s" in figures:
        figures["speedup_ours_vs_reference_on_gpu"] = _ratio(figures["reference_cuda_s"], figures["ours_cuda_s"])
    return figures


# -- training ------------------------------------------------------------------------------------------------------

def _model_dirs(tmp: Path) -> tuple[Path, Path, str]:
    """The SD VAE and Whisper-tiny folders: the registry's, else random weights in their real architectures."""
    vae, whisper = _registry_path("sd-vae-ft-ema"), _registry_path("whisper-tiny")
    kind = "registry"
    if vae is None:
        from diffusers import AutoencoderKL

        vae, kind = tmp / "sd-vae-random", "random weights, real architectures"
        AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                      layers_per_block=2, latent_channels=4, sample_size=512).save_pretrained(vae)
    if whisper is None:
        from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

        whisper, kind = tmp / "whisper-tiny-random", "random weights, real architectures"
        WhisperModel(WhisperConfig(d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
                                   decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
                                   num_mel_bins=80)).save_pretrained(whisper)
        WhisperFeatureExtractor(feature_size=80).save_pretrained(whisper)
    return vae, whisper, kind


def train_figures(videos: Path, tmp: Path, cpu: bool) -> dict[str, Any]:
    from train_throughput import _config, step_rate  # bench/ is on sys.path: this script's folder

    from tests.tiny_manifest import build_tiny_manifest

    vae, whisper, kind = _model_dirs(tmp)
    manifest = build_tiny_manifest(videos, tmp / "manifest")
    config = _config("full", 16, manifest, tmp / "out", str(vae), str(whisper))
    config = config.with_overrides({"model.use_audio": True, "model.use_temporal": True, "trains": ["temporal"]})
    torch.cuda.reset_peak_memory_stats()
    rate, params = step_rate(config, 3, torch.device("cuda"))
    figures: dict[str, Any] = {"shape": "full preset, stage 3 (16 frames, 512 px), batch 1", "vae_whisper": kind,
                               "parameters": params, "cuda_s_per_step": round(1 / rate, 3),
                               "cuda_peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    if cpu:
        cpu_rate, _ = step_rate(config, 1, torch.device("cpu"))
        figures["cpu_s_per_step"] = round(1 / cpu_rate, 2)
        figures["ratio_gpu_over_cpu_speed"] = _ratio(rate, cpu_rate)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("MEGACTOR_ASSETS", Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--videos", default=str(shared / "videos"))
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--no-cpu-train", action="store_true", help="skip the CPU training step (minutes)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/gpu_figures.py measures GPU figures, and no CUDA GPU is visible to this process "
              f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). "
              "Run it on a GPU machine with the CUDA builds of torch (and onnxruntime-gpu).", file=sys.stderr)
        return 2
    videos = Path(args.videos)
    figures: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                               "cpu_threads": torch.get_num_threads(),
                               "command": "python bench/gpu_figures.py " + " ".join(sys.argv[1:])}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        jobs = {"decode": lambda: decode_figures(videos / "w2lgfpgan_kim_7s_raw.mp4", seconds=7.0),
                "dwpose": lambda: dwpose_figures(videos / "derived_katiehill_upscaled_1280.mp4"),
                "syncnet": lambda: syncnet_figures(videos / "syncnet_example.avi", tmp),
                "train": lambda: train_figures(videos, tmp, cpu=not args.no_cpu_train)}
        for section in args.sections:
            started = time.perf_counter()
            try:
                figures[section] = jobs[section]()
            except Exception as error:  # one section failing must not lose the others' figures
                figures[section] = {"error": f"{type(error).__name__}: {error}",
                                    "traceback": traceback.format_exc(limit=4)}
            figures[section]["section_wall_s"] = round(time.perf_counter() - started, 1)
            print(f"{section}: done in {figures[section]['section_wall_s']} s", file=sys.stderr)
    return emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
