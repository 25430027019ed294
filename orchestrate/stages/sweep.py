"""Stage 2, sweep: nested, actor-disjoint selection with Ray Tune + OptunaSearch (+ ASHA).

For every task variant and protocol the clips are split into outer folds, and each outer
fold gets a study of its own: a Tuner in Ray's documented shape
(``ConcurrencyLimiter(OptunaSearch(...))`` + ``AsyncHyperBandScheduler``, metric and mode
set once in ``TuneConfig``) whose trials train on the fold's inner training clips and are
scored on its validation clips only (``orchestrate.protocols.validation_splits``). Optuna's
objective and ASHA's stopping never see the outer test clips. The best trial
(``ResultGrid.get_best_result(scope="last")``) fixes the configuration, its epoch count
included; that configuration is retrained on the whole outer training split, once per seed,
as Ray tasks, and scored once on the outer test fold: the table's numbers.

``selection: holdout`` runs the first outer fold only: one study whose validation actors and
test actors are disjoint groups, for budgets where a study per fold is too dear.

Every study runs in its own Ray task (trainables named per study, as Tune's registry
requires for concurrent Tuners), so a task's variants, protocols and outer folds search at
once, bounded by the cluster's CPUs. Trials checkpoint every epoch; a failed trial is
retried from its last checkpoint (``FailureConfig``); each study's Optuna trials live in a
JournalStorage file beside Tune's results, and ``resume=True`` restores an interrupted study
with ``Tuner.restore`` and skips the studies that finished. A variant's features are read
from the store once per sweep and shared through Ray's object store; trials get their
splits as clip ids.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow.fs
import ray
from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrate.config import RunConfig
from orchestrate.console import progress_bar, route_logs, routed_log, say
from orchestrate.datasets.filesystem import resolve_filesystem
from orchestrate.errors import InputError
from orchestrate.features import feature_source, variant_modalities
from orchestrate.protocols import make_folds, validation_splits
from orchestrate.search_spaces import SearchSpace, load_search_space
from orchestrate.stages.trials import (
    ClipIds,
    FinalModel,
    retrain_and_test,
    train_trial,
)
from tasks import TASKS
from tasks.common import FeatureSet, TaskSpec


class VariantFailed(RuntimeError):
    """Every trial of a study failed; the message is the first trial's one-line reason."""


# --- what the stages exchange ------------------------------------------------------------


@dataclass(frozen=True)
class StudyPlan:
    """One outer fold's search: everything its Ray task needs, picklable."""

    task: str
    variant: str
    protocol: str
    fold: int
    train_ids: ClipIds
    test_ids: ClipIds
    validation: tuple[tuple[ClipIds, ClipIds], ...]  # inner (train, validation) clip ids
    base_config: dict[str, Any]
    searched: dict[str, dict[str, Any]]  # search-space entries (search_spaces/<task>.yaml)
    metric: str  # the validation metric Optuna and ASHA steer by, e.g. "val_uar"
    mode: str
    num_samples: int
    max_concurrent: int
    max_failures: int
    resources: dict[str, float]
    seed: int
    sweep_dir: str  # local path or s3://bucket/prefix; the study's results go in <name>/
    storage_options: dict[str, str] = field(default_factory=dict)
    beside: str = ""  # the paper whose table this (baseline) study's row sits in

    @property
    def name(self) -> str:
        prefix = f"{self.beside}-" if self.beside else ""
        return f"{prefix}{self.task}-{self.variant}-{self.protocol}-fold{self.fold}"

    @property
    def epochs(self) -> int:
        return int(self.base_config["epochs"])


@dataclass
class TrialRecord:
    """One trial of a study: its configuration and its validation history, epoch by epoch."""

    trial_id: str
    config: dict[str, Any]
    history: list[dict[str, float]]
    error: str | None = None


@dataclass
class StudyOutcome:
    """What one outer fold's study chose, and how its final models did on the test fold."""

    plan_name: str
    fold: int
    trials: list[TrialRecord]
    chosen_trial: str
    chosen_config: dict[str, Any]
    validation: dict[str, float]  # the chosen trial's last validation metrics
    finals: list[FinalModel] = field(default_factory=list)
    optuna_trials: list[optuna.trial.FrozenTrial] = field(default_factory=list, repr=False)
    search_seconds: float = 0.0
    train_seconds: float = 0.0  # summed over the study's trials: time inside training

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("optuna_trials")
        return json.dumps(data, default=str)

    @classmethod
    def from_json(cls, text: str) -> StudyOutcome:
        data = json.loads(text)
        data["trials"] = [TrialRecord(**t) for t in data["trials"]]
        data["finals"] = [FinalModel(**f) for f in data["finals"]]
        return cls(**data)


