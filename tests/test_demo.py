"""The demo end to end at a reduced size: corpus → ingest → sweeps → MLflow ablation tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tasks import TASKS


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    command = [
        sys.executable, "-m", "orchestrate", "demo", "--quiet",
        "--workspace", str(workspace), "--actors", "3", "--clips-per-emotion", "2",
        "sweep.folds=3", "sweep.num_samples=1", "sweep.max_epochs=1",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "ingest ravdess: 48 clips, 48 computed" in out
    assert "not swept" not in done.stderr
    for name in TASKS:
        assert f"## {name}" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{workspace / 'mlflow.db'}" in out

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("orchestrate")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    parents = {
        run.data.tags["task"]: run for run in runs if "mlflow.parentRunId" not in run.data.tags
    }
    assert set(parents) == set(TASKS)
    for name, parent in parents.items():
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == len(TASKS[name].VARIANTS)  # one trial per variant
        assert all("uar" in child.data.metrics for child in children)
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "ablation")}
        assert {f"ablation/{name}.{ext}" for ext in ("json", "md", "html", "png")} <= artifacts
        local = client.download_artifacts(parent.info.run_id, f"ablation/{name}.json", tmp_path)
        table = json.loads(Path(local).read_text())  # mlflow's log_table layout
        variants = [row[table["columns"].index("variant")] for row in table["data"]]
        assert variants == list(TASKS[name].VARIANTS)
