"""Augmentation throughput per CPU core, and an estimate of the GPU-hours to augment the paper's 313 h, beside the
authors' approach (FaceFusion run as a subprocess per clip; SDXL-Turbo image-to-image at 30 UNet passes per frame).

Measured here, on ONE CPU core (the process is pinned to CPU 0, torch runs one thread):
- the whole face-swap path of ``curation.augment.pipeline`` on a clip (decode, the real SCRFD-500M on every frame,
  keypoint smoothing, tiny ArcFace/inswapper models in the real contract, InsightFace's paste-back, x264, the
  identity and motion checks), on a 512 px and a 1080p shared clip: frames per second;
- the whole stylization path with a tiny diffusers pipeline on a 128 px crop (decode, cut, model, paste-back of the
  crop into the whole frame, x264, checks: the CPU side; the real model's cost is counted);
- its parts: full-size decode, SCRFD-500M per frame, paste-back, x264 encode, and the temporary-frame round trip
  the FaceFusion subprocess approach pays (every frame written to disk as PNG and read back).
Counted on the meta device (exact for these shapes, no weights): SD-Turbo's UNet (the SD 2.1 architecture), the
SDXL UNet (SDXL-Turbo), the SD VAE's encoder and decoder at 512 px.
Assumed (stated, not measured: no GPU was lent and the real swap models cannot be downloaded here): the
effective GPU rates, inswapper_128's FLOPs (unpublished), SCRFD-10G's (its name), FaceFusion's model load per clip.

    .venv/bin/python bench/augment_fps.py [--seconds 4] [--hours 313] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402
import torch  # noqa: E402
from _report import emit  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from curation import media  # noqa: E402
from curation.encode import VideoWriter  # noqa: E402

CLIPS = {"512px": "sadtalker_WDA_KatieHill_000.mp4", "1080p": "w2lgfpgan_kim_7s_raw.mp4"}
SCRFD_10G_GFLOP = 10.0  # SCRFD-10GF: 10 GFLOPs at VGA (its published name); at 640x640 about 13
ARCFACE_R50_GFLOP = 6.3  # IResNet-50 at 112 px (published); only on the 2 frames/s checked, twice
SD21_UNET = dict(sample_size=64, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                 use_linear_projection=True)
SDXL_UNET = dict(sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                 attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)


def _tflop(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


def counted_costs() -> dict[str, float]:
    """TFLOP per 512 px frame of the diffusion parts, counted on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        latent, image = torch.zeros(1, 4, 64, 64), torch.zeros(1, 3, 512, 512)
        sd21 = UNet2DConditionModel(**SD21_UNET)
        sdxl = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SD_VAE)
        return {
            "sd_turbo_unet_tflop": _tflop(lambda: sd21(latent, 999, torch.zeros(1, 77, 1024))),
            "sdxl_unet_tflop": _tflop(lambda: sdxl(latent, 999, torch.zeros(1, 77, 2048), added_cond_kwargs={
                "text_embeds": torch.zeros(1, 1280), "time_ids": torch.zeros(1, 6)})),
            "vae_encode_tflop": _tflop(lambda: vae.encode(image)),
            "vae_decode_tflop": _tflop(lambda: vae.decode(latent)),
        }


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 2) if seconds else float("nan")


