"""Inference and evaluation throughput: seconds per generated frame by model preset, and frames per second of
each evaluation metric, each beside a baseline measured in the same run.

Inference (``inference.pipeline``, the whole ``__call__``: face analysis, crops, Whisper, denoising over
overlapping 16-frame windows with classifier-free guidance, VAE decode, x264 with the audio muxed), with random
weights in each preset's architecture (PixArt-alpha, the SD VAE and Whisper cannot be downloaded here). Without
``model.vae_dir`` / ``model.whisper_dir`` the tiny and mid presets run the tests' small VAE and one-layer Whisper,
so their figures are the denoiser's and the pipeline's; the real SD VAE adds about a quarter of a 512 px denoiser
pass per frame (``bench/train_flops.py``). Baseline: the same call without guidance (one model pass per window-step instead of two);
the ratio shows what classifier-free guidance costs. Seconds per frame grow linearly with ``--steps``: the
default 25 steps of the paper's recipe are reported as measured at ``--steps`` x 25 / steps.

Metrics (``metrics``): FID's InceptionV3, FVD's I3D, LPIPS's AlexNet, SyncNet and ArcFace (SCRFD-500M + a
w600k_r50-shaped ArcFace is not buildable here: the tests' tiny ArcFace is used, so CSIM's figure is detector
bound) on 256 px frames, random weights in the real architectures. Baseline: decoding the same frames from a
512 px H.264 clip (``curation.media.iter_frames``); the ratio says how many times slower than decoding a metric is.

    .venv/bin/python bench/animate_fps.py [--presets tiny mid] [--steps 4] [--seconds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _report import emit  # noqa: E402

from curation import media  # noqa: E402
from curation.encode import AudioSpan  # noqa: E402

RESOLUTION = {"tiny": 64, "mid": 256, "full": 512}
CLIP = "mimictalk_German_20s.mp4"


def _export(preset: str, folder: Path) -> Path:
    from training.config import validate
    from training.export import export_state
    from training.model import MegActorModel, megactor_config

    model = {"preset": preset, "use_audio": True, "use_temporal": True}
    config = validate({"stage": 3, "init_from": "x", "trains": ["temporal"], "model": model,
                       "data": {"resolution": RESOLUTION[preset]}})
    torch.manual_seed(0)
    net = MegActorModel(megactor_config(preset, use_audio=True, use_temporal=True))
    return export_state({"model": net.state_dict(), "ema": {}, "step": 0, "config": config.to_dict()},
                        folder / preset)


def bench_inference(presets: list[str], steps: int, seconds: float, videos: Path, work: Path) -> dict:
    import cv2

    from inference.pipeline import AnimationPipeline

    clip = videos / CLIP
    _, rgb = next(iter(media.iter_frames(clip, media.probe(clip), start_s=6.0, duration_s=0.1)))
    reference = work / "reference.png"
    cv2.imwrite(str(reference), rgb[:, :, ::-1])
    audio = AudioSpan(str(clip), 2.0, seconds)
    out = {}
    for preset in presets:
        pipeline = AnimationPipeline.from_pretrained(_export(preset, work))
        pipeline(reference, clip, AudioSpan(str(clip), 2.0, 0.2), mode="mixed", steps=1)  # warm-up
        timed = {}
        for label, guidance in (("cfg", 2.0), ("no_cfg", 1.0)):
            started = time.perf_counter()
            animation = pipeline(reference, clip, audio, mode="mixed", steps=steps, guidance=guidance,
                                 output=work / f"{preset}-{label}.mp4")
            timed[label] = (time.perf_counter() - started) / len(animation.frames)
        pipeline.close()
        out[preset] = {
            "resolution": RESOLUTION[preset], "frames": len(animation.frames), "steps": steps,
            "s_per_frame": round(timed["cfg"], 4),
            "s_per_frame_at_25_steps": round(timed["cfg"] * 25 / steps, 3),
            "s_per_frame_no_guidance": round(timed["no_cfg"], 4),
            "guidance_cost_ratio": round(timed["cfg"] / timed["no_cfg"], 2),
        }
    return out


def bench_metrics(videos: Path, frames: int = 32) -> dict:
    import cv2

    from metrics.fid import FIDInceptionV3
    from metrics.fvd import FRAMES, InceptionI3d, i3d_features
    from metrics.lpips import LPIPS
    from metrics.syncnet import SyncNet

    clip = videos / CLIP
    probe = media.probe(clip)
    started = time.perf_counter()
    decoded = [rgb for _, rgb in media.iter_frames(clip, probe, start_s=1.0, duration_s=frames / 25, fps=25)]
    decode_fps = len(decoded) / (time.perf_counter() - started)
    video = np.stack([cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for f in decoded])[:frames]
    batch = torch.from_numpy(video).permute(0, 3, 1, 2).float().div(255)

    def rate(fn, count: int) -> float:
        fn()  # warm-up
        started = time.perf_counter()
        fn()
        return count / (time.perf_counter() - started)

    torch.manual_seed(0)
    fid, i3d, lpips, sync = FIDInceptionV3().eval(), InceptionI3d().eval(), LPIPS().eval(), SyncNet().eval()
    crops = torch.from_numpy(np.stack([cv2.resize(f, (224, 224)) for f in video])).permute(3, 0, 1, 2)
    with torch.no_grad():
        figures = {
            "fid_inception": rate(lambda: [fid(batch[i:i + 16]) for i in range(0, frames, 16)], frames),
            "fvd_i3d": rate(lambda: i3d_features(i3d, video[None, :FRAMES]), FRAMES),
            "lpips_alexnet": rate(lambda: lpips.forward_unit(batch, batch.flip(0)), frames),
            # SyncNet's lip tower: 5-frame windows, one per frame
            "syncnet_lip": rate(lambda: sync.forward_lip(torch.stack(
                [crops[:, i:i + 5].float() for i in range(frames - 4)])), frames - 4),
        }
    try:
        from curation.augment.config import FaceSwapConfig
        from curation.augment.faceswap import FaceIdentity
        from tests import tiny_insightface

        weights = os.environ.get("MEGACTOR_WEIGHTS_DIR", str(videos.parent / "weights"))
        arcface = tiny_insightface.arcface(Path(tempfile.mkdtemp()) / "arcface.onnx")
        identity = FaceIdentity(FaceSwapConfig(detector="scrfd_500m", embedder_weights=arcface,
                                               detector_weights=Path(weights) / "insightface" /
                                               "scrfd_500m_bnkps.onnx"))

        def csim():
            for f in video:
                boxes, kps = identity.detect(f)
                if len(boxes):
                    identity.embed([identity.aligned(f, kps[0])])

        figures["csim_scrfd500m_tiny_arcface"] = rate(csim, frames)
    except Exception as error:  # the insightface extra may be missing: said, not hidden
        figures["csim_scrfd500m_tiny_arcface"] = f"not measured: {error}"
    out = {"decode_512px_fps (baseline)": round(decode_fps, 1)}
    for name, value in figures.items():
        if isinstance(value, float):
            out[f"{name}_fps"] = round(value, 1)
            out[f"{name}_slower_than_decode"] = round(decode_fps / value, 2)
        else:
            out[name] = value
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "mid"], choices=sorted(RESOLUTION))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="audio seconds generated per preset")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    videos = Path(os.environ.get("MEGACTOR_ASSETS", Path(__file__).resolve().parents[2] / "shared")) / "videos"
    with tempfile.TemporaryDirectory() as tmp:
        figures = {"threads": torch.get_num_threads(),
                   "inference": bench_inference(args.presets, args.steps, args.seconds, videos, Path(tmp)),
                   "metrics_256px": bench_metrics(videos)}
    return emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
