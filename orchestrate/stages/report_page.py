"""What ``orchestrate report`` and ``orchestrate compare`` read back from MLflow.

``write_report`` builds one self-contained HTML file (tables, every figure inlined as PNG, the
run configuration, provenance, and what is still waiting in the tracking spool) from the
newest sweep of an experiment: it opens in a browser with no server and no network.
``compare_runs`` lays two runs' parameters, metrics and tags side by side.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from orchestrate.errors import InputError
from orchestrate.stages.report import (
    TABLE_CSS,
    summary_markdown,
    summary_table,
    table_html_fragment,
    table_markdown,
)
from orchestrate.tracking import Tracker

NUMERIC_COLUMNS = {"accuracy", "uar", "macro_f1", "validation_uar", "chance_uar", "paper_value",
                   "difference", "n", "folds", "seeds", "trials"}  # fmt: skip
# Provenance tags shown in the report, in this order (then every version.* tag).
PROVENANCE_TAGS = ("git.commit", "git.dirty", "ray.job_id", "ray.submission_id", "dataset")


@dataclass
class SweepReport:
    """The newest sweep of an experiment, as read from MLflow."""

    experiment: str
    sweep_dir: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    parents: dict[str, object] = field(default_factory=dict)  # task -> mlflow Run
    images: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)  # task -> PNGs
    config: str = ""
    missing: list[str] = field(default_factory=list)  # runs still in the spool

    @property
    def summary(self) -> pd.DataFrame:
        return summary_table(self.tables)

    def markdown(self) -> str:
        parts = [f"# {self.experiment}: sweep {self.sweep_dir}\n"]
        for task, table in self.tables.items():
            parts.append(f"\n## {task}\n\n{table_markdown(table)}")
        if self.tables:
            parts.append(f"\n## every paper\n\n{summary_markdown(self.summary)}")
        return "".join(parts)


def read_sweep(tracking: Tracker, sweep_dir: str | None = None) -> SweepReport:
    """The parent runs, tables and figures of ``sweep_dir`` (default: the newest sweep)."""
    client = tracking.client
    experiment_id = tracking.experiment_id()
    parents = client.search_runs(
        [experiment_id],
        filter_string="tags.kind = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=500,
    )
    if not parents:
        raise InputError(
            f"experiment {tracking.experiment!r} at {tracking.uri} has no sweep runs yet"
            + (
                f" ({len(tracking.pending())} runs wait in {tracking.spool})"
                if tracking.pending()
                else ""
            )
        )
    sweep_dir = sweep_dir or parents[0].data.tags.get("sweep_dir", "")
    report = SweepReport(tracking.experiment, sweep_dir, missing=tracking.pending_names())
    chosen = [run for run in parents if run.data.tags.get("sweep_dir") == sweep_dir]
    with tempfile.TemporaryDirectory() as scratch:
        for run in sorted(chosen, key=lambda r: r.data.tags.get("task", "")):
            task = run.data.tags.get("task", run.info.run_name)
            report.parents[task] = run
            artifacts = _artifacts(client, run.info.run_id)
            table_file = f"ablation/{task}.json"
            if table_file in artifacts:
                local = client.download_artifacts(run.info.run_id, table_file, scratch)
                report.tables[task] = _read_logged_table(Path(local))
            if not report.config and "config.yaml" in artifacts:
                report.config = Path(
                    client.download_artifacts(run.info.run_id, "config.yaml", scratch)
                ).read_text()
            # The ablation chart first, then the recall chart, confusion matrices, Optuna plots.
            ordered = sorted(
                (path for path in artifacts if path.endswith(".png")),
                key=lambda p: (p != f"ablation/{task}.png", not p.startswith("ablation/"), p),
            )
            report.images[task] = [
                (path, Path(client.download_artifacts(run.info.run_id, path, scratch)).read_bytes())
                for path in ordered
            ]
    return report


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for info in client.list_artifacts(run_id, path):
        found.extend(_artifacts(client, run_id, info.path) if info.is_dir else [info.path])
    return found


def _read_logged_table(path: Path) -> pd.DataFrame:
    """A table ``MlflowClient.log_table`` wrote (``{"columns": [...], "data": [...]}``)."""
    data = json.loads(path.read_text())
    table = pd.DataFrame(data["data"], columns=data["columns"])
    for column in table.columns:  # NaN was written as null: numbers again, NaN where missing
        if column in NUMERIC_COLUMNS or column.endswith(("_std", "_ci95_low", "_ci95_high")):
            table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def report_html(report: SweepReport) -> str:
    """One HTML page with everything inlined: no server, no network needed to read it."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>orchestrate report: {html.escape(report.experiment)}</title>",
        f"<style>{TABLE_CSS} img {{ max-width: 100%; border: 1px solid #eee; margin: 4px; }}"
        " details { margin: 0.5em 0; } pre { background: #f7f7f7; padding: 1em; "
        "overflow-x: auto; }</style></head><body>",
        f"<h1>{html.escape(report.experiment)}</h1>",
        f"<p class='note'>Sweep {html.escape(report.sweep_dir)}. Every number is an "
        "outer-test number of nested selection: the test folds never steered Optuna, ASHA, "
        "an epoch count or a learning rate. Mean ± sample std [95% t-interval] over outer "
        "folds x seeds; speaker-dependent rows are in brown and never shown alone.</p>",
    ]
    if report.missing:
        out.append(
            f"<p style='color:#b00'><b>{len(report.missing)} runs are not in MLflow yet</b> "
            "(the tracking server failed while they were logged); they wait in the spool: "
            "run <code>orchestrate report --sync</code>. Missing: "
            + html.escape(", ".join(report.missing[:20]))
            + (" …" if len(report.missing) > 20 else "")
            + "</p>"
        )
    if report.tables:
        out.append("<h2>Every paper</h2>")
        out.append(table_html_fragment(report.summary, summary=True))
    for task, run in report.parents.items():
        out.append(f"<h2 id='{html.escape(task)}'>{html.escape(task)}</h2>")
        out.append(
            f"<p class='note'>MLflow parent run {html.escape(run.info.run_id)} "
            f"({html.escape(run.info.status)})</p>"
        )
        if task in report.tables:
            out.append(table_html_fragment(report.tables[task]))
        else:
            out.append("<p>No ablation table logged for this task (yet).</p>")
        images = report.images.get(task, [])
        main = [(p, b) for p, b in images if p.startswith("ablation/")]
        rest = [(p, b) for p, b in images if not p.startswith("ablation/")]
        out.extend(_img(path, data) for path, data in main)
        for group in ("confusion", "optuna"):
            members = [(p, b) for p, b in rest if p.startswith(f"{group}/")]
            if members:
                out.append(f"<details><summary>{group} ({len(members)} plots)</summary>")
                out.extend(_img(path, data) for path, data in members)
                out.append("</details>")
        out.append("<details><summary>provenance</summary><table class='ablation'>")
        tags = run.data.tags
        keys = [k for k in PROVENANCE_TAGS if k in tags]
        keys += sorted(k for k in tags if k.startswith(("version.", "extractor.", "features.")))
        out.extend(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(tags[k])}</td></tr>" for k in keys
        )
        out.append("</table></details>")
    if report.config:
        out.append("<h2>Configuration</h2><pre>" + html.escape(report.config) + "</pre>")
    out.append("</body></html>")
    return "".join(out)


