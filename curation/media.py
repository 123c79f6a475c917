"""Media layer: probe a file once, stream its frames and audio through ONE ffmpeg process per call.

Frames are piped as raw RGB and read straight into numpy arrays: no frame ever touches the disk and there is
never a process per frame. Every failure of an input (empty, unreadable, truncated, too slow) is raised as a
typed :class:`~curation.errors.MediaError` whose ``reason`` ends up in the manifest; a missing ffmpeg install is
a :class:`~curation.errors.ToolMissingError` because no input will ever succeed without it.

POSIX only: the decode timeout waits on the stdout pipe with ``select``.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from queue import Empty, Full, Queue
from typing import Any, TypeVar

import ffmpeg
import numpy as np

from curation.errors import DecodeError, EmptyFileError, MediaTimeoutError, ProbeError, ToolMissingError

T = TypeVar("T")

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"
MAX_DEFAULT_FPS = 30.0
_VFR_TOLERANCE = 0.01
_UNKNOWN_SPAN_S = 3600.0  # assumed length when neither the caller nor the container knows it
_STDERR_TAIL_LINES = 20
_SEEK_LEAD_S = 1.0  # longer than any source frame is shown (>= 1 fps)
_PTS_SLACK_S = 0.001
# "[h264 @ 0x55e1729b5440] " prefixes name an internal object, not the problem.
_LOG_PREFIX = re.compile(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*")
# -xerror: stop at the first corrupt packet. A truncated file otherwise decodes "successfully" into smeared
# concealment frames, which is worse for a curation pipeline than rejecting the span with a reason.
_FFMPEG_GLOBAL = ["-nostdin", "-hide_banner", "-loglevel", "error", "-xerror"]
# ...but a file cut at a packet boundary just ends early with exit code 0; only the demuxer says so.
_TRUNCATED = re.compile(r"partial file|file ended prematurely", re.IGNORECASE)


@dataclass(frozen=True)
class ProbeResult:
    """What one ffprobe call says about a file. ``width``/``height`` are the DISPLAY size (after rotation),
    which is what decoded frames have; ``coded_*`` is what the bitstream stores."""

    container: str
    duration_s: float | None
    bit_rate: int | None
    has_video: bool
    video_codec: str | None
    width: int | None
    height: int | None
    coded_width: int | None
    coded_height: int | None
    rotation: int
    fps_avg: float | None
    fps_nominal: float | None
    vfr: bool
    n_frames: int | None
    has_audio: bool
    audio_codec: str | None
    audio_sample_rate: int | None
    audio_channels: int | None

    def as_dict(self) -> dict[str, Any]:
        """Flat dict of plain Python values: one Parquet row's probe columns."""
        return asdict(self)


def _tool_missing(tool: str) -> ToolMissingError:
    return ToolMissingError(
        f"{tool} not found on PATH; install FFmpeg (e.g. `apt-get install ffmpeg` or `conda install ffmpeg`)"
    )


def _source(path: str | os.PathLike[str]) -> str:
    """The name handed to ffmpeg/ffprobe: absolute, because they read "-talk.mp4" as an option and
    "talk: 1.mp4" as a URL with protocol "talk"."""
    return os.path.abspath(os.fspath(path))


def _error_summary(stderr_lines: list[str] | deque[str], path: str | os.PathLike[str], n: int = 2) -> str:
    """The last ``n`` distinct meaningful stderr lines, without object prefixes and the repeated path."""
    cleaned: list[str] = []
    for raw in stderr_lines:
        line = _LOG_PREFIX.sub("", raw.strip())
        line = line.removeprefix(f"{_source(path)}: ").removeprefix(f"{os.fspath(path)}: ")
        if line and line not in cleaned:
            cleaned.append(line)
    return "; ".join(cleaned[-n:]) or "no error message"


