"""Small broken and awkward media files (and file-system entries), made with the ffmpeg CLI from one real clip.

Everything is derived from one 3 s, 320x240 encode (stream copies and byte cuts where possible, short ultrafast
re-encodes otherwise), so the whole set builds in a few seconds. The files exercise what public video throws at
the media layer and the lister: what must fail with a typed error, what must probe fine and be rejected later
by a gate, what must simply work, and what must be refused before anything reads it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

CLIP_S = 3.0
SIZE = (320, 240)  # not square, so a 90 degree rotation visibly swaps the display size
UNICODE_NAME = Path("dir with space") / "clip ñ 東京.mp4"


def _ffmpeg(*args: str | Path) -> None:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")


def _clockwise_rotation(path: Path) -> int:
    """Rotation as ffmpeg's autorotate applies it; read with ffprobe directly so the fixture does not
    depend on the code under test."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stream = json.loads(out)["streams"][0]
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            return int(-float(side["rotation"])) % 360
    return int(stream.get("tags", {}).get("rotate", 0)) % 360


def _rotate(src: Path, dst: Path, degrees_cw: int) -> None:
    """Stream-copy with rotation metadata. Writing the legacy ``rotate`` tag is the portable way, but its
    direction differs between ffmpeg versions (5.1 stores rotate=90 as a counter-clockwise matrix), and
    ffmpeg >= 7 prefers ``-display_rotation`` (counter-clockwise): try each until the file says ``degrees_cw``."""
    attempts = [
        ["-i", src, "-c", "copy", "-metadata:s:v:0", f"rotate={degrees_cw}", dst],
        ["-i", src, "-c", "copy", "-metadata:s:v:0", f"rotate={(360 - degrees_cw) % 360}", dst],
        ["-display_rotation", str(-degrees_cw), "-i", src, "-c", "copy", dst],
    ]
    for args in attempts:
        try:
            _ffmpeg(*args)
        except RuntimeError:
            continue
        if _clockwise_rotation(dst) == degrees_cw:
            return
    raise RuntimeError(f"this ffmpeg cannot write {degrees_cw} degree rotation metadata")


def _cut(src: Path, dst: Path, fraction: float) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])


def _flip_middle(src: Path, dst: Path, n_bytes: int = 4096) -> None:
    """Invert ``n_bytes`` from the middle of the file: in a moov-at-the-end MP4 that is the middle of the frame
    data, so the index is intact and probing succeeds while some frames are corrupt."""
    data = bytearray(src.read_bytes())
    start = len(data) // 2
    data[start:start + n_bytes] = bytes(b ^ 0xFF for b in data[start:start + n_bytes])
    dst.write_bytes(bytes(data))


def outside_root(directory: Path) -> Path:
    """The sibling directory ``make_bad_inputs`` puts the targets of its escaping symlinks in."""
    return directory.parent / f"{directory.name}_outside"


def make_bad_inputs(directory: Path, real_clip: Path) -> dict[str, Path]:
    """Build the set under ``directory`` from ``real_clip`` (which must have video and audio); the targets of the
    two escaping links go in the sibling ``outside_root(directory)``, outside the data root.

    Keys and what each file is:
      valid           3 s, 320x240 H.264 + AAC: the healthy baseline everything else is derived from
      truncated       ``valid`` cut to 40 % of its bytes; the moov atom (index, written last) is gone
      truncated_moov  a faststart copy (moov first) cut to 60 %: probes as 3 s, decoding hits the cut midway
      zero_byte       an empty file
      text_as_mp4     a text file named .mp4
      audio_only      AAC only, .mp4 name, no video stream
      no_audio        video only
      silent_audio    video + an AAC stream of digital silence
      vfr             25 fps for the first second, then every third frame (nominal 25, average ~13 fps)
      rotated         ``valid`` with rotation metadata: 90 degrees clockwise, display size 240x320
      hevc            H.265 re-encode (left out when this ffmpeg has no libx265)
      unicode_path    ``valid`` under "dir with space/clip ñ 東京.mp4"
      bitflip         ``valid`` with 4 KiB inverted in the middle of the frame data (index intact)
      high10          10-bit H.264 (High 10, yuv420p10le); x265 Main 10 when this libx264 is 8-bit only
      one_frame       a single video frame, no audio
      under_half_s    ``valid`` cut to 0.4 s
      uhd_4k          1 s at 3840x2160 with audio
      webm            VP9 + Opus in WebM (left out when this ffmpeg has no libvpx-vp9 / libopus)
      avi             MJPEG + 16-bit PCM in AVI
      two_audio       video + the same AAC stream twice
      mp4_as_mov      ``valid`` named .mov
      mp4_as_mkv      ``valid`` (an MP4) named .mkv: the extension lies about the container
      dangling        a symlink to a file that does not exist
      dir_named_mp4   an empty directory named "dir.mp4"
      fifo            a named pipe named .mp4 (opening it for reading would block forever)
      unreadable      ``valid`` with mode 000 (still readable when the tests run as root)
      link_inside     a relative symlink to ``valid``, inside the root: must work like the file
      link_outside    an absolute symlink to a copy of ``valid`` outside the root (followed by default,
                      refused with ``follow_symlinks_outside_root=False``)
      link_dotdot     a relative symlink "../<dir>_outside/valid.mp4" that climbs out of the root: always
                      refused
    """
    directory.mkdir(parents=True, exist_ok=True)
    out = {name: directory / f"{name}.mp4" for name in ("valid", "truncated", "truncated_moov", "zero_byte")}
    width, height = SIZE
    _ffmpeg(
        "-t", CLIP_S, "-i", real_clip,
        "-map", "0:v:0", "-map", "0:a:0",
        "-vf", f"scale={width}:{height},setsar=1",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "64k", "-ac", "1",
        out["valid"],
    )  # fmt: skip
    _cut(out["valid"], out["truncated"], 0.40)
    faststart = directory / "faststart.mp4"
    _ffmpeg("-i", out["valid"], "-c", "copy", "-movflags", "+faststart", faststart)
    _cut(faststart, out["truncated_moov"], 0.60)
    faststart.unlink()
    out["zero_byte"].touch()

    out["text_as_mp4"] = directory / "text_as_mp4.mp4"
    out["text_as_mp4"].write_text("This is not a video, just text with a video extension.\n")

    out["audio_only"] = directory / "audio_only.mp4"
    _ffmpeg("-i", out["valid"], "-vn", "-c:a", "copy", out["audio_only"])
    out["no_audio"] = directory / "no_audio.mp4"
    _ffmpeg("-i", out["valid"], "-an", "-c:v", "copy", out["no_audio"])
    out["silent_audio"] = directory / "silent_audio.mp4"
    _ffmpeg(
        "-i", out["valid"], "-f", "lavfi", "-t", CLIP_S, "-i", "anullsrc=r=16000:cl=mono",
        "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-shortest", out["silent_audio"],
    )  # fmt: skip
    out["vfr"] = directory / "vfr.mp4"
    _ffmpeg(
        "-i", out["valid"], "-an", "-vf", "select='lt(t,1)+not(mod(n,3))'", "-vsync", "vfr",
        "-c:v", "libx264", "-preset", "ultrafast", out["vfr"],
    )  # fmt: skip
    out["rotated"] = directory / "rotated.mp4"
    _rotate(out["valid"], out["rotated"], 90)
    try:
        hevc = directory / "hevc.mp4"
        _ffmpeg(
            "-i", out["valid"], "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
            "-tag:v", "hvc1", "-c:a", "copy", hevc,
        )  # fmt: skip
        out["hevc"] = hevc
    except RuntimeError:
        pass  # no libx265 in this ffmpeg build; tests that need it skip
    out["unicode_path"] = directory / UNICODE_NAME
    out["unicode_path"].parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out["valid"], out["unicode_path"])
    _add_more(directory, out, real_clip)
    return out


