"""Mitseas: audio SVM + FER-2013 CNN, stacked by a random-forest meta-classifier.

The paper (``mitseas-2022-stacking-ensemble.txt``), read as a recipe:

- **audio** base model: pyAudioAnalysis mid-term features (50 ms short-term, 1 s mid-term
  mean and std), long-term averaged and normalised (column ``mitseas_audio.features``,
  ``(136,)``) → SVM with probability outputs: ``StandardScaler`` + ``SVC``, Platt-calibrated
  on cross-validated decision values (``CalibratedClassifierCV(..., ensemble=False)``, what
  ``SVC(probability=True)`` does and scikit-learn 1.9 deprecates it in favour of).
- **video** base model: a CNN pretrained on FER-2013, run on every frame's face and averaged
  over frames (column ``mitseas_fer.probabilities``, ``(7,)`` in FER-2013 order). It is used
  as is, never retrained, as in the paper.
- **fused**: stacking. The SVM is trained on the clips of 8 actors, a random forest on the
  base models' probabilities for the clips of 12 other actors, and the test set is the last
  4 actors (protocol ``actor-8-12-4``). Inside ``make_trainer`` the training split's actors
  are divided 8:12 by ``split_base_meta_actors`` (seeded).
- The **audio** row is the fused model's base SVM alone: trained on the same base actors
  (the same seeded split), as the paper's audio SVM was trained on its 8 base actors (the
  paper also names a 0.9 train split inside them, not reproduced here). So the audio and
  fused rows compare one SVM with and without the stacking. **audio-all-actors** trains
  the SVM on every training actor instead (not a paper row: what more audio data buys).

Classes. The text lists seven emotions (calm, happy, sad, angry, fearful, surprise, disgust),
but both confusion tables have five (anger, fear, disgust, happiness, sadness), 32 test clips
each (4 actors x 8 clips), and every reported number follows from those five-class tables:
combined accuracy 71/160 = 0.44375 and macro-F1 0.4101; audio accuracy 59/160 = 0.36875 and
macro-F1 0.3743. So ``CLASSES`` is those five, in the tables' order.

FER-2013 → ``CLASSES``: angry→angry, disgust→disgust, fear→fearful, happy→happy, sad→sad.
Surprise and neutral have no class here and are dropped; the remaining five are renormalised
to sum to one (a clip with no mass on them gets the uniform distribution: the CNN has no
opinion among these classes). The meta-classifier reads all seven FER probabilities, as the
base model outputs them (neutral mass, the CNN's main bias in the paper, is information too).

Not stated in the paper, chosen here: the SVM's C, kernel and gamma (sklearn's defaults:
C=1, RBF, gamma="scale") and the forest's size and depth (sklearn's defaults: 100 trees,
unlimited depth); all are searched (``search_spaces/mitseas.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from tasks.common import (
    ExportedModel,
    FeatureSet,
    Knobs,
    PaperResult,
    TaskSpec,
    Variant,
    stream_seed,
)
from tasks.common import checked_vectors as common_checked_vectors

NAME = "mitseas"
CLASSES: tuple[str, ...] = ("angry", "fearful", "disgust", "happy", "sad")

AUDIO_COLUMN = "mitseas_audio.features"
FER_COLUMN = "mitseas_fer.probabilities"

FER_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# FER-2013 class -> this task's class; FER classes missing here have no class in CLASSES.
FER_TO_CLASS: dict[str, str] = {
    "angry": "angry",
    "disgust": "disgust",
    "fear": "fearful",
    "happy": "happy",
    "sad": "sad",
}

SVM_KERNELS = ("linear", "rbf", "poly", "sigmoid")


@dataclass(frozen=True)
class MitseasKnobs(Knobs):
    """Mitseas' knobs: the paper names the models, not their settings (scikit-learn's)."""

    TASK: ClassVar[str] = NAME

    svm_C: float = 1.0
    svm_gamma: str | float = "scale"  # or > 0 ("scale" = 1 / (features x variance))
    svm_kernel: str = "rbf"  # the paper relies on "the kernel trick"
    rf_n_estimators: int = 100
    rf_max_depth: int | None = None  # None: grow until leaves are pure
    epochs: int = 1  # one fit_epoch fits every model

    def check(self) -> None:
        self.require(self.svm_C > 0, "svm_C", "> 0")
        gamma = self.svm_gamma
        self.require(
            gamma in ("scale", "auto") or (isinstance(gamma, float) and gamma > 0),
            "svm_gamma",
            '"scale", "auto" or > 0',
        )
        self.require(
            self.svm_kernel in SVM_KERNELS, "svm_kernel", f"one of {', '.join(SVM_KERNELS)}"
        )
        self.require_at_least(1, "rf_n_estimators", "epochs")
        depth = self.rf_max_depth
        self.require(depth is None or depth >= 1, "rf_max_depth", "null or >= 1")


# The paper's 8 base-model actors : 12 meta-classifier actors.
BASE_FRACTION = 8 / 20

PAPER_PROTOCOL = "actor-8-12-4"

_SVM_KNOBS = ("svm_C", "svm_gamma", "svm_kernel")
# The knobs each variant reads: the video row is the pretrained CNN alone (nothing to search).
VARIANTS: dict[str, Variant] = {
    "audio": Variant((AUDIO_COLUMN,), _SVM_KNOBS, PAPER_PROTOCOL),  # the SVM on the base actors
    # the SVM on every training actor
    "audio-all-actors": Variant((AUDIO_COLUMN,), _SVM_KNOBS, PAPER_PROTOCOL),
    "video": Variant((FER_COLUMN,), (), PAPER_PROTOCOL),
    "fused": Variant(
        (AUDIO_COLUMN, FER_COLUMN), (*_SVM_KNOBS, "rf_n_estimators", "rf_max_depth"), PAPER_PROTOCOL
    ),
}
# The variants whose predictions are the audio SVM's alone.
SVM_VARIANTS = ("audio", "audio-all-actors")

_TEST_SET = "their 4 test actors (32 clips per class, 5 classes)"
PAPER_RESULTS: tuple[PaperResult, ...] = (
    PaperResult(
        "audio",
        "accuracy",
        0.368,
        PAPER_PROTOCOL,
        f"SVM trained on the 8 base actors (theirs with a 0.9 train split); {_TEST_SET}",
    ),
    PaperResult("audio", "macro_f1", 0.374, PAPER_PROTOCOL, f"F1 of Table 2; {_TEST_SET}"),
    PaperResult(
        "video",
        "accuracy",
        0.237,
        PAPER_PROTOCOL,
        f"pretrained FER-2013 CNN (theirs VGG-19), frame-averaged, not retrained; {_TEST_SET}",
    ),
    PaperResult("video", "macro_f1", 0.233, PAPER_PROTOCOL, f"pretrained FER CNN; {_TEST_SET}"),
    PaperResult(
        "fused",
        "accuracy",
        0.443,
        PAPER_PROTOCOL,
        f"random forest on base-model probabilities, 12 meta actors; Table 1; {_TEST_SET}",
    ),
    PaperResult("fused", "macro_f1", 0.410, PAPER_PROTOCOL, f"F1 of Table 1; {_TEST_SET}"),
)


# --- the actor split -----------------------------------------------------------------------


def split_base_meta_actors(
    actors: np.ndarray, seed: int, base_fraction: float = BASE_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Split the distinct training actors into base-model actors and meta-classifier actors.

    Disjoint, deterministic by ``seed`` (independent of clip order), each part non-empty; on
    20 actors the paper's 8 / 12.
    """
    distinct = np.unique(np.asarray(actors))
    if len(distinct) < 2:
        raise ValueError(
            f"{NAME}: stacking needs at least 2 training actors (base + meta), got {len(distinct)}"
        )
    if not 0 < base_fraction < 1:
        raise ValueError(f"{NAME}: base_fraction must be in (0, 1), got {base_fraction}")
    shuffled = np.random.default_rng(seed).permutation(distinct)
    n_base = min(max(1, round(base_fraction * len(distinct))), len(distinct) - 1)
    return np.sort(shuffled[:n_base]), np.sort(shuffled[n_base:])


