"""curation.media on the shared clips and on generated bad inputs: facts that fail when the media layer lies."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from curation import media
from curation.errors import (
    DecodeError,
    EmptyFileError,
    MediaError,
    MediaTimeoutError,
    ProbeError,
    ToolMissingError,
)
from tests.curation.badinputs import make_bad_inputs


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> dict[str, Path]:
    return make_bad_inputs(tmp_path_factory.mktemp("bad"), videos_dir / "sadtalker_WDA_KatieHill_000.mp4")


def _probe(videos_dir: Path, name: str) -> tuple[Path, media.ProbeResult]:
    path = videos_dir / name
    return path, media.probe(path)


def _child_ffmpeg_pids() -> list[int]:
    """ffmpeg processes whose parent is this test process (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == os.getpid() and comm.startswith("ffmpeg"):
            pids.append(int(entry.name))
    return pids


# --- probe: facts of the shared clips ---------------------------------------------------------------------


def test_probe_h264_clip_with_audio(videos_dir: Path) -> None:
    _, p = _probe(videos_dir, "mimictalk_German_20s.mp4")
    assert p.has_video and p.video_codec == "h264"
    assert (p.width, p.height, p.rotation) == (512, 512, 0)
    assert p.fps_nominal == 25.0 and p.fps_avg == 25.0 and not p.vfr
    assert p.n_frames == 500
    assert p.duration_s == pytest.approx(20.024, abs=1e-3)  # the container's duration, not the video's 20.0
    assert p.has_audio and p.audio_codec == "aac"
    assert (p.audio_sample_rate, p.audio_channels) == (44100, 2)
    assert "mp4" in p.container


def test_probe_hevc_portrait(videos_dir: Path) -> None:
    _, p = _probe(videos_dir, "latentsync_demo1_video.mp4")
    assert p.video_codec == "hevc"
    assert (p.width, p.height) == (1080, 1920)


def test_probe_vfr_flag(videos_dir: Path) -> None:
    _, vfr = _probe(videos_dir, "vretalking_face_1.mp4")
    assert vfr.vfr
    assert vfr.fps_nominal == 30.0
    assert vfr.fps_avg == pytest.approx(22.13, abs=0.01)
    for cfr in ("mimictalk_German_20s.mp4", "w2lgfpgan_kim_7s_raw.mp4", "syncnet_example.avi"):
        assert not _probe(videos_dir, cfr)[1].vfr, cfr


@pytest.mark.parametrize("name", ["liveportrait_d0_noaudio.mp4", "musetalk_sun_noaudio.mp4"])
def test_probe_no_audio_stream(videos_dir: Path, name: str) -> None:
    _, p = _probe(videos_dir, name)
    assert p.has_video
    assert not p.has_audio
    assert p.audio_codec is None and p.audio_sample_rate is None and p.audio_channels is None


@pytest.mark.parametrize(
    ("name", "codec", "rate", "channels"),
    [
        ("sadtalker_WDA_KatieHill_000.mp4", "aac", 16000, 2),
        ("pcavs_pose_517600055.mp4", "aac", 16000, 1),
        ("syncnet_example.avi", "pcm_s16le", 16000, 1),
        ("w2lgfpgan_kim_7s_raw.mp4", "aac", 44100, 2),
    ],
)
def test_probe_audio_streams(videos_dir: Path, name: str, codec: str, rate: int, channels: int) -> None:
    _, p = _probe(videos_dir, name)
    assert (p.audio_codec, p.audio_sample_rate, p.audio_channels) == (codec, rate, channels)


def test_as_dict_is_flat_plain_values(videos_dir: Path) -> None:
    _, p = _probe(videos_dir, "vretalking_face_1.mp4")
    row = p.as_dict()
    assert set(row) == {
        "container", "duration_s", "bit_rate", "has_video", "video_codec", "width", "height",
        "coded_width", "coded_height", "rotation", "fps_avg", "fps_nominal", "vfr", "n_frames",
        "has_audio", "audio_codec", "audio_sample_rate", "audio_channels",
    }  # fmt: skip
    assert all(v is None or type(v) in (str, int, float, bool) for v in row.values()), row
    assert json.loads(json.dumps(row)) == row


# --- probe: bad inputs ------------------------------------------------------------------------------------


def test_probe_zero_byte(bad: dict[str, Path]) -> None:
    with pytest.raises(EmptyFileError) as info:
        media.probe(bad["zero_byte"])
    assert info.value.reason == "empty_file"


@pytest.mark.parametrize("key", ["truncated", "text_as_mp4"])
def test_probe_unreadable_reports_ffprobe_reason(bad: dict[str, Path], key: str) -> None:
    with pytest.raises(ProbeError, match="moov atom not found") as info:
        media.probe(bad[key])
    assert info.value.reason == "probe_failed"
    assert str(bad[key]) in str(info.value)


def test_probe_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match="cannot stat"):
        media.probe(tmp_path / "nope.mp4")


