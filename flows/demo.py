"""``make demo``: the whole curation flow on embedded defaults.

Input, in order: ``--input DIR``; the shared talking-head clips (``$MEGACTOR_ASSETS/videos``) when present;
otherwise a small set built here from the public-domain astronaut photo bundled with scikit-image, animated
with a slow zoom and given a generated speech-like track. The face model and SyncNet come from
``MEGACTOR_WEIGHTS_DIR`` or are fetched on first use; where SyncNet's weights cannot be had (offline), the demo
says so and runs without lip sync, leaving clips that pass everything else "pending"."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

from curation.settings import assets_dir


def _speechlike(seconds: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """Voiced harmonics with a syllable-rate envelope and pauses: voice activity detectors take it for speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    pauses = np.repeat(rng.random(int(seconds) + 1) > 0.2, rate)[: len(t)]
    return (0.3 * voice * syllables * pauses / np.max(np.abs(voice))).astype(np.float32)


def build_synthetic_inputs(directory: Path) -> Path:
    from skimage import data

    directory.mkdir(parents=True, exist_ok=True)
    image = directory / "astronaut.png"
    face = data.astronaut()[20:260, 130:330]  # Eileen Collins' face and shoulders, 240x200
    import imageio.v3 as iio  # shipped with scikit-image

    iio.imwrite(image, face)
    wav = directory / "speech.wav"
    pcm = (_speechlike(8.0) * 32767).astype("<i2")
    _write_wav(wav, pcm)

    def render(name: str, size: int, audio: bool) -> None:
        zoom = f"scale={size * 2}:-2,zoompan=z='1+0.0015*on':d=1:s={size}x{size}:fps=25,format=yuv420p"
        cmd = ["ffmpeg", "-v", "error", "-y", "-loop", "1", "-i", str(image)]
        cmd += ["-i", str(wav)] if audio else []
        cmd += ["-vf", zoom, "-t", "8", "-c:v", "libx264", "-preset", "veryfast"]
        cmd += ["-c:a", "aac", "-shortest"] if audio else ["-an"]
        subprocess.run([*cmd, str(directory / name)], check=True, timeout=300)

    render("astronaut_1280_speech.mp4", 1280, audio=True)  # face well over 600 px
    render("astronaut_480_speech.mp4", 480, audio=True)  # frame too small for the 600 px rule
    render("astronaut_720_noaudio.mp4", 720, audio=False)  # no audio stream
    image.unlink()
    wav.unlink()
    return directory


def _write_wav(path: Path, pcm: np.ndarray, rate: int = 16_000) -> None:
    import wave

    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", help="a folder of videos (default: shared clips, or a generated set)")
    parser.add_argument("--output", default="demo-out")
    args = parser.parse_args(argv)
    output = Path(args.output).resolve()
    if args.input:
        source = Path(args.input)
    elif assets_dir() and (assets_dir() / "videos").is_dir():
        source = assets_dir() / "videos"
    else:
        print("no shared clips found: building a small input set from scikit-image's astronaut photo")
        source = build_synthetic_inputs(output / "inputs")
    print(f"curating {source} -> {output}")
    from flows.cli import main as cli

    extra = [] if _syncnet_available() else ["--no-sync"]
    return cli(["curate", "--input", str(source), "--dataset", "demo", "--output", str(output), "--keep-server",
                *extra])


def _syncnet_available() -> bool:
    from curation import weights
    from curation.errors import WeightsMissingError

    try:
        weights.resolve("syncnet_v2")
        return True
    except WeightsMissingError as error:
        print(f"note: running without SyncNet ({error})")
        return False


if __name__ == "__main__":
    sys.exit(main())
