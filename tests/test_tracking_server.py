"""A small ablation sweep tracked by a real ``mlflow server`` that goes down in the middle.

One module-scoped sweep (EMODal audio, video and fused on a generated corpus: 6 nested
studies of 2 trials, one at a time) runs in a thread against a server on 127.0.0.1. Once
the first trial runs are on the server, the server is stopped; the sweep goes on, spooling
what it cannot log; the server is restarted on the same port with the same stores, and the
spool drains. The tests then read everything back through the MLflow client: nothing
missing, nothing twice, the nested shape, tags, metrics, the dataset input, the tables, a
loadable model, the HTML report — and, in headless Chromium, the report and the UI's page.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer, start_mlflow_server, stop_mlflow_server

from orchestrate.cli import main
from orchestrate.config import RunConfig, load_config
from orchestrate.corpus import synthesize_corpus
from orchestrate.pipeline import check_tracking, ingest, sweep
from orchestrate.tracking import EXPERIMENT_KIND, Tracker

pytestmark = pytest.mark.slow  # one ~4-minute sweep shared by the module

VARIANTS = ("audio", "video", "fused")
FOLDS, NUM_SAMPLES = 2, 2
STUDIES = len(VARIANTS) * FOLDS
WAIT_S = 900.0  # the sweep on 2 shared cores, with room


@dataclass
class TrackedSweep:
    config: RunConfig
    server: MlflowServer
    tracking: Tracker
    experiment_id: str
    outage_spooled: int  # records the sweep spooled while the server was down
    out: Path


def wait_for(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackedSweep]:
    base = tmp_path_factory.mktemp("tracked")
    server_dir = base / "server"
    server = start_mlflow_server(server_dir)
    port = int(server.uri.rsplit(":", 1)[1])
    corpus = base / "corpus"
    synthesize_corpus(corpus, actors=4, clips_per_emotion=1, seed=0, progress=False)
    config = load_config(
        overrides=[
            f"workspace={base / 'ws'}",
            f"tracking.uri={server.uri}",
            "tracking.experiment=outage",
            f"dataset.root={corpus}",
            f"tasks={{emodal: {{variants: [{', '.join(VARIANTS)}]}}}}",
            "sweep.protocols=[actor-kfold]",
            "sweep.baseline=[]",  # the mechanism, on the paper's rows alone
            f"sweep.folds={FOLDS}",
            f"sweep.num_samples={NUM_SAMPLES}",
            "sweep.max_epochs=1",
            "sweep.max_concurrent=1",
            "sweep.max_concurrent_studies=1",
        ]
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tracking = check_tracking(config)
        ingest(config, progress=False)
        client = MlflowClient(server.uri)
        experiment_id = tracking.experiment_id()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                sweep(config, progress=False, tracking=tracking)
            except BaseException as error:  # noqa: BLE001 - re-raised in the test thread
                failure.append(error)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def trials_logged() -> bool:
            runs = client.search_runs([experiment_id], "tags.kind = 'trial'")
            return bool(runs) or not thread.is_alive()

        wait_for(trials_logged, "the first trial runs on the server")
        stop_mlflow_server(server)  # the outage: mid-sweep, after some runs got in
        wait_for(lambda: tracking.pending() or not thread.is_alive(), "a spooled record")
        outage_spooled = len(tracking.pending())
        server = start_mlflow_server(server_dir, port=port)  # back, with the same stores
        thread.join(WAIT_S)
        assert not thread.is_alive(), "the sweep did not finish"
        if failure:
            raise failure[0]
        out = base / "report.html"
        # Whatever the last retry could not send, `report --sync` sends now.
        status = main(["report", "--sync", "--workspace", str(config.workspace_path),
                       "--tracking-uri", server.uri, "--experiment", "outage",
                       "--out", str(out)])  # fmt: skip
        assert status == 0
        yield TrackedSweep(config, server, tracking, experiment_id, outage_spooled, out)
    finally:
        ray.shutdown()
        stop_mlflow_server(server)
        print(server.tail())


def all_runs(tracked: TrackedSweep) -> list:
    return MlflowClient(tracked.server.uri).search_runs([tracked.experiment_id], max_results=1000)


def test_the_outage_lost_nothing_and_logged_nothing_twice(tracked: TrackedSweep) -> None:
    assert tracked.outage_spooled > 0, "the sweep never had to spool: no outage was tested"
    assert tracked.tracking.pending() == []
    runs = all_runs(tracked)
    kinds = [run.data.tags.get("kind") for run in runs]
    assert kinds.count("trial") == STUDIES * NUM_SAMPLES
    assert kinds.count("final") == STUDIES  # one seed
    assert kinds.count("sweep") == 1 and kinds.count("summary") == 1
    keys = [run.data.tags["orchestrate.key"] for run in runs]
    assert len(keys) == len(set(keys))
    assert all(run.info.status == "FINISHED" for run in runs)


def test_runs_are_nested_tagged_and_carry_their_metrics(tracked: TrackedSweep) -> None:
    client = MlflowClient(tracked.server.uri)
    experiment = client.get_experiment(tracked.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == EXPERIMENT_KIND
    runs = all_runs(tracked)
    (parent,) = [run for run in runs if run.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == STUDIES * (NUM_SAMPLES + 1)
    for run in children:
        tags = run.data.tags
        assert (
            tags["modality"]
            == {"audio": "audio", "video": "video", "fused": "fused"}[tags["variant"]]
        )
        assert tags["protocol"] == "actor-kfold" and tags["selection"] == "nested"
        assert tags["fold"] in {"0", "1"} and tags["dataset"] == "ravdess"
        assert tags["git.commit"] and tags["git.dirty"] in {"true", "false", "unknown"}
        assert tags["version.torch"] == importlib.metadata.version("torch")
        assert tags["version.mlflow"] == mlflow.__version__
        assert tags["ray.job_id"]
        assert any(key.startswith("features.emodal_") for key in tags)
        assert run.inputs.dataset_inputs, f"{run.info.run_name} has no dataset input"
        dataset = run.inputs.dataset_inputs[0].dataset
        assert dataset.name == f"ravdess/emodal-{tags['variant']}" and dataset.digest
        assert "manifests/" in dataset.source
    trials = [r for r in children if r.data.tags["kind"] == "trial"]
    finals = [r for r in children if r.data.tags["kind"] == "final"]
    assert all("val_uar" in r.data.metrics and "lr" in r.data.params for r in trials)
    assert not any(key.startswith("test_") for r in trials for key in r.data.metrics)
    for run in finals:
        assert {"test_uar", "test_accuracy", "test_macro_f1"} <= set(run.data.metrics)
        history = client.get_metric_history(run.info.run_id, "test_uar")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        assert "confusion.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # The parent's metrics are the table's numbers, so the UI can sort by them.
    for variant in VARIANTS:
        assert 0.0 <= parent.data.metrics[f"{variant}.actor-kfold.uar"] <= 1.0
    if parent.data.tags["git.commit"] != "unknown":
        assert parent.data.tags["mlflow.source.git.commit"] == parent.data.tags["git.commit"]


def test_the_tables_and_plots_are_artifacts(tracked: TrackedSweep, tmp_path: Path) -> None:
    client = MlflowClient(tracked.server.uri)
    runs = all_runs(tracked)
    (parent,) = [run for run in runs if run.data.tags.get("kind") == "sweep"]
    artifacts = set()
    for folder in ("ablation", "confusion", "optuna", "chosen"):
        artifacts |= {a.path for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {f"ablation/emodal.{ext}" for ext in ("json", "md", "html", "png")} <= artifacts
    assert "ablation/emodal-recall.png" in artifacts
    assert {f"confusion/{v}-actor-kfold.png" for v in VARIANTS} <= artifacts
    assert any(path.endswith("-history.png") for path in artifacts)
    local = client.download_artifacts(parent.info.run_id, "ablation/emodal.md", tmp_path)
    markdown = Path(local).read_text()
    assert "| fused | fused | actor-kfold (speaker-independent" in markdown
    assert "ours − paper" in markdown
    (summary,) = [run for run in runs if run.data.tags.get("kind") == "summary"]
    paths = {a.path for a in client.list_artifacts(summary.info.run_id, "ablation")}
    assert "ablation/summary.json" in paths


def test_the_best_model_of_each_variant_loads_with_its_flavour(tracked: TrackedSweep) -> None:
    mlflow.set_tracking_uri(tracked.server.uri)
    runs = [r for r in all_runs(tracked) if r.data.tags.get("best_model") == "true"]
    assert sorted(r.data.tags["variant"] for r in runs) == sorted(VARIANTS)
    models = mlflow.search_logged_models(
        experiment_ids=[tracked.experiment_id], output_format="list"
    )
    by_run = {model.source_run_id: model for model in models}
    for run in runs:
        model = by_run[run.info.run_id]
        info = mlflow.models.get_model_info(model.model_uri)
        assert info.signature is not None and info.signature.inputs
        network = mlflow.pytorch.load_model(model.model_uri)
        names = [spec.name for spec in info.signature.inputs.inputs]
        shapes = [
            tuple(2 if d == -1 else d for d in spec.shape) for spec in info.signature.inputs.inputs
        ]
        inputs = [torch.zeros(shape) for shape in shapes]
        probabilities = network(*inputs).detach().numpy()
        assert probabilities.shape == (2, 4), names
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_the_html_report_stands_alone(tracked: TrackedSweep) -> None:
    page = tracked.out.read_text()
    assert "<table class='ablation'>" in page and "emodal" in page
    assert "data:image/png;base64," in page
    # Nothing to fetch: no scripts, no external images or stylesheets.
    assert "<script" not in page and "src='http" not in page and "<link" not in page
    assert "not in MLflow yet" not in page  # the spool drained


CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1600,1200", "--virtual-time-budget=20000",
]  # fmt: skip


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def screenshots_dir(tmp_path: Path) -> Path:
    """Where the screenshots are kept: $ORCHESTRATE_TEST_ARTIFACTS, else the test's tmp dir."""
    folder = Path(os.environ.get("ORCHESTRATE_TEST_ARTIFACTS") or tmp_path) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_a_browser_shows_the_report_and_the_mlflow_runs(
    tracked: TrackedSweep, tmp_path: Path
) -> None:
    shots = screenshots_dir(tmp_path)
    report = chromium(tmp_path, "--dump-dom", tracked.out.as_uri())
    if report.returncode != 0 and not report.stdout:
        pytest.skip(f"headless Chromium could not start: {report.stderr.strip()[-300:]}")
    assert "ablation" in report.stdout and "fused" in report.stdout
    chromium(tmp_path, f"--screenshot={shots / 'report.png'}", tracked.out.as_uri())
    page = (
        f"{tracked.server.uri}/#/experiments/{tracked.experiment_id}/runs"
        "?workflowType=machine_learning"
    )
    ui = chromium(tmp_path, "--dump-dom", page)
    assert "emodal sweep" in ui.stdout, ui.stdout[-2000:]
    assert "ravdess/emodal-" in ui.stdout  # the Dataset column
    chromium(tmp_path, f"--screenshot={shots / 'mlflow-runs.png'}", page)
    assert (shots / "report.png").stat().st_size > 0
    assert (shots / "mlflow-runs.png").stat().st_size > 0
    print(f"screenshots kept in {shots}")