def test_probe_audio_only_is_a_result_not_an_error(bad: dict[str, Path]) -> None:
    p = media.probe(bad["audio_only"])
    assert not p.has_video and p.video_codec is None and p.width is None
    assert p.has_audio and p.duration_s == pytest.approx(3.0, abs=0.1)


def test_probe_generated_variants(bad: dict[str, Path]) -> None:
    assert not media.probe(bad["no_audio"]).has_audio
    assert media.probe(bad["silent_audio"]).has_audio
    vfr = media.probe(bad["vfr"])
    assert vfr.vfr and vfr.fps_nominal == 25.0 and vfr.fps_avg < 20
    assert not media.probe(bad["valid"]).vfr
    # A faststart file keeps its index up front: probing says nothing about the missing tail.
    assert media.probe(bad["truncated_moov"]).duration_s == pytest.approx(3.0, abs=0.05)


def test_probe_rotated_reports_display_size(bad: dict[str, Path]) -> None:
    p = media.probe(bad["rotated"])
    assert p.rotation == 90
    assert (p.coded_width, p.coded_height) == (320, 240)
    assert (p.width, p.height) == (240, 320)


def test_probe_hevc_bad_input(bad: dict[str, Path]) -> None:
    if "hevc" not in bad:
        pytest.skip("this ffmpeg has no libx265")
    assert media.probe(bad["hevc"]).video_codec == "hevc"


def test_awkward_names_work(bad: dict[str, Path], tmp_path: Path) -> None:
    # ffmpeg reads "-x.mp4" as an option and "talk: 1.mp4" as protocol "talk" unless given an absolute path.
    odd = [bad["unicode_path"], tmp_path / "-talk.mp4", tmp_path / "talk: 1.mp4"]
    for path in odd[1:]:
        path.write_bytes(bad["valid"].read_bytes())
    for path in odd:
        p = media.probe(path)
        assert p.duration_s == pytest.approx(3.0, abs=0.05)
        assert sum(1 for _ in media.iter_frames(path, p, duration_s=1.0)) == 25
        assert len(media.decode_audio(path)) == pytest.approx(48000, abs=400)
    relative = Path(os.path.relpath(odd[1], Path.cwd()))
    assert media.probe(relative).has_video


# --- output_size ------------------------------------------------------------------------------------------


