"""Lip sync: SyncNet's AV offset, Sync-D and Sync-C, computed as the reference does (``metrics.syncnet``).

Face crops come from the face track the face scorer stored (no second face detector): the track's boxes, sampled
at ``face.sample_fps``, are median-filtered in centre and size over the reference's 0.52 s (13 frames at 25 fps,
3 samples at 5 fps), interpolated to every 25 fps frame, and cut with the reference's geometry (``run_pipeline.py``): half-side ``bs = max(w, h) / 2``, the frame
padded with grey 110, rows ``[y - bs, y + bs (1 + 2 c)]`` and columns ``[x - bs (1 + c), x + bs (1 + c)]`` around
the box centre with c = 0.4, resized to 224x224. Deviations from the reference pipeline, all for speed or because
there is no second detector: boxes come from the face landmarks (not S3FD) and are interpolated between sampled
frames; crops go to the network in memory (the reference writes an MPEG-4 file and re-reads JPEG frames)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from curation import media, weights
from curation.errors import DecodeError, TooShortForSyncError
from curation.scorers.base import ClipSpan, Scorer

PAD_VALUE = 110


@dataclass(frozen=True)
class SyncRequest:
    """One track for the network: 224x224 BGR crops (a lazy stream in-process, an (F, 224, 224, 3) array sent to
    a GPU actor), the MFCC of its audio and its number of audio samples (which set the windows)."""

    crops: Iterable[np.ndarray]
    mfcc: np.ndarray
    n_samples: int


def crop_boxes(track: Sequence[Mapping[str, Any]], times: np.ndarray, smooth_frames: int) -> np.ndarray | None:
    """Per frame time: (centre x, centre y, half side) from the track's face boxes. Like the reference, centre and
    size are median-filtered over ``smooth_frames`` frames at 25 fps (0.52 s for 13); a track sampled more
    sparsely is filtered over the same span in samples (3 samples at 5 fps), then interpolated linearly to every
    frame time (held at the ends). None without any box."""
    from scipy.signal import medfilt

    found = [(p["t"], p["box"]) for p in track if p.get("box") is not None]
    if not found:
        return None
    t = np.array([f[0] for f in found])
    boxes = np.array([f[1] for f in found], dtype=np.float64)
    samples = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                        np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2], axis=1)
    if len(t) > 1:
        step = float(np.median(np.diff(t)))
        kernel = int(round(smooth_frames / 25.0 / step)) if step > 0 else 1
        kernel += 1 - kernel % 2  # odd
        if kernel > 1:
            samples = np.stack([medfilt(samples[:, k], kernel_size=kernel) for k in range(3)], axis=1)
    return np.stack([np.interp(times, t, samples[:, k]) for k in range(3)], axis=1)


def crop_face(frame: np.ndarray, x: float, y: float, half: float, crop_scale: float) -> np.ndarray:
    """The reference crop of one frame around a face box centre, resized to 224x224 (same array layout).

    The reference pads the whole frame by ``pad`` with grey 110 and slices it; this copies only the window
    (the same pixels, without copying the frame)."""
    import cv2

    pad = int(half * (1 + 2 * crop_scale))
    my, mx = y + pad, x + pad  # centre in the padded frame's coordinates, as the reference computes it
    rows = (int(my - half), int(my + half * (1 + 2 * crop_scale)))
    cols = (int(mx - half * (1 + crop_scale)), int(mx + half * (1 + crop_scale)))
    height, width = frame.shape[:2]
    # the slice bounds clipped to the padded frame, as numpy slicing would clip them
    r0, r1 = (min(max(r, 0), height + 2 * pad) for r in rows)
    c0, c1 = (min(max(c, 0), width + 2 * pad) for c in cols)
    face = np.full((max(r1 - r0, 0), max(c1 - c0, 0), frame.shape[2]), PAD_VALUE, dtype=frame.dtype)
    src_r0, src_r1 = max(r0 - pad, 0), min(r1 - pad, height)
    src_c0, src_c1 = max(c0 - pad, 0), min(c1 - pad, width)
    if src_r1 > src_r0 and src_c1 > src_c0:
        face[src_r0 + pad - r0: src_r1 + pad - r0, src_c0 + pad - c0: src_c1 + pad - c0] = \
            frame[src_r0:src_r1, src_c0:src_c1]
    return cv2.resize(face, (224, 224))


def to_int16(audio: np.ndarray) -> np.ndarray:
    """media.decode_audio's float samples back to the exact 16-bit PCM values ffmpeg produced."""
    return np.round(audio * 32768.0).astype(np.int16)


def frame_times(clip: ClipSpan, fps: int) -> np.ndarray:
    return clip.start_s + np.arange(int(round(clip.duration_s * fps))) / fps


