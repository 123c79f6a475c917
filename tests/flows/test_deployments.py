"""`megactor serve`: the flows as Prefect deployments; a run triggered through Prefect's own CLI (as from the UI
or the API) is the curation run the CLI makes, and the server records its flow run, task runs and artifacts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.flows.conftest import REPO, subset

pytestmark = pytest.mark.slow


def _prefect(api: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api}
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_a_deployment_run_is_the_cli_run(tmp_path, prefect_api, weights_root, videos_dir):
    api = prefect_api[0]
    env = {**os.environ, "PREFECT_API_URL": api, "MEGACTOR_WEIGHTS_DIR": str(weights_root), "MEGACTOR_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    serving = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "curate"], env=env, cwd=REPO,
                               stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "megactor-curate-run/curate" not in (tmp_path / "serve.log").read_text():
            assert serving.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(1)
        source = subset(tmp_path / "input", videos_dir, ["liveportrait_d0_noaudio.mp4"])
        output = tmp_path / "out"
        params = {"inputs": [str(source)], "output": str(output), "overrides": {"sync.enabled": False}}
        done = _prefect(api, "deployment", "run", "megactor-curate-run/curate", "--params", json.dumps(params),
                        "--watch", timeout=600)
        assert done.returncode == 0 and "Completed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        os.killpg(serving.pid, signal.SIGTERM)
        serving.wait(timeout=60)
    manifest = pd.read_parquet(output / "manifest")
    assert len(manifest) == 1 and set(manifest["status"]) == {"rejected"}
    assert "no_audio_stream" in list(manifest["reject_reasons"][0])
    # what the server recorded: the entry flow run, the curation flow under it, its tasks and artifacts
    runs = _prefect(api, "flow-run", "ls", "--limit", "50")
    assert runs.returncode == 0
    from prefect.client.orchestration import get_client

    async def recorded():
        async with get_client() as client:
            flows = {f.id: f.name for f in await client.read_flows()}
            flow_runs = await client.read_flow_runs()
            task_runs = await client.read_task_runs()
            artifacts = await client.read_artifacts()
            return flows, flow_runs, task_runs, artifacts

    import asyncio

    os.environ["PREFECT_API_URL"] = api
    flows, flow_runs, task_runs, artifacts = asyncio.run(recorded())
    by_name = {}
    for run in flow_runs:
        by_name.setdefault(flows.get(run.flow_id), []).append(run)
    entry = [r for r in by_name.get("megactor-curate-run", []) if r.state and r.state.is_completed()]
    assert entry, sorted(n for n in by_name if n)
    child = [r for r in by_name.get("megactor-curate", []) if r.parent_task_run_id is not None
             and r.state and r.state.is_completed()]
    assert child  # the CLI's flow, as a subflow of the deployment's run
    mine = {r.id for r in child}
    assert any(t.flow_run_id in mine and t.name.startswith("score-shard") for t in task_runs)
    assert any(a.flow_run_id in mine for a in artifacts)
