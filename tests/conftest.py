"""Fixtures shared by the test suite."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Reusable fixtures that start real components on 127.0.0.1 (tests/ is on sys.path).
pytest_plugins = ["s3_server", "ray_head", "mlflow_server"]

# Local test clusters (ray.init) run without token auth, so they don't write
# ~/.ray/auth_token; the ray_head fixture sets token auth explicitly for its own head.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _test_torch_home() -> str:
    """A temp torch hub cache (VGG16's seeded random initialisation is kept there once built)
    that still shows the checkpoints already in the user's default one (torchvision's
    ImageNet VGG16, when it is there), linked, never written to."""
    home = Path(tempfile.mkdtemp(prefix="orchestrate-tests-torch-"))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for checkpoint in (cache / "torch" / "hub" / "checkpoints").glob("*.pth"):
        try:
            (checkpoints / checkpoint.name).symlink_to(checkpoint)
        except OSError:
            pass  # no link: the tests that need that checkpoint skip, as without it
    return str(home)


# Tests write under a temp dir, not the user's home; a TORCH_HOME already set is kept.
if "TORCH_HOME" not in os.environ:
    os.environ["TORCH_HOME"] = _test_torch_home()

# ../shared/data beside the checkout: real samples, never copied into the project.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data; tests that use it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real sample data not found at {SHARED_DATA} (../shared/data beside the checkout)"
        )
    return SHARED_DATA


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[EXIT_STATUS] = int(exitstatus)


EXIT_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with pytest's own status once everything is reported.

    After a full run the interpreter's teardown can crash (a segfault after the summary,
    with Ray's, gRPC's and torch's background threads still alive), which would turn a
    passing suite into exit status 139. Everything pytest reports is written by now.
    """
    status = config.stash.get(EXIT_STATUS, None)
    if status is not None:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
