"""A tiny curated manifest made by the real curation code from two shared clips (lite profile, thresholds
loosened so that 512 px talking heads are kept), shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

CLIPS = ("sadtalker_WDA_KatieHill_000.mp4", "mimictalk_German_20s.mp4")


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory, videos_dir, weights_root) -> Path:
    import os

    from curation.config import load_config
    from curation.inventory import inventory_rows
    from curation.manifest import read_manifest
    from curation.pipeline import ShardProcessor
    from curation.sources import make_source

    os.environ.setdefault("MEGACTOR_WEIGHTS_DIR", str(weights_root))
    source = tmp_path_factory.mktemp("train-input")
    for name in CLIPS:
        (source / name).symlink_to(videos_dir / name)
    config = load_config(None, {"sync.enabled": False, "thresholds.require_lip_sync": False,
                                "thresholds.face_res_px_min": 150, "runtime.device": "cpu"})
    output = tmp_path_factory.mktemp("train-manifest")
    rows = inventory_rows(list(make_source("folder", source).iter_files()))
    ShardProcessor(config, output).process(0, rows)
    kept = [row for row in read_manifest(output / "manifest").to_pylist() if row["keep"]]
    assert len(kept) >= 2, "the tiny manifest needs kept clips"
    return output / "manifest"
