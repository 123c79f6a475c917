"""A throwaway PostgreSQL cluster on loopback (Debian's `postgresql` package; `.ci/run` installs it), and a Prefect
server on it: the compose file's database, for tests."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from flows.server import _free_port


def postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _as_owner(args: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *args] if owner else args


@contextmanager
def postgres_cluster(work: Path):
    """Yields the connection URL of a fresh cluster with a `prefect` database (trust auth, loopback only)."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
    owner = "postgres" if os.geteuid() == 0 else None  # the server refuses to run as root
    # its own folder under /tmp: pytest's are private to the user running the tests
    base = Path(tempfile.mkdtemp(prefix="megactor-pg-"))
    data = base / "pgdata"
    data.mkdir()
    if owner:
        shutil.chown(base, user=owner)
        shutil.chown(data, user=owner)
    port = _free_port()
    subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], owner),
                   check=True, capture_output=True)
    log = base / "postgres.log"
    if owner:
        log.touch()
        shutil.chown(log, user=owner)
    subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                              f"-p {port} -c listen_addresses=127.0.0.1 -k {data}", "start"], owner),
                   check=True, capture_output=True)
    try:
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect"],
                       check=True, capture_output=True)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], owner),
                       capture_output=True)
        if log.is_file():
            shutil.copyfile(log, work / "postgres.log")
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def prefect_server(work: Path, database_url: str, auth: str):
    """A Prefect server on the database, its API behind ``auth`` ("user:password"); yields the API URL."""
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect-home"), "PREFECT_API_DATABASE_CONNECTION_URL":
           database_url, "PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=open(work / "prefect.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2):
                    break
            except urllib.error.HTTPError:  # it answers (401 without credentials): it is up
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Prefect server did not start:\n"
                                       + (work / "prefect.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield api
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
