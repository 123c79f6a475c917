"""In-process decoding with PyAV (FFmpeg's libraries, bundled in the ``av`` wheel): the frame spans and the audio
window that ``curation.media.decode_spans`` returns from an ffmpeg process, without starting one.

Why: an ffmpeg start costs ~0.07 core-s before it reads a byte, and a training sample is a few spans of a few
frames each. Here the containers stay open per thread (a small LRU keyed by path; a forked worker opens its own),
a span seeks to the keyframe before it and skips the frames nothing refers to (``skip_frame = NONREF``) until the
first picture it may need, and only the needed pictures are converted to RGB.

Same pictures, same choice of frames: frame k of a span is the picture ``media.iter_frames`` puts there (its
``settb``/``setpts``/``fps`` chain, reproduced in integer and double arithmetic below: the last picture whose
rounded-up slot is <= k, the first one repeated when the video starts late, the last one held until the end of
its duration), scaled with the same ``area`` filter to the same size. The decoders and the scaler are those of
the wheel's FFmpeg, not of the ffmpeg on PATH: ``tests/training/test_loader_pyav.py`` checks the pixels against
the ffmpeg path. Rotated videos are not handled here (callers use the ffmpeg path for them: ``supports``).

Audio: decoded at the source rate (a fresh decoder per window: AAC's noise substitution keeps generator state
across seeks), from half a second before the window (the first frame after a seek lacks its predecessor's MDCT
overlap), cut on sample timestamps (ffmpeg's input ``-ss``/``-t``), then downmixed and resampled to mono s16
with libswresample, as ``media.decode_audio``'s command does. The same samples within 2e-4 (a few 16-bit steps)
but in the window's first ~1100 output samples, where the ffmpeg path decodes without that overlap and differs
from a decode from the file start by up to ~0.45 on the shared clips (``tests/training/test_loader_pyav.py``).

Prefect-free (training and inference import it). Raises ``curation.errors.DecodeError`` for anything the input
does wrong (missing, unreadable, truncated before the frames asked for, corrupt packet).
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from curation import media
from curation.errors import DecodeError

try:  # optional: the train extra installs it; callers check ``available()``
    import av
except ImportError:  # pragma: no cover - exercised only without the extra
    av = None

AV_TIME_BASE = 1_000_000
_SEEK_LEAD_S = 1.0  # media.iter_frames': decoding starts at the keyframe before start_s - 1 s
_PTS_SLACK_S = 0.001
_AUDIO_PREROLL_S = 0.5  # longer than any audio frame (AAC: 1024 samples, 128 ms at 8 kHz)
MAX_OPEN = 8
_REORDER_DEPTH = 16  # packets read ahead: more than any picture's delay from decode to display order  # open containers kept per process


def available() -> bool:
    return av is not None


def supports(probe: media.ProbeResult) -> bool:
    """Whether this module decodes ``probe``'s video as the ffmpeg path does (not rotated: ffmpeg autorotates)."""
    return av is not None and probe.has_video and not probe.rotation


# -- open containers, per process and thread ---------------------------------------------------------------
class _Open(threading.local):
    """This thread's open containers and scaling graphs (the trainer decodes in threads: a container, its
    decoder and a filter graph serve one thread at a time). ``pid``: a forked child starts afresh."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.items: OrderedDict[str, Any] = OrderedDict()
        self.graphs: dict[tuple[int, int, str, int, int], Any] = {}


_local = _Open()


def _state() -> _Open:
    if _local.pid != os.getpid():
        # Forked: the parent's containers share its file offsets, so they are never used here; nor closed or
        # freed (their deallocation can wait on a lock some parent thread held at the fork): kept, untouched.
        _inherited.append((_local.items, _local.graphs))
        _local.pid, _local.items, _local.graphs = os.getpid(), OrderedDict(), {}
    return _local


_inherited: list[Any] = []


def _container(path: str) -> Any:
    """The open container of ``path`` in this thread (opened on first use)."""
    state = _state()
    container = state.items.get(path)
    if container is not None:
        state.items.move_to_end(path)
        return container
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError) as exc:
        raise DecodeError(f"cannot open: {exc}", path=path) from exc
    for stream in container.streams.video:  # one thread: small frames decode faster alone (as media's -threads 1)
        stream.codec_context.thread_type = "SLICE"
        stream.codec_context.thread_count = 1
    state.items[path] = container
    while len(state.items) > MAX_OPEN:
        _, old = state.items.popitem(last=False)
        old.close()
    return container


def _forget(path: str) -> None:
    """Close ``path`` after an error: its demuxer and decoder state are not to be trusted."""
    container = _state().items.pop(path, None)
    if container is not None:
        try:
            container.close()
        except Exception:  # noqa: BLE001 - closing a broken container must not hide the first error
            pass


def close_all() -> None:
    """Close this thread's containers (tests; a long-lived thread that is done with its files)."""
    for path in list(_state().items):
        _forget(path)


