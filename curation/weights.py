"""The weights registry: every model file the project uses, where it officially comes from, its checksum and
licence; a cache directory (``MEGACTOR_WEIGHTS_DIR``); a resumable, verified fetch.

A file is looked up as ``<weights dir>/<relpath>``, then in the air-gapped mirror ``MEGACTOR_WEIGHTS_MIRROR``
(same layout) if set. A missing or corrupt file raises :class:`WeightsMissingError` naming the fetch command.

Two kinds of entry: a single file (``sha256`` of the file), or a folder of files (``files``: a diffusers or
transformers folder, each file with its own checksum, fetched from ``<url>/<file>``). A URL of the form
``https://.../pack.zip#member.onnx`` names a member of a zip archive (e.g. InsightFace's official model packs):
the archive is downloaded and only that member kept. A folder file whose publisher gives no checksum that could
be verified here has ``sha256=None``: ``weights fetch`` records what it downloaded in the folder's
``.megactor-sha256.json``, later checks compare against that record, and ``weights list`` says "unverified"."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from curation.errors import WeightsMissingError
from curation.settings import weights_dir


@dataclass(frozen=True)
class FolderFile:
    """One file of a folder entry: its path inside the folder, checksum (None: none published) and size."""

    relpath: str
    sha256: str | None
    size_bytes: int | None = None


@dataclass(frozen=True)
class WeightSpec:
    name: str
    relpath: str  # a file, or the folder of a folder entry
    urls: tuple[str, ...]  # a file's URLs, or a folder's base URLs (the file's relpath is appended)
    sha256: str  # a file's; "" for a folder entry (each file has its own)
    size_bytes: int  # a file's; a folder's total (0 when unknown)
    licence: str
    description: str
    auto_fetch: bool = False  # small files may be fetched on first use; large ones only by the fetch command
    files: tuple[FolderFile, ...] = ()  # set: a folder entry

    @property
    def is_folder(self) -> bool:
        return bool(self.files)

    @property
    def verified(self) -> bool:
        """Every weights file is checked against a published checksum (False: some large folder file has none;
        small config files without one are recorded at fetch)."""
        return all(f.sha256 for f in self.files if not f.relpath.endswith((".json", ".txt"))) if self.files else True


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
            name="i3d_400",
            relpath="fvd/i3d_pretrained_400.pt",
            # VideoGPT's conversion of TF-Hub deepmind/i3d-kinetics-400/1 (VideoGPT and TATS ship it; VideoGPT
            # publishes no checksum). The sha256 is the git-lfs object id of the Open-Sora-Plan v1.0.0 copy
            # (second URL); a copy with other bytes fails the fetch rather than being used.
            urls=(
                "https://huggingface.co/spaces/LanguageBind/Open-Sora-Plan-v1.0.0/resolve/"
                "810fa8c4bdb3a4c8eec9bd57375c29bde6fb46de/opensora/eval/fvd/videogpt/i3d_pretrained_400.pt",
                "https://media.githubusercontent.com/media/camenduru/Open-Sora-Plan-v1.0.0-hf/"
                "a22080372b0d3a03e503b83f527b617ea9267fb1/opensora/eval/fvd/videogpt/i3d_pretrained_400.pt",
                "https://github.com/songweige/TATS/raw/main/tats/fvd/i3d_pretrained_400.pt",
            ),
            sha256="55095f049e706479d48e221adcdb145b2b9dc930ba28b081ed72367ffaa32343",
            size_bytes=50_939_526,
            licence="Apache-2.0 (DeepMind kinetics-i3d weights; converted by VideoGPT, MIT)",
            description="I3D Kinetics-400 (PyTorch InceptionI3d port of VideoGPT/TATS/cd-fvd) for FVD "
                        "(metrics.fvd.InceptionI3d.from_file)",
            auto_fetch=True,
        ),
        WeightSpec(
            name="pt_inception",
            relpath="fid/pt_inception-2015-12-05-6726825d.pth",
            urls=("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                  "pt_inception-2015-12-05-6726825d.pth",),
            sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
            size_bytes=95_628_359,
            licence="Apache-2.0 (mseitzer/pytorch-fid; port of TensorFlow's inception-2015-12-05)",
            description="pytorch-fid's FID InceptionV3, 2048-d pool features (metrics.fid.FIDInceptionV3.from_file)",
        ),
        WeightSpec(
            name="alexnet",
            relpath="lpips/alexnet-owt-7be5be79.pth",
            urls=("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",),
            sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
            size_bytes=244_408_911,
            licence="BSD-3-Clause (torchvision)",
            description="torchvision's ImageNet AlexNet, the LPIPS backbone (metrics.lpips.LPIPS.from_files)",
        ),
        WeightSpec(
            name="lpips_alex_v0.1",
            relpath="lpips/v0.1/alex.pth",
            urls=(
                # the lpips wheel ships this file: a copy in an installed lpips package is taken before the network
                *(Path(folder, "weights/v0.1/alex.pth").as_uri()
                  for folder in getattr(importlib.util.find_spec("lpips"), "submodule_search_locations", None) or ()),
                "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
            ),
            sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
            size_bytes=6_009,
            licence="BSD-2-Clause (richzhang/PerceptualSimilarity)",
            description="LPIPS v0.1 linear layers on AlexNet (metrics.lpips.LPIPS.from_files)",
            auto_fetch=True,
        ),
        WeightSpec(
            name="sd-vae-ft-ema",
            relpath="vae/sd-vae-ft-ema",  # a diffusers AutoencoderKL folder: model.vae_dir
            urls=("https://huggingface.co/stabilityai/sd-vae-ft-ema/resolve/f04b2c4b98319346dad8c65879f680b1997b204a",),
            sha256="",
            size_bytes=334_643_276,
            licence="MIT",
            description="Stable Diffusion VAE (ft-EMA), the latent space PixArt-alpha was trained in (training and "
                        "inference; model.vae_dir)",
            files=(FolderFile("config.json", None),
                   FolderFile("diffusion_pytorch_model.safetensors",
                              "32db726da04f06c1b6b14c0043ce115cc87a501482945c5add89a40d838fcb46", 334_643_276)),
        ),
        WeightSpec(
            name="whisper-tiny",
            relpath="whisper/whisper-tiny",  # a transformers Whisper folder with its feature extractor: model.whisper_dir
            urls=("https://huggingface.co/openai/whisper-tiny/resolve/169d4a4341b33bc18d8881c4b69c2e104e1cc0af",),
            sha256="",
            size_bytes=151_061_672,
            licence="Apache-2.0",
            description="Whisper tiny, frozen audio encoder for the audio attention layers (training and "
                        "inference; model.whisper_dir)",
            files=(FolderFile("config.json", None), FolderFile("preprocessor_config.json", None),
                   FolderFile("model.safetensors",
                              "7ebd0e69e78190ffe1438491fa05cc1f5c1aa3a4c4db3bc1723adbb551ea2395", 151_061_672)),
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
        WeightSpec(
            name="det_10g",
            relpath="insightface/det_10g.onnx",
            # InsightFace publishes it inside its buffalo_l pack; the first URL is a mirror of the same bytes
            urls=(
                "https://huggingface.co/immich-app/buffalo_l/resolve/d09715916a0778919a770c343533641e250b8699/"
                "detection/model.onnx",
                "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip#det_10g.onnx",
            ),
            sha256="5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
            size_bytes=16_923_827,
            licence="InsightFace models: non-commercial research only",
            description="SCRFD-10G face detector with 5 keypoints (InsightFace buffalo_l; face-swap augmentation)",
        ),
        WeightSpec(
            name="scrfd_500m",
            relpath="insightface/scrfd_500m_bnkps.onnx",
            urls=("https://huggingface.co/ykk648/face_lib/resolve/main/face_detect/scrfd_onnx/scrfd_500m_bnkps.onnx",),
            sha256="b467f878e26ff1e7ee05cd9936fdff63fa2a5af5d732ed17ee231f2dd5cc07ae",
            size_bytes=2_524_648,
            licence="InsightFace models: non-commercial research only",
            description="SCRFD-500M face detector with 5 keypoints, 640x640 (the light detector for face swap)",
        ),
        WeightSpec(
            name="w600k_r50",
            relpath="insightface/w600k_r50.onnx",
            urls=(
                "https://huggingface.co/maze/faceX/resolve/main/w600k_r50.onnx",
                "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip#w600k_r50.onnx",
            ),
            sha256="4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
            size_bytes=174_383_860,
            licence="InsightFace models: non-commercial research only",
            description="ArcFace ResNet-50 (WebFace600K) identity embedding (InsightFace buffalo_l; swap source "
                        "and identity checks)",
        ),
        WeightSpec(
            name="sd-turbo",
            relpath="diffusers/sd-turbo",
            urls=("https://huggingface.co/stabilityai/sd-turbo/resolve/main",),
            sha256="",
            size_bytes=0,
            licence="Stability AI Non-Commercial Research Community License (commercial use needs Stability AI's "
                    "licence)",
            description="SD-Turbo (distilled SD 2.1), diffusers folder, fp16 weights: stylization augmentation "
                        "(no published checksum could be verified here: recorded at fetch)",
            files=tuple(FolderFile(path, None) for path in (
                "model_index.json", "scheduler/scheduler_config.json",
                "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
                "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
                "tokenizer/vocab.json",
                "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
            )),
        ),
    )
}

LOCK_FILE = ".megactor-sha256.json"  # in a folder entry: the checksums recorded at fetch


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
        if spec.is_folder:
            if path.is_dir() and all((path / f.relpath).is_file() for f in spec.files):
                return ("ok" if not _folder_mismatches(spec, path) else "corrupt"), path
        elif path.is_file():
            return ("ok" if _sha256_cached(path) == spec.sha256 else "corrupt"), path
    return "missing", _candidates(spec)[0]


def _folder_mismatches(spec: WeightSpec, folder: Path) -> list[str]:
    """Files of a folder entry whose checksum differs from the registry's, or from the fetch record."""
    recorded = _read_lock(folder)
    bad = []
    for item in spec.files:
        want = item.sha256 or recorded.get(item.relpath)
        if want and _sha256_cached(folder / item.relpath) != want:
            bad.append(item.relpath)
    return bad


