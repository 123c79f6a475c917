"""The weights registry: every model file the project uses, where it officially comes from, its checksum and
licence; a cache directory (``MEGACTOR_WEIGHTS_DIR``); a resumable, verified fetch.

A file is looked up as ``<weights dir>/<relpath>``, then in the air-gapped mirror ``MEGACTOR_WEIGHTS_MIRROR``
(same layout) if set. A missing or corrupt file raises :class:`WeightsMissingError` naming the fetch command."""

from __future__ import annotations

import functools
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from curation.errors import WeightsMissingError
from curation.settings import weights_dir


@dataclass(frozen=True)
class WeightSpec:
    name: str
    relpath: str
    urls: tuple[str, ...]
    sha256: str
    size_bytes: int
    licence: str
    description: str
    auto_fetch: bool = False  # small files may be fetched on first use; large ones only by the fetch command


REGISTRY: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        WeightSpec(
            name="face_landmarker",
            relpath="mediapipe/face_landmarker.task",
            urls=(
                "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/"
                "face_landmarker.task",
            ),
            sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
            size_bytes=3_758_596,
            licence="Apache-2.0",
            description="MediaPipe Face Landmarker (face detector + 478 landmarks + transformation matrix)",
            auto_fetch=True,
        ),
        WeightSpec(
            name="yolox_l",
            relpath="dwpose/yolox_l.onnx",
            # DWPose ships Megvii's YOLOX-L release asset unchanged (same sha256)
            urls=(
                "https://huggingface.co/yzd-v/DWPose/resolve/main/yolox_l.onnx",
                "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_l.onnx",
            ),
            sha256="7860ae79de6c89a3c1eb72ae9a2756c0ccfbe04b7791bb5880afabd97855a411",
            size_bytes=216_746_733,
            licence="Apache-2.0",
            description="YOLOX-L person detector (DWPose's first stage; paper profile)",
        ),
        WeightSpec(
            name="dw-ll_ucoco_384",
            relpath="dwpose/dw-ll_ucoco_384.onnx",
            urls=("https://huggingface.co/yzd-v/DWPose/resolve/main/dw-ll_ucoco_384.onnx",),
            sha256="724f4ff2439ed61afb86fb8a1951ec39c6220682803b4a8bd4f598cd913b1843",
            size_bytes=134_399_116,
            licence="Apache-2.0",
            description="DWPose-L COCO-WholeBody 133 keypoints, 288x384 (paper profile face box and landmarks)",
        ),
        WeightSpec(
            name="syncnet_v2",
            relpath="syncnet/syncnet_v2.model",
            urls=(
                "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
                "https://huggingface.co/chunyu-li/LatentSync/resolve/main/auxiliary/syncnet_v2.model",
            ),
            sha256="961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442",
            size_bytes=54_573_114,
            licence="MIT (joonson/syncnet_python)",
            description="SyncNet reference weights (Sync-C / Sync-D / AV offset; both profiles)",
            auto_fetch=True,
        ),
        WeightSpec(
            name="sd-vae-ft-ema",
            relpath="vae/sd-vae-ft-ema/diffusion_pytorch_model.safetensors",
            urls=(
                "https://huggingface.co/stabilityai/sd-vae-ft-ema/resolve/f04b2c4b98319346dad8c65879f680b1997b204a/"
                "diffusion_pytorch_model.safetensors",
            ),
            sha256="32db726da04f06c1b6b14c0043ce115cc87a501482945c5add89a40d838fcb46",
            size_bytes=334_643_276,
            licence="MIT",
            description="Stable Diffusion VAE (ft-EMA), the latent space PixArt-alpha was trained in (training)",
        ),
        WeightSpec(
            name="whisper-tiny",
            relpath="whisper/whisper-tiny/model.safetensors",
            urls=(
                "https://huggingface.co/openai/whisper-tiny/resolve/169d4a4341b33bc18d8881c4b69c2e104e1cc0af/"
                "model.safetensors",
            ),
            sha256="7ebd0e69e78190ffe1438491fa05cc1f5c1aa3a4c4db3bc1723adbb551ea2395",
            size_bytes=151_061_672,
            licence="Apache-2.0",
            description="Whisper tiny, frozen audio encoder for the audio attention layers (training)",
        ),
        WeightSpec(
            name="inswapper_128",
            relpath="insightface/inswapper_128.onnx",
            urls=(
                "https://huggingface.co/deepinsight/inswapper/resolve/main/inswapper_128.onnx",
                "https://github.com/facefusion/facefusion-assets/releases/download/models/inswapper_128.onnx",
            ),
            sha256="e4a3f08c753cb72d04e10aa0f7dbe3deebbf39567d4ead6dce08e98aa49e16af",
            size_bytes=554_253_681,
            licence="InsightFace models: non-commercial research only",
            description="InsightFace face swapper (face-swap augmentation of driving videos)",
        ),
    )
}


