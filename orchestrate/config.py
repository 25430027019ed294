"""One YAML file describes a run; ``key=value`` overrides on the command line; validated on load.

Every field has an embedded default, so an empty file (or none) is a valid run: local Ray,
a feature store in ``<workspace>/store``, MLflow on ``<workspace>/mlflow.db`` with
artifacts in ``<workspace>/mlartifacts``. A bad key or value raises ``ConfigError`` with
one line naming the field and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrate.protocols import ACTOR_PROTOCOLS, PROTOCOLS

SELECTIONS = ("nested", "holdout")


class ConfigError(ValueError):
    """A config key or value is not allowed; the message is one line naming the field."""


@dataclass
class DatasetConfig:
    name: str = "ravdess"
    root: str | None = None  # a local directory or s3://bucket/prefix (or the SFEW table file)
    # RAVDESS vocal channel: "speech" (the papers'), "song", or "all"
    vocal_channel: str = "speech"


@dataclass
class StoreConfig:
    uri: str | None = None  # default: <workspace>/store; or s3://bucket/prefix
    endpoint_url: str | None = None  # S3-compatible endpoint (MinIO, moto, ...)
    region: str | None = None


@dataclass
class TrackingConfig:
    uri: str | None = None  # default: sqlite:///<workspace>/mlflow.db
    experiment: str = "orchestrate"


@dataclass
class RayConfig:
    address: str | None = None  # default: RAY_ADDRESS, else a local ray.init()
    num_cpus: int | None = None  # only for a local ray.init()


@dataclass
class IngestConfig:
    # extractor name -> its parameters; empty: every extractor the run's tasks read.
    extractors: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_failure_ratio: float = 0.5  # ingest exits non-zero above this ratio of failed clips
    face_detect_width: int = 320  # Haar cascade runs on a grayscale copy this wide
    # Actors running the networks (VGG16, FER CNN); default: one per GPU, else one per CPU.
    embed_workers: int | None = None
    embed_batch_size: int = 16  # clips per map_batches batch (networks run on all their crops)
    # Hash every clip's bytes even when its size and modification time (ETag on S3) match
    # the last ingest's: as with rsync, a same-size, same-mtime rewrite is otherwise trusted.
    always_hash: bool = False
    retry_failed: bool = False  # recompute clips whose stored rows are failed


@dataclass
class TaskRun:
    name: str = ""
    variants: list[str] | None = None  # default: every variant the task has
    config: dict[str, Any] = field(default_factory=dict)  # overrides of the task's DEFAULTS


@dataclass
class SweepConfig:
    # One ablation row per protocol; "paper" is each variant's own paper protocol.
    protocols: list[str] = field(default_factory=lambda: ["actor-kfold", "paper"])
    # "nested": a study per outer fold, every fold tested once; "holdout": one study whose
    # validation actors and test actors are two disjoint groups (the first outer fold).
    selection: str = "nested"
    folds: int = 5  # outer folds (protocols with a fixed count ignore it)
    inner_folds: int = 1  # 1: one validation group carved from each outer training split
    validation_fraction: float = 0.2  # of the outer training actors (or clips)
    num_samples: int = 8  # Optuna trials per study (per outer fold)
    max_concurrent: int = 2  # trials at once per study
    max_concurrent_studies: int | None = None  # default: cluster CPUs / cpus_per_trial
    max_epochs: int | None = None  # caps each task's epochs (quick runs)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractions share a GPU between trials
    max_failures: int = 2  # a failed trial is retried from its last checkpoint this often
    storage_path: str | None = None  # Tune results + Optuna journals; default <workspace>/sweeps
    # The chosen configuration of every outer fold is retrained once per seed.
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class RunConfig:
    workspace: str = "./orchestrate-workspace"
    seed: int = 0
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    tasks: list[TaskRun] = field(default_factory=list)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    # Derived locations: everything the embedded defaults write stays inside the workspace.
    @property
    def workspace_path(self) -> Path:
        return Path(self.workspace).expanduser().resolve()

    @property
    def store_uri(self) -> str:
        return self.store.uri or str(self.workspace_path / "store")

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.workspace_path / 'mlflow.db'}"

    @property
    def sweep_storage(self) -> str:
        return self.sweep.storage_path or str(self.workspace_path / "sweeps")

    @property
    def artifact_location(self) -> str:
        return (self.workspace_path / "mlartifacts").as_uri()

    def task_runs(self) -> list[TaskRun]:
        """The tasks to sweep: those listed, or every registered task with all its variants."""
        from tasks import TASKS

        runs = self.tasks or [TaskRun(name=name) for name in TASKS]
        return [
            TaskRun(run.name, run.variants or list(TASKS[run.name].VARIANTS), dict(run.config))
            for run in runs
        ]

    @property
    def storage_options(self) -> dict[str, str]:
        """How to reach the feature store (never credentials: those come from the AWS chain)."""
        options = {"endpoint_url": self.store.endpoint_url, "region": self.store.region}
        return {key: value for key, value in options.items() if value}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config from YAML (or the embedded defaults), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        raw = loaded or {}
    for override in overrides or []:
        apply_override(raw, override)
    config = _build(RunConfig, raw, "")
    validate(config)
    return config


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``dotted.key=value`` override (value parsed as YAML) to a raw config dict."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(
            f"override {override!r} must look like key=value (e.g. sweep.num_samples=4)"
        )
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, ".".join(parts[: i + 1]))
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict | list):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section")
        node = child
    if isinstance(node, list):
        raise ConfigError(f"{key}: name a field of a list item, e.g. tasks.0.variants")
    node[parts[-1]] = value


def _list_item(items: list, index: str, field_name: str) -> Any:
    if not index.isdigit() or int(index) >= len(items):
        raise ConfigError(f"{field_name}: no list item {index} (the list has {len(items)})")
    return items[int(index)]


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Turn a raw mapping into dataclass ``cls``, naming the first bad field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        allowed = ", ".join(fields)
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (allowed: {allowed})")
    hints = typing.get_type_hints(cls)
    values = {name: _convert(hints[name], raw[name], f"{prefix}{name}") for name in raw}
    return cls(**values)


def _convert(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _convert(inner, value, name)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{name}.")
    if origin is list:
        if not isinstance(value, list):
            value = [value]  # `variants=audio` on the command line means one item
        (item,) = args
        return [_convert(item, element, f"{name}.{i}") for i, element in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: must be a mapping, got {value!r}")
        key_type, value_type = args
        return {str(k): _convert(value_type, v, f"{name}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{name}: must be {hint.__name__}, got {value!r}")
    return value


def validate(config: RunConfig) -> None:
    """Check values against what the registries allow; raise ConfigError on the first problem."""
    # Imported here: the registries import torch and friends, which config parsing doesn't need.
    from orchestrate.datasets import DATASETS
    from orchestrate.datasets.ravdess import VOCAL_CHANNELS
    from orchestrate.extractors import EXTRACTORS
    from tasks import TASKS

    if config.dataset.name not in DATASETS:
        raise ConfigError(
            f"dataset.name: {config.dataset.name!r} is not one of {', '.join(DATASETS)}"
        )
    if config.dataset.vocal_channel not in VOCAL_CHANNELS:
        raise ConfigError(
            f"dataset.vocal_channel: {config.dataset.vocal_channel!r} is not one of "
            + ", ".join(VOCAL_CHANNELS)
        )
    for name in config.ingest.extractors:
        if name not in EXTRACTORS:
            raise ConfigError(
                f"ingest.extractors.{name}: unknown extractor (allowed: {', '.join(EXTRACTORS)})"
            )
    if not 0.0 <= config.ingest.max_failure_ratio <= 1.0:
        raise ConfigError("ingest.max_failure_ratio: must be between 0 and 1")
    for name in ("face_detect_width", "embed_workers", "embed_batch_size"):
        if getattr(config.ingest, name) is not None and getattr(config.ingest, name) < 1:
            raise ConfigError(f"ingest.{name}: must be at least 1")
    for i, run in enumerate(config.tasks):
        if run.name not in TASKS:
            raise ConfigError(f"tasks.{i}.name: {run.name!r} is not one of {', '.join(TASKS)}")
        task = TASKS[run.name]
        for variant in run.variants or []:
            if variant not in task.VARIANTS:
                allowed = ", ".join(task.VARIANTS)
                raise ConfigError(f"tasks.{i}.variants: {variant!r} is not one of {allowed}")
        for key in run.config:
            if key not in task.DEFAULTS:
                allowed = ", ".join(task.DEFAULTS)
                raise ConfigError(f"tasks.{i}.config.{key}: unknown knob (allowed: {allowed})")
    allowed_protocols = ("paper", *PROTOCOLS)
    if not config.sweep.protocols:
        raise ConfigError("sweep.protocols: give at least one protocol")
    for protocol in config.sweep.protocols:
        if protocol not in allowed_protocols:
            raise ConfigError(
                f"sweep.protocols: {protocol!r} is not one of " + ", ".join(allowed_protocols)
            )
    if not set(config.sweep.protocols) & set(ACTOR_PROTOCOLS):
        raise ConfigError(
            "sweep.protocols: name a speaker-independent protocol too ("
            + " or ".join(ACTOR_PROTOCOLS)
            + "): a speaker-dependent number is never reported alone"
        )
    if config.sweep.selection not in SELECTIONS:
        raise ConfigError(
            f"sweep.selection: {config.sweep.selection!r} is not one of {', '.join(SELECTIONS)}"
        )
    for name in ("num_samples", "max_concurrent", "inner_folds"):
        if getattr(config.sweep, name) < 1:
            raise ConfigError(f"sweep.{name}: must be at least 1")
    if config.sweep.max_failures < 0:
        raise ConfigError("sweep.max_failures: must be at least 0")
    if config.sweep.folds < 2:
        raise ConfigError("sweep.folds: must be at least 2")
    if not 0.0 < config.sweep.validation_fraction < 1.0:
        raise ConfigError("sweep.validation_fraction: must be between 0 and 1")
    for name in ("max_epochs", "max_concurrent_studies"):
        if getattr(config.sweep, name) is not None and getattr(config.sweep, name) < 1:
            raise ConfigError(f"sweep.{name}: must be at least 1")
    if not config.sweep.seeds:
        raise ConfigError("sweep.seeds: give at least one seed")
    if len(set(config.sweep.seeds)) != len(config.sweep.seeds):
        raise ConfigError("sweep.seeds: a seed is listed twice (each seed is one retraining)")
    if config.sweep.cpus_per_trial <= 0:
        raise ConfigError("sweep.cpus_per_trial: must be positive")
    if config.sweep.gpus_per_trial < 0:
        raise ConfigError("sweep.gpus_per_trial: must not be negative")


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (logged with every sweep)."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
