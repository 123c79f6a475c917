"""Estimate: GPU-hours (and CPU core-hours) to score the paper's 4,670 h of video with the paper profile, from
per-frame costs measured here and stated GPU throughput assumptions, for two designs:

- baseline (the shard holds its GPU share while it decodes): a GPU node is bound by its GPU or by its decoding
  cores, whichever is slower (the figure this script gave before the GPU pool; kept for the ratio);
- pooled (``runtime.gpu_pool``: DWPose and SyncNet in Ray actors, shard tasks decoding on CPU cores): GPU time
  is the models' compute over the pool's utilisation; decoding runs on CPU cores anywhere in the cluster (CPU-only
  nodes: reported as core-hours, not GPU-hours), or on the GPU node with NVDEC (``runtime.hwaccel``), then bound
  by NVDEC, the GPU, or the node's remaining cores.

Measured here (this machine, CPU): ffmpeg decode rate at full resolution for 25 fps (SyncNet) and at 5 fps
scaled to 1280 px (DWPose), on the shared 1080p / 1280 px / HEVC clips; the reference SyncNet crop; MFCC; the
network's FLOPs per window (torch's FLOP counter); DWPose's CPU pre/post-processing per frame (letterbox, YOLOX
decoding + NMS, the pose crop, SimCC decoding: what a pool actor does on its CPU between GPU calls). Assumed
(stated, not measured: no GPU was available): the DWPose models' FLOPs (published), the effective GPU
throughput, NVDEC's throughput and the CPU share left with it, the pool's efficiency.

    .venv/bin/python bench/gpu_hours_estimate.py [--gpu-tflops 40] [--reach-face 0.5] [--reach-sync 0.12]
        [--nvdec-fps 2000] [--pool-efficiency 0.85] [--actors-per-gpu 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _report import emit  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from curation import dwpose, media  # noqa: E402
from curation.scorers.sync_syncnet import crop_face, to_int16  # noqa: E402
from metrics.syncnet import SyncNet, mfcc_features  # noqa: E402

CORPUS_HOURS = 4670.0
FACE_FPS = 5.0  # face.sample_fps
SYNC_FPS = 25.0
# Published model costs (assumptions): YOLOX-L at 640x640, 155.6 GFLOPs (YOLOX README, counted as MACs x 2);
# DWPose-L at 384x288, ~10 GFLOPs (RTMPose-l at 384x288, the student architecture DWPose-L distils into).
YOLOX_L_GFLOP = 155.6
DWPOSE_L_GFLOP = 10.0
LATENTSYNC_VIDEO_HOURS_PER_GPU_HOUR = (1.0, 2.0)


def _decode_rate(path: Path, fps: float, max_side: int | None, seconds: float = 6.0) -> float:
    """Output frames per second of wall time for one ffmpeg decode of ``seconds`` of the clip."""
    probe = media.probe(path)
    started = time.perf_counter()
    count = sum(1 for _ in media.iter_frames(path, probe, duration_s=seconds, fps=fps, max_side=max_side))
    return count / (time.perf_counter() - started)


def _syncnet_gflop_per_window() -> float:
    net = SyncNet().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.forward_lip(torch.zeros(1, 3, 5, 224, 224))
        net.forward_aud(torch.zeros(1, 1, 13, 20))
    return counter.get_total_flops() / 1e9


def _dwpose_actor_cpu_ms(frame: np.ndarray, repeats: int = 20) -> float:
    """CPU milliseconds per frame of DWPose's pre/post-processing around the two models (one person): what a
    pool actor does between its GPU calls. The models' outputs are random arrays of the real shapes."""
    rng = np.random.default_rng(2)
    raw = rng.uniform(0, 0.01, (8400, 85)).astype(np.float32)
    raw[100, 4:6] = 0.9  # one confident person
    grid, strides = dwpose.yolox_grid((640, 640))
    simcc_x = rng.uniform(0, 1, (1, dwpose.NUM_KEYPOINTS, 576)).astype(np.float32)
    simcc_y = rng.uniform(0, 1, (1, dwpose.NUM_KEYPOINTS, 768)).astype(np.float32)
    import cv2

    started = time.perf_counter()
    for _ in range(repeats):
        canvas, ratio = dwpose.letterbox(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), (640, 640))
        np.ascontiguousarray(canvas.astype(np.float32).transpose(2, 0, 1))
        dwpose.person_boxes(raw, grid, strides, ratio, score_min=0.3, iou_threshold=0.45)
        centre, scale = dwpose.box_to_centre_scale(np.array([500.0, 100.0, 800.0, 600.0]), 288 / 384)
        dwpose.pose_input(frame, centre, scale, (288, 384))
        dwpose.decode_simcc(simcc_x, simcc_y)
    return (time.perf_counter() - started) / repeats * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("MEGACTOR_ASSETS", Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--videos", default=str(shared / "videos"))
    parser.add_argument("--gpu-tflops", type=float, default=40.0,
                        help="effective GPU throughput on these convnets, TFLOP/s (assumption; see the README)")
    parser.add_argument("--reach-face", type=float, default=0.5,
                        help="fraction of input hours that pass the metadata gate and audio stage (assumption)")
    parser.add_argument("--reach-sync", type=float, default=0.12,
                        help="fraction of input hours still alive after the face stage (assumption)")
    parser.add_argument("--cores-per-gpu", type=int, default=8, help="CPU cores decoding for each GPU")
    parser.add_argument("--actors-per-gpu", type=int, default=4, help="runtime.gpu_pool.actors_per_gpu")
    parser.add_argument("--pool-efficiency", type=float, default=0.85,
                        help="share of the GPU's busy time the pool keeps when its actors are not CPU-bound: Ray "
                             "calls, queue gaps, transfers (assumption)")
    parser.add_argument("--nvdec-fps", type=float, default=2000.0,
                        help="1080p H.264 frames/s NVDEC decodes per GPU, all engines (assumption; see the README)")
    parser.add_argument("--nvdec-cpu-share", type=float, default=0.3,
                        help="share of a software decode's CPU cost left with NVDEC: frames downloaded, fps/scale "
                             "filters and the rgb24 conversion still run on the CPU (assumption)")
    parser.add_argument("--json")
    args = parser.parse_args()
    videos = Path(args.videos)

    # -- measured: decoding (per core: ffmpeg is given one process here) ---------------------------------------
    clips = {"1080p_h264": videos / "w2lgfpgan_kim_7s_raw.mp4", "1280sq_mpeg4": videos / "derived_katiehill_upscaled_1280.mp4",
             "1080x1920_hevc": videos / "latentsync_demo1_video.mp4"}
    decode = {name: {"sync_25fps_full_fps": round(_decode_rate(path, SYNC_FPS, None), 1),
                     "face_5fps_1280_fps": round(_decode_rate(path, FACE_FPS, 1280), 1)}
              for name, path in clips.items()}
    # -- measured: crop + resize per frame, MFCC per second of audio ----------------------------------------------
    frame = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    started = time.perf_counter()
    for _ in range(200):
        crop_face(frame, 960.0, 500.0, 200.0, 0.4)
    crop_ms = (time.perf_counter() - started) / 200 * 1e3
    audio = to_int16(np.random.default_rng(1).uniform(-0.3, 0.3, 16000 * 20).astype(np.float32))
    started = time.perf_counter()
    mfcc_features(audio)
    mfcc_ms_per_s = (time.perf_counter() - started) / 20 * 1e3
    sync_gflop = _syncnet_gflop_per_window()
    actor_cpu_ms = _dwpose_actor_cpu_ms(np.ascontiguousarray(frame[::3, ::3][:720, :1280]))  # decoded at 1280 px

    # -- per hour of input video ----------------------------------------------------------------------------------
    tflops = args.gpu_tflops * 1e12
    dwpose_gflop_per_frame = YOLOX_L_GFLOP + DWPOSE_L_GFLOP  # one person per talking-head frame
    gpu_s_face = 3600 * FACE_FPS * dwpose_gflop_per_frame * 1e9 / tflops
    gpu_s_sync = 3600 * SYNC_FPS * sync_gflop * 1e9 / tflops  # one window per frame
    worst = decode["1080p_h264"]
    # CPU: shot detection decodes every frame (scaled to 192 px; decode cost ~ a full decode); the face stage
    # decodes every frame and outputs 5 fps; SyncNet decodes every frame at full size and crops it.
    cpu_s_split = 3600 * SYNC_FPS / worst["sync_25fps_full_fps"]  # about one full decode pass
    cpu_s_face = 3600 * FACE_FPS / worst["face_5fps_1280_fps"]
    cpu_s_sync = 3600 * SYNC_FPS / worst["sync_25fps_full_fps"] + 3600 * SYNC_FPS * crop_ms / 1e3 + 3.6 * mfcc_ms_per_s

    def scenario(reach_face: float, reach_sync: float) -> dict:
        gpu_s = reach_face * gpu_s_face + reach_sync * gpu_s_sync
        cpu_s = reach_face * (cpu_s_split + cpu_s_face) + reach_sync * cpu_s_sync
        # a GPU node is limited by its GPU or by its decoding cores, whichever is slower
        node_s = max(gpu_s, cpu_s / args.cores_per_gpu)
        return {
            "gpu_s_per_video_hour": round(gpu_s, 1), "cpu_core_s_per_video_hour": round(cpu_s, 1),
            "gpu_hours_for_corpus": round(CORPUS_HOURS * node_s / 3600, 1),
            "cpu_core_hours_for_corpus": round(CORPUS_HOURS * cpu_s / 3600, 1),
            "video_hours_per_gpu_hour": round(3600 / node_s, 1),
            "bound_by": "gpu" if gpu_s >= cpu_s / args.cores_per_gpu else "cpu decoding",
        }

    # -- pooled design -----------------------------------------------------------------------------------------
    # Utilisation: each of the A actors on a GPU alternates its CPU part (p per frame) and its GPU part (g); the
    # GPU is busy A*g/(g+p) of the time at most (capped at 1), times the pool's efficiency (assumed).
    g_face = dwpose_gflop_per_frame * 1e9 / tflops
    p_face = actor_cpu_ms / 1e3
    utilisation = min(1.0, args.actors_per_gpu * g_face / (g_face + p_face)) * args.pool_efficiency
    full_decode_frames = 3600 * SYNC_FPS  # one decode pass of an hour at 25 fps: NVDEC decodes every frame

    def pooled(reach_face: float, reach_sync: float) -> dict:
        gpu_s = (reach_face * gpu_s_face + reach_sync * gpu_s_sync) / utilisation
        cpu_s = reach_face * (cpu_s_split + cpu_s_face) + reach_sync * cpu_s_sync
        actor_cpu_s = reach_face * 3600 * FACE_FPS * p_face
        # NVDEC on the GPU node: the shot split's, the face's and SyncNet's decodes move to NVDEC (each decodes
        # every frame); left on the CPU: that share of their decoding, the crops, the MFCC
        nvdec_s = (2 * reach_face + reach_sync) * full_decode_frames / args.nvdec_fps
        sync_decode_s = 3600 * SYNC_FPS / worst["sync_25fps_full_fps"]
        cpu_nvdec_s = (reach_face * args.nvdec_cpu_share * (cpu_s_split + cpu_s_face)
                       + reach_sync * (cpu_s_sync - (1 - args.nvdec_cpu_share) * sync_decode_s))
        decode_cores = max(1.0, args.cores_per_gpu - args.actors_per_gpu)  # the actors' cores are taken
        node_nvdec_s = max(gpu_s, nvdec_s, (cpu_nvdec_s + actor_cpu_s) / decode_cores)
        return {
            "gpu_s_per_video_hour": round(gpu_s, 1),
            "cpu_core_s_per_video_hour": round(cpu_s + actor_cpu_s, 1),
            "decode_on_cpu_nodes": {
                "video_hours_per_gpu_hour": round(3600 / gpu_s, 1),
                "gpu_hours_for_corpus": round(CORPUS_HOURS * gpu_s / 3600, 1),
                "cpu_core_hours_for_corpus": round(CORPUS_HOURS * (cpu_s + actor_cpu_s) / 3600, 1),
                "bound_by": "gpu (model compute / utilisation)",
            },
            "nvdec_on_the_gpu_node": {
                "nvdec_s_per_video_hour": round(nvdec_s, 1), "cpu_core_s_per_video_hour": round(cpu_nvdec_s, 1),
                "video_hours_per_gpu_hour": round(3600 / node_nvdec_s, 1),
                "gpu_hours_for_corpus": round(CORPUS_HOURS * node_nvdec_s / 3600, 1),
                "bound_by": ("gpu" if node_nvdec_s == gpu_s else "nvdec" if node_nvdec_s == nvdec_s
                             else "cpu cores of the node"),
            },
        }

    baseline = scenario(args.reach_face, args.reach_sync)
    pooled_cascade = pooled(args.reach_face, args.reach_sync)
    figures = {
        "measured": {"decode_output_fps_per_process": decode, "crop_ms_per_frame_1080p": round(crop_ms, 2),
                     "mfcc_ms_per_audio_s": round(mfcc_ms_per_s, 2), "syncnet_gflop_per_window": round(sync_gflop, 2),
                     "dwpose_actor_cpu_ms_per_frame": round(actor_cpu_ms, 2)},
        "assumed": {"gpu_effective_tflops": args.gpu_tflops, "yolox_l_gflop": YOLOX_L_GFLOP,
                    "dwpose_l_gflop": DWPOSE_L_GFLOP, "cores_per_gpu": args.cores_per_gpu,
                    "reach_face": args.reach_face, "reach_sync": args.reach_sync,
                    "actors_per_gpu": args.actors_per_gpu, "pool_efficiency": args.pool_efficiency,
                    "nvdec_fps_per_gpu": args.nvdec_fps, "nvdec_cpu_share": args.nvdec_cpu_share},
        "pool_utilisation": round(utilisation, 3),
        "per_video_hour_if_reached": {"gpu_s_face": round(gpu_s_face, 1), "gpu_s_sync": round(gpu_s_sync, 1),
                                      "cpu_s_split": round(cpu_s_split, 1), "cpu_s_face": round(cpu_s_face, 1),
                                      "cpu_s_sync": round(cpu_s_sync, 1)},
        "cascade": baseline,
        "score_everything": scenario(1.0, 1.0),
        "pooled_cascade": pooled_cascade,
        "pooled_score_everything": pooled(1.0, 1.0),
        "ratio_pooled_over_baseline_cascade": {
            "decode_on_cpu_nodes": round(pooled_cascade["decode_on_cpu_nodes"]["video_hours_per_gpu_hour"]
                                         / baseline["video_hours_per_gpu_hour"], 2),
            "nvdec_on_the_gpu_node": round(pooled_cascade["nvdec_on_the_gpu_node"]["video_hours_per_gpu_hour"]
                                           / baseline["video_hours_per_gpu_hour"], 2),
        },
        "latentsync_video_hours_per_gpu_hour": LATENTSYNC_VIDEO_HOURS_PER_GPU_HOUR,
        "command": "python bench/gpu_hours_estimate.py " + " ".join(sys.argv[1:]),
    }
    return emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
