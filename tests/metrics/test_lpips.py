"""Our LPIPS against the ``lpips`` package itself (pinned; see the Makefile), on the same AlexNet weights, the
package's own v0.1 linear layers and the same images.

The package imports torchvision, which cannot be installed here; it only asks torchvision for
``alexnet(pretrained=...).features``. The test gives it a stand-in ``torchvision`` whose ``alexnet`` returns
our random AlexNet features; the package's code does the rest (its ScalingLayer, relu1..relu5 slices, unit
normalisation, linear layers loaded from its own ``weights/v0.1/alex.pth``, spatial average and sum)."""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types

import pytest
import torch
from torch import nn

from metrics import lpips as ours_lpips

LPIPS_VERSION = "0.1.4"
LIN_SHA256 = "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"  # lpips 0.1.4's alex.pth


@pytest.fixture(scope="module")
def random_alexnet(tmp_path_factory) -> tuple[ours_lpips.AlexNetFeatures, object]:
    """Random AlexNet features and a torchvision-format file holding them (``features.*`` keys)."""
    torch.manual_seed(0)
    net = ours_lpips.AlexNetFeatures().eval()
    path = tmp_path_factory.mktemp("alexnet") / "alexnet-random.pth"
    torch.save(net.state_dict(), path)
    return net, path


@pytest.fixture(scope="module")
def lpips_package(random_alexnet):
    """The ``lpips`` package imported against a stand-in torchvision whose ``alexnet`` carries our random
    features (removed from ``sys.modules`` afterwards; the package keeps its reference)."""
    if importlib.util.find_spec("lpips") is None:
        message = f"lpips=={LPIPS_VERSION} is not installed (make install)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    net, _ = random_alexnet
    torchvision = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")

    def alexnet(pretrained: bool = False) -> nn.Module:
        assert pretrained  # LPIPS asks for the ImageNet weights: here, the random ones both sides share
        return copy.deepcopy(net)

    models.alexnet = alexnet
    torchvision.models = models
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torchvision", torchvision)
        patch.setitem(sys.modules, "torchvision.models", models)
        for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
            patch.delitem(sys.modules, name)
        package = importlib.import_module("lpips")
    assert importlib.metadata.version("lpips") == LPIPS_VERSION
    return package


@pytest.fixture(scope="module")
def packaged_lin() -> object:
    path = ours_lpips.packaged_lin_weights()
    if path is None:
        message = f"lpips=={LPIPS_VERSION} is not installed (make install)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return path


def _images(seed: int, n: int = 3, size: tuple[int, int] = (64, 80)) -> torch.Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_packaged_linear_layers_are_the_published_file(packaged_lin):
    assert hashlib.sha256(packaged_lin.read_bytes()).hexdigest() == LIN_SHA256


def test_distances_match_the_package_on_the_same_weights(lpips_package, random_alexnet, packaged_lin):
    _, alexnet_path = random_alexnet
    reference = lpips_package.LPIPS(net="alex", version="0.1", verbose=False)  # loads its own alex.pth
    ours = ours_lpips.LPIPS.from_files(alexnet_path, packaged_lin)
    a, b = _images(1), _images(2)
    with torch.inference_mode():
        theirs = reference(a, b).flatten()  # (3, 1, 1, 1) -> (3,)
        mine = ours(a, b)
        theirs_unit = reference((a + 1) / 2, (b + 1) / 2, normalize=True).flatten()
        mine_unit = ours.forward_unit((a + 1) / 2, (b + 1) / 2)
    assert mine.shape == (3,)
    assert theirs.min() > 1e-3  # different images: the comparison is not of zeros
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mine_unit, theirs_unit, rtol=1e-5, atol=1e-7)


