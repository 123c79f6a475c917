"""`megactor serve`: the flows as Prefect deployments, on a Prefect server backed by PostgreSQL with its API behind
an auth string (as the compose file runs it); a run triggered through Prefect's own CLI (as from the UI or the
API) is the curation run the CLI makes, and the server records its flow run, task runs and artifacts."""

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


AUTH = "megactor:test-secret"


@pytest.fixture(scope="module")
def postgres_api(tmp_path_factory):
    from tests.flows.postgres import postgres_bin, postgres_cluster, prefect_server

    if postgres_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    work = tmp_path_factory.mktemp("postgres")
    with postgres_cluster(work) as database, prefect_server(work, database, AUTH) as api:
        yield api


def _prefect(api: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": AUTH}
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_the_api_refuses_requests_without_the_auth_string(postgres_api):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{postgres_api}/flows/filter", data=b"{}", timeout=10)
    assert refused.value.code == 401


def test_a_deployment_run_is_the_cli_run(tmp_path, postgres_api, weights_root, videos_dir):
    api = postgres_api
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": AUTH,
           "MEGACTOR_WEIGHTS_DIR": str(weights_root), "MEGACTOR_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
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
    # what the server recorded, read from its REST API with the auth string: the entry flow run, the curation
    # flow under it, its tasks and artifacts
    flows = {f["id"]: f["name"] for f in _api(api, "flows/filter")}
    flow_runs = _api(api, "flow_runs/filter")
    names = {run["id"]: flows.get(run["flow_id"]) for run in flow_runs}
    done = [r for r in flow_runs if r["state_type"] == "COMPLETED"]
    assert any(names[r["id"]] == "megactor-curate-run" for r in done), sorted(set(names.values()))
    child = {r["id"] for r in done if names[r["id"]] == "megactor-curate" and r["parent_task_run_id"]}
    assert child  # the CLI's flow, as a subflow of the deployment's run
    assert any(t["flow_run_id"] in child and t["name"].startswith("score-shard") for t in _api(api, "task_runs/filter"))
    assert any(a["flow_run_id"] in child for a in _api(api, "artifacts/filter"))


def _api(api: str, path: str) -> list[dict]:
    import base64
    import urllib.request

    request = urllib.request.Request(f"{api}/{path}", data=b"{}", method="POST", headers={
        "Content-Type": "application/json", "Authorization": "Basic " + base64.b64encode(AUTH.encode()).decode()})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
