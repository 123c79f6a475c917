"""Failures inside one shard, on the Prefect-free path the flow's shard task runs (``ShardProcessor``): a
scorer that raises on one clip, a worker killed while writing its part, and an output disk that is read-only
or full at commit time.

Killed processes on a cluster are tested where the cluster is: a Ray worker killed mid-shard and the worker
node killed mid-run in ``test_cluster.py``; the driver killed mid-run in
``test_curate_flow.py::test_resume_after_interruption_matches_an_uninterrupted_run``."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from curation.config import load_config
from curation.inventory import inventory_rows
from curation.io import part_files
from curation.pipeline import OutputLayout, ShardProcessor, close_cached_scorers
from curation.scorers.face_mediapipe import MediaPipeFaceScorer
from curation.sources import make_source
from tests.flows.conftest import REPO, subset

SOURCES = ["pcavs_pose_517600055.mp4",  # short; scored with the lowered face threshold
           "vretalking_face_1.mp4",
           "liveportrait_d0_noaudio.mp4"]  # no audio stream: stopped by the metadata gate
FAILING = "pcavs_pose_517600055.mp4"
OVERRIDES = {"sync.enabled": False, "thresholds.face_res_px_min": 150, "runtime.device": "cpu"}

pytestmark = pytest.mark.slow  # real clips through MediaPipe, about half a minute


@pytest.fixture(scope="module")
def config(weights_root):
    os.environ.setdefault("MEGACTOR_WEIGHTS_DIR", str(weights_root))
    yield load_config(None, OVERRIDES)
    close_cached_scorers()  # MediaPipe must be closed before the interpreter's exit tears its threads down


@pytest.fixture(scope="module")
def sources(tmp_path_factory, videos_dir) -> list[dict]:
    folder = subset(tmp_path_factory.mktemp("failure-input"), videos_dir, SOURCES)
    return inventory_rows(list(make_source("folder", folder).iter_files()))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config, sources) -> pd.DataFrame:
    output = tmp_path_factory.mktemp("uninterrupted")
    ShardProcessor(config, output).process(0, sources)
    return _manifest(output)


def _manifest(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output / "manifest").sort_values("clip_id").reset_index(drop=True)


def test_a_scorer_raising_on_one_clip_gives_an_error_row_and_the_shard_commits(monkeypatch, tmp_path, config,
                                                                              sources, reference):
    score = MediaPipeFaceScorer.score

    def failing_score(self, clip, upstream):
        if clip.path.endswith("/" + FAILING):
            raise RuntimeError("injected scorer bug")
        return score(self, clip, upstream)

    monkeypatch.setattr(MediaPipeFaceScorer, "score", failing_score)
    result = ShardProcessor(config, tmp_path).process(0, sources)

    assert OutputLayout(tmp_path).shard_done(0).exists()
    assert result["scorers"]["face_mediapipe"]["internal_errors"] == 1
    df = _manifest(tmp_path)
    assert df["clip_id"].tolist() == reference["clip_id"].tolist()  # every clip accounted for, once
    failed = df["source_path"].str.endswith("/" + FAILING)
    assert failed.sum() == 1
    row = df[failed].iloc[0]
    assert row["status"] == "error" and not row["keep"]
    assert row["error_reason"] == "internal_error" and "injected scorer bug" in row["error"]
    assert pd.isna(row["face_res_px"])
    assert reference.loc[failed, "status"].iloc[0] != "error"
    pd.testing.assert_frame_equal(df[~failed], reference[~failed])  # the other clips are untouched


DIE_WHILE_WRITING = """
import json, os, signal, sys
from pathlib import Path

import pyarrow.parquet as pq

from curation import io
from curation.config import load_config
from curation.inventory import inventory_rows
from curation.io import part_files
from curation.pipeline import ShardProcessor
from curation.sources import make_source

write_table = pq.write_table


