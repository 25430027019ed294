"""What a person sees: bars only on a terminal, Ray's and Tune's logs in the workspace's file."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrate import console


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _draw(monkeypatch: pytest.MonkeyPatch, stream: type[io.StringIO]) -> str:
    """Everything a three-clip bar and one line above it write to stderr."""
    monkeypatch.setattr(sys, "stdout", stream())
    monkeypatch.setattr(sys, "stderr", stream())
    assert console.interactive() is (stream is Terminal)
    with console.progress_bar(3, "clips ingested", "clip") as bar:
        for _ in range(3):
            bar.update()
        console.say("emodal-audio-fold0: test UAR 0.500")
    return sys.stderr.getvalue()


def test_bars_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _draw(monkeypatch, Terminal)
    assert "\r" in out and "clips ingested" in out and "3/3" in out
    assert "emodal-audio-fold0: test UAR 0.500\n" in out


def test_plain_lines_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _draw(monkeypatch, io.StringIO)
    assert out == "emodal-audio-fold0: test UAR 0.500\n"  # no bar, no carriage return


def test_bars_only_when_both_streams_are_terminals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # `orchestrate demo | tee out.txt`
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert not console.interactive()
    with console.progress_bar(2, "studies", "study") as bar:
        bar.update(2)
    assert sys.stderr.getvalue() == ""


def test_native_stderr_stays_under_a_capture(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """In-process callers (tests, notebooks) keep their streams: only the CLI's own are moved."""
    before = sys.stderr
    console.native_stderr_to(tmp_path / "ray.log")
    assert sys.stderr is before
    print("still captured", file=sys.stderr)
    assert capfd.readouterr().err == "still captured\n"
    assert not (tmp_path / "ray.log").exists()


def test_ray_tune_and_mlflow_logs_go_to_the_workspace_file(tmp_path: Path) -> None:
    """In a process of its own (routing is process-wide), as the CLI does it."""
    log = console.workspace_log(tmp_path / "ws")
    script = textwrap.dedent(
        """
        import logging, os, sys, warnings
        from orchestrate.console import native_stderr_to, route_logs

        native_stderr_to(route_logs(sys.argv[1]))
        logging.getLogger("ray").info("ray says: started a local instance")
        logging.getLogger("ray._private.authentication").warning("ray says: token auth")
        logging.getLogger("ray.tune").warning("tune says: trial config table")
        logging.getLogger("ray.data").info("ray data says: execution plan")
        logging.getLogger("mlflow.store.db.utils").info("mlflow says: creating tables")
        logging.getLogger("optuna").info("optuna says: a new study")
        warnings.warn("a library says: deprecated")
        os.write(2, b"[E core_worker.cc] native code says: actor arguments\\n")
        print("for a person", file=sys.stderr)
        print("a table", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(log)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "a table\n"
    assert done.stderr.splitlines() == [
        f"Ray, Ray Data, Tune and MLflow logs: {log.resolve()}",
        "for a person",
    ]
    written = log.read_text()
    for pattern in (
        r"INFO ray \d+ -- ray says: started a local instance",
        r"WARNING ray\._private\.authentication \d+ -- ray says: token auth",
        r"WARNING ray\.tune \d+ -- tune says",
        r"INFO ray\.data \d+ -- ray data says: execution plan",
        r"INFO mlflow\.store\.db\.utils \d+ -- mlflow says",
        r"INFO optuna \d+ -- optuna says",
        r"WARNING py\.warnings \d+ -- .*a library says: deprecated",
        r"native code says: actor arguments",
    ):
        assert re.search(pattern, written), pattern
    assert written.count("tune says") == 1  # routed once, not once per logger on the path