def _img(path: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode()
    return (
        f"<figure style='display:inline-block'><img alt='{html.escape(path)}' "
        f"src='data:image/png;base64,{encoded}'><figcaption class='note'>"
        f"{html.escape(path)}</figcaption></figure>"
    )


def write_report(tracking: Tracker, out: Path, sweep_dir: str | None = None) -> SweepReport:
    """Read the sweep back from MLflow and write its HTML report to ``out``."""
    report = read_sweep(tracking, sweep_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_html(report))
    return report


def compare_runs(tracking: Tracker, first: str, second: str) -> str:
    """Two runs' parameters, latest metrics and tags side by side; differences marked ``*``."""
    client = tracking.client
    runs = [client.get_run(run_id) for run_id in (first, second)]
    lines = [f"{'':2}{'':34} {first[:24]:>24}  {second[:24]:>24}"]
    for title, getter in (
        ("run name", lambda r: {"name": r.info.run_name or ""}),
        ("params", lambda r: r.data.params),
        ("metrics", lambda r: {k: f"{v:.4f}" for k, v in r.data.metrics.items()}),
        (
            "tags",
            lambda r: {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")},
        ),
    ):
        values = [getter(run) for run in runs]
        keys = sorted(set(values[0]) | set(values[1]))
        if not keys:
            continue
        lines.append(f"\n{title}:")
        for key in keys:
            a, b = (str(v.get(key, "—")) for v in values)
            mark = "*" if a != b else " "
            lines.append(f"{mark} {key[:34]:34} {a[:24]:>24}  {b[:24]:>24}")
    return "\n".join(lines)
