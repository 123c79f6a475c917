"""A local Prefect server for a run when no ``PREFECT_API_URL`` is set.

Prefect's ephemeral API would start a temporary server inside every Ray worker (about 12 s each, all writing
one SQLite file); one real server for the run is faster and gives a UI to watch. An already running local
server (same port) is reused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from curation.errors import MegactorError


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefect_home() -> Path:
    return Path(os.environ.get("MEGACTOR_PREFECT_HOME", Path.home() / ".megactor" / "prefect")).expanduser()


class LocalPrefectServer:
    """Context manager: sets ``PREFECT_API_URL`` for this process (and the Ray workers it starts)."""

    def __init__(self, port: int = 4200, keep: bool = False, timeout_s: float = 90.0):
        self.port, self.keep, self.timeout_s = port, keep, timeout_s
        self.process: subprocess.Popen | None = None
        self.ui_url = ""
        self.home = prefect_home()

    def __enter__(self) -> LocalPrefectServer:
        api = f"http://127.0.0.1:{self.port}/api"
        if not _healthy(api):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    self.port = _free_port()  # the port is taken by something that is not Prefect
            except OSError:
                pass
            api = f"http://127.0.0.1:{self.port}/api"
            self._start()
        self.ui_url = f"http://127.0.0.1:{self.port}"
        os.environ["PREFECT_API_URL"] = api
        return self

    def _start(self) -> None:
        home = self.home
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_UI_ENABLED": "true"}
        env.pop("PREFECT_API_URL", None)
        log = open(home / "server.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + self.timeout_s
        api = f"http://127.0.0.1:{self.port}/api"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MegactorError(f"the local Prefect server exited at start; see {home / 'server.log'}")
            if _healthy(api):
                return
            time.sleep(0.5)
        self.process.terminate()
        raise MegactorError(f"the local Prefect server did not answer in {self.timeout_s:.0f} s; "
                            f"see {home / 'server.log'}, or set PREFECT_API_URL to a running server")

    def __exit__(self, *exc) -> None:
        if self.process is not None and not self.keep:
            try:  # send the run's last logs while the server still listens (else: "Error logging to API")
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=10)
            except Exception:  # noqa: BLE001 - a log that cannot be sent must not fail the run
                pass
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
