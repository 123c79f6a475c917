"""Our FID network and distance against pytorch-fid itself (the package, pinned; see the Makefile), on the same
random weights, images and features.

pytorch-fid imports torchvision, which cannot be installed here, and builds its network on torchvision's
Inception3. The test gives it a stand-in ``torchvision`` module holding only what it reaches for: the layer
containers its FID blocks subclass (our blocks: pytorch-fid replaces their ``forward`` with its own) and an
``inception_v3`` builder. pytorch-fid's own code then does the FID-specific parts: the four patched block
forwards (pools without padded zeros, the last block's max pool), the stem max pools, the resize to 299 and the
scaling to [-1, 1], the strict load of "its weights file" (our random state dict, handed to it in place of the
download), and the Frechet distance."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import itertools
import os
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from metrics import fid

PYTORCH_FID_VERSION = "0.3.0"


def _stand_in_torchvision() -> dict[str, types.ModuleType]:
    torchvision = types.ModuleType("torchvision")
    torchvision.__version__ = "0.29.1"  # pytorch-fid passes init_weights=False from 0.6 on
    models = types.ModuleType("torchvision.models")
    inception = types.ModuleType("torchvision.models.inception")
    inception.InceptionA = fid.FIDInceptionA
    inception.InceptionC = fid.FIDInceptionC
    inception.InceptionE = fid.FIDInceptionE_1

    def inception_v3(*, num_classes: int, aux_logits: bool, weights: object, init_weights: bool) -> nn.Module:
        # what fid_inception_v3 asks torchvision for: the layout of the published weights file
        assert (num_classes, aux_logits, weights, init_weights) == (1008, False, None, False)
        return fid.FIDInceptionV3()

    models.inception = inception
    models.inception_v3 = inception_v3
    transforms = types.ModuleType("torchvision.transforms")  # fid_score's image-folder dataset only
    torchvision.models, torchvision.transforms = models, transforms
    return {"torchvision": torchvision, "torchvision.models": models, "torchvision.models.inception": inception,
            "torchvision.transforms": transforms}


@pytest.fixture(scope="module")
def pytorch_fid():
    """pytorch_fid's ``inception`` and ``fid_score`` modules, imported against the stand-in torchvision (removed
    from ``sys.modules`` again afterwards; the imported modules keep their reference to it)."""
    if importlib.util.find_spec("pytorch_fid") is None:
        message = f"pytorch-fid=={PYTORCH_FID_VERSION} is not installed (make install)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    with pytest.MonkeyPatch.context() as patch:
        for name, module in _stand_in_torchvision().items():
            patch.setitem(sys.modules, name, module)
        for name in ("pytorch_fid", "pytorch_fid.inception", "pytorch_fid.fid_score"):
            patch.delitem(sys.modules, name, raising=False)
        inception = importlib.import_module("pytorch_fid.inception")
        fid_score = importlib.import_module("pytorch_fid.fid_score")
    assert importlib.metadata.version("pytorch-fid") == PYTORCH_FID_VERSION
    return types.SimpleNamespace(inception=inception, fid_score=fid_score)


def _randomize(net: nn.Module, seed: int) -> nn.Module:
    """Random weights that keep activations at a usable scale through 40-odd layers, and BatchNorm statistics
    far enough from (0, 1) that a missing or misplaced BatchNorm would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (2 / fan_in) ** 0.5, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                for tensor, low, high in ((module.weight, 0.7, 1.3), (module.bias, -0.2, 0.2),
                                          (module.running_mean, -0.2, 0.2), (module.running_var, 0.7, 1.3)):
                    tensor.uniform_(low, high, generator=generator)
    return net.eval()


@pytest.fixture(scope="module")
def random_inception() -> fid.FIDInceptionV3:
    return _randomize(fid.FIDInceptionV3(), seed=0)


def test_pool_features_match_pytorch_fid_on_the_same_weights(pytorch_fid, random_inception, monkeypatch):
    state = random_inception.state_dict()

    def published_weights(url: str, progress: bool = True) -> dict[str, torch.Tensor]:
        assert url == pytorch_fid.inception.FID_WEIGHTS_URL
        return state  # pytorch-fid loads it strictly into its own FID Inception

    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", published_weights)
    reference = pytorch_fid.inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    assert isinstance(reference.blocks[2][0], pytorch_fid.inception.FIDInceptionA)
    assert isinstance(reference.blocks[3][2], pytorch_fid.inception.FIDInceptionE_2)

    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))  # resized to 299 by both
    with torch.inference_mode():
        theirs = reference(images)[0].flatten(1)  # (2, 2048, 1, 1) -> (2, 2048)
        ours = random_inception(images)

    assert ours.shape == (2, fid.FEATURES)
    assert theirs.std() > 1e-2  # activations survived the depth: the comparison is not of zeros
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))