# --- features ------------------------------------------------------------------------------


def checked_vectors(features: FeatureSet, column: str, dim: int | None = None) -> np.ndarray:
    """The column as a ``(clips, dim)`` array (``tasks.common.checked_vectors``); FER
    probabilities must not be negative.

    ``dim=None`` takes the first clip's length (the audio extractor's size follows its
    parameters: 136 by default) and holds every other clip to it.
    """
    vectors = common_checked_vectors(features, column, NAME, dim)
    if column == FER_COLUMN and (vectors < 0).any():
        clip_id = features.clip_ids[int(np.flatnonzero((vectors < 0).any(axis=1))[0])]
        raise ValueError(f"clip {clip_id}: {column} holds negative probabilities")
    return vectors


def fer_to_class_probabilities(fer: np.ndarray) -> np.ndarray:
    """FER-2013 probabilities ``(clips, 7)`` → ``(clips, len(CLASSES))``, renormalised."""
    mapped = np.zeros((len(fer), len(CLASSES)))
    for fer_index, fer_class in enumerate(FER_CLASSES):
        if fer_class in FER_TO_CLASS:
            mapped[:, CLASSES.index(FER_TO_CLASS[fer_class])] += fer[:, fer_index]
    mass = mapped.sum(axis=1, keepdims=True)
    uniform = np.full_like(mapped, 1.0 / len(CLASSES))
    return np.where(mass > 0, mapped / np.where(mass > 0, mass, 1.0), uniform)


