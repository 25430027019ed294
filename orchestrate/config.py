"""One YAML file describes a run; ``key=value`` overrides on the command line; validated on load.

The dataclasses below are the schema: OmegaConf merges the file and the dotlist overrides
into their structured config (typed values, unknown keys refused with the full key), and
the result is checked against the registries (datasets, extractors, task specs and their
knobs). Every field has an embedded default, so an empty file (or none) is a valid run:
local Ray, a feature store in ``<workspace>/store``, MLflow on ``<workspace>/mlflow.db``
with artifacts in ``<workspace>/mlartifacts``. A bad key or value raises ``ConfigError``
with one line naming the full key and what is allowed, before any work starts.

``--config`` takes a file or the name of a config shipped in ``orchestrate/configs/``
(``song_ravdess``, ``demo``, ...).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from orchestrate.errors import InputError
from orchestrate.protocols import ACTOR_PROTOCOLS, PROTOCOLS

SELECTIONS = ("nested", "holdout")
FACE_MODES = ("detect", "given")  # dataset.faces


class ConfigError(InputError):
    """A config key or value is not allowed; the message is one line naming the field."""


@dataclass
class DatasetConfig:
    name: str = "ravdess"
    root: str | None = None  # a local directory or s3://bucket/prefix (or the SFEW table file)
    # RAVDESS vocal channel: "speech" (the papers'), "song", or "all"
    vocal_channel: str = "speech"
    # How video extractors find the face: "detect" (the face detector, largest face) or
    # "given" (frames and still images are face crops already); part of their cache key.
    faces: str = "detect"
    # The feature-table dataset (root: a .csv or .parquet file, one row per clip; see
    # orchestrate.datasets.feature_table): its columns, and how labels and actors are found.
    clip_id_column: str = "clip_id"
    label_column: str | None = None  # None: parsed from the clip id by `naming`
    actor_column: str | None = None  # None: parsed by `naming`, else each clip its own actor
    naming: str | None = None  # "ravdess" or "crema-d": the clip ids follow that naming
    # modality name -> its feature columns: a glob pattern ("mfcc_*") or a list of patterns
    modalities: dict[str, Any] = field(default_factory=dict)


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
    # Extractor name -> the parameters that differ from its paper defaults. Ingest runs every
    # extractor the run's tasks read, and any named here.
    extractors: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_failure_ratio: float = 0.5  # ingest exits non-zero above this ratio of failed clips
    # The Haar cascade runs on a grayscale copy this wide; part of the video extractors'
    # cache keys (another width finds other faces).
    face_detect_width: int = 320  # orchestrate.faces.DETECT_WIDTH (config imports no OpenCV)
    # Actors running the networks (VGG16, FER CNN); default: one per GPU, else one per CPU.
    embed_workers: int | None = None
    # Clips per map_batches batch (the networks run on all their faces, a cache-sized forward
    # at a time on a CPU); one block's worth by default, so an actor's last batch is short.
    embed_batch_size: int = 8
    # Hash every clip's bytes even when its size and modification time (ETag on S3) match
    # the last ingest's: as with rsync, a same-size, same-mtime rewrite is otherwise trusted.
    always_hash: bool = False
    retry_failed: bool = False  # recompute clips whose stored rows are failed


@dataclass
class TaskRun:
    """One task of a run: its variants, and the knobs that differ from the task's defaults."""

    name: str
    variants: list[str]
    knobs: dict[str, Any] = field(default_factory=dict)


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
    # The reference baseline's variants swept beside every paper's rows, on the same clips,
    # emotions and protocols, and shown in that paper's ablation table ([]: none). A
    # variant reading a modality the paper's rows do not (audio beside Wang) is left out.
    baseline: list[str] = field(default_factory=lambda: ["audio", "video", "fused"])


@dataclass
class RunConfig:
    workspace: str = "./orchestrate-workspace"
    seed: int = 0
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    # Task name -> {variants: [...], <knob>: value, ...}; empty: every task, every variant.
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
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
        """The tasks to sweep: those listed, or every registered task with all its variants.

        A run that lists none sweeps the tasks ``in_default_run`` (every paper's model; the
        reference baseline is swept where it is listed).
        """
        from tasks import TASKS

        sections = self.tasks or {name: {} for name, t in TASKS.items() if t.in_default_run}
        runs = []
        for name, section in sections.items():
            knobs = {key: value for key, value in (section or {}).items() if key != "variants"}
            variants = (section or {}).get("variants") or list(TASKS[name].variants)
            runs.append(TaskRun(name, list(variants), knobs))
        return runs

    @property
    def storage_options(self) -> dict[str, str]:
        """How to reach the feature store (never credentials: those come from the AWS chain)."""
        options = {"endpoint_url": self.store.endpoint_url, "region": self.store.region}
        return {key: value for key, value in options.items() if value}