@pytest.mark.parametrize("block", ["Mixed_5b", "Mixed_6b", "Mixed_7b", "Mixed_7c"])
def test_fid_blocks_differ_from_torchvisions(random_inception, block):
    """Each patched pool changes the block's output well beyond the parity tolerance, so the parity test above
    would see a block computed torchvision's way (average pools counting padded zeros, no max pool)."""
    module = getattr(random_inception, block)
    x = torch.rand(1, module.branch_pool.conv.in_channels, 9, 9, generator=torch.Generator().manual_seed(2))
    torchvision_pool = staticmethod(lambda t: nn.functional.avg_pool2d(t, 3, stride=1, padding=1))
    with torch.inference_mode(), pytest.MonkeyPatch.context() as patch:
        ours = module(x)
        patch.setattr(fid, "_avg_pool_same", torchvision_pool)
        for cls in (fid.FIDInceptionE_1, fid.FIDInceptionE_2):
            patch.setattr(cls, "_pool", torchvision_pool)
        torchvision_like = module(x)
    assert (ours - torchvision_like).abs().max() > 1e-2 * ours.abs().max()


def test_layout_has_the_parameter_count_of_torchvisions_inception3():
    # torchvision publishes 27,161,264 parameters for inception_v3 (1000 classes, with AuxLogits). The FID file
    # has no AuxLogits (3,326,696: 768->128 1x1 conv + BN, 128->768 5x5 conv + BN, 768->1000 linear) and 1008
    # classes (+8 x 2049).
    assert sum(p.numel() for p in fid.FIDInceptionV3().parameters()) == 27_161_264 - 3_326_696 + 8 * 2049


def test_from_file_loads_strictly_and_names_the_file(tmp_path, random_inception):
    path = tmp_path / "pt_inception.pth"
    torch.save(random_inception.state_dict(), path)
    loaded = fid.FIDInceptionV3.from_file(path)
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                  random_inception.state_dict().values(), strict=True))

    state = random_inception.state_dict()
    state["Mixed_7c.branch_pool.conv.weight_renamed"] = state.pop("Mixed_7c.branch_pool.conv.weight")
    renamed = tmp_path / "renamed.pth"
    torch.save(state, renamed)
    with pytest.raises(ValueError, match=r"(?s)renamed\.pth.*Mixed_7c\.branch_pool\.conv\.weight"):
        fid.FIDInceptionV3.from_file(renamed)

    missing = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        fid.FIDInceptionV3.from_file(missing)


def _features(seed: int, n: int = 300, dim: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / dim**0.5  # correlated dimensions: a full covariance
    return rng.normal(size=(n, dim)) @ mixing + rng.normal(size=dim)


def _reference_fid(pytorch_fid, a: np.ndarray, b: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its sqrtm(disp=False), deprecated in SciPy 1.16
        stats = [(np.mean(x, axis=0), np.cov(x, rowvar=False)) for x in (a, b)]  # its activation statistics
        return float(pytorch_fid.fid_score.calculate_frechet_distance(*stats[0], *stats[1]))


@pytest.mark.parametrize("n", [300, 20])  # 20 < 32 dimensions: singular covariances
def test_frechet_distance_matches_pytorch_fid(pytorch_fid, n):
    a, b = _features(3, n), 1.3 * _features(4, n) + 0.5
    mu1, sigma1 = fid.feature_statistics(a)
    np.testing.assert_array_equal(mu1, np.mean(a, axis=0))
    np.testing.assert_array_equal(sigma1, np.cov(a, rowvar=False))
    theirs = _reference_fid(pytorch_fid, a, b)
    assert theirs > 1.0
    assert fid.fid_from_features(a, b) == pytest.approx(theirs, abs=1e-6)


def test_frechet_distance_of_float32_features_matches_pytorch_fid_to_rounding(pytorch_fid):
    """pytorch-fid keeps Inception's float32 activations and so takes their mean, and the difference of means,
    in float32; ours are float64 throughout. That is the only difference: relative 1e-7 here."""
    a, b = (x.astype(np.float32) for x in (_features(3), 1.3 * _features(4) + 0.5))
    theirs = _reference_fid(pytorch_fid, a, b)
    assert fid.fid_from_features(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(theirs, rel=1e-6)


def test_fid_is_zero_on_itself_and_grows_with_noise():
    a = _features(5)
    noise = np.random.default_rng(6).normal(size=a.shape)
    assert abs(fid.fid_from_features(a, a)) < 1e-6
    scores = [fid.fid_from_features(a, a + level * noise) for level in (0.05, 0.2, 0.5, 1.0, 2.0)]
    assert all(low < high for low, high in itertools.pairwise(scores))
    assert scores[0] > 1e-4


def test_statistics_that_are_not_covariances_raise():
    with pytest.raises(ValueError, match="imaginary component"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), -np.eye(3))