def measure_parts(path: Path, seconds: float, swapper, tmp: Path) -> dict[str, float]:
    probe = media.probe(path)
    started = time.perf_counter()
    frames = [f for _, f in media.iter_frames(path, probe, duration_s=seconds, fps=25)]
    decode = _rate(len(frames), time.perf_counter() - started)
    small = [cv2.resize(f, media.output_size(probe, 640), interpolation=cv2.INTER_AREA) for f in frames]
    started = time.perf_counter()
    track = swapper.track(small, 25.0, scale=(probe.width / small[0].shape[1], probe.height / small[0].shape[0]))
    detect = _rate(len(small), time.perf_counter() - started)
    source = swapper.embed([swapper.aligned(frames[0], track.kps[0])])[0]
    started = time.perf_counter()
    swapped = [swapper.swap(f, k, source) for f, k in zip(frames, track.kps, strict=True)]
    swap = _rate(len(frames), time.perf_counter() - started)
    started = time.perf_counter()
    with VideoWriter(tmp / "bench.mp4", width=probe.width, height=probe.height, fps=25) as writer:
        for frame in swapped:
            writer.write(frame)
    encode = _rate(len(swapped), time.perf_counter() - started)
    started = time.perf_counter()
    for k, frame in enumerate(frames):  # what a subprocess working on temporary frame files adds
        cv2.imwrite(str(tmp / f"{k:06d}.png"), frame)
        cv2.imread(str(tmp / f"{k:06d}.png"))
    png = _rate(len(frames), time.perf_counter() - started)
    return {"decode_fps": decode, "scrfd_500m_fps": detect, "paste_back_fps": swap, "x264_encode_fps": encode,
            "png_round_trip_fps": png}


def measure_paths(videos: Path, seconds: float, work: Path) -> tuple[dict, dict]:
    """End-to-end frames/s of the pipeline's face swap and stylization on each clip, one core."""
    from curation.augment import pipeline
    from curation.augment.config import load_augment_config
    from tests import tiny_insightface
    from tests.tiny_diffusers import build_tiny_img2img
    from tests.tiny_manifest import build_tiny_manifest, shortened_manifest

    manifest = build_tiny_manifest(videos, work / "curated", clips=tuple(CLIPS.values()))
    run = shortened_manifest(manifest, work / "short", seconds)
    overrides = {"faceswap.detector": "scrfd_500m", "runtime.device": "cpu",
                 "faceswap.embedder_weights": str(tiny_insightface.arcface(work / "arcface.onnx")),
                 "faceswap.swapper_weights": str(tiny_insightface.swapper(work / "swapper.onnx")),
                 # a 64 px crop through the tiny model (its VAE halves, not eighths: at 512 px its UNet would attend
                 # over 65,536 tokens, which says nothing of SD-Turbo, whose cost is counted below); the model's
                 # own time is taken out of the CPU-side figure
                 "stylize.model_dir": str(build_tiny_img2img(work / "tiny-sd")), "stylize.resolution": 64}
    config = load_augment_config(None, overrides)
    source = pipeline.manifest_dir(run)
    clips = pipeline.preflight(config, source)
    rows = clips.to_pylist()
    pipeline.load_or_save_plan(pipeline.AugmentLayout(work / "out"), pipeline.plan_shards(clips, 10), config, source)
    augmenter = pipeline.Augmenter(config, work / "out", source, "mediapipe")
    augmenter.identities(0, rows)
    for component in augmenter.components.values():
        component.ensure_setup()  # loading is once per worker, not per clip: not timed
    paths = {}
    stylizer = augmenter.components["stylize"]
    for name, clip in CLIPS.items():
        row = next(r for r in rows if r["source_path"].endswith(clip))
        for kind in ("faceswap", "stylized"):
            model_before = stylizer.counters["wall_s"]
            variant = augmenter._variant(row, kind, 0)
            assert variant["status"] != "error", variant["error"]
            paths[f"{kind}_{name}_fps"] = _rate(variant["frames"], variant["wall_s"])
            if kind == "stylized":  # decode, cut, paste-back, x264, checks: what is left without the model
                model = stylizer.counters["wall_s"] - model_before
                paths[f"stylized_{name}_cpu_side_fps"] = _rate(variant["frames"], variant["wall_s"] - model)
    return paths, augmenter.components["faceswap"]


