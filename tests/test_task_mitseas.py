"""The Mitseas task: the 8/12/4 actor split, shapes, the FER mapping, stacking, seeding, config.

Synthetic FeatureSets of the store's shapes: a (136,) audio vector and a (7,) FER-2013
probability vector per clip, 24 RAVDESS-like actors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestrate.protocols import make_folds
from orchestrate.search_spaces import load_search_space
from tasks import mitseas
from tasks.common import FeatureSet, evaluate

RAVDESS_ACTORS = np.array([f"{a:02d}" for a in range(1, 25)])
SMALL = {"rf_n_estimators": 25}


# Designed like the demo corpus: audio alone confuses angry/happy and fearful/sad, the FER
# CNN alone confuses angry/fearful and happy/sad, so only both together separate all five.
AUDIO_GROUP = {"angry": 0, "happy": 0, "fearful": 1, "sad": 1, "disgust": 2}
FER_GROUP = {
    "angry": "angry",
    "fearful": "angry",
    "happy": "happy",
    "sad": "happy",
    "disgust": "disgust",
}


def synthetic_clips(
    actors: np.ndarray, clips_per_actor: int = 10, seed: int = 0, signal: float = 0.0
) -> FeatureSet:
    """Each actor's clips cycle through the classes; ``signal`` > 0 makes both modalities useful."""
    rng = np.random.default_rng(seed)
    clip_actors = np.repeat(actors, clips_per_actor)
    labels = np.arange(len(clip_actors)) % len(mitseas.CLASSES)
    audio, fer = [], []
    for label in labels:
        emotion = mitseas.CLASSES[label]
        vector = rng.normal(size=136)
        vector[AUDIO_GROUP[emotion]] += 3.0 * signal
        audio.append(vector.astype(np.float32))
        logits = rng.normal(size=7)
        logits[mitseas.FER_CLASSES.index(FER_GROUP[emotion])] += 3.0 * signal
        logits[mitseas.FER_CLASSES.index("neutral")] += 1.0  # the CNN's neutral bias
        fer.append((np.exp(logits) / np.exp(logits).sum()).astype(np.float32))
    return FeatureSet(
        clip_ids=[f"clip-{i}" for i in range(len(labels))],
        actors=clip_actors,
        labels=labels,
        columns={mitseas.AUDIO_COLUMN: audio, mitseas.FER_COLUMN: fer},
        classes=mitseas.CLASSES,
    )


def test_the_split_of_20_training_actors_is_the_papers_8_and_12() -> None:
    base, meta = mitseas.split_base_meta_actors(RAVDESS_ACTORS[:20], seed=0)
    assert (len(base), len(meta)) == (8, 12)
    assert not set(base) & set(meta)
    assert set(base) | set(meta) == set(RAVDESS_ACTORS[:20])


