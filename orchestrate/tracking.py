"""Tracking: every MLflow write goes through a local spool, so an outage loses no result.

A sweep describes what it logs as :class:`RunRecord` s — one per run, or an update of a run
already written (the parent run is opened at the start and filled in at the end). A record
is written to the spool folder (``<workspace>/mlflow-spool``) first, then sent to the
tracking server step by step (create, params, metrics, tags, inputs, artifacts, models,
status); each step is marked done in the spool as it succeeds, and the record is removed
once it is all in. When the server cannot be reached, the records stay on disk and the sweep
goes on: the next record retries (at most every ``RETRY_SECONDS``), the end of the sweep
retries once more, and ``orchestrate report --sync`` sends whatever is left.

Runs are written from the driver with an explicit ``MlflowClient(tracking_uri)`` and
experiment id: trial processes never talk to the tracking server (PITFALLS: the fluent
active-run stack never reaches them). Each run carries the key it was spooled under
(``orchestrate.key``), so a run created just before a failure is found again, not duplicated.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrate.errors import InputError

EXPERIMENT_KIND = "custom_model_development"  # the MLflow UI opens on its training runs
RETRY_SECONDS = 15.0
# Packages whose versions shape a result: logged on every run as ``version.<package>``.
RESULT_PACKAGES = (
    "torch",
    "torchvision",
    "torchaudio",
    "numpy",
    "scipy",
    "scikit-learn",
    "opencv-python-headless",
    "av",
    "pyAudioAnalysis",
    "pyarrow",
    "pandas",
    "ray",
    "optuna",
    "mlflow",
    "orchestrate",
)
# MLflow's HTTP client retries a dead server for minutes by default (PITFALLS); the spool
# keeps what fails, so a few seconds of retries are enough. A user's own settings win.
HTTP_DEFAULTS = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one bar per downloaded figure otherwise
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# Errors that a retry cannot fix: the record is set aside (``rejected/``), the rest goes on.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST"}


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What a server that is down, restarting or overloaded raises through MLflow's client."""
    import requests
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.exceptions.RequestException, OSError, ParentMissing)


class ParentMissing(RuntimeError):
    """A nested run's parent is not on the server yet (its own record is still spooled)."""


class TrackingUnavailable(InputError):
    """The tracking URI cannot be reached or written before any work starts (one line)."""


@dataclass
class RunRecord:
    """What to write to one run: created on first sight of ``key``, updated after that."""

    key: str  # stable and unique within the experiment
    name: str
    parent: str | None = None  # the parent run's key (its run is created first)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, ms, step
    texts: dict[str, str] = field(default_factory=dict)  # artifact path -> text
    figures: dict[str, Any] = field(default_factory=dict, repr=False)  # path -> matplotlib figure
    tables: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)  # log_table
    inputs: list[DatasetRef] = field(default_factory=list)
    models: list[ModelRef] = field(default_factory=list)
    status: str | None = None  # FINISHED / FAILED / KILLED; None leaves the run open

    def metric(self, key: str, value: float, step: int = 0) -> None:
        if value == value and abs(value) != float("inf"):  # MLflow refuses NaN and inf
            self.metrics.append((key, float(value), int(time.time() * 1000), int(step)))


@dataclass
class DatasetRef:
    """An MLflow dataset input: a manifest of clips, where it came from, in which role."""

    name: str
    digest: str
    source: str
    frame: pd.DataFrame = field(repr=False)
    targets: str | None = "label"
    context: str = "training"


@dataclass
class ModelRef:
    """A model to log with MLflow's own flavour (``pytorch`` or ``sklearn``) and a signature."""

    name: str
    flavour: str
    model: Any = field(repr=False)
    inputs: Any = field(repr=False)  # an example batch: an array, or a dict of named arrays
    description: str = ""


