"""Face and head pose on the paper's backend: DWPose (YOLOX-L person boxes + DWPose-L wholebody keypoints)
through ONNX Runtime, on the CPU or a GPU.

Frames are sampled at ``face.sample_fps``, decoded with the longer side at most ``face.dwpose.max_side``
(default 1280) while the next frames decode in a background thread, and run through DWPose in batches of
``face.dwpose.batch_size``. Per sampled frame: a person's face counts when at least ``face_points_min`` of its
68 face keypoints (COCO-WholeBody 23..90, iBUG-68 order) score ``keypoint_score_min`` or more (the authors'
rule: 60 points at 0.3); ``n_faces`` counts such persons. For the largest counted face: ``box`` is the tight
box of its counted face points, ``eyes_box`` of brows and eyes (iBUG 17-26, 36-47), ``mouth_box`` of the
mouth (48-67), all in SOURCE pixels; yaw/pitch/roll come from :mod:`curation.headpose`, in the lite
backend's convention. The per-clip columns are the lite backend's (:mod:`curation.scorers.face_track`).

Deviation to know when comparing the backends: a 68-point box has no forehead (it spans brows to chin),
so it is shorter than MediaPipe's 478-point box, and ``face_res_px`` = min(w, h) tends to be its width, or
even its height on a wide face. The paper's face-size rule reads the DWPose box, so this backend is the one
its "600 x 600" refers to."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from curation import devices, media, weights
from curation.dwpose import FACE_SLICE, DWPose, Person
from curation.headpose import head_pose
from curation.scorers.base import ClipSpan, Scorer
from curation.scorers.face_track import FACE_FIELDS, empty_point, summarise_track, tight_box

EYES = np.r_[17:27, 36:48]  # iBUG-68 brows and eyes
MOUTH = np.r_[48:68]

def face_point(t: float, persons: list[Person], scale: tuple[float, float], width: int, height: int,
               config: Any) -> dict[str, Any]:
    """One face-track point from the persons DWPose found on a frame; ``scale`` takes frame pixels to source
    pixels (the frame may have been decoded smaller)."""
    faces = []
    for person in persons:
        points = person.keypoints[FACE_SLICE] * np.asarray(scale)
        scores = person.scores[FACE_SLICE]
        counted = scores >= config.keypoint_score_min
        if counted.sum() >= config.face_points_min:
            faces.append((points, scores, counted))
    point = empty_point(t, len(faces))
    if not faces:
        return point
    boxes = [tight_box(points[counted], width, height) for points, _, counted in faces]
    largest = int(np.argmax([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]))
    points, scores, counted = faces[largest]

    def part_box(indices: np.ndarray) -> list[float] | None:
        found = indices[counted[indices]]
        return tight_box(points[found], width, height) if found.size else None

    pose = head_pose(points, (width, height), scores, config.keypoint_score_min)
    point.update(box=boxes[largest], eyes_box=part_box(EYES), mouth_box=part_box(MOUTH))
    if pose is not None:
        point.update(yaw=pose[0], pitch=pose[1], roll=pose[2])
    return point


class DWPoseFaceScorer(Scorer):
    name = "face_dwpose"
    version = "1.0"
    version_column = "face_version"
    requires = {"onnxruntime": "paper"}
    num_gpus = 0.5  # read by the Ray runner when the device is a GPU: two workers share one
    has_model_part = True  # score(): decode (CPU); infer(): DWPose on a batch of frames (a GPU actor, pooled)
    fields = FACE_FIELDS

    def weight_sources(self) -> dict[str, Any]:
        cfg = self.config.dwpose
        return {"yolox_l": cfg.detector_weights, "dw-ll_ucoco_384": cfg.pose_weights}

    def setup_model(self) -> None:
        detector, pose = (weights.resolve_or_local(name, local) for name, local in self.weight_sources().items())
        self._model = DWPose.from_config(detector, pose, devices.onnx_providers(self.device), self.config.dwpose)

    def infer(self, request: list[np.ndarray]) -> list[list[Person]]:
        """The model part: the persons on each RGB frame of one batch (YOLOX-L + DWPose-L, pre/post-processing)."""
        return self._model(request)

    def close(self) -> None:
        self._model = None
        self._ready = False

    def score(self, clip: ClipSpan, upstream: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.config.dwpose
        width, height = clip.probe.width, clip.probe.height
        frames = media.iter_frames(clip.path, clip.probe, start_s=clip.start_s, duration_s=clip.duration_s,
                                   fps=self.config.sample_fps,
                                   max_side=cfg.max_side, **self.decode_options)
        times: deque[list[float]] = deque()  # per request sent, its frames' times (results come back in order)

        def requests() -> Iterator[list[np.ndarray]]:
            for batch in media.batches(media.prefetch(frames, depth=cfg.batch_size), cfg.batch_size):
                self.counters["frames_decoded"] += len(batch)
                rgbs = [rgb for _, rgb in batch]
                times.append([t for t, _ in batch])
                yield rgbs

        track = []
        for rgbs, detections in self.model_runner.map(self, requests()):
            for t, rgb, persons in zip(times.popleft(), rgbs, detections, strict=True):
                scale = (width / rgb.shape[1], height / rgb.shape[0])
                track.append(face_point(t, persons, scale, width, height, cfg))
        return summarise_track(track)
