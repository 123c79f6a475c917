"""The inference export of a trained stage: the model with its EMA weights as safetensors, beside a JSON of what
inference needs to rebuild and drive it (the model's config, the data geometry it was trained on, the frozen
VAE and Whisper folders). Neither file can run code when read, unlike a pickled ``state.pt``.

Which weights: the trainer keeps an exponential moving average of the parameters a stage trains (``ema_decay``);
the export is the stage's model with those averages in place of the trained parameters (the frozen ones are the
model's, as they never changed). That is the model inference and evaluation use, as DiT and PixArt-alpha do.

Chaining stages reads ``state.pt``'s raw weights, not the EMA (``training.components.build_model``): the paper
says only that each stage starts from the previous one; its 30k-step stages at lr 1e-5 read as continued
training, and an EMA at 0.9999 over 30k steps still holds e^-3 (about 5 %) of the stage's starting weights, so
starting the next stage from it would begin behind what was trained. The trainer writes this export into
``final/`` at the end of every stage; ``megactor export CHECKPOINT`` writes it for any checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from curation.errors import ConfigError
from curation.weights import sha256_file
from training.components import STATE_FILE

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
FORMAT = "megactor-inference/1"
# the data settings inference must match: crop, masks, frame rate, audio window
DATA_KEYS = ("resolution", "fps", "frame_stride", "num_frames", "crop_scale", "mask_dilation", "audio_context_s",
             "audio_sample_rate")


def inference_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's state dict with the EMA's averages in place of the trained parameters."""
    weights = dict(state["model"])
    unknown = sorted(set(state.get("ema", {})) - set(weights))
    if unknown:
        raise ConfigError(f"the checkpoint's EMA names parameters the model does not have: {unknown[:5]}")
    weights.update(state.get("ema", {}))
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in weights.items()}


def export_state(state: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` for a checkpoint's state dict into ``out_dir``; returns the
    folder. Each file is written under a temporary name and renamed, the JSON last."""
    from safetensors.torch import save_file

    from training.config import validate
    from training.data import DataConfig
    from training.model import megactor_config

    config = validate(state["config"], origin="checkpoint")
    model_config = megactor_config(config.model.preset, use_audio=config.model.use_audio,
                                   use_temporal=config.model.use_temporal)
    data = DataConfig(**{"seed": config.seed, **config.data})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = inference_weights(state)
    partial = out / (WEIGHTS_FILE + ".part")
    save_file(weights, str(partial), metadata={"format": "pt", "megactor": FORMAT})
    os.replace(partial, out / WEIGHTS_FILE)
    meta = {
        "format": FORMAT,
        "stage": config.stage,
        "step": int(state["step"]),
        "weights": "ema" if state.get("ema") else "model",
        "weights_sha256": sha256_file(out / WEIGHTS_FILE),
        "model_config": _jsonable(asdict(model_config)),
        "preset": config.model.preset,
        "vae_dir": None if config.model.vae_dir is None else str(config.model.vae_dir),
        "whisper_dir": None if config.model.whisper_dir is None else str(config.model.whisper_dir),
        "whisper_layers": config.model.whisper_layers,
        "data": {key: _jsonable(getattr(data, key)) for key in DATA_KEYS},
        "train_config": config.to_dict(),
    }
    partial = out / (CONFIG_FILE + ".part")
    partial.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(partial, out / CONFIG_FILE)
    return out


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path | None = None) -> Path:
    """Export a checkpoint folder (``final/`` or ``checkpoints/step-*``) in place or into ``out_dir``."""
    folder = Path(checkpoint)
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise ConfigError(f"no checkpoint at {state_file}")
    state = torch.load(state_file, map_location="cpu", weights_only=True)  # never runs code from the file
    return export_state(state, out_dir or folder)


def find_export(path: str | Path) -> Path:
    """The export folder meant by ``path``: a folder holding ``model.json``; a stage's output (its ``final/``);
    or a run's root (its last stage's ``final/``: stage3, else stage2, else stage1)."""
    path = Path(path)
    candidates = [path, path / "final", *(path / f"stage{n}" / "final" for n in (3, 2, 1))]
    for folder in candidates:
        if (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
            return folder
    if any((folder / STATE_FILE).is_file() for folder in candidates):
        raise ConfigError(f"{path} holds a training checkpoint but no inference export: run "
                          f"`megactor export {path}` first")
    raise ConfigError(f"no trained model at {path}: give a training output (a run's root, a stage's output or "
                      f"its final/ folder)")


def read_export(path: str | Path) -> tuple[Path, dict[str, Any]]:
    folder = find_export(path)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{folder / CONFIG_FILE}: format {meta.get('format')!r}, this version reads {FORMAT!r}")
    return folder, meta


def load_model(path: str | Path, *, verify: bool = True):
    """The exported model (eval mode, no gradients) and its metadata; the weights load strictly."""
    from safetensors.torch import load_file

    from training.model import MegActorConfig, MegActorModel

    folder, meta = read_export(path)
    weights_file = folder / WEIGHTS_FILE
    if verify and meta.get("weights_sha256") and sha256_file(weights_file) != meta["weights_sha256"]:
        raise ConfigError(f"{weights_file} does not match the sha256 recorded in {folder / CONFIG_FILE}")
    fields = dict(meta["model_config"])
    fields["driven_encoder_channels"] = tuple(fields["driven_encoder_channels"])
    model = MegActorModel(MegActorConfig(**fields))
    missing, unexpected = model.load_state_dict(load_file(str(weights_file)), strict=False)
    if missing or unexpected:
        raise ConfigError(f"{weights_file} does not fit its model config (missing {missing[:5]}, unexpected "
                          f"{unexpected[:5]})")
    return model.eval().requires_grad_(False), {**meta, "folder": str(folder)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