def _rate(text: str | None) -> float | None:
    """ffprobe rational ("30000/1001", "0/0") -> float, None when unknown."""
    if not text:
        return None
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return float(value) if value > 0 else None


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out >= 0 else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _rotation(stream: dict[str, Any]) -> int:
    """Clockwise degrees to turn the coded picture for display, in {0, 90, 180, 270} (the legacy ``rotate``
    tag's meaning, and what ffmpeg's autorotate applies). The display matrix angle is counter-clockwise."""
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            degrees = -float(side["rotation"])
            break
    else:
        degrees = float(_int((stream.get("tags") or {}).get("rotate")) or 0)
    return int(round(degrees / 90.0)) % 4 * 90


def _is_vfr(fps_avg: float | None, fps_nominal: float | None) -> bool:
    if fps_avg is None or fps_nominal is None:
        return False
    return abs(fps_avg - fps_nominal) > _VFR_TOLERANCE * fps_nominal


def _run_tool(
    cmd: list[str], timeout_s: float, what: str, path: str | os.PathLike[str]
) -> tuple[subprocess.CompletedProcess[bytes], list[str]]:
    """Run ffprobe/ffmpeg to completion with a timeout; a missing tool or a timeout becomes a typed error."""
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise _tool_missing(cmd[0]) from exc
    except subprocess.TimeoutExpired as exc:
        raise MediaTimeoutError(f"{what} took longer than {timeout_s:g} s", path=str(path)) from exc
    return done, done.stderr.decode("utf-8", "replace").splitlines()


def probe(path: str | os.PathLike[str], *, timeout_s: float = 30.0) -> ProbeResult:
    """Run ``ffprobe -show_format -show_streams`` once and normalise what it says.

    Raises EmptyFileError (0 bytes), ProbeError (ffprobe cannot read it), MediaTimeoutError, ToolMissingError.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ProbeError(f"cannot stat file: {exc.strerror}", path=str(path)) from exc
    if stat.S_ISREG(info.st_mode) and info.st_size == 0:  # pipes and devices report 0 too
        raise EmptyFileError("file is empty (0 bytes)", path=str(path))

    cmd = [FFPROBE, "-v", "error", "-show_format", "-show_streams", "-of", "json", _source(path)]
    done, stderr = _run_tool(cmd, timeout_s, "ffprobe", path)
    if done.returncode != 0:
        raise ProbeError(f"ffprobe failed: {_error_summary(stderr, path)}", path=str(path))
    try:
        info = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise ProbeError(f"ffprobe returned invalid JSON: {exc}", path=str(path)) from exc

    fmt = info.get("format") or {}
    streams = info.get("streams") or []
    # Cover art (attached_pic) is a "video" stream with one frame; it must not make an audio file look like video.
    video = next(
        (
            s
            for s in streams
            if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
        ),
        None,
    )
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)

    # The container's duration covers every stream; a stream's own is the fallback (e.g. raw elementary streams).
    durations = [_float(fmt.get("duration"))] + [_float(s.get("duration")) for s in (video, audio) if s]
    duration = next((d for d in durations if d is not None), None)

    v = video or {}
    coded_w, coded_h = _int(v.get("width")), _int(v.get("height"))
    rotation = _rotation(v) if video else 0
    width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
    fps_avg, fps_nominal = _rate(v.get("avg_frame_rate")), _rate(v.get("r_frame_rate"))
    a = audio or {}
    return ProbeResult(
        container=str(fmt.get("format_name", "")),
        duration_s=duration,
        bit_rate=_int(fmt.get("bit_rate")),
        has_video=video is not None,
        video_codec=v.get("codec_name"),
        width=width,
        height=height,
        coded_width=coded_w,
        coded_height=coded_h,
        rotation=rotation,
        fps_avg=fps_avg,
        fps_nominal=fps_nominal,
        vfr=_is_vfr(fps_avg, fps_nominal),
        n_frames=_int(v.get("nb_frames")),
        has_audio=audio is not None,
        audio_codec=a.get("codec_name"),
        audio_sample_rate=_int(a.get("sample_rate")),
        audio_channels=_int(a.get("channels")),
    )


def output_size(probe: ProbeResult, max_side: int | None) -> tuple[int, int]:
    """Display size scaled so that the longer side is <= ``max_side`` (never upscaled), both sides even
    (even sizes keep every downstream encoder and YUV 4:2:0 conversion happy)."""
    if not probe.has_video or not probe.width or not probe.height:
        raise DecodeError("no video stream (or unknown frame size)")
    if max_side is not None and max_side < 2:
        raise ValueError(f"max_side must be >= 2, got {max_side}")
    w, h = probe.width, probe.height
    long_side, short_side = max(w, h), min(w, h)
    target_long = long_side if max_side is None else min(long_side, max_side)
    target_long = max(2, target_long - target_long % 2)
    target_short = max(2, round(short_side * target_long / long_side / 2) * 2)
    return (target_long, target_short) if w >= h else (target_short, target_long)


def default_fps(probe: ProbeResult) -> float:
    """The source's nominal rate capped at 30 fps: higher rates add decode cost and nothing a scorer uses."""
    rate = probe.fps_nominal or probe.fps_avg or 25.0
    return min(rate, MAX_DEFAULT_FPS)


