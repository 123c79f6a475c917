"""Typed, validated configuration for a curation run, loaded from YAML.

One model per component; unknown keys and bad values raise :class:`ConfigError` at start, naming the key.
The resolved config is saved next to every output and its hash is stored in the manifest's provenance."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.errors import ConfigError

PROFILES = ("lite", "paper")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    kind: str = "folder"
    root: Path
    dataset: str | None = None
    # links out of the root: followed (datasets are often assembled from links) or refused as outside_data_root;
    # a relative ".." link leaving the root is refused either way (curation.sources)
    follow_symlinks_outside_root: bool = True


class ClipConfig(_Strict):
    max_clip_s: float = Field(30.0, gt=0)
    scene_max_side: int = Field(192, ge=32)
    scene_threshold: float = Field(3.0, gt=0)


class DWPoseConfig(_Strict):
    max_side: int = Field(1280, ge=64)  # frames are decoded no larger (the pose crop is 288x384 anyway)
    batch_size: int = Field(16, ge=1, le=256)  # frames (detector) and person crops (pose) per ONNX call
    det_score_min: float = Field(0.3, ge=0, le=1)  # person boxes kept above this score (DWPose's value)
    nms_iou: float = Field(0.45, gt=0, le=1)
    keypoint_score_min: float = Field(0.3, ge=0, le=1)  # a face point counts when its score reaches this
    face_points_min: int = Field(60, ge=1, le=68)  # a face counts when this many of its 68 points do (authors: 60)
    detector_weights: Path | None = None  # a local yolox_l.onnx instead of the registry's (sha256 is recorded)
    pose_weights: Path | None = None  # a local dw-ll_ucoco_384.onnx instead of the registry's


class FaceConfig(_Strict):
    sample_fps: float = Field(5.0, gt=0, le=60)
    max_side: int = Field(640, ge=64)
    num_faces: int = Field(4, ge=1, le=16)
    min_detection_confidence: float = Field(0.5, ge=0, le=1)
    dwpose: DWPoseConfig = DWPoseConfig()


class SyncConfig(_Strict):
    enabled: bool = True  # false: no SyncNet (clips that pass everything else stay "pending")
    weights: Path | None = None  # a local syncnet_v2.model-format file instead of the registry's
    batch_size: int = Field(64, ge=1, le=4096)  # 5-frame windows per forward pass
    vshift: int = Field(15, ge=1, le=50)  # offsets searched: -vshift .. +vshift frames (reference: 15)
    crop_scale: float = Field(0.4, ge=0, le=2)  # the reference crop's margin around the face box
    smooth_frames: int = Field(13, ge=1)  # median filter over the per-frame box (reference: 13, odd)

    @model_validator(mode="after")
    def _odd_kernel(self) -> SyncConfig:
        if self.smooth_frames % 2 == 0:
            raise ValueError(f"sync.smooth_frames must be odd (a median filter kernel), got {self.smooth_frames}")
        return self


class AudioConfig(_Strict):
    vad_aggressiveness: int = Field(2, ge=0, le=3)


class Thresholds(_Strict):
    clip_s_min: float = Field(4.0, ge=0)
    face_res_px_min: float = Field(600, ge=0)
    yaw_abs_mean_deg_max: float = Field(30.0, ge=0, le=180)
    sync_c_min: float = 6.0
    sync_d_max: float = 8.5
    face_present_frac_min: float = Field(0.9, ge=0, le=1)
    multi_face_frac_max: float = Field(0.1, ge=0, le=1)
    speech_frac_min: float = Field(0.3, ge=0, le=1)
    require_lip_sync: bool = True


def _on_off(value: Any) -> Any:
    """YAML 1.1 reads a bare on/off as a boolean: take it as the word that was meant."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class GpuPoolConfig(_Strict):
    """DWPose and SyncNet as a pool of Ray actors that hold the models on the GPUs, fed by shard tasks that decode
    on CPU cores (and request no GPU themselves). Scores are the same as in-process (curation.gpu_pool)."""

    mode: Literal["auto", "on", "off"] = "auto"  # auto: on when the Ray cluster has GPUs (and device is not cpu)
    actors_per_gpu: int = Field(4, ge=1, le=16)  # each holds both models; its CPU work overlaps the others' GPU work
    size: int | None = Field(None, ge=1)  # actors in all (None: GPUs in the cluster x actors_per_gpu, or 1)
    max_in_flight: int = Field(2, ge=1, le=64)  # model requests one shard keeps in flight (backpressure)
    actor_num_cpus: float = Field(1.0, gt=0)  # for the actor's pre/post-processing (letterbox, NMS, SimCC)
    shard_num_gpus: float = Field(0.0, ge=0, le=1)  # > 0 lets shard tasks see a GPU, for NVDEC decoding
    max_restarts: int = Field(3, ge=-1)  # an actor process that dies is restarted (-1: without limit)
    max_task_retries: int = Field(2, ge=-1)  # ... and its requests retried; then the clip gets an error row

    _yaml_switch = field_validator("mode", mode="before")(lambda value: _on_off(value))


