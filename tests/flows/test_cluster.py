"""The curation flow on a Ray cluster of two nodes (a head and a worker node, each started by ``ray start``
as a separate process group on this machine), and what survives when a worker process or the worker node is
killed.

Which node ran a shard is read from Ray's own logs: a shard's done marker records its worker's pid, and each
raylet logs the pids of the workers it started."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from flows.server import _free_port
from tests.flows.conftest import REPO, subset

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
CLIPS = ["pcavs_pose_517600055.mp4",  # 224 px, 4.5 s: passes the lowered gate
         "sadtalker_WDA_KatieHill_000.mp4",
         "vretalking_face_1.mp4",
         "liveportrait_d0_noaudio.mp4"]  # no audio stream: rejected by the metadata gate
# one source per shard, so that four shards spread over two one-CPU nodes; no SyncNet and a lowered face
# threshold keep the runs short while every clip still goes through the face scorer
SETTINGS = ("--no-sync", "--set", "thresholds.face_res_px_min=150", "--set", "runtime.shard_max_files=1")
# a raylet's log line for each worker process it starts: "[date time I RAYLET_PID TID] (raylet) ... pid N"
STARTED_WORKER = re.compile(r"^\[[^]]* I (\d+) \d+\] \(raylet\) .*Started worker process with pid (\d+)",
                            re.MULTILINE)


class RayCluster:
    """A head and one worker node on 127.0.0.1, with their own temp dir and ports (other Ray instances on the
    same machine are left alone: everything is stopped by process group and pid, never by ``ray stop``)."""

    def __init__(self, temp_dir: Path):
        self.temp_dir = temp_dir
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        self.groups: dict[str, int] = {}
        try:
            self.head = self._start("head", "--head", "--port", str(self.port), "--include-dashboard=false",
                                    "--temp-dir", str(temp_dir), "--resources", '{"head": 1}',
                                    "--ray-client-server-port", str(_free_port()))
            self.worker = self._start("worker", "--address", self.address,
                                      "--resources", '{"worker_node": 1}')
        except BaseException:
            for group in self.groups.values():
                _kill_group(group)
            raise

    def _start(self, name: str, *args: str) -> int:
        """Start a node; returns its raylet's pid."""
        process = subprocess.Popen(
            [RAY, "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
             "--disable-usage-stats",
             "--dashboard-agent-listen-port", str(_free_port()), "--metrics-export-port", str(_free_port())],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.groups[name] = process.pid  # the node's daemons keep this process group after `ray start` exits
        out, _ = process.communicate(timeout=180)
        if process.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed:\n{out[-3000:]}")
        group = [(pid, args) for pid, pgid, _, args in processes() if pgid == process.pid]
        raylets = [pid for pid, args in group if args.split()[0].endswith("/raylet")]
        if len(raylets) != 1:
            logs = sorted((self.temp_dir / "session_latest" / "logs").glob("raylet*.out"))
            tails = "\n".join(f"{log}: {log.read_text(errors='replace')[-1500:]}" for log in logs)
            raise RuntimeError(f"ray start ({name}): no raylet running; its processes: {group}\n"
                               f"{out[-2000:]}\n{tails}")
        return raylets[0]

    def workers(self, raylet: int) -> list[tuple[int, str]]:
        """(pid, title) of the worker processes a raylet started (titled ``ray::TASK`` while running one)."""
        return [(pid, args) for pid, _, ppid, args in processes()
                if ppid == raylet and args.startswith("ray::")]

    def node_of_worker(self) -> dict[int, str]:
        """Worker pid -> "head" / "worker", from the raylets' logs ("Started worker process with pid N")."""
        nodes = {self.head: "head", self.worker: "worker"}
        found: dict[int, str] = {}
        for log in (self.temp_dir / "session_latest" / "logs").glob("raylet*.out"):
            for raylet, worker in re.findall(STARTED_WORKER, log.read_text(errors="replace")):
                if int(raylet) in nodes:
                    found[int(worker)] = nodes[int(raylet)]
        return found

    def kill_node(self, name: str) -> None:
        """SIGKILL a node as a machine failure would: its daemons (process group) and its workers."""
        raylet = self.head if name == "head" else self.worker
        workers = [pid for pid, _ in self.workers(raylet)]
        _kill_group(self.groups[name])
        for pid in workers:
            _kill(pid)

    def stop(self) -> None:
        for name in ("worker", "head"):
            self.kill_node(name)


def processes() -> list[tuple[int, int, int, str]]:
    """(pid, pgid, ppid, command line) of every process."""
    listing = subprocess.run(["ps", "-ww", "-eo", "pid=,pgid=,ppid=,args="], capture_output=True,
                             text=True).stdout  # -ww: whole command lines, whatever the terminal's width
    fields = (line.split(None, 3) for line in listing.splitlines())
    return [(int(f[0]), int(f[1]), int(f[2]), f[3]) for f in fields if len(f) == 4]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def cluster():
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths fit 107 bytes
    ray_cluster = None
    try:
        ray_cluster = RayCluster(temp_dir)  # a failed start stops what it started
        yield ray_cluster
    finally:
        if ray_cluster is not None:
            ray_cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster_input(tmp_path_factory, videos_dir):
    return subset(tmp_path_factory.mktemp("cluster-input"), videos_dir, CLIPS)


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, megactor, cluster_input):
    output = tmp_path_factory.mktemp("cluster-reference")
    megactor("curate", "--input", str(cluster_input), "--output", str(output), "--executor", "local",
             *SETTINGS)
    return _manifest(output)


