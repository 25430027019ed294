"""What a person sees: a progress bar per stage on a terminal, Ray's own logs in a file.

On a terminal (stdout and stderr both TTYs) each stage draws one tqdm bar on stderr (clips
generated, clips ingested, studies swept per task) and the lines worth keeping (a study's
chosen validation and test UAR, a failure) are written above it. Piped or in CI the same
lines are printed without bars: no carriage returns, nothing redrawn.

Ray, Ray Data, Tune, Optuna and MLflow log through the standard ``logging`` module; their
loggers are pointed at one file in the workspace (``<workspace>/logs/ray.log``, printed
once) instead of the terminal, with Python warnings captured into it as well; the CLI
also sends what Ray's C++ core writes to the driver's stderr there (``native_stderr_to``).
Ray's own processes and workers keep their files under Ray's session directory
(``/tmp/ray/session_latest/logs``).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

# The loggers that have console handlers of their own. Tune's ("ray.tune") and Ray Train's
# propagate to "ray"; Ray Data, MLflow (with alembic) and Optuna set theirs up on import.
ROUTED_LOGGERS = ("ray", "ray.data", "optuna", "mlflow", "alembic", "py.warnings")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d -- %(message)s"

_routed: Path | None = None  # the log file this process's loggers write to
_announced = False  # whether its path was printed


def interactive() -> bool:
    """Whether a person watches: stdout and stderr are both terminals (not piped, not CI)."""
    return all(getattr(stream, "isatty", lambda: False)() for stream in (sys.stdout, sys.stderr))


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True) -> tqdm:
    """A bar on stderr when ``enabled`` and ``interactive()``; otherwise one that draws nothing
    (and that callers update the same way)."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not (enabled and interactive()),
        dynamic_ncols=True,
    )


def say(line: str) -> None:
    """One line on stderr; on a terminal it is written above the bars being drawn."""
    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


def workspace_log(workspace: str | Path) -> Path:
    """Where a workspace's Ray, Tune and MLflow logs go."""
    return Path(workspace) / "logs" / "ray.log"


def route_logs(
    path: str | Path,
    announce: bool = True,
    libraries: tuple[str, ...] = ("ray.data", "mlflow", "optuna"),
) -> Path:
    """Point Ray's, Ray Data's, Tune's, Optuna's and MLflow's loggers at ``path``, not the terminal.

    Call it before ``ray.init()``: what Ray logs while it starts (token auth, "Started a local
    Ray instance") then goes to the file too. Each routed logger loses its console handlers
    (Ray's ``PlainRayHandler``, Ray Data's console handler, MLflow's and Optuna's stderr
    handlers) and gets one ``FileHandler`` on ``path``; file handlers Ray set up (Ray Data's
    ``ray-data.log`` in the session directory) stay. ``libraries`` are imported first:
    Ray Data, MLflow and Optuna configure their loggers on import, and would otherwise put
    their console handlers back later. Idempotent per process; ``announce`` prints the path
    once (``start_ray`` asks for it: a command that stops before Ray starts, say on an
    unreachable tracking server, prints only why). Returns the path.
    """
    global _routed, _announced
    path = Path(path).resolve()
    if _routed != path:
        _route(path, libraries)
        _routed, _announced = path, False
    if announce and not _announced:
        say(f"Ray, Ray Data, Tune and MLflow logs: {path}")
        _announced = True
    return path


def _route(path: Path, libraries: tuple[str, ...]) -> None:
    for library in libraries:
        importlib.import_module(library)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)  # Ray Data's logger passes DEBUG (its own file keeps it)
    handler.set_name(f"orchestrate:{path}")
    for name in ROUTED_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if _is_console(old) or (old.get_name() or "").startswith("orchestrate:"):
                logger.removeHandler(old)
                if not _is_console(old):
                    old.close()  # an earlier workspace's file
        logger.addHandler(handler)
        logger.propagate = False  # one record, one line ("ray.data" is a child of "ray")
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    logging.captureWarnings(True)


def native_stderr_to(path: str | Path) -> None:
    """From now on, what native code writes to file descriptor 2 goes to ``path``.

    Ray's C++ core worker in the driver prints its errors and warnings (``[... E ...]
    core_worker.cc:...`` lines) straight to fd 2, past Python's ``logging``; no Ray setting
    sends them elsewhere. This points fd 2 at the log file and rebinds ``sys.stderr`` (bars,
    ``say``, warnings, tracebacks) to a duplicate of the terminal's descriptor, so Python's
    own output still reaches the person. For a command's whole process: nothing restores
    it. Only when ``sys.stderr`` is the process's own: under a capture (pytest's, a caller's
    ``redirect_stderr``) nothing changes.
    """
    if sys.stderr is not sys.__stderr__:
        return
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    terminal = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 2)
    os.close(log)
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=encoding, errors="backslashreplace")


def routed_log() -> Path | None:
    """The file this process's loggers were routed to, if any (for Ray tasks to share)."""
    return _routed


def _is_console(handler: logging.Handler) -> bool:
    """A handler that writes to a stream (stderr, stdout), not to a file."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )
