"""Baseline: standardised features → logistic regression (or an MLP), per modality and fused.

Not a paper: the plain reference beside every paper's model, so a table says how far a
paper's model is from the baseline on the same data and protocol.

- **Columns.** ``modality.audio`` and ``modality.video``: whatever the dataset gives for each
  modality (``orchestrate.features.stored_column``). On a clip dataset (RAVDESS, CREMA-D)
  ``emodal_audio.features`` (68 pyAudioAnalysis short-term features, clip mean) and
  ``wang_texture.lpq`` (the 256-bin LPQ texture histogram of the face): fixed-size
  vectors that need no network weights. On a feature table its ``audio`` and ``video``
  modality groups (``dataset.modalities``).
- **audio / video**: ``StandardScaler`` → classifier, on that modality alone.
- **fused** (early fusion): each modality standardised, concatenated, one classifier.
- **late-fused**: one classifier per modality, then ``late_fusion``: ``average`` (mean of
  the two posteriors: ``VotingClassifier(voting="soft")``) or ``stacking`` (a logistic
  regression on the modality models' out-of-fold posteriors: ``StackingClassifier``,
  stratified folds inside the training split).
- **classifier**: ``logistic`` (multinomial logistic regression, lbfgs, ``C``) or ``mlp``
  (one hidden layer of ``mlp_hidden_units``, ReLU, adam, L2 ``mlp_alpha``), both
  scikit-learn; the search space searches between them.

Every variant is one scikit-learn estimator over ``[audio | video]`` (or one modality):
that estimator is what ``export`` hands MLflow. Classes are the eight emotions; a class
absent from the training split gets probability 0, and UAR averages over the classes in the
test fold (``tasks.common.evaluate``). The MLP's initialisation and the stacking folds are
seeded by ``stream_seed(seed, ...)``; lbfgs logistic regression is deterministic.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import StackingClassifier, VotingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from orchestrate.emotions import EMOTIONS
from tasks.common import (
    MODALITY_PREFIX,
    ExportedModel,
    FeatureSet,
    Knobs,
    PaperResult,
    TaskSpec,
    Variant,
    checked_vectors,
    stream_seed,
)

NAME = "baseline"
CLASSES: tuple[str, ...] = EMOTIONS

AUDIO = f"{MODALITY_PREFIX}.audio"
VIDEO = f"{MODALITY_PREFIX}.video"

CLASSIFIERS = ("logistic", "mlp")
LATE_FUSIONS = ("average", "stacking")
MAX_ITER = 1000  # lbfgs iterations: enough for standardised features of this size
MLP_MAX_ITER = 300  # adam epochs (scikit-learn's 200, a little more for small splits)
STACKING_FOLDS = 5


@dataclass(frozen=True)
class BaselineKnobs(Knobs):
    """The baseline's knobs: scikit-learn's defaults; search_spaces/baseline.yaml searches them."""

    TASK: ClassVar[str] = NAME

    classifier: str = "logistic"  # or "mlp"
    C: float = 1.0  # logistic regression: inverse L2 strength
    mlp_hidden_units: int = 100  # the MLP's one hidden layer (scikit-learn's default)
    mlp_alpha: float = 1e-4  # the MLP's L2 penalty
    late_fusion: str = "average"  # late-fused: "average" posteriors or "stacking"
    epochs: int = 1  # one fit_epoch fits the variant's models

    def check(self) -> None:
        self.require(self.classifier in CLASSIFIERS, "classifier", f"one of {CLASSIFIERS}")
        self.require(self.late_fusion in LATE_FUSIONS, "late_fusion", f"one of {LATE_FUSIONS}")
        self.require(self.C > 0, "C", "> 0")
        self.require(self.mlp_alpha >= 0, "mlp_alpha", ">= 0")
        self.require_at_least(1, "mlp_hidden_units", "epochs")


PROTOCOL = "actor-kfold"  # no paper: the speaker-independent protocol is its own
_CLASSIFIER_KNOBS = ("classifier", "C", "mlp_hidden_units", "mlp_alpha")
VARIANTS: dict[str, Variant] = {
    "audio": Variant((AUDIO,), _CLASSIFIER_KNOBS, PROTOCOL),
    "video": Variant((VIDEO,), _CLASSIFIER_KNOBS, PROTOCOL),
    "fused": Variant((AUDIO, VIDEO), _CLASSIFIER_KNOBS, PROTOCOL),  # early: concatenation
    "late-fused": Variant((AUDIO, VIDEO), (*_CLASSIFIER_KNOBS, "late_fusion"), PROTOCOL),
}
PAPER_RESULTS: tuple[PaperResult, ...] = ()


def modality_vectors(features: FeatureSet, column: str, dim: int | None = None) -> np.ndarray:
    """The column as ``(clips, dim)`` float64; a clear error names the first bad clip."""
    return checked_vectors(features, column, NAME, dim)


class BaselineTrainer:
    """Fits the variant's scikit-learn estimator on one training split."""

    def __init__(self, knobs: BaselineKnobs, variant: str, train: FeatureSet, seed: int) -> None:
        if len(train) == 0:
            raise ValueError(f"{NAME}: the training split has no clips")
        self.knobs = knobs
        self.variant = variant
        self.train = train
        self.seed = seed
        self.columns = VARIANTS[variant].columns
        self.dims = [modality_vectors(train, column).shape[1] for column in self.columns]
        self.model: ClassifierMixin | None = None

    def inputs(self, features: FeatureSet) -> np.ndarray:
        """``[audio | video]`` (or the one modality) per clip, as the estimator reads it."""
        return np.hstack(
            [
                modality_vectors(features, column, dim)
                for column, dim in zip(self.columns, self.dims, strict=True)
            ]
        )

    def classifier(self, stream: int) -> ClassifierMixin:
        """A fresh classifier; ``stream`` keeps two modality MLPs' seeds apart."""
        if self.knobs.classifier == "mlp":
            return MLPClassifier(
                hidden_layer_sizes=(self.knobs.mlp_hidden_units,),
                alpha=self.knobs.mlp_alpha,
                max_iter=MLP_MAX_ITER,
                random_state=stream_seed(self.seed, stream) % 2**31,
            )
        return LogisticRegression(C=self.knobs.C, max_iter=MAX_ITER)

    def build(self) -> ClassifierMixin:
        if self.variant != "late-fused":
            return make_pipeline(StandardScaler(), self.classifier(0))
        start = 0
        branches: list[tuple[str, Pipeline]] = []
        for stream, (column, dim) in enumerate(zip(self.columns, self.dims, strict=True)):
            name = column.split(".", 1)[1]
            picked = ColumnTransformer([(name, StandardScaler(), list(range(start, start + dim)))])
            branches.append((name, make_pipeline(picked, self.classifier(stream))))
            start += dim
        if self.knobs.late_fusion == "average":
            return VotingClassifier(branches, voting="soft")
        counts = np.bincount(self.train.labels)
        smallest = int(counts[counts > 0].min())
        if smallest < 2 or np.count_nonzero(counts) < 2:
            raise ValueError(
                f"{NAME}: stacking needs at least 2 training clips of each of at least 2 classes "
                f"(clips per class: {np.bincount(self.train.labels, minlength=len(CLASSES))})"
            )
        folds = StratifiedKFold(
            min(STACKING_FOLDS, smallest), shuffle=True, random_state=stream_seed(self.seed, 99)
        )
        return StackingClassifier(
            branches,
            final_estimator=LogisticRegression(max_iter=MAX_ITER),
            cv=folds,
            stack_method="predict_proba",
        )

    def fit_epoch(self) -> dict[str, float]:
        """Fit the variant's estimator (deterministic: a second call refits the same)."""
        with warnings.catch_warnings():
            # An MLP that has not converged in MAX_ITER is still a model; the search decides.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model = self.build().fit(self.inputs(self.train), self.train.labels)
        probabilities = self.predict_proba(self.train)
        every_class = list(range(len(CLASSES)))
        return {
            "train_loss": float(log_loss(self.train.labels, probabilities, labels=every_class)),
            "train_accuracy": float(
                accuracy_score(self.train.labels, probabilities.argmax(axis=1))
            ),
        }

    def predict_proba(self, features: FeatureSet) -> np.ndarray:
        """Class probabilities ``(clips, 8)``; classes absent from training get 0."""
        if self.model is None:
            raise RuntimeError(f"{NAME}: call fit_epoch() before predict_proba()")
        out = np.zeros((len(features), len(CLASSES)))
        out[:, self.model.classes_] = self.model.predict_proba(self.inputs(features))
        return out

    def export(self, features: FeatureSet) -> ExportedModel:
        """The fitted scikit-learn estimator over ``[audio | video]`` (or the one modality)."""
        assert self.model is not None
        shape = " | ".join(
            f"{column} ({dim})" for column, dim in zip(self.columns, self.dims, strict=True)
        )
        return ExportedModel(
            "sklearn",
            self.model,
            self.inputs(features),
            f"baseline {self.variant} ({self.knobs.classifier}): inputs are [{shape}] per "
            "clip, unscaled (the estimator standardises them); predict_proba columns are the "
            f"classes present in training ({len(self.model.classes_)} of {len(CLASSES)})",
        )


def make_trainer(
    knobs: BaselineKnobs | Mapping[str, Any], variant: str, train: FeatureSet, seed: int
) -> BaselineTrainer:
    """A trainer for one variant on one training split, seeded by ``seed``."""
    SPEC.variant(variant)
    return BaselineTrainer(BaselineKnobs.of(knobs), variant, train, seed)


SPEC = TaskSpec(
    name=NAME,
    classes=CLASSES,
    variants=VARIANTS,
    knobs=BaselineKnobs,
    paper_results=PAPER_RESULTS,
    make_trainer=make_trainer,
    in_default_run=False,  # swept where a run lists it (the demo's time budget)
)
