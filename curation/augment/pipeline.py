"""Prefect-free augmentation stages: plan shards of a curated run's kept clips, build the identity pool, and make
one shard's variants end to end (decode -> swap or stylize -> encode -> check -> one atomic Parquet part + done
marker). ``flows/augment.py`` fans these out over Ray.

Output layout::

    OUTPUT/variants/part-NNNNN.parquet     one row per variant (``curation.augment.variants``)
    OUTPUT/identities/part-NNNNN.parquet   the identity pool (face swap)
    OUTPUT/videos/<kind>/<id[:2]>/<clip_id>-<index>.mp4   the variant videos
    OUTPUT/source.json                     the curated run this augments (the trainer follows it)
    OUTPUT/README.md, summary.json, config.yaml
    OUTPUT/_state/                          plan and done markers (resume)

Resume: a shard's videos are written under hidden names and renamed when complete, then its part, then its done
marker; a rerun skips done shards and redoes the others whole (deterministic: the same files again), so a crash
loses at most the shards in flight and never leaves a half-written video or a duplicated row.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import media
from curation.augment import checks, identity
from curation.augment.checks import OpeningMeter
from curation.augment.config import KINDS, AugmentConfig
from curation.augment.faceswap import FaceSwapper, NoFaceError
from curation.augment.stylize import Stylizer, cut_crop, paste_crop
from curation.augment.variants import (
    decided,
    identities_table,
    read_identities,
    variant_id,
    variants_table,
    write_part,
    write_source,
)
from curation.component import Component
from curation.crops import probe_from_row, square_crop, track_points
from curation.devices import cuda_available, resolve_device
from curation.encode import AudioSpan, VideoWriter, remove_stale_temporaries
from curation.errors import ConfigError, MediaError
from curation.io import part_files, write_json_atomic
from curation.manifest import read_manifest, read_provenance
from curation.pipeline import code_version

log = logging.getLogger(__name__)

LICENCE_NOTE = ("The face-swap models (InsightFace inswapper_128, w600k_r50, SCRFD) are for non-commercial research "
                "only; SD-Turbo is under Stability AI's non-commercial research community licence.")
IDENTITY_IMAGES_PER_SHARD = 200


@dataclass(frozen=True)
class AugmentLayout:
    root: Path

    @property
    def variants(self) -> Path:
        return self.root / "variants"

    @property
    def identities(self) -> Path:
        return self.root / "identities"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def state(self) -> Path:
        return self.root / "_state"

    @property
    def plan(self) -> Path:
        return self.state / "plan.json"

    def done(self, phase: str, shard: int) -> Path:
        return self.state / phase / f"shard-{shard:05d}.json"

    @staticmethod
    def video_relpath(clip_id: str, kind: str, index: int) -> str:
        return f"videos/{kind}/{clip_id[:2]}/{clip_id}-{index}.mp4"


# -- the input ---------------------------------------------------------------------------------------------------

def manifest_dir(path: str | Path) -> Path:
    """The manifest directory of a curated run (its output directory or the manifest directory itself)."""
    path = Path(path).expanduser().resolve()
    if (path / "manifest").is_dir():
        path = path / "manifest"
    if not part_files(path):
        raise ConfigError(f"no curated manifest in {path} (expected a `megactor curate` output directory)")
    return path


def kept_clips(manifest: Path) -> pa.Table:
    """The kept clips of a manifest, in clip-id order (the plan's order, whatever the part files), as Arrow: the
    driver holds them compactly and hands each shard its own rows."""
    table = read_manifest(manifest)
    kept = table.filter(pc.fill_null(pc.equal(table["keep"], True), False))
    if kept.num_rows == 0:
        raise ConfigError(f"{manifest} has no kept clip to augment ({table.num_rows} rows, none with keep = true)")
    return kept.take(pc.sort_indices(kept, [("clip_id", "ascending")]))


def shard_rows(clips: pa.Table, positions: dict[str, int], ids: list[str]) -> list[dict[str, Any]]:
    """One shard's manifest rows, by clip id (``positions``: clip id -> row of ``clips``)."""
    return clips.take([positions[clip] for clip in ids]).to_pylist()


def curated_profile(manifest: Path) -> str:
    return read_provenance(part_files(manifest)[0]).get("profile", "lite")


def landmark_backend(config: AugmentConfig, manifest: Path) -> str:
    if config.checks.landmarks != "auto":
        return config.checks.landmarks
    return "dwpose" if curated_profile(manifest) == "paper" else "mediapipe"


# -- components, once per worker process -------------------------------------------------------------------------

_CACHE: dict[tuple, dict[str, Component]] = {}
_POOLS: dict[tuple, identity.Pool] = {}


def build_components(config: AugmentConfig, backend: str, device: str) -> dict[str, Component]:
    """What the configured kinds need, cheap to build (models load on first use, in the worker)."""
    made: dict[str, Component] = {"openings": OpeningMeter(backend, device=device)}
    if config.variants_per_clip("faceswap"):
        made["faceswap"] = FaceSwapper(config.faceswap, device=device)
    if config.variants_per_clip("stylized"):
        made["stylize"] = Stylizer(config.stylize, device=device)
    return made


def cached_components(config: AugmentConfig, backend: str) -> dict[str, Component]:
    device = resolve_device(config.runtime.device)
    key = (config.making_hash(), backend, device)
    if key not in _CACHE:
        if not _CACHE:
            atexit.register(close_cached_components)
        _CACHE[key] = build_components(config, backend, device)
    return _CACHE[key]


def close_cached_components() -> None:
    for made in _CACHE.values():
        for component in made.values():
            component.close()
    _CACHE.clear()


def preflight(config: AugmentConfig, manifest: Path) -> pa.Table:
    """Fail before Ray and Prefect start: kept clips to augment, the identity folder, the packages and weights of
    every component the configured kinds need. Returns the kept clips."""
    clips = kept_clips(manifest)
    if config.variants_per_clip("faceswap") and config.identity.pool == "folder":
        folder = Path(config.identity.folder).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"identity.folder {folder} is not a directory")
    for component in build_components(config, landmark_backend(config, manifest), "cpu").values():
        component.check_requirements()
        component.check_weights()
    if config.runtime.device == "cuda" and not config.runtime.ray_address:
        resolve_device("cuda")
    return clips