def test_every_linear_layer_counts(lpips_package, random_alexnet):
    """Random linear layers copied into the package's model by name: a layer missed or swapped would show."""
    _, alexnet_path = random_alexnet
    reference = lpips_package.LPIPS(pretrained=False, net="alex", version="0.1", verbose=False)
    ours = ours_lpips.LPIPS()
    ours.net.load_state_dict(torch.load(alexnet_path, weights_only=True))
    torch.manual_seed(3)
    for i in range(5):
        weight = torch.rand_like(getattr(ours, f"lin{i}").model[1].weight)
        getattr(ours, f"lin{i}").model[1].weight.copy_(weight)
        getattr(reference, f"lin{i}").model[1].weight.data.copy_(weight)
    a, b = _images(4, n=2, size=(96, 64)), _images(5, n=2, size=(96, 64))
    with torch.inference_mode():
        torch.testing.assert_close(ours(a, b), reference(a, b).flatten(), rtol=1e-5, atol=1e-7)


def test_identical_images_are_at_distance_zero(random_alexnet, packaged_lin):
    model = ours_lpips.LPIPS.from_files(random_alexnet[1], packaged_lin)
    a = _images(6)
    with torch.inference_mode():
        assert torch.equal(model(a, a), torch.zeros(3))
        assert (model(a, _images(7)) > 0).all()


def test_a_renamed_linear_key_raises_where_the_package_passes_silently(lpips_package, packaged_lin, tmp_path,
                                                                       random_alexnet):
    state = torch.load(packaged_lin, map_location="cpu", weights_only=True)
    state["lin2.model.0.weight"] = state.pop("lin2.model.1.weight")  # as if saved without the dropout slot
    renamed = tmp_path / "alex-renamed.pth"
    torch.save(state, renamed)

    with pytest.raises(ValueError, match=r"(?s)alex-renamed\.pth.*lin2\.model\.1\.weight"):
        ours_lpips.LPIPS.from_files(random_alexnet[1], renamed)

    reference = lpips_package.LPIPS(net="alex", version="0.1", model_path=str(renamed), verbose=False)
    assert not torch.equal(reference.lin2.model[1].weight, state["lin2.model.0.weight"])  # left at random


def test_alexnet_file_is_checked_key_by_key(random_alexnet, packaged_lin, tmp_path):
    net, _ = random_alexnet
    state = net.state_dict()  # torchvision's key names: features.0.weight, ...
    state["features.6.weight_renamed"] = state.pop("features.6.weight")
    renamed = tmp_path / "alexnet-renamed.pth"
    torch.save(state, renamed)
    with pytest.raises(ValueError, match=r"(?s)alexnet-renamed\.pth.*features\.6\.weight"):
        ours_lpips.LPIPS.from_files(renamed, packaged_lin)

    foreign = tmp_path / "not-alexnet.pth"
    torch.save({**net.state_dict(), "backbone.0.weight": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="backbone.0.weight"):
        ours_lpips.LPIPS.from_files(foreign, packaged_lin)

    missing = tmp_path / "alexnet-owt-7be5be79.pth"
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        ours_lpips.LPIPS.from_files(missing, packaged_lin)


def test_alexnet_layout_has_torchvisions_feature_parameter_count():
    # torchvision publishes 61,100,840 parameters for alexnet; its classifier holds 9216*4096+4096 +
    # 4096*4096+4096 + 4096*1000+1000 = 58,631,144 of them
    assert sum(p.numel() for p in ours_lpips.AlexNetFeatures().parameters()) == 61_100_840 - 58_631_144


def test_the_registry_takes_the_copy_in_the_installed_package(packaged_lin, tmp_path, monkeypatch):
    from curation import weights

    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("MEGACTOR_WEIGHTS_MIRROR", raising=False)
    spec = weights.get_spec("lpips_alex_v0.1")
    assert spec.sha256 == LIN_SHA256 and spec.size_bytes == packaged_lin.stat().st_size
    assert spec.urls[0] == packaged_lin.as_uri()  # before the network
    path = weights.fetch("lpips_alex_v0.1", progress=False)
    assert path == tmp_path / spec.relpath and path.read_bytes() == packaged_lin.read_bytes()
    assert weights.status("lpips_alex_v0.1") == ("ok", path)
