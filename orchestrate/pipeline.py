"""The stages joined: ``run`` = ingest → sweep → report, from one config."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import ray

from orchestrate.cluster import ingest_paths, require_shared_paths, sweep_paths
from orchestrate.config import RunConfig, dump_config
from orchestrate.console import LOG_FORMAT, route_logs, say, workspace_log
from orchestrate.errors import InputError
from orchestrate.extractors import build_extractor
from orchestrate.features import baseline_beside, feature_source
from orchestrate.stages.ingest import IngestSummary, requested_extractors, run_ingest
from orchestrate.stages.report import (
    SweepContext,
    ablation_table,
    best_model_records,
    chance_lines,
    close_figures,
    fusion_verdict,
    parent_close_record,
    parent_open_record,
    study_records,
    summary_record,
    table_markdown,
)
from orchestrate.stages.sweep import (
    StudyOutcome,
    SweepPlan,
    VariantResult,
    plan_task,
    run_studies,
    sweep_directory,
)
from orchestrate.tracking import Tracker, provenance
from tasks import TASKS
from tasks.common import TaskSpec


def start_ray(config: RunConfig) -> None:
    """Join the cluster at ray.address / RAY_ADDRESS, else start Ray on this machine.

    Ray's own logs (and Ray Data's, Tune's, MLflow's) go to ``<workspace>/logs/ray.log``,
    not the terminal (``orchestrate.console``); workers' output stays in Ray's log files.
    """
    route_logs(workspace_log(config.workspace_path))  # and says where, once
    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": False, "logging_format": LOG_FORMAT}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=config.ray.num_cpus, include_dashboard=False, **quiet)


def ingest(config: RunConfig, progress: bool = True) -> IngestSummary:
    config.workspace_path.mkdir(parents=True, exist_ok=True)
    start_ray(config)
    require_shared_paths(ingest_paths(config))  # on several nodes: s3:// or shared paths
    return run_ingest(config, progress=progress)


def tracker(config: RunConfig) -> Tracker:
    """The run's MLflow tracker: the config's URI and experiment, spooled in the workspace."""
    return Tracker(
        config.tracking_uri,
        config.tracking.experiment,
        config.workspace_path / "mlflow-spool",
        artifact_location=config.artifact_location,
        say=say,  # above the sweep's progress bar, on a terminal
    )


def check_tracking(config: RunConfig) -> Tracker:
    """Reach the tracking server (and create the experiment) before any work starts."""
    config.workspace_path.mkdir(parents=True, exist_ok=True)
    # MLflow's own lines (database set-up) too; the path is printed when Ray starts.
    route_logs(workspace_log(config.workspace_path), announce=False)
    tracking = tracker(config)
    tracking.check()
    return tracking


def sweep(
    config: RunConfig, progress: bool = True, resume: bool = False, tracking: Tracker | None = None
) -> dict[str, pd.DataFrame]:
    """Sweep every task of the run by nested selection; a parent run and ablation table per task.

    ``resume`` continues the newest sweep under ``sweep.storage_path``: studies that finished
    are not run again, interrupted ones are restored with ``Tuner.restore``, and the runs go
    on under the same parent runs. Every run is spooled before it is sent (see
    ``orchestrate.tracking``): a tracking outage mid-sweep loses nothing.
    """
    tracking = tracking or check_tracking(config)
    start_ray(config)
    require_shared_paths(sweep_paths(config))
    sweep_dir = sweep_directory(config, resume)
    print(f"sweep results (Tune + Optuna journals): {sweep_dir}", file=sys.stderr, flush=True)
    context = SweepContext(
        experiment=config.tracking.experiment,
        dataset=config.dataset.name,
        sweep_dir=sweep_dir,
        seed=config.seed,
        provenance=provenance(),
        storage_options=config.storage_options,
    )
    resolved = {
        name: build_extractor(name, params).params
        for name, params in requested_extractors(config).items()
    }
    tables: dict[str, pd.DataFrame] = {}
    for run in config.task_runs():
        task = TASKS[run.name]
        opened = parent_open_record(
            context,
            run.name,
            params={
                "dataset": config.dataset.name,
                "variants": ",".join(run.variants),
                "protocols": ",".join(config.sweep.protocols),
                "selection": config.sweep.selection,
                "folds": str(config.sweep.folds),
                "num_samples": str(config.sweep.num_samples),
                "inner_folds": str(config.sweep.inner_folds),
                "max_epochs": str(config.sweep.max_epochs),
                "seeds": ",".join(map(str, config.sweep.seeds)),
                "seed": str(config.seed),
                **{f"task.{k}": str(v) for k, v in sorted(run.knobs.items())},
            },
            texts={"config.yaml": dump_config(config), "extractors.json": json.dumps(resolved)},
        )
        # The resolved parameters (weights sources and digests included): a run on random
        # VGG16 or FER weights says so here, as the stored rows do.
        opened.tags.update(
            {f"extractor.{name}": _weights_note(params) for name, params in resolved.items()}
        )
        opened.tags["resumed"] = str(resume).lower()
        tracking.log(opened)
        print(f"{run.name}: planning studies", file=sys.stderr, flush=True)
        plan = plan_task(config, run.name, run.variants, run.knobs, sweep_dir)
        reference = baseline_plan(config, task, run.variants, plan, sweep_dir)
        plan.rows.extend(reference.rows)
        plan.studies.extend(reference.studies)
        for row in plan.rows:
            if row.error:
                print(
                    f"orchestrate: {run.name}/{row.label} ({row.protocol}) not swept: {row.error}",
                    file=sys.stderr,
                )

        def log_study(row: VariantResult, outcome: StudyOutcome) -> None:
            records = study_records(context, row, outcome, TASKS[row.task].classes)
            for record in records:
                tracking.log(record)
            close_figures(records)

        results = run_studies(config, plan, resume=resume, progress=progress, on_study=log_study)
        table = ablation_table(task, results)
        out_dir = Path(config.workspace_path, "reports")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{run.name}.md").write_text(table_markdown(table))
        closing = [
            *best_model_records(context, results),
            parent_close_record(context, task, results, table),
        ]
        for record in closing:
            tracking.log(record)
        close_figures(closing)
        tables[run.name] = table
    summary = summary_record(context, tables)
    tracking.log(summary)
    left = tracking.flush()
    if left:
        print(
            f"orchestrate: {left} runs are not in MLflow yet ({tracking.uri} failed: "
            f"{tracking.last_error}); they are kept in {tracking.spool}: "
            "`orchestrate report --sync` logs them",
            file=sys.stderr,
        )
    return tables


def baseline_plan(
    config: RunConfig, task: TaskSpec, variants: list[str], plan: SweepPlan, sweep_dir: str
) -> SweepPlan:
    """The reference baseline's studies beside a paper's rows (``sweep.baseline``).

    Same clips and emotions as the paper's rows, under the protocols they use; the baseline's
    knobs are the run's ``tasks.baseline`` ones. A variant whose modality the dataset does
    not give (the SFEW table holds no ``modality.video``) is left out with one line.
    """
    wanted = baseline_beside(config, task, variants)
    protocols = list(dict.fromkeys(row.protocol for row in plan.rows))
    if not wanted or not protocols:
        return SweepPlan(rows=[], studies=[])
    baseline = TASKS["baseline"]
    kept = []
    for variant in wanted:
        try:
            feature_source(config, baseline, variant)
        except InputError as error:
            print(
                f"orchestrate: baseline-{variant} not swept beside {task.name}: {error}",
                file=sys.stderr,
            )
            continue
        kept.append(variant)
    knobs = next((run.knobs for run in config.task_runs() if run.name == baseline.name), {})
    return plan_task(config, baseline.name, kept, knobs, sweep_dir, beside=(task, protocols))


def print_tables(tables: dict[str, pd.DataFrame]) -> None:
    for name, table in tables.items():
        print(f"\n## {name}\n")
        print(table_markdown(table))
    verdicts = [line for name, table in tables.items() if (line := fusion_verdict(name, table))]
    if verdicts:
        print("\n".join(["Does fusion win? (outer-test UAR, speaker-independent)", *verdicts]))
    at_chance = [line for name, table in tables.items() for line in chance_lines(name, table)]
    if at_chance:
        print("\n".join(["Rows not above chance:", *at_chance]))


def _weights_note(params: dict) -> str:
    """A short tag naming where an extractor's network weights came from (if it has any)."""
    source = params.get("weights_source") or params.get("model_path")
    return f"weights: {source}" if source else "no network"