def class_probabilities(
    model: CalibratedClassifierCV | RandomForestClassifier, x: np.ndarray
) -> np.ndarray:
    """``predict_proba`` spread over every class (a class absent from training gets 0)."""
    out = np.zeros((len(x), len(CLASSES)))
    out[:, model.classes_] = model.predict_proba(x)
    return out


# --- training ------------------------------------------------------------------------------


class MitseasTrainer:
    """Fits the variant's models on one training split; ``fit_epoch`` fits them all."""

    def __init__(self, knobs: MitseasKnobs, variant: str, train: FeatureSet, seed: int) -> None:
        self.knobs = knobs
        self.variant = variant
        self.train = train
        self.seed = seed
        self.svm: CalibratedClassifierCV | None = None
        self.forest: RandomForestClassifier | None = None
        self.base_actors = self.meta_actors = np.array([])
        if len(train) == 0:
            raise ValueError(f"{NAME}: the training split has no clips")
        self.audio_dim = 0
        if variant in (*SVM_VARIANTS, "fused"):
            self.audio_dim = checked_vectors(train, AUDIO_COLUMN).shape[1]
        if variant in ("video", "fused"):
            checked_vectors(train, FER_COLUMN, len(FER_CLASSES))
        if variant in ("audio", "fused"):
            # One split for both rows: the audio row's SVM is the fused row's base SVM.
            self.base_actors, self.meta_actors = split_base_meta_actors(train.actors, seed)

    def _fit_svm(self, clips: FeatureSet, who: str) -> CalibratedClassifierCV:
        """Scaler + SVM, Platt-calibrated on up to 5 stratified, unshuffled folds."""
        counts = np.bincount(clips.labels)
        counts = counts[counts > 0]
        if len(counts) < 2 or counts.min() < 2:
            raise ValueError(
                f"{NAME}: the SVM's {who} need at least 2 clips of each of at least 2 classes "
                f"(clips per class: {np.bincount(clips.labels, minlength=len(CLASSES)).tolist()})"
            )
        svm = make_pipeline(
            StandardScaler(),
            SVC(
                C=self.knobs.svm_C,
                kernel=self.knobs.svm_kernel,
                gamma=self.knobs.svm_gamma,
            ),
        )
        calibrated = CalibratedClassifierCV(
            svm, method="sigmoid", cv=int(min(5, counts.min())), ensemble=False
        )
        return calibrated.fit(checked_vectors(clips, AUDIO_COLUMN, self.audio_dim), clips.labels)

    def _meta_features(self, clips: FeatureSet) -> np.ndarray:
        """[SVM class probabilities, the FER CNN's 7 probabilities] per clip."""
        assert self.svm is not None
        audio = class_probabilities(self.svm, checked_vectors(clips, AUDIO_COLUMN, self.audio_dim))
        return np.hstack([audio, checked_vectors(clips, FER_COLUMN, len(FER_CLASSES))])

    def fit_epoch(self) -> dict[str, float]:
        """Fit every model of the variant (deterministic: a second call refits the same)."""
        base_who = f"base actors ({', '.join(map(str, self.base_actors))})"
        if self.variant == "audio-all-actors":
            self.svm = self._fit_svm(self.train, "training actors")
            fitted_on = self.train
        elif self.variant == "audio":
            fitted_on = self._actor_clips(self.base_actors)
            self.svm = self._fit_svm(fitted_on, base_who)
        elif self.variant == "video":
            fitted_on = self.train  # the pretrained CNN is not trained here
        else:
            base = self._actor_clips(self.base_actors)
            meta = self._actor_clips(self.meta_actors)
            self.svm = self._fit_svm(base, base_who)
            self.forest = RandomForestClassifier(
                n_estimators=self.knobs.rf_n_estimators,
                max_depth=self.knobs.rf_max_depth,
                random_state=stream_seed(self.seed),
                n_jobs=1,  # Ray gives each trial its own CPUs
            ).fit(self._meta_features(meta), meta.labels)
            fitted_on = meta
        probabilities = self.predict_proba(fitted_on)
        every_class = list(range(len(CLASSES)))
        return {
            "train_loss": float(log_loss(fitted_on.labels, probabilities, labels=every_class)),
            "train_accuracy": float(accuracy_score(fitted_on.labels, probabilities.argmax(axis=1))),
        }

    def _actor_clips(self, actors: np.ndarray) -> FeatureSet:
        """The training clips of ``actors``."""
        return self.train.subset(np.flatnonzero(np.isin(self.train.actors, actors)))

    def predict_proba(self, features: FeatureSet) -> np.ndarray:
        """Class probabilities ``(clips, 5)``: the SVM's, the mapped CNN's, or the forest's."""
        if self.variant == "video":
            return fer_to_class_probabilities(
                checked_vectors(features, FER_COLUMN, len(FER_CLASSES))
            )
        if self.svm is None:
            raise RuntimeError(f"{NAME}: call fit_epoch() before predict_proba()")
        if self.variant in SVM_VARIANTS:
            return class_probabilities(
                self.svm, checked_vectors(features, AUDIO_COLUMN, self.audio_dim)
            )
        assert self.forest is not None
        return class_probabilities(self.forest, self._meta_features(features))

    def export(self, features: FeatureSet) -> ExportedModel | None:
        """The calibrated SVM (audio rows) or the stacking forest (fused); video trains nothing."""
        if self.variant == "video":
            return None  # the FER CNN is pretrained; its probabilities are mapped, not fitted
        if self.variant in SVM_VARIANTS:
            assert self.svm is not None
            return ExportedModel(
                "sklearn",
                self.svm,
                checked_vectors(features, AUDIO_COLUMN, self.audio_dim),
                "Mitseas audio: scaler + SVM, Platt-calibrated, over the pyAudioAnalysis "
                f"mid-term vector; predict_proba columns are the classes present in training "
                f"({len(self.svm.classes_)} of {len(CLASSES)})",
            )
        assert self.forest is not None
        return ExportedModel(
            "sklearn",
            self.forest,
            self._meta_features(features),
            "Mitseas fused: the random-forest meta-classifier over [base SVM class "
            "probabilities, FER-2013 CNN's 7 mean probabilities] per clip",
        )


def make_trainer(
    knobs: MitseasKnobs | Mapping[str, Any], variant: str, train: FeatureSet, seed: int
) -> MitseasTrainer:
    """A trainer for one variant on one training split, seeded by ``seed``.

    ``knobs``: the knobs, or a mapping of the knobs that differ from the defaults.
    """
    SPEC.variant(variant)
    return MitseasTrainer(MitseasKnobs.of(knobs), variant, train, seed)


SPEC = TaskSpec(
    name=NAME,
    classes=CLASSES,
    variants=VARIANTS,
    knobs=MitseasKnobs,
    paper_results=PAPER_RESULTS,
    make_trainer=make_trainer,
)
