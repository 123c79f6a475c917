"""Benchmark: training throughput (samples per second) and data-loader throughput, per model preset, on this
machine's CPU (or GPU when present). One process; the loader is measured on a manifest curated from the shared
clips, the training step on a fixed batch of that loader (so it measures compute, not decoding), stage 3's
shape (16 frames) and stage 1's (1 frame).

    .venv/bin/python bench/train_throughput.py [--presets tiny mid] [--steps 3] [--loader-workers 0 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _report import emit  # noqa: E402

from training import components  # noqa: E402
from training.config import load_train_config  # noqa: E402
from training.data import collate_skip_failed  # noqa: E402

RESOLUTION = {"tiny": 64, "mid": 256, "full": 512}


def _config(preset: str, frames: int, manifest: Path, output: Path, vae_dir: str | None, whisper_dir: str | None):
    """Stage 1's config at this preset's resolution (the full preset needs the real VAE and Whisper folders; the
    others use a small random VAE, whose cost is a small part of a step)."""
    overrides = {"model.preset": preset, "data.manifest_dir": str(manifest), "data.resolution": RESOLUTION[preset],
                 "data.num_frames": frames, "loader_workers": 0, "output": str(output),
                 "model.vae_dir": vae_dir, "model.whisper_dir": whisper_dir}
    return load_train_config(stage=1, overrides=overrides)


def loader_rate(config, batches: int) -> float:
    """Samples per second from the trainer's own loader (``loader_workers`` decoding threads)."""
    from training.train import ResumableOrder, _loader

    dataset = components.build_dataset(config)
    order = ResumableOrder(len(dataset), seed=0, rank=0, world=1, batch_size=config.batch_size)
    started, seen, epoch = time.perf_counter(), 0, 0
    while seen < batches * config.batch_size:
        for batch in _loader(dataset, order, epoch, 0, config):
            seen += 0 if batch is None else len(batch["frames"])
        epoch += 1
    return seen / (time.perf_counter() - started)


def step_rate(config, steps: int, device: torch.device) -> tuple[float, int]:
    from training.model import MegActorModel, megactor_config

    model = MegActorModel(megactor_config(config.model.preset, use_audio=config.model.use_audio,
                                          use_temporal=config.model.use_temporal)).to(device)
    trainable = components.set_trainable(model, config.trains)
    vae = components.build_vae(config, device)
    audio = components.build_audio_encoder(config, device) if config.model.use_audio else None
    schedule = components.noise_schedule()
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.optim.lr)
    dataset = components.build_dataset(config)
    batch = collate_skip_failed([dataset[i % len(dataset)] for i in range(config.batch_size)])
    generator = torch.Generator(device=device).manual_seed(0)

    def one_step():
        loss = components.training_loss(model, vae, audio, schedule, batch, config, device, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        print(f"{config.model.preset}: peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    elapsed = time.perf_counter() - started
    return steps * config.batch_size / elapsed, sum(p.numel() for p in model.parameters())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("MEGACTOR_ASSETS", Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--videos", default=str(shared / "videos"))
    parser.add_argument("--manifest", help="a curated manifest (default: two shared clips curated here)")
    parser.add_argument("--presets", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--loader-batches", type=int, default=6)
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--vae-dir", help="sd-vae-ft-ema folder (needed by --presets full)")
    parser.add_argument("--whisper-dir", help="whisper-tiny folder (needed by --presets full)")
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    figures: dict = {"device": str(device), "torch_threads": torch.get_num_threads(),
                     "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:])}
    with tempfile.TemporaryDirectory() as tmp:
        if args.manifest:
            manifest = Path(args.manifest)
        else:
            from tests.tiny_manifest import build_tiny_manifest

            manifest = build_tiny_manifest(Path(args.videos), Path(tmp) / "manifest")
        for preset in args.presets:
            for stage, frames in ((1, 1), (3, 16)):
                config = _config(preset, frames, manifest, Path(tmp) / "out", args.vae_dir, args.whisper_dir)
                if stage == 3:  # stage 3's model and what trains, built fresh (no init_from needed to time it)
                    config = config.with_overrides({"model.use_audio": True, "model.use_temporal": True,
                                                    "trains": ["temporal"]})
                rate, params = step_rate(config, args.steps, device)
                key = f"{preset}_stage{stage}_{frames}f_{RESOLUTION[preset]}px"
                figures[key] = {"train_samples_per_s": round(rate, 3), "parameters": params}
                for workers in args.loader_workers:
                    loading = config.with_overrides({"loader_workers": workers})
                    figures[key][f"loader_samples_per_s_{workers}_workers"] = round(
                        loader_rate(loading, args.loader_batches), 3)
    return emit(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
