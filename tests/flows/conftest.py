"""Flow tests run the real ``megactor`` command in a subprocess, against one local Prefect server for the
session (as a user's run would, minus the per-run server start)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    from flows.server import LocalPrefectServer

    home = tmp_path_factory.mktemp("prefect-home")
    old = {k: os.environ.get(k) for k in ("MEGACTOR_PREFECT_HOME", "PREFECT_API_URL")}
    os.environ["MEGACTOR_PREFECT_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    from flows.server import _free_port

    with LocalPrefectServer(port=_free_port()) as server:
        yield os.environ["PREFECT_API_URL"], server.ui_url
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def megactor(prefect_api, weights_root, random_syncnet_weights):
    """Run ``megactor ARGS`` in a subprocess; returns the CompletedProcess (never raises on exit status).
    ``curate`` runs use SyncNet with fixed random weights (the real ones cannot be downloaded here): the scores
    are meaningless, the computation and the plumbing are real."""

    def run(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        if args and args[0] == "curate":
            args = (*args, "--set", f"sync.weights={random_syncnet_weights}")
        env = {**os.environ, "PREFECT_API_URL": prefect_api[0], "MEGACTOR_WEIGHTS_DIR": str(weights_root),
               "MEGACTOR_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        done = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"megactor {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                                 f"{done.stderr[-6000:]}")
        return done

    return run


@pytest.fixture(scope="session")
def trained(tmp_path_factory, megactor, tiny_manifest):
    """The three stages chained through ``megactor train --stage all`` (tiny model, 64 px, two steps each, the
    local executor: Ray Train's launch is tested on its own in test_train_flow): the training flow's test and
    the animation and evaluation flows' input."""
    output = tmp_path_factory.mktemp("train")
    done = megactor("train", "--stage", "all", "--manifest", str(tiny_manifest.parent), "--output", str(output),
                    "--executor", "local", "--set", "model.preset=tiny", "--set", "data.resolution=64", "--set", "steps=2",
                    "--set", "loader_workers=1", "--set", "checkpoint_every=1", timeout=900)
    return output, done


def subset(directory: Path, videos_dir: Path, names: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).symlink_to(videos_dir / name)
    return directory
