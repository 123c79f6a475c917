"""Typed, validated configuration of an augmentation run (``megactor augment``), loaded from YAML
(``curation/configs/augment.yaml`` holds every key with its default).

One model per component, as for curation: unknown keys and bad values raise :class:`ConfigError` at start, naming
the key. The resolved config is saved next to the run's output; ``making_hash`` (everything that changes a
variant's pixels or its checks) is stored in the variants table's provenance, and a resumed run with a different
one is refused."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from curation.config import apply_dotted, deep_merge, format_validation_error, read_yaml_mapping
from curation.errors import ConfigError

KINDS = ("faceswap", "stylized")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FaceSwapConfig(_Strict):
    """InsightFace's swap contract: SCRFD detection, ArcFace (w600k_r50) identity, inswapper_128."""

    variants_per_clip: int = Field(1, ge=0, le=16)  # 0: no face-swapped variants
    detector: Literal["det_10g", "scrfd_500m"] = "det_10g"  # registry name (scrfd_500m: the light profile)
    detector_weights: Path | None = None  # a local SCRFD ONNX file instead of the registry's (sha256 recorded)
    embedder_weights: Path | None = None  # a local ArcFace ONNX file instead of w600k_r50
    swapper_weights: Path | None = None  # a local inswapper-contract ONNX file instead of inswapper_128
    det_size: int = Field(640, ge=160, le=1280)  # SCRFD input side (a fixed-size model keeps its own)
    det_score_min: float = Field(0.5, ge=0, le=1)  # InsightFace's default
    nms_iou: float = Field(0.4, gt=0, le=1)  # InsightFace's default
    smooth_window_s: float = Field(0.2, ge=0)  # keypoints: centred moving average over this span (0: none)
    max_gap_s: float = Field(0.5, ge=0)  # detection gaps up to this long are interpolated
    min_detected_frac: float = Field(0.5, ge=0, le=1)  # below: the clip has no usable face (variant error)
    max_unswapped_frac: float = Field(0.02, ge=0, le=1)  # frames left unswapped (gaps too long) above: rejected


class IdentityConfig(_Strict):
    """Where the swapped-in identities come from. ``clips``: one frontal, large-face frame of each kept clip
    (the default: runs with no extra input); ``folder``: face images under ``folder`` (a sub-folder per speaker,
    or one image per speaker)."""

    pool: Literal["clips", "folder"] = "clips"
    folder: Path | None = None
    min_face_px: float = Field(100.0, ge=16)  # a pool frame's face box must be at least this wide (source px)
    max_yaw_deg: float = Field(20.0, ge=0, le=90)  # ... and at most this turned (from the manifest's face track)
    min_det_score: float = Field(0.6, ge=0, le=1)  # an identity's face must be detected at least this surely


class CheckConfig(_Strict):
    """The checks every variant gets (stored as columns; the thresholds decide ``status``)."""

    sample_fps: float = Field(2.0, gt=0, le=30)  # frames per second compared with the original
    landmarks: Literal["auto", "mediapipe", "dwpose"] = "auto"  # auto: the curated run's face backend
    same_person_min: float = Field(0.4, ge=-1, le=1)  # median ArcFace cosine to the source identity (InsightFace)
    closer_to_original_frac_max: float = Field(0.1, ge=0, le=1)  # frames whose face is nearer the original
    mouth_open_error_max: float = Field(0.08, ge=0)  # mean |mouth opening of variant - original| (ratio units)
    eye_open_error_max: float = Field(0.08, ge=0)  # mean |eye opening of variant - original| (ratio units)
    flicker_ratio_max: float | None = Field(3.0, gt=0)  # stylized: variant's frame-to-frame change / original's
    min_motion_frames_frac: float = Field(0.5, ge=0, le=1)  # landmarks needed on this share of sampled frames


DEFAULT_PROMPTS = (
    "an anime-style portrait of the same person, keeping the expression, mouth movement and head pose",
    "a watercolor painting portrait, same expression, mouth and pose",
    "a 3D cartoon character portrait, same expression, mouth and pose",
    "an oil painting portrait, same expression, mouth and pose",
)