def test_the_split_is_deterministic_by_seed_and_ignores_clip_order() -> None:
    clip_actors = np.repeat(RAVDESS_ACTORS[:20], 3)
    first = mitseas.split_base_meta_actors(clip_actors, seed=4)
    shuffled = np.random.default_rng(1).permutation(clip_actors)
    again = mitseas.split_base_meta_actors(shuffled, seed=4)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    other = mitseas.split_base_meta_actors(clip_actors, seed=5)
    assert set(first[0]) != set(other[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_base_meta_and_test_actors_never_overlap_under_the_paper_protocol(seed: int) -> None:
    clips = synthetic_clips(RAVDESS_ACTORS, clips_per_actor=5)
    folds = make_folds(mitseas.PAPER_PROTOCOL, clips.actors, clips.labels, n_folds=6, seed=seed)
    assert len(folds) == 6
    for train_index, test_index in folds:
        train = clips.subset(train_index)
        trainer = mitseas.make_trainer(SMALL, "fused", train, seed=seed)
        base, meta = set(trainer.base_actors), set(trainer.meta_actors)
        test = set(clips.actors[test_index])
        assert (len(base), len(meta), len(test)) == (8, 12, 4)
        assert not base & meta and not base & test and not meta & test
        assert base | meta == set(train.actors)


def test_the_fused_models_are_trained_on_their_own_actors() -> None:
    train = synthetic_clips(RAVDESS_ACTORS[:20], signal=1.0)
    trainer = mitseas.make_trainer(SMALL, "fused", train, seed=0)
    trainer.fit_epoch()
    base_clips = np.isin(train.actors, trainer.base_actors).sum()
    meta_clips = np.isin(train.actors, trainer.meta_actors).sum()
    assert trainer.svm is not None and trainer.forest is not None
    assert trainer.svm.calibrated_classifiers_[0].estimator[-1].shape_fit_[0] == base_clips == 80
    assert trainer.forest.n_features_in_ == len(mitseas.CLASSES) + len(mitseas.FER_CLASSES)
    assert trainer.forest.estimators_[0].tree_.weighted_n_node_samples[0] == meta_clips == 120


@pytest.mark.parametrize("seed", [0, 3])
def test_the_audio_row_is_the_fused_rows_base_svm(seed: int) -> None:
    """Same seed, same base actors: the audio SVM is the one the fused model stacks on."""
    train = synthetic_clips(RAVDESS_ACTORS[:20], signal=1.0)
    test = synthetic_clips(RAVDESS_ACTORS[20:], seed=1, signal=1.0)
    audio = mitseas.make_trainer(SMALL, "audio", train, seed=seed)
    fused = mitseas.make_trainer(SMALL, "fused", train, seed=seed)
    np.testing.assert_array_equal(audio.base_actors, fused.base_actors)
    assert len(audio.base_actors) == 8  # the paper's 8 base actors of 20
    audio.fit_epoch()
    fused.fit_epoch()
    assert audio.svm is not None and fused.svm is not None
    assert audio.svm.calibrated_classifiers_[0].estimator[-1].shape_fit_[0] == 80  # 8 x 10 clips
    x = np.stack(test.columns[mitseas.AUDIO_COLUMN]).astype(np.float64)
    np.testing.assert_array_equal(
        audio.predict_proba(test), mitseas.class_probabilities(fused.svm, x)
    )


def test_the_audio_all_actors_row_trains_its_svm_on_every_training_actor() -> None:
    train = synthetic_clips(RAVDESS_ACTORS[:20], signal=1.0)
    trainer = mitseas.make_trainer(SMALL, "audio-all-actors", train, seed=0)
    trainer.fit_epoch()
    assert trainer.svm is not None and trainer.forest is None
    assert trainer.svm.calibrated_classifiers_[0].estimator[-1].shape_fit_[0] == len(train) == 200
    assert mitseas.VARIANTS["audio-all-actors"] == mitseas.VARIANTS["audio"]


@pytest.mark.parametrize("variant", ["audio", "fused"])
def test_too_few_actors_for_the_base_meta_split_is_a_clear_error(variant: str) -> None:
    with pytest.raises(ValueError, match="at least 2 training actors"):
        mitseas.make_trainer(SMALL, variant, synthetic_clips(RAVDESS_ACTORS[:1]), seed=0)
    # The all-actors SVM needs no split.
    mitseas.make_trainer(SMALL, "audio-all-actors", synthetic_clips(RAVDESS_ACTORS[:1]), seed=0)


@pytest.mark.parametrize("variant", list(mitseas.VARIANTS))
def test_probabilities_have_one_row_per_clip_and_one_column_per_class(variant: str) -> None:
    trainer = mitseas.make_trainer(SMALL, variant, synthetic_clips(RAVDESS_ACTORS[:20]), seed=0)
    metrics = trainer.fit_epoch()
    assert np.isfinite(metrics["train_loss"]) and 0 <= metrics["train_accuracy"] <= 1
    probabilities = trainer.predict_proba(synthetic_clips(RAVDESS_ACTORS[20:], 3, seed=1))
    assert probabilities.shape == (12, len(mitseas.CLASSES)) == (12, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_fer_probabilities_map_onto_the_tasks_classes() -> None:
    # FER-2013 order: angry, disgust, fear, happy, sad, surprise, neutral
    fer = np.array([[0.1, 0.2, 0.3, 0.1, 0.1, 0.1, 0.1], [0, 0, 0, 0, 0, 0.5, 0.5]])
    mapped = mitseas.fer_to_class_probabilities(fer)
    expected = {"angry": 0.1, "fearful": 0.3, "disgust": 0.2, "happy": 0.1, "sad": 0.1}
    np.testing.assert_allclose(mapped[0], [expected[c] / 0.8 for c in mitseas.CLASSES])
    np.testing.assert_allclose(mapped[1], np.full(5, 0.2))  # no mass on these classes: uniform


def test_the_video_model_is_the_pretrained_cnn_as_is() -> None:
    train, test = synthetic_clips(RAVDESS_ACTORS[:20]), synthetic_clips(RAVDESS_ACTORS[20:], seed=1)
    trainer = mitseas.make_trainer(SMALL, "video", train, seed=0)
    trainer.fit_epoch()
    fer = np.stack(test.columns[mitseas.FER_COLUMN]).astype(np.float64)
    np.testing.assert_allclose(trainer.predict_proba(test), mitseas.fer_to_class_probabilities(fer))


@pytest.mark.parametrize("seed", [0, 1])
def test_stacking_beats_each_base_model_on_unseen_actors(seed: int) -> None:
    train = synthetic_clips(RAVDESS_ACTORS[:20], clips_per_actor=20, signal=1.0)
    test = synthetic_clips(RAVDESS_ACTORS[20:], clips_per_actor=20, seed=1, signal=1.0)
    accuracy = {}
    for variant in mitseas.VARIANTS:
        trainer = mitseas.make_trainer(SMALL, variant, train, seed=seed)
        trainer.fit_epoch()
        accuracy[variant] = evaluate(test.labels, trainer.predict_proba(test), 5).accuracy
    # Each base model can tell at most 3 of the 5 classes apart (0.6); chance is 0.2.
    assert 0.4 < accuracy["audio"] <= 0.65 and 0.4 < accuracy["video"] <= 0.65
    assert 0.4 < accuracy["audio-all-actors"] <= 0.65
    assert accuracy["fused"] > max(accuracy["audio"], accuracy["video"]) + 0.15


@pytest.mark.parametrize("variant", ["audio", "fused"])
def test_same_seed_same_result(variant: str) -> None:
    train = synthetic_clips(RAVDESS_ACTORS[:20], signal=0.5)
    test = synthetic_clips(RAVDESS_ACTORS[20:], seed=1, signal=0.5)

    def trained(seed: int) -> np.ndarray:
        trainer = mitseas.make_trainer(SMALL, variant, train, seed)
        trainer.fit_epoch()
        return trainer.predict_proba(test)

    first = trained(3)
    np.testing.assert_array_equal(first, trained(3))
    # The seed picks the base actors (the audio SVM's data) and seeds the forest.
    assert not np.array_equal(first, trained(4))


def test_unknown_variant_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="audio, audio-all-actors, video, fused"):
        mitseas.make_trainer(SMALL, "text", synthetic_clips(RAVDESS_ACTORS[:4]), seed=0)


@pytest.mark.parametrize(
    "bad",
    [
        {"svm_kernel": "cubic"},
        {"svm_C": 0},
        {"svm_gamma": "wide"},
        {"rf_n_estimators": 0},
        {"rf_max_depth": 2.5},
        {"rf_depth": 3},
    ],
)
def test_bad_config_is_a_clear_error(bad: dict) -> None:
    with pytest.raises(ValueError, match=f"mitseas\\.{next(iter(bad))}: "):
        mitseas.make_trainer(bad, "fused", synthetic_clips(RAVDESS_ACTORS[:4]), seed=0)


def test_bad_feature_vectors_name_the_clip() -> None:
    clips = synthetic_clips(RAVDESS_ACTORS[:4])
    clips.columns[mitseas.AUDIO_COLUMN][7] = np.full(136, np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="clip-7: mitseas_audio.features holds NaN"):
        mitseas.make_trainer(SMALL, "audio", clips, seed=0)
    trainer = mitseas.make_trainer(SMALL, "fused", synthetic_clips(RAVDESS_ACTORS[:4]), seed=0)
    trainer.fit_epoch()
    test = synthetic_clips(RAVDESS_ACTORS[4:5], clips_per_actor=3)
    test.columns[mitseas.FER_COLUMN][2] = np.ones(5, dtype=np.float32)
    with pytest.raises(ValueError, match=r"clip-2: mitseas_fer.probabilities has shape \(5,\)"):
        trainer.predict_proba(test)


def test_paper_facts() -> None:
    assert mitseas.CLASSES == ("angry", "fearful", "disgust", "happy", "sad")
    assert mitseas.PAPER_PROTOCOL == "actor-8-12-4"
    reported = {(r.variant, r.metric): r.value for r in mitseas.PAPER_RESULTS}
    assert reported == {
        ("audio", "accuracy"): 0.368,
        ("audio", "macro_f1"): 0.374,
        ("video", "accuracy"): 0.237,
        ("video", "macro_f1"): 0.233,
        ("fused", "accuracy"): 0.443,
        ("fused", "macro_f1"): 0.410,
    }
    audio_accuracy = next(
        r for r in mitseas.PAPER_RESULTS if (r.variant, r.metric) == ("audio", "accuracy")
    )
    assert "8 base actors" in audio_accuracy.note
    # The paper's Table 1 (combined model) gives exactly its reported accuracy and F1.
    table_1 = np.array(
        [[23, 0, 2, 0, 7], [8, 4, 15, 0, 5], [4, 11, 2, 0, 15], [2, 2, 4, 13, 11], [1, 2, 0, 0, 29]]
    )
    labels = np.repeat(np.arange(5), table_1.sum(axis=1))
    predicted = np.concatenate([np.repeat(np.arange(5), row) for row in table_1])
    metrics = evaluate(labels, np.eye(5)[predicted], 5)
    assert metrics.accuracy == pytest.approx(0.443, abs=1e-3)
    assert metrics.macro_f1 == pytest.approx(0.410, abs=1e-3)


def test_search_space_values_are_accepted_by_the_task() -> None:
    """Every knob the YAML searches is a DEFAULTS key, and the task accepts its extremes."""
    load_search_space("mitseas")  # the sweep stage's own validation
    space_file = Path(mitseas.__file__).parents[1] / "search_spaces" / "mitseas.yaml"
    space = yaml.safe_load(space_file.read_text())
    assert space["task"] == "mitseas" and space["mode"] == "max"
    assert set(space["params"]) == {
        "svm_C",
        "svm_gamma",
        "svm_kernel",
        "rf_n_estimators",
        "rf_max_depth",
    }
    for name, spec in space["params"].items():
        if spec["type"] == "choice":
            values = spec["values"]
        elif spec["type"] == "randint":
            values = [spec["low"], spec["high"] - 1]  # high is exclusive
        else:
            values = [spec["low"], spec["high"] * 0.999]
        for value in values:
            mitseas.SPEC.config("fused", {name: value})