SHIPPED_CONFIGS = "orchestrate.configs"
TASKS_BY_NAME = (
    "tasks: a mapping by task name, e.g. tasks: {song: {variants: [audio], lr: 0.001}} "
    "(not a list of {name: ...} items)"
)


def shipped_configs() -> dict[str, str]:
    """The run configs that ship with the package: name -> the command line that runs it."""
    found = {}
    for entry in sorted(resources.files(SHIPPED_CONFIGS).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            first = entry.read_text().splitlines()[0] if entry.read_text() else ""
            found[entry.name.removesuffix(".yaml")] = first.lstrip("# ").strip()
    return found


def config_path(name: str | Path) -> Path:
    """A config file: the path itself, else the shipped config of that name."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = resources.files(SHIPPED_CONFIGS).joinpath(f"{path.name.removesuffix('.yaml')}.yaml")
    if path.parent == Path(".") and shipped.is_file():
        return Path(str(shipped))
    known = ", ".join(shipped_configs())
    raise ConfigError(f"config file {name} does not exist (shipped configs: {known})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config from YAML (or the embedded defaults), apply overrides, validate."""
    merged = OmegaConf.structured(RunConfig)
    if path is not None:
        path = config_path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        if isinstance((loaded or {}).get("tasks"), list):
            raise ConfigError(TASKS_BY_NAME)
        _merge(merged, loaded or {})
    for override in overrides or []:
        apply_override(merged, override)
    config = OmegaConf.to_object(merged)
    assert isinstance(config, RunConfig)
    validate(config)
    return config


def apply_override(merged: DictConfig, override: str) -> None:
    """Apply one ``dotted.key=value`` override to the structured config.

    Values are typed by the schema: where the key is a string field (or a string knob or
    extractor parameter) the text is taken as written, so ``tracking.experiment=0123``
    stays ``"0123"`` and ``=yes`` stays ``"yes"`` (YAML 1.1 would read 83 and true); a
    single value for a list field is a one-item list (``tasks.song.variants=audio``).
    Everything else goes through OmegaConf's dotlist parsing.
    """
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(
            f"override {override!r} must look like key=value (e.g. sweep.num_samples=4)"
        )
    if key == "tasks" and text.lstrip().startswith("["):
        raise ConfigError(TASKS_BY_NAME)
    declared = declared_type(key)
    try:
        if declared is str and text not in ("null", "~"):
            OmegaConf.update(merged, key, text, merge=True, force_add=key.startswith("tasks."))
            return
        if declared is list and not text.lstrip().startswith("["):
            text = f"[{text}]"
        merged.merge_with_dotlist([f"{key}={text}"])
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(error, key)) from None
    except yaml.YAMLError as error:  # e.g. [a[0]]: quote such items, as in ['a[0]']
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{key}: {text!r} is not a YAML value ({problem})") from None


def declared_type(key: str) -> type | None:
    """``str``, ``list`` or another type the schema declares for a dotted key (None: unknown)."""
    from orchestrate.extractors import EXTRACTORS
    from tasks import TASKS

    parts = key.split(".")
    if parts[0] == "tasks" and len(parts) == 3 and parts[1] in TASKS:
        if parts[2] == "variants":
            return list
        hints = typing.get_type_hints(TASKS[parts[1]].knobs)
        return _plain(hints.get(parts[2]))
    if parts[:2] == ["ingest", "extractors"] and len(parts) == 4 and parts[2] in EXTRACTORS:
        return _plain(typing.get_type_hints(EXTRACTORS[parts[2]]).get(parts[3]))
    hint: Any = RunConfig
    for part in parts:
        if not dataclasses.is_dataclass(hint):
            return None
        hint = typing.get_type_hints(hint).get(part)
    return _plain(hint)


def _plain(hint: Any) -> type | None:
    """``X | None`` -> ``X``; ``list[...]`` -> ``list``; unions of several types -> None."""
    if hint is None:
        return None
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        others = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _plain(others[0]) if len(others) == 1 else None
    origin = typing.get_origin(hint)
    return origin if origin is not None else hint


