"""Tracking without a server: the spool's bookkeeping, the check before work, ``compare``.

Everything here runs against MLflow's SQLite store in a temp dir (or a port nothing listens
on); the real-server tests, outage included, are in ``test_tracking_server.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray_head import free_port

from orchestrate.cli import main
from orchestrate.stages.report_page import compare_runs
from orchestrate.tracking import EXPERIMENT_KIND, RunRecord, Tracker, TrackingUnavailable


def sqlite_tracker(tmp_path: Path) -> Tracker:
    return Tracker(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking-test",
        tmp_path / "spool",
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )


def test_the_experiment_opens_on_training_runs(tmp_path: Path) -> None:
    tracking = sqlite_tracker(tmp_path)
    tracking.check()
    experiment = tracking.client.get_experiment_by_name("tracking-test")
    assert experiment.tags["mlflow.experimentKind"] == EXPERIMENT_KIND == "custom_model_development"


def test_an_unreachable_server_stops_a_run_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    workspace = tmp_path / "ws"
    status = main(["run", "--workspace", str(workspace), "--tracking-uri", uri,
                   f"dataset.root={tmp_path / 'corpus'}"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and uri in err and "cannot be reached" in err, err
    assert not (workspace / "store").exists()  # ingest never started


def test_a_record_sent_half_way_resumes_where_it_stopped(tmp_path: Path) -> None:
    """A failure after some steps leaves the record spooled; the retry sends only the rest:
    one run, each metric once, every artifact."""
    tracking = sqlite_tracker(tmp_path)
    tracking.log(RunRecord(key="sweep|parent", name="parent", tags={"kind": "sweep"}))
    child = RunRecord(
        key="sweep|child",
        name="child",
        parent="sweep|parent",
        tags={"kind": "trial", "modality": "audio"},
        params={"lr": "0.01"},
        texts={"notes/a.txt": "first", "notes/b.txt": "second"},
        status="FINISHED",
    )
    for step in range(3):
        child.metric("val_uar", 0.1 * step, step)
    real_log_text = tracking.client.log_text
    calls = []

    def failing_second_text(run_id: str, text: str, path: str) -> None:
        calls.append(path)
        if path == "notes/b.txt" and calls.count(path) == 1:
            raise ConnectionError("server went away")
        real_log_text(run_id, text, path)

    tracking.client.log_text = failing_second_text  # type: ignore[method-assign]
    tracking.log(child)
    assert tracking.pending_names() == ["child"]  # kept, with its first steps marked done
    assert tracking.flush() == 0
    assert calls == ["notes/a.txt", "notes/b.txt", "notes/b.txt"]  # a.txt was not sent again

    client = MlflowClient(tracking.uri)
    experiment = client.get_experiment_by_name("tracking-test").experiment_id
    runs = {run.info.run_name: run for run in client.search_runs([experiment])}
    assert set(runs) == {"parent", "child"}
    run = runs["child"]
    assert run.data.tags["mlflow.parentRunId"] == runs["parent"].info.run_id
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.01"}
    history = client.get_metric_history(run.info.run_id, "val_uar")
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 0.0), (1, 0.1), (2, 0.2)]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "notes")} == {
        "notes/a.txt",
        "notes/b.txt",
    }
    assert runs["parent"].info.status == "RUNNING"  # opened, not closed by the child

    # An update of a known run (the parent's close) adds to it instead of creating another.
    close = RunRecord(key="sweep|parent", name="parent", status="FINISHED")
    close.metric("audio.actor-kfold.uar", 0.4)
    tracking.log(close)
    parent = client.get_run(runs["parent"].info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["audio.actor-kfold.uar"] == 0.4
    assert len(client.search_runs([experiment])) == 2


def test_a_dead_server_keeps_every_record_until_it_answers(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    tracking = Tracker(uri, "tracking-test", tmp_path / "spool")
    with pytest.raises(TrackingUnavailable, match="cannot be reached"):
        tracking.check()
    tracking._experiment_id = "0"  # as if the server had answered once, then gone down
    for name in ("a", "b"):
        tracking.log(RunRecord(key=name, name=name, status="FINISHED"))
    assert tracking.pending_names() == ["a", "b"]
    assert tracking.last_error  # what the server said, for the end-of-sweep line
    saved = json.loads((tracking.pending()[0] / "record.json").read_text())
    assert saved["key"] == "a" and saved["done"] == []


def test_compare_marks_what_differs(tmp_path: Path) -> None:
    tracking = sqlite_tracker(tmp_path)
    for name, lr in (("one", "0.01"), ("two", "0.001")):
        record = RunRecord(key=name, name=name, params={"lr": lr, "epochs": "4"},
                           tags={"variant": "audio"}, status="FINISHED")  # fmt: skip
        record.metric("test_uar", 0.5)
        tracking.log(record)
    first, second = (tracking.run_id(key) for key in ("one", "two"))
    table = compare_runs(tracking, first, second)
    lines = {line[2:].split()[0]: line for line in table.splitlines() if line[2:].strip()}
    assert lines["lr"].startswith("*") and "0.01" in lines["lr"] and "0.001" in lines["lr"]
    assert lines["epochs"].startswith(" ") and lines["test_uar"].startswith(" ")


def test_a_report_reads_back_a_table_with_a_row_that_was_not_swept(tmp_path: Path) -> None:
    """NaN cells come back from log_table's JSON as null; the report still renders them."""
    from orchestrate.stages.report import ablation_table
    from orchestrate.stages.report_page import read_sweep, report_html
    from orchestrate.stages.sweep import VariantResult
    from tasks import emodal

    row = VariantResult("emodal", "audio", "actor-kfold", "nested", False, 4, error="no clips")
    table = ablation_table(emodal.SPEC, [row])
    tracking = sqlite_tracker(tmp_path)
    tracking.log(RunRecord(key="s|emodal", name="emodal sweep",
                           tags={"kind": "sweep", "task": "emodal", "sweep_dir": "s"},
                           tables={"ablation/emodal.json": table}, status="FINISHED"))  # fmt: skip
    report = read_sweep(tracking)
    assert report.tables["emodal"]["uar"].isna().all()
    page = report_html(report)
    assert "not swept: no clips" in page and "<table class='ablation'>" in page
