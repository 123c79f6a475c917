"""Typed configuration of a training stage, loaded from YAML (``training/configs/stage{1,2,3}.yaml``).

The three stages of "Modality Decoupling Control" are one loop and three config files: a stage says what it
initialises from, which parameter groups train, and what its data mix is. Unknown keys and bad values stop the
run at start with the key named; the resolved config is saved next to every checkpoint."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from curation.config import read_yaml_mapping
from curation.errors import ConfigError

GROUPS = ("denoiser", "reference", "driven_encoder", "audio", "temporal")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Strict):
    preset: Literal["tiny", "mid", "full"] = "full"
    pixart_dir: Path | None = None  # a PixArt-alpha diffusers folder (with transformer/); None: random init
    vae_dir: Path | None = None  # an AutoencoderKL folder (sd-vae-ft-ema); None: tiny random VAE (tests only)
    whisper_dir: Path | None = None  # a Whisper folder (whisper-tiny); None: tiny random Whisper (tests only)
    whisper_layers: int | None = Field(None, ge=1)  # hidden states per token, the last ones (None: all, as the
    # authors' code: whisper-tiny's embedding output and 4 layers, 10 tokens x 5 = 50 per frame)
    use_audio: bool = False
    use_temporal: bool = False
    gradient_checkpointing: bool = False


class OptimSection(_Strict):
    lr: float = Field(1e-5, gt=0)  # the paper's
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)


class TrainConfig(_Strict):
    stage: Literal[1, 2, 3]
    init_from: Path | None = None  # the previous stage's checkpoint directory (stage 1: None); a relative path is
    # beside this stage's output (the run's root: ``stage1/final`` for an output ``runs/x/stage2``)
    trains: tuple[str, ...]  # parameter groups that train (everything else is frozen)
    steps: int = Field(30_000, ge=1)  # per stage (the paper's)
    batch_size: int = Field(1, ge=1)  # per worker and micro-batch
    accumulate: int = Field(1, ge=1)  # micro-batches per optimizer step (global batch: batch x accumulate x workers)
    model: ModelSection = ModelSection()
    data: dict[str, Any] = {}  # training.data.DataConfig fields (checked at start)
    optim: OptimSection = OptimSection()
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp: parameters, gradients and optimizer state sharded per block
    num_workers: int = Field(1, ge=1)  # Ray Train workers (one per GPU)
    use_gpu: Literal["auto", True, False] = "auto"
    max_failures: int = Field(0, ge=-1)  # worker-group restarts after a failure (-1: no limit); each resumes
    loader_workers: int = Field(4, ge=0)  # decoding threads per training worker (0: decode in the loop)
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    log_every: int = Field(10, ge=1)
    seed: int = 0
    output: Path = Path("runs/train")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        unknown = set(self.trains) - set(GROUPS)
        if unknown or not self.trains:
            raise ValueError(f"trains must name parameter groups among {GROUPS}, got {list(self.trains)}")
        if "audio" in self.trains and not self.model.use_audio:
            raise ValueError("trains includes 'audio' but model.use_audio is false")
        if "temporal" in self.trains and not self.model.use_temporal:
            raise ValueError("trains includes 'temporal' but model.use_temporal is false")
        if self.strategy == "fsdp" and self.precision == "fp16":  # said at start, not at the first step
            raise ValueError("precision 'fp16' needs a gradient scaler, which is not wired for FSDP's sharded "
                             "gradients: use 'bf16' (or 'auto') with strategy 'fsdp'")
        if self.stage > 1 and self.init_from is None:
            raise ValueError(f"stage {self.stage} initialises from the previous stage's checkpoint: set init_from")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def init_checkpoint(self) -> Path | None:
        """``init_from`` as a path: a relative one is resolved against the run's root (the parent of ``output``),
        where the stages' outputs sit side by side."""
        if self.init_from is None or self.init_from.is_absolute():
            return self.init_from
        return self.output.parent / self.init_from

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        data = self.to_dict()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {}) if key == "data" else node.get(key)
                if not isinstance(node, dict):
                    raise ConfigError(f"unknown config key {dotted!r}")
            if leaf not in node and not dotted.startswith("data."):
                raise ConfigError(f"unknown config key {dotted!r}")
            node[leaf] = value
        return validate(data, origin="overrides")


def validate(data: dict[str, Any], *, origin: str = "config") -> TrainConfig:
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as error:
        lines = [f"invalid training configuration ({origin}):"]
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            lines.append(f"  {key}: {item['msg']}")
        raise ConfigError("\n".join(lines)) from None
    from training.data import DataConfig  # the data section is the dataset's own typed config

    try:
        DataConfig(**config.data)
    except TypeError as error:
        raise ConfigError(f"invalid training configuration ({origin}): data: {error}") from None
    return config


def stage_config_path(stage: int) -> Path:
    return Path(str(resources.files("training").joinpath(f"configs/stage{stage}.yaml")))


def load_train_config(path: str | Path | None = None, *, stage: int | None = None,
                      overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A stage's embedded config (``stage``), or a YAML file, then dotted-key overrides."""
    if path is None:
        if stage is None:
            raise ConfigError("give a config file or a stage (1, 2 or 3)")
        path = stage_config_path(stage)
    path = Path(path)
    data = read_yaml_mapping(path, "training config")
    if stage is not None:
        data["stage"] = data.get("stage", stage)
    config = validate(data, origin=str(path))
    return config.with_overrides(overrides) if overrides else config
