"""The SyncNet reference evaluation (``syncnet-python``, the packaged joonson/syncnet_python), loaded module by
module: the package's ``__init__`` imports a pipeline that needs scenedetect<0.7, which cannot live next to the
PySceneDetect we use. Its evaluation reads a folder of frames (``*.jpg``) and ``audio.wav``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace


def _load(package_dir: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"syncnet_reference_{name}", package_dir / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def package_dir() -> Path:
    spec = importlib.util.find_spec("syncnet_python")
    if spec is None:
        raise ImportError("the reference needs syncnet-python: pip install --no-deps syncnet-python==0.2.3")
    return Path(next(iter(spec.submodule_search_locations)))


def extract_like_reference(video: Path, folder: Path) -> None:
    """Frames and audio as the reference demo extracts them (``ffmpeg ... -f image2 %06d.jpg`` and 16 kHz mono
    s16 audio), except that frames are stored losslessly (PNG bytes; OpenCV reads by content, not by name), so
    both implementations see identical pixels and the comparison measures the computation, not JPEG noise."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-f", "image2", "-c:v", "png",
                    str(folder / "%06d.jpg")], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-ac", "1", "-vn", "-acodec", "pcm_s16le",
                    "-ar", "16000", str(folder / "audio.wav")], check=True)


def evaluate(weights: Path, folder: Path, batch_size: int = 20, vshift: int = 15) -> tuple[int, float, float]:
    """``(offset, sync_c, sync_d)`` from the reference's ``SyncNetInstance.evaluate`` on CPU."""
    directory = package_dir()
    model = _load(directory, "SyncNetModel")
    instance_module = _load(directory, "SyncNetInstance")
    instance = instance_module.SyncNetInstance(model.S(), device="cpu")
    instance.loadParameters(str(weights))
    offset, conf, dist = instance.evaluate(SimpleNamespace(tmp_dir=str(folder), batch_size=batch_size, vshift=vshift))
    return int(offset), float(conf), float(dist)
