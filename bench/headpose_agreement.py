"""Agreement of the paper backend's head pose (ten iBUG-68 landmarks + solvePnP, ``curation.headpose``) with the
lite backend's (MediaPipe's facial transformation matrix), on the same faces.

Both poses come from one MediaPipe Face Landmarker pass per sampled frame, so the comparison isolates the pose
method from the landmark detector: the 68-point pose is computed from the MediaPipe landmarks that correspond
to the iBUG points ``curation.headpose`` uses:

    iBUG 30 nose tip           -> MediaPipe 1
    iBUG 8  chin               -> MediaPipe 152
    iBUG 36 outer eye corner   -> MediaPipe 33   (image left, the subject's right eye)
    iBUG 39 inner eye corner   -> MediaPipe 133  (image left)
    iBUG 42 inner eye corner   -> MediaPipe 362  (image right)
    iBUG 45 outer eye corner   -> MediaPipe 263  (image right)
    iBUG 31 nostril            -> MediaPipe 98   (image left)
    iBUG 35 nostril            -> MediaPipe 327  (image right)
    iBUG 48 mouth corner       -> MediaPipe 61   (image left)
    iBUG 54 mouth corner       -> MediaPipe 291  (image right)

Reports per clip and overall (all frames pooled): frames with a face, the mean absolute yaw/pitch/roll
difference (68-point minus MediaPipe), the mean signed difference (a bias) and the correlation of yaw.
Measured on the shared clips (5 fps, 640 px, 776 frames): yaw 2.2 deg mean absolute difference (r = 0.92),
pitch 5.1 (a -3.1 bias: the two generic faces differ in how they tilt), roll 0.5.

    MEGACTOR_WEIGHTS_DIR=/work/shared/weights MEGACTOR_ASSETS=/work/shared \\
        .venv/bin/python bench/headpose_agreement.py [--fps 5] [--max-side 640] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation import media, weights  # noqa: E402
from curation.headpose import POSE_INDICES, euler_from_rotation, head_pose  # noqa: E402

IBUG_FROM_MEDIAPIPE = {30: 1, 8: 152, 36: 33, 39: 133, 42: 362, 45: 263, 31: 98, 35: 327, 48: 61, 54: 291}
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def landmarker():
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(weights.resolve("face_landmarker"))),
        running_mode=vision.RunningMode.IMAGE,
        num_faces=1,
        output_facial_transformation_matrixes=True,
    )
    return vision.FaceLandmarker.create_from_options(options)


def clip_poses(path: Path, model, fps: float, max_side: int) -> np.ndarray:
    """(frames, 2, 3): per frame with a face, [68-point (yaw, pitch, roll), MediaPipe's]."""
    import mediapipe as mp

    probe = media.probe(path)
    rows = []
    for _, rgb in media.iter_frames(path, probe, fps=fps, max_side=max_side):
        result = model.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
        if not result.face_landmarks:
            continue
        height, width = rgb.shape[:2]
        face = result.face_landmarks[0]
        landmarks = np.full((68, 2), np.nan)
        for ibug, index in IBUG_FROM_MEDIAPIPE.items():
            landmarks[ibug] = (face[index].x * width, face[index].y * height)
        ours = head_pose(landmarks, (width, height))
        if ours is None:
            continue
        theirs = euler_from_rotation(np.asarray(result.facial_transformation_matrixes[0])[:3, :3])
        rows.append([ours, theirs])
    return np.array(rows, dtype=np.float64).reshape(-1, 2, 3)


def agreement(poses: np.ndarray) -> dict[str, float | int | None]:
    if not len(poses):
        return {"frames": 0}
    difference = poses[:, 0] - poses[:, 1]
    yaw_ours, yaw_theirs = poses[:, 0, 0], poses[:, 1, 0]
    spread = yaw_ours.std() > 0 and yaw_theirs.std() > 0
    figures: dict[str, float | int | None] = {"frames": len(poses)}
    for i, angle in enumerate(("yaw", "pitch", "roll")):
        figures[f"{angle}_mad"] = round(float(np.mean(np.abs(difference[:, i]))), 2)
        figures[f"{angle}_bias"] = round(float(np.mean(difference[:, i])), 2)
    figures["yaw_corr"] = round(float(np.corrcoef(yaw_ours, yaw_theirs)[0, 1]), 3) if spread else None
    figures["yaw_mp_mean"] = round(float(np.mean(yaw_theirs)), 2)
    figures["yaw_68_mean"] = round(float(np.mean(yaw_ours)), 2)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(os.environ.get("MEGACTOR_ASSETS", Path(__file__).resolve().parents[2] / "shared")) / "videos"
    parser.add_argument("--input", default=str(default))
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    assert set(IBUG_FROM_MEDIAPIPE) == set(POSE_INDICES), "the mapping must cover the points headpose uses"
    model = landmarker()
    per_clip, pooled = {}, []
    for path in sorted(p for p in Path(args.input).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        poses = clip_poses(path, model, args.fps, args.max_side)
        per_clip[path.name] = agreement(poses)
        pooled.append(poses)
    model.close()
    overall = agreement(np.concatenate(pooled))

    columns = ("frames", "yaw_mad", "pitch_mad", "roll_mad", "yaw_bias", "pitch_bias", "roll_bias", "yaw_corr",
               "yaw_mp_mean", "yaw_68_mean")
    print("degrees; mad: mean |68-point - MediaPipe|, bias: mean (68-point - MediaPipe)")
    print(f"{'clip':40s}" + "".join(f"{c:>12s}" for c in columns))
    for name, figures in [*per_clip.items(), ("OVERALL (frames pooled)", overall)]:
        print(f"{name[:39]:40s}" + "".join(f"{str(figures.get(c, '-')):>12s}" for c in columns))
    print("\nreproduce: MEGACTOR_WEIGHTS_DIR=/work/shared/weights MEGACTOR_ASSETS=/work/shared "
          f".venv/bin/python bench/headpose_agreement.py --fps {args.fps:g} --max-side {args.max_side}")
    if args.json:
        Path(args.json).write_text(json.dumps({"per_clip": per_clip, "overall": overall}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
