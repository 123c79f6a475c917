"""The evaluation's settings and the checks made before anything starts, without Prefect: the CLI validates them
before it starts a Prefect server (Prefect must not be imported before ``PREFECT_API_URL`` is set, or a run
talks to a temporary server of its own instead of the one whose UI the user watches)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from curation import weights
from curation.errors import ConfigError

METRICS = ("fid", "fvd", "lpips", "sync", "csim")
# what the metrics load (registry names): FID, FVD, LPIPS (two files), Sync-C/D, CSIM (detector, ArcFace)
EVAL_WEIGHTS = ("pt_inception", "i3d_400", "alexnet", "lpips_alex_v0.1", "syncnet_v2", "det_10g", "w600k_r50")


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    test_fraction: float = Field(0.1, gt=0, lt=1)  # the paper's 9:1
    seed: int = 0
    modes: tuple[Literal["audio", "visual", "mixed"], ...] = ("audio", "visual", "mixed")
    max_clips: int | None = Field(50, ge=1)  # test clips evaluated (the first by clip_id); None: every one
    seconds: float = Field(4.0, gt=0)  # per clip, from its start (at least FVD's 16 frames)
    resolution: int = Field(512, ge=16)  # ground truth without a checkpoint (with one: the model's)
    fps: float = 25.0
    crop_scale: float = 2.0
    mask_dilation: float = 0.1
    steps: int = Field(25, ge=1)
    guidance: float = Field(2.0, ge=0)
    scheduler: Literal["ddim", "dpm++"] = "ddim"
    metrics: tuple[Literal["fid", "fvd", "lpips", "sync", "csim"], ...] = METRICS
    weights: dict[str, Path] = {}  # registry name -> a local file instead of the registry's
    csim_every: int = Field(5, ge=1)  # identity similarity on every n-th frame
    face_detector: Literal["det_10g", "scrfd_500m"] = "det_10g"  # CSIM's SCRFD (registry name)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(16, ge=1)


def preflight(manifest: str | Path, config: EvalConfig, checkpoint: str | None,
              videos: dict[str, str] | None) -> None:
    """What can be checked before anything starts: inputs exist, weights are named right."""
    from curation.augment.pipeline import manifest_dir

    manifest_dir(manifest)
    if checkpoint is None and not videos:
        raise ConfigError("give a checkpoint to evaluate, or folders of videos (--videos) to score")
    if checkpoint is not None:
        from training.export import find_export

        find_export(checkpoint)
    for label, folder in (videos or {}).items():
        if not Path(folder).is_dir():
            raise ConfigError(f"--videos {label}: no folder {folder}")
    unknown = sorted(set(config.weights) - set(weights.REGISTRY))
    if unknown:
        raise ConfigError(f"weights: unknown registry names {unknown}; see `megactor weights list`")
    for name, path in config.weights.items():
        if not Path(path).exists():
            raise ConfigError(f"weights.{name}: no file {path}")
