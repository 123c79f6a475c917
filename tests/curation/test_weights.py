import hashlib
import os
import subprocess
import sys

import pytest

from curation import weights
from curation.errors import WeightsMissingError
from tests.conftest import REPO


def test_registry_entry_has_official_url_checksum_and_licence():
    spec = weights.get_spec("face_landmarker")
    assert spec.urls[0].startswith("https://storage.googleapis.com/mediapipe-models/")
    assert len(spec.sha256) == 64 and spec.licence == "Apache-2.0"


def test_shared_weights_resolve_and_verify(face_landmarker_path, monkeypatch):
    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(face_landmarker_path.parents[1]))
    assert weights.resolve("face_landmarker") == face_landmarker_path
    assert weights.sha256_file(face_landmarker_path) == weights.get_spec("face_landmarker").sha256


def test_missing_file_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("MEGACTOR_OFFLINE", "1")
    with pytest.raises(WeightsMissingError, match="megactor weights fetch face_landmarker"):
        weights.resolve("face_landmarker")


def test_corrupt_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(tmp_path))
    bad = tmp_path / "mediapipe" / "face_landmarker.task"
    bad.parent.mkdir()
    bad.write_bytes(b"not a model")
    assert weights.status("face_landmarker")[0] == "corrupt"
    with pytest.raises(WeightsMissingError, match="sha256"):
        weights.resolve("face_landmarker")


def test_mirror_directory_is_used(tmp_path, monkeypatch, face_landmarker_path):
    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("MEGACTOR_WEIGHTS_MIRROR", str(face_landmarker_path.parents[1]))
    assert weights.resolve("face_landmarker") == face_landmarker_path


def test_fetch_resumes_a_partial_download_and_verifies(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 4096
    spec = weights.WeightSpec("toy", "toy/model.bin", ((tmp_path / "src.bin").as_uri(),),
                              hashlib.sha256(payload).hexdigest(), len(payload), "MIT", "test file")
    (tmp_path / "src.bin").write_bytes(payload)
    monkeypatch.setitem(weights.REGISTRY, "toy", spec)
    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(tmp_path / "cache"))
    partial = tmp_path / "cache" / "toy" / "model.bin.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(payload[:1000])  # file:// ignores Range: the download must restart cleanly
    path = weights.fetch("toy", progress=False)
    assert path.read_bytes() == payload and not partial.exists()


def test_every_model_of_both_profiles_is_registered_with_checksum_size_and_url():
    from curation.config import load_config
    from curation.pipeline import build_scorers

    for profile in ("lite", "paper"):
        for scorer in build_scorers(load_config(None, {"profile": profile}), device="cpu"):
            for name in scorer.weight_sources():
                spec = weights.get_spec(name)
                assert len(spec.sha256) == 64 and spec.size_bytes > 0 and spec.urls and spec.licence
                assert all(url.startswith("https://") for url in spec.urls)


def test_a_configured_local_file_replaces_the_registry_and_its_checksum_is_recorded(tmp_path):
    local = tmp_path / "my_syncnet.model"
    local.write_bytes(b"fine-tuned weights")
    assert weights.resolve_or_local("syncnet_v2", local) == local
    assert weights.model_sha256("syncnet_v2", local) == weights.sha256_file(local)
    assert weights.model_sha256("syncnet_v2", None) == weights.get_spec("syncnet_v2").sha256
    with pytest.raises(WeightsMissingError, match="does not exist"):
        weights.resolve_or_local("syncnet_v2", tmp_path / "missing.model")


def test_weights_command_lists_a_profile_and_names_the_fetch_command(tmp_path):
    env = {**os.environ, "MEGACTOR_WEIGHTS_DIR": str(tmp_path), "MEGACTOR_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "weights", "list", "--profile", "paper"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("yolox_l", "dw-ll_ucoco_384", "syncnet_v2"):
        assert f"  {name} " in done.stdout
    assert "face_landmarker" not in done.stdout  # the lite face model is not the paper profile's
    assert "fetch with: megactor weights fetch yolox_l dw-ll_ucoco_384 syncnet_v2" in done.stdout
    done = subprocess.run([sys.executable, "-m", "flows.cli", "weights", "fetch", "no_such_model"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 2 and "unknown model" in done.stderr
