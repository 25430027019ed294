"""The stages joined: ``run`` = ingest → sweep → report, from one config."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
import pandas as pd
import ray

from orchestrate.config import RunConfig, dump_config
from orchestrate.extractors import build_extractor
from orchestrate.stages.ingest import IngestSummary, requested_extractors, run_ingest
from orchestrate.stages.report import ensure_experiment, log_task_report, table_markdown
from orchestrate.stages.sweep import plan_task, run_studies, sweep_directory
from tasks import TASKS


def start_ray(config: RunConfig) -> None:
    """Join the cluster at ray.address / RAY_ADDRESS, else start Ray on this machine."""
    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=config.ray.num_cpus, include_dashboard=False, log_to_driver=False)


def ingest(config: RunConfig, progress: bool = True) -> IngestSummary:
    config.workspace_path.mkdir(parents=True, exist_ok=True)
    start_ray(config)
    return run_ingest(config, progress=progress)


def sweep(
    config: RunConfig, progress: bool = True, resume: bool = False
) -> dict[str, pd.DataFrame]:
    """Sweep every task of the run by nested selection; a parent run and ablation table per task.

    ``resume`` continues the newest sweep under ``sweep.storage_path``: studies that finished
    are not run again, interrupted ones are restored with ``Tuner.restore``.
    """
    config.workspace_path.mkdir(parents=True, exist_ok=True)
    start_ray(config)
    experiment_id = ensure_experiment(config)
    sweep_dir = sweep_directory(config, resume)
    print(f"sweep results (Tune + Optuna journals): {sweep_dir}", file=sys.stderr, flush=True)
    if resume:
        _close_interrupted_runs(experiment_id, sweep_dir)
    tables: dict[str, pd.DataFrame] = {}
    for run in config.task_runs():
        task = TASKS[run.name]
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{run.name} sweep") as parent:
            mlflow.set_tags(
                {
                    "task": run.name,
                    "dataset": config.dataset.name,
                    "seed": config.seed,
                    "selection": config.sweep.selection,
                    "sweep_dir": sweep_dir,
                    "resumed": str(resume).lower(),
                }
            )
            mlflow.log_params(
                {
                    "dataset": config.dataset.name,
                    "protocols": ",".join(config.sweep.protocols),
                    "selection": config.sweep.selection,
                    "num_samples": config.sweep.num_samples,
                    "inner_folds": config.sweep.inner_folds,
                    "seeds": ",".join(map(str, config.sweep.seeds)),
                    "seed": config.seed,
                }
            )
            mlflow.log_text(dump_config(config), "config.yaml")
            # The resolved parameters (weights sources and digests included): a run on
            # random VGG16 or FER weights says so here, as the stored rows do.
            resolved = {
                name: build_extractor(name, params).params
                for name, params in requested_extractors(config).items()
            }
            mlflow.log_dict(resolved, "extractors.json")
            mlflow.set_tags(
                {f"extractor.{name}": _weights_note(params) for name, params in resolved.items()}
            )
            print(f"{run.name}: planning studies", file=sys.stderr, flush=True)
            plan = plan_task(config, run.name, run.variants, run.config, sweep_dir)
            for row in plan.rows:
                if row.error:
                    print(
                        f"orchestrate: {run.name}/{row.variant} ({row.protocol}) not swept: "
                        f"{row.error}",
                        file=sys.stderr,
                    )
            results = run_studies(config, plan, resume=resume, progress=progress)
            out_dir = Path(config.workspace_path, "reports")
            tables[run.name] = log_task_report(task, results, parent.info.run_id, out_dir)
    return tables


def _close_interrupted_runs(experiment_id: str, sweep_dir: str) -> None:
    """Mark the parent runs a killed driver left RUNNING for this sweep as KILLED."""
    client = mlflow.MlflowClient()
    for run in client.search_runs(
        [experiment_id],
        filter_string=f"tags.sweep_dir = '{sweep_dir}' and attributes.status = 'RUNNING'",
    ):
        client.set_terminated(run.info.run_id, "KILLED")


def print_tables(tables: dict[str, pd.DataFrame]) -> None:
    for name, table in tables.items():
        print(f"\n## {name}\n")
        print(table_markdown(table))


def _weights_note(params: dict) -> str:
    """A short tag naming where an extractor's network weights came from (if it has any)."""
    source = params.get("weights_source") or params.get("model_path")
    return f"weights: {source}" if source else "no network"