def _default_timeout(span_s: float | None) -> float:
    """Generous: 60 s of start-up slack plus 4x the span, i.e. decoding may run 4x slower than real time."""
    return 60.0 + 4.0 * (span_s if span_s is not None else _UNKNOWN_SPAN_S)


def _check_span(start_s: float, duration_s: float | None) -> None:
    if start_s < 0 or (duration_s is not None and duration_s <= 0):
        raise ValueError(f"need start_s >= 0 and duration_s > 0, got {start_s=}, {duration_s=}")


def _span(probe: ProbeResult, start_s: float, duration_s: float | None) -> float | None:
    if duration_s is not None:
        return duration_s
    return None if probe.duration_s is None else max(probe.duration_s - start_s, 0.0)


def _raise_for_failure(returncode: int, stderr: list[str] | deque[str], path: str, when: str) -> None:
    if returncode != 0:
        raise DecodeError(
            f"ffmpeg exited with {returncode} {when}: {_error_summary(stderr, path)}", path=path
        )
    truncated = [line for line in stderr if _TRUNCATED.search(line)]
    if truncated:
        raise DecodeError(f"file is truncated ({when}): {_error_summary(truncated, path, n=1)}", path=path)


def _drain(stream: Any, tail: deque[str]) -> None:
    """Read stderr to EOF so ffmpeg can never block on a full stderr pipe; keep the tail for messages."""
    for raw in iter(stream.readline, b""):
        tail.append(raw.decode("utf-8", "replace").rstrip())
    stream.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def iter_frames(
    path: str | os.PathLike[str],
    probe: ProbeResult,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    fps: float | None = None,
    max_side: int | None = None,
    timeout_s: float | None = None,
    hwaccel: str | None = None,
    decoder_options: dict[str, Any] | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(t, frame)`` at a constant rate from one ffmpeg process: frame k is at ``start_s + k / fps``
    in source time, an ``HxWx3`` contiguous uint8 RGB array in display orientation (ffmpeg autorotates).

    ``fps`` defaults to the nominal rate capped at 30 (VFR sources are resampled to constant rate).
    ``timeout_s`` bounds the total time spent WAITING FOR FFMPEG over the whole iteration (default: 60 s + 4x
    the span); time the consumer spends between frames is not counted, so a slow scorer cannot time a healthy
    decode out. Arguments are checked here, at call time; the process starts on the first ``next()`` and is
    killed if the consumer stops early (``close()``, ``break``, garbage collection).

    ``hwaccel``: an ffmpeg hardware decoder (``"cuda"``: NVDEC; see ``curation.devices.decode_hwaccel``); the
    pictures are downloaded and go through the same filters to rgb24, so the frames have the same shape.

    ``decoder_options``: extra ffmpeg input (decoder) options, e.g. ``{"threads": 1}`` (the pictures do not
    depend on it) or ``{"skip_loop_filter": "all"}`` (H.264/HEVC without deblocking: cheaper, slightly
    different pictures). Options that drop frames (``skip_frame``) would put the wrong picture on a timestamp.

    Raises DecodeError (no video, ffmpeg exits non-zero, e.g. a corrupt packet), MediaTimeoutError,
    ToolMissingError.
    """
    if not probe.has_video:
        raise DecodeError("no video stream to decode", path=str(path))
    _check_span(start_s, duration_s)
    rate = float(fps) if fps is not None else default_fps(probe)
    if rate <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    width, height = output_size(probe, max_side)
    budget = timeout_s if timeout_s is not None else _default_timeout(_span(probe, start_s, duration_s))

    # Frame k is the picture ON SCREEN at start_s + k / fps (the last one shown at or before it, with 1 ms of
    # slack for the rounded timestamps of 1 ms timebases such as WebM), so a span decodes to exactly the
    # pictures of the same slice of a full decode. How:
    # - seek a little early: an exact seek to start_s would drop the picture already on screen at start_s;
    # - -copyts -start_at_zero: timestamps stay "seconds since file start" instead of being shifted by the
    #   seek, which coarse timebases (AVI: 1/25 s) cannot represent exactly;
    # - in microseconds, shift so start_s (minus the slack) is 0, then the fps filter rounds UP onto the
    #   output grid and keeps the last picture per slot; start_time=0 trims the early pictures and repeats
    #   the first one if the video starts late.
    seek_s = max(0.0, start_s - _SEEK_LEAD_S)
    input_args: dict[str, Any] = {**(decoder_options or {}), "copyts": None, "start_at_zero": None}
    if seek_s > 0:
        input_args["ss"] = f"{seek_s:.6f}"
    if hwaccel:
        input_args["hwaccel"] = hwaccel  # no -hwaccel_output_format: frames come back to system memory
    source = ffmpeg.input(_source(path), **input_args)
    video = (
        source["V:0"]  # "V": not a cover-art picture
        .filter("settb", "AVTB")
        .filter("setpts", f"PTS-{start_s + _PTS_SLACK_S:.6f}/TB")
        .filter("fps", fps=rate, start_time=0, round="up")
    )
    if (width, height) != (probe.width, probe.height):
        video = video.filter("scale", width, height, flags="area")
    output_args: dict[str, Any] = {"format": "rawvideo", "pix_fmt": "rgb24"}
    if duration_s is not None:
        # Frames at start_s + k / fps for k / fps < duration_s; the epsilon keeps 2.0 s * 25 fps at 50 frames.
        output_args["frames:v"] = max(1, math.ceil(duration_s * rate - 1e-6))
    cmd = [FFMPEG, *_FFMPEG_GLOBAL, *ffmpeg.output(video, "pipe:", **output_args).get_args()]
    return _read_frames(cmd, str(path), start_s, rate, width, height, budget)


def _read_frames(
    cmd: list[str], path: str, start_s: float, rate: float, width: int, height: int, budget_s: float
) -> Iterator[tuple[float, np.ndarray]]:
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
        )
    except FileNotFoundError as exc:
        raise _tool_missing(FFMPEG) from exc
    tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
    drainer = threading.Thread(target=_drain, args=(proc.stderr, tail), daemon=True)
    drainer.start()
    assert proc.stdout is not None
    stdout = proc.stdout
    frame_bytes = width * height * 3
    remaining = budget_s
    try:
        k = 0
        while True:
            frame = np.empty((height, width, 3), dtype=np.uint8)
            view = memoryview(frame).cast("B")
            got = 0
            while got < frame_bytes:
                began = time.monotonic()
                ready, _, _ = select.select([stdout], [], [], max(remaining, 0.0))
                remaining -= time.monotonic() - began
                if not ready:
                    _kill(proc)
                    raise MediaTimeoutError(
                        f"ffmpeg decode exceeded {budget_s:g} s after {k} frames", path=path
                    )
                n = stdout.readinto(view[got:])
                if not n:
                    break
                got += n
            if got < frame_bytes:
                break  # EOF; a partial frame only happens when ffmpeg dies, which the exit code reports
            yield start_s + k / rate, frame
            k += 1
        returncode = proc.wait(timeout=max(remaining, 1.0))
        drainer.join(timeout=5.0)
        _raise_for_failure(returncode, tail, path, f"after {k} frames")
        if k == 0:  # never a useful result, and easy to miss downstream: make it an error with a reason
            raise DecodeError(
                f"no frames decoded from {start_s:g} s (past the end of the video, or a seek that found no "
                "keyframe, e.g. MPEG-TS with long GOPs)",
                path=path,
            )
    except subprocess.TimeoutExpired as exc:
        raise MediaTimeoutError(f"ffmpeg did not exit within {budget_s:g} s", path=path) from exc
    finally:
        # Runs on normal exit, on errors and on GeneratorExit (consumer stopped early): never leave a process.
        _kill(proc)
        stdout.close()
        drainer.join(timeout=5.0)


def decode_audio(
    path: str | os.PathLike[str],
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    sample_rate: int = 16000,
    timeout_s: float | None = None,
) -> np.ndarray:
    """Decode the first audio stream to float32 mono in [-1, 1] at ``sample_rate`` (ffmpeg downmixes and
    resamples; the pipe carries s16le). Callers check ``probe.has_audio`` first: a file without audio raises
    DecodeError. Raises MediaTimeoutError past ``timeout_s`` (default 60 s + 4x the span)."""
    _check_span(start_s, duration_s)
    input_args: dict[str, Any] = {"ss": start_s} if start_s > 0 else {}
    if duration_s is not None:
        input_args["t"] = duration_s
    audio = ffmpeg.input(_source(path), **input_args)["a:0"]
    out = ffmpeg.output(audio, "pipe:", format="s16le", acodec="pcm_s16le", ac=1, ar=sample_rate)
    cmd = [FFMPEG, *_FFMPEG_GLOBAL, *out.get_args()]
    budget = timeout_s if timeout_s is not None else _default_timeout(duration_s)
    done, stderr = _run_tool(cmd, budget, "audio decode", path)
    if done.returncode != 0 and any("matches no streams" in line for line in stderr):
        raise DecodeError("no audio stream to decode", path=str(path))
    _raise_for_failure(done.returncode, stderr, str(path), "decoding audio")
    return np.frombuffer(done.stdout, dtype="<i2").astype(np.float32) / 32768.0


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one shorter), for models that take batches."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prefetch(items: Iterable[T], depth: int = 8) -> Iterator[T]:
    """Iterate ``items`` in a background thread, ``depth`` items ahead: decoding and cropping on the CPU
    overlap the consumer's model calls (on a GPU, or in ONNX Runtime / torch, which release the GIL).
    Exceptions from the producer are re-raised in the consumer; stopping early closes the source iterator
    (which kills its ffmpeg process)."""
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        queue.put((item, None), timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as error:  # handed to the consumer
            queue.put((done, error))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        queue.put((done, None))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = queue.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                queue.get(timeout=0.1)
            except Empty:
                pass
        thread.join()


@dataclass(frozen=True)
class FrameSpan:
    """``count`` frames at ``fps`` from ``start_s``, at most ``max_side`` pixels: what one ``iter_frames`` call
    with ``duration_s=count / fps`` yields, as one output of :func:`decode_spans`."""

    start_s: float
    count: int
    fps: float
    max_side: int | None = None


@dataclass(frozen=True)
class SpanInput:
    """One decode pass over ``path``: from the keyframe before its earliest span to its last needed frame, split
    into one branch per span (spans close together share the decoding of the frames between them)."""

    path: str
    probe: ProbeResult
    spans: tuple[FrameSpan, ...]


@dataclass(frozen=True)
class AudioSpan:
    """What one ``decode_audio(path, start_s=..., duration_s=..., sample_rate=...)`` call returns."""

    path: str
    start_s: float
    duration_s: float
    sample_rate: int = 16000


def decode_spans(
    inputs: list[SpanInput] | tuple[SpanInput, ...],
    audio: AudioSpan | None = None,
    *,
    threads: int | None = 1,
    timeout_s: float | None = None,
) -> tuple[list[list[np.ndarray]], np.ndarray | None]:
    """Several frame spans (of one or more files) and an audio window from ONE ffmpeg process, bit-identical to
    the ``iter_frames`` / ``decode_audio`` calls they stand for (the same filter chain per span, the same audio
    input options): per input, per span, a ``(count, H, W, 3)`` uint8 array (fewer frames when the video ends
    early: callers check), and the audio as ``decode_audio`` returns it (None without ``audio``). Each output
    has its own pipe, read as ffmpeg writes it, so no output can stall another. ``threads``: decoder threads per
    input (1: small frames decode faster in one thread than frame threads cost; the pictures do not depend on
    it). An ffmpeg start is ~0.07 s of CPU here, a large part of a small sample's cost: that is what this saves.

    Raises DecodeError (no video, a failing input: the whole call fails, callers retry without an optional
    input), MediaTimeoutError, ToolMissingError."""
    # Inputs that would open the same file at the same point are one input (ffmpeg-python also merges equal
    # nodes, which would need a split anyway): each branch below is what iter_frames builds for its span.
    sources: dict[tuple[str, str | None], list[tuple[int, int]]] = {}
    for i, item in enumerate(inputs):
        if not item.probe.has_video:
            raise DecodeError("no video stream to decode", path=str(item.path))
        for span in item.spans:
            _check_span(span.start_s, span.count / span.fps)
        seek_s = max(0.0, min(span.start_s for span in item.spans) - _SEEK_LEAD_S)
        key = (_source(item.path), f"{seek_s:.6f}" if seek_s > 0 else None)
        sources.setdefault(key, []).extend((i, j) for j in range(len(item.spans)))
    branch_of: dict[tuple[int, int], Any] = {}
    for (source_path, seek), members in sources.items():
        input_args: dict[str, Any] = {"copyts": None, "start_at_zero": None}  # as iter_frames (see there)
        if threads is not None:
            input_args["threads"] = threads
        if seek is not None:
            input_args["ss"] = seek
        stream = ffmpeg.input(source_path, **input_args)["V:0"]
        if len(members) == 1:
            branch_of[members[0]] = stream
        else:
            split = stream.filter_multi_output("split", len(members))
            for k, member in enumerate(members):
                branch_of[member] = split[k]
    outputs: list[tuple[Any, dict[str, Any]]] = []
    shapes: list[tuple[int, int, int, int] | None] = []
    budget = 0.0
    for i, item in enumerate(inputs):
        for j, span in enumerate(item.spans):
            width, height = output_size(item.probe, span.max_side)
            video = (
                branch_of[i, j].filter("settb", "AVTB")
                .filter("setpts", f"PTS-{span.start_s + _PTS_SLACK_S:.6f}/TB")
                .filter("fps", fps=span.fps, start_time=0, round="up")
            )
            if (width, height) != (item.probe.width, item.probe.height):
                video = video.filter("scale", width, height, flags="area")
            frames = max(1, math.ceil(span.count / span.fps * span.fps - 1e-6))
            outputs.append((video, {"format": "rawvideo", "pix_fmt": "rgb24", "frames:v": frames}))
            shapes.append((span.count, height, width, 3))
            budget += _default_timeout(span.count / span.fps)
    if audio is not None:  # decode_audio's input options; -copyts (global) leaves its samples as they were
        _check_span(audio.start_s, audio.duration_s)
        audio_args: dict[str, Any] = {"ss": audio.start_s} if audio.start_s > 0 else {}
        audio_args["t"] = audio.duration_s
        stream = ffmpeg.input(_source(audio.path), **audio_args)["a:0"]
        outputs.append((stream, {"format": "s16le", "acodec": "pcm_s16le", "ac": 1, "ar": audio.sample_rate}))
        shapes.append(None)
        budget += _default_timeout(audio.duration_s)
    if not outputs:
        raise ValueError("decode_spans needs at least one span")
    label = str(inputs[0].path if inputs else audio.path)  # type: ignore[union-attr]
    budget = timeout_s if timeout_s is not None else budget
    data, returncode, stderr = _run_outputs(outputs, label, budget)
    if any(shape is None for shape in shapes) and returncode != 0 and any("matches no streams" in line
                                                                         for line in stderr):
        raise DecodeError("no audio stream to decode", path=str(audio.path))  # type: ignore[union-attr]
    _raise_for_failure(returncode, stderr, label, "decoding spans")
    results: list[np.ndarray] = []
    for raw, shape in zip(data, shapes, strict=True):
        if shape is None:
            results.append(np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0)
            continue
        frame_bytes = shape[1] * shape[2] * 3
        got = min(len(raw) // frame_bytes, shape[0])
        results.append(np.frombuffer(raw, dtype=np.uint8, count=got * frame_bytes).reshape(got, *shape[1:]))
    frames_out: list[list[np.ndarray]] = []
    position = 0
    for item in inputs:
        frames_out.append(results[position: position + len(item.spans)])
        position += len(item.spans)
    return frames_out, (results[-1] if audio is not None else None)


def _run_outputs(
    outputs: list[tuple[Any, dict[str, Any]]], path: str, budget_s: float
) -> tuple[list[bytes], int, list[str]]:
    """Run one ffmpeg with each output on its own pipe (fd 3, 4, ...); read them all as they fill."""
    pipes = [os.pipe() for _ in outputs]
    nodes = [ffmpeg.output(stream, f"pipe:{write}", **args) for (stream, args), (_, write) in zip(outputs, pipes,
                                                                                                  strict=True)]
    cmd = [FFMPEG, *_FFMPEG_GLOBAL, *ffmpeg.merge_outputs(*nodes).get_args()]
    try:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, pass_fds=[write for _, write in pipes])
        except FileNotFoundError as exc:
            raise _tool_missing(FFMPEG) from exc
        finally:
            for _, write in pipes:
                os.close(write)
        assert proc.stderr is not None
        stderr_fd = proc.stderr.fileno()
        chunks: dict[int, list[bytes]] = {read: [] for read, _ in pipes}
        chunks[stderr_fd] = []
        open_fds = set(chunks)
        remaining = budget_s
        try:
            while open_fds:
                began = time.monotonic()
                ready, _, _ = select.select(list(open_fds), [], [], max(remaining, 0.0))
                remaining -= time.monotonic() - began
                if not ready:
                    raise MediaTimeoutError(f"ffmpeg decode exceeded {budget_s:g} s", path=path)
                for fd in ready:
                    chunk = os.read(fd, 1 << 20)
                    if chunk:
                        chunks[fd].append(chunk)
                    else:
                        open_fds.discard(fd)
            returncode = proc.wait(timeout=max(remaining, 1.0))
        except subprocess.TimeoutExpired as exc:
            raise MediaTimeoutError(f"ffmpeg did not exit within {budget_s:g} s", path=path) from exc
        finally:
            _kill(proc)
            proc.stderr.close()
    finally:
        for read, _ in pipes:
            os.close(read)
    stderr = b"".join(chunks[stderr_fd]).decode("utf-8", "replace").splitlines()[-_STDERR_TAIL_LINES:]
    return [b"".join(chunks[read]) for read, _ in pipes], returncode, stderr


__all__ = [
    "AudioSpan",
    "FrameSpan",
    "ProbeResult",
    "SpanInput",
    "batches",
    "decode_audio",
    "decode_spans",
    "default_fps",
    "iter_frames",
    "output_size",
    "prefetch",
    "probe",
]
