"""Stage 3, report: what MLflow records of a sweep, and the ablation tables beside the papers.

Per task sweep, a parent run; nested under it, a run per trial (its configuration and
validation history) and a run per outer fold's final model (its per-epoch test metrics and
confusion matrix), each with the provenance of the sweep (git commit, package versions,
Ray job), the feature cache keys, a ``modality`` tag and the swept clips as an MLflow
dataset input. The parent carries the ablation table's numbers as metrics, the table
(``log_table``, Markdown, HTML), the ablation and per-class recall charts, the pooled
confusion matrices, the Optuna plots of every study, and the variant's best model in
MLflow's own flavour. This module builds those runs as :class:`~orchestrate.tracking.RunRecord`
s; :mod:`orchestrate.tracking` writes them (through its spool). Rows: one per variant x
protocol; columns: outer-test mean ± std and 95% interval over folds x seeds, chance, the
paper's number, protocol and our difference to it.
"""

from __future__ import annotations

import html
import json
import warnings
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # reports are files, never windows

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd

from orchestrate.protocols import ACTOR_PROTOCOLS
from orchestrate.stages.sweep import RANDOM_WEIGHTS, StudyOutcome, VariantResult
from orchestrate.stages.trials import METRICS, read_exported
from orchestrate.tracking import DatasetRef, ModelRef, RunRecord
from tasks import TASKS
from tasks.common import TaskSpec

# Rebuilding each study for its plots would log "A new study created" once per fold.
optuna.logging.set_verbosity(optuna.logging.WARNING)

METRIC_NAMES = {"accuracy": "accuracy", "uar": "UAR", "macro_f1": "macro-F1"}
# The papers' metric names, as ours: Wang's "average per-class accuracy" is UAR.
PAPER_METRIC = {"average_per_class_accuracy": "uar"}


