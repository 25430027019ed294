"""What every task module shares: the features a trainer reads, its metrics, its paper's numbers.

A task module (``tasks/<paper>.py``) is read top to bottom and exposes:

- ``NAME``: the task's registry name.
- ``CLASSES``: the emotions it classifies (a subset of ``orchestrate.emotions.EMOTIONS``);
  clips of other emotions are left out before training.
- ``VARIANTS``: variant name -> the feature columns (``"<extractor>.<array>"``) it reads.
- ``DEFAULTS``: the paper's best configuration (plain data; ``search_spaces/<task>.yaml``
  searches around it). ``DEFAULTS["epochs"]`` is the number of ``fit_epoch`` calls.
  Optionally ``VARIANT_DEFAULTS``: variant -> the knobs that differ for that variant.
- ``PAPER_PROTOCOL``: the paper's own evaluation protocol (see ``orchestrate.protocols``).
- ``PAPER_RESULTS``: the numbers the paper reported, as ``PaperResult`` rows.
- ``make_trainer(config, variant, train, seed) -> Trainer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

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
