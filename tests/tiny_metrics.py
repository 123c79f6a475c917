"""The evaluation's metric networks in their real architectures and published file formats, with fixed random
weights: the published files cannot be downloaded here, and parity with the references is proved elsewhere
(tests/metrics). Returns registry name -> file, for ``EvalConfig.weights``."""

from __future__ import annotations

from pathlib import Path

import torch


def write_metric_weights(folder: Path, seed: int = 0) -> dict[str, Path]:
    from metrics.fid import FIDInceptionV3
    from metrics.fvd import InceptionI3d
    from metrics.lpips import LPIPS

    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / file for name, file in (
        ("pt_inception", "pt_inception.pth"), ("alexnet", "alexnet.pth"), ("lpips_alex_v0.1", "alex_lin.pth"),
        ("i3d_400", "i3d_400.pt"))}
    if all(p.is_file() for p in paths.values()):
        return paths
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        torch.save(FIDInceptionV3().state_dict(), paths["pt_inception"])
        lpips = LPIPS()
        torch.save(lpips.net.state_dict(), paths["alexnet"])  # torchvision's "features.*" names
        torch.save({k: v for k, v in lpips.state_dict().items() if k.startswith("lin")}, paths["lpips_alex_v0.1"])
        i3d = InceptionI3d().state_dict()
        torch.save({k: v for k, v in i3d.items() if not k.endswith("num_batches_tracked")}, paths["i3d_400"])
    return paths
