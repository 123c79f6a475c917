"""Prefect-free curation stages: plan shards from the inventory and process one shard end to end
(metadata gate -> shot split -> clip gate -> scorers -> decision -> one atomic Parquet part + done marker).

Output layout::

    OUTPUT/manifest/part-NNNNN.parquet   one part per shard (read the directory with pandas/duckdb)
    OUTPUT/inventory/part-NNNNN.parquet  one row per source file
    OUTPUT/README.md, summary.json       the dataset card and run summary (beside, not inside, manifest/)
    OUTPUT/config.yaml                   the resolved configuration
    OUTPUT/_state/                       plan, done markers (resume)
"""

from __future__ import annotations

import atexit
import bisect
import functools
import hashlib
import json
import logging
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation import clips, filters, gpu_pool, manifest
from curation.config import CurationConfig
from curation.devices import cuda_available, decode_hwaccel, resolve_device
from curation.errors import ConfigError, MediaError
from curation.gpu_pool import GpuPool
from curation.io import write_json_atomic
from curation.media import ProbeResult
from curation.scorers.audio_activity import AudioActivityScorer
from curation.scorers.base import LOCAL_RUNNER, ClipSpan, Scorer
from curation.scorers.face_dwpose import DWPoseFaceScorer
from curation.scorers.face_mediapipe import MediaPipeFaceScorer
from curation.scorers.sync_syncnet import SyncNetScorer
from curation.sources import make_source

log = logging.getLogger(__name__)

GATE_VERSION = "metadata_gate@1.0"
PROBE_FIELDS = tuple(ProbeResult.__dataclass_fields__)


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory"

    @property
    def state(self) -> Path:
        return self.root / "_state"

    def shard_done(self, shard: int) -> Path:
        return self.state / "shards" / f"shard-{shard:05d}.json"

    def inventory_done(self, batch: int) -> Path:
        return self.state / "inventory" / f"batch-{batch:05d}.json"

    @property
    def plan(self) -> Path:
        return self.state / "plan.json"


# -- provenance ----------------------------------------------------------------------------------------------

@functools.cache
def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("megactor-pipeline")
    except PackageNotFoundError:
        base = "0+unknown"
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{base}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return base


def build_scorers(config: CurationConfig, device: str | None = None) -> list[Scorer]:
    """The profile's scorers in cascade order, cheapest decisive measure first: audio activity (about 90x real
    time on one core), the face (resolution, presence, yaw; a few frames per second), then SyncNet (every frame
    at 25 fps, only on clips still alive). ``device``: where models run (default: resolve
    ``runtime.device`` in this process; the driver passes "cpu" because it only reads names and checksums)."""
    device = device or resolve_device(config.runtime.device)
    face = (MediaPipeFaceScorer(config.face) if config.profile == "lite"  # MediaPipe runs on the CPU
            else DWPoseFaceScorer(config.face, device=device))
    scorers: list[Scorer] = [AudioActivityScorer(config.audio), face]
    if config.sync.enabled:
        scorers.append(SyncNetScorer(config.sync, device=device))
    return scorers


@functools.cache
def _provenance(config: CurationConfig) -> dict[str, Any]:
    scorers = build_scorers(config, device="cpu")
    models = {name: sha for scorer in scorers for name, sha in scorer.models().items()}
    return {
        "schema_version": manifest.SCHEMA_VERSION,
        "code_version": code_version(),
        "config_hash": config.config_hash(),
        "scoring_hash": config.scoring_hash(),
        "profile": config.profile,
        "models": models,
        "scorers": [s.version_tag for s in scorers],
        "gate": GATE_VERSION,
    }


def provenance(config: CurationConfig) -> dict[str, Any]:
    return dict(_provenance(config))


def preflight(config: CurationConfig) -> None:
    """Fail before Ray and Prefect start: source roots exist, the profile's scorers are installed and their
    weights present (or fetchable)."""
    if not config.sources:
        raise ConfigError("nothing to curate: pass --input DIR or list sources in the config")
    for source_config in config.sources:
        make_source(source_config.kind, source_config.root, source_config.dataset,
                    follow_symlinks_outside_root=source_config.follow_symlinks_outside_root)
    for scorer in build_scorers(config, device="cpu"):
        scorer.check_requirements()
        scorer.check_weights()
    if config.runtime.device == "cuda" and not config.runtime.ray_address:
        resolve_device("cuda")  # a local run: fail now if there is no GPU (a cluster's workers check their own)


