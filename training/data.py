"""The manifest-backed training dataset: kept clips of the curated manifest, decoded around the stored face track.

One sample is one clip (index ``i`` is the ``i``-th selected row): a segment of ``num_frames`` frames at
``frame_stride`` on the clip's 25 fps timeline, a reference frame from another time of the same clip, the driving
frames (the same frames, or a face-swapped / stylized variant of them) keeping only the driven face regions, eye
and mouth masks, the loss region, and the matching 16 kHz audio window. Pixels and masks leave the loader compact
(the decoded uint8 bytes, uint8 0/1 masks); ``model_inputs`` moves a collated batch to the trainer's device and
converts them to float32 there, the same values the loader returned as floats before (issue 12).

Determinism: every random choice of a sample comes from ``sample_plan(index, epoch)``, whose generator is seeded by
``(seed, epoch, index)`` only (never global RNG, never the worker id), so a resumed run that replays the same
indices for the same epoch gets bit-identical samples. ``plan`` is cheap (no decoding): tests and the trainer can
inspect the mixes without touching a video.

Manifest contract (``curation.manifest``): the rows are read with ``curation.manifest.read_manifest`` only. The
crop and the masks come from ``face_track`` (per sampled frame: ``t`` in source seconds, ``box``, ``eyes_box``,
``mouth_box`` as ``[x0, y0, x1, y1]`` in source display pixels), falling back to ``face_box`` when the track has
no boxes (``curation.crops``, shared with augmentation and inference).

Driving variants (the paper's countermeasure to identity leakage: 50 % real, 40 % face-swapped, 10 % stylized
driving frames). ``manifest_dir`` may name a ``megactor augment`` run: its ``source.json`` leads to the curated
manifest, and its variants table (``curation.augment.variants``) gives each clip its usable face-swapped and
stylized videos, several per clip possible (one is drawn per sample). The manifest's own ``driving_faceswap_path``
/ ``driving_stylized_path`` columns, when set, count as one more variant each. A variant video covers exactly the
clip's span (its time 0 is the clip's ``start_s``) and shows the same view as the source, possibly resized: the
crop and the masks are scaled by the size ratio. A row without variants drives from the real frames only; a row
with some draws among the available sources with the mix renormalised. A mix that asks for variants when no clip
has any is warned about at construction (``variant_clips`` counts the clips that have each kind), never silent.

Audio and stages: stage 1 is image level and visual only, and decodes no audio (zeros). In stages 2/3 the
modality mix needs audio, so clips without an audio stream (``has_audio`` false) are handled by
``DataConfig.audioless``: ``"drop"`` (default: excluded at construction and counted in ``excluded``, so the 10/20/70
mix holds over the clips used) or ``"visual"`` (kept, always drawn as visual-only samples).

Decoding: one ffmpeg process per sample (``curation.crops.decode_crop_spans``) for the segment, the reference
frame, the driving variant and the audio window, bit-identical to one call per part (``legacy_decode=True``, the
reference ``tests/training/test_loader_fast.py`` and ``bench/train_loader.py`` compare against). ``decoder:
pyav`` decodes the same spans in the process instead (``curation.decode_av``: no process start, containers and
decoders kept open per thread, non-reference pictures no span can show skipped): the same pixels, the audio
equal but within the first audio frame after the window's start (``tests/training/test_loader_pyav.py``).

DataLoader settings (decoding is ffmpeg subprocesses, so parallelism comes from worker processes): ``num_workers``
about the CPU cores per GPU minus two (e.g. 6-8), ``batch_size`` 1-2 per GPU at 512 x 16 frames,
``collate_fn=collate_skip_failed``, ``pin_memory=True``, ``prefetch_factor=2``; the trainer passes each batch
through ``model_inputs`` (to its device, uint8 pixels and masks to float32 there). Either call ``set_epoch`` before
each epoch's iterator with ``persistent_workers=False``, or index with ``(epoch, index)`` tuples from the sampler
(any ``persistent_workers``). The dataset pickles (it keeps the selected rows as an Arrow table, which worker
processes share without copying Python objects). ``failures`` / ``excluded`` are per process: with workers, the
main process sees failures through the ``num_skipped`` count of each collated batch and the workers' log warnings.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset, default_collate

from curation import media
from curation.augment.variants import is_augment_run, source_manifest, usable_variants
from curation.crops import (
    CropSpan,
    box_masks,
    decode_crop_spans,
    decode_crops,
    probe_from_row,
    square_crop,
    track_points,
)
from curation.errors import ConfigError, DecodeError, MediaError
from curation.manifest import read_manifest
from training.driving_aug import augment_driving

log = logging.getLogger(__name__)

MODALITIES = ("visual", "audio", "mixed")  # "modality" tensor values 0, 1, 2
MODALITY_VISUAL, MODALITY_AUDIO, MODALITY_MIXED = 0, 1, 2
DRIVING_SOURCES = ("real", "faceswap", "stylized")
VARIANT_COLUMNS = {"faceswap": "driving_faceswap_path", "stylized": "driving_stylized_path"}
DROPOUT_CHOICES = ("eyes", "mouth", "both")


@dataclass
class DataConfig:
    """Data settings shared by the three stages (a stage config overrides what differs, e.g. ``num_frames: 1``
    for stage 1). Mixes are relative weights, normalised here."""

    manifest_dir: str = ""  # a directory of manifest part files (curation.manifest.write_part)
    num_frames: int = 16  # stage 1: 1 (image level)
    frame_stride: int = 2  # on the fps timeline
    resolution: int = 512  # square output side
    fps: float = 25.0
    crop_scale: float = 2.0  # crop side = crop_scale x the larger side of the clip's median face box
    driving_mix: dict[str, float] = field(
        default_factory=lambda: {"real": 0.5, "faceswap": 0.4, "stylized": 0.1})
    modality_mix: dict[str, float] = field(  # stages 2/3; stage 1 is visual only
        default_factory=lambda: {"visual": 0.1, "audio": 0.2, "mixed": 0.7})
    face_dropout: dict[str, float] = field(  # driven regions of a visual sample
        default_factory=lambda: {"eyes": 1.0, "mouth": 1.0, "both": 1.0})
    mask_dilation: float = 0.1  # eye/mouth/face boxes grow by this fraction of their size on each side
    grayscale_prob: float = 0.2  # driving-frame augmentations, one draw per sample (all frames alike)
    scale_prob: float = 0.5
    scale_range: tuple[float, float] = (0.8, 1.2)
    aspect_prob: float = 0.5
    aspect_range: tuple[float, float] = (0.8, 1.25)  # width/height stretch, drawn log-uniformly
    color_prob: float = 0.5  # colour jitter (the paper lists colour augmentation; the ranges are ours)
    brightness_range: tuple[float, float] = (0.8, 1.2)  # factors, each drawn uniformly
    contrast_range: tuple[float, float] = (0.8, 1.2)  # about the driven region's mean
    saturation_range: tuple[float, float] = (0.8, 1.2)  # away from each pixel's luma
    audio_sample_rate: int = 16000
    audio_context_s: float = 0.2  # audio kept on each side of the segment (Whisper context); zeros past the clip
    audioless: str = "drop"  # stages 2/3: "drop" clips without audio, or use them as "visual"-only samples
    # samples with neither driving frames nor audio (only the reference): the unconditional branch inference's
    # classifier-free guidance takes (the paper gives no rate; 5 % is ours)
    uncond_prob: float = 0.05
    # > 0: leave out the identities `megactor evaluate` tests on (curation.splits with the same fraction and seed,
    # over the same kept clips), so that an evaluation never scores a speaker the model trained on
    holdout_fraction: float = 0.0
    holdout_seed: int = 0
    seed: int = 0
    only_kept: bool = True  # rows with keep == True only
    # how a sample's frames and audio are decoded: "ffmpeg" (one ffmpeg process per sample) or "pyav" (in this
    # process through PyAV, the train extra's `av`: no process start, containers kept open per worker; the same
    # pixels, audio within one 16-bit step; falls back to ffmpeg without `av` and for rotated videos)
    decoder: str = "ffmpeg"

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.frame_stride < 1 or self.resolution < 8:
            raise ConfigError(f"data: need num_frames >= 1, frame_stride >= 1, resolution >= 8; got "
                              f"{self.num_frames}, {self.frame_stride}, {self.resolution}")
        if self.fps <= 0 or self.crop_scale <= 0 or self.mask_dilation < 0 or self.audio_context_s < 0:
            raise ConfigError(f"data: fps, crop_scale must be > 0, mask_dilation, audio_context_s >= 0; got "
                              f"{self.fps}, {self.crop_scale}, {self.mask_dilation}, {self.audio_context_s}")
        if self.decoder not in ("ffmpeg", "pyav"):
            raise ConfigError(f"data.decoder must be 'ffmpeg' or 'pyav', got {self.decoder!r}")
        if self.audioless not in ("drop", "visual"):
            raise ConfigError(f"data.audioless must be 'drop' or 'visual', got {self.audioless!r}")
        self.driving_mix = _weights("driving_mix", self.driving_mix, DRIVING_SOURCES)
        self.modality_mix = _weights("modality_mix", self.modality_mix, MODALITIES)
        self.face_dropout = _weights("face_dropout", self.face_dropout, DROPOUT_CHOICES)
        if self.driving_mix["real"] <= 0:
            raise ConfigError("data.driving_mix['real'] must be > 0: clips without variants drive from real frames")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"data.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if not 0.0 <= self.uncond_prob < 1.0:
            raise ConfigError(f"data.uncond_prob must be in [0, 1), got {self.uncond_prob}")
        for name in ("grayscale_prob", "scale_prob", "aspect_prob", "color_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"data.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("scale_range", "aspect_range", "brightness_range", "contrast_range", "saturation_range"):
            low, high = (float(v) for v in getattr(self, name))
            if not 0 < low <= high:
                raise ConfigError(f"data.{name} must be (low, high) with 0 < low <= high, got {getattr(self, name)}")
            setattr(self, name, (low, high))

    @property
    def segment_frames(self) -> int:
        """Frames of the fps timeline a segment spans (first to last sampled frame, inclusive)."""
        return (self.num_frames - 1) * self.frame_stride + 1

    @property
    def audio_samples(self) -> int:
        """Fixed audio length: the segment's duration (num_frames x stride frames) plus the context on each side."""
        seconds = self.num_frames * self.frame_stride / self.fps + 2 * self.audio_context_s
        return int(round(seconds * self.audio_sample_rate))


