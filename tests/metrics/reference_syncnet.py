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


def evaluate(weights: Path, folder: Path, batch_size: int = 20, vshift: int = 15,
             device: str = "cpu") -> tuple[int, float, float]:
    """``(offset, sync_c, sync_d)`` from the reference's ``SyncNetInstance.evaluate`` on ``device``."""
    directory = package_dir()
    model = _load(directory, "SyncNetModel")
    instance_module = _load(directory, "SyncNetInstance")
    instance = instance_module.SyncNetInstance(model.S(), device=device)
    instance.loadParameters(str(weights))
    offset, conf, dist = instance.evaluate(SimpleNamespace(tmp_dir=str(folder), batch_size=batch_size, vshift=vshift))
    return int(offset), float(conf), float(dist)


def random_weights(clip: Path, path: Path, seed: int = 1234) -> Path:
    """SyncNet in the real architecture with fixed random weights, saved in the original ``syncnet_v2.model``
    format (a state dict). The BatchNorm statistics are measured on ``clip`` (as a trained network's would be
    on real data), so the features depend on the input and the best AV offset stands clear of the others;
    with default statistics the offset-averaged distances are nearly flat and the argmin is a coin toss."""
    import numpy as np
    import torch

    from curation import media
    from curation.scorers.sync_syncnet import to_int16
    from metrics.syncnet import SyncNet, mfcc_features

    frames = [f[:, :, ::-1] for _, f in media.iter_frames(clip, media.probe(clip), duration_s=2.0, fps=25)]
    audio = to_int16(media.decode_audio(clip, duration_s=4.0))
    torch.manual_seed(seed)
    net = SyncNet()
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average over the calibration batches
    net.train()
    with torch.no_grad():
        video = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float()
        net.forward_lip(torch.stack([video[:, i: i + 5] for i in range(0, len(frames) - 5, 2)]))
        mfcc = torch.from_numpy(mfcc_features(audio))
        net.forward_aud(torch.stack([mfcc[:, 4 * v: 4 * v + 20] for v in range(0, 90, 3)])[:, None])
    torch.save(net.eval().state_dict(), path)
    return path