def provenance(config: AugmentConfig, manifest: Path) -> dict[str, Any]:
    made = build_components(config, landmark_backend(config, manifest), "cpu")
    return {
        "code_version": code_version(),
        "config_hash": config.config_hash(),
        "making_hash": config.making_hash(),
        "seed": config.seed,
        "kinds": list(config.kinds),
        "prompts": list(config.stylize.prompts) if config.variants_per_clip("stylized") else [],
        "models": {name: sha for component in made.values() for name, sha in component.models().items()},
        "makers": [c.version_tag for c in made.values()],
        "source_manifest": str(manifest),
        "source_config_hash": read_provenance(part_files(manifest)[0]).get("config_hash"),
        "licence": LICENCE_NOTE,
    }


def ray_resources(config: AugmentConfig, backend: str) -> dict[str, float]:
    """Per-shard request from the component classes: a shard runs them one after another, so the largest."""
    made = build_components(config, backend, "cpu").values()
    wants_gpu = config.runtime.device == "cuda" or (config.runtime.device == "auto" and cuda_available())
    gpus = max(c.num_gpus for c in made) if wants_gpu else 0.0
    request: dict[str, float] = {"num_cpus": max(c.num_cpus for c in made), "num_gpus": gpus}
    if gpus:
        request["max_calls"] = 0  # keep the worker (and its loaded models) across shards
    return request


# -- the plan ----------------------------------------------------------------------------------------------------

def plan_shards(clips: pa.Table, shard_clips: int) -> list[list[str]]:
    ids = clips["clip_id"].to_pylist()
    return [ids[i:i + shard_clips] for i in range(0, len(ids), shard_clips)]


def load_or_save_plan(layout: AugmentLayout, shards: list[list[str]], config: AugmentConfig,
                      manifest: Path) -> list[list[str]]:
    """The plan of an earlier run into this output, reused exactly; refuses a run over other clips or with other
    making settings (use another --output)."""
    wanted = {"making_hash": config.making_hash(), "manifest": str(manifest), "shards": shards}
    if layout.plan.exists():
        saved = json.loads(layout.plan.read_text())
        if saved["making_hash"] != wanted["making_hash"]:
            raise ConfigError(f"{layout.root} holds variants made with other settings (hash {saved['making_hash']}, "
                              f"now {wanted['making_hash']}); use another --output")
        if saved["manifest"] != wanted["manifest"] or saved["shards"] != shards:
            raise ConfigError(f"{layout.root} augments another curated run or other kept clips "
                              f"({saved['manifest']}); use another --output")
        return saved["shards"]
    write_json_atomic(wanted, layout.plan)
    write_source(layout.root, manifest)
    return shards


