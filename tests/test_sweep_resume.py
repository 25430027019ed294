"""A sweep whose driver is killed mid-way resumes with ``--resume`` and ends as asked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

NUM_SAMPLES = 4
ARGS = [
    "dataset.root={corpus}",
    "tasks={{emodal: {{variants: [audio]}}}}",
    "sweep.protocols=[actor-kfold]",
    "sweep.baseline=[]",  # the mechanism, on the paper's row alone
    "sweep.folds=2",
    f"sweep.num_samples={NUM_SAMPLES}",
    "sweep.max_concurrent=1",
    "sweep.max_concurrent_studies=1",
    "sweep.max_epochs=6",
]


def orchestrate(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrate", *args]


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_requested_trials(tmp_path: Path) -> None:
    corpus, workspace = tmp_path / "corpus", tmp_path / "ws"
    args = [arg.format(corpus=corpus) for arg in ARGS]
    common = ["--quiet", "--workspace", str(workspace), *args]
    subprocess.run(
        orchestrate("synth", "--out", str(corpus), "--actors", "4", "--clips-per-emotion", "1"),
        check=True,
        capture_output=True,
        timeout=600,
    )
    subprocess.run(orchestrate("ingest", *common), check=True, capture_output=True, timeout=900)

    # Kill the driver (its whole process group) once the first study is under way.
    sweep = subprocess.Popen(
        orchestrate("sweep", *common),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    study = None
    while time.monotonic() < deadline and sweep.poll() is None:
        # One trial at a time: a second trial's results mean the first one has ended.
        results = list(workspace.glob("sweeps/orchestrate/*/emodal-*-fold0/*/result.json"))
        if len(results) >= 2 and all(r.stat().st_size for r in results):
            study = results[0].parent.parent
            break
        time.sleep(0.5)
    assert sweep.poll() is None, "the sweep ended before it could be interrupted"
    assert study is not None, "no trial finished within the time limit"
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    assert not (study.parent / f"{study.name}.outcome.json").exists()

    done = subprocess.run(
        orchestrate("sweep", "--resume", *common), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| audio | audio | actor-kfold" in done.stdout
    header = "| variant | modality | protocol | selection | test accuracy | test UAR |"
    assert header in done.stdout  # the same table as an uninterrupted sweep prints
    sweeps = sorted(workspace.glob("sweeps/orchestrate/*"))
    assert len(sweeps) == 1  # resumed in place, not started afresh
    for fold in (0, 1):
        name = f"emodal-audio-actor-kfold-fold{fold}"
        outcome = json.loads((sweeps[0] / f"{name}.outcome.json").read_text())
        assert len(outcome["trials"]) == NUM_SAMPLES
        assert all(trial["error"] is None for trial in outcome["trials"])
        assert outcome["finals"] and outcome["chosen_config"]
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(sweeps[0] / f"{name}.optuna.log"))
        )
        trials = optuna.load_study(study_name=name, storage=storage).trials
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == NUM_SAMPLES  # the Optuna searcher carried on, not restarted

    # The resumed driver goes on under the killed driver's parent run and finishes it; every
    # study's trial and final runs are under it once.
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("orchestrate")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in runs if run.data.tags.get("kind") == "sweep"]
    assert [run.info.status for run in parents] == ["FINISHED"]
    keys = [run.data.tags["orchestrate.key"] for run in runs]
    assert len(keys) == len(set(keys))  # no run logged twice
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len([r for r in children if r.data.tags["kind"] == "trial"]) == 2 * NUM_SAMPLES
