"""``orchestrate submit``: the job's working directory, what is refused, and a real job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.dataset as pds
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrate.config import ConfigError, load_config
from orchestrate.corpus import synthesize_corpus
from orchestrate.submit import PROJECT, check_job_config, plain_command, stage_working_dir

if TYPE_CHECKING:  # registered as a plugin in conftest.py
    from ray_head import RayHead


def test_a_run_that_would_keep_its_results_in_the_jobs_temp_dir_is_refused() -> None:
    with pytest.raises(ConfigError, match="store.uri and tracking.uri"):
        check_job_config(load_config())
    check_job_config(load_config(overrides=["store.uri=s3://b/f", "tracking.uri=http://m:5000"]))
    check_job_config(load_config(overrides=["workspace=/shared/runs/a"]))


def test_the_working_dir_holds_the_project_and_the_config_only(tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text("seed: 3\n")
    staged = stage_working_dir(config, tmp_path / "staged")
    assert (staged / "run.yaml").read_text() == "seed: 3\n"
    assert (staged / "orchestrate" / "cli.py").is_file() and (staged / "tasks").is_dir()
    assert (staged / "search_spaces").is_dir() and (staged / "pyproject.toml").is_file()
    names = {path.name for path in staged.rglob("*")}
    assert not names & {".git", ".venv", "__pycache__", "orchestrate-workspace", "mlflow.db"}


def test_the_plain_command_is_a_ray_job_submit_of_the_same_run(tmp_path: Path) -> None:
    line = plain_command("http://head:8265", "orchestrate-x", None, ["seed=3"])
    assert line.startswith(
        "ray job submit --address http://head:8265 --submission-id orchestrate-x"
    )
    assert "--working-dir . --runtime-env-json" in line and '"excludes"' in line
    assert line.endswith("-- python -m orchestrate run --quiet seed=3")
    inside = plain_command(
        "http://h:8265", "x", PROJECT / "orchestrate" / "configs" / "demo.yaml", []
    )
    assert "--config orchestrate/configs/demo.yaml" in inside


@pytest.mark.slow
def test_submit_runs_orchestrate_on_the_cluster(ray_head: RayHead, tmp_path: Path) -> None:
    corpus, workspace = tmp_path / "corpus", tmp_path / "ws"
    synthesize_corpus(corpus, actors=4, clips_per_emotion=1, seed=0, progress=False)
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "workspace": str(workspace),  # absolute: the one machine's disk is shared
                "dataset": {"name": "ravdess", "root": str(corpus)},
                "ingest": {"extractors": {"emodal_audio": {}}},
                "tasks": {"emodal": {"variants": ["audio"]}},
                "sweep": {"protocols": ["actor-kfold"], "folds": 2, "num_samples": 1,
                          "max_epochs": 1, "baseline": []},
            }
        )
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "orchestrate", "submit", "--address", ray_head.dashboard_url,
         "--config", str(config), "seed=0"],
        env=ray_head.client_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert "ray job submit --address" in done.stderr and "SUCCEEDED" in done.stderr
    assert "ingest ravdess: 32 clips, 32 computed" in done.stdout  # the job's streamed logs
    assert "| audio | audio | actor-kfold" in done.stdout and "not swept" not in done.stdout
    rows = pds.dataset(workspace / "store" / "features" / "emodal_audio", format="parquet")
    assert rows.count_rows() == 32
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("orchestrate")
    runs = client.search_runs([experiment.experiment_id])
    assert {run.data.tags.get("kind") for run in runs} >= {"sweep", "trial", "final"}
    parent = next(run for run in runs if run.data.tags.get("kind") == "sweep")
    assert parent.data.tags["ray.submission_id"].startswith("orchestrate-")
    assert parent.data.tags["git.commit"] != ""
