"""Writing video: frames (RGB uint8 arrays) piped into ONE ffmpeg process that encodes H.264 in mp4, with the audio
of a source span muxed in, written to a hidden temporary name and renamed when complete, so that a reader (or a
resumed run) never sees half a video.

A variant of a clip must be a file a trainer can seek in with frame k of the variant = frame k of the clip: the
frames are written at the clip's constant rate with no timestamp of their own (frame k is at k / fps), the audio is
cut from the source with an exact (decoding) seek to the clip's start, and ``-movflags +faststart`` puts the index
first. The audio is re-encoded to AAC rather than stream-copied: a stream copy can only cut at packet boundaries
(21-64 ms off the span), a re-encode starts on the clip's first sample.
"""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import numpy as np

from curation.errors import DecodeError, ToolMissingError
from curation.media import FFMPEG, _drain, _error_summary, _kill, _source


@dataclass(frozen=True)
class AudioSpan:
    """The audio to mux: ``duration_s`` seconds of ``path``'s first audio stream from ``start_s``."""

    path: str
    start_s: float
    duration_s: float


def rate_text(fps: float) -> str:
    """ffmpeg's rational for a frame rate (25 -> "25", 29.97 -> "30000/1001")."""
    value = Fraction(fps).limit_denominator(1001)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


class VideoWriter:
    """``with VideoWriter(path, width=..., height=..., fps=...) as out: out.write(frame)``; on a clean exit the
    file appears at ``path`` (atomically); on an exception nothing does. ``frames`` counts what was written."""

    def __init__(self, path: str | os.PathLike[str], *, width: int, height: int, fps: float,
                 audio: AudioSpan | None = None, crf: int = 18, preset: str = "veryfast",
                 audio_bitrate: str = "192k", timeout_s: float = 600.0):
        if width % 2 or height % 2:
            raise ValueError(f"H.264 in yuv420p needs even sizes, got {width}x{height}")
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.audio, self.crf, self.preset, self.audio_bitrate = audio, crf, preset, audio_bitrate
        self.timeout_s = timeout_s
        self.frames = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:8]}.tmp.mp4")
        self._proc: subprocess.Popen[bytes] | None = None
        self._tail: deque[str] = deque(maxlen=20)
        self._drainer: threading.Thread | None = None

    def _command(self) -> list[str]:
        cmd = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}",
               "-framerate", rate_text(self.fps), "-i", "pipe:0"]
        if self.audio is not None:
            cmd += ["-ss", f"{self.audio.start_s:.6f}", "-t", f"{self.audio.duration_s:.6f}",
                    "-i", _source(self.audio.path)]
        cmd += ["-map", "0:v:0"]
        if self.audio is not None:
            cmd += ["-map", "1:a:0", "-c:a", "aac", "-b:a", self.audio_bitrate]
        cmd += ["-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
                "-movflags", "+faststart", "-f", "mp4", str(self._tmp)]
        return cmd

    def __enter__(self) -> VideoWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._proc = subprocess.Popen(self._command(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE)
        except FileNotFoundError as exc:
            raise ToolMissingError(f"{FFMPEG} not found on PATH; install FFmpeg") from exc
        self._drainer = threading.Thread(target=_drain, args=(self._proc.stderr, self._tail), daemon=True)
        self._drainer.start()
        return self

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"expected a {self.height}x{self.width}x3 uint8 frame, got {frame.shape} {frame.dtype}")
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            self._proc.wait()
            raise DecodeError(f"ffmpeg stopped while encoding: {_error_summary(self._tail, self.path)}",
                              path=str(self.path)) from None
        self.frames += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            if kind is not None:
                _kill(self._proc)
                return
            self._proc.stdin.close()
            try:
                code = self._proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                _kill(self._proc)
                raise DecodeError(f"ffmpeg did not finish encoding within {self.timeout_s:g} s",
                                  path=str(self.path)) from None
            if self._drainer is not None:
                self._drainer.join(timeout=5.0)
            if code != 0 or self.frames == 0:
                raise DecodeError(f"encoding failed (exit {code}, {self.frames} frames): "
                                  f"{_error_summary(self._tail, self.path)}", path=str(self.path))
            with open(self._tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(self._tmp, self.path)
        finally:
            if self._proc.stdin and not self._proc.stdin.closed:
                try:
                    self._proc.stdin.close()
                except BrokenPipeError:
                    pass
            self._tmp.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> int:
    """Delete the hidden temporaries a killed writer of ``path`` left beside it (only that file's: other writers
    may be at work in the same directory); returns how many."""
    path = Path(path)
    removed = 0
    for stale in path.parent.glob(f".{path.stem}.*.tmp.mp4"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed
