"""Stage 3, report: ablation tables in MLflow, next to each paper's reported numbers.

Per task, one parent run holds the sweep's nested trial runs and the ablation table
(rows: the task's variants — audio-only, video-only, fused; columns: our mean ± std over
folds and seeds, the paper's number and protocol), logged as an MLflow table, as Markdown
and HTML artifacts and as a bar chart; plus confusion matrices and Optuna plots.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from types import ModuleType

import matplotlib

matplotlib.use("Agg")  # reports are files, never windows

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import optuna
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from orchestrate.config import RunConfig
from orchestrate.protocols import ACTOR_PROTOCOLS
from orchestrate.stages.sweep import StudyOutcome, VariantResult
from orchestrate.stages.trials import METRICS

# Rebuilding each study for its plots would log "A new study created" once per fold.
optuna.logging.set_verbosity(optuna.logging.WARNING)

METRIC_NAMES = {"accuracy": "accuracy", "uar": "UAR", "macro_f1": "macro-F1"}


def ensure_experiment(config: RunConfig) -> str:
    """The run's MLflow experiment id, created with a workspace artifact root when local."""
    mlflow.set_tracking_uri(config.tracking_uri)
    experiment = mlflow.get_experiment_by_name(config.tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    local = config.tracking_uri.startswith(("sqlite:", "file:", "/"))
    # A SQLite store needs an explicit artifact location; a server chooses its own.
    location = config.artifact_location if local else None
    return mlflow.create_experiment(config.tracking.experiment, artifact_location=location)


def ablation_table(task: ModuleType, results: list[VariantResult]) -> pd.DataFrame:
    """One row per variant x protocol: outer-test numbers no search saw, beside the paper's.

    Per metric: mean, sample std and a 95% t-interval over outer folds x seeds; the chosen
    configurations' mean inner-validation UAR (the selection gap is ``validation_uar - uar``);
    the chance UAR of a constant predictor; the paper's numbers and protocol.
    """
    rows = []
    for result in results:
        row: dict[str, object] = {
            "task": result.task,
            "variant": result.variant,
            "protocol": result.protocol,
            "speaker_independent": result.protocol in ACTOR_PROTOCOLS,
            "is_paper_protocol": result.is_paper_protocol,
            "selection": result.selection,
        }
        for metric in METRICS:
            mean, std, low, high = result.summary(metric)
            row[metric] = _rounded(mean)
            row[f"{metric}_std"] = _rounded(std)
            row[f"{metric}_ci95_low"] = _rounded(low)
            row[f"{metric}_ci95_high"] = _rounded(high)
        row["validation_uar"] = _rounded(result.validation_uar)
        row["chance_uar"] = round(1.0 / result.n_classes, 4)
        row["n"] = len(result.finals)
        row["folds"] = len(result.outcomes)
        row["seeds"] = len({final.seed for final in result.finals})
        row["trials"] = result.trials
        row["chosen_configs"] = json.dumps(
            [_plain(config) for config in result.chosen_configs], sort_keys=True
        )
        paper = [p for p in task.PAPER_RESULTS if p.variant == result.variant]
        row["paper"] = "; ".join(
            f"{METRIC_NAMES.get(p.metric, p.metric)} {p.value:.3f}" for p in paper
        )
        row["paper_protocol"] = "; ".join(dict.fromkeys(p.protocol for p in paper))
        row["clips_left_out"] = len(result.left_out)
        row["error"] = result.error or ""
        rows.append(row)
    return pd.DataFrame(rows)


def _rounded(value: float) -> float:
    return round(value, 4) if np.isfinite(value) else float("nan")


def _plain(config: dict) -> dict:
    """A configuration with numpy scalars turned into plain Python values (for JSON)."""
    return {key: value.item() if hasattr(value, "item") else value for key, value in config.items()}


def _cell(row: dict, metric: str) -> str:
    mean, std = row[metric], row[f"{metric}_std"]
    if not np.isfinite(mean):
        return "—"
    if not np.isfinite(std):
        return f"{mean:.3f} (n=1)"
    low, high = row[f"{metric}_ci95_low"], row[f"{metric}_ci95_high"]
    return f"{mean:.3f} ± {std:.3f} [{low:.2f}, {high:.2f}]"


def protocol_label(row: dict) -> str:
    speaker = "speaker-independent" if row["speaker_independent"] else "speaker-dependent"
    paper = "paper's, " if row["is_paper_protocol"] else ""
    return f"{row['protocol']} ({paper}{speaker}, {row['folds']} folds x {row['seeds']} seeds)"


def table_markdown(table: pd.DataFrame) -> str:
    """The ablation table as Markdown: outer-test mean ± std [95% interval], paper beside it."""
    header = [
        "variant",
        "protocol",
        "selection",
        *(f"test {METRIC_NAMES[m]}" for m in METRICS),
        "validation UAR",
        "chance UAR",
        "paper",
        "paper protocol",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.to_dict("records"):
        if row["error"] and not row["n"]:
            ours = [f"not swept: {row['error']}", "", "", ""]
        else:
            validation = row["validation_uar"]
            ours = [
                *(_cell(row, m) for m in METRICS),
                f"{validation:.3f}" if np.isfinite(validation) else "—",
            ]
        cells = [
            row["variant"],
            protocol_label(row),
            row["selection"],
            *ours,
            f"{row['chance_uar']:.3f}",
            row["paper"] or "—",
            row["paper_protocol"] or "—",
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def table_html(title: str, table: pd.DataFrame) -> str:
    return (
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h2>{html.escape(title)}</h2>{table.to_html(index=False)}</body></html>"
    )


def ablation_figure(task_name: str, table: pd.DataFrame, metric: str = "uar") -> plt.Figure:
    """Bars: outer-test mean ± std per variant and protocol; the chance level as a line."""
    figure, axis = plt.subplots(figsize=(1.6 + 1.1 * len(table), 3.4))
    positions = np.arange(len(table))
    colours = [
        "#4C78A8" if independent else "#F58518" for independent in table["speaker_independent"]
    ]
    axis.bar(
        positions,
        table[metric].fillna(0),
        yerr=table[f"{metric}_std"].fillna(0),
        capsize=4,
        color=colours,
    )
    axis.axhline(float(table["chance_uar"].iloc[0]), color="grey", linestyle="--", label="chance")
    labels = [f"{v}\n{p}" for v, p in zip(table["variant"], table["protocol"], strict=True)]
    axis.set_xticks(positions, labels, fontsize=7)
    axis.set_ylim(0, 1)
    axis.set_ylabel(f"test {METRIC_NAMES[metric]}")
    axis.set_title(f"{task_name}: outer-test {METRIC_NAMES[metric]} (blue: speaker-independent)")
    axis.legend(loc="upper right", fontsize=7)
    figure.tight_layout()
    return figure


def confusion_figure(
    title: str, confusion: list[list[int]], classes: tuple[str, ...]
) -> plt.Figure:
    matrix = np.asarray(confusion)
    figure, axis = plt.subplots(figsize=(1.2 + 0.55 * len(classes), 1.0 + 0.5 * len(classes)))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    for (i, j), value in np.ndenumerate(matrix):
        axis.text(j, i, str(value), ha="center", va="center", fontsize=8)
    figure.tight_layout()
    return figure


def log_task_report(
    task: ModuleType, results: list[VariantResult], parent_run_id: str, out_dir: Path
) -> pd.DataFrame:
    """Log the task's trial and final-model runs, ablation table, figures and Optuna plots."""
    table = ablation_table(task, results)
    markdown = table_markdown(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{task.NAME}.md").write_text(markdown)
    client = MlflowClient()
    for result in results:
        log_study_runs(client, result, parent_run_id)
    client.log_table(parent_run_id, data=table, artifact_file=f"ablation/{task.NAME}.json")
    client.log_text(parent_run_id, markdown, f"ablation/{task.NAME}.md")
    client.log_text(
        parent_run_id, table_html(f"{task.NAME} ablation", table), f"ablation/{task.NAME}.html"
    )
    figure = ablation_figure(task.NAME, table)
    client.log_figure(parent_run_id, figure, f"ablation/{task.NAME}.png")
    plt.close(figure)
    metrics = []
    for row in table.to_dict("records"):
        for name in (*METRICS, *(f"{m}_std" for m in METRICS), "validation_uar"):
            if np.isfinite(row[name]):
                key = f"{row['variant']}.{row['protocol']}.{name}"
                metrics.append(Metric(key, float(row[name]), _now(), 0))
    for start in range(0, len(metrics), 1000):
        client.log_batch(parent_run_id, metrics=metrics[start : start + 1000])
    for result in results:
        row_name = f"{result.variant}-{result.protocol}"
        if result.error:
            client.log_text(parent_run_id, result.error + "\n", f"failed/{row_name}.txt")
        if not result.finals:
            continue
        client.log_dict(
            parent_run_id,
            {o.plan_name: _plain(o.chosen_config) for o in result.outcomes},
            f"chosen/{row_name}.json",
        )
        figure = confusion_figure(
            f"{task.NAME} {result.variant} ({result.protocol}), outer test",
            result.confusion,
            task.CLASSES,
        )
        client.log_figure(parent_run_id, figure, f"confusion/{row_name}.png")
        plt.close(figure)
        if result.left_out:
            lines = "\n".join(f"{clip}: {reason}" for clip, reason in result.left_out)
            client.log_text(parent_run_id, lines + "\n", f"left_out/{result.variant}.txt")
        for outcome in result.outcomes:
            _log_optuna_plots(client, outcome, parent_run_id)
    return table


def log_study_runs(client: MlflowClient, result: VariantResult, parent_run_id: str) -> None:
    """A nested run per trial (its validation history) and per final model (its test score).

    Written from the driver after each study: workers never need the tracking server.
    """
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    base_tags = {
        "mlflow.parentRunId": parent_run_id,
        "task": result.task,
        "variant": result.variant,
        "protocol": result.protocol,
        "selection": result.selection,
    }
    for outcome in result.outcomes:
        fold_tags = {**base_tags, "fold": str(outcome.fold)}
        for trial in outcome.trials:
            run = client.create_run(
                experiment_id,
                run_name=f"{outcome.plan_name} trial {trial.trial_id}",
                tags={**fold_tags, "kind": "trial", "trial_id": trial.trial_id},
            )
            metrics = [
                Metric(key, value, _now(), int(epoch.get("training_iteration", i + 1)))
                for i, epoch in enumerate(trial.history)
                for key, value in epoch.items()
                if key.startswith(("val_", "train_")) and np.isfinite(value)
            ]
            params = [Param(k, str(v)[:6000]) for k, v in sorted(trial.config.items())]
            _log_batched(client, run.info.run_id, metrics, params)
            if trial.error:
                client.set_tag(run.info.run_id, "error", trial.error[:5000])
            client.set_terminated(run.info.run_id, "FAILED" if trial.error else "FINISHED")
        for final in outcome.finals:
            run = client.create_run(
                experiment_id,
                run_name=f"{outcome.plan_name} final seed {final.seed}",
                tags={**fold_tags, "kind": "final", "seed": str(final.seed)},
            )
            params = [Param(k, str(v)) for k, v in sorted(outcome.chosen_config.items())]
            metrics = [Metric(f"test_{k}", v, _now(), 0) for k, v in final.metrics.items()]
            metrics += [Metric(k, v, _now(), 0) for k, v in outcome.validation.items()]
            _log_batched(client, run.info.run_id, metrics, params)
            client.log_dict(run.info.run_id, {"confusion": final.confusion}, "confusion.json")
            client.set_terminated(run.info.run_id, "FINISHED")


def _log_batched(
    client: MlflowClient, run_id: str, metrics: list[Metric], params: list[Param]
) -> None:
    """``log_batch`` within MLflow's limits (1000 metrics, 100 params a request)."""
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def _now() -> int:
    return int(time.time() * 1000)


def _log_optuna_plots(client: MlflowClient, outcome: StudyOutcome, parent_run_id: str) -> None:
    """Optuna's optimisation history and parameter importances of one outer fold's study."""
    completed = [t for t in outcome.optuna_trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        return
    study = optuna.create_study(direction="maximize", study_name=outcome.plan_name)
    study.add_trials(outcome.optuna_trials)
    plots = {"history": optuna.visualization.plot_optimization_history}
    if len(completed) > 1 and study.best_trial.params:
        plots["importance"] = optuna.visualization.plot_param_importances
    for name, plot in plots.items():
        try:
            figure = plot(study)
        except (ValueError, RuntimeError) as error:  # e.g. importances need ≥2 varied params
            client.log_text(
                parent_run_id,
                f"{name}: not drawn ({error})\n",
                f"optuna/{outcome.plan_name}-{name}.txt",
            )
            continue
        client.log_text(
            parent_run_id,
            figure.to_html(include_plotlyjs="cdn"),
            f"optuna/{outcome.plan_name}-{name}.html",
        )
