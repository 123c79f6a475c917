import hashlib

import pytest

from curation import weights
from curation.errors import WeightsMissingError


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