def estimate(parts: dict, paths: dict, costs: dict, args) -> dict:
    frames = args.hours * 3600 * args.fps
    clips = args.hours * 3600 / args.clip_s
    swap_gflop = SCRFD_10G_GFLOP * 1.3 + args.inswapper_gflop + 2 * ARCFACE_R50_GFLOP * 2 / args.fps
    ours_tflop = costs["vae_encode_tflop"] + costs["sd_turbo_unet_tflop"] + costs["vae_decode_tflop"]
    theirs_tflop = costs["vae_encode_tflop"] + 30 * costs["sdxl_unet_tflop"] + costs["vae_decode_tflop"]
    swap_gpu_h = frames * swap_gflop / (args.onnx_tflops * 1e3) / 3600
    ours_gpu_h = frames * ours_tflop / args.diffusion_tflops / 3600
    theirs_gpu_h = frames * theirs_tflop / args.diffusion_tflops / 3600
    cpu_swap_core_h = frames / parts["512px"]["decode_fps"] / 3600 + frames / parts["512px"]["paste_back_fps"] / 3600 \
        + frames / parts["512px"]["x264_encode_fps"] / 3600
    facefusion_extra_h = clips * args.facefusion_load_s / 3600 + frames / parts["512px"]["png_round_trip_fps"] / 3600
    return {
        "frames": frames, "clips": round(clips),
        "faceswap": {"gflop_per_frame": round(swap_gflop, 1), "gpu_hours": round(swap_gpu_h, 1),
                     "cpu_core_hours_decode_paste_encode_512px": round(cpu_swap_core_h, 1),
                     "facefusion_subprocess_extra_hours": round(facefusion_extra_h, 1)},
        "stylize": {"ours_tflop_per_frame": round(ours_tflop, 2), "authors_tflop_per_frame": round(theirs_tflop, 2),
                    "ours_gpu_hours": round(ours_gpu_h, 1), "authors_gpu_hours": round(theirs_gpu_h, 1),
                    "authors_over_ours": round(theirs_tflop / ours_tflop, 1),
                    "vae_share_of_ours": round((ours_tflop - costs["sd_turbo_unet_tflop"]) / ours_tflop, 2)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("MEGACTOR_ASSETS", Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--videos", default=str(shared / "videos"))
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of each clip measured")
    parser.add_argument("--hours", type=float, default=313.0, help="hours to augment (the paper kept 313 h)")
    parser.add_argument("--fps", type=float, default=25.0, help="frames per second of the corpus (assumed)")
    parser.add_argument("--clip-s", type=float, default=10.0, help="mean clip length, s (assumed)")
    parser.add_argument("--inswapper-gflop", type=float, default=60.0,
                        help="inswapper_128 GFLOP per face (unpublished; assumed)")
    parser.add_argument("--onnx-tflops", type=float, default=40.0,
                        help="effective TFLOP/s of the swap models on one GPU (assumed, as the curation estimate)")
    parser.add_argument("--diffusion-tflops", type=float, default=150.0,
                        help="effective fp16 TFLOP/s of a UNet/VAE on one H100/H200-class GPU (assumed)")
    parser.add_argument("--facefusion-load-s", type=float, default=3.0,
                        help="a FaceFusion subprocess's start and model load per clip, s (assumed)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("MEGACTOR_WEIGHTS_DIR", str(shared / "weights"))
    warnings.simplefilter("ignore", FutureWarning)
    os.sched_setaffinity(0, {0})  # one core
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths, swapper = measure_paths(Path(args.videos), args.seconds, work)
        parts = {name: measure_parts(Path(args.videos) / clip, args.seconds, swapper, work)
                 for name, clip in CLIPS.items()}
    from curation.augment.pipeline import close_cached_components

    close_cached_components()
    costs = {k: round(v, 3) for k, v in counted_costs().items()}
    figures = {
        "command": "bench/augment_fps.py " + " ".join(sys.argv[1:]),
        "measured_one_cpu_core": {"paths_tiny_models": paths, "parts": parts},
        "counted_tflop_512px": costs,
        "assumed": {k: getattr(args, k) for k in ("fps", "clip_s", "inswapper_gflop", "onnx_tflops",
                                                   "diffusion_tflops", "facefusion_load_s")},
        "estimate_for_hours": {"hours": args.hours, **estimate(parts, paths, costs, args)},
    }
    return emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
