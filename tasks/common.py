"""What every task shares: its spec, its knobs, the features a trainer reads, its metrics.

A task module (``tasks/<paper>.py``) is read top to bottom and ends in its ``SPEC``, a
``TaskSpec``: the task's name, the emotions it classifies, its variants (the feature
columns and knobs each reads, the paper's protocol for it), the frozen dataclass of its
knobs (the paper's best configuration as defaults; ``search_spaces/<task>.yaml`` searches
around it; ``epochs`` is the number of ``fit_epoch`` calls), the numbers the paper
reported, and ``make_trainer(knobs, variant, train, seed) -> Trainer``. The stages only
ever read a ``TaskSpec``.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score


@dataclass
class FeatureSet:
    """The features of a set of clips, as a trainer reads them.

    ``columns[name][i]`` is clip ``i``'s array for column ``name``: fixed-size vectors,
    images or variable-length sequences (``(time, dim)`` arrays of differing ``time``).
    ``labels`` index into the task's ``CLASSES``.
    """

    clip_ids: list[str]
    actors: np.ndarray
    labels: np.ndarray
    columns: dict[str, list[np.ndarray]]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.clip_ids)

    def subset(self, index: Sequence[int] | np.ndarray) -> FeatureSet:
        index = np.asarray(index, dtype=int)
        return FeatureSet(
            clip_ids=[self.clip_ids[i] for i in index],
            actors=self.actors[index],
            labels=self.labels[index],
            columns={name: [arrays[i] for i in index] for name, arrays in self.columns.items()},
            classes=self.classes,
        )

    def by_ids(self, clip_ids: Sequence[str]) -> FeatureSet:
        """The clips named by ``clip_ids``, in that order (folds travel as clip ids)."""
        position = {clip_id: i for i, clip_id in enumerate(self.clip_ids)}
        missing = [clip_id for clip_id in clip_ids if clip_id not in position]
        if missing:
            raise ValueError(f"clip {missing[0]} is not in this feature set")
        return self.subset([position[clip_id] for clip_id in clip_ids])

    def stacked(self, column: str) -> np.ndarray:
        """A fixed-size column as one ``(clips, ...)`` float32 array."""
        return np.stack(self.columns[column]).astype(np.float32)


class Trainer(Protocol):
    """Trains one configuration on one training split, an epoch at a time."""

    def fit_epoch(self) -> dict[str, float]:
        """Train one more epoch; return training metrics (e.g. ``{"train_loss": ...}``)."""
        ...

    def predict_proba(self, features: FeatureSet) -> np.ndarray:
        """Class probabilities, ``(clips, len(CLASSES))``."""
        ...

    def export(self, features: FeatureSet) -> ExportedModel | None:
        """The trained model as MLflow logs it, with ``features`` (a few clips) as its example."""
        ...


@dataclass
class ExportedModel:
    """A trained model in a library's own form, for MLflow's flavour of that library.

    ``model`` maps ``inputs`` (an example batch: one array, or named arrays passed
    positionally in order) to class probabilities: a ``torch.nn.Module`` (``flavour``
    ``"pytorch"``) or a scikit-learn estimator with ``predict_proba`` (``"sklearn"``).
    ``description`` says what the inputs are, e.g. which standardisation they carry.
    """

    flavour: str
    model: object
    inputs: dict[str, np.ndarray] | np.ndarray
    description: str


@dataclass(frozen=True)
class PaperResult:
    """One number a paper reported, with the protocol it was measured under."""

    variant: str
    metric: str  # "accuracy", "macro_f1", "uar", "average_per_class_accuracy"
    value: float
    protocol: str
    note: str = ""


@dataclass
class Metrics:
    accuracy: float
    uar: float
    macro_f1: float
    confusion: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "uar": self.uar, "macro_f1": self.macro_f1}


def evaluate(labels: np.ndarray, probabilities: np.ndarray, n_classes: int) -> Metrics:
    """Accuracy, unweighted average recall, macro-F1 and the confusion matrix.

    UAR and macro-F1 average over the classes present in ``labels``: a class with no test
    clip in this fold has no recall to average (counting it as 0 would punish the fold's
    make-up, not the model). A clip predicted as an absent class still lowers the recall
    and F1 of its own class. The confusion matrix is over every class.
    """
    labels = np.asarray(labels)
    predicted = np.asarray(probabilities).argmax(axis=1)
    present = sorted(int(label) for label in np.unique(labels))
    return Metrics(
        accuracy=float(accuracy_score(labels, predicted)),
        uar=float(
            recall_score(labels, predicted, labels=present, average="macro", zero_division=0)
        ),
        macro_f1=float(
            f1_score(labels, predicted, labels=present, average="macro", zero_division=0)
        ),
        confusion=confusion_matrix(labels, predicted, labels=list(range(n_classes))),
    )


# --- knobs: a task's configuration, typed and checked on construction -----------------------


@dataclass(frozen=True)
class Knobs:
    """Base of a task's knobs: a frozen dataclass whose fields are checked when it is built.

    Each field's annotation is enforced (``int``, ``float`` — an int is stored as float —
    ``bool``, ``str``, ``X | None`` and unions of those; NumPy scalars count as their Python
    type, as Optuna and Tune may hand them over), then ``check`` tests ranges. Errors are
    ``ValueError("<task>.<knob>: must be ..., got ...")``, the extractors' form.
    """

    TASK: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, self._typed(f.name, hints[f.name]))
        self.check()

    def check(self) -> None:
        """Range checks of the subclass (``self.require``); the types are already checked."""

    @classmethod
    def of(cls, values: Knobs | Mapping[str, Any]) -> Self:
        """``values`` as these knobs: the defaults updated by a mapping, or the knobs as given."""
        if isinstance(values, cls):
            return values
        if isinstance(values, Knobs):
            raise ValueError(f"{cls.TASK}: got {type(values).__name__}, not {cls.__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in values if key not in names]
        if unknown:
            raise ValueError(f"{cls.TASK}.{unknown[0]}: unknown knob (knobs: {', '.join(names)})")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def require(self, ok: bool, knob: str, what: str) -> None:
        """Raise the one-line error for ``knob`` unless ``ok``."""
        if not ok:
            raise ValueError(f"{self.TASK}.{knob}: must be {what}, got {getattr(self, knob)!r}")

    def require_at_least(self, minimum: float, *knobs: str) -> None:
        for knob in knobs:
            self.require(getattr(self, knob) >= minimum, knob, f">= {minimum}")

    def _typed(self, name: str, hint: Any) -> Any:
        value = getattr(self, name)
        allowed = (
            typing.get_args(hint)
            if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
            else (hint,)
        )
        if value is None and type(None) in allowed:
            return None
        if isinstance(value, bool | np.bool_):
            if bool in allowed:
                return bool(value)
        elif isinstance(value, numbers.Integral) and int in allowed:
            return int(value)
        elif isinstance(value, numbers.Real) and float in allowed:
            return float(value)
        elif isinstance(value, str) and str in allowed:
            return value
        expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise ValueError(f"{self.TASK}.{name}: must be {expected}, got {value!r}")


# A column ``modality.<name>`` (``modality.audio``, ``modality.video``) reads whatever the
# dataset gives for that modality: a clip dataset's extractor vector standing for it, or a
# feature table's group of that name (``orchestrate.features.stored_column``).
MODALITY_PREFIX = "modality"


@dataclass(frozen=True)
class Variant:
    """One row of a task's ablation: what it reads, what it searches, how the paper tested it."""

    columns: tuple[str, ...]  # the feature columns ("<extractor>.<array>") it reads
    knobs: tuple[str, ...]  # the knobs it reads: a sweep of the variant searches only these
    paper_protocol: str  # the protocol the paper evaluated it under (orchestrate.protocols)
    # Knobs whose default differs for this variant (e.g. Wang's shallow net trains longer).
    defaults: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """A paper's model family as the stages see it: the registry holds one per task."""

    name: str
    classes: tuple[str, ...]  # the emotions it classifies; clips of others are left out
    variants: Mapping[str, Variant]
    knobs: type[Knobs]
    paper_results: tuple[PaperResult, ...]
    make_trainer: Callable[[Any, str, FeatureSet, int], Trainer]
    # Whether a run that lists no tasks sweeps it (the reference baseline is swept where asked).
    in_default_run: bool = True

    def __post_init__(self) -> None:
        names = {f.name for f in dataclasses.fields(self.knobs)}
        if "epochs" not in names:
            raise TypeError(f"{self.name}: its knobs need an epochs field")
        for variant_name, variant in self.variants.items():
            stray = (set(variant.knobs) | set(variant.defaults)) - names
            if stray:
                raise TypeError(f"{self.name}/{variant_name}: no knob {sorted(stray)[0]!r}")

    def variant(self, name: str) -> Variant:
        """The variant called ``name``; ValueError naming the allowed ones otherwise."""
        if name not in self.variants:
            allowed = ", ".join(self.variants)
            raise ValueError(f"{self.name} has no variant {name!r} (allowed: {allowed})")
        return self.variants[name]

    @property
    def defaults(self) -> dict[str, Any]:
        """The paper's configuration: every knob's default."""
        return self.knobs().as_dict()

    def config(self, variant: str, overrides: Mapping[str, Any] | None = None) -> Knobs:
        """The knobs a variant trains with: defaults, the variant's own, then ``overrides``."""
        return self.knobs.of({**self.variant(variant).defaults, **(overrides or {})})