# -- the fps filter's choice of frames ---------------------------------------------------------------------
def _rescale(a: int, b: int, c: int, up: bool) -> int:
    """av_rescale_rnd(a, b, c) with AV_ROUND_NEAR_INF (``up`` False) or AV_ROUND_UP (exact ceil)."""
    if up:
        return -((-a * b) // c)
    if a < 0:
        return -((-a * b + c // 2) // c)
    return (a * b + c // 2) // c


@dataclass
class _Slots:
    """One span's fps filter: ``count`` output slots at ``rate`` from ``start_s``; fed frames in display order."""

    start_s: float
    count: int
    rate: Fraction
    size: tuple[int, int]  # width, height the ffmpeg path outputs
    scale: bool  # whether it scales (the explicit ``scale`` filter) or only converts

    def __post_init__(self) -> None:
        self.offset = float(f"{self.start_s + _PTS_SLACK_S:.6f}") / (1 / AV_TIME_BASE)  # setpts' double
        self.frames: list[Any] = []  # chosen VideoFrame per slot
        self.pending: Any = None

    def slot(self, pts_us: int) -> int:
        shifted = int(pts_us - self.offset)  # setpts: D2TS truncates
        return _rescale(shifted, self.rate.numerator, AV_TIME_BASE * self.rate.denominator, up=True)

    @property
    def done(self) -> bool:
        return len(self.frames) >= self.count

    def feed(self, frame: Any, pts_us: int) -> None:
        if self.done:
            return
        if self.pending is not None:
            slot = self.slot(pts_us)
            while len(self.frames) < self.count and slot > len(self.frames):
                self.frames.append(self.pending)
        self.pending = frame

    def finish(self, eof_us: int | None) -> None:
        """End of stream: the last picture is held for the slots before its end (fps' ``eof_action=round``)."""
        if self.pending is None or self.done:
            return
        end = self.slot(eof_us) if eof_us is not None else len(self.frames) + 1
        while len(self.frames) < self.count and len(self.frames) < end:
            self.frames.append(self.pending)


def _ffmpeg_rate(fps: float) -> Fraction:
    """The rational ffmpeg makes of ``fps=...`` (av_parse_video_rate: av_d2q with a 1001000 bound)."""
    return Fraction(fps).limit_denominator(1001000)


# -- video --------------------------------------------------------------------------------------------------
def decode_spans(path: str, probe: media.ProbeResult, spans: Sequence[media.FrameSpan], *,
                 skip_nonref: bool = True) -> list[np.ndarray]:
    """Per span, a ``(n, H, W, 3)`` uint8 array: what ``media.iter_frames`` (or ``media.decode_spans``) yields
    for it, from one decode pass from the keyframe before the earliest span (n < count when the video ends
    early: callers check). ``skip_nonref``: skip the pictures no other picture refers to before the first one
    the spans may need (exact: nothing depends on them)."""
    if not probe.has_video:
        raise DecodeError("no video stream to decode", path=str(path))
    if not supports(probe):
        raise DecodeError("rotated video: decode it with the ffmpeg path", path=str(path))
    path = media._source(path)
    slots = []
    for span in spans:
        media._check_span(span.start_s, span.count / span.fps)
        width, height = media.output_size(probe, span.max_side)
        slots.append(_Slots(span.start_s, span.count, _ffmpeg_rate(span.fps), (width, height),
                            (width, height) != (probe.width, probe.height)))
    try:
        _decode_into(path, slots, skip_nonref)
    except DecodeError:
        _forget(path)
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        _forget(path)
        raise DecodeError(f"decoding failed: {exc}", path=path) from exc
    out = []
    converted: dict[tuple[int, int, int, bool], np.ndarray] = {}
    for s in slots:
        width, height = s.size
        array = np.empty((len(s.frames), height, width, 3), dtype=np.uint8)
        for n, frame in enumerate(s.frames):
            key = (id(frame), width, height, s.scale)
            picture = converted.get(key)
            if picture is None:
                picture = _rgb(frame, width, height, s.scale)
                converted[key] = picture
            array[n] = picture
        out.append(array)
    return out


def _rgb(frame: Any, width: int, height: int, scale: bool) -> np.ndarray:
    """The ffmpeg path's conversion: its ``scale=W:H:flags=area`` filter to rgb24 (the same libavfilter filter,
    in a graph kept per size: PyAV's own reformat gives other pixels), or, unscaled, the converter ffmpeg
    inserts (the plain swscale conversion)."""
    if not scale:
        return frame.to_ndarray(format="rgb24")
    graphs = _state().graphs
    key = (frame.width, frame.height, frame.format.name, width, height)
    graph = graphs.get(key)
    if graph is None:
        graph = av.filter.Graph()
        source = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                                  time_base=Fraction(1, AV_TIME_BASE))
        chain = [source, graph.add("scale", f"{width}:{height}:flags=area"), graph.add("format", "rgb24"),
                 graph.add("buffersink")]
        for a, b in zip(chain[:-1], chain[1:], strict=True):
            a.link_to(b)
        graph.configure()
        if len(graphs) >= 16:
            graphs.clear()
        graphs[key] = graph
    graph.push(frame)
    return graph.pull().to_ndarray()


def _decode_into(path: str, slots: list[_Slots], skip_nonref: bool) -> None:
    container = _container(path)
    streams = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not streams:
        raise DecodeError("no video stream to decode", path=path)
    stream = streams[0]
    codec = stream.codec_context
    tb = stream.time_base
    start_us = container.start_time or 0  # -copyts -start_at_zero: file time, the container's start at 0
    seek_s = max(0.0, min(s.start_s for s in slots) - _SEEK_LEAD_S)
    seek_us = int(round(seek_s * AV_TIME_BASE))
    trim_pts = _rescale(seek_us, tb.denominator, AV_TIME_BASE * tb.numerator, up=False) if seek_s > 0 else None
    offset_pts = _rescale(-start_us, tb.denominator, AV_TIME_BASE * tb.numerator, up=False)
    container.seek(seek_us + start_us, backward=True, any_frame=False)
    last: tuple[int, int | None] | None = None  # pts_us and duration (stream tb) of the last picture seen

    def take(frame: Any) -> bool:
        nonlocal last
        pts = frame.pts
        if pts is None:
            return False
        pts += offset_pts
        if trim_pts is not None and pts < trim_pts:  # ffmpeg's accurate-seek trim
            return False
        pts_us = _rescale(pts * tb.numerator, AV_TIME_BASE, tb.denominator, up=False)  # settb=AVTB
        last = (pts_us, pts, frame.duration)
        for s in slots:
            s.feed(frame, pts_us)
        return all(s.done for s in slots)

    def unneeded(pts: int, successor: int | None) -> bool:
        """Whether no span can output the picture at ``pts`` (stream tb, shifted): trimmed, or followed by a
        picture in the same slot (the fps filter keeps the last one per slot) of every span still filling."""
        if trim_pts is not None and pts < trim_pts:
            return True
        if successor is None:
            return False
        now = _rescale(pts * tb.numerator, AV_TIME_BASE, tb.denominator, up=False)
        then = _rescale(successor * tb.numerator, AV_TIME_BASE, tb.denominator, up=False)
        return all(s.done or s.slot(then) <= max(s.slot(now), 0) for s in slots)

    # Packets come in decode order; a picture's successor in display order is among the next few packets (the
    # reorder depth: at most 16 pictures in H.264), so a lookahead of that many packets tells it exactly.
    packets = container.demux(stream)
    ahead: deque[Any] = deque()
    seen: list[int] = []  # pts of the packets read so far (shifted), sorted
    exhausted = False
    finished = False
    try:
        while not finished:
            while not exhausted and len(ahead) <= _REORDER_DEPTH:
                packet = next(packets, None)
                if packet is None or (packet.size == 0 and packet.pts is None):
                    exhausted = True
                    break
                ahead.append(packet)
                if packet.pts is not None:
                    bisect.insort(seen, packet.pts + offset_pts)
            if not ahead:
                codec.skip_frame = "DEFAULT"
                for frame in codec.decode(None):  # the pictures the decoder still holds
                    if take(frame):
                        finished = True
                        break
                break
            packet = ahead.popleft()
            skip = False
            if skip_nonref and packet.pts is not None:
                pts = packet.pts + offset_pts
                at = bisect.bisect_right(seen, pts)
                skip = unneeded(pts, seen[at] if at < len(seen) else None)
            codec.skip_frame = "NONREF" if skip else "DEFAULT"  # a referenced picture is decoded regardless
            for frame in codec.decode(packet):
                if take(frame):
                    finished = True
                    break
    finally:
        codec.skip_frame = "DEFAULT"
    if not finished:
        eof_us = None
        if last is not None:
            pts_us, pts, duration = last
            if not duration and stream.guessed_rate:
                duration = int(round(1 / (stream.guessed_rate * tb)))
            eof_us = _rescale((pts + (duration or 0)) * tb.numerator, AV_TIME_BASE, tb.denominator, up=False)
        for s in slots:
            s.finish(eof_us)


# -- audio --------------------------------------------------------------------------------------------------
def decode_audio(path: str, *, start_s: float = 0.0, duration_s: float | None = None,
                 sample_rate: int = 16000) -> np.ndarray:
    """``media.decode_audio``'s float32 mono samples at ``sample_rate`` (see the module's note on the window's
    first audio frame): the window is cut on sample timestamps at the source rate, then downmixed and
    resampled."""
    media._check_span(start_s, duration_s)
    path = media._source(path)
    try:
        return _decode_audio(path, start_s, duration_s, sample_rate)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DecodeError(f"audio decoding failed: {exc}", path=path) from exc


def _decode_audio(path: str, start_s: float, duration_s: float | None, sample_rate: int) -> np.ndarray:
    # A fresh container (~2 ms) rather than a kept one: an AAC decoder's noise generator (PNS) carries its state
    # across seeks, which would make a window's last bits depend on what this decoder decoded before.
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError) as exc:
        raise DecodeError(f"cannot open: {exc}", path=path) from exc
    with container:
        return _decode_audio_from(container, path, start_s, duration_s, sample_rate)


def _decode_audio_from(container: Any, path: str, start_s: float, duration_s: float | None,
                       sample_rate: int) -> np.ndarray:
    if not container.streams.audio:
        raise DecodeError("no audio stream to decode", path=path)
    stream = container.streams.audio[0]
    codec = stream.codec_context
    start_us = container.start_time or 0
    # Pre-roll: the first frame decoded after a seek lacks its predecessor's overlap (AAC's MDCT), so decoding
    # starts _AUDIO_PREROLL_S early and that frame falls before the window.
    seek_s = max(0.0, start_s - _AUDIO_PREROLL_S)
    container.seek(int(round(seek_s * AV_TIME_BASE)) + start_us, backward=True, any_frame=False)
    codec.flush_buffers()
    rate = codec.sample_rate
    first = _rescale(int(round(start_s * AV_TIME_BASE)), rate, AV_TIME_BASE, up=False)
    end = None if duration_s is None else first + _rescale(int(round(duration_s * AV_TIME_BASE)), rate,
                                                           AV_TIME_BASE, up=False)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    offset = _rescale(-start_us, stream.time_base.denominator, AV_TIME_BASE * stream.time_base.numerator, up=False)
    done = False

    def cut(frame: Any) -> Any | None:
        nonlocal done
        if frame.pts is None:
            return None
        at = _rescale((frame.pts + offset) * stream.time_base.numerator, rate, stream.time_base.denominator,
                      up=False)
        lo, hi = max(first - at, 0), frame.samples if end is None else min(end - at, frame.samples)
        if end is not None and at + frame.samples >= end:
            done = True
        if hi <= lo:
            return None
        if (lo, hi) == (0, frame.samples):
            return frame
        array = frame.to_ndarray()
        piece = array[..., lo:hi] if frame.format.is_planar else array[:, lo * len(frame.layout.channels):
                                                                         hi * len(frame.layout.channels)]
        out = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format=frame.format.name,
                                         layout=frame.layout.name)
        out.sample_rate = rate
        out.pts = None
        return out

    for packet in container.demux(stream):
        for frame in codec.decode(packet):
            piece = cut(frame)
            if piece is not None:
                for resampled in resampler.resample(piece):
                    chunks.append(resampled.to_ndarray().reshape(-1))
            if done:
                break
        if done:
            break
    for resampled in resampler.resample(None):
        chunks.append(resampled.to_ndarray().reshape(-1))
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return samples.astype(np.float32) / 32768.0


__all__ = ["MAX_OPEN", "available", "close_all", "decode_audio", "decode_spans", "supports"]