class Tracker:
    """Writes :class:`RunRecord` s to one experiment through the spool at ``spool_dir``."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        spool_dir: Path,
        artifact_location: str | None = None,
        say: Any = None,
    ) -> None:
        from mlflow import MlflowClient

        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self.uri = uri
        self.experiment = experiment
        self.spool = Path(spool_dir)
        self.artifact_location = artifact_location
        self.client = MlflowClient(tracking_uri=uri)
        self._experiment_id: str | None = None
        self._run_ids: dict[str, str] = {}
        self._offline_since: float | None = None
        self._last_error = ""
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))

    # --- the server ----------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`TrackingUnavailable` (one line) if the URI can't be reached or written."""
        if self.uri.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=10) as reply:
                    if reply.status != 200:
                        raise TrackingUnavailable(
                            f"tracking server {self.uri} answers /health with {reply.status}"
                        )
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                raise TrackingUnavailable(
                    f"tracking server {self.uri} cannot be reached ({reason}): start it, or "
                    "leave --tracking-uri out to track in the workspace's SQLite file"
                ) from None
        elif self.uri.startswith("sqlite:///"):
            folder = Path(self.uri.removeprefix("sqlite:///")).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise TrackingUnavailable(f"tracking URI {self.uri}: {error}") from None
        self.experiment_id()

    def experiment_id(self) -> str:
        """The experiment's id: created (tagged for the UI's training-runs view) if missing."""
        if self._experiment_id is not None:
            return self._experiment_id
        try:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                # A SQLite store needs an explicit artifact location; a server chooses its own.
                local = not self.uri.startswith(("http://", "https://", "databricks"))
                self._experiment_id = self.client.create_experiment(
                    self.experiment,
                    artifact_location=self.artifact_location if local else None,
                    tags={"mlflow.experimentKind": EXPERIMENT_KIND},
                )
            else:
                self._experiment_id = found.experiment_id
                if found.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND:
                    self.client.set_experiment_tag(
                        found.experiment_id, "mlflow.experimentKind", EXPERIMENT_KIND
                    )
        except Exception as error:  # noqa: BLE001 - any failure here is the server's
            raise TrackingUnavailable(
                f"tracking URI {self.uri}: experiment {self.experiment!r}: {_one_line(error)}"
            ) from None
        return self._experiment_id

    # --- writing --------------------------------------------------------------------------

    def log(self, record: RunRecord) -> None:
        """Spool ``record``, then send what is pending unless the server was just down."""
        self._spool(record)
        if self._offline_since is None or time.time() - self._offline_since >= RETRY_SECONDS:
            self.flush()

    def flush(self) -> int:
        """Send every spooled record, oldest first; the number still pending afterwards."""
        for folder in self.pending():
            try:
                self._send(folder)
            except Exception as error:
                if not isinstance(error, _transient_errors()):
                    raise  # a bug, not an outage: keep its traceback
                code = getattr(error, "error_code", "")
                if code in PERMANENT_ERRORS:
                    self._reject(folder, error)
                    continue
                if self._offline_since is None:
                    self._say(
                        f"orchestrate: tracking server {self.uri} failed ({_one_line(error)}); "
                        f"the sweep goes on, runs are kept in {self.spool} and logged when it "
                        "is back (or by `orchestrate report --sync`)"
                    )
                self._offline_since = time.time()
                self._last_error = _one_line(error)
                return len(self.pending())
        if self._offline_since is not None:
            self._say(f"orchestrate: tracking server {self.uri} is back; spooled runs logged")
        self._offline_since = None
        return 0

    @property
    def last_error(self) -> str:
        return self._last_error

    def pending(self) -> list[Path]:
        if not self.spool.is_dir():
            return []
        return sorted(p for p in self.spool.iterdir() if p.is_dir() and p.name[:1].isdigit())

    def pending_names(self) -> list[str]:
        return [json.loads((p / "record.json").read_text())["name"] for p in self.pending()]

    def run_id(self, key: str) -> str | None:
        """The run id of ``key``, if its run has been created on the server."""
        if key not in self._run_ids:
            self._run_ids.update(self._load_run_ids())
        return self._run_ids.get(key)

    # --- the spool -----------------------------------------------------------------------

    def _spool(self, record: RunRecord) -> Path:
        self.spool.mkdir(parents=True, exist_ok=True)
        number = 1 + max((int(p.name.split("-", 1)[0]) for p in self._all_records()), default=0)
        folder = self.spool / f"{number:08d}-{_slug(record.name)}"
        (folder / "files").mkdir(parents=True)
        for path, figure in record.figures.items():
            target = folder / "files" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(target, dpi=110)
        for index, table in enumerate(record.tables.values()):
            table.to_json(folder / f"table-{index}.json", orient="split", index=False)
        for index, dataset in enumerate(record.inputs):
            dataset.frame.to_parquet(folder / f"input-{index}.parquet", index=False)
        for index, model in enumerate(record.models):
            (folder / f"model-{index}.pkl").write_bytes(pickle.dumps((model.model, model.inputs)))
        data = asdict(record)
        data["figures"] = sorted(record.figures)
        data["tables"] = list(record.tables)
        data["inputs"] = [
            {k: v for k, v in asdict(d).items() if k != "frame"} for d in record.inputs
        ]
        data["models"] = [
            {k: v for k, v in asdict(m).items() if k not in ("model", "inputs")}
            for m in record.models
        ]
        data["done"] = []
        _write_json(folder / "record.json", data)
        return folder

    def _all_records(self) -> list[Path]:
        rejected = self.spool / "rejected"
        folders = list(self.pending())
        if rejected.is_dir():
            folders += [p for p in rejected.iterdir() if p.is_dir()]
        return folders

    def _reject(self, folder: Path, error: BaseException) -> None:
        target = self.spool / "rejected" / folder.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), target)
        (target / "error.txt").write_text(f"{error}\n")
        self._say(f"orchestrate: run {folder.name} refused by MLflow: {_one_line(error)}")

    def _load_run_ids(self) -> dict[str, str]:
        path = self.spool / "runs.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _remember(self, key: str, run_id: str) -> None:
        self._run_ids[key] = run_id
        known = self._load_run_ids()
        known[key] = run_id
        self.spool.mkdir(parents=True, exist_ok=True)
        _write_json(self.spool / "runs.json", known)

    def _send(self, folder: Path) -> None:
        """Send one spooled record, step by step; each step is marked done as it succeeds."""
        from mlflow.entities import Metric, Param, RunTag

        data = json.loads((folder / "record.json").read_text())
        done: list[str] = data["done"]

        def step(name: str, action: Any) -> None:
            if name in done:
                return
            action()
            done.append(name)
            _write_json(folder / "record.json", data)

        run_id = self.run_id(data["key"])
        if run_id is None and data.get("tried_create"):
            run_id = self._find_run(data["key"])
        if run_id is None:
            parent = self.run_id(data["parent"]) if data["parent"] else None
            if data["parent"] and parent is None:
                raise ParentMissing(f"the parent run of {data['name']} is not logged yet")
            tags = {"orchestrate.key": data["key"], **data["tags"]}
            if parent:
                tags["mlflow.parentRunId"] = parent
            data["tried_create"] = True
            _write_json(folder / "record.json", data)
            run = self.client.create_run(self.experiment_id(), run_name=data["name"], tags=tags)
            run_id = run.info.run_id
            self._remember(data["key"], run_id)
            done.append("tags")
        client = self.client
        step(
            "tags",
            lambda: client.log_batch(
                run_id, tags=[RunTag(k, str(v)[:8000]) for k, v in data["tags"].items()]
            ),
        )
        params = [Param(k, str(v)[:6000]) for k, v in sorted(data["params"].items())]
        metrics = [Metric(k, v, ts, s) for k, v, ts, s in data["metrics"]]
        if len(params) <= 100 and len(metrics) <= 900:  # one request, within MLflow's limits
            if params or metrics:
                step("batch", lambda: client.log_batch(run_id, params=params, metrics=metrics))
        else:
            for start in range(0, len(params), 100):
                step(
                    f"params:{start}",
                    lambda s=start: client.log_batch(run_id, params=params[s : s + 100]),
                )
            for start in range(0, len(metrics), 1000):
                step(
                    f"metrics:{start}",
                    lambda s=start: client.log_batch(run_id, metrics=metrics[s : s + 1000]),
                )
        for index, spec in enumerate(data["inputs"]):
            frame = pd.read_parquet(folder / f"input-{index}.parquet")
            step(
                f"input:{index}",
                lambda spec=spec, frame=frame: self._log_input(run_id, spec, frame),
            )
        for path, text in data["texts"].items():
            step(f"text:{path}", lambda p=path, t=text: client.log_text(run_id, t, p))
        for path in data["figures"]:
            local = folder / "files" / path
            directory = str(Path(path).parent) if Path(path).parent != Path(".") else None
            step(
                f"figure:{path}",
                lambda f=local, d=directory: client.log_artifact(run_id, str(f), d),
            )
        for index, path in enumerate(data["tables"]):
            table = pd.read_json(folder / f"table-{index}.json", orient="split")
            step(f"table:{path}", lambda p=path, t=table: client.log_table(run_id, t, p))
        for index, spec in enumerate(data["models"]):
            step(f"model:{index}", lambda i=index, s=spec: self._log_model(run_id, folder, i, s))
        if data["status"]:
            step("status", lambda: client.set_terminated(run_id, data["status"]))
        shutil.rmtree(folder)

    def _find_run(self, key: str) -> str | None:
        """A run created for ``key`` before its id could be remembered (a failure in between)."""
        found = self.client.search_runs(
            [self.experiment_id()], filter_string=f"tags.`orchestrate.key` = '{key}'", max_results=1
        )
        if not found:
            return None
        self._remember(key, found[0].info.run_id)
        return found[0].info.run_id

    def _log_input(self, run_id: str, spec: dict[str, Any], frame: pd.DataFrame) -> None:
        import mlflow
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a store path is a "local" source: it says so
            dataset = mlflow.data.from_pandas(
                frame,
                source=spec["source"],
                targets=spec["targets"],
                name=spec["name"],
                digest=spec["digest"],
            )
        self.client.log_inputs(
            run_id,
            [
                DatasetInput(
                    dataset._to_mlflow_entity(),
                    [InputTag("mlflow.data.context", spec["context"])],
                )
            ],
        )

    def _log_model(self, run_id: str, folder: Path, index: int, spec: dict[str, Any]) -> None:
        """``mlflow.<flavour>.log_model`` into ``run_id``, with a signature from an example."""
        import mlflow
        from mlflow.models import infer_signature

        model, inputs = pickle.loads((folder / f"model-{index}.pkl").read_bytes())
        outputs = predict_example(spec["flavour"], model, inputs)
        signature = infer_signature(inputs, outputs)
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=run_id):
            if spec["flavour"] == "pytorch":
                mlflow.pytorch.log_model(
                    model,
                    name=spec["name"],
                    signature=signature,
                    serialization_format="pickle",  # pt2 needs one tensor input (PITFALLS)
                    pip_requirements=_requirements("torch", "numpy"),
                    code_paths=None,
                    metadata={"description": spec["description"]},
                )
            elif spec["flavour"] == "sklearn":
                mlflow.sklearn.log_model(
                    model,
                    name=spec["name"],
                    signature=signature,
                    serialization_format="cloudpickle",  # skops refuses our pipelines' types
                    pip_requirements=_requirements("scikit-learn", "numpy"),
                    metadata={"description": spec["description"]},
                )
            else:
                raise ValueError(f"unknown model flavour {spec['flavour']!r}")


