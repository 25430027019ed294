"""Evaluation protocols: folds are actor-disjoint by default and cover every clip once."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrate.protocols import RAVDESS_ACTOR_FOLDS, make_folds


def _clips(actors: int, per_actor: int = 16, classes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    actor_ids = np.repeat([f"{a:02d}" for a in range(1, actors + 1)], per_actor)
    labels = np.tile(np.arange(classes), actors * per_actor // classes)
    return actor_ids, labels


def test_ravdess_actor_folds_follow_spec() -> None:
    actors, labels = _clips(24)
    folds = make_folds("actor-kfold", actors, labels, 5, seed=0)
    assert [sorted(set(actors[test].astype(int))) for _, test in folds] == [
        sorted(fold) for fold in RAVDESS_ACTOR_FOLDS
    ]


@pytest.mark.parametrize("protocol", ["actor-kfold", "actor-8-12-4"])
def test_actor_protocols_never_share_an_actor(protocol: str) -> None:
    actors, labels = _clips(12)
    folds = make_folds(protocol, actors, labels, 4, seed=3)
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(len(actors)))
    for train, test in folds:
        assert not set(actors[train]) & set(actors[test])
    if protocol == "actor-8-12-4":
        assert all(len(set(actors[test])) == 4 for _, test in folds)


def test_stratified_protocols_and_seeds() -> None:
    actors, labels = _clips(4)
    ((train, test),) = make_folds("random-80-20", actors, labels, 5, seed=0)
    assert abs(len(test) - 0.2 * len(labels)) <= 1 and not set(train) & set(test)
    folds = make_folds("stratified-10fold", actors, labels, 5, seed=0)
    assert len(folds) == 8  # capped by the smallest class (8 clips)
    again = make_folds("stratified-10fold", actors, labels, 5, seed=0)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again, strict=True))


def test_impossible_splits_are_explained() -> None:
    actors, labels = _clips(1)
    with pytest.raises(ValueError, match="at least 2 actors"):
        make_folds("actor-kfold", actors, labels, 5, seed=0)
    with pytest.raises(ValueError, match="unknown protocol"):
        make_folds("leave-one-out", actors, labels, 5, seed=0)
