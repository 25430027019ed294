"""Fixtures shared by the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

# Reusable fixtures that start real components on 127.0.0.1 (tests/ is on sys.path).
pytest_plugins = ["s3_server"]

# ../shared/data beside the checkout: real samples, never copied into the project.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data; tests that use it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA
