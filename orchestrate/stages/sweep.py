"""Stage 2, sweep: Ray Tune + OptunaSearch (and ASHA for epoch-trained models) per task variant.

Each trial reads its features from the store (never media), trains one model per fold in
lockstep, and reports the fold-mean metrics after every epoch, so ASHA can stop weak
configurations early. The Tune shape is Ray's own example's:
``ConcurrencyLimiter(OptunaSearch(...))`` + ``AsyncHyperBandScheduler``. Every trial is a
nested MLflow run under the sweep's parent run (``MLflowLoggerCallback``); all MLflow
writes happen on the driver, so workers need no access to the tracking server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import optuna
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.schedulers import AsyncHyperBandScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from orchestrate.config import RunConfig
from orchestrate.features import FeatureSource, feature_source
from orchestrate.protocols import Fold, make_folds
from orchestrate.search_spaces import SearchSpace, load_search_space
from tasks import TASKS
from tasks.common import FeatureSet, Metrics, evaluate

METRICS = ("accuracy", "uar", "macro_f1")


class VariantFailed(RuntimeError):
    """Every trial of a variant failed; the message is the first trial's one-line reason."""


@dataclass
class EpochResult:
    epoch: int
    fold_metrics: list[Metrics]
    train_loss: float

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {"epoch": self.epoch, "train_loss": self.train_loss}
        for name in METRICS:
            values = [m.as_dict()[name] for m in self.fold_metrics]
            out[name] = float(np.mean(values))
            out[f"{name}_std"] = float(np.std(values))
        return out


def cross_validate(
    task: ModuleType,
    config: dict[str, Any],
    variant: str,
    features: FeatureSet,
    folds: list[Fold],
    seed: int,
) -> Iterator[EpochResult]:
    """Train one model per fold, an epoch at a time; yield the test-fold metrics each epoch."""
    splits = [(features.subset(train), features.subset(test)) for train, test in folds]
    trainers = [task.make_trainer(config, variant, train, seed) for train, _ in splits]
    n_classes = len(task.CLASSES)
    for epoch in range(1, int(config["epochs"]) + 1):
        losses = [trainer.fit_epoch().get("train_loss", float("nan")) for trainer in trainers]
        fold_metrics = [
            evaluate(test.labels, trainer.predict_proba(test), n_classes)
            for trainer, (_, test) in zip(trainers, splits, strict=True)
        ]
        yield EpochResult(
            epoch, fold_metrics, float(np.nanmean(losses)) if losses else float("nan")
        )


def train_trial(
    config: dict[str, Any],
    task_name: str,
    variant: str,
    source: FeatureSource,
    folds: list[Fold],
    seed: int,
) -> None:
    """One Tune trial: read features from the store, cross-validate, report every epoch."""
    task = TASKS[task_name]
    features, _ = source.load()
    results = cross_validate(task, config, variant, features, folds, seed)
    for result in results:
        report = result.summary()
        if result.epoch == int(config["epochs"]):
            report["confusion"] = json.dumps(sum(m.confusion for m in result.fold_metrics).tolist())
            report["fold_metrics"] = json.dumps([m.as_dict() for m in result.fold_metrics])
        tune.report(report)


@dataclass
class VariantResult:
    """The outcome of sweeping one task variant: the best configuration and its folds."""

    task: str
    variant: str
    protocol: str
    best_config: dict[str, Any]
    fold_metrics: list[dict[str, float]]
    confusion: list[list[int]]
    trials: int
    study: optuna.Study | None = None
    trial_runs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (trial id, result)
    left_out: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None  # set when the variant could not be swept

    def mean_std(self, metric: str) -> tuple[float, float]:
        values = [fold[metric] for fold in self.fold_metrics]
        if not values:
            return float("nan"), float("nan")
        return float(np.mean(values)), float(np.std(values))


def task_config(
    config: RunConfig, task: ModuleType, variant: str, overrides: dict[str, Any]
) -> dict[str, Any]:
    """DEFAULTS, the variant's own defaults, the run's overrides; epochs capped for quick runs."""
    variant_defaults = getattr(task, "VARIANT_DEFAULTS", {}).get(variant, {})
    merged = {**task.DEFAULTS, **variant_defaults, **overrides}
    if config.sweep.max_epochs is not None:
        merged["epochs"] = min(int(merged["epochs"]), config.sweep.max_epochs)
    return merged


def protocol_for(config: RunConfig, task: ModuleType) -> str:
    return task.PAPER_PROTOCOL if config.sweep.protocol == "paper" else config.sweep.protocol


def sweep_variant(
    config: RunConfig,
    task_name: str,
    variant: str,
    overrides: dict[str, Any],
    parent_run_id: str,
    progress: bool = True,
) -> VariantResult:
    """Sweep one task variant with Tune + Optuna; every trial a nested MLflow run."""
    task = TASKS[task_name]
    space: SearchSpace = load_search_space(task_name)
    base = task_config(config, task, variant, overrides)
    source = feature_source(config, task, variant)
    features, left_out = source.load()
    if len(features) == 0:
        raise ValueError(f"{task_name}/{variant}: no clip has the features it needs in the store")
    protocol = protocol_for(config, task)
    folds = make_folds(protocol, features.actors, features.labels, config.sweep.folds, config.seed)

    # Knobs the run fixed by hand are not searched; the rest of DEFAULTS rides along fixed.
    searched = {name: dist for name, dist in space.distributions().items() if name not in overrides}
    param_space = {**base, **searched}
    storage = optuna.storages.InMemoryStorage()
    study_name = f"{task_name}-{variant}"
    searcher = OptunaSearch(
        metric=space.metric,
        mode=space.mode,
        seed=config.seed,
        storage=storage,
        study_name=study_name,
    )
    epochs = int(base["epochs"])
    scheduler = (
        AsyncHyperBandScheduler(
            time_attr="training_iteration",
            metric=space.metric,
            mode=space.mode,
            max_t=epochs,
            grace_period=max(1, epochs // 4),
        )
        if epochs > 1
        else None
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            train_trial,
            task_name=task_name,
            variant=variant,
            source=source,
            folds=folds,
            seed=config.seed,
        ),
        {"cpu": config.sweep.cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=config.sweep.max_concurrent),
            scheduler=scheduler,
            num_samples=config.sweep.num_samples,
        ),
        run_config=tune.RunConfig(
            name=f"{task_name}-{variant}",
            storage_path=str(Path(config.workspace_path, "ray_results")),
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=config.tracking_uri,
                    experiment_name=config.tracking.experiment,
                    tags={
                        "mlflow.parentRunId": parent_run_id,
                        "task": task_name,
                        "variant": variant,
                        "protocol": protocol,
                    },
                )
            ],
            verbose=1 if progress else 0,
        ),
    )
    grid = tuner.fit()
    finished = [r for r in grid if r.error is None and r.metrics and space.metric in r.metrics]
    if not finished:
        errors = [str(r.error).strip().splitlines()[-1] for r in grid if r.error is not None]
        raise VariantFailed(errors[0] if errors else "no trial reported a result")
    sign = 1 if space.mode == "max" else -1
    best = max(finished, key=lambda r: sign * r.metrics[space.metric])
    best_config = best.config
    if "fold_metrics" in best.metrics:
        fold_metrics = json.loads(best.metrics["fold_metrics"])
        confusion = json.loads(best.metrics["confusion"])
    else:
        # ASHA stopped the best trial before its last epoch: train its config to the end.
        fold_metrics, confusion = _final_folds(
            task, best_config, variant, features, folds, config.seed
        )
    for seed in config.sweep.seeds:
        if seed == config.seed:
            continue
        extra, extra_confusion = _final_folds(task, best_config, variant, features, folds, seed)
        fold_metrics += extra
        confusion = (np.asarray(confusion) + np.asarray(extra_confusion)).tolist()
    trial_runs = [
        (result.metrics.get("trial_id", ""), dict(result.metrics))
        for result in grid
        if result.metrics
    ]
    return VariantResult(
        task=task_name,
        variant=variant,
        protocol=protocol,
        best_config=best_config,
        fold_metrics=fold_metrics,
        confusion=confusion,
        trials=len(grid),
        study=optuna.load_study(study_name=study_name, storage=storage),
        trial_runs=trial_runs,
        left_out=left_out,
    )


def _final_folds(
    task: ModuleType,
    config: dict[str, Any],
    variant: str,
    features: FeatureSet,
    folds: list[Fold],
    seed: int,
) -> tuple[list[dict[str, float]], list[list[int]]]:
    *_, last = cross_validate(task, config, variant, features, folds, seed)
    return [m.as_dict() for m in last.fold_metrics], sum(
        m.confusion for m in last.fold_metrics
    ).tolist()
