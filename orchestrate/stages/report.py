"""Stage 3, report: ablation tables in MLflow, next to each paper's reported numbers.

Per task, one parent run holds the sweep's nested trial runs and the ablation table
(rows: the task's variants — audio-only, video-only, fused; columns: our mean ± std over
folds and seeds, the paper's number and protocol), logged as an MLflow table, as Markdown
and HTML artifacts and as a bar chart; plus confusion matrices and Optuna plots.
"""

from __future__ import annotations

import html
from pathlib import Path
from types import ModuleType

import matplotlib

matplotlib.use("Agg")  # reports are files, never windows

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import optuna
import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

from orchestrate.config import RunConfig
from orchestrate.stages.sweep import METRICS, VariantResult

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
    """One row per variant: our mean ± std per metric, the paper's number and protocol."""
    rows = []
    for result in results:
        row: dict[str, object] = {"task": result.task, "variant": result.variant}
        for metric in METRICS:
            mean, std = result.mean_std(metric)
            row[metric] = round(mean, 4)
            row[f"{metric}_std"] = round(std, 4)
        paper = [p for p in task.PAPER_RESULTS if p.variant == result.variant]
        row["paper"] = "; ".join(
            f"{METRIC_NAMES.get(p.metric, p.metric)} {p.value:.3f}" for p in paper
        )
        row["paper_protocol"] = "; ".join(dict.fromkeys(p.protocol for p in paper))
        row["protocol"] = result.protocol
        row["folds"] = len(result.fold_metrics)
        row["trials"] = result.trials
        row["clips_left_out"] = len(result.left_out)
        row["error"] = result.error or ""
        rows.append(row)
    return pd.DataFrame(rows)


def table_markdown(table: pd.DataFrame) -> str:
    """The ablation table as Markdown: mean ± std cells, the paper's numbers beside them."""
    header = [
        "variant",
        *(METRIC_NAMES[m] for m in METRICS),
        "paper",
        "paper protocol",
        "our protocol",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.to_dict("records"):
        ours = (
            [f"{row[m]:.3f} ± {row[f'{m}_std']:.3f}" for m in METRICS]
            if not row["error"]
            else [f"not swept: {row['error']}", "", ""]
        )
        cells = [
            row["variant"],
            *ours,
            row["paper"] or "—",
            row["paper_protocol"] or "—",
            f"{row['protocol']} ({row['folds']} folds)",
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def table_html(title: str, table: pd.DataFrame) -> str:
    return (
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h2>{html.escape(title)}</h2>{table.to_html(index=False)}</body></html>"
    )


def ablation_figure(task_name: str, table: pd.DataFrame, metric: str = "uar") -> plt.Figure:
    """Bars: our mean ± std per variant for ``metric``; the paper's numbers as markers."""
    figure, axis = plt.subplots(figsize=(1.6 + 1.3 * len(table), 3.2))
    positions = np.arange(len(table))
    axis.bar(
        positions,
        table[metric],
        yerr=table[f"{metric}_std"],
        capsize=4,
        color="#4C78A8",
        label="ours",
    )
    axis.set_xticks(positions, table["variant"])
    axis.set_ylim(0, 1)
    axis.set_ylabel(METRIC_NAMES[metric])
    axis.set_title(f"{task_name}: {METRIC_NAMES[metric]} by variant")
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
    """Log the task's ablation table, figures and Optuna plots on its parent run."""
    table = ablation_table(task, results)
    markdown = table_markdown(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{task.NAME}.md").write_text(markdown)
    client = MlflowClient()
    client.log_table(parent_run_id, data=table, artifact_file=f"ablation/{task.NAME}.json")
    client.log_text(parent_run_id, markdown, f"ablation/{task.NAME}.md")
    client.log_text(
        parent_run_id, table_html(f"{task.NAME} ablation", table), f"ablation/{task.NAME}.html"
    )
    figure = ablation_figure(task.NAME, table)
    client.log_figure(parent_run_id, figure, f"ablation/{task.NAME}.png")
    plt.close(figure)
    for row in table.to_dict("records"):
        if row["error"]:
            continue
        for metric in METRICS:
            client.log_metric(parent_run_id, f"{row['variant']}.{metric}", row[metric])
            client.log_metric(parent_run_id, f"{row['variant']}.{metric}_std", row[f"{metric}_std"])
    for result in results:
        if result.error:
            client.log_text(parent_run_id, result.error + "\n", f"failed/{result.variant}.txt")
            continue
        client.log_text(
            parent_run_id, yaml.safe_dump(result.best_config), f"best/{result.variant}.yaml"
        )
        figure = confusion_figure(f"{task.NAME} {result.variant}", result.confusion, task.CLASSES)
        client.log_figure(parent_run_id, figure, f"confusion/{result.variant}.png")
        plt.close(figure)
        if result.left_out:
            lines = "\n".join(f"{clip}: {reason}" for clip, reason in result.left_out)
            client.log_text(parent_run_id, lines + "\n", f"left_out/{result.variant}.txt")
        _log_trial_confusions(client, task, result, parent_run_id)
        _log_optuna_plots(client, result, parent_run_id)
    return table


def _log_trial_confusions(
    client: MlflowClient, task: ModuleType, result: VariantResult, parent_run_id: str
) -> None:
    """Each finished trial's confusion matrix, on its own nested run."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    for trial_id, metrics in result.trial_runs:
        if "confusion" not in metrics or not trial_id:
            continue
        runs = client.search_runs(
            [experiment_id],
            filter_string=(
                f"tags.mlflow.parentRunId = '{parent_run_id}' "
                f"and tags.trial_name LIKE '%{trial_id}'"
            ),
            max_results=1,
        )
        if runs:
            figure = confusion_figure(
                f"trial {trial_id}", _json(metrics["confusion"]), task.CLASSES
            )
            client.log_figure(runs[0].info.run_id, figure, "confusion_matrix.png")
            plt.close(figure)


def _log_optuna_plots(client: MlflowClient, result: VariantResult, parent_run_id: str) -> None:
    study = result.study
    if study is None or not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        return
    plots = {"history": optuna.visualization.plot_optimization_history}
    if len(study.trials) > 1 and study.best_trial.params:
        plots["importance"] = optuna.visualization.plot_param_importances
        plots["parallel"] = optuna.visualization.plot_parallel_coordinate
    for name, plot in plots.items():
        try:
            figure = plot(study)
        except (ValueError, RuntimeError) as error:  # e.g. importances need ≥2 varied params
            client.log_text(
                parent_run_id,
                f"{name}: not drawn ({error})\n",
                f"optuna/{result.variant}-{name}.txt",
            )
            continue
        client.log_text(
            parent_run_id,
            figure.to_html(include_plotlyjs="cdn"),
            f"optuna/{result.variant}-{name}.html",
        )


def _json(value: str) -> list[list[int]]:
    import json

    return json.loads(value)
