"""The evaluation flow: split a curated manifest by identity (9:1), cut the test clips' ground truth, generate
them self-driven (reconstruction) in the A, V and A+V modes, score every method with FID, FVD, LPIPS, Sync-C,
Sync-D and identity similarity, and write the paper's Table 3/4 layout (JSON and Markdown) with the protocol
beside the numbers. Folders of videos made by other methods (``{clip_id}.mp4``) are scored against the same
ground truth.

Layout of an evaluation run::

    split.parquet        clip_id, identity, split (train/test) for every kept clip of the manifest
    real/{clip_id}.mp4   the ground truth: the clip's face crop at the model's resolution, with its audio
    {mode}/{clip_id}.mp4 generated (audio, visual, mixed)
    results.json, results.md

Flows only compose: generation is ``inference.pipeline``, the crops ``curation.crops``, the metric math and
networks ``metrics``; the composition that reads files, finds faces and feeds the networks is here, at the top,
because it needs all of them. Generation fans out over Ray, one task per clip and mode; a clip already generated
is not generated again (a rerun resumes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from tqdm import tqdm

from curation import media, weights
from curation.augment.config import FaceSwapConfig
from curation.config import SyncConfig
from curation.crops import box_masks, decode_crops, probe_from_row, square_crop, track_points
from curation.encode import AudioSpan
from curation.errors import MegactorError
from curation.io import write_text_atomic
from flows.evaluation_config import EVAL_WEIGHTS, EvalConfig, preflight

__all__ = ["EVAL_WEIGHTS", "EvalConfig", "evaluate", "markdown_table", "preflight", "run_evaluation"]

MODE_LABELS = {"audio": "A", "visual": "V", "mixed": "A+V"}
# Table 3/4 columns: the paper's five, then identity similarity; the arrow says which way is better
COLUMNS = (("FID", "fid", "↓"), ("FVD", "fvd", "↓"), ("LPIPS", "lpips", "↓"), ("Sync-C", "sync_c", "↑"),
           ("Sync-D", "sync_d", "↓"), ("CSIM", "csim", "↑"))


# -- the ground truth -------------------------------------------------------------------------------------------

def clip_frames(row: dict[str, Any], config: EvalConfig) -> int:
    usable = math.floor(float(row["duration_s"]) * config.fps + 1e-6) - 1
    return max(1, min(usable, round(config.seconds * config.fps)))


def clip_geometry(row: dict[str, Any], config: EvalConfig):
    """The clip's probe, stored face track and square crop, as training computes them."""
    probe = probe_from_row(row)
    track = track_points(row)
    return probe, track, square_crop(track, row["face_box"], probe.width, probe.height, config.crop_scale)


def real_clip(row: dict[str, Any], config: EvalConfig, resolution: int):
    """The test clip's crops (as training cuts them), eye/mouth masks, and its audio span."""
    probe, track, crop = clip_geometry(row, config)
    frames = clip_frames(row, config)
    times = row["start_s"] + np.arange(frames) / config.fps
    crops = decode_crops(row["source_path"], probe, row["start_s"], frames, config.fps, crop, resolution)
    eyes = box_masks(track, "eyes_box", times, crop, resolution, config.mask_dilation)
    mouth = box_masks(track, "mouth_box", times, crop, resolution, config.mask_dilation)
    audio = AudioSpan(row["source_path"], float(row["start_s"]), frames / config.fps) if row.get("has_audio") \
        else None
    return crops, eyes, mouth, audio


@task(name="evaluate-real", cache_policy=NO_CACHE)
def write_real(rows: list[dict[str, Any]], config: EvalConfig, output: str, resolution: int) -> list[str]:
    from inference.pipeline import write_video

    written = []
    for row in rows:
        path = Path(output) / "real" / f"{row['clip_id']}.mp4"
        if not path.is_file():
            crops, _, _, audio = real_clip(row, config, resolution)
            write_video(path, crops, config.fps, audio)
        written.append(str(path))
    return written


# -- generation -------------------------------------------------------------------------------------------------