# -- planning ------------------------------------------------------------------------------------------------

def plan_shards(inventory_rows: Sequence[dict[str, Any]], *, shard_hours: float, max_files: int) -> list[list[str]]:
    """Deterministic shards of source paths, each about ``shard_hours`` of footage and at most ``max_files``
    files, in the inventory's (dataset, relpath) order. Unprobeable files go with their neighbours."""
    ordered = sorted(inventory_rows, key=lambda r: (r["dataset"], r["source_relpath"] or "", r["source_path"]))
    shards: list[list[str]] = []
    current: list[str] = []
    seconds = 0.0
    for row in ordered:
        current.append(row["source_path"])
        seconds += row.get("duration_s") or 0.0
        if seconds >= shard_hours * 3600 or len(current) >= max_files:
            shards.append(current)
            current, seconds = [], 0.0
    if current:
        shards.append(current)
    return shards


def load_or_save_plan(layout: OutputLayout, shards: list[list[str]], config: CurationConfig) -> list[list[str]]:
    """The plan of an earlier run into this output, if any (so a resume reuses it exactly); refuses to mix
    runs over different inputs or scoring settings into one manifest."""
    wanted = {"scoring_hash": config.scoring_hash(), "shards": shards}
    if layout.plan.exists():
        saved = json.loads(layout.plan.read_text())
        if saved["scoring_hash"] != wanted["scoring_hash"]:
            raise ConfigError(
                f"{layout.root} holds a run with different scoring settings (hash {saved['scoring_hash']}, now "
                f"{wanted['scoring_hash']}); use another --output, or `megactor filter` to change thresholds only"
            )
        if saved["shards"] != shards:
            before = {p for s in saved["shards"] for p in s}
            now = {p for s in shards for p in s}
            raise ConfigError(
                f"the input changed since {layout.root} was planned ({len(now - before)} new, "
                f"{len(before - now)} missing source files); use another --output"
            )
        return saved["shards"]
    write_json_atomic(wanted, layout.plan)
    return shards


# -- processing one shard ------------------------------------------------------------------------------------

_SCORER_CACHE: dict[tuple[str, bool], list[Scorer]] = {}


def cached_scorers(config: CurationConfig, *, pooled: bool = False) -> list[Scorer]:
    """Scorers of this worker process: models load once per process, not per shard or clip. ``pooled``: the
    model parts run in a GPU pool's actors, so these scorers load no model (and their device does not matter)."""
    key = (config.scoring_hash(), pooled)
    if key not in _SCORER_CACHE:
        if not _SCORER_CACHE:
            atexit.register(close_cached_scorers)
        _SCORER_CACHE[key] = build_scorers(config, device="cpu" if pooled else None)
    return _SCORER_CACHE[key]


def close_cached_scorers() -> None:
    """Release models before the interpreter tears down (MediaPipe's finaliser fails if left to gc)."""
    for scorers in _SCORER_CACHE.values():
        for scorer in scorers:
            scorer.close()
    _SCORER_CACHE.clear()


def _probe_from_row(row: dict[str, Any]) -> ProbeResult:
    return ProbeResult(**{name: row.get(name) for name in PROBE_FIELDS})


def _base_row(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "video_id": source["content_id"] or "",
        "dataset": source["dataset"],
        "source_path": source["source_path"],
        "source_relpath": source.get("source_relpath"),
        "origin_video_id": source.get("origin_video_id"),
        "speaker_id": source.get("speaker_id"),
        "fps": source.get("fps_avg"),
        "fps_nominal": source.get("fps_nominal"),
        "vfr": source.get("vfr"),
        "width": source.get("width"),
        "height": source.get("height"),
        "rotation": source.get("rotation"),
        "video_codec": source.get("video_codec"),
        "has_video": source.get("has_video"),
        "has_audio": source.get("has_audio"),
        "audio_codec": source.get("audio_codec"),
        "audio_sample_rate": source.get("audio_sample_rate"),
        "source_duration_s": source.get("duration_s"),
        "source_size_bytes": source.get("size_bytes"),
        "gate_version": GATE_VERSION,
    }