@dataclass
class VariantResult:
    """One ablation row: a task variant under one protocol, over outer folds x seeds."""

    task: str
    variant: str
    protocol: str
    selection: str
    is_paper_protocol: bool
    n_classes: int
    outcomes: list[StudyOutcome] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None  # set when the row could not be swept
    modality: str = ""  # "audio", "video" or "fused": what the variant's columns come from
    # Provenance for tracking: feature cache keys (column -> store directory), the clips
    # swept (clip_id, actor, label) and the manifest they are listed in.
    cache_keys: dict[str, str] = field(default_factory=dict)
    clips: list[tuple[str, str, str]] = field(default_factory=list, repr=False)
    manifest_uri: str = ""
    note: str = ""  # e.g. which network of the row's features ran on random weights
    # The paper whose ablation table this row sits in, when it is the baseline beside it.
    beside: str = ""

    @property
    def label(self) -> str:
        """The row's name in its table: ``audio``, or ``baseline-audio`` beside a paper."""
        return f"{self.task}-{self.variant}" if self.beside else self.variant

    @property
    def finals(self) -> list[FinalModel]:
        return [final for outcome in self.outcomes for final in outcome.finals]

    def test_values(self, metric: str) -> list[float]:
        return [final.metrics[metric] for final in self.finals]

    def summary(self, metric: str) -> tuple[float, float, float, float]:
        """Mean, standard deviation and a 95% t-interval of the outer-test ``metric``."""
        return mean_std_interval(self.test_values(metric))

    @property
    def validation_uar(self) -> float:
        values = [o.validation["val_uar"] for o in self.outcomes if "val_uar" in o.validation]
        return float(np.mean(values)) if values else float("nan")

    @property
    def confusion(self) -> list[list[int]]:
        if not self.finals:
            return []
        return np.sum([np.asarray(f.confusion) for f in self.finals], axis=0).tolist()

    @property
    def trials(self) -> int:
        return sum(len(outcome.trials) for outcome in self.outcomes)

    @property
    def chosen_configs(self) -> list[dict[str, Any]]:
        return [outcome.chosen_config for outcome in self.outcomes]


def mean_std_interval(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation and a 95% Student-t interval (NaN where undefined)."""
    if not values:
        return (math.nan,) * 4
    array = np.asarray(values, dtype=float)
    mean = float(array.mean())
    if len(array) < 2:
        return mean, math.nan, math.nan, math.nan
    from scipy import stats  # imported here: trial processes need none of it

    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(array) - 1) * std / math.sqrt(len(array)))
    return mean, std, mean - half, mean + half


# --- a study: one outer fold's search, in its own Ray task ---------------------------------


def _journal_path(plan: StudyPlan) -> Path:
    """Where a study's Optuna journal lives: beside Tune's results when those are local.

    On S3 the journal stays in a local folder named after the sweep (JournalFileBackend
    needs a POSIX file); ``search_study`` copies it beside the results when the study ends.
    """
    if plan.sweep_dir.startswith("s3://"):
        local = Path(tempfile.gettempdir(), "orchestrate-journals", plan.sweep_dir[5:])
        return local / f"{plan.name}.optuna.log"
    return Path(plan.sweep_dir, f"{plan.name}.optuna.log")


def _space(searched: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return SearchSpace(task="", metric="uar", mode="max", params=searched).distributions()


@ray.remote(num_cpus=0)
def search_study(
    plan: StudyPlan, features: list[ray.ObjectRef], resume: bool, log_file: str | None = None
) -> StudyOutcome:
    """Run (or resume) one outer fold's Tune study; return its trials and chosen config.

    ``log_file``: the driver's log file (``orchestrate.console``), which Tune's and Optuna's
    loggers in this task write to as well when this node sees it (a local cluster).
    """
    if log_file and Path(log_file).parent.is_dir():
        route_logs(log_file, announce=False, libraries=())
    started = time.perf_counter()
    fs, root = resolve_filesystem(plan.sweep_dir, plan.storage_options)
    experiment = f"{root}/{plan.name}"
    trainable = tune.with_resources(
        tune.with_parameters(
            train_trial,
            task_name=plan.task,
            variant=plan.variant,
            features=features,
            splits=[tuple(split) for split in plan.validation],
            seed=plan.seed,
        ),
        plan.resources,
    )
    # Concurrent Tuners share Tune's job-wide registry by trainable name: one name a study.
    trainable.__name__ = f"train_{plan.name}".replace("-", "_")
    journal = _journal_path(plan)
    copy = f"{root}/{plan.name}.optuna.log"
    if plan.sweep_dir.startswith("s3://") and not journal.is_file():
        if fs.get_file_info(copy).type == pyarrow.fs.FileType.File:
            journal.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(copy) as stream:
                journal.write_bytes(stream.read())
    if resume and tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        tuner = tune.Tuner.restore(
            experiment, trainable=trainable, resume_errored=True, storage_filesystem=fs
        )
    else:
        _remove(fs, experiment)
        journal.unlink(missing_ok=True)
        tuner = _new_tuner(plan, trainable, journal, fs, root)
    grid = tuner.fit()

    trials = [_trial_record(result) for result in grid]
    finished = [r for r in grid if r.error is None and r.metrics and plan.metric in r.metrics]
    if not finished:
        errors = [t.error for t in trials if t.error]
        raise VariantFailed(errors[0] if errors else "no trial reported a result")
    best = grid.get_best_result(scope="last")
    # The chosen configuration includes how long it trained: ASHA's choice, on validation.
    chosen = {key: best.config[key] for key in plan.base_config}
    chosen["epochs"] = int(best.metrics["training_iteration"])
    optuna_trials: list[optuna.trial.FrozenTrial] = []
    if plan.searched and journal.is_file():
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        )
        optuna_trials = optuna.load_study(study_name=plan.name, storage=storage).trials
        if plan.sweep_dir.startswith("s3://"):
            with fs.open_output_stream(copy) as out:
                out.write(journal.read_bytes())
    return StudyOutcome(
        plan_name=plan.name,
        fold=plan.fold,
        trials=trials,
        chosen_trial=best.metrics.get("trial_id", ""),
        chosen_config=chosen,
        validation={k: float(v) for k, v in best.metrics.items() if k.startswith("val_")},
        optuna_trials=optuna_trials,
        search_seconds=time.perf_counter() - started,
        train_seconds=sum(sum(h.get("train_seconds", 0.0) for h in t.history) for t in trials),
    )


def _new_tuner(
    plan: StudyPlan, trainable: Any, journal: Path, fs: pyarrow.fs.FileSystem, root: str
) -> tune.Tuner:
    """A fresh study's Tuner, in the shape of Ray's ``optuna_example.py``."""
    searched = _space(plan.searched)
    search_alg = None
    num_samples = plan.num_samples
    if searched:
        journal.parent.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        )
        search_alg = ConcurrencyLimiter(
            OptunaSearch(seed=plan.seed, storage=storage, study_name=plan.name),
            max_concurrent=plan.max_concurrent,
        )
    else:
        num_samples = 1  # nothing to search (e.g. a pretrained model): one configuration
    scheduler = (
        AsyncHyperBandScheduler(
            time_attr="training_iteration", max_t=plan.epochs, grace_period=max(1, plan.epochs // 4)
        )
        if plan.epochs > 1
        else None
    )
    return tune.Tuner(
        trainable,
        param_space={**plan.base_config, **searched},
        tune_config=tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            # Trials of a study share processes: a new one would import torch again.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=root,  # inside storage_filesystem: bucket/prefix on S3
            storage_filesystem=fs,
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )


def _remove(fs: pyarrow.fs.FileSystem, path: str) -> None:
    info = fs.get_file_info(path)
    if info.type == pyarrow.fs.FileType.Directory:
        fs.delete_dir(path)


def _trial_record(result: Any) -> TrialRecord:
    history: list[dict[str, float]] = []
    frame = result.metrics_dataframe
    if frame is not None and len(frame):
        keep = [
            c
            for c in frame.columns
            if c.startswith(("val_", "train_")) or c in ("epoch", "resumed_from_epoch")
        ]
        keep.append("training_iteration")
        history = [{k: float(v) for k, v in row.items()} for row in frame[keep].to_dict("records")]
    trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
    searched = {k: v for k, v in result.config.items()}
    error = None
    if result.error is not None:
        error = str(result.error).strip().splitlines()[-1]
    return TrialRecord(trial_id=str(trial_id), config=searched, history=history, error=error)


# --- the driver: plan every study of a task, run them concurrently ------------------------


def task_config(
    config: RunConfig, task: TaskSpec, variant: str, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The variant's knobs (defaults, its own, the run's); epochs capped for quick runs."""
    knobs = task.config(variant, overrides)
    if config.sweep.max_epochs is not None:
        knobs = knobs.replace(epochs=min(knobs.epochs, config.sweep.max_epochs))
    return knobs.as_dict()


def paper_protocol(task: TaskSpec, variant: str) -> str:
    """The protocol the paper evaluated ``variant`` under."""
    return task.variant(variant).paper_protocol


def protocols_for(config: RunConfig, task: TaskSpec, variant: str) -> list[tuple[str, bool]]:
    """``(protocol, is the paper's)`` for each of the run's protocols, resolved and deduplicated.

    A task without paper results (the baseline) has no paper's protocol: ``paper`` runs its
    own, never labelled the paper's.
    """
    paper = paper_protocol(task, variant)
    has_paper = bool(task.paper_results)
    resolved: dict[str, bool] = {}
    for name in config.sweep.protocols:
        protocol = paper if name == "paper" else name
        resolved[protocol] = resolved.get(protocol, False) or (has_paper and protocol == paper)
    return list(resolved.items())


# How a row's note begins when a network of its features ran on random weights.
RANDOM_WEIGHTS = "random weights"


def random_weights_note(config: RunConfig, keys: dict[str, Any]) -> str:
    """Names the extractors of a row whose network ran on random weights (none: "")."""
    from orchestrate.extractors import EXTRACTORS, build_extractor

    random = []
    for name in keys:
        if name not in EXTRACTORS:
            continue
        params = build_extractor(name, config.ingest.extractors.get(name, {})).params
        if "random" in (params.get("model_path"), params.get("weights")):
            random.append(name)
    return f"{RANDOM_WEIGHTS}: {', '.join(random)}" if random else ""


def variant_modality(config: RunConfig, task: TaskSpec, variant: str) -> str:
    """``fused`` when a variant reads audio and video, else the one it reads.

    A column's modality is its extractor's, or the name a ``modality.<name>`` column gives.
    """
    modalities = variant_modalities(task, variant)
    return "fused" if len(modalities) > 1 else modalities.pop()


def searched_knobs(
    space: SearchSpace, task: TaskSpec, variant: str, overrides: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The search space entries a variant reads, less the knobs the run fixed by hand."""
    reads = task.variant(variant).knobs
    return {
        name: spec for name, spec in space.params.items() if name in reads and name not in overrides
    }


@dataclass
class SweepPlan:
    """Every study of one task's sweep, and the rows they fill."""

    rows: list[VariantResult]
    studies: list[tuple[VariantResult, StudyPlan, list[ray.ObjectRef]]]


def plan_task(
    config: RunConfig,
    task_name: str,
    variants: list[str],
    overrides: dict[str, Any],
    sweep_dir: str,
    beside: tuple[TaskSpec, list[str]] | None = None,
) -> SweepPlan:
    """Load each variant's features once, split them, and plan one study per outer fold.

    ``beside=(paper, protocols)`` plans the baseline's rows for that paper's table: its
    clips and emotions only, under those protocols (none of them labelled the paper's).
    """
    task = TASKS[task_name]
    space = load_search_space(task_name)
    plan = SweepPlan(rows=[], studies=[])
    only_labels = beside[0].classes if beside else ()
    for variant in variants:
        if beside:
            protocols = [(protocol, False) for protocol in beside[1]]
        else:
            protocols = protocols_for(config, task, variant)
        rows = [
            VariantResult(
                task_name,
                variant,
                p,
                config.sweep.selection,
                is_paper,
                len(task.classes),
                beside=beside[0].name if beside else "",
            )
            for p, is_paper in protocols
        ]
        plan.rows.extend(rows)
        try:
            source = feature_source(config, task, variant, only_labels)
            for row in rows:
                row.modality = variant_modality(config, task, variant)
                row.cache_keys = {name: key.directory for name, key in source.keys.items()}
                row.manifest_uri = source.manifest_uri
                row.note = random_weights_note(config, source.keys)
            features, left_out = source.load()
            if len(features) == 0:
                raise ValueError("no clip has the features it needs in the store")
            reference = [ray.put(features)]
        except (ValueError, FileNotFoundError) as error:
            for row in rows:
                row.error = _one_line(error)
            continue
        clips = [
            (clip_id, str(actor), task.classes[label])
            for clip_id, actor, label in zip(
                features.clip_ids, features.actors, features.labels, strict=True
            )
        ]
        for row in rows:
            row.clips = clips
            # Chance UAR is 1 / the classes the clips hold (UAR averages over those): the
            # baseline's eight emotions on a four-emotion table are four.
            row.n_classes = len(np.unique(features.labels))
        base = task_config(config, task, variant, overrides)
        searched = searched_knobs(space, task, variant, overrides)
        for row in rows:
            row.left_out = left_out
            try:
                studies = study_plans(config, row, features, base, searched, space, sweep_dir)
            except ValueError as error:
                row.error = _one_line(error)
                continue
            plan.studies.extend((row, study, reference) for study in studies)
    return plan


def study_plans(
    config: RunConfig,
    row: VariantResult,
    features: FeatureSet,
    base: dict[str, Any],
    searched: dict[str, dict[str, Any]],
    space: SearchSpace,
    sweep_dir: str,
) -> list[StudyPlan]:
    """The outer folds of ``row``'s protocol, each with its inner validation split(s)."""
    folds = make_folds(
        row.protocol, features.actors, features.labels, config.sweep.folds, config.seed
    )
    if config.sweep.selection == "holdout":
        folds = folds[:1]
    ids = np.asarray(features.clip_ids)
    plans = []
    for k, (train, test) in enumerate(folds):
        inner = validation_splits(
            row.protocol,
            features.actors[train],
            features.labels[train],
            config.sweep.inner_folds,
            config.sweep.validation_fraction,
            config.seed + k,
        )
        resources = {"cpu": config.sweep.cpus_per_trial}
        if config.sweep.gpus_per_trial:
            resources["gpu"] = config.sweep.gpus_per_trial
        plans.append(
            StudyPlan(
                task=row.task,
                variant=row.variant,
                protocol=row.protocol,
                fold=k,
                train_ids=tuple(ids[train]),
                test_ids=tuple(ids[test]),
                validation=tuple((tuple(ids[train][a]), tuple(ids[train][b])) for a, b in inner),
                base_config=dict(base),
                searched=searched,
                metric=f"val_{space.metric}",
                mode=space.mode,
                num_samples=config.sweep.num_samples,
                max_concurrent=config.sweep.max_concurrent,
                max_failures=config.sweep.max_failures,
                beside=row.beside,
                resources=resources,
                seed=config.seed,
                sweep_dir=sweep_dir,
                storage_options=config.storage_options,
            )
        )
    return plans


def run_studies(
    config: RunConfig,
    plan: SweepPlan,
    resume: bool,
    progress: bool = True,
    on_study: Callable[[VariantResult, StudyOutcome], None] | None = None,
) -> list[VariantResult]:
    """Run every planned study, at most ``max_concurrent_studies`` at once; then its finals.

    A study that finished before (its outcome is stored) is not run again when resuming. A
    study that fails marks its row with the one-line reason; the other rows go on.
    ``on_study(row, outcome)`` is called as each study's final models are in (tracking
    spools its runs then, so a driver killed later loses none of them). The first seed's
    final model of every study is exported beside the study's results.
    """
    limit = config.sweep.max_concurrent_studies or max(
        1, int(ray.cluster_resources().get("CPU", 1) // config.sweep.cpus_per_trial)
    )
    seeds = list(config.sweep.seeds)
    retrain = ray.remote(retrain_and_test).options(
        num_cpus=config.sweep.cpus_per_trial, num_gpus=config.sweep.gpus_per_trial
    )
    pending = list(plan.studies)
    searching: dict[ray.ObjectRef, tuple[VariantResult, StudyPlan, list[ray.ObjectRef]]] = {}
    finishing: dict[ray.ObjectRef, tuple[VariantResult, StudyPlan, StudyOutcome]] = {}
    total, done, trials = len(pending), 0, 0
    task = plan.rows[0].task if plan.rows else ""
    bar = progress_bar(total, f"{task} studies", "study", enabled=progress)
    log_file = str(routed_log() or "")
    # A study's Tune driver holds its Tune state (trials, checkpoints, searcher) while its
    # trials spread over the cluster: it runs on this driver's node (the head under
    # `orchestrate submit` or a RayJob), so a lost worker node costs the trials it ran,
    # retried from their checkpoints, never the study (which Ray would rerun from scratch).
    study_task = search_study.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        )
    )

    def launch() -> None:
        while pending and len(searching) < limit:
            row, study, reference = pending.pop(0)
            stored = _stored_outcome(study) if resume else None
            if stored is not None:
                row.outcomes.append(stored)
                bar.update()
                _say(progress, f"  {study.name}: finished before, not run again")
                continue
            searching[study_task.remote(study, reference, resume, log_file)] = (
                row,
                study,
                reference,
            )

    launch()
    while searching or finishing:
        ready, _ = ray.wait([*searching, *finishing], num_returns=1)
        ref = ready[0]
        if ref in searching:
            row, study, reference = searching.pop(ref)
            try:
                outcome = ray.get(ref)
            except (ray.exceptions.RayTaskError, VariantFailed) as error:
                row.error = row.error or f"{study.name}: {_one_line(error)}"
                done += 1
                bar.update()
                # Failures are said even in quiet runs: the row will lack this fold.
                _say(True, f"  [{done}/{total}] {study.name}: failed: {_one_line(error)}")
                launch()
                continue
            finals = [
                retrain.remote(
                    study.task,
                    study.variant,
                    outcome.chosen_config,
                    reference,
                    study.train_ids,
                    study.test_ids,
                    study.fold,
                    seed,
                    f"{study.sweep_dir}/{study.name}.seed{seed}.model.pkl"
                    if seed == seeds[0]
                    else "",
                    study.storage_options,
                )
                for seed in seeds
            ]
            finishing[_gather.remote(*finals)] = (row, study, outcome)
            launch()
        else:
            row, study, outcome = finishing.pop(ref)
            try:
                outcome.finals = ray.get(ref)
            except ray.exceptions.RayTaskError as error:
                row.error = row.error or f"{study.name}: final model: {_one_line(error)}"
                bar.update()
                continue
            if on_study is not None:
                on_study(row, outcome)
            _store_outcome(study, outcome)
            row.outcomes.append(outcome)
            done += 1
            trials += len(outcome.trials)
            bar.set_postfix_str(f"{trials} trials", refresh=False)
            bar.update()
            test_uar = np.mean([f.metrics["uar"] for f in outcome.finals])
            _say(
                progress,
                f"  [{done}/{total}] {study.name}: {len(outcome.trials)} trials, chosen "
                f"validation UAR {outcome.validation.get('val_uar', math.nan):.3f}, "
                f"test UAR {test_uar:.3f}",
            )
    bar.close()
    for row in plan.rows:
        row.outcomes.sort(key=lambda outcome: outcome.fold)
        if row.outcomes and row.error:
            row.error = None if len(row.outcomes) == _planned(plan, row) else row.error
    return plan.rows


@ray.remote(num_cpus=0)
def _gather(*finals: FinalModel) -> list[FinalModel]:
    return list(finals)


def _planned(plan: SweepPlan, row: VariantResult) -> int:
    return sum(1 for planned_row, _, _ in plan.studies if planned_row is row)


def _outcome_path(study: StudyPlan) -> tuple[pyarrow.fs.FileSystem, str]:
    fs, root = resolve_filesystem(study.sweep_dir, study.storage_options)
    return fs, f"{root}/{study.name}.outcome.json"


def _stored_outcome(study: StudyPlan) -> StudyOutcome | None:
    fs, path = _outcome_path(study)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        outcome = StudyOutcome.from_json(stream.read().decode())
    journal = _journal_path(study)
    if study.searched and journal.is_file():
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        )
        outcome.optuna_trials = optuna.load_study(study_name=study.name, storage=storage).trials
    return outcome


def _store_outcome(study: StudyPlan, outcome: StudyOutcome) -> None:
    fs, path = _outcome_path(study)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(outcome.to_json().encode())


def sweep_directory(config: RunConfig, resume: bool) -> str:
    """The sweep's folder under ``sweep.storage_path``: a new one, or the newest when resuming."""
    base = f"{config.sweep_storage.rstrip('/')}/{config.tracking.experiment}"
    fs, root = resolve_filesystem(base, config.storage_options)
    if resume:
        found = sorted(
            info.base_name
            for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
            if info.type == pyarrow.fs.FileType.Directory
        )
        if not found:
            raise InputError(f"--resume: no earlier sweep under {base}")
        return f"{base}/{found[-1]}"
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    name = stamp
    existing = {
        info.base_name
        for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    }
    suffix = 1
    while name in existing:
        suffix += 1
        name = f"{stamp}-{suffix}"
    fs.create_dir(f"{root}/{name}", recursive=True)
    return f"{base}/{name}"


def _one_line(error: BaseException) -> str:
    """The last line of an error's message (a Ray task error's cause, not its traceback)."""
    cause = getattr(error, "cause", None)
    text = str(cause if cause is not None else error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def _say(progress: bool, line: str) -> None:
    if progress:
        say(line)  # above the progress bar, on a terminal