def write_half_then_die(table, where, **kwargs):
    write_table(table, where, **kwargs)
    os.truncate(where, os.path.getsize(where) // 2)  # half of the part is on disk ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... when the worker dies


io.pq.write_table = write_half_then_die
config = load_config(None, json.loads(sys.argv[3]))
sources = inventory_rows(list(make_source("folder", Path(sys.argv[1])).iter_files()))
ShardProcessor(config, sys.argv[2]).process(0, sources)
"""


def test_a_worker_killed_while_writing_its_part_leaves_no_visible_part(tmp_path, config, sources, reference):
    folder = Path(sources[0]["source_path"]).parent
    output = tmp_path / "out"
    died = subprocess.run([sys.executable, "-c", DIE_WHILE_WRITING, str(folder), str(output),
                           json.dumps(OVERRIDES)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    layout = OutputLayout(output)
    assert not layout.shard_done(0).exists()
    assert part_files(layout.manifest) == []
    (half,) = layout.manifest.iterdir()  # the half-written temporary file, hidden from readers
    assert half.name.startswith(".part-00000.parquet.") and half.name.endswith(".tmp")

    ShardProcessor(config, output).process(0, sources)  # the rerun
    assert layout.shard_done(0).exists()
    pd.testing.assert_frame_equal(_manifest(output), reference)  # the stale temporary file is not read
    assert duckdb.sql(f"SELECT count(*) FROM '{layout.manifest}/*.parquet'").fetchall() == [(len(reference),)]


# -- the output disk at commit time -------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (mounting needs root; a non-root run tests a read-only output with permissions)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        yield None
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@contextlib.contextmanager
def read_only(output: Path, mount_point: Path | None):
    """Root writes through file permissions, so as root the file system itself is remounted read-only."""
    if mount_point is not None:
        subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
        try:
            yield
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mount_point)], check=True)
        return
    directories = [d for d in output.rglob("*") if d.is_dir()] + [output]
    for directory in directories:
        directory.chmod(0o555)
    try:
        yield
    finally:
        for directory in directories:
            directory.chmod(0o755)


def _committed_nothing(layout: OutputLayout) -> None:
    assert not layout.shard_done(0).exists()
    assert list(layout.manifest.iterdir()) == [], "no part and no temporary file may be left behind"


def _prepared(output: Path) -> OutputLayout:
    layout = OutputLayout(output)  # the directories the flow creates before any shard runs
    layout.manifest.mkdir(parents=True)
    layout.shard_done(0).parent.mkdir(parents=True)
    return layout


def test_a_read_only_output_fails_the_shard_clearly_and_a_rerun_repairs_it(small_disk, tmp_path, config,
                                                                           sources, reference):
    output = (small_disk or tmp_path) / "out"
    layout = _prepared(output)
    with read_only(output, small_disk), pytest.raises(OSError) as caught:
        ShardProcessor(config, output).process(0, sources)
    message = str(caught.value)
    assert caught.value.errno in (errno.EROFS, errno.EACCES) or "Read-only file system" in message or \
        "Permission denied" in message
    assert str(layout.manifest) in message  # says where
    _committed_nothing(layout)

    ShardProcessor(config, output).process(0, sources)  # the rerun, with the disk writable again
    assert layout.shard_done(0).exists()
    pd.testing.assert_frame_equal(_manifest(output), reference)


def test_a_full_output_disk_fails_the_shard_clearly_and_a_rerun_repairs_it(small_disk, config, sources,
                                                                           reference):
    if small_disk is None:
        pytest.skip("filling a disk needs a tmpfs of its own, which needs root to mount")
    output = small_disk / "out"
    layout = _prepared(output)
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)
    with pytest.raises(OSError) as caught:
        ShardProcessor(config, output).process(0, sources)
    message = str(caught.value)
    assert caught.value.errno == errno.ENOSPC and "No space left on device" in message, message
    assert str(layout.manifest / "part-00000.parquet") in message  # says where
    _committed_nothing(layout)

    filler.unlink()
    ShardProcessor(config, output).process(0, sources)
    assert layout.shard_done(0).exists()
    pd.testing.assert_frame_equal(_manifest(output), reference)