def _add_more(directory: Path, out: dict[str, Path], real_clip: Path) -> None:
    valid = out["valid"]
    out["bitflip"] = directory / "bitflip.mp4"
    _flip_middle(valid, out["bitflip"])
    out["high10"] = directory / "high10.mp4"
    try:
        _ffmpeg("-i", valid, "-c:v", "libx264", "-preset", "ultrafast", "-profile:v", "high10",
                "-pix_fmt", "yuv420p10le", "-c:a", "copy", out["high10"])
    except RuntimeError:
        _ffmpeg("-i", valid, "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
                "-profile:v", "main10", "-pix_fmt", "yuv420p10le", "-tag:v", "hvc1", "-c:a", "copy",
                out["high10"])
    out["one_frame"] = directory / "one_frame.mp4"
    _ffmpeg("-i", valid, "-frames:v", "1", "-an", "-c:v", "libx264", "-preset", "ultrafast", out["one_frame"])
    out["under_half_s"] = directory / "under_half_s.mp4"
    _ffmpeg("-i", valid, "-t", "0.4", "-c", "copy", out["under_half_s"])
    out["uhd_4k"] = directory / "uhd_4k.mp4"
    _ffmpeg("-i", valid, "-t", "1", "-vf", "scale=3840:2160", "-c:v", "libx264", "-preset", "ultrafast",
            "-crf", "40", "-c:a", "copy", out["uhd_4k"])
    try:
        webm = directory / "vp9_opus.webm"
        _ffmpeg("-i", valid, "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k",
                "-c:a", "libopus", "-b:a", "32k", "-ar", "48000", webm)
        out["webm"] = webm
    except RuntimeError:
        pass  # no libvpx-vp9 or libopus in this ffmpeg build
    out["avi"] = directory / "mjpeg_pcm.avi"
    _ffmpeg("-i", valid, "-c:v", "mjpeg", "-q:v", "8", "-pix_fmt", "yuvj420p", "-c:a", "pcm_s16le",
            out["avi"])
    out["two_audio"] = directory / "two_audio.mp4"
    _ffmpeg("-i", valid, "-map", "0:v", "-map", "0:a", "-map", "0:a", "-c", "copy", out["two_audio"])
    out["mp4_as_mov"] = directory / "mp4_as_mov.mov"
    shutil.copyfile(valid, out["mp4_as_mov"])
    out["mp4_as_mkv"] = directory / "mp4_as_mkv.mkv"
    shutil.copyfile(valid, out["mp4_as_mkv"])

    out["dangling"] = directory / "dangling.mp4"
    out["dangling"].symlink_to(directory / "no-such-target.mp4")
    out["dir_named_mp4"] = directory / "dir.mp4"
    out["dir_named_mp4"].mkdir()
    out["fifo"] = directory / "fifo.mp4"
    os.mkfifo(out["fifo"])
    out["unreadable"] = directory / "unreadable.mp4"
    shutil.copyfile(valid, out["unreadable"])
    out["unreadable"].chmod(0)
    out["link_inside"] = directory / "link_inside.mp4"
    out["link_inside"].symlink_to(valid.name)
    outside = outside_root(directory)
    outside.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(valid, outside / "valid.mp4")
    out["link_outside"] = directory / "link_outside.mp4"
    out["link_outside"].symlink_to((outside / "valid.mp4").resolve())
    out["link_dotdot"] = directory / "link_dotdot.mp4"
    out["link_dotdot"].symlink_to(Path("..") / outside.name / "valid.mp4")