def _read_lock(folder: Path) -> dict[str, str]:
    try:
        return json.loads((folder / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}


def resolve(name: str, *, allow_fetch: bool | None = None) -> Path:
    """The verified local path of a model (a folder entry's folder). Small models marked ``auto_fetch`` are
    downloaded on first use unless ``MEGACTOR_OFFLINE=1``."""
    spec = get_spec(name)
    state, path = status(name)
    if state == "ok":
        return path
    if state == "corrupt":
        what = (f"files of {path} ({', '.join(_folder_mismatches(spec, path))}) do not match their checksums"
                if spec.is_folder else
                f"{path} does not match the registered sha256 of {name} ({spec.sha256[:12]}...)")
        raise WeightsMissingError(f"{what}: delete it and run `{fetch_command(name)}`")
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
    """``local`` when a config names a file (or, for a folder entry, a folder) in place of the registry's (it must
    exist; its checksum is not checked but recorded), else the registry's verified path for ``name``."""
    if local is None:
        return resolve(name)
    local = Path(local).expanduser()
    folder = get_spec(name).is_folder
    if not (local.is_dir() if folder else local.is_file()):
        kind = "folder" if folder else "weights file"
        raise WeightsMissingError(f"the {kind} configured for {name} does not exist: {local}")
    return local


@functools.cache
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def _sha256_cached(path: Path) -> str:
    """sha256 of a file, computed once per process for a given (path, size, mtime)."""
    stat = path.stat()
    return _cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def folder_sha256(folder: Path) -> str:
    """One checksum for a folder of weights: sha256 over its files' relative paths and sha256s, in order
    (hidden files such as the fetch record excluded)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts)):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{_sha256_cached(path)}\n".encode())
    return digest.hexdigest()


def model_sha256(name: str, local: Path | None) -> str:
    """The sha256 that provenance records for ``name``: the registry's, or the configured local file's; for a
    folder, :func:`folder_sha256` of the folder in use."""
    spec = get_spec(name)
    if spec.is_folder:
        folder = Path(local).expanduser() if local is not None else status(name)[1]
        return folder_sha256(folder) if folder.is_dir() else "missing"
    if local is None:
        return spec.sha256
    return _sha256_cached(Path(local).expanduser())


def fetch(name: str, *, progress: bool = True, timeout_s: float = 60.0) -> Path:
    """Download a model into the cache, resuming a partial ``.part`` file, and verify its sha256 (a folder
    entry: each of its files; files without a published checksum are recorded in the folder's fetch record)."""
    spec = get_spec(name)
    target = weights_dir() / spec.relpath
    state, found = status(name)
    if state == "ok":
        return found
    if not spec.is_folder:
        _fetch_file(name, target, spec.urls, spec.sha256, spec.size_bytes, progress=progress, timeout_s=timeout_s)
        return target
    recorded = _read_lock(target)
    for item in spec.files:
        path = target / item.relpath
        want = item.sha256 or recorded.get(item.relpath)
        if path.is_file() and (want is None or _sha256_cached(path) == want):
            recorded.setdefault(item.relpath, _sha256_cached(path))
            continue
        path.unlink(missing_ok=True)
        _fetch_file(name, path, tuple(f"{base}/{item.relpath}" for base in spec.urls), item.sha256,
                    item.size_bytes or 0, progress=progress, timeout_s=timeout_s)
        recorded[item.relpath] = _sha256_cached(path)
    (target / LOCK_FILE).write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    return target


def _fetch_file(name: str, target: Path, urls: tuple[str, ...], sha256: str | None, size: int, *, progress: bool,
                timeout_s: float) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    errors = []
    for url in urls:
        url, _, member = url.partition("#")
        try:
            if member:
                _download_member(url, member, partial, progress=progress, timeout_s=timeout_s)
            else:
                _download(url, partial, size, progress=progress, timeout_s=timeout_s)
        except (urllib.error.URLError, OSError, zipfile.BadZipFile, KeyError) as error:
            errors.append(f"{url}{'#' + member if member else ''}: {error}")
            continue
        if sha256 is not None:
            digest = sha256_file(partial)
            if digest != sha256:
                partial.unlink(missing_ok=True)
                errors.append(f"{url}: checksum mismatch (got {digest[:12]}..., want {sha256[:12]}...)")
                continue
        os.replace(partial, target)
        return
    raise WeightsMissingError(
        f"could not download {name}: " + "; ".join(errors) + f". Place {get_spec(name).relpath} under "
        f"{weights_dir()} (or a mirror directory named by MEGACTOR_WEIGHTS_MIRROR) by hand."
    )


def _download_member(url: str, member: str, partial: Path, *, progress: bool, timeout_s: float) -> None:
    """Download a zip archive next to ``partial`` (resumable) and extract one member to ``partial``."""
    archive = partial.with_name(Path(url).name + ".part")
    _download(url, archive, 0, progress=progress, timeout_s=timeout_s)
    with zipfile.ZipFile(archive) as pack:
        names = [n for n in pack.namelist() if n == member or n.endswith("/" + member)]
        if not names:
            raise KeyError(f"{member} is not in the archive")
        with pack.open(names[0]) as source, open(partial, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    archive.unlink(missing_ok=True)


def _download(url: str, partial: Path, size: int, *, progress: bool, timeout_s: float) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    if size and have > size:
        partial.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        if have and response.status != 206:  # server ignored the range: start over
            have = 0
        total = size or (have + int(response.headers.get("Content-Length") or 0)) or None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=partial.name[:-5])
        with open(partial, "ab" if have else "wb") as handle:
            while block := response.read(1 << 20):
                handle.write(block)
                if bar:
                    bar.update(len(block))
        if bar:
            bar.close()