def _merge(merged: DictConfig, values: dict[str, Any]) -> None:
    try:
        merged.merge_with(values)
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(error, "")) from None


def _one_line(error: OmegaConfBaseException, key: str) -> str:
    """OmegaConf's message as ``<full key>: <what is wrong>`` (allowed keys for unknown ones)."""
    full_key = getattr(error, "full_key", None) or key
    if key.endswith(f".{full_key}"):  # OmegaConf names the key relative to a typed dict
        full_key = key
    message = str(error).splitlines()[0]
    typed = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", message)
    if typed:
        expected = {"Integer": "int", "Float": "float", "Boolean": "bool"}.get(typed[2], typed[2])
        return f"{full_key}: must be {expected}, got {typed[1]!r}"
    if isinstance(error, ConfigKeyError | AttributeError) or "not in" in message:
        hint: Any = RunConfig
        for part in full_key.split(".")[:-1]:
            hint = typing.get_type_hints(hint).get(part) if dataclasses.is_dataclass(hint) else None
        if dataclasses.is_dataclass(hint):
            allowed = ", ".join(f.name for f in dataclasses.fields(hint))
            return f"{full_key}: unknown key (allowed: {allowed})"
    return f"{full_key}: {message}"


def validate(config: RunConfig) -> None:
    """Check values against what the registries allow; raise ConfigError on the first problem."""
    # Imported here: the registries import torch and friends, which config parsing doesn't need.
    from orchestrate.datasets import DATASETS
    from orchestrate.datasets.feature_table import check_table_config
    from orchestrate.datasets.ravdess import VOCAL_CHANNELS
    from orchestrate.extractors import EXTRACTORS, extractor_param_names
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
    if config.dataset.faces not in FACE_MODES:
        raise ConfigError(
            f"dataset.faces: {config.dataset.faces!r} is not one of {', '.join(FACE_MODES)}"
        )
    check_table_config(config.dataset)
    for name in config.ingest.extractors:
        if name not in EXTRACTORS:
            raise ConfigError(
                f"ingest.extractors.{name}: unknown extractor (allowed: {', '.join(EXTRACTORS)})"
            )
    if not 0.0 <= config.ingest.max_failure_ratio <= 1.0:
        raise ConfigError("ingest.max_failure_ratio: must be between 0 and 1")
    for name in ("embed_workers", "embed_batch_size"):
        if getattr(config.ingest, name) is not None and getattr(config.ingest, name) < 1:
            raise ConfigError(f"ingest.{name}: must be at least 1")
    if config.ingest.face_detect_width < 24:  # orchestrate.faces.MIN_DETECT_WIDTH
        raise ConfigError(
            "ingest.face_detect_width: must be at least 24 (the Haar cascade's window)"
        )
    for name, section in config.tasks.items():
        if name not in TASKS:
            raise ConfigError(f"tasks.{name}: unknown task (allowed: {', '.join(TASKS)})")
        if section is not None and not isinstance(section, dict):
            raise ConfigError(
                f"tasks.{name}: must be a mapping of variants and knobs, got {section!r}"
            )
    for run in config.task_runs():
        task = TASKS[run.name]
        for variant in run.variants:
            if variant not in task.variants:
                allowed = ", ".join(task.variants)
                raise ConfigError(f"tasks.{run.name}.variants: {variant!r} is not one of {allowed}")
        try:
            task.knobs.of(run.knobs)
        except ValueError as error:
            raise ConfigError(f"tasks.{error}") from None
    for name, params in config.ingest.extractors.items():
        allowed_params = extractor_param_names(name)
        for key in params or {}:
            if key not in allowed_params:
                raise ConfigError(
                    f"ingest.extractors.{name}.{key}: unknown parameter "
                    f"(allowed: {', '.join(allowed_params)})"
                )
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
    baseline_variants = TASKS["baseline"].variants
    for variant in config.sweep.baseline:
        if variant not in baseline_variants:
            raise ConfigError(
                f"sweep.baseline: {variant!r} is not one of {', '.join(baseline_variants)}"
            )
    if config.sweep.cpus_per_trial <= 0:
        raise ConfigError("sweep.cpus_per_trial: must be positive")
    if config.sweep.gpus_per_trial < 0:
        raise ConfigError("sweep.gpus_per_trial: must not be negative")


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (logged with every sweep)."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