@task(name="evaluate-generate", cache_policy=NO_CACHE)
def generate(row: dict[str, Any], mode: str, checkpoint: str, config: EvalConfig, output: str) -> dict[str, Any]:
    """Self-driven reconstruction: the clip's first frame is the reference, its own frames drive, its audio
    speaks; the crop is the clip's, so nothing is aligned."""
    from curation.devices import resolve_device
    from flows.animate import pipeline_for
    from inference.driving import Driving, Reference

    path = Path(output) / mode / f"{row['clip_id']}.mp4"
    if path.is_file():
        return {"clip_id": row["clip_id"], "mode": mode, "status": "skipped"}
    pipeline = pipeline_for(checkpoint, resolve_device(config.device), config.scheduler)
    crops, eyes, mouth, audio = real_clip(row, config, pipeline.resolution)
    if audio is None and mode != "visual":
        return {"clip_id": row["clip_id"], "mode": mode, "status": "error", "error": "the clip has no audio"}
    driving = Driving(crops, eyes, mouth, None)
    try:
        animation = pipeline(Reference(crops[0], None), driving if mode != "audio" else None, audio, mode=mode,
                             steps=config.steps, guidance=config.guidance, seed=config.seed, align=False,
                             output=path)
    except MegactorError as error:
        return {"clip_id": row["clip_id"], "mode": mode, "status": "error", "error": str(error)}
    return {"clip_id": row["clip_id"], "mode": mode, "status": "ok", "frames": len(animation.frames),
            "seconds_per_frame": animation.seconds_per_frame}


# -- scoring ----------------------------------------------------------------------------------------------------

class Scorers:
    """The metric networks, each loaded from its registry entry (or the file the config names), with sha256s."""

    def __init__(self, config: EvalConfig, device: str):
        self.config, self.device = config, device
        self.sha256: dict[str, str] = {}
        self._nets: dict[str, Any] = {}

    def path(self, name: str) -> Path:
        local = self.config.weights.get(name)
        path = weights.resolve_or_local(name, local)
        self.sha256[name] = weights.model_sha256(name, local)
        return path

    def net(self, kind: str):
        if kind not in self._nets:
            self._nets[kind] = self._load(kind)
        return self._nets[kind]

    def _load(self, kind: str):
        if kind == "fid":
            from metrics.fid import FIDInceptionV3

            return FIDInceptionV3.from_file(self.path("pt_inception")).to(self.device).eval()
        if kind == "fvd":
            from metrics.fvd import InceptionI3d

            return InceptionI3d.from_file(self.path("i3d_400"), device=self.device).eval()
        if kind == "lpips":
            from metrics.lpips import LPIPS

            return LPIPS.from_files(self.path("alexnet"), self.path("lpips_alex_v0.1")).to(self.device).eval()
        if kind == "sync":
            from curation.scorers.sync_syncnet import SyncNetScorer

            scorer = SyncNetScorer(SyncConfig(weights=self.path("syncnet_v2")), device=self.device)
            scorer.ensure_setup()
            return scorer
        if kind == "csim":
            from curation.augment.faceswap import FaceIdentity

            detector = self.config.face_detector
            face = FaceSwapConfig(detector=detector, detector_weights=self.config.weights.get(detector),
                                  embedder_weights=self.config.weights.get("w600k_r50"))
            self.path(detector)
            self.path("w600k_r50")
            return FaceIdentity(face, device=self.device)
        raise ValueError(kind)


def read_video(path: Path, resolution: int, frames: int | None = None) -> np.ndarray:
    """(F, R, R, 3) uint8 at 25 fps, resized to the ground truth's size."""
    import cv2

    probe = media.probe(path)
    out = []
    for _, rgb in media.iter_frames(path, probe, fps=25.0):
        if frames is not None and len(out) == frames:
            break
        out.append(rgb if rgb.shape[:2] == (resolution, resolution)
                   else cv2.resize(rgb, (resolution, resolution), interpolation=cv2.INTER_AREA))
    return np.stack(out) if out else np.zeros((0, resolution, resolution, 3), np.uint8)


@torch.no_grad()
def _fid_features(net, frames: np.ndarray, batch: int, device: str) -> np.ndarray:
    out = [net(torch.from_numpy(frames[i:i + batch]).permute(0, 3, 1, 2).float().div(255).to(device)).double().cpu()
           for i in range(0, len(frames), batch)]
    return torch.cat(out).numpy()


