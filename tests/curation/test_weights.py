import hashlib
import json
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


def test_folder_entry_fetches_each_file_records_unpublished_checksums_and_catches_corruption(tmp_path, monkeypatch):
    source = tmp_path / "hub"
    (source / "unet").mkdir(parents=True)
    (source / "model_index.json").write_text('{"_class_name": "Toy"}')
    (source / "unet" / "weights.bin").write_bytes(b"\x01" * 5000)
    published = hashlib.sha256(b'{"_class_name": "Toy"}').hexdigest()
    spec = weights.WeightSpec("toy-folder", "diffusers/toy", (source.as_uri(),), "", 0, "MIT", "test folder",
                              files=(weights.FolderFile("model_index.json", published),
                                     weights.FolderFile("unet/weights.bin", None)))
    monkeypatch.setitem(weights.REGISTRY, "toy-folder", spec)
    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MEGACTOR_OFFLINE", "1")
    assert weights.status("toy-folder")[0] == "missing" and not spec.verified
    with pytest.raises(WeightsMissingError, match="megactor weights fetch toy-folder"):
        weights.resolve("toy-folder")
    folder = weights.fetch("toy-folder", progress=False)
    assert folder.is_dir() and weights.resolve("toy-folder") == folder
    recorded = json.loads((folder / weights.LOCK_FILE).read_text())
    assert recorded["unet/weights.bin"] == hashlib.sha256(b"\x01" * 5000).hexdigest()
    first = weights.model_sha256("toy-folder", None)
    assert len(first) == 64 and weights.model_sha256("toy-folder", folder) == first
    (folder / "unet" / "weights.bin").write_bytes(b"\x02" * 5000)  # changed after the fetch recorded it
    assert weights.status("toy-folder")[0] == "corrupt"
    with pytest.raises(WeightsMissingError, match="unet/weights.bin"):
        weights.resolve("toy-folder")


def test_a_member_of_a_zip_archive_is_fetched_and_verified(tmp_path, monkeypatch):
    import zipfile

    payload = b"onnx bytes" * 1000
    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w") as pack:
        pack.writestr("pack/other.onnx", b"other")
        pack.writestr("pack/det.onnx", payload)
    spec = weights.WeightSpec("toy-member", "toy/det.onnx", (f"{archive.as_uri()}#det.onnx",),
                              hashlib.sha256(payload).hexdigest(), len(payload), "MIT", "test member")
    monkeypatch.setitem(weights.REGISTRY, "toy-member", spec)
    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(tmp_path / "cache"))
    path = weights.fetch("toy-member", progress=False)
    assert path.read_bytes() == payload and not list(path.parent.glob("*.part"))


def test_augmentation_models_are_registered_with_their_published_checksums_and_licences():
    for name, sha in (("inswapper_128", "e4a3f08c753cb72d04e10aa0f7dbe3deebbf39567d4ead6dce08e98aa49e16af"),
                      ("w600k_r50", "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43"),
                      ("det_10g", "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91")):
        spec = weights.get_spec(name)
        assert spec.sha256 == sha and "non-commercial" in spec.licence and spec.urls
    assert weights.get_spec("sd-turbo").is_folder and "Non-Commercial" in weights.get_spec("sd-turbo").licence


def test_the_shared_light_detector_matches_its_registry_entry(weights_root, monkeypatch):
    monkeypatch.setenv("MEGACTOR_WEIGHTS_DIR", str(weights_root))
    assert weights.status("scrfd_500m")[0] == "ok"