def _span_row(base: dict[str, Any], start: float, end: float, clip_index: int, scene_index: int | None) -> dict:
    return {**base, "clip_id": manifest.clip_id(base["video_id"] or base["source_path"], start, end),
            "start_s": start, "end_s": end, "duration_s": end - start, "clip_index": clip_index,
            "scene_index": scene_index}


class ShardProcessor:
    """``pool``: a ``curation.gpu_pool.GpuPool`` that runs the GPU scorers' model parts (None: in-process)."""

    def __init__(self, config: CurationConfig, output: str | Path, pool: GpuPool | None = None):
        self.config = config
        self.layout = OutputLayout(Path(output))
        self.thresholds = config.thresholds
        self.score_all = config.runtime.score_all
        self.pool = pool

    def _scorers(self) -> list[Scorer]:
        scorers = cached_scorers(self.config, pooled=self.pool is not None)
        hwaccel = decode_hwaccel(self.config.runtime.hwaccel)
        for scorer in scorers:
            if scorer.has_model_part:
                scorer.model_runner = self.pool if self.pool is not None else LOCAL_RUNNER
                scorer.decode_options = {"hwaccel": hwaccel} if hwaccel else {}
        return scorers

    def process(self, shard: int, sources: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Score one shard and commit it (part file, then done marker). Returns the shard's counters."""
        started = time.perf_counter()
        scorers = self._scorers()
        before = {s.name: Counter(s.counters) for s in scorers}
        counters: Counter[str] = Counter()
        rows: list[dict[str, Any]] = []
        for source in sources:
            rows.extend(self._source(source, scorers, counters))
        rows = [manifest.apply_decision(row, self.thresholds) for row in rows]
        table = manifest.to_table(rows, provenance(self.config))
        manifest.write_part(table, self.layout.manifest, shard)
        scorer_counters = {s.name: dict(Counter(s.counters) - before[s.name]) for s in scorers}
        counters["clips"] = len(rows)
        result = {"shard": shard, "rows": len(rows), "wall_s": time.perf_counter() - started,
                  "counters": dict(counters), "scorers": scorer_counters, "pid": os.getpid()}
        write_json_atomic(result, self.layout.shard_done(shard))
        return result

    def _frames_decoded(self, scorers: list[Scorer], counters: Counter) -> int:
        return counters["scene_frames_decoded"] + sum(s.counters["frames_decoded"] for s in scorers)

    def _source(self, source: dict[str, Any], scorers: list[Scorer], counters: Counter) -> list[dict[str, Any]]:
        counters["sources"] += 1
        base = _base_row(source)
        duration = source.get("duration_s") or 0.0
        if source.get("probe_status") != "ok":
            counters["sources_probe_error"] += 1
            return [{**_span_row(base, 0.0, duration, 0, None), "error": source.get("probe_error"),
                     "error_reason": source.get("probe_error_reason") or "probe_failed"}]
        rejected = filters.gate_reasons(base, self.thresholds, clip_level=False)
        frames_before = self._frames_decoded(scorers, counters)
        if rejected and not self.score_all:
            counters["sources_gate_rejected"] += 1
            counters["video_s_gate_rejected"] += duration
            rows = [{**_span_row(base, 0.0, duration, 0, None), "cascade_stop": "metadata_gate"}]
        else:
            rows = self._split_and_score(source, base, scorers, counters)
        # measured, not assumed: what decoding each kind of source actually cost
        decoded = self._frames_decoded(scorers, counters) - frames_before
        counters["frames_decoded_gate_rejected_sources" if rejected else "frames_decoded_gate_passed_sources"] += decoded
        return rows

    def _split_and_score(self, source, base, scorers, counters) -> list[dict[str, Any]]:
        probe = _probe_from_row(source)
        path = source["source_path"]
        duration = probe.duration_s or 0.0
        try:
            scenes = clips.detect_cuts(path, probe, max_side=self.config.clips.scene_max_side,
                                       threshold=self.config.clips.scene_threshold,
                                       hwaccel=decode_hwaccel(self.config.runtime.hwaccel))
        except MediaError as error:
            counters["sources_decode_error"] += 1
            return [{**_span_row(base, 0.0, duration, 0, None), "error": str(error), "error_reason": error.reason}]
        counters["scene_frames_decoded"] += scenes.frames_decoded
        spans = clips.split_spans(duration, scenes.cuts_s, min_clip_s=self.thresholds.clip_s_min,
                                  max_clip_s=self.config.clips.max_clip_s)
        if not spans:  # no duration in the container: account for the source rather than drop it
            counters["sources_decode_error"] += 1
            return [{**_span_row(base, 0.0, 0.0, 0, None), "error": f"{path}: the probe reports no duration",
                     "error_reason": "unknown_duration"}]
        base = {**base, "scene_detector": scenes.detector, "scene_version": scenes.detector}
        rows = []
        for clip_index, span in enumerate(spans):
            scene_index = bisect.bisect_right(scenes.cuts_s, span.start_s + 1e-6)  # cuts before the span
            row = _span_row(base, span.start_s, span.end_s, clip_index, scene_index)
            if filters.gate_reasons(row, self.thresholds, clip_level=True) and not self.score_all:
                counters["clips_gate_rejected"] += 1
                row["cascade_stop"] = "metadata_gate"
            else:
                self._score(row, ClipSpan(path, span.start_s, span.end_s, probe), scorers, counters)
            rows.append(row)
        return rows

    def _score(self, row: dict[str, Any], clip: ClipSpan, scorers: list[Scorer], counters: Counter) -> None:
        """Run the scorers in cascade order; unless scoring everything, stop at the first stage after which the
        clip is already rejected (or failed), so later, dearer stages only see clips still alive."""
        counters["clips_scored"] += 1
        counters["video_s_scored"] += clip.duration_s
        for scorer in scorers:
            columns, reason, message = scorer.run(clip, row)
            row.update(columns)
            row[scorer.version_column] = scorer.version_tag
            if message and not row.get("error"):
                row["error"], row["error_reason"] = message, reason
            if self.score_all or scorer is scorers[-1]:
                continue
            if row.get("error") or filters.decide(row, self.thresholds).reject_reasons:
                row["cascade_stop"] = scorer.name
                counters[f"clips_stopped_after_{scorer.name}"] += 1
                counters[f"video_s_stopped_after_{scorer.name}"] += clip.duration_s
                return


def listing_digest(paths: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]


def ray_resources(config: CurationConfig, pool: GpuPool | None = None) -> dict[str, float]:
    """Per-shard resource request, from the scorer classes (the runner, not the scorers, talks to Ray). A shard
    runs its scorers one after another, so it asks for the largest request, not the sum; a GPU fraction lets
    that many shards share one GPU, which bounds the GPU's concurrent consumers while their CPU decoding
    overlaps. GPUs are requested when ``runtime.device`` is "cuda", or "auto" and this machine has one (a
    cluster whose head has no GPU needs ``device: cuda``). With a GPU ``pool`` the models run in its actors: a
    shard asks for the GPUs of its other scorers only, plus ``gpu_pool.shard_num_gpus`` (to see one for NVDEC)."""
    scorers = build_scorers(config, device="cpu")
    wants_gpu = config.runtime.device == "cuda" or (config.runtime.device == "auto" and cuda_available())
    gpus = max(s.num_gpus for s in scorers) if wants_gpu else 0.0
    if pool is not None:
        local = [s.num_gpus for s in scorers if s.name not in pool.names]
        gpus = max([*local, 0.0]) if wants_gpu else 0.0
        gpus = max(gpus, config.runtime.gpu_pool.shard_num_gpus)
    request: dict[str, float] = {"num_cpus": max(s.num_cpus for s in scorers), "num_gpus": gpus}
    if gpus:
        # Ray ends a GPU task's worker after one call by default (to free the GPU); ours keep their models
        # loaded across shards instead: 0 = no limit.
        request["max_calls"] = 0
    return request


def start_gpu_pool(config: CurationConfig) -> GpuPool | None:
    """The run's GPU pool (``runtime.gpu_pool``), or None: call where Ray is initialised, pass the pool to
    :class:`ShardProcessor` and :func:`ray_resources`, ``shutdown()`` it at the end."""
    return gpu_pool.start(config, lambda device: build_scorers(config, device=device))