class RuntimeConfig(_Strict):
    shard_hours: float = Field(1.0, gt=0)
    shard_max_files: int = Field(2000, ge=1)
    inventory_batch_files: int = Field(500, ge=1)
    probe_workers: int = Field(4, ge=1)
    probe_timeout_s: float = Field(30.0, gt=0)
    ray_address: str | None = None
    ray_num_cpus: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where models run; "auto": a GPU when one is visible
    score_all: bool = False
    hwaccel: Literal["auto", "cuda", "off"] = "auto"  # ffmpeg -hwaccel cuda (NVDEC) for the scorers' decoding
    gpu_pool: GpuPoolConfig = GpuPoolConfig()

    _yaml_switch = field_validator("hwaccel", mode="before")(lambda value: _on_off(value))


class CurationConfig(_Strict):
    profile: Literal["lite", "paper"] = "lite"
    sources: tuple[SourceConfig, ...] = ()
    clips: ClipConfig = ClipConfig()
    face: FaceConfig = FaceConfig()
    audio: AudioConfig = AudioConfig()
    sync: SyncConfig = SyncConfig()
    thresholds: Thresholds = Thresholds()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _clip_lengths(self) -> CurationConfig:
        if self.clips.max_clip_s < self.thresholds.clip_s_min:
            raise ValueError(
                f"clips.max_clip_s ({self.clips.max_clip_s}) must be >= thresholds.clip_s_min "
                f"({self.thresholds.clip_s_min})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def scoring_hash(self) -> str:
        """Hash of everything that changes scores (not thresholds, sources or runtime): a resumed run with a
        different scoring hash would mix incomparable rows, so the runner refuses it."""
        scoring = {k: v for k, v in self.to_dict().items() if k in ("profile", "clips", "face", "audio", "sync")}
        return _hash(scoring)

    def config_hash(self) -> str:
        return _hash(self.to_dict())

    def with_overrides(self, overrides: dict[str, Any]) -> CurationConfig:
        """Apply dotted-key overrides, e.g. ``{"thresholds.face_res_px_min": 400}``."""
        return validate(apply_dotted(self.to_dict(), overrides), origin="overrides")


def apply_dotted(data: dict[str, Any], overrides: dict[str, Any], what: str = "config") -> dict[str, Any]:
    """``data`` with dotted-key overrides set in place; an unknown key raises a ConfigError naming it."""
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"unknown {what} key {dotted!r}")
            node = node[key]
        if leaf not in node:
            raise ConfigError(f"unknown {what} key {dotted!r}")
        node[leaf] = value
    return data


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def format_validation_error(error: ValidationError, origin: str, what: str = "configuration") -> str:
    lines = [f"invalid {what} ({origin}):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        got = f" (got {item['input']!r})" if "input" in item and not isinstance(item["input"], dict) else ""
        lines.append(f"  {key}: {item['msg']}{got}")
    return "\n".join(lines)


def validate(data: dict[str, Any], *, origin: str = "config") -> CurationConfig:
    try:
        return CurationConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, origin)) from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def default_data() -> dict[str, Any]:
    text = resources.files("curation").joinpath("configs/default.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def read_yaml_mapping(path: Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is an empty one), or a ConfigError naming ``what``."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> CurationConfig:
    """The embedded defaults, updated by a YAML file (if given), then by dotted-key overrides."""
    data = default_data()
    origin = "defaults"
    if path is not None:
        path = Path(path)
        data = deep_merge(data, read_yaml_mapping(path))
        origin = str(path)
    config = validate(data, origin=origin)
    return config.with_overrides(overrides) if overrides else config


def config_for_inputs(inputs: list[str | Path], *, kind: str = "folder", dataset: str | None = None,
                      config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                      follow_links_outside: bool = True) -> CurationConfig:
    """What ``megactor curate`` and the curate deployment run: the embedded defaults, a YAML file, dotted
    overrides, then the input folders as the sources (none: the config's own)."""
    config = load_config(config_file, overrides or {})
    if inputs:
        roots = [SourceConfig(kind=kind, root=Path(p).resolve(), dataset=dataset,
                              follow_symlinks_outside_root=follow_links_outside) for p in inputs]
        config = validate({**config.to_dict(), "sources": [s.model_dump(mode="json") for s in roots]})
    return config