def _weights(name: str, mix: dict[str, float], keys: tuple[str, ...]) -> dict[str, float]:
    unknown = set(mix) - set(keys)
    values = {k: float(mix.get(k, 0.0)) for k in keys}
    if unknown or any(v < 0 or not math.isfinite(v) for v in values.values()) or sum(values.values()) <= 0:
        raise ConfigError(f"data.{name} must map {list(keys)} to non-negative weights with a positive sum, got {mix}")
    total = sum(values.values())
    return {k: v / total for k, v in values.items()}


@dataclass(frozen=True)
class SamplePlan:
    """Every random decision of one sample, from ``(seed, epoch, index)`` alone."""

    index: int
    epoch: int
    clip_id: str
    start_frame: int  # first frame of the segment, on the clip's fps timeline (0 = clip start)
    reference_frame: int
    modality: int  # MODALITY_VISUAL | MODALITY_AUDIO | MODALITY_MIXED
    drive_eyes: bool
    drive_mouth: bool
    driving_source: str  # real | faceswap | stylized
    grayscale: bool
    scale: float  # driving-frame zoom about the centre (1.0: none)
    aspect: float  # driving-frame width/height stretch (1.0: none)
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)  # brightness, contrast, saturation factors (1: none)
    driving_variant: int = 0  # which of the clip's variants of ``driving_source`` (0 for real)
    unconditional: bool = False  # no driving frames and no audio (classifier-free guidance's branch)