def ablation_table(task: TaskSpec, results: list[VariantResult]) -> pd.DataFrame:
    """One row per variant x protocol: outer-test numbers no search saw, beside the paper's.

    Per metric: mean, sample std and a 95% t-interval over outer folds x seeds; the chosen
    configurations' mean inner-validation UAR (the selection gap is ``validation_uar - uar``);
    the chance UAR of a constant predictor; the paper's numbers and protocol. The baseline's
    rows beside the paper's (``VariantResult.beside``) read ``baseline-<variant>``, with no
    paper number.
    """
    rows = []
    for result in results:
        row: dict[str, object] = {
            "task": result.beside or result.task,
            "variant": result.label,
            "model": result.task,
            "modality": result.modality,
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
        paper = (
            [] if result.beside else [p for p in task.paper_results if p.variant == result.variant]
        )
        row["paper"] = "; ".join(
            f"{METRIC_NAMES.get(p.metric, p.metric)} {p.value:.3f}" for p in paper
        )
        row["paper_protocol"] = "; ".join(dict.fromkeys(p.protocol for p in paper))
        # Our number minus the paper's, on the paper's (first) metric, under this row's protocol.
        row["paper_metric"] = PAPER_METRIC.get(paper[0].metric, paper[0].metric) if paper else ""
        row["paper_value"] = paper[0].value if paper else float("nan")
        ours = row.get(row["paper_metric"], float("nan")) if paper else float("nan")
        row["difference"] = _rounded(ours - paper[0].value) if paper else float("nan")
        row["note"] = result.note
        # Per outer fold, the mean test UAR over seeds: for paired comparisons of rows.
        row["fold_uar"] = json.dumps(
            [
                _rounded(float(np.mean([f.metrics["uar"] for f in outcome.finals])))
                for outcome in result.outcomes
                if outcome.finals
            ]
        )
        row["clips_left_out"] = len(result.left_out)
        row["error"] = result.error or ""
        rows.append(row)
    return pd.DataFrame(rows)


def _finite(value: object) -> bool:
    """A real number, not NaN or inf (a table read back from JSON has None for NaN)."""
    return isinstance(value, int | float) and bool(np.isfinite(value))


def _rounded(value: float) -> float:
    return round(value, 4) if np.isfinite(value) else float("nan")


def _plain(config: dict) -> dict:
    """A configuration with numpy scalars turned into plain Python values (for JSON)."""
    return {key: value.item() if hasattr(value, "item") else value for key, value in config.items()}


def _cell(row: dict, metric: str) -> str:
    mean, std = row[metric], row[f"{metric}_std"]
    if not _finite(mean):
        return "—"
    if not _finite(std):
        return f"{mean:.3f} (n=1)"
    low, high = row[f"{metric}_ci95_low"], row[f"{metric}_ci95_high"]
    return f"{mean:.3f} ± {std:.3f} [{low:.2f}, {high:.2f}]"


def protocol_label(row: dict) -> str:
    speaker = "speaker-independent" if row["speaker_independent"] else "speaker-dependent"
    paper = "paper's, " if row["is_paper_protocol"] else ""
    return f"{row['protocol']} ({paper}{speaker}, {row['folds']} folds x {row['seeds']} seeds)"


def _paper_cell(row: dict) -> str:
    return row["paper"] or "—"


def _difference_cell(row: dict) -> str:
    difference = row["difference"]
    if not _finite(difference):
        return "—"
    return f"{difference:+.3f} ({METRIC_NAMES.get(row['paper_metric'], row['paper_metric'])})"


ABLATION_HEADER = (
    "variant",
    "modality",
    "protocol",
    "selection",
    *(f"test {METRIC_NAMES[m]}" for m in METRICS),
    "validation UAR",
    "chance UAR",
    "paper",
    "paper protocol",
    "ours − paper",
)
SUMMARY_HEADER = ("task", "variant", "modality", "protocol", "test UAR", "test accuracy",
                  "chance", "paper", "ours − paper")  # fmt: skip


def table_markdown(table: pd.DataFrame) -> str:
    """The ablation table as Markdown: outer-test mean ± std [95% interval], paper beside it."""
    header = ABLATION_HEADER
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.to_dict("records"):
        lines.append("| " + " | ".join(str(cell) for cell in _row_cells(row)) + " |")
    return "\n".join(lines) + "\n"


def _row_cells(row: dict) -> list[str]:
    if row["error"] and not row["n"]:
        ours = [f"not swept: {row['error']}", "", "", ""]
    else:
        validation = row["validation_uar"]
        ours = [
            *(_cell(row, m) for m in METRICS),
            f"{validation:.3f}" if _finite(validation) else "—",
        ]
    variant = row["variant"] + (f" ({row['note']})" if row.get("note") else "")
    return [
        variant,
        row.get("modality", ""),
        protocol_label(row),
        row["selection"],
        *ours,
        f"{row['chance_uar']:.3f}",
        _paper_cell(row),
        row["paper_protocol"] or "—",
        _difference_cell(row),
    ]


def fusion_verdict(task: str, table: pd.DataFrame) -> str | None:
    """One line: does the fused row beat both unimodal rows (outer-test UAR, mean and per fold)?

    Read under the first speaker-independent protocol of the table; None when the task has
    no audio, video and fused rows swept there.
    """
    independent = table[table["speaker_independent"] & (table["n"] > 0)]
    if independent.empty:
        return None
    protocol = independent["protocol"].iloc[0]
    rows = {
        row["variant"]: row
        for row in independent[independent["protocol"] == protocol].to_dict("records")
    }
    if not {"audio", "video", "fused"} <= set(rows):
        return None
    fused, audio, video = (rows[v] for v in ("fused", "audio", "video"))
    baseline = rows.get("baseline-fused")
    reference = f"; the baseline's fused: {baseline['uar']:.2f}" if baseline else ""
    folds = [json.loads(rows[v]["fold_uar"]) for v in ("fused", "audio", "video")]
    paired = list(zip(*folds, strict=False)) if len({len(f) for f in folds}) == 1 else []
    wins = sum(1 for f, a, v in paired if f > a and f > v)
    by_fold = f"in {wins} of {len(paired)} folds" if paired else "folds not comparable"
    gain_audio, gain_video = fused["uar"] - audio["uar"], fused["uar"] - video["uar"]
    if gain_audio > 0 and gain_video > 0:
        return (
            f"{task}: fused beats audio by {gain_audio:+.2f} and video by {gain_video:+.2f} "
            f"UAR ({protocol}), {by_fold}{reference}"
        )
    return (
        f"{task}: fused does not beat both: audio {audio['uar']:.2f}, video {video['uar']:.2f}, "
        f"fused {fused['uar']:.2f} UAR ({protocol}); fused above both {by_fold}{reference}"
    )


def chance_lines(task: str, table: pd.DataFrame) -> list[str]:
    """One line per swept row whose outer-test UAR is not above chance, saying what to raise.

    Such a row did not learn within the run's budget (trials, epochs, clips) or its
    features carry too little about the classes (a network on random weights: the row's
    note names it); the table still shows its number.
    """
    lines = []
    for row in table[table["n"] > 0].to_dict("records"):
        if _finite(row["uar"]) and row["uar"] <= row["chance_uar"]:
            note = row.get("note") or ""
            why = (
                f"its features come from {note} (give the network's trained weights)"
                if note.startswith(RANDOM_WEIGHTS)
                else "too small a budget or too little in its features "
                "(raise sweep.num_samples, the task's epochs, or the corpus' clips)"
            )
            lines.append(
                f"{task}/{row['variant']} ({row['protocol']}): test UAR {row['uar']:.3f} is not "
                f"above chance ({row['chance_uar']:.3f}) with {row['trials']} trials over "
                f"{row['folds']} folds: {why}"
            )
    return lines


def summary_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Across papers: every task's rows, outer-test UAR and accuracy beside the paper's number."""
    rows = []
    for table in tables.values():
        for row in table.to_dict("records"):
            rows.append(
                {
                    "task": row["task"],
                    "variant": row["variant"],
                    "modality": row.get("modality", ""),
                    "protocol": row["protocol"],
                    "speaker_independent": row["speaker_independent"],
                    "uar": row["uar"],
                    "uar_std": row["uar_std"],
                    "accuracy": row["accuracy"],
                    "accuracy_std": row["accuracy_std"],
                    "chance_uar": row["chance_uar"],
                    "paper": row["paper"],
                    "paper_protocol": row["paper_protocol"],
                    "difference": row["difference"],
                    "paper_metric": row["paper_metric"],
                    "n": row["n"],
                }
            )
    return pd.DataFrame(rows)


def summary_markdown(summary: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(SUMMARY_HEADER) + " |", "|" + "---|" * len(SUMMARY_HEADER)]
    for row in summary.to_dict("records"):
        lines.append("| " + " | ".join(str(cell) for cell in _summary_cells(row)) + " |")
    return "\n".join(lines) + "\n"


def _summary_cells(row: dict) -> list[str]:
    speaker = "speaker-independent" if row["speaker_independent"] else "speaker-dependent"
    return [
        row["task"],
        row["variant"],
        row["modality"],
        f"{row['protocol']} ({speaker})",
        _short(row["uar"], row["uar_std"]),
        _short(row["accuracy"], row["accuracy_std"]),
        f"{row['chance_uar']:.3f}",
        row["paper"] or "—",
        _difference_cell(row),
    ]


def _short(mean: float, std: float) -> str:
    if not _finite(mean):
        return "—"
    return f"{mean:.3f} ± {std:.3f}" if _finite(std) else f"{mean:.3f} (n=1)"


TABLE_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table.ablation { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
table.ablation th, table.ablation td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
table.ablation th { background: #f0f3f7; }
table.ablation tr.dependent td { color: #8a5a00; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.note { color: #555; font-size: 0.85em; }
"""


def table_html_fragment(table: pd.DataFrame, summary: bool = False) -> str:
    """The table as an HTML ``<table class="ablation">`` (speaker-dependent rows marked)."""
    header = SUMMARY_HEADER if summary else ABLATION_HEADER
    out = ["<table class='ablation'><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in header]
    out.append("</tr>")
    for row in table.to_dict("records"):
        cells = _summary_cells(row) if summary else _row_cells(row)
        kind = "independent" if row["speaker_independent"] else "dependent"
        out.append(f"<tr class='{kind}'>")
        out += [f"<td class='num'>{html.escape(str(cell))}</td>" for cell in cells]
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def table_html(title: str, table: pd.DataFrame, summary: bool = False) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{TABLE_CSS}</style></head><body><h2>{html.escape(title)}</h2>"
        f"{table_html_fragment(table, summary)}"
        "<p class='note'>Outer-test numbers (nested selection: no choice saw the test fold); "
        "speaker-dependent rows in brown.</p></body></html>"
    )


# --- figures --------------------------------------------------------------------------------


def ablation_figure(task_name: str, table: pd.DataFrame) -> plt.Figure:
    """Bars of outer-test UAR and accuracy (mean ± std) per row, chance line, paper marked."""
    swept = table[table["n"] > 0].reset_index(drop=True)
    figure, axes = plt.subplots(1, 2, figsize=(2.5 + 2.0 * max(1, len(swept)), 3.8), sharey=True)
    positions = np.arange(len(swept))
    colours = [
        "#4C78A8" if independent else "#F58518" for independent in swept["speaker_independent"]
    ]
    labels = [f"{v}\n{p}" for v, p in zip(swept["variant"], swept["protocol"], strict=True)]
    for axis, metric in zip(axes, ("uar", "accuracy"), strict=True):
        axis.bar(
            positions,
            swept[metric].fillna(0),
            yerr=swept[f"{metric}_std"].fillna(0),
            capsize=4,
            color=colours,
        )
        if len(swept):
            axis.axhline(
                float(swept["chance_uar"].iloc[0]), color="grey", linestyle="--", label="chance"
            )
        marked = swept[swept["paper_metric"] == metric]
        if len(marked):
            axis.scatter(
                positions[marked.index],
                marked["paper_value"],
                marker="D",
                color="#D62728",
                zorder=3,
                label="paper",
            )
        axis.set_xticks(positions, labels, fontsize=7)
        axis.set_ylim(0, 1)
        axis.set_title(f"test {METRIC_NAMES[metric]}")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="upper right", fontsize=7)
    axes[0].set_ylabel("outer test (blue: speaker-independent)")
    figure.suptitle(f"{task_name}: ablation, outer-test mean ± std over folds x seeds")
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
    axis.set_title(title, fontsize=8)
    for (i, j), value in np.ndenumerate(matrix):
        axis.text(j, i, str(value), ha="center", va="center", fontsize=8)
    figure.tight_layout()
    return figure