def _track_in_crop(track: list[dict[str, Any]], crop: tuple[float, float, float], resolution: int,
                   start_s: float) -> list[dict[str, Any]]:
    """The clip's stored face track in the crop's pixels and the clip's time: where the face is in a faithful
    reconstruction, for frames on which the face backend finds none."""
    left, top, side = crop
    scale = resolution / side

    def move(box):
        return None if box is None else [(box[0] - left) * scale, (box[1] - top) * scale,
                                         (box[2] - left) * scale, (box[3] - top) * scale]

    return [{**p, "t": p["t"] - start_s, "box": move(p.get("box")), "eyes_box": move(p.get("eyes_box")),
             "mouth_box": move(p.get("mouth_box"))} for p in track]


@task(name="evaluate-score", cache_policy=NO_CACHE)
def score_method(label: str, folder: str, rows: list[dict[str, Any]], config: EvalConfig, output: str,
                 resolution: int) -> dict[str, Any]:
    """Every metric for one method's videos against the ground truth; clips the method lacks are counted."""
    from curation.devices import resolve_device
    from curation.scorers.base import ClipSpan
    from inference.driving import FaceAnalyzer
    from metrics.fid import fid_from_features
    from metrics.fvd import FRAMES, fvd_from_features, i3d_features

    device = resolve_device(config.device)
    scorers = Scorers(config, device)
    real_fid, fake_fid, real_fvd, fake_fvd, lpips, sync_c, sync_d, csim = [], [], [], [], [], [], [], []
    counts = {"clips": 0, "missing": 0, "frames": 0, "sync_face_fallback_frames": 0, "csim_fallback_frames": 0,
              "sync_errors": 0}
    analyzer = FaceAnalyzer() if "sync" in config.metrics else None
    for row in tqdm(rows, desc=f"score {label}", unit="clip"):
        fake_path = Path(folder) / f"{row['clip_id']}.mp4"
        if not fake_path.is_file():
            counts["missing"] += 1
            continue
        real = read_video(Path(output) / "real" / f"{row['clip_id']}.mp4", resolution)
        fake = read_video(fake_path, resolution, len(real))
        n = min(len(real), len(fake))
        real, fake = real[:n], fake[:n]
        counts["clips"] += 1
        counts["frames"] += n
        if "fid" in config.metrics:
            real_fid.append(_fid_features(scorers.net("fid"), real, config.batch_size, device))
            fake_fid.append(_fid_features(scorers.net("fid"), fake, config.batch_size, device))
        if "fvd" in config.metrics:
            for start in range(0, n - FRAMES + 1, FRAMES):  # non-overlapping 16-frame windows
                real_fvd.append(i3d_features(scorers.net("fvd"), real[None, start:start + FRAMES], device=device))
                fake_fvd.append(i3d_features(scorers.net("fvd"), fake[None, start:start + FRAMES], device=device))
        if "lpips" in config.metrics:
            with torch.no_grad():
                for i in range(0, n, config.batch_size):
                    a = torch.from_numpy(real[i:i + config.batch_size]).permute(0, 3, 1, 2).float().div(255)
                    b = torch.from_numpy(fake[i:i + config.batch_size]).permute(0, 3, 1, 2).float().div(255)
                    lpips.extend(scorers.net("lpips").forward_unit(a.to(device), b.to(device)).cpu().tolist())
        if "sync" in config.metrics:
            _, track, crop = clip_geometry(row, config)
            in_crop = _track_in_crop(track, crop, resolution, row["start_s"])
            scores = _sync(scorers.net("sync"), analyzer, fake_path, in_crop, counts, ClipSpan)
            if scores is not None:
                sync_c.append(scores["sync_c"])
                sync_d.append(scores["sync_d"])
        if "csim" in config.metrics:
            value = _csim(scorers.net("csim"), real, fake, config.csim_every, counts)
            if value is not None:
                csim.append(value)
    if analyzer is not None:
        analyzer.close()
    result: dict[str, Any] = {"method": label, "folder": folder, **counts}
    if real_fid and counts["frames"] >= 2:
        result["fid"] = fid_from_features(np.concatenate(real_fid), np.concatenate(fake_fid))
    if len(real_fvd) >= 2:
        result["fvd"] = fvd_from_features(np.concatenate(real_fvd), np.concatenate(fake_fvd),
                                          weights_sha256=scorers.sha256.get("i3d_400")).fvd
        result["fvd_clips"] = len(real_fvd)
    for key, values in (("lpips", lpips), ("sync_c", sync_c), ("sync_d", sync_d), ("csim", csim)):
        if values:
            result[key] = float(np.mean(values))
    result["weights_sha256"] = scorers.sha256
    return result