def _sized(width: int, height: int) -> media.ProbeResult:
    return media.ProbeResult(
        container="mp4", duration_s=1.0, bit_rate=None, has_video=True, video_codec="h264",
        width=width, height=height, coded_width=width, coded_height=height, rotation=0,
        fps_avg=25.0, fps_nominal=25.0, vfr=False, n_frames=25,
        has_audio=False, audio_codec=None, audio_sample_rate=None, audio_channels=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((1920, 1080), 256, (256, 144)),
        ((1080, 1920), 256, (144, 256)),
        ((512, 512), None, (512, 512)),
        ((512, 512), 1000, (512, 512)),  # never upscaled
        ((701, 701), None, (700, 700)),  # both even
        ((700, 525), 161, (160, 120)),  # odd max_side: still <= max_side and even
        ((1001, 3), 100, (100, 2)),
    ],
)
def test_output_size(size: tuple[int, int], max_side: int | None, expected: tuple[int, int]) -> None:
    assert media.output_size(_sized(*size), max_side) == expected


# --- iter_frames ------------------------------------------------------------------------------------------


def test_iter_frames_count_and_timestamps(videos_dir: Path) -> None:
    path, p = _probe(videos_dir, "mimictalk_German_20s.mp4")
    frames = list(media.iter_frames(path, p, start_s=2.0, duration_s=3.0, fps=10, max_side=160))
    assert len(frames) == 30
    assert [t for t, _ in frames] == pytest.approx([2.0 + k / 10 for k in range(30)])
    t0, first = frames[0]
    assert first.shape == (160, 160, 3) and first.dtype == np.uint8 and first.flags.c_contiguous


def test_iter_frames_whole_file_native_rate(videos_dir: Path) -> None:
    path, p = _probe(videos_dir, "sadtalker_WDA_KatieHill_000.mp4")
    frames = list(media.iter_frames(path, p, max_side=64))
    assert len(frames) == 200  # 8.0 s of video at 25 fps, although the container says 8.064 s
    assert frames[-1][0] == pytest.approx(199 / 25)


def test_iter_frames_vfr_is_resampled_to_constant_rate(videos_dir: Path) -> None:
    path, p = _probe(videos_dir, "vretalking_face_1.mp4")
    assert media.default_fps(p) == 30.0
    frames = list(media.iter_frames(path, p, max_side=64))
    assert len(frames) == 183  # 6.1 s at the nominal 30 fps, not the 135 stored frames
    times = np.array([t for t, _ in frames])
    assert np.allclose(np.diff(times), 1 / 30)


def test_default_fps_is_capped_at_30() -> None:
    p = _sized(64, 64)
    assert media.default_fps(p) == 25.0
    from dataclasses import replace

    assert media.default_fps(replace(p, fps_nominal=60.0, fps_avg=59.94)) == 30.0


def test_iter_frames_shape_with_max_side_portrait(videos_dir: Path) -> None:
    path, p = _probe(videos_dir, "latentsync_demo1_video.mp4")
    t, frame = next(iter(media.iter_frames(path, p, start_s=5.0, duration_s=0.2, max_side=256)))
    assert t == 5.0
    assert frame.shape == (256, 144, 3)


@pytest.mark.parametrize("name", ["syncnet_example.avi", "vretalking_face_1.mp4", "w2lgfpgan_kim_7s_raw.mp4"])
def test_span_frames_are_the_pictures_on_screen(videos_dir: Path, name: str) -> None:
    """Frame k of any span is the source picture on screen at start_s + k / fps: the same picture the full
    decode at the source's nominal rate shows at that instant (AVI's 1/25 s timebase, VFR, 30 fps)."""
    path, p = _probe(videos_dir, name)
    native_rate = p.fps_nominal
    native = [frame for _, frame in media.iter_frames(path, p, fps=native_rate, max_side=48)]
    for start_s, fps in [(1.02, 10.0), (2.0, 7.3), (0.6, None)]:
        span = list(media.iter_frames(path, p, start_s=start_s, duration_s=1.0, fps=fps, max_side=48))
        assert len(span) == math.ceil((fps or native_rate) - 1e-9)
        for t, frame in span:
            expected = native[math.floor((t + 1e-4) * native_rate)]
            assert np.array_equal(frame, expected), (start_s, fps, t)