def fetch_command(name: str) -> str:
    return f"megactor weights fetch {name}"


def get_spec(name: str) -> WeightSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsMissingError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _candidates(spec: WeightSpec) -> list[Path]:
    paths = [weights_dir() / spec.relpath]
    mirror = os.environ.get("MEGACTOR_WEIGHTS_MIRROR")
    if mirror:
        paths.append(Path(mirror).expanduser() / spec.relpath)
    return paths


def status(name: str) -> tuple[str, Path]:
    """``("ok" | "missing" | "corrupt", path)`` for a registered model, without downloading."""
    spec = get_spec(name)
    for path in _candidates(spec):
        if path.is_file():
            return ("ok" if sha256_file(path) == spec.sha256 else "corrupt"), path
    return "missing", _candidates(spec)[0]


def resolve(name: str, *, allow_fetch: bool | None = None) -> Path:
    """The verified local path of a model. Small models marked ``auto_fetch`` are downloaded on first use
    unless ``MEGACTOR_OFFLINE=1``."""
    spec = get_spec(name)
    state, path = status(name)
    if state == "ok":
        return path
    if state == "corrupt":
        raise WeightsMissingError(
            f"{path} does not match the registered sha256 of {name} ({spec.sha256[:12]}...): delete it and run "
            f"`{fetch_command(name)}`"
        )
    if allow_fetch is None:
        allow_fetch = spec.auto_fetch and os.environ.get("MEGACTOR_OFFLINE", "") not in ("1", "true")
    if allow_fetch:
        try:
            return fetch(name, progress=False)
        except WeightsMissingError as error:
            raise WeightsMissingError(f"{name} is missing and could not be fetched: {error}") from None
    raise WeightsMissingError(
        f"model {name} not found at {path}. Run `{fetch_command(name)}`, or set MEGACTOR_WEIGHTS_DIR to a "
        f"directory holding {spec.relpath}"
    )


def resolve_or_local(name: str, local: Path | None) -> Path:
    """``local`` when a config names a file in place of the registry's (it must exist; its checksum is not
    checked but recorded), else the registry's verified file for ``name``."""
    if local is None:
        return resolve(name)
    local = Path(local).expanduser()
    if not local.is_file():
        raise WeightsMissingError(f"the weights file configured for {name} does not exist: {local}")
    return local


@functools.cache
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def model_sha256(name: str, local: Path | None) -> str:
    """The sha256 that provenance records for ``name``: the registry's, or the configured local file's."""
    if local is None:
        return get_spec(name).sha256
    stat = Path(local).expanduser().stat()
    return _cached_sha256(str(Path(local).expanduser().resolve()), stat.st_size, stat.st_mtime_ns)


def fetch(name: str, *, progress: bool = True, timeout_s: float = 60.0) -> Path:
    """Download a model into the cache, resuming a partial ``.part`` file, and verify its sha256."""
    spec = get_spec(name)
    target = weights_dir() / spec.relpath
    state, found = status(name)
    if state == "ok":
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    errors = []
    for url in spec.urls:
        try:
            _download(url, partial, spec.size_bytes, progress=progress, timeout_s=timeout_s)
        except (urllib.error.URLError, OSError) as error:
            errors.append(f"{url}: {error}")
            continue
        digest = sha256_file(partial)
        if digest != spec.sha256:
            partial.unlink(missing_ok=True)
            errors.append(f"{url}: checksum mismatch (got {digest[:12]}..., want {spec.sha256[:12]}...)")
            continue
        os.replace(partial, target)
        return target
    raise WeightsMissingError(
        f"could not download {name}: " + "; ".join(errors) + f". Place {spec.relpath} under {weights_dir()} "
        "(or a mirror directory named by MEGACTOR_WEIGHTS_MIRROR) by hand."
    )


def _download(url: str, partial: Path, size: int, *, progress: bool, timeout_s: float) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    if have > size:
        partial.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        if have and response.status != 206:  # server ignored the range: start over
            have = 0
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=size, initial=have, unit="B", unit_scale=True, desc=partial.name[:-5])
        with open(partial, "ab" if have else "wb") as handle:
            while block := response.read(1 << 20):
                handle.write(block)
                if bar:
                    bar.update(len(block))
        if bar:
            bar.close()