class SyncNetScorer(Scorer):
    name = "sync_syncnet"
    version = "1.0"
    version_column = "sync_version"
    requires = {"torch": "paper", "python_speech_features": "paper", "scipy": "paper"}
    needs_audio = True
    inputs = ("face_track",)
    num_gpus = 0.25  # a small network: four shard workers share one GPU, their decoding overlapping
    has_model_part = True  # score(): decode, crop, MFCC (CPU); infer(): the network's features (a GPU actor)
    fields = (
        pa.field("sync_offset", pa.int16()),
        pa.field("sync_c", pa.float32()),
        pa.field("sync_d", pa.float32()),
        pa.field("sync_windows", pa.int32()),
        pa.field("sync_frame_conf", pa.list_(pa.float32())),
    )

    def setup_model(self) -> None:
        from metrics.syncnet import load_syncnet

        self._net = load_syncnet(weights.resolve_or_local("syncnet_v2", self.config.weights), self.device)

    def infer(self, request: SyncRequest) -> tuple[Any, Any]:
        """The model part: lip and audio features (W, 1024) of the track's windows (torch tensors on the CPU)."""
        from metrics import syncnet

        return syncnet.embed_windows(self._net, request.crops, request.mfcc, request.n_samples,
                                     batch_size=self.config.batch_size, device=self.device)

    def close(self) -> None:
        self._net = None
        self._ready = False

    def weight_sources(self) -> dict[str, Any]:
        return {"syncnet_v2": self.config.weights}

    def score(self, clip: ClipSpan, upstream: Mapping[str, Any]) -> dict[str, Any]:
        from metrics import syncnet

        times = frame_times(clip, syncnet.FPS)
        boxes = crop_boxes(upstream["face_track"], times, self.config.smooth_frames)
        if boxes is None:
            self.counters["skipped_no_face_box"] += 1
            return {}
        return self._evaluate(clip, self._crops(clip, boxes))

    def _crops(self, clip: ClipSpan, boxes: np.ndarray) -> Iterator[np.ndarray]:
        frames = media.iter_frames(clip.path, clip.probe, start_s=clip.start_s, duration_s=clip.duration_s, fps=25,
                                   **self.decode_options)
        for index, (_, rgb) in enumerate(frames):
            if index >= len(boxes):
                break
            self.counters["frames_decoded"] += 1
            x, y, half = boxes[index]
            yield crop_face(rgb[:, :, ::-1], x, y, half, self.config.crop_scale)  # the network was trained on BGR

    def _evaluate(self, clip: ClipSpan, crops: Iterator[np.ndarray]) -> dict[str, Any]:
        from metrics import syncnet

        audio = to_int16(media.decode_audio(clip.path, start_s=clip.start_s, duration_s=clip.duration_s,
                                            sample_rate=syncnet.SAMPLE_RATE))
        if syncnet.window_count(len(audio) // syncnet.SAMPLES_PER_FRAME, len(audio)) == 0:
            raise TooShortForSyncError(f"too short for SyncNet: {len(audio)} audio samples give no "
                                       f"{syncnet.WINDOW}-frame window", path=clip.path)
        # the CPU part: crops (decoded in a thread), MFCC; the network runs in-process or in a GPU actor, which
        # is sent every crop (the same frames the in-process stream would have given it, so the same scores)
        stream = media.prefetch(crops)
        request = SyncRequest(np.stack(list(stream)) if self.model_runner.remote else stream,
                              syncnet.mfcc_features(audio), len(audio))
        try:
            (_, (lip, aud)), = self.model_runner.map(self, [request])
        except ValueError as error:  # fewer than six frames in the span
            raise TooShortForSyncError(str(error), path=clip.path) from None
        scores = syncnet.sync_scores(lip, aud, self.config.vshift)
        self.counters["sync_windows"] += scores.windows
        return {"sync_offset": scores.offset, "sync_c": scores.sync_c, "sync_d": scores.sync_d,
                "sync_windows": scores.windows, "sync_frame_conf": scores.frame_conf.tolist()}

    def score_face_video(self, clip: ClipSpan) -> dict[str, Any]:
        """Scores of an already-cropped face video (the reference demo's input; e.g. a generated video):
        every 25 fps frame, resized to 224x224 if it is not already."""
        import cv2

        self.ensure_setup()  # a scorer used alone: the model loads here

        def crops() -> Iterator[np.ndarray]:
            for _, rgb in media.iter_frames(clip.path, clip.probe, start_s=clip.start_s,
                                            duration_s=clip.duration_s, fps=25):
                self.counters["frames_decoded"] += 1
                bgr = np.ascontiguousarray(rgb[:, :, ::-1])
                yield bgr if bgr.shape[:2] == (224, 224) else cv2.resize(bgr, (224, 224))

        return self._evaluate(clip, crops())


def score_video(path: str, config: Any, device: str = "cpu") -> dict[str, Any]:
    """``megactor sync``: SyncNet scores of a whole, already-cropped face video (``config``: a SyncConfig)."""
    probe = media.probe(path)
    if not probe.has_video:
        raise DecodeError("no video stream: SyncNet needs face frames", path=path)
    if not probe.has_audio:
        raise DecodeError("no audio stream: SyncNet needs the soundtrack", path=path)
    scorer = SyncNetScorer(config, device=device)
    clip = ClipSpan(path, 0.0, probe.duration_s or 0.0, probe)
    try:
        return scorer.score_face_video(clip)
    finally:
        scorer.close()