def _sync(scorer, analyzer, path: Path, real_track: list[dict[str, Any]], counts: dict[str, int], span_type):
    """Sync-C/D of a generated clip with the reference's crop geometry, on the face the backend finds in it;
    frames where it finds none take the ground truth's box (same crop, same pose in a reconstruction)."""
    video = analyzer.video(path, 25.0)
    track = []
    for point in video.track:
        if point["box"] is None:
            nearest = min(real_track, key=lambda p: abs(p["t"] - point["t"]))
            point = {**point, "box": nearest["box"]}
            counts["sync_face_fallback_frames"] += 1
        track.append(point)
    try:
        return scorer.score(span_type(str(path), 0.0, video.probe.duration_s or len(track) / 25.0, video.probe),
                            {"face_track": track})
    except MegactorError:
        counts["sync_errors"] += 1
        return None


def _csim(identity, real: np.ndarray, fake: np.ndarray, every: int, counts: dict[str, int]) -> float | None:
    """ArcFace cosine between the reference (the clip's first frame) and every ``every``-th generated frame; a
    generated frame without a detected face is aligned with the ground truth frame's keypoints."""
    def keypoints(rgb):
        boxes, kps = identity.detect(rgb)
        if len(boxes) == 0:
            return None
        return kps[int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))]

    reference = keypoints(real[0])
    if reference is None:
        return None
    ref = identity.embed([identity.aligned(real[0], reference)])[0]
    faces = []
    for i in range(0, len(fake), every):
        kps = keypoints(fake[i])
        if kps is None:
            kps = keypoints(real[i])
            counts["csim_fallback_frames"] += 1
        if kps is not None:
            faces.append(identity.aligned(fake[i], kps))
    if not faces:
        return None
    return float(np.mean(identity.embed(faces) @ ref))


# -- the table --------------------------------------------------------------------------------------------------

def markdown_table(results: list[dict[str, Any]], protocol: dict[str, Any]) -> str:
    header = "| Method | " + " | ".join(f"{name} {arrow}" for name, _, arrow in COLUMNS) + " | clips |"
    lines = [header, "|---" * (len(COLUMNS) + 2) + "|"]
    for row in results:
        cells = [_cell(row.get(key), key) for _, key, _ in COLUMNS]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {row.get('clips', 0)} |")
    notes = [f"- {key}: {value}" for key, value in protocol.items() if not isinstance(value, dict)]
    notes += [f"- {key}: " + ", ".join(f"{k}={v}" for k, v in value.items()) for key, value in protocol.items()
              if isinstance(value, dict)]
    return "\n".join(["# Evaluation", "", *lines, "", "## Protocol", "", *notes, ""])