def recall_figure(task_name: str, results: list[VariantResult], classes: tuple[str, ...]):
    """Per-class recall of every row (outer test, pooled over folds x seeds)."""
    rows = [r for r in results if r.finals]
    figure, axis = plt.subplots(figsize=(2.0 + 0.9 * len(classes), 3.6))
    width = 0.8 / max(1, len(rows))
    for i, result in enumerate(rows):
        matrix = np.asarray(result.confusion, dtype=float)
        totals = matrix.sum(axis=1)
        recall = np.divide(
            np.diag(matrix), totals, out=np.full(len(totals), np.nan), where=totals > 0
        )
        axis.bar(
            np.arange(len(classes)) + i * width,
            np.nan_to_num(recall),
            width,
            label=f"{result.variant} ({result.protocol})",
        )
    axis.axhline(1.0 / len(classes), color="grey", linestyle="--", label="chance")
    axis.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=30, ha="right")
    axis.set_ylim(0, 1)
    axis.set_ylabel("outer-test recall")
    axis.set_title(f"{task_name}: per-class recall")
    axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    return figure


def optuna_figures(outcome: StudyOutcome) -> dict[str, plt.Figure]:
    """Optuna's optimisation history and parameter importances of one study (matplotlib)."""
    completed = [t for t in outcome.optuna_trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        return {}
    study = optuna.create_study(direction="maximize", study_name=outcome.plan_name)
    study.add_trials(outcome.optuna_trials)
    plots = {"history": optuna.visualization.matplotlib.plot_optimization_history}
    if len(completed) > 1 and study.best_trial.params:
        plots["importance"] = optuna.visualization.matplotlib.plot_param_importances
    figures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" warnings of the matplotlib backend
        for name, plot in plots.items():
            try:
                axis = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances need parameters that varied
            figure = axis.figure if hasattr(axis, "figure") else axis.flat[0].figure
            figure.set_size_inches(6, 3.6)
            figure.tight_layout()
            figures[name] = figure
    return figures


# --- the runs -----------------------------------------------------------------------------


@dataclass
class SweepContext:
    """What every run of one sweep carries: where it came from and what it read."""

    experiment: str
    dataset: str
    sweep_dir: str
    seed: int
    provenance: dict[str, str]
    storage_options: dict[str, str] = field(default_factory=dict)

    def parent_key(self, task: str) -> str:
        return f"{self.sweep_dir}|{task}"

    def summary_key(self) -> str:
        return f"{self.sweep_dir}|summary"


def _row_tags(context: SweepContext, row: VariantResult) -> dict[str, str]:
    return {
        **context.provenance,
        "task": row.task,
        "variant": row.variant,
        "modality": row.modality,
        "protocol": row.protocol,
        "speaker_independent": str(row.protocol in ACTOR_PROTOCOLS).lower(),
        "selection": row.selection,
        "dataset": context.dataset,
        "sweep_dir": context.sweep_dir,
        **({"beside": row.beside} if row.beside else {}),
        **{f"features.{name}": key for name, key in row.cache_keys.items()},
    }


def dataset_input(context: SweepContext, row: VariantResult, role: str) -> DatasetRef:
    """The clips a row swept, as an MLflow dataset: named by task/variant, digested by content."""
    import hashlib

    frame = pd.DataFrame(row.clips, columns=["clip_id", "actor", "label"])
    digest = hashlib.sha256(
        json.dumps([row.clips, sorted(row.cache_keys.items())]).encode()
    ).hexdigest()[:16]
    return DatasetRef(
        name=f"{context.dataset}/{row.beside or row.task}-{row.label}",
        digest=digest,
        source=row.manifest_uri or context.dataset,
        frame=frame,
        context=role,
    )


def study_records(
    context: SweepContext, row: VariantResult, outcome: StudyOutcome, classes: tuple[str, ...]
) -> list[RunRecord]:
    """Nested runs of one outer fold's study: each trial, and each final (retrained) model."""
    parent = context.parent_key(row.beside or row.task)
    tags = {**_row_tags(context, row), "fold": str(outcome.fold), "study": outcome.plan_name}
    records = []
    for trial in outcome.trials:
        record = RunRecord(
            key=f"{context.sweep_dir}|{outcome.plan_name}|trial|{trial.trial_id}",
            name=f"{outcome.plan_name} trial {trial.trial_id}",
            parent=parent,
            tags={
                **tags,
                "kind": "trial",
                "trial_id": trial.trial_id,
                "chosen": str(trial.trial_id == outcome.chosen_trial).lower(),
                **({"error": trial.error[:5000]} if trial.error else {}),
            },
            params={k: str(v) for k, v in sorted(trial.config.items())},
            inputs=[dataset_input(context, row, "trial: inner training + validation")],
            status="FAILED" if trial.error else "FINISHED",
        )
        for i, epoch in enumerate(trial.history):
            step = int(epoch.get("training_iteration", i + 1))
            for key, value in epoch.items():
                if key.startswith(("val_", "train_")):
                    record.metric(key, value, step)
        records.append(record)
    for final in outcome.finals:
        record = RunRecord(
            key=f"{context.sweep_dir}|{outcome.plan_name}|final|{final.seed}",
            name=f"{outcome.plan_name} final seed {final.seed}",
            parent=parent,
            tags={
                **tags,
                "kind": "final",
                "seed": str(final.seed),
                "chosen_trial": outcome.chosen_trial,
            },
            params={k: str(v) for k, v in sorted(outcome.chosen_config.items())},
            inputs=[dataset_input(context, row, "final: outer training + test")],
            texts={
                "confusion.json": json.dumps({"classes": classes, "confusion": final.confusion})
            },
            figures={
                "confusion.png": confusion_figure(
                    f"{outcome.plan_name}, seed {final.seed}: outer test", final.confusion, classes
                )
            },
            status="FINISHED",
        )
        for epoch in final.history:
            for key, value in epoch.items():
                if key != "epoch":
                    record.metric(key, value, int(epoch["epoch"]))
        if not final.history:  # an outcome stored before per-epoch test metrics existed
            for key, value in final.metrics.items():
                record.metric(f"test_{key}", value, final.epochs)
        for key, value in outcome.validation.items():
            if key.startswith("val_"):
                record.metric(f"chosen_{key}", value)
        records.append(record)
    return records


def parent_open_record(
    context: SweepContext, task: str, params: dict[str, str], texts: dict[str, str]
) -> RunRecord:
    """The task sweep's parent run, opened before its studies start (left RUNNING)."""
    return RunRecord(
        key=context.parent_key(task),
        name=f"{task} sweep",
        tags={
            **context.provenance,
            "task": task,
            "kind": "sweep",
            "dataset": context.dataset,
            "sweep_dir": context.sweep_dir,
            "seed": str(context.seed),
        },
        params=params,
        texts=texts,
    )


def parent_close_record(
    context: SweepContext, task: TaskSpec, results: list[VariantResult], table: pd.DataFrame
) -> RunRecord:
    """The parent's table, metrics, figures and best models; the run is finished with it."""
    markdown = table_markdown(table)
    record = RunRecord(
        key=context.parent_key(task.name),
        name=f"{task.name} sweep",
        texts={
            f"ablation/{task.name}.md": markdown,
            f"ablation/{task.name}.html": table_html(f"{task.name} ablation", table),
        },
        tables={f"ablation/{task.name}.json": table},
        figures={
            f"ablation/{task.name}.png": ablation_figure(task.name, table),
            f"ablation/{task.name}-recall.png": recall_figure(
                task.name, [r for r in results if not r.beside], task.classes
            ),
        },
        status="FINISHED",
    )
    for row in table.to_dict("records"):
        for name in (*METRICS, *(f"{m}_std" for m in METRICS), "validation_uar", "difference"):
            record.metric(f"{row['variant']}.{row['protocol']}.{name}", row[name])
    seen_inputs = set()
    for result in results:
        row_name = f"{result.label}-{result.protocol}"
        if result.error:
            record.texts[f"failed/{row_name}.txt"] = result.error + "\n"
        if result.clips and result.label not in seen_inputs:
            seen_inputs.add(result.label)
            record.inputs.append(dataset_input(context, result, f"sweep: {result.label}"))
        for name, key in result.cache_keys.items():
            record.tags[f"features.{name}"] = key
        if not result.finals:
            continue
        record.texts[f"chosen/{row_name}.json"] = json.dumps(
            {o.plan_name: _plain(o.chosen_config) for o in result.outcomes}, indent=1
        )
        record.figures[f"confusion/{row_name}.png"] = confusion_figure(
            f"{task.name} {result.label} ({result.protocol}), outer test, pooled",
            result.confusion,
            TASKS[result.task].classes,
        )
        if result.left_out:
            lines = "\n".join(f"{clip}: {reason}" for clip, reason in result.left_out)
            record.texts[f"left_out/{result.label}.txt"] = lines + "\n"
        for outcome in result.outcomes:
            for name, figure in optuna_figures(outcome).items():
                record.figures[f"optuna/{outcome.plan_name}-{name}.png"] = figure
    return record


def best_model_records(context: SweepContext, results: list[VariantResult]) -> list[RunRecord]:
    """Per variant, the final model of the fold whose chosen trial validated best (first seed),
    logged with MLflow's flavour into that final model's run; chosen on validation, not test."""
    records = []
    by_variant: dict[str, list[VariantResult]] = {}
    for result in results:
        by_variant.setdefault(result.label, []).append(result)
    for variant, rows in by_variant.items():
        rows = sorted(rows, key=lambda r: r.protocol not in ACTOR_PROTOCOLS)
        candidates = [
            (outcome.validation.get("val_uar", -1.0), outcome, final)
            for outcome in rows[0].outcomes
            for final in outcome.finals[:1]
            if final.model_path
        ]
        if not candidates:
            continue
        _, outcome, final = max(candidates, key=lambda item: item[0])
        try:
            exported = read_exported(final.model_path, context.storage_options)
        except (OSError, EOFError, ValueError) as error:
            print(f"orchestrate: best {variant} model not logged: {error}")
            continue
        records.append(
            RunRecord(
                key=f"{context.sweep_dir}|{outcome.plan_name}|final|{final.seed}",
                name=f"{outcome.plan_name} final seed {final.seed}",
                tags={"best_model": "true", "model_description": exported.description},
                models=[
                    ModelRef(
                        "model",
                        exported.flavour,
                        exported.model,
                        exported.inputs,
                        exported.description,
                    )
                ],
                status="FINISHED",
            )
        )
    return records


def summary_record(context: SweepContext, tables: dict[str, pd.DataFrame]) -> RunRecord:
    """A run holding the cross-paper summary table of the sweep."""
    summary = summary_table(tables)
    record = RunRecord(
        key=context.summary_key(),
        name="summary: every paper",
        tags={
            **context.provenance,
            "kind": "summary",
            "dataset": context.dataset,
            "sweep_dir": context.sweep_dir,
        },
        texts={
            "ablation/summary.md": summary_markdown(summary),
            "ablation/summary.html": table_html("every paper", summary, summary=True),
        },
        tables={"ablation/summary.json": summary},
        status="FINISHED",
    )
    for row in summary.to_dict("records"):
        record.metric(f"{row['task']}.{row['variant']}.{row['protocol']}.uar", row["uar"])
    return record


def close_figures(records: list[RunRecord]) -> None:
    for record in records:
        for figure in record.figures.values():
            plt.close(figure)
