"""``orchestrate submit``: ``orchestrate run`` as a Ray job on a running cluster.

The job's working directory is a staged copy of the project with the run config beside it
(``.git``, virtual environments, workspaces, data and caches left out), uploaded by Ray's
``JobSubmissionClient``; the entrypoint is ``python -m orchestrate run --config run.yaml``
with the overrides. The job's working directory is temporary, so a run that would keep its
results there (a relative workspace with no ``store.uri`` / ``tracking.uri``) is refused
before anything is sent. The commit being run travels as ``ORCHESTRATE_GIT_COMMIT`` (the
staged copy has no ``.git``) and lands on every MLflow run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from orchestrate.config import ConfigError, RunConfig, load_config
from orchestrate.config import config_path as config_path_of
from orchestrate.errors import InputError

PROJECT = Path(__file__).resolve().parent.parent
# What never travels with a job (gitwildmatch-like names, matched per path component).
EXCLUDES = (
    ".git", ".venv", "venv", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache",
    "orchestrate-workspace", "*-workspace", "workspace", "data", "shared", "mlruns",
    "mlartifacts", "*.db", ".ipynb_checkpoints",
)  # fmt: skip
CONFIG_NAME = "run.yaml"


def check_job_config(config: RunConfig) -> None:
    """Refuse a run whose results would stay in the job's temporary working directory."""
    if Path(config.workspace).is_absolute():
        return
    given = {"store.uri": config.store.uri, "tracking.uri": config.tracking.uri}
    missing = [key for key, value in given.items() if not value]
    if missing:
        raise ConfigError(
            f"submit: the workspace {config.workspace!r} would be inside the job's temporary "
            f"working directory and {' and '.join(missing)} would default into it: give "
            "store.uri (s3://…) and tracking.uri (http://mlflow…), or an absolute workspace "
            "that every node shares"
        )


def stage_working_dir(config_path: Path | None, into: Path) -> Path:
    """A copy of the project (without ``EXCLUDES``) and the run config, for ``working_dir``."""
    shutil.copytree(PROJECT, into, ignore=shutil.ignore_patterns(*EXCLUDES), dirs_exist_ok=True)
    if config_path is not None:
        shutil.copyfile(config_path, into / CONFIG_NAME)
    return into


def entrypoint(config_path: Path | None, overrides: list[str]) -> list[str]:
    command = ["python", "-m", "orchestrate", "run", "--quiet"]
    if config_path is not None:
        command += ["--config", CONFIG_NAME]
    return [*command, *overrides]


def runtime_env() -> dict:
    from orchestrate.tracking import git_state

    commit, dirty = git_state()
    env_vars = {"ORCHESTRATE_GIT_COMMIT": commit, "ORCHESTRATE_GIT_DIRTY": dirty}
    return {"env_vars": env_vars, "excludes": list(EXCLUDES)}


def plain_command(
    address: str, submission_id: str, config_path: Path | None, overrides: list[str]
) -> str:
    """The same submission as a plain ``ray job submit`` from the project's root."""
    env = runtime_env()
    relative = []
    if config_path is not None:
        try:
            relative = ["--config", str(config_path.resolve().relative_to(PROJECT))]
        except ValueError:
            relative = ["--config", f"<copy {config_path.name} into the project>"]
    command = [
        "ray", "job", "submit", "--address", address, "--submission-id", submission_id,
        "--working-dir", ".", "--runtime-env-json", json.dumps(env),
        "--", "python", "-m", "orchestrate", "run", "--quiet", *relative, *overrides,
    ]  # fmt: skip
    return shlex.join(command)


def auth_headers() -> dict[str, str] | None:
    """Ray's token auth: the same RAY_AUTH_TOKEN the head was started with."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if os.environ.get("RAY_AUTH_MODE") == "token" and token:
        return {"Authorization": f"Bearer {token}"}
    return None


def submit(
    address: str,
    config_path: Path | None,
    overrides: list[str],
    follow: bool = True,
    timeout_s: float | None = None,
) -> int:
    """Submit ``orchestrate run``; stream its logs; 0 when the job SUCCEEDED, else 1."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    if config_path is not None:
        config_path = config_path_of(config_path)  # a shipped config's name -> its file
    config = load_config(config_path, overrides)  # a bad key stops here, before any upload
    check_job_config(config)
    submission_id = f"orchestrate-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    print("equivalent plain submission (from the project's root):", file=sys.stderr)
    print("  " + plain_command(address, submission_id, config_path, overrides), file=sys.stderr)
    try:
        client = JobSubmissionClient(address, headers=auth_headers())
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise InputError(
            f"submit: the Ray cluster at {address} cannot be reached: {error}"
        ) from None
    with tempfile.TemporaryDirectory(prefix="orchestrate-job-") as scratch:
        staged = stage_working_dir(config_path, Path(scratch) / "project")
        env = runtime_env()
        env["env_vars"]["ORCHESTRATE_JOB_ID"] = submission_id
        env["working_dir"] = str(staged)
        client.submit_job(
            entrypoint=shlex.join(entrypoint(config_path, overrides)),
            submission_id=submission_id,
            runtime_env=env,
        )
    print(f"submitted {submission_id} to {address}", file=sys.stderr, flush=True)
    if follow:
        asyncio.run(_stream_logs(client, submission_id))
    deadline = time.monotonic() + (timeout_s or float("inf"))
    status = client.get_job_status(submission_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(1.0)
        status = client.get_job_status(submission_id)
    print(f"job {submission_id}: {status}", file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else 1


async def _stream_logs(client, submission_id: str) -> None:
    async for lines in client.tail_job_logs(submission_id):
        print(lines, end="", flush=True)
