"""Benchmark: the CPU face stage (MediaPipe Face Landmarker on frames sampled at ``face.sample_fps``) per core,
lever by lever, on the shared 512 px clips.

Each variant decodes and scores every clip the way the face scorer does and is timed in CPU seconds (this
process, MediaPipe's threads included, plus the ffmpeg children: ``getrusage`` SELF + CHILDREN), so the figure
is "real time per core" and load from other processes matters less than it would for wall time (wall is
reported too). Variants run interleaved, ``--repeats`` times; the least CPU per variant is reported (and the
median), split into this process (MediaPipe, Python) and ffmpeg, since a lever acts on one of the two. Model
loading is outside the timing (once per worker process in the pipeline).

- ``baseline``: version 1.0 of the scorer: IMAGE running mode, ``detect()``'s Python result objects, ffmpeg's
  default decoder (frame threads, deblocking), frames at ``face.max_side``;
- one lever at a time: ``decoder_threads_1`` (``-threads 1``), ``no_loop_filter`` (``-skip_loop_filter all``),
  ``c_results`` (landmarks read from MediaPipe's C result as one array), ``video_mode`` (``detect_for_video``,
  a fresh landmarker per clip, ``num_faces`` as configured), ``video_mode_1_face`` (tracking really skips the
  detector only when ``num_faces`` faces are tracked, so 1; it cannot count faces and smooths landmarks),
  ``num_faces_1``, ``decode_256`` (decode at 256 px), ``skip_noref`` (``-skip_frame noref``: drops pictures, so
  a sampled timestamp can get an earlier picture: shown, not usable);
- ``scorer_1_1``: ``MediaPipeFaceScorer.score`` as shipped (the levers that paid, together).

Score deltas are against the baseline per clip: ``face_res_px``, ``yaw_abs_mean_deg``, ``face_present_frac``,
``multi_face_frac``.

    .venv/bin/python bench/face_stage_rtf.py [--input DIR] [--repeats 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402

from curation import media  # noqa: E402
from curation.config import load_config  # noqa: E402
from curation.scorers.base import ClipSpan  # noqa: E402
from curation.scorers.face_mediapipe import DECODER_OPTIONS, MediaPipeFaceScorer  # noqa: E402
from curation.scorers.face_track import summarise_track  # noqa: E402

SCORES = ("face_res_px", "yaw_abs_mean_deg", "face_present_frac", "multi_face_frac")
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "decoder_threads_1": {"decoder_options": {"threads": 1}},
    "no_loop_filter": {"decoder_options": {"skip_loop_filter": "all"}},
    "c_results": {"c_results": True},
    "video_mode": {"mode": "video"},
    "video_mode_1_face": {"mode": "video", "num_faces": 1},
    "num_faces_1": {"num_faces": 1},
    "decode_256": {"max_side": 256},
    "skip_noref": {"decoder_options": {"skip_frame": "noref"}},
    "scorer_1_1": {"scorer": True},
}


def _cpu() -> tuple[float, float]:
    """(this process, its waited-for children: ffmpeg) CPU seconds."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _video_detect(scorer: MediaPipeFaceScorer, num_faces: int):
    """A ``_detect`` for the scorer's ``analyse`` that tracks with a VIDEO-mode landmarker (fresh per clip)."""
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(scorer._model_path)), running_mode=vision.RunningMode.VIDEO,
        num_faces=num_faces, min_face_detection_confidence=scorer.config.min_detection_confidence,
        output_facial_transformation_matrixes=True)
    landmarker = vision.FaceLandmarker.create_from_options(options)
    clock = {"ms": 0}

    def detect(image):
        result = landmarker.detect_for_video(image, clock["ms"])
        clock["ms"] += round(1000 / scorer.config.sample_fps)  # strictly increasing, one sample apart
        faces = [np.array([(p.x, p.y) for p in face]) for face in result.face_landmarks]
        return faces, list(result.facial_transformation_matrixes)

    return detect, landmarker


