"""What runs inside a trial or a final-model task: training on clip-id splits, nothing else.

Kept apart from ``orchestrate.stages.sweep`` so that every trial process imports only what
training needs (Tune's reporting API, the task modules), not Optuna, MLflow or SciPy: each
trial process pays its imports once, and on small machines they are most of its cost.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune

from tasks import TASKS
from tasks.common import FeatureSet, Metrics, TaskSpec, evaluate

METRICS = ("accuracy", "uar", "macro_f1")
# Fault injection for the resume tests: the first trial to finish epoch 2 while this names
# a file that does not exist yet creates it and raises once.
FAIL_ONCE_ENV = "ORCHESTRATE_FAIL_TRIAL_ONCE"

ClipIds = tuple[str, ...]


@dataclass
class FinalModel:
    """The chosen configuration retrained on the outer training split, tested once."""

    fold: int
    seed: int
    metrics: dict[str, float]
    confusion: list[list[int]]
    epochs: int
    train_seconds: float
    # Per epoch: training loss and the test metrics (logged, never used to choose anything).
    history: list[dict[str, float]] = field(default_factory=list)
    model_path: str = ""  # the exported model (first seed only), beside the study's results


# --- a trial: train on the inner split, report validation only ----------------------------


def train_on_splits(
    task: TaskSpec,
    config: dict[str, Any],
    variant: str,
    features: FeatureSet,
    splits: list[tuple[ClipIds, ClipIds]],
    seed: int,
    on_epoch: Callable[[int, list[Any], dict[str, float]], None],
    trainers: list[Any] | None = None,
    start_epoch: int = 0,
) -> list[Any]:
    """Train one model per (train, evaluation) split in lockstep; call ``on_epoch`` each epoch.

    ``on_epoch(epoch, trainers, summary)`` gets the mean training loss, the mean
    evaluation-split metrics and the seconds spent training and evaluating this epoch.
    """
    pairs = [(features.by_ids(train), features.by_ids(held)) for train, held in splits]
    knobs = task.knobs.of(config)
    if trainers is None:
        trainers = [task.make_trainer(knobs, variant, train, seed) for train, _ in pairs]
    n_classes = len(task.classes)
    for epoch in range(start_epoch + 1, knobs.epochs + 1):
        started = time.perf_counter()
        losses = [trainer.fit_epoch().get("train_loss", math.nan) for trainer in trainers]
        metrics = [
            evaluate(held.labels, trainer.predict_proba(held), n_classes)
            for trainer, (_, held) in zip(trainers, pairs, strict=True)
        ]
        summary = {
            "epoch": float(epoch),
            "train_loss": float(np.nanmean(losses)) if losses else math.nan,
            "train_seconds": time.perf_counter() - started,
            **{name: float(np.mean([m.as_dict()[name] for m in metrics])) for name in METRICS},
        }
        on_epoch(epoch, trainers, summary)
    return trainers


def train_trial(
    config: dict[str, Any],
    task_name: str,
    variant: str,
    features: list[ray.ObjectRef],
    splits: list[tuple[ClipIds, ClipIds]],
    seed: int,
) -> None:
    """One Tune trial: inner-train, report validation metrics and a checkpoint every epoch.

    A retried trial (``FailureConfig``) resumes from its last checkpoint: the trainers are
    restored as they were after that epoch.
    """
    task = TASKS[task_name]
    clips = ray.get(features[0])
    trainers, start_epoch = None, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainers = pickle.loads(Path(directory, "trainers.pkl").read_bytes())
            start_epoch = json.loads(Path(directory, "state.json").read_text())["epoch"]

    def report(epoch: int, trained: list[Any], summary: dict[str, float]) -> None:
        metrics = {f"val_{name}": summary[name] for name in METRICS}
        metrics.update(
            train_loss=summary["train_loss"],
            train_seconds=summary["train_seconds"],
            resumed_from_epoch=float(start_epoch),
        )
        with tempfile.TemporaryDirectory() as directory:
            Path(directory, "trainers.pkl").write_bytes(pickle.dumps(trained))
            Path(directory, "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        _maybe_fail_once(epoch)

    train_on_splits(task, config, variant, clips, splits, seed, report, trainers, start_epoch)


def _maybe_fail_once(epoch: int) -> None:
    marker = os.environ.get(FAIL_ONCE_ENV)
    if not marker or epoch != 2:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    raise RuntimeError(f"injected trial failure after epoch {epoch} ({FAIL_ONCE_ENV})")


# --- final models: the chosen configuration, retrained, tested once ------------------------


def retrain_and_test(
    task_name: str,
    variant: str,
    config: dict[str, Any],
    features: list[ray.ObjectRef] | FeatureSet,
    train_ids: ClipIds,
    test_ids: ClipIds,
    fold: int,
    seed: int,
    export_to: str = "",
    storage_options: dict[str, str] | None = None,
) -> FinalModel:
    """Train ``config`` on the whole outer training split; score it once on the test fold.

    The test metrics of every epoch are recorded for the final model's MLflow run; only the
    last epoch's (``config["epochs"]``, fixed by the study) are the result. With
    ``export_to`` (a path or ``s3://`` URI) the trained model is pickled there as the
    trainer's ``export`` of a few test clips.
    """
    task = TASKS[task_name]
    clips = features if isinstance(features, FeatureSet) else ray.get(features[0])
    train, test = clips.by_ids(train_ids), clips.by_ids(test_ids)
    started = time.perf_counter()
    knobs = task.knobs.of(config)
    trainer = task.make_trainer(knobs, variant, train, seed)
    n_classes = len(task.classes)
    history = []
    for epoch in range(1, knobs.epochs + 1):
        fitted = trainer.fit_epoch()
        final: Metrics = evaluate(test.labels, trainer.predict_proba(test), n_classes)
        history.append(
            {
                "epoch": float(epoch),
                "train_loss": float(fitted.get("train_loss", math.nan)),
                **{f"test_{name}": value for name, value in final.as_dict().items()},
            }
        )
    seconds = time.perf_counter() - started
    model_path = ""
    if export_to:
        exported = trainer.export(test.subset(range(min(8, len(test)))))
        if exported is not None:
            model_path = _write_bytes(export_to, pickle.dumps(exported), storage_options or {})
    return FinalModel(
        fold=fold,
        seed=seed,
        metrics=final.as_dict(),
        confusion=final.confusion.tolist(),
        epochs=knobs.epochs,
        train_seconds=seconds,
        history=history,
        model_path=model_path,
    )


def _write_bytes(uri: str, data: bytes, storage_options: dict[str, str]) -> str:
    from orchestrate.datasets.filesystem import resolve_filesystem

    fs, path = resolve_filesystem(uri, storage_options)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(data)
    return uri


def read_exported(uri: str, storage_options: dict[str, str]) -> Any:
    """The ``ExportedModel`` that ``retrain_and_test`` wrote to ``uri``."""
    from orchestrate.datasets.filesystem import resolve_filesystem

    fs, path = resolve_filesystem(uri, storage_options)
    with fs.open_input_stream(path) as stream:
        return pickle.loads(stream.read())
