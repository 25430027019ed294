"""A real Ray head node on 127.0.0.1 for tests: ``ray start --head``, then ``ray job submit``.

Use the ``ray_head`` fixture (register this module as a pytest plugin, or import the fixture
into a test module). It starts one head per test module with token authentication on
(``RAY_AUTH_MODE=token`` and a fresh ``RAY_AUTH_TOKEN`` in the head's environment, so
nothing is read from or written to ``~/.ray``), every port picked free, and its own
``--temp-dir``: a ``ray.init()`` elsewhere on the machine neither finds nor joins it.

Teardown stops only this head: ``ray start --block`` runs in its own process group and owns
every process it spawns, so SIGTERM to it (then SIGKILL to the group for stragglers) ends
this cluster and nothing else. ``ray stop`` is never used: it stops every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT_S = 120.0  # a cold head on 2 busy cores: GCS, raylet, dashboard, agents
STOP_TIMEOUT_S = 30.0
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# AF_UNIX socket paths are limited to 107 bytes and Ray appends up to 68 to its temp dir
# (/session_<date>_<time>_<usec>_<pid up to 7 digits>/sockets/dash_MetricsHead).
MAX_TEMP_DIR_CHARS = 39


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist yet)."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def ray_cli() -> str:
    """The ``ray`` command of the interpreter running the tests (the project's venv)."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.is_file() else "ray"


@dataclass
class RayHead:
    """A running head: where to reach it and the environment a job submitter needs."""

    gcs_address: str  # host:port, for ray.init(address=...) / RAY_ADDRESS / ray start --address
    dashboard_url: str  # http://host:port, for `ray job submit --address`
    token: str
    temp_dir: Path  # Ray's --temp-dir: sessions, sockets, logs
    log_path: Path  # stdout + stderr of `ray start --head --block`
    process: subprocess.Popen = field(repr=False)
    own_temp_dir: bool = False  # a short temp dir outside base_dir, removed at stop

    def client_env(self, auth: bool = True) -> dict[str, str]:
        """The environment for a `ray job ...` client: same RAY_AUTH_MODE and token as the head.

        ``auth=False`` gives a client without the token (as a misconfigured submitter would be).
        """
        env = {key: value for key, value in os.environ.items() if key not in AUTH_ENV}
        env.pop("RAY_ADDRESS", None)
        if auth:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        return env

    @property
    def auth_headers(self) -> dict[str, str]:
        """HTTP headers for ``JobSubmissionClient(headers=...)`` without touching os.environ."""
        return {"Authorization": f"Bearer {self.token}"}

    def job_submit(
        self, entrypoint: list[str], submission_id: str, timeout_s: float, auth: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ray job submit ... -- <entrypoint>``; it waits for the job, streaming its logs.

        ``entrypoint`` is the argv typed after ``--`` (the CLI quotes it into one shell command).
        """
        command = [
            ray_cli(), "job", "submit",
            "--address", self.dashboard_url,
            "--submission-id", submission_id,
            "--", *entrypoint,
        ]  # fmt: skip
        return subprocess.run(
            command,
            env=self.client_env(auth),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def tail(self, lines: int = 40) -> str:
        """The head's own log tail plus the job-related logs of its session."""
        parts = [f"--- {self.log_path.name}\n{log_tail(self.log_path, lines)}"]
        logs = self.temp_dir / "session_latest" / "logs"
        if not logs.is_dir():  # a removed short temp dir: stop_ray_head copied its logs
            logs = self.log_path.with_name("ray-logs")
        for name in ("dashboard.log", "dashboard_JobHead.log", "raylet.err", "gcs_server.err"):
            text = log_tail(logs / name, lines // 2)
            if text:
                parts.append(f"--- {name}\n{text}")
        return "\n".join(parts)


def _dashboard_up(url: str) -> bool:
    # A public endpoint (no token): the dashboard answers and the GCS behind it is healthy.
    try:
        with urllib.request.urlopen(f"{url}/api/gcs_healthz", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_ray_head(base_dir: Path, num_cpus: int = 2) -> RayHead:
    """Start ``ray start --head --block`` under ``base_dir``; return once it takes jobs.

    Ray's sessions go to ``base_dir`` itself when its path is short enough for Ray's Unix
    sockets, else to a short directory in the system temp dir that :func:`stop_ray_head` removes.
    """
    base_dir.mkdir(parents=True, exist_ok=True)
    own_temp_dir = len(str(base_dir)) > MAX_TEMP_DIR_CHARS
    temp_dir = Path(tempfile.mkdtemp(prefix="ray")) if own_temp_dir else base_dir
    log_path = base_dir / "ray-head.log"
    port, dashboard_port = free_port(), free_port()
    token = secrets.token_hex(32)
    env = {key: value for key, value in os.environ.items() if key not in AUTH_ENV}
    env.pop("RAY_ADDRESS", None)
    # Token auth set explicitly on the head: Ray 2.60 would otherwise decide from whether
    # ~/.ray/auth_token happens to exist, and the submitter must match the head's mode.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    # Teardown comes after the tests' jobs ended: no 30 s node drain on SIGTERM.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    # Job entrypoints run `python`/`orchestrate` from the head's PATH: the tests' interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [
        ray_cli(), "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1",
        "--port", str(port),
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard_port),
        "--include-dashboard", "true",
        # Every listening port explicit and free: another Ray on this machine keeps its defaults.
        "--ray-client-server-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--num-cpus", str(num_cpus),
        "--num-gpus", "0",
        "--object-store-memory", str(512 * 1024**2),  # the machine is shared
        "--temp-dir", str(temp_dir),
        "--disable-usage-stats",
        "--log-style", "record",
    ]  # fmt: skip
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=base_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: teardown kills only this head
        )
    head = RayHead(
        gcs_address=f"127.0.0.1:{port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        token=token,
        temp_dir=temp_dir,
        log_path=log_path,
        process=process,
        own_temp_dir=own_temp_dir,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            problem = f"ray start --head exited with {process.returncode} before it was ready"
            break
        if _dashboard_up(head.dashboard_url) and _jobs_api_up(head):
            # The GCS address Ray itself wrote for this session (its node IP may differ).
            address_file = temp_dir / "ray_current_cluster"
            if address_file.is_file():
                head.gcs_address = address_file.read_text().strip()
            return head
        time.sleep(1.0)
    else:
        problem = f"ray head not ready after {START_TIMEOUT_S:.0f} s"
    stop_ray_head(head)  # whatever did start, and the short temp dir (its logs are kept)
    raise RuntimeError(f"{problem}:\n{head.tail()}")


def _jobs_api_up(head: RayHead) -> bool:
    # The job API module loads after the dashboard answers; list jobs with the token.
    request = urllib.request.Request(f"{head.dashboard_url}/api/jobs/", headers=head.auth_headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_ray_head(head: RayHead) -> None:
    """Stop this head and every process it started (and no other Ray on the machine)."""
    if head.process.poll() is None:
        # SIGTERM: the blocking `ray start` drains and kills the processes it spawned.
        head.process.send_signal(signal.SIGTERM)
        try:
            head.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left in this head's process group (workers, agents) goes too.
    try:
        os.killpg(head.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.process.wait(timeout=STOP_TIMEOUT_S)
    if head.own_temp_dir:
        # Keep the logs the failure message points at: copy them beside the head's log first.
        logs = head.temp_dir / "session_latest" / "logs"
        if logs.is_dir():
            shutil.copytree(logs, head.log_path.with_name("ray-logs"), dirs_exist_ok=True)
        shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """A real Ray head (2 CPUs, token auth) shared by one test module; stopped afterwards.

    The head's log tail is printed at teardown: pytest shows it when a test failed.
    """
    head = start_ray_head(tmp_path_factory.mktemp("ray"))  # a short path: see MAX_TEMP_DIR_CHARS
    try:
        yield head
    finally:
        stop_ray_head(head)
        print(head.tail())