def predict_example(flavour: str, model: Any, inputs: Any) -> Any:
    """The model's class probabilities for its example inputs (for the signature)."""
    if flavour == "pytorch":
        import torch

        arrays = list(inputs.values()) if isinstance(inputs, dict) else [inputs]
        model.eval()
        with torch.no_grad():
            return model(*(torch.as_tensor(a) for a in arrays)).cpu().numpy()
    return model.predict_proba(inputs)


# --- provenance ----------------------------------------------------------------------------


def provenance() -> dict[str, str]:
    """Tags saying what produced a run: git commit and dirtiness, versions, the Ray job."""
    tags: dict[str, str] = {"mlflow.source.name": "orchestrate", "mlflow.source.type": "JOB"}
    commit, dirty = git_state()
    tags["git.commit"] = commit
    tags["git.dirty"] = dirty
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit  # the UI's "Version" column
    for package in RESULT_PACKAGES:
        try:
            tags[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    tags["version.python"] = sys.version.split()[0]
    submission = os.environ.get("ORCHESTRATE_JOB_ID") or _ray_submission_id()
    if submission:
        tags["ray.submission_id"] = submission
    try:
        import ray

        if ray.is_initialized():
            tags["ray.job_id"] = ray.get_runtime_context().get_job_id()
    except Exception:  # noqa: BLE001 - provenance is best effort
        pass
    return tags


def _ray_submission_id() -> str:
    """The Ray job's submission id, from the job config Ray gives every job driver."""
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    except json.JSONDecodeError:
        return ""
    return str((job.get("metadata") or {}).get("job_submission_id", ""))


def git_state() -> tuple[str, str]:
    """(commit, "true"/"false"/"unknown") of the project's checkout.

    A Ray job's working directory has no ``.git``: ``orchestrate submit`` passes the
    commit in ``ORCHESTRATE_GIT_COMMIT`` / ``ORCHESTRATE_GIT_DIRTY`` instead.
    """
    if os.environ.get("ORCHESTRATE_GIT_COMMIT"):
        return os.environ["ORCHESTRATE_GIT_COMMIT"], os.environ.get(
            "ORCHESTRATE_GIT_DIRTY", "unknown"
        )
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    return commit, str(bool(status)).lower()


def _requirements(*packages: str) -> list[str]:
    pins = []
    for package in packages:
        try:
            pins.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(package)
    return pins


def _write_json(path: Path, data: Any) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, default=str))
    partial.replace(path)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:80]


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[-1] if text else type(error).__name__
    return line[:300]
