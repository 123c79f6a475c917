"""Our FVD network and protocol against the reference port (cd-fvd's copy of TATS's InceptionI3d and
``preprocess_i3d``) on identical random weights, and the Fréchet distance against hand-computed values."""

from __future__ import annotations

import hashlib
import importlib
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metrics import fvd
from metrics.frechet import feature_statistics, frechet_distance


def _reference(module: str):
    try:
        return importlib.import_module(f"cdfvd.third_party.i3d.{module}")
    except ImportError as error:
        raise ImportError("the FVD reference needs cd-fvd: pip install --no-deps cd-fvd==0.1.1") from error


def _randomize(net: fvd.InceptionI3d, calibration: torch.Tensor) -> fvd.InceptionI3d:
    """Random weights with BatchNorm statistics taken from one pass over ``calibration``, so that activations
    stay of order one through all 58 layers and the comparison below is not between two vectors of zeros."""
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.weight.data = torch.rand(module.num_features, generator=generator) + 0.5
            module.bias.data = 0.2 * torch.randn(module.num_features, generator=generator)
            module.reset_running_stats()
            module.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    net.train()
    with torch.no_grad():
        net(calibration)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.momentum = 0.001
    return net.eval()


@pytest.fixture(scope="module")
def nets() -> tuple[fvd.InceptionI3d, torch.nn.Module]:
    torch.manual_seed(0)
    ours = _randomize(fvd.InceptionI3d(), torch.rand(1, 3, 16, 224, 224) * 2 - 1)
    reference = _reference("pytorch_i3d").InceptionI3d(400, in_channels=3)
    reference.load_state_dict(ours.state_dict(), strict=True)
    return ours, reference.eval()


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    """Two non-square uint8 clips: smooth colour ramps with noise, so resizing has something to interpolate."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 96)[None, None, :, None] * np.linspace(0.2, 1, 72)[None, :, None, None]
    base = 200 * ramp * np.linspace(0.5, 1, 16)[:, None, None, None] * np.array([1.0, 0.6, 0.3])
    return np.stack([np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8) for _ in range(2)])


# -- the network against the reference --------------------------------------------------------------------------

def test_state_dict_has_the_reference_keys_and_shapes(nets):
    ours, reference = nets
    mine, theirs = ours.state_dict(), reference.state_dict()
    assert set(mine) == set(theirs)
    assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert len(mine) == 344  # 57 conv+BN units x 6 entries, and the logits' weight and bias
    assert mine["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)


def test_trunk_matches_the_reference_on_odd_sizes(nets):
    """Odd lengths exercise the uneven TF "SAME" padding (the extra pixel at the end) at every stride."""
    ours, reference = nets
    x = torch.rand(2, 3, 15, 61, 47, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mine, theirs = ours.trunk(x), reference.extract_pre_pool_features(x)
    assert mine.shape == theirs.shape == (2, 1024, 2, 2, 2)
    assert mine.std() > 0.1
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_features_match_the_reference_pipeline(nets, clips):
    ours, reference = nets
    preprocess_i3d = _reference("utils").preprocess_i3d
    torch.testing.assert_close(fvd.preprocess(clips), preprocess_i3d(clips), rtol=1e-6, atol=1e-5)
    with torch.no_grad():
        theirs = reference(preprocess_i3d(clips)).double().numpy()  # what cd-fvd's get_i3d_logits stores
    mine = fvd.i3d_features(ours, clips, batch_size=1)
    assert mine.shape == (2, fvd.FEATURES)
    assert mine.std() > 0.1
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5)


# -- TF "SAME" padding, by hand ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "kernel", "stride", "expected"), [
    (13, 7, 2, (3, 3)),  # out 7: (7 - 1) * 2 + 7 - 13 = 6
    (10, 7, 2, (2, 3)),  # out 5: 4 * 2 + 7 - 10 = 5, the odd pixel at the end
    (16, 7, 2, (2, 3)),  # out 8: 7 * 2 + 7 - 16 = 5 (the first layer on 16 frames)
    (7, 3, 1, (1, 1)),
    (2, 2, 2, (0, 0)),
    (3, 2, 2, (0, 1)),
    (5, 1, 1, (0, 0)),
])
def test_same_padding_by_hand(size, kernel, stride, expected):
    assert fvd.same_padding(size, kernel, stride) == expected


def test_unit_pads_like_an_explicit_pad():
    unit = fvd.Unit3D(3, 4, (7, 7, 7), (2, 2, 2), batch_norm=False, relu=False)
    x = torch.randn(1, 3, 9, 13, 10)
    explicit = F.conv3d(F.pad(x, (2, 3, 3, 3, 3, 3)), unit.conv3d.weight, stride=2)  # (W, H, T) pairs, by hand
    out = unit(x)
    assert out.shape == (1, 4, 5, 7, 5)  # ceil(size / 2)
    torch.testing.assert_close(out, explicit)


def test_max_pool_pads_at_the_end():
    pool = fvd.MaxPool3dSamePadding((1, 3, 3), stride=(1, 2, 2))
    x = torch.arange(1 * 1 * 1 * 4 * 4, dtype=torch.float32).reshape(1, 1, 1, 4, 4)
    # H = W = 4, kernel 3, stride 2: one zero row/column at the end, windows start at 0 and 2
    assert pool(x)[0, 0, 0].tolist() == [[10.0, 11.0], [14.0, 15.0]]


# -- loading ----------------------------------------------------------------------------------------------------

def test_published_format_loads_strictly_and_records_its_sha256(nets, tmp_path):
    """VideoGPT's converter saved a plain OrderedDict of the parameters and BatchNorm statistics, without
    ``num_batches_tracked``; that format must load with strict=True."""
    ours, _ = nets
    state = OrderedDict((k, v.clone()) for k, v in ours.state_dict().items() if not k.endswith("num_batches_tracked"))
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(state, path)
    loaded = fvd.InceptionI3d.from_file(path)
    assert not loaded.training
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    torch.testing.assert_close(loaded.Mixed_4d.b2b.bn.running_var, ours.Mixed_4d.b2b.bn.running_var)


def test_a_missing_or_foreign_file_is_named(nets, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        fvd.InceptionI3d.from_file(tmp_path / "nowhere.pt")
    state = nets[0].state_dict()
    del state["Mixed_5c.b3b.conv3d.weight"]
    torch.save(state, tmp_path / "truncated.pt")
    with pytest.raises(ValueError, match=r"(?s)truncated\.pt.*Mixed_5c\.b3b\.conv3d\.weight"):
        fvd.InceptionI3d.from_file(tmp_path / "truncated.pt")
    torch.save(fvd.InceptionI3d(num_classes=600).state_dict(), tmp_path / "k600.pt")
    with pytest.raises(ValueError, match=r"(?s)k600\.pt.*size mismatch"):
        fvd.InceptionI3d.from_file(tmp_path / "k600.pt")


# -- inputs -----------------------------------------------------------------------------------------------------

def test_preprocess_takes_uint8_or_unit_floats_and_refuses_the_rest(clips):
    out = fvd.preprocess(clips)
    assert out.shape == (2, 3, 16, 224, 224) and out.dtype == torch.float32
    assert -1.0 <= float(out.min()) and float(out.max()) <= 1.0
    torch.testing.assert_close(fvd.preprocess(clips.astype(np.float32) / 255), out, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fvd.preprocess(clips.astype(np.float32))
    with pytest.raises(ValueError, match="16 frames"):
        fvd.preprocess(clips[:, :8])
    with pytest.raises(ValueError, match="RGB"):
        fvd.preprocess(clips[..., 0])


# -- the distance -----------------------------------------------------------------------------------------------

def test_frechet_distance_of_diagonal_gaussians_by_hand():
    # |(0,0) - (1,2)|^2 + (sqrt 1 - sqrt 4)^2 + (sqrt 4 - sqrt 9)^2 = 5 + 1 + 1
    value = frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 9.0]))
    assert value == pytest.approx(7.0, abs=1e-9)


def test_fvd_is_zero_on_itself_and_grows_with_noise():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    assert fvd.fvd_from_features(real, real).fvd == pytest.approx(0.0, abs=1e-6)
    scores = [fvd.fvd_from_features(real, real + rng.normal(0, sigma, real.shape)).fvd for sigma in (0.1, 0.5, 2.0)]
    assert 0 < scores[0] < scores[1] < scores[2]


def test_fvd_matches_the_tats_formula():
    """TATS/VideoGPT compute the same quantity with an SVD square root in torch (unbiased covariance too)."""
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(200, 12)), rng.normal(0.3, 1.2, size=(150, 12))
    theirs = float(_reference("utils").frechet_distance(torch.from_numpy(fake), torch.from_numpy(real)))
    assert fvd.fvd_from_features(real, fake).fvd == pytest.approx(theirs, rel=1e-6)
    mu, sigma = feature_statistics(real)
    np.testing.assert_allclose(sigma, np.cov(real.T))  # N - 1


def test_score_carries_the_protocol_and_the_weights_checksum(nets, clips, tmp_path):
    ours, _ = nets
    path = tmp_path / "random_i3d.pt"
    torch.save(ours.state_dict(), path)
    net = fvd.InceptionI3d.from_file(path)
    real = np.concatenate([clips, clips[:, ::-1]])  # 4 clips: some spread for the covariance
    same = fvd.compute_fvd(net, real, real, batch_size=2)
    assert same.fvd == pytest.approx(0.0, abs=1e-3)
    assert (same.n_real, same.n_fake) == (4, 4)
    protocol = same.protocol
    assert protocol["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (protocol["frames"], protocol["resolution"]) == (16, 224)
    assert "bilinear" in protocol["resize"] and "align_corners=False" in protocol["resize"]
    assert "400" in protocol["feature_layer"] and "before softmax" in protocol["feature_layer"]