def test_rotated_frames_are_in_display_orientation(bad: dict[str, Path]) -> None:
    upright = [f for _, f in media.iter_frames(bad["valid"], media.probe(bad["valid"]), duration_s=0.2)]
    rotated = [f for _, f in media.iter_frames(bad["rotated"], media.probe(bad["rotated"]), duration_s=0.2)]
    assert rotated[0].shape == (320, 240, 3)
    for a, b in zip(upright, rotated, strict=True):
        assert np.array_equal(np.rot90(a, k=-1), b)  # 90 degrees clockwise


def test_iter_frames_bad_inputs(bad: dict[str, Path]) -> None:
    with pytest.raises(DecodeError, match="no video stream"):
        media.iter_frames(bad["audio_only"], media.probe(bad["audio_only"]))
    assert sum(1 for _ in media.iter_frames(bad["no_audio"], media.probe(bad["no_audio"]))) == 75
    vfr = media.probe(bad["vfr"])
    assert sum(1 for _ in media.iter_frames(bad["vfr"], vfr)) == 73  # 2.92 s at the nominal 25 fps
    if "hevc" in bad:
        assert sum(1 for _ in media.iter_frames(bad["hevc"], media.probe(bad["hevc"]))) == 75


def test_truncated_with_index_fails_midway(bad: dict[str, Path]) -> None:
    path = bad["truncated_moov"]
    p = media.probe(path)
    got = 0
    with pytest.raises(DecodeError, match="after \\d+ frames") as info:
        for _ in media.iter_frames(path, p):
            got += 1
    assert 0 < got < 75  # the frames before the cut arrive, then the error
    assert info.value.reason == "decode_failed"
    # A span that ends before the cut is intact.
    assert sum(1 for _ in media.iter_frames(path, p, duration_s=1.0)) == 25


def test_span_without_frames_is_an_error(videos_dir: Path) -> None:
    path, p = _probe(videos_dir, "pcavs_pose_517600055.mp4")
    with pytest.raises(DecodeError, match="no frames decoded from 10 s"):
        list(media.iter_frames(path, p, start_s=10.0, duration_s=1.0))
    # The container (4.544 s, audio included) outlasts the video (4.48 s): the tail has no picture.
    assert len(list(media.iter_frames(path, p, start_s=4.4, duration_s=0.144))) == 2


def test_iter_frames_argument_errors(videos_dir: Path) -> None:
    path, p = _probe(videos_dir, "pcavs_pose_517600055.mp4")
    with pytest.raises(ValueError):
        media.iter_frames(path, p, start_s=-1.0)
    with pytest.raises(ValueError):
        media.iter_frames(path, p, duration_s=0.0)
    with pytest.raises(ValueError):
        media.iter_frames(path, p, fps=0.0)


def test_iter_frames_timeout_kills_ffmpeg(tmp_path: Path, bad: dict[str, Path]) -> None:
    # A FIFO nobody writes to blocks ffmpeg like a stalled network mount does.
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)
    began = time.monotonic()
    with pytest.raises(MediaTimeoutError):
        list(media.iter_frames(fifo, media.probe(bad["valid"]), timeout_s=0.5))
    assert time.monotonic() - began < 5
    assert _child_ffmpeg_pids() == []


def test_probe_and_audio_timeouts(tmp_path: Path) -> None:
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)
    with pytest.raises(MediaTimeoutError) as info:
        media.probe(fifo, timeout_s=0.3)
    assert info.value.reason == "media_timeout"
    with pytest.raises(MediaTimeoutError):
        media.decode_audio(fifo, timeout_s=0.3)


def test_slow_consumer_does_not_count_against_the_timeout(bad: dict[str, Path]) -> None:
    p = media.probe(bad["valid"])
    frames = 0
    for _ in media.iter_frames(bad["valid"], p, duration_s=1.0, max_side=64, timeout_s=0.5):
        time.sleep(0.03)  # 25 frames x 30 ms: the consumer alone takes longer than the budget
        frames += 1
    assert frames == 25