def _cell(value: Any, key: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if key in ("lpips", "csim") else f"{value:.3f}"


@flow(name="megactor-evaluate")
def evaluate(manifest: str, output: str, config: EvalConfig, checkpoint: str | None = None,
             videos: dict[str, str] | None = None) -> dict[str, Any]:
    from curation.splits import split_manifest, write_split
    from metrics.fvd import PROTOCOL as FVD_PROTOCOL

    logger = get_run_logger()
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)

    # 1. the split, by identity, recorded
    table, split = split_manifest(manifest, test_fraction=config.test_fraction, seed=config.seed)
    write_split(split, root)
    test_ids = {c for c, s in zip(split["clip_id"].to_pylist(), split["split"].to_pylist(), strict=True)
                if s == "test"}
    rows = sorted((r for r in table.to_pylist() if r["clip_id"] in test_ids), key=lambda r: r["clip_id"])
    rows = rows[: config.max_clips] if config.max_clips else rows
    identities = len(set(split["identity"].to_pylist()))
    logger.info("%d kept clips of %d identities; %d test clips (%d evaluated)", table.num_rows, identities,
                len(test_ids), len(rows))
    resolution, info = config.resolution, {}
    if checkpoint is not None:
        from training.export import read_export

        folder, meta = read_export(checkpoint)
        resolution, checkpoint = meta["data"]["resolution"], str(folder)
        info = {"checkpoint": str(folder), "stage": meta["stage"], "step": meta["step"],
                "weights": meta["weights"], "weights_sha256": meta["weights_sha256"]}

    # 2. the ground truth, then 3. the generated clips (one task per clip and mode)
    write_real.submit(rows, config, output, resolution).result()
    generated = []
    if checkpoint is not None:
        futures = [generate.submit(row, mode, checkpoint, config, output) for mode in config.modes for row in rows]
        for future in tqdm(as_completed(futures), total=len(futures), desc="generate", unit="clip"):
            generated.append(future.result())
    errors = [g for g in generated if g["status"] == "error"]
    for item in errors:
        logger.warning("%s (%s): %s", item["clip_id"], item["mode"], item["error"])

    # 4. every metric, per method
    methods = {MODE_LABELS[m]: str(root / m) for m in config.modes} if checkpoint is not None else {}
    methods.update(videos or {})
    futures = [score_method.submit(label, folder, rows, config, output, resolution)
               for label, folder in methods.items()]
    results = [f.result() for f in futures]

    # 5. the table, with the protocol beside it
    protocol = {
        "manifest": manifest, "test_fraction": config.test_fraction, "split_seed": config.seed,
        "identities": identities, "test_clips": len(test_ids), "clips_evaluated": len(rows),
        "frames_per_clip": round(config.seconds * config.fps), "fps": config.fps, "resolution": resolution,
        "steps": config.steps, "guidance": config.guidance, "scheduler": config.scheduler,
        "reconstruction": "self-driven: the clip's first frame is the reference, its own frames and audio drive",
        "fid": "pytorch-fid InceptionV3 (pt_inception-2015-12-05), 2048-d pool features, all frames pooled",
        "fvd": f"{FVD_PROTOCOL.port}; {FVD_PROTOCOL.frames} frames at {FVD_PROTOCOL.resolution} px "
               f"({FVD_PROTOCOL.resize}); non-overlapping windows",
        "lpips": "AlexNet + lpips v0.1 linear layers, per frame, mean",
        "sync": "SyncNet reference computation (syncnet_v2), reference crop geometry on the face the lite "
                "backend finds, per clip, mean",
        "csim": f"ArcFace w600k_r50 cosine, reference (first frame) vs every {config.csim_every}th frame, mean",
        **info,
        "weights_sha256": {k: v for r in results for k, v in r.get("weights_sha256", {}).items()},
    }
    summary = {"results": [{k: v for k, v in r.items() if k != "weights_sha256"} for r in results],
               "protocol": protocol, "generation_errors": errors,
               "config": json.loads(config.model_dump_json())}
    write_text_atomic(json.dumps(summary, indent=2, default=str) + "\n", root / "results.json")
    markdown = markdown_table(summary["results"], protocol)
    write_text_atomic(markdown, root / "results.md")
    create_markdown_artifact(key="evaluation", markdown=markdown, description=f"evaluation of {output}")
    return summary


def run_evaluation(manifest: str | Path, output: str | Path, config: EvalConfig, *, checkpoint: str | None = None,
                   videos: dict[str, str] | None = None, ray_address: str | None = None,
                   executor: str = "ray") -> dict[str, Any]:
    from flows.curate import ray_task_runner

    preflight(manifest, config, checkpoint, videos)
    runner = ray_task_runner(ray_address, executor=executor)
    flow_fn = evaluate.with_options(task_runner=runner)
    from curation.augment.pipeline import manifest_dir

    return flow_fn(str(manifest_dir(manifest)), str(Path(output).resolve()), config,
                   None if checkpoint is None else str(Path(checkpoint).resolve()),
                   {k: str(Path(v).resolve()) for k, v in (videos or {}).items()})