class ManifestDataset(Dataset):
    """Map-style dataset over the selected manifest rows; ``__getitem__`` returns a dict of tensors, or None
    when the clip cannot be decoded (counted in ``failures`` by reason; use ``collate_skip_failed``).

    Output (F = num_frames, H = W = resolution), compact: pixels and masks as uint8, converted to floats on the
    trainer's device by ``model_inputs`` (after collating):
      ``frames`` (F,3,H,W) uint8 RGB (``model_inputs``: float32 in [-1, 1]); ``reference`` (3,H,W) uint8 RGB
      (likewise);
      ``driving`` (F,3,H,W) uint8 RGB (``model_inputs``: float32 in [0, 1]), black (0) outside the driven
      regions (all 0 for audio-only), after the driving augmentations; ``driving_mask`` (F,1,H,W) uint8 0/1: the
      driven region in the driving frames' geometry (after the scale/aspect augmentation);
      ``eye_mask`` / ``mouth_mask`` (F,1,H,W) uint8 0/1 in the target frames' geometry (for attention masking);
      ``loss_mask`` (F,1,H,W) uint8 0/1: the region of interest of the masked MSE: the dilated face box in
      stage 1 (the paper masks the stage-1 loss), all ones in stages 2/3 (the masks: float32 0/1 through
      ``model_inputs``);
      ``audio`` (S,) float32 16 kHz mono: the segment plus ``audio_context_s`` each side, zero outside the clip,
      all zeros in stage 1, for visual-only samples and for audio-less clips (placeholders: the trainer switches
      audio attention off by ``modality``); ``modality`` int64; ``drive_eyes`` / ``drive_mouth`` bool;
      ``clip_id`` str; ``driving_source`` str.
    """

    def __init__(self, config: DataConfig, stage: int, *, table: pa.Table | None = None, legacy_decode: bool = False):
        """``legacy_decode``: decode as before issue 12 (an ffmpeg per part of a sample, an ffprobe per variant
        sample), kept as the reference the one-process decoding is tested and benchmarked against; the samples
        are the same either way."""
        if stage not in (1, 2, 3):
            raise ConfigError(f"stage must be 1, 2 or 3, got {stage}")
        self.config = config
        self.stage = stage
        self.legacy_decode = legacy_decode
        self._probes: dict[str, media.ProbeResult] = {}  # variant videos' probes, per process
        self.epoch = 0
        self.failures: Counter[str] = Counter()
        self.excluded: Counter[str] = Counter()
        variants: dict[str, dict[str, list[str]]] = {}
        if table is None:
            if not config.manifest_dir:
                raise ConfigError("data.manifest_dir is empty: pass --manifest DIR (a curation run's output)")
            directory = Path(config.manifest_dir)
            if is_augment_run(directory):  # an augmentation run: its variants, and the curated run it augments
                variants = usable_variants(directory)
                directory = source_manifest(directory)
            if (directory / "manifest").is_dir():  # a curation run's output directory
                directory = directory / "manifest"
            table = read_manifest(directory)
        self.rows = self._select(table)
        if len(self.rows) == 0:
            raise ConfigError(f"no clip of {config.manifest_dir or 'the table'} can be used for stage {stage} "
                              f"({len(table)} rows; excluded: {dict(self.excluded) or 'none'})")
        self._clip_frames = _usable_frames(self.rows, config.fps)
        self._clip_ids = self.rows.column("clip_id").to_pylist()
        self._has_audio = np.asarray([bool(v) for v in self.rows.column("has_audio").to_pylist()])
        self._variants = {kind: self._variant_paths(kind, variants) for kind in VARIANT_COLUMNS}
        self.variant_clips = {kind: sum(bool(paths) for paths in self._variants[kind]) for kind in VARIANT_COLUMNS}
        wanted = [kind for kind in VARIANT_COLUMNS if config.driving_mix[kind] > 0]
        if wanted and not any(self.variant_clips[kind] for kind in wanted):
            log.warning("no clip has a %s variant: every sample drives from the real frames, so the identity-leakage "
                        "countermeasure is off; pass --manifest a `megactor augment` run",
                        " or ".join(wanted))

    def _variant_paths(self, kind: str, variants: dict[str, dict[str, list[str]]]) -> list[list[str]]:
        """Per selected row, the paths of its ``kind`` variants: the manifest column's, then the variants table's."""
        column = VARIANT_COLUMNS[kind]
        stored = self.rows.column(column).to_pylist() if column in self.rows.column_names else [None] * len(self.rows)
        return [([path] if path else []) + variants.get(clip, {}).get(kind, [])
                for clip, path in zip(self.rows.column("clip_id").to_pylist(), stored, strict=True)]

    def _select(self, table: pa.Table) -> pa.Table:
        total = len(table)
        if self.config.only_kept:
            table = table.filter(pc.fill_null(pc.equal(table["keep"], True), False))
            self.excluded["not_kept"] += total - len(table)
        keep = np.ones(len(table), dtype=bool)
        if self.config.holdout_fraction > 0 and len(table):
            from curation.splits import split_rows

            columns = [c for c in ("clip_id", "source_path", "speaker_id", "video_id") if c in table.column_names]
            split = split_rows(table.select(columns).to_pylist(), test_fraction=self.config.holdout_fraction,
                               seed=self.config.holdout_seed)
            held = np.asarray([side == "test" for side in split.column("split").to_pylist()], dtype=bool)
            self.excluded["held_out_for_evaluation"] += int(held.sum())
            keep &= ~held
        too_short = _usable_frames(table, self.config.fps) < max(self.config.segment_frames, 2)
        no_face = np.asarray(table.column("face_box").is_null().to_pylist(), dtype=bool)
        no_audio = ~np.asarray([bool(v) for v in table.column("has_audio").to_pylist()], dtype=bool)
        for reason, mask in (("too_short", too_short), ("no_face_track", no_face),
                             ("no_audio", no_audio if self.stage > 1 and self.config.audioless == "drop" else None)):
            if mask is None:
                continue
            self.excluded[reason] += int((keep & mask).sum())
            keep &= ~mask
        return table.filter(pa.array(keep))

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- the decisions ---------------------------------------------------------------------------------------
    def sample_plan(self, index: int, epoch: int | None = None) -> SamplePlan:
        """The random decisions of sample ``index`` in ``epoch`` (default: the current one); no decoding."""
        cfg = self.config
        epoch = self.epoch if epoch is None else int(epoch)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        rng = np.random.default_rng([cfg.seed, epoch, index])
        n = int(self._clip_frames[index])
        start = int(rng.integers(0, n - cfg.segment_frames + 1))
        used = set(range(start, start + cfg.segment_frames, cfg.frame_stride))
        outside = [f for f in range(n) if not start <= f < start + cfg.segment_frames]
        candidates = outside or [f for f in range(n) if f not in used] or list(range(n))
        reference = int(candidates[int(rng.integers(0, len(candidates)))])

        if self.stage == 1 or not self._has_audio[index]:
            modality = MODALITY_VISUAL
        else:
            modality = int(rng.choice(3, p=[cfg.modality_mix[m] for m in MODALITIES]))
        dropout = DROPOUT_CHOICES[int(rng.choice(3, p=[cfg.face_dropout[d] for d in DROPOUT_CHOICES]))]
        drive_eyes = modality == MODALITY_MIXED or (modality == MODALITY_VISUAL and dropout in ("eyes", "both"))
        drive_mouth = modality == MODALITY_VISUAL and dropout in ("mouth", "both")

        available = [s for s in DRIVING_SOURCES if s == "real" or self._variants[s][index]]
        weights = np.array([cfg.driving_mix[s] for s in available])
        source = available[int(rng.choice(len(available), p=weights / weights.sum()))]

        grayscale = bool(rng.random() < cfg.grayscale_prob)
        scale = float(rng.uniform(*cfg.scale_range)) if rng.random() < cfg.scale_prob else 1.0
        aspect = (float(np.exp(rng.uniform(*np.log(cfg.aspect_range)))) if rng.random() < cfg.aspect_prob
                  else 1.0)
        color = (1.0, 1.0, 1.0)
        if rng.random() < cfg.color_prob:  # drawn last: the draws above stay what they were without it
            color = tuple(float(rng.uniform(*r)) for r in (cfg.brightness_range, cfg.contrast_range,
                                                           cfg.saturation_range))
        variant = 0
        if source != "real":  # drawn last, and only for variants: plans of clips without variants stay as they were
            variant = int(rng.integers(0, len(self._variants[source][index])))
        unconditional = bool(rng.random() < cfg.uncond_prob)  # drawn last: every draw above is unchanged
        return SamplePlan(index=index, epoch=epoch, clip_id=self._clip_ids[index], start_frame=start,
                          reference_frame=reference, modality=modality, drive_eyes=drive_eyes,
                          drive_mouth=drive_mouth, driving_source=source, grayscale=grayscale, scale=scale,
                          aspect=aspect, color=color, driving_variant=variant, unconditional=unconditional)

    # -- the sample ------------------------------------------------------------------------------------------
    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any] | None:
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        plan = self.sample_plan(int(index), epoch)
        row = self.rows.slice(plan.index, 1).to_pylist()[0]
        try:
            return self._sample(plan, row)
        except MediaError as error:
            self.failures[error.reason] += 1
            log.warning("skipping clip %s (%s): %s", plan.clip_id, error.reason, error)
            return None

    def _sample(self, plan: SamplePlan, row: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        res, stride, fps = cfg.resolution, cfg.frame_stride, cfg.fps
        probe = probe_from_row(row)
        width, height = probe.width, probe.height
        track = track_points(row)
        crop = square_crop(track, row["face_box"], width, height, cfg.crop_scale)  # x0, y0, side (source px)

        frame_idx = plan.start_frame + stride * np.arange(cfg.num_frames)
        times = row["start_s"] + frame_idx / fps
        segment_start = row["start_s"] + plan.start_frame / fps
        reference_start = row["start_s"] + plan.reference_frame / fps
        wants_audio = (self.stage > 1 and plan.modality != MODALITY_VISUAL and bool(row.get("has_audio"))
                       and not plan.unconditional)
        decode = self._decode_legacy if self.legacy_decode else self._decode
        frames, reference, driving, source, audio = decode(plan, row, probe, crop, segment_start, reference_start,
                                                           wants_audio)

        eye_mask = box_masks(track, "eyes_box", times, crop, res, cfg.mask_dilation, np.uint8)
        mouth_mask = box_masks(track, "mouth_box", times, crop, res, cfg.mask_dilation, np.uint8)
        if self.stage == 1:
            loss_mask = box_masks(track, "box", times, crop, res, cfg.mask_dilation, np.uint8)
        else:
            loss_mask = np.ones_like(eye_mask)
        drive_eyes, drive_mouth = plan.drive_eyes and not plan.unconditional, plan.drive_mouth and not plan.unconditional
        if drive_eyes and drive_mouth:  # the masks are 0/1: the maximum with zeros is a copy
            driven = np.maximum(eye_mask, mouth_mask)
        elif drive_eyes or drive_mouth:
            driven = (eye_mask if drive_eyes else mouth_mask).copy()
        else:
            driven = np.zeros_like(eye_mask)
        driving, driving_mask = augment_driving(driving, driven, plan)
        return {  # the pixels as decoded, channels first (views: the collate stacks them)
            "frames": _channels_first(frames),
            "reference": _channels_first(reference[None])[0],
            "driving": _channels_first(driving),
            "driving_mask": torch.from_numpy(driving_mask[:, None]),
            "eye_mask": torch.from_numpy(eye_mask[:, None]),
            "mouth_mask": torch.from_numpy(mouth_mask[:, None]),
            "loss_mask": torch.from_numpy(loss_mask[:, None]),
            "audio": torch.from_numpy(audio),
            "modality": torch.tensor(plan.modality, dtype=torch.int64),
            "drive_eyes": torch.tensor(plan.drive_eyes),
            "drive_mouth": torch.tensor(plan.drive_mouth),
            "unconditional": torch.tensor(plan.unconditional),
            "clip_id": plan.clip_id,
            "driving_source": source,
        }

    # -- decoding: one ffmpeg process per sample ---------------------------------------------------------------
    def _decode(self, plan: SamplePlan, row: dict[str, Any], probe: media.ProbeResult,
                crop: tuple[float, float, float], segment_start: float, reference_start: float,
                wants_audio: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, np.ndarray]:
        """The segment, the reference frame, the driving variant's frames and the audio window from one ffmpeg
        process (``curation.crops.decode_crop_spans``), the same pixels and samples as ``_decode_legacy``. A
        variant that cannot be probed or decoded is counted and the sample drives from the real frames, as
        there: a failed call is retried without the variant (rare, so its second start costs little)."""
        cfg = self.config
        source_path, fps = row["source_path"], cfg.fps
        spans = [CropSpan(source_path, probe, segment_start, cfg.num_frames, fps / cfg.frame_stride, crop),
                 CropSpan(source_path, probe, reference_start, 1, fps, crop)]
        audio_span, offset = self._audio_window(row, segment_start) if wants_audio else (None, 0)
        source = plan.driving_source
        if source != "real":
            try:
                path = self._variants[source][plan.index][plan.driving_variant]
                spans.append(self._variant_span(path, plan.start_frame / fps, probe.width, probe.height, crop))
            except MediaError as error:
                source = self._variant_failed(plan, source, error)
        try:
            crops, samples = decode_crop_spans(spans, cfg.resolution, audio=audio_span, decoder=cfg.decoder)
        except MediaError as error:
            if len(spans) == 2:
                raise
            crops, samples = decode_crop_spans(spans[:2], cfg.resolution, audio=audio_span,  # the variant's fault
                                              decoder=cfg.decoder)
            source = self._variant_failed(plan, source, error)
        frames, reference = crops[0], crops[1][0]
        driving = crops[2] if source != "real" else frames
        audio = self._place_audio(samples, offset)
        return frames, reference, driving, source, audio

    def _variant_span(self, path: str, local_start_s: float, width: int, height: int,
                      crop: tuple[float, float, float]) -> CropSpan:
        """The variant's frames of the segment: its time 0 is the clip's start, its size may differ (the crop
        is scaled). Its probe is cached per process: a variant is drawn again every few epochs."""
        cfg = self.config
        probe = self._probes.get(path)
        if probe is None:
            probe = media.probe(path)
            if not probe.has_video or not probe.width or not probe.height:
                raise DecodeError("variant has no video stream", path=path)
            self._probes[path] = probe
        sx, sy = probe.width / width, probe.height / height
        x0, y0, side = crop
        return CropSpan(path, probe, local_start_s, cfg.num_frames, cfg.fps / cfg.frame_stride,
                        (x0 * sx, y0 * sy, side * sx, side * sy))

    def _variant_failed(self, plan: SamplePlan, source: str, error: MediaError) -> str:
        self.failures[f"variant_{error.reason}"] += 1
        log.warning("clip %s: %s variant unusable, driving from real frames: %s", plan.clip_id, source, error)
        return "real"

    # -- decoding as before issue 12: an ffmpeg per part (the reference for tests and benchmarks) ---------------
    def _decode_legacy(self, plan: SamplePlan, row: dict[str, Any], probe: media.ProbeResult,
                       crop: tuple[float, float, float], segment_start: float, reference_start: float,
                       wants_audio: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, np.ndarray]:
        cfg = self.config
        res, fps = cfg.resolution, cfg.fps
        frames = decode_crops(row["source_path"], probe, segment_start, cfg.num_frames, fps / cfg.frame_stride,
                              crop, res)
        reference = decode_crops(row["source_path"], probe, reference_start, 1, fps, crop, res)[0]
        source = plan.driving_source
        driving = frames
        if source != "real":
            try:
                path = self._variants[source][plan.index][plan.driving_variant]
                driving = self._variant_crops(path, plan.start_frame / fps, probe.width, probe.height, crop)
            except MediaError as error:  # the real frames still make a valid sample
                source = self._variant_failed(plan, source, error)
        audio = np.zeros(cfg.audio_samples, dtype=np.float32)
        if wants_audio:
            audio = self._audio(row, segment_start)
        return frames, reference, driving, source, audio

    def _variant_crops(self, path: str, local_start_s: float, width: int, height: int,
                       crop: tuple[float, float, float]) -> np.ndarray:
        cfg = self.config
        probe = media.probe(path)
        if not probe.has_video or not probe.width or not probe.height:
            raise DecodeError("variant has no video stream", path=path)
        sx, sy = probe.width / width, probe.height / height
        x0, y0, side = crop
        frames = decode_crops(path, probe, local_start_s, cfg.num_frames, cfg.fps / cfg.frame_stride,
                               (x0 * sx, y0 * sy, side * sx, side * sy), cfg.resolution)
        return frames

    def _audio(self, row: dict[str, Any], segment_start_s: float) -> np.ndarray:
        window, offset = self._audio_window(row, segment_start_s)
        if window is None:
            return self._place_audio(None, 0)
        samples = media.decode_audio(window.path, start_s=window.start_s, duration_s=window.duration_s,
                                     sample_rate=window.sample_rate)
        return self._place_audio(samples, offset)

    def _audio_window(self, row: dict[str, Any], segment_start_s: float) -> tuple[media.AudioSpan | None, int]:
        """The part of the clip the audio window covers (None when none), and where it starts in the window."""
        cfg = self.config
        window_start = segment_start_s - cfg.audio_context_s
        begin = max(window_start, row["start_s"])
        end = min(window_start + cfg.audio_samples / cfg.audio_sample_rate, row["end_s"])
        if end <= begin:
            return None, 0
        offset = int(round((begin - window_start) * cfg.audio_sample_rate))
        return media.AudioSpan(row["source_path"], begin, end - begin, cfg.audio_sample_rate), offset

    def _place_audio(self, samples: np.ndarray | None, offset: int) -> np.ndarray:
        out = np.zeros(self.config.audio_samples, dtype=np.float32)
        if samples is not None:
            samples = samples[: self.config.audio_samples - offset]
            out[offset: offset + len(samples)] = samples
        return out


def collate_skip_failed(batch: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """``default_collate`` over the samples that decoded; None when none did (the trainer skips the step).
    ``num_skipped`` counts the dropped samples so the main process sees worker-side failures."""
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        return None
    out = default_collate(kept)
    out["num_skipped"] = len(batch) - len(kept)
    return out


# -- helpers -----------------------------------------------------------------------------------------------
END_MARGIN_S = 0.1  # how much longer than its video a container may say it is (audio priming and padding)


def _usable_frames(table: pa.Table, fps: float) -> np.ndarray:
    """Frames of each clip that a sample may use. A clip that ends where its source ends takes its end from the
    container's duration, which covers the audio too and can outlast the last video frame (e.g. 8.064 s for
    200 frames at 25 fps): its last ``END_MARGIN_S`` are left out, so that no plan asks for a frame that is
    not there."""
    durations = np.asarray(table.column("duration_s").to_pylist(), dtype=np.float64)
    frames = np.floor(durations * fps + 1e-6).astype(np.int64)
    if "source_duration_s" in table.column_names:
        ends = np.asarray(table.column("end_s").to_pylist(), dtype=np.float64)
        sources = np.asarray([np.nan if v is None else v for v in table.column("source_duration_s").to_pylist()],
                             dtype=np.float64)
        at_end = np.nan_to_num(ends - sources, nan=-1.0) > -1e-3
        frames = frames - at_end * int(np.ceil(END_MARGIN_S * fps))
    return np.maximum(frames, 0)


def _channels_first(frames: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) uint8, a view."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


# -- the trainer's side: a collated batch on its device, as floats ---------------------------------------------
SIGNED_KEYS = ("frames", "reference")  # uint8 -> float32 in [-1, 1]
UNIT_KEYS = ("driving",)  # uint8 -> float32 in [0, 1]
MASK_KEYS = ("driving_mask", "eye_mask", "mouth_mask", "loss_mask")  # uint8 0/1 -> float32 0/1


def model_inputs(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A collated batch of ``ManifestDataset`` samples on ``device``, as the model takes it: ``frames`` and
    ``reference`` float32 in [-1, 1] (``x / 127.5 - 1``), ``driving`` float32 in [0, 1] (``x / 255``), the masks
    float32 0/1, every other tensor moved as it is, the rest (``clip_id``, ``driving_source``,
    ``num_skipped``) passed through. The batch itself is not changed.

    The bytes cross to the device as uint8 (4x less than float32) and are converted there. The floats are the
    IEEE float32 quotients the loader returned before it handed over uint8, bit for bit on every device: on
    the CPU by torch's division (a true division, checked for every byte against numpy's); elsewhere from a
    256-entry table of those values, since CUDA divides a tensor by a Python scalar as a product with its
    float32 reciprocal, one ulp off for about half the bytes (126 of 256)."""
    device = torch.device(device)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if not torch.is_tensor(value):
            out[key] = value
            continue
        value = value.to(device, non_blocking=True)  # host to device: safe unpinned, nothing writes the source
        if key in SIGNED_KEYS or key in UNIT_KEYS:
            if value.dtype != torch.uint8:
                raise TypeError(f"model_inputs: batch[{key!r}] must be uint8 pixels, got {value.dtype}")
            kind = "signed" if key in SIGNED_KEYS else "unit"
            value = _divide(value, kind) if device.type == "cpu" else _lookup(value, kind)
        elif key in MASK_KEYS:
            value = value.float()
        out[key] = value
    return out


def _divide(pixels: torch.Tensor, kind: str) -> torch.Tensor:
    """uint8 -> float32 by torch's float32 division on the CPU (a new tensor; the input is not written)."""
    if kind == "signed":
        return pixels.float().div_(127.5).sub_(1.0)
    return pixels.float().div_(255.0)


_TABLES: dict[tuple[str, torch.device], torch.Tensor] = {}


def _lookup(pixels: torch.Tensor, kind: str) -> torch.Tensor:
    """uint8 -> float32 by a gather from the 256 values ``_signed_values`` / ``_unit_values`` give (computed
    on the CPU, kept per device): exact whatever the device's arithmetic."""
    key = (kind, pixels.device)
    table = _TABLES.get(key)
    if table is None:
        values = (_signed_values if kind == "signed" else _unit_values)(np.arange(256, dtype=np.uint8))
        table = _TABLES[key] = torch.from_numpy(values).to(pixels.device)
    return table[pixels.long()]


# The loader's float conversions before it handed over uint8 (numpy's float32 division): the reference values.
def _signed_values(frames: np.ndarray) -> np.ndarray:
    out = frames.astype(np.float32)
    np.divide(out, np.float32(127.5), out=out)
    return np.subtract(out, np.float32(1.0), out=out)


def _unit_values(frames: np.ndarray) -> np.ndarray:
    out = frames.astype(np.float32)
    return np.divide(out, np.float32(255.0), out=out)


__all__ = [
    "DRIVING_SOURCES",
    "MODALITIES",
    "MODALITY_AUDIO",
    "MODALITY_MIXED",
    "MODALITY_VISUAL",
    "VARIANT_COLUMNS",
    "DataConfig",
    "ManifestDataset",
    "SamplePlan",
    "collate_skip_failed",
    "model_inputs",
]