class StylizeConfig(_Strict):
    """Image-to-image with a distilled model (SD-Turbo by default) on a face-centred crop pasted back."""

    variants_per_clip: int = Field(1, ge=0, le=16)  # 0: no stylized variants
    model: str = "sd-turbo"  # registry name of a diffusers folder
    model_dir: Path | None = None  # a local diffusers img2img folder instead (SD-Turbo, SDXL-Turbo; sha256 recorded)
    prompts: tuple[str, ...] = DEFAULT_PROMPTS  # one drawn per variant from (seed, clip_id, variant)
    steps: int = Field(2, ge=1, le=50)  # scheduler steps; the UNet runs int(steps * strength) times per frame
    strength: float = Field(0.5, gt=0, le=1)  # SD-Turbo's image-to-image recipe: steps x strength >= 1
    resolution: int = Field(512, ge=64, le=1024)  # the crop's side for the model (multiple of 8)
    crop_scale: float = Field(1.8, gt=0)  # crop side = this x the larger side of the clip's median face box
    feather: float = Field(0.1, ge=0, le=0.5)  # paste-back blend width, as a fraction of the crop side
    batch_size: int = Field(8, ge=1, le=64)  # frames per pipeline call
    shared_noise: bool = True  # one noise tensor per clip (every frame starts from the same noise)
    anchor_attention: bool = True  # self-attention also attends to frame 0's keys/values

    @model_validator(mode="after")
    def _one_step_at_least(self) -> StylizeConfig:
        if int(self.steps * self.strength) < 1:
            raise ValueError(f"stylize.steps x stylize.strength must be >= 1 (got {self.steps} x {self.strength})")
        if self.resolution % 8:
            raise ValueError(f"stylize.resolution must be a multiple of 8, got {self.resolution}")
        if not self.prompts:
            raise ValueError("stylize.prompts must not be empty")
        return self


class VideoConfig(_Strict):
    """How variant videos are written: H.264 in mp4, the clip's frame rate and size, its audio."""

    crf: int = Field(18, ge=0, le=51)  # x264 quality (18: visually lossless)
    preset: str = "veryfast"
    max_side: int | None = Field(None, ge=64)  # None: the source's display size (whole frames)


class AugmentRuntime(_Strict):
    shard_clips: int = Field(25, ge=1)  # kept clips per shard task
    ray_address: str | None = None
    ray_num_cpus: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    decode_timeout_s: float | None = Field(None, gt=0)  # None: media's default (60 s + 4x the clip)


class AugmentConfig(_Strict):
    seed: int = 0
    kinds: tuple[Literal["faceswap", "stylized"], ...] = KINDS
    faceswap: FaceSwapConfig = FaceSwapConfig()
    identity: IdentityConfig = IdentityConfig()
    checks: CheckConfig = CheckConfig()
    stylize: StylizeConfig = StylizeConfig()
    video: VideoConfig = VideoConfig()
    runtime: AugmentRuntime = AugmentRuntime()

    @model_validator(mode="after")
    def _folder_pool(self) -> AugmentConfig:
        if self.identity.pool == "folder" and self.identity.folder is None:
            raise ValueError("identity.pool is 'folder' but identity.folder is not set")
        if not self.kinds:
            raise ValueError("kinds must name at least one of faceswap, stylized")
        return self

    def variants_per_clip(self, kind: str) -> int:
        if kind not in self.kinds:
            return 0
        return self.faceswap.variants_per_clip if kind == "faceswap" else self.stylize.variants_per_clip

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def making_hash(self) -> str:
        """Hash of everything that changes a variant or its checks (not the runtime)."""
        return _hash({k: v for k, v in self.to_dict().items() if k != "runtime"})

    def config_hash(self) -> str:
        return _hash(self.to_dict())

    def with_overrides(self, overrides: dict[str, Any]) -> AugmentConfig:
        return validate(apply_dotted(self.to_dict(), overrides, "augment config"), origin="overrides")


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def validate(data: dict[str, Any], *, origin: str = "config") -> AugmentConfig:
    try:
        return AugmentConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, origin, "augment configuration")) from None


def default_data() -> dict[str, Any]:
    text = resources.files("curation").joinpath("configs/augment.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load_augment_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> AugmentConfig:
    """The embedded defaults, updated by a YAML file (if given), then by dotted-key overrides."""
    data = default_data()
    origin = "defaults"
    if path is not None:
        data = deep_merge(data, read_yaml_mapping(Path(path), "augment config file"))
        origin = str(path)
    config = validate(data, origin=origin)
    return config.with_overrides(overrides) if overrides else config