def test_early_close_leaves_no_ffmpeg(videos_dir: Path) -> None:
    path, p = _probe(videos_dir, "derived_katiehill_upscaled_1280.mp4")
    frames = media.iter_frames(path, p)
    next(frames)
    running = _child_ffmpeg_pids()
    assert len(running) == 1
    frames.close()
    assert _child_ffmpeg_pids() == []
    assert not Path(f"/proc/{running[0]}").exists()  # killed and reaped, not a zombie


def test_break_out_of_loop_leaves_no_ffmpeg(videos_dir: Path) -> None:
    path, p = _probe(videos_dir, "mimictalk_German_20s.mp4")
    for k, _ in enumerate(media.iter_frames(path, p)):
        if k == 3:
            break
    assert _child_ffmpeg_pids() == []  # CPython closes the abandoned generator at once


def test_tools_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bad: dict[str, Path]) -> None:
    p = media.probe(bad["valid"])
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissingError, match="install"):
        media.probe(bad["valid"])
    with pytest.raises(ToolMissingError, match="apt-get install ffmpeg"):
        next(iter(media.iter_frames(bad["valid"], p)))
    with pytest.raises(ToolMissingError):
        media.decode_audio(bad["valid"])
    assert not issubclass(ToolMissingError, MediaError)  # not data about one input: the install is broken


# --- decode_audio -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["mimictalk_German_20s.mp4", "syncnet_example.avi", "pcavs_pose_517600055.mp4"]
)
def test_decode_audio_length_and_range(videos_dir: Path, name: str) -> None:
    path, p = _probe(videos_dir, name)
    audio = media.decode_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) / 16000 == pytest.approx(p.duration_s, abs=0.08)
    assert 0.1 < np.abs(audio).max() <= 1.0  # speech, scaled into [-1, 1]


def test_decode_audio_span(videos_dir: Path) -> None:
    path, _ = _probe(videos_dir, "syncnet_example.avi")
    full = media.decode_audio(path)
    span = media.decode_audio(path, start_s=1.0, duration_s=2.0)
    assert len(span) == 32000
    assert np.allclose(span, full[16000:48000], atol=1e-4)  # 16 kHz PCM source: sample-exact seek
    assert len(media.decode_audio(path, duration_s=1.0, sample_rate=8000)) == 8000


def test_decode_audio_silence_and_missing(videos_dir: Path, bad: dict[str, Path]) -> None:
    silent = media.decode_audio(videos_dir / "liveportrait_d3_silenttrack.mp4")
    assert len(silent) > 16000 * 11 and np.abs(silent).max() < 1e-3
    assert np.abs(media.decode_audio(bad["silent_audio"])).max() == 0.0
    for no_audio in (videos_dir / "liveportrait_d0_noaudio.mp4", bad["no_audio"]):
        with pytest.raises(DecodeError, match="no audio stream"):
            media.decode_audio(no_audio)


def test_decode_audio_of_truncated_file_fails(bad: dict[str, Path]) -> None:
    # The audio track just ends early with exit code 0; only the demuxer's "partial file" tells.
    with pytest.raises(DecodeError, match="truncated"):
        media.decode_audio(bad["truncated_moov"])
    assert len(media.decode_audio(bad["audio_only"])) == pytest.approx(48000, abs=400)


def test_prefetch_keeps_order_reraises_and_closes_the_source_when_stopped_early():
    from curation.media import prefetch

    def failing():
        yield from range(50)
        raise ValueError("decoder died")

    seen = []
    with pytest.raises(ValueError, match="decoder died"):
        for item in prefetch(failing(), depth=4):
            seen.append(item)
    assert seen == list(range(50))

    closed = []

    def endless():
        try:
            yield from range(10**9)
        finally:
            closed.append(True)

    for item in prefetch(endless(), depth=2):
        if item == 5:
            break
    assert closed == [True]
