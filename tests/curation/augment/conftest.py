"""Fixtures for the augmentation tests: tiny InsightFace-contract models, a tiny diffusers img2img folder, and a
curated run of short spans of the shared clips."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests import tiny_insightface


@pytest.fixture(scope="session", autouse=True)
def _close_models():
    """MediaPipe must be closed before the interpreter's exit tears its threads down."""
    yield
    from curation.augment.pipeline import close_cached_components

    close_cached_components()


@pytest.fixture(scope="session")
def tiny_faceswap_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-insightface-session")
    return {"arcface": tiny_insightface.arcface(folder / "arcface.onnx"),
            "swapper": tiny_insightface.swapper(folder / "colour.onnx", "colour")}


@pytest.fixture(scope="session")
def tiny_stylizer(tmp_path_factory):
    from tests.tiny_diffusers import build_tiny_img2img

    return build_tiny_img2img(tmp_path_factory.mktemp("tiny-sd") / "pipeline")


@pytest.fixture(scope="session")
def augment_overrides(tiny_faceswap_models, tiny_stylizer, weights_root):
    """Settings for runs on tiny models: the real light detector, tiny ArcFace/swapper/diffusion, a 64 px
    stylization crop, and checks opened up (tiny models' faces are not faces: the checks' own tests use
    controlled swappers)."""
    os.environ.setdefault("MEGACTOR_WEIGHTS_DIR", str(weights_root))
    return {
        "faceswap.detector": "scrfd_500m",
        "faceswap.embedder_weights": str(tiny_faceswap_models["arcface"]),
        "faceswap.swapper_weights": str(tiny_faceswap_models["swapper"]),
        "stylize.model_dir": str(tiny_stylizer), "stylize.resolution": 64, "stylize.batch_size": 8,
        "checks.same_person_min": -1.0, "checks.closer_to_original_frac_max": 1.0,
        "checks.mouth_open_error_max": 10.0, "checks.eye_open_error_max": 10.0,
        "checks.min_motion_frames_frac": 0.0, "checks.flicker_ratio_max": None,
        "runtime.device": "cpu",
    }


@pytest.fixture(scope="session")
def faceless_clip(tmp_path_factory):
    """A 2 s talking-head-sized video with audio and no face in it."""
    path = tmp_path_factory.mktemp("faceless") / "wall.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=s=512x512:r=25",
                    "-f", "lavfi", "-i", "sine=f=220:sample_rate=16000", "-t", "2", "-pix_fmt", "yuv420p",
                    "-c:v", "libx264", "-c:a", "aac", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, tiny_manifest, faceless_clip):
    """A curated run: the two tiny-manifest clips cut to 2 s, a clip whose file is gone, a clip without a face."""
    from curation.io import part_files
    from curation.manifest import read_manifest
    from tests.tiny_manifest import shortened_manifest

    template = read_manifest(tiny_manifest).to_pylist()[0]
    gone = {**template, "clip_id": "00-gone", "video_id": "gone", "source_path": "/nonexistent/gone.mp4",
            "start_s": 0.0, "end_s": 2.0, "duration_s": 2.0}
    wall = {**template, "clip_id": "01-wall", "video_id": "wall", "source_path": str(faceless_clip),
            "start_s": 0.0, "end_s": 2.0, "duration_s": 2.0, "source_duration_s": 2.0,
            "face_track": [p for p in template["face_track"] if p["t"] < 2.0]}
    run = shortened_manifest(tiny_manifest, tmp_path_factory.mktemp("short-run"), 2.0, [gone, wall])
    assert len(part_files(run / "manifest")) == 1
    return run