def _manifest(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output / "manifest").sort_values("clip_id").reset_index(drop=True)


def _shard_pids(output: Path) -> dict[int, int]:
    import json

    markers = sorted((output / "_state" / "shards").glob("shard-*.json"))
    return {json.loads(m.read_text())["shard"]: json.loads(m.read_text())["pid"] for m in markers}


def assert_same_manifest(output: Path, reference: pd.DataFrame) -> None:
    """Every source accounted for once, and the same rows, scores and decisions as the local run (the manifest
    holds no timings; the inputs are the same paths)."""
    df = _manifest(output)
    assert df["clip_id"].is_unique
    assert sorted({p.rsplit("/", 1)[1] for p in df["source_path"]}) == sorted(CLIPS)
    pd.testing.assert_frame_equal(df, reference)
    parts = sorted(p.name for p in (output / "manifest").iterdir())
    visible = [p for p in parts if not p.startswith(".")]
    assert visible == [f"part-{i:05d}.parquet" for i in range(len(CLIPS))], parts


def _hidden(output: Path) -> list[str]:
    """Temporary files a killed writer left in the manifest directory (hidden: readers skip them)."""
    return sorted(p.name for p in (output / "manifest").glob(".*"))


def _start_curate(prefect_api, weights_root, random_syncnet_weights, source: Path, output: Path,
                  address: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": prefect_api[0], "MEGACTOR_WEIGHTS_DIR": str(weights_root),
           "MEGACTOR_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "curate", "--input", str(source), "--output",
                             str(output), "--ray-address", address, *SETTINGS,
                             "--set", f"sync.weights={random_syncnet_weights}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_shard_on(cluster: RayCluster, raylet: int, process: subprocess.Popen,
                       timeout: float = 240) -> int:
    """The pid of a worker of ``raylet`` that is running a shard task, as soon as one is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        running = [pid for pid, title in cluster.workers(raylet) if title.startswith("ray::score-shard")]
        if running:
            return running[0]
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"no shard ran on raylet {raylet}: {process.communicate()[0][-3000:]}")


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
    return process.returncode, out


def test_shards_spread_over_both_nodes_and_match_a_local_run(cluster, cluster_input, local_reference,
                                                             megactor, tmp_path):
    output = tmp_path / "out"
    done = megactor("curate", "--input", str(cluster_input), "--output", str(output), "--ray-address",
                    cluster.address, *SETTINGS)
    assert "Using Ray cluster with 2 nodes" in done.stdout + done.stderr
    nodes = cluster.node_of_worker()
    shard_nodes = {shard: nodes.get(pid) for shard, pid in _shard_pids(output).items()}
    assert sorted(shard_nodes) == list(range(len(CLIPS)))
    assert set(shard_nodes.values()) == {"head", "worker"}, shard_nodes
    assert_same_manifest(output, local_reference)


def test_a_worker_killed_mid_shard_loses_nothing(cluster, cluster_input, local_reference, megactor, tmp_path,
                                                 prefect_api, weights_root, random_syncnet_weights):
    output = tmp_path / "out"
    process = _start_curate(prefect_api, weights_root, random_syncnet_weights, cluster_input, output,
                            cluster.address)
    victim = _wait_for_shard_on(cluster, cluster.worker, process)
    time.sleep(0.3)
    title = dict(cluster.workers(cluster.worker)).get(victim, "")
    os.kill(victim, signal.SIGKILL)
    assert title.startswith("ray::score-shard"), "the worker must die inside a shard task"
    returncode, out = _finish(process)
    print(f"worker killed mid-shard: first run exited {returncode}; leftovers: {_hidden(output)}")
    if returncode != 0:  # Ray did not retry it: the run reports the shard, and a rerun scores it
        assert "rerun the same command" in out, out[-3000:]
        megactor("curate", "--input", str(cluster_input), "--output", str(output), "--ray-address",
                 cluster.address, *SETTINGS)
    assert_same_manifest(output, local_reference)


def test_the_worker_node_killed_mid_run_loses_nothing(cluster, cluster_input, local_reference, megactor,
                                                      tmp_path, prefect_api, weights_root,
                                                      random_syncnet_weights):
    """Runs last: the worker node does not come back."""
    output = tmp_path / "out"
    process = _start_curate(prefect_api, weights_root, random_syncnet_weights, cluster_input, output,
                            cluster.address)
    _wait_for_shard_on(cluster, cluster.worker, process)
    time.sleep(0.3)
    cluster.kill_node("worker")
    returncode, out = _finish(process)
    print(f"worker node killed mid-run: first run exited {returncode}; leftovers: {_hidden(output)}")
    if returncode != 0:
        assert "rerun the same command" in out, out[-3000:]
        megactor("curate", "--input", str(cluster_input), "--output", str(output), "--ray-address",
                 cluster.address, *SETTINGS)
    assert_same_manifest(output, local_reference)
