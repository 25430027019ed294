"""A real MLflow tracking server on 127.0.0.1 for tests: ``mlflow server``, SQLite backend.

Use the ``mlflow_server`` fixture (register this module as a pytest plugin, or import the
fixture into a test module). It starts one server per test module on a free port with its
backend store (``mlflow.db``) and artifact store under pytest's temporary directory, waits
for ``/health`` (15-25 s on a busy machine), yields a :class:`MlflowServer` and stops it.

Artifacts are served by the server (``--default-artifact-root mlflow-artifacts:/`` proxied to
``--artifacts-destination``): clients upload over HTTP as they would to a remote server, so
a test cannot pass by writing to a shared local directory behind the server's back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ray_head import free_port, log_tail

START_TIMEOUT_S = 120.0  # /health takes 15-25 s on 2 shared cores; leave room under load
STOP_TIMEOUT_S = 20.0


@dataclass
class MlflowServer:
    """A running tracking server: its URI and where it keeps runs and artifacts."""

    uri: str  # http://127.0.0.1:<port>, for --tracking-uri / MlflowClient(uri)
    backend_store: Path  # the SQLite file
    artifacts: Path  # --artifacts-destination
    log_path: Path  # stdout + stderr of `mlflow server`
    process: subprocess.Popen = field(repr=False)

    def tail(self, lines: int = 40) -> str:
        """The server's log tail, for failure messages."""
        return f"--- {self.log_path.name}\n{log_tail(self.log_path, lines)}"


def mlflow_cli() -> str:
    """The ``mlflow`` command of the interpreter running the tests (the project's venv)."""
    beside = Path(sys.executable).with_name("mlflow")
    return str(beside) if beside.is_file() else "mlflow"


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_mlflow_server(base_dir: Path, port: int | None = None) -> MlflowServer:
    """Start ``mlflow server`` with its stores under ``base_dir``; return once /health answers.

    Starting again with the same ``base_dir`` and ``port`` restarts the same server (its
    runs and artifacts are in ``base_dir``), as after an outage.
    """
    base_dir.mkdir(parents=True, exist_ok=True)
    backend_store = base_dir / "mlflow.db"
    artifacts = base_dir / "mlartifacts"
    artifacts.mkdir(exist_ok=True)
    log_path = base_dir / "mlflow-server.log"
    port = port or free_port()
    command = [
        mlflow_cli(), "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",  # the machine is shared; one worker serves a test's requests
        "--backend-store-uri", f"sqlite:///{backend_store}",
        "--default-artifact-root", "mlflow-artifacts:/",
        "--artifacts-destination", artifacts.as_uri(),
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    # Server-side job execution (huey consumers for GenAI scorers) is not needed to track runs
    # and starts a dozen processes on a shared machine.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with log_path.open("a") as log:
        process = subprocess.Popen(
            command,
            cwd=base_dir,  # anything the server writes relative to its cwd stays in tmp
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: teardown reaches its workers
        )
    server = MlflowServer(
        uri=f"http://127.0.0.1:{port}",
        backend_store=backend_store,
        artifacts=artifacts,
        log_path=log_path,
        process=process,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            problem = f"mlflow server exited with {process.returncode} before /health answered"
            break
        if _healthy(server.uri):
            return server
        time.sleep(1.0)
    else:
        problem = f"mlflow server: no /health after {START_TIMEOUT_S:.0f} s"
    stop_mlflow_server(server)  # its workers may have started
    raise RuntimeError(f"{problem}:\n{server.tail()}")


def stop_mlflow_server(server: MlflowServer) -> None:
    """Stop the server and its worker processes (its process group only)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.process.pid, sig)
        except ProcessLookupError:
            break
        try:
            server.process.wait(timeout=STOP_TIMEOUT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    # Workers may outlive the leader by a moment; the group is ours alone.
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` shared by one test module; stopped afterwards.

    The server's log tail is printed at teardown: pytest shows it when a test failed.
    """
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        stop_mlflow_server(server)
        print(server.tail())