# --- seeding: one scheme for every trainer ------------------------------------------------


def stream_seed(seed: int, *stream: int) -> int:
    """A 32-bit seed for the random stream ``(seed, *stream)`` (e.g. a run's seed, an epoch)."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0])


@contextmanager
def seeded(seed: int, *stream: int) -> Iterator[np.random.Generator]:
    """Run a block with torch's generators seeded for ``(seed, *stream)``, restored after.

    Yields a NumPy generator of the same stream (batch orders, splits). Everything random a
    trainer does happens inside such a block: its result then depends on its seed and the
    epoch only, not on what else ran in the process (folds trained in lockstep, a trial
    restored from a checkpoint).
    """
    import torch

    value = stream_seed(seed, *stream)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(value)
        yield np.random.default_rng(value)


def checked_vectors(
    features: FeatureSet, column: str, task: str, dim: int | None = None
) -> np.ndarray:
    """The column as a ``(clips, dim)`` float64 array; a clear error names the first bad clip.

    ``dim=None`` takes the first clip's length and holds every other clip to it.
    """
    if column not in features.columns:
        raise ValueError(f"{task}: the features have no column {column!r}")
    for clip_id, array in zip(features.clip_ids, features.columns[column], strict=True):
        array = np.asarray(array)
        if dim is None:
            if array.ndim != 1 or len(array) == 0:
                raise ValueError(
                    f"clip {clip_id}: {column} must be a non-empty vector, got shape {array.shape}"
                )
            dim = len(array)
        if array.shape != (dim,):
            raise ValueError(f"clip {clip_id}: {column} has shape {array.shape}, expected ({dim},)")
        if not np.isfinite(array).all():
            raise ValueError(f"clip {clip_id}: {column} holds NaN or infinite values")
    return np.stack(features.columns[column]).astype(np.float64).reshape(len(features), dim or 0)