def identity_plan(config: AugmentConfig, shards: list[list[str]]) -> list[list[str]]:
    """Identity shards: the clip shards (pool from clips), or chunks of the folder's images."""
    if config.identity.pool == "clips":
        return shards
    images = [c["source_path"] for c in identity.folder_candidates(Path(config.identity.folder).expanduser())]
    return [images[i:i + IDENTITY_IMAGES_PER_SHARD] for i in range(0, len(images), IDENTITY_IMAGES_PER_SHARD)]


# -- processing ---------------------------------------------------------------------------------------------------

def _seed(seed: int, clip_id: str, kind: str, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{clip_id}:{kind}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Augmenter:
    """One worker's view of a run: processes identity shards and variant shards, commits each atomically."""

    def __init__(self, config: AugmentConfig, output: str | Path, manifest: Path, backend: str):
        self.config, self.manifest, self.backend = config, manifest, backend
        self.layout = AugmentLayout(Path(output))
        self._provenance: dict[str, Any] | None = None

    @property
    def provenance(self) -> dict[str, Any]:
        if self._provenance is None:
            self._provenance = provenance(self.config, self.manifest)
        return self._provenance

    @property
    def components(self) -> dict[str, Component]:
        return cached_components(self.config, self.backend)

    # -- identities ----------------------------------------------------------------------------------------------
    def identities(self, shard: int, items: list) -> dict[str, Any]:
        """Embed one shard's identity candidates (kept-clip rows, or image paths) and commit them."""
        started = time.perf_counter()
        if self.config.identity.pool == "clips":
            candidates = [identity.clip_candidate(row, self.config.identity) for row in items]
        else:
            folder = Path(self.config.identity.folder).expanduser()
            wanted = set(items)
            candidates = [c for c in identity.folder_candidates(folder) if c["source_path"] in wanted]
        swapper = self.components["faceswap"]
        rows = [self._embed(candidate, swapper) for candidate in candidates]
        write_part(identities_table(rows, self.provenance), self.layout.identities, shard)
        counts = Counter(r.get("error_reason") or "ok" for r in rows)
        result = {"shard": shard, "rows": len(rows), "counts": dict(counts), "wall_s": time.perf_counter() - started}
        write_json_atomic(result, self.layout.done("identities", shard))
        return result

    def _embed(self, candidate: dict[str, Any], swapper: FaceSwapper) -> dict[str, Any]:
        if candidate["status"] != "ok":
            return candidate
        try:
            picture = identity.candidate_frame(candidate)
            embedding, score, face_px = swapper.identity(picture)
        except NoFaceError as error:
            return {**candidate, "status": "error", "error_reason": "no_face", "error": str(error)}
        except (ValueError, MediaError) as error:
            reason = getattr(error, "reason", "unreadable_image")
            return {**candidate, "status": "error", "error_reason": reason, "error": str(error)}
        row = {**candidate, "det_score": score, "face_px": face_px, "embedding": embedding.tolist()}
        if score < self.config.identity.min_det_score:
            return {**row, "status": "error", "error_reason": "face_unsure",
                    "error": f"detector score {score:.2f} < {self.config.identity.min_det_score}"}
        if face_px < self.config.identity.min_face_px:
            return {**row, "status": "error", "error_reason": "face_too_small",
                    "error": f"face {face_px:.0f} px < {self.config.identity.min_face_px:g} px"}
        return row

    def pool(self) -> identity.Pool:
        """The usable identities of the whole run (read once per worker process from the committed parts)."""
        key = (str(self.layout.root.resolve()), self.config.making_hash())
        if key not in _POOLS:
            _POOLS.clear()  # one run's pool at a time
            _POOLS[key] = identity.Pool.from_table(read_identities(self.layout.identities))
        return _POOLS[key]

    # -- variants ------------------------------------------------------------------------------------------------
    def variants(self, shard: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Make, check and commit every variant of one shard's clips."""
        started = time.perf_counter()
        before = {name: Counter(c.counters) for name, c in self.components.items()}  # the worker's, cumulative
        out: list[dict[str, Any]] = []
        for row in rows:
            for kind in KINDS:
                for index in range(self.config.variants_per_clip(kind)):
                    out.append(self._variant(row, kind, index))
        write_part(variants_table(out, self.provenance), self.layout.variants, shard)
        counters = Counter(r["status"] for r in out)
        counters.update(f"{r['kind']}_{r['status']}" for r in out)
        counters.update(f"reason_{reason}" for r in out for reason in r["reject_reasons"])
        counters["frames"] = sum(r.get("frames") or 0 for r in out)
        counters["video_s"] = sum(r.get("duration_s") or 0.0 for r in out if r.get("path"))
        for name, component in self.components.items():
            counters.update({f"{component.name}_{k}": v for k, v in (Counter(component.counters) - before[name]).items()})
        result = {"shard": shard, "clips": len(rows), "rows": len(out), "counters": dict(counters),
                  "wall_s": time.perf_counter() - started, "pid": os.getpid()}
        write_json_atomic(result, self.layout.done("variants", shard))
        return result

    def _variant(self, row: dict[str, Any], kind: str, index: int) -> dict[str, Any]:
        started = time.perf_counter()
        relpath = self.layout.video_relpath(row["clip_id"], kind, index)
        base = {
            "variant_id": variant_id(row["clip_id"], kind, index), "clip_id": row["clip_id"], "kind": kind,
            "variant_index": index, "video_id": row.get("video_id"), "dataset": row.get("dataset"),
            "speaker": identity.speaker_of(row), "source_path": row["source_path"], "start_s": row["start_s"],
            "duration_s": row["duration_s"], "seed": _seed(self.config.seed, row["clip_id"], kind, index),
            "augment_version": (FaceSwapper if kind == "faceswap" else Stylizer).version_tag_of(),
        }
        reasons: list[str] = []
        remove_stale_temporaries(self.layout.root / relpath)  # what a killed earlier attempt left half-written
        try:
            if not Path(row["source_path"]).is_file():
                raise _Failed("source_missing", f"{row['source_path']}: the clip's source file is gone")
            make = self._faceswap if kind == "faceswap" else self._stylized
            columns, reasons = make(row, base, self.layout.root / relpath)
            base.update(columns, path=str((self.layout.root / relpath).resolve()), relpath=relpath)
        except _Failed as failure:
            base.update(error=failure.message, error_reason=failure.reason)
        except MediaError as error:
            base.update(error=str(error), error_reason=error.reason)
        except Exception as error:  # a bug must not lose the shard: the variant carries it, the log shows it
            log.exception("%s variant %d of clip %s crashed", kind, index, row["clip_id"])
            base.update(error=f"{type(error).__name__}: {error}", error_reason="internal_error")
        if base.get("error_reason"):  # no file without a usable row (a check that crashed after writing)
            (self.layout.root / relpath).unlink(missing_ok=True)
        base["wall_s"] = time.perf_counter() - started
        return decided(base, reasons)

    def _frames(self, row: dict[str, Any], max_side: int | None) -> tuple[media.ProbeResult, float, Iterator]:
        probe = probe_from_row(row)
        fps = media.default_fps(probe)
        frames = media.iter_frames(row["source_path"], probe, start_s=row["start_s"], duration_s=row["duration_s"],
                                   fps=fps, max_side=max_side, timeout_s=self.config.runtime.decode_timeout_s)
        return probe, fps, media.prefetch((frame for _, frame in frames), depth=8)

    def _writer(self, row: dict[str, Any], path: Path, probe: media.ProbeResult, fps: float) -> VideoWriter:
        width, height = media.output_size(probe, self.config.video.max_side)
        audio = AudioSpan(row["source_path"], row["start_s"], row["duration_s"]) if probe.has_audio else None
        return VideoWriter(path, width=width, height=height, fps=fps, audio=audio, crf=self.config.video.crf,
                           preset=self.config.video.preset)

    def _sample_every(self, fps: float) -> int:
        return max(1, int(round(fps / self.config.checks.sample_fps)))

    def _faceswap(self, row: dict[str, Any], base: dict[str, Any], path: Path) -> tuple[dict, list[str]]:
        cfg = self.config
        swapper: FaceSwapper = self.components["faceswap"]
        # 1. follow the face on frames decoded at the detector's scale
        probe, fps, small = self._frames(row, cfg.faceswap.det_size)
        small_w, small_h = media.output_size(probe, cfg.faceswap.det_size)
        width, height = media.output_size(probe, cfg.video.max_side)
        track = swapper.track(small, fps, scale=(width / small_w, height / small_h))
        columns: dict[str, Any] = {"face_detected_frac": track.detected_frac,
                                   "face_interpolated_frames": int(track.interpolated.sum())}
        if track.detected_frac < cfg.faceswap.min_detected_frac:
            raise _Failed("no_face_detected", f"the face was detected on {100 * track.detected_frac:.0f} % of the "
                                              f"frames (< {100 * cfg.faceswap.min_detected_frac:.0f} %)")
        # 2. the source identity, from another speaker
        chosen, missing = identity.pair(self.pool(), base["speaker"], row["clip_id"], cfg.seed, base["variant_index"])
        if chosen is None:
            raise _Failed(missing, "no usable identity of another speaker in the pool" if missing == "no_other_speaker"
                          else "the identity pool holds no usable face")
        source = np.asarray(chosen["embedding"], dtype=np.float32)
        columns.update(identity_id=chosen["identity_id"], identity_speaker=chosen["speaker"],
                       identity_source=chosen["source_path"])
        # 3. swap every frame at full size, write, keep the sampled frames for the checks
        every = self._sample_every(fps)
        probe, fps, frames = self._frames(row, cfg.video.max_side)
        originals, swapped_faces, original_faces, variants_ = [], [], [], []
        unswapped = 0
        with self._writer(row, path, probe, fps) as writer:
            for k, frame in enumerate(frames):
                ok = k < len(track.kps) and track.swappable[k]
                out = swapper.swap(frame, track.kps[k], source) if ok else frame
                unswapped += not ok
                writer.write(out)
                if k % every == 0:  # kept at the landmark model's size, not the source's
                    originals.append(checks.shrink(frame))
                    variants_.append(checks.shrink(out))
                    if ok:
                        original_faces.append(swapper.aligned(frame, track.kps[k]))
                        swapped_faces.append(swapper.aligned(out, track.kps[k]))
        columns.update(fps=fps, frames=writer.frames, width=writer.width, height=writer.height,
                       has_audio=probe.has_audio, face_unswapped_frames=unswapped)
        # 4. checks
        columns.update(checks.identity_columns(swapper.embed(swapped_faces), swapper.embed(original_faces), source))
        reasons = checks.identity_reasons(columns, cfg.checks)
        if unswapped > cfg.faceswap.max_unswapped_frac * writer.frames:
            reasons.insert(0, "face_left_unswapped")
        return columns, reasons + self._motion(originals, variants_, columns)

    def _motion(self, originals: list[np.ndarray], variants_: list[np.ndarray], columns: dict) -> list[str]:
        meter: OpeningMeter = self.components["openings"]
        measured = meter.measure(originals)
        columns.update(checks.motion_columns(measured, meter.measure(variants_)))
        return checks.motion_reasons(columns, sum(m is not None for m in measured), self.config.checks)

    def _stylized(self, row: dict[str, Any], base: dict[str, Any], path: Path) -> tuple[dict, list[str]]:
        from metrics.temporal import FlickerMeter

        cfg = self.config.stylize
        stylizer = self.components["stylize"]
        if row.get("face_box") is None:
            raise _Failed("no_face_track", "the manifest row has no face box to centre the crop on")
        probe, fps, frames = self._frames(row, self.config.video.max_side)
        width, height = media.output_size(probe, self.config.video.max_side)
        x0, y0, side = square_crop(track_points(row), row["face_box"], probe.width, probe.height, cfg.crop_scale)
        scale = width / probe.width
        crop = (x0 * scale, y0 * scale, side * scale)
        prompt = cfg.prompts[_seed(self.config.seed, row["clip_id"], "prompt", base["variant_index"])
                             % len(cfg.prompts)]
        session = stylizer.clip(prompt, base["seed"] % (2**31))
        region = (int(crop[0]), int(crop[1]), int(math.ceil(crop[0] + crop[2])), int(math.ceil(crop[1] + crop[2])))
        flicker = FlickerMeter(region=region)
        every = self._sample_every(fps)
        originals, variants_ = [], []
        k = 0
        with self._writer(row, path, probe, fps) as writer:
            for batch in media.batches(frames, cfg.batch_size):
                stylized = session([cut_crop(frame, crop, cfg.resolution) for frame in batch])
                for frame, styled in zip(batch, stylized, strict=True):
                    out = paste_crop(frame, styled, crop, cfg.feather)
                    writer.write(out)
                    flicker.update(frame, out)
                    if k % every == 0:
                        originals.append(checks.shrink(frame))
                        variants_.append(checks.shrink(out))
                    k += 1
        columns = {"fps": fps, "frames": writer.frames, "width": writer.width, "height": writer.height,
                   "has_audio": probe.has_audio, "prompt": prompt, "flicker_ratio": flicker.ratio}
        reasons = []
        limit = self.config.checks.flicker_ratio_max
        if limit is not None and flicker.ratio is not None and flicker.ratio > limit:
            reasons.append("flicker_too_high")
        return columns, reasons + self._motion(originals, variants_, columns)


class _Failed(Exception):
    """A variant that cannot be made, with the reason its row carries."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message