def run_clip(scorers: dict[int, MediaPipeFaceScorer], spec: dict[str, Any], clip: ClipSpan) -> dict[str, Any]:
    face = load_config().face
    num_faces = spec.get("num_faces", face.num_faces)
    scorer = scorers[num_faces]
    if spec.get("scorer"):
        return scorer.score(clip, {})
    saved, landmarker = scorer._c_results, None
    if not spec.get("c_results"):
        scorer._c_results = None  # detect()'s Python objects, as 1.0
    if spec.get("mode") == "video":
        scorer._detect, landmarker = _video_detect(scorer, num_faces)
    try:
        frames = media.iter_frames(clip.path, clip.probe, start_s=clip.start_s, duration_s=clip.duration_s,
                                   fps=face.sample_fps, max_side=spec.get("max_side", face.max_side),
                                   decoder_options=spec.get("decoder_options"))
        width, height = clip.probe.width, clip.probe.height
        return summarise_track([scorer.analyse(t, rgb, width, height)[0] for t, rgb in frames])
    finally:
        scorer._c_results = saved
        scorer.__dict__.pop("_detect", None)
        if landmarker is not None:
            landmarker.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(os.environ.get("MEGACTOR_ASSETS", Path(__file__).resolve().parents[2] / "shared")) / "videos"
    parser.add_argument("--input", default=str(default))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    clips = []
    for path in sorted(Path(args.input).iterdir()):
        try:
            probe = media.probe(path)
        except Exception:  # noqa: BLE001 - not a video
            continue
        if probe.has_video and max(probe.width or 0, probe.height or 0) == 512:
            clips.append(ClipSpan(str(path), 0.0, probe.duration_s, probe))
    video_s = sum(c.duration_s for c in clips)

    face = load_config().face
    scorers = {}
    for num_faces in (face.num_faces, 1):
        scorers[num_faces] = MediaPipeFaceScorer(face.model_copy(update={"num_faces": num_faces}))
        scorers[num_faces].ensure_setup()
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu_python: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu_ffmpeg: dict[str, list[float]] = {name: [] for name in VARIANTS}
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    rows: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeats):
        for name, spec in VARIANTS.items():
            cpu_0, wall_0 = _cpu(), time.perf_counter()
            results = [run_clip(scorers, spec, clip) for clip in clips]
            cpu_1 = _cpu()
            cpu_python[name].append(cpu_1[0] - cpu_0[0])
            cpu_ffmpeg[name].append(cpu_1[1] - cpu_0[1])
            cpu[name].append(cpu_python[name][-1] + cpu_ffmpeg[name][-1])
            wall[name].append(time.perf_counter() - wall_0)
            rows.setdefault(name, results)

    def delta(name: str) -> dict[str, dict[str, float | None]]:
        out = {}
        for clip, row, base in zip(clips, rows[name], rows["baseline"], strict=True):
            out[Path(clip.path).name] = {k: None if row.get(k) is None or base.get(k) is None
                                         else round(row[k] - base[k], 4) for k in SCORES}
        return out

    base_cpu = min(cpu["baseline"])
    variants = {}
    for name in VARIANTS:
        deltas = delta(name)
        variants[name] = {
            "cpu_s": round(min(cpu[name]), 3), "cpu_s_all": [round(v, 3) for v in cpu[name]],
            "cpu_s_median": round(float(np.median(cpu[name])), 3),
            "python_cpu_s": round(min(cpu_python[name]), 3), "ffmpeg_cpu_s": round(min(cpu_ffmpeg[name]), 3),
            "wall_s": round(min(wall[name]), 3),
            "rtf_per_core": round(video_s / min(cpu[name]), 1), "rtf_wall": round(video_s / min(wall[name]), 1),
            "cpu_vs_baseline": round(min(cpu[name]) / base_cpu, 3),
            "max_abs_delta": {k: max(abs(d[k]) for d in deltas.values() if d[k] is not None) for k in SCORES},
            "deltas": deltas,
        }
    figures = {
        "input": args.input, "clips": [Path(c.path).name for c in clips], "video_s": round(video_s, 2),
        "sample_fps": face.sample_fps, "max_side": face.max_side, "num_faces": face.num_faces,
        "scorer_decoder_options": DECODER_OPTIONS, "repeats": args.repeats, "cpu_cores": os.cpu_count(),
        "load_avg_at_end": [round(v, 2) for v in os.getloadavg()],
        "baseline_scores": {Path(c.path).name: {k: r.get(k) for k in SCORES}
                            for c, r in zip(clips, rows["baseline"], strict=True)},
        "variants": variants,
        "command": "python bench/face_stage_rtf.py " + " ".join(sys.argv[1:]),
    }
    return emit(figures, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
