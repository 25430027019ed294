"""The Song task: shapes, variable-length sequences, one optimisation step, seeding, config checks.

Every test builds a synthetic FeatureSet of the store's shapes ((T, 512) VGG16 features,
(T, 13) MFCC) with varying T; GRUs are kept small so the file runs in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from orchestrate.search_spaces import load_search_space
from tasks import song
from tasks.common import FeatureSet, evaluate


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny GRUs run fastest on one thread (and two threads thrash on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = {
    "video_gru_units": 16,
    "audio_gru_units": 16,
    "audio_gru_layers": 2,
    "fc_units": 8,
    "batch_size": 8,
    "epochs": 2,
}


def synthetic_clips(n: int, seed: int = 0, signal: float = 0.0) -> FeatureSet:
    """Clips with random lengths; ``signal`` shifts every frame by the class index (learnable)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(song.CLASSES)
    video, audio = [], []
    for label in labels:
        video.append(
            rng.normal(size=(rng.integers(3, 12), 512)).astype(np.float32) + signal * label
        )
        audio.append(
            rng.normal(size=(rng.integers(20, 60), 13)).astype(np.float32) + signal * label
        )
    return FeatureSet(
        clip_ids=[f"clip-{i}" for i in range(n)],
        actors=np.array([f"{i % 4 + 1:02d}" for i in range(n)]),
        labels=labels,
        columns={song.VIDEO_COLUMN: video, song.AUDIO_COLUMN: audio},
        classes=song.CLASSES,
    )


@pytest.mark.parametrize("variant", list(song.VARIANTS))
def test_probabilities_have_one_row_per_clip_and_one_column_per_class(variant: str) -> None:
    trainer = song.make_trainer(SMALL, variant, synthetic_clips(20), seed=0)
    trainer.fit_epoch()
    probabilities = trainer.predict_proba(synthetic_clips(11, seed=1))
    assert probabilities.shape == (11, len(song.CLASSES)) == (11, 8)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("variant", list(song.VARIANTS))
def test_padding_does_not_change_a_clips_prediction(variant: str) -> None:
    """A short clip predicted alone equals the same clip in a batch padded to longer ones."""
    trainer = song.make_trainer(SMALL, variant, synthetic_clips(20), seed=0)
    trainer.fit_epoch()
    clips = synthetic_clips(12, seed=2)
    shortest = int(np.argmin([len(a) for a in clips.columns[song.AUDIO_COLUMN]]))
    in_batch = trainer.predict_proba(clips)[shortest]
    alone = trainer.predict_proba(clips.subset([shortest]))[0]
    np.testing.assert_allclose(alone, in_batch, rtol=1e-5, atol=1e-6)


def test_the_gru_reads_each_clips_last_valid_frame() -> None:
    """Frames beyond a clip's length are ignored; its own frames are not."""
    torch.manual_seed(0)  # a draw whose ReLU units are not all off for these inputs
    branch = song.SequenceBranch(
        13, gru_layers=2, gru_units=6, fc_units=4, batch_norm=False, dropout=0.0
    )
    branch.eval()
    clip = np.random.default_rng(0).normal(size=(1, 7, 13)).astype(np.float32)
    padded = torch.zeros(2, 10, 13)
    padded[0, :7] = torch.from_numpy(clip[0])
    padded[1, :7] = torch.from_numpy(clip[0])
    padded[1, 7:] = 100.0  # garbage after clip 1's length
    out = branch(padded, torch.tensor([7, 7]))
    torch.testing.assert_close(out[0], out[1])
    shorter = branch(padded, torch.tensor([7, 5]))
    assert not torch.allclose(shorter[0], shorter[1])


@pytest.mark.parametrize("variant", list(song.VARIANTS))
@pytest.mark.parametrize("batch_norm", [True, False])
def test_one_optimisation_step_lowers_the_loss_on_a_tiny_batch(
    variant: str, batch_norm: bool
) -> None:
    # The whole tiny set is one batch: epoch 1's loss is measured before its single step,
    # epoch 2's after it (no dropout, so the two losses see the same network function).
    config = {
        **SMALL,
        "batch_size": 16,
        "lr": 1.0e-2,
        "video_batch_norm": batch_norm,
        "audio_batch_norm": batch_norm,
    }
    trainer = song.make_trainer(config, variant, synthetic_clips(8), seed=3)
    before = trainer.fit_epoch()["train_loss"]
    after = trainer.fit_epoch()["train_loss"]
    assert after < before


def test_a_last_batch_of_one_clip_does_not_break_batch_norm() -> None:
    trainer = song.make_trainer({**SMALL, "batch_size": 4}, "fused", synthetic_clips(9), seed=0)
    metrics = trainer.fit_epoch()
    assert np.isfinite(metrics["train_loss"])


def test_same_seed_same_result_and_another_seed_another() -> None:
    train, test = synthetic_clips(24), synthetic_clips(10, seed=5)

    def trained(seed: int) -> np.ndarray:
        trainer = song.make_trainer(SMALL, "fused", train, seed=seed)
        for _ in range(2):
            trainer.fit_epoch()
        return trainer.predict_proba(test)

    first = trained(7)
    np.testing.assert_array_equal(first, trained(7))
    assert not np.allclose(first, trained(8))


def test_folds_trained_in_lockstep_match_folds_trained_alone() -> None:
    """The sweep trains every fold's trainer an epoch at a time, interleaved; dropout included."""
    config = {**SMALL, "dropout": 0.3}
    fold_a, fold_b, test = (
        synthetic_clips(16, seed=1),
        synthetic_clips(16, seed=2),
        synthetic_clips(5),
    )
    alone = song.make_trainer(config, "fused", fold_a, seed=0)
    for _ in range(2):
        alone.fit_epoch()
    in_lockstep = song.make_trainer(config, "fused", fold_a, seed=0)
    other_fold = song.make_trainer(config, "fused", fold_b, seed=0)
    for _ in range(2):
        in_lockstep.fit_epoch()
        other_fold.fit_epoch()
    np.testing.assert_array_equal(alone.predict_proba(test), in_lockstep.predict_proba(test))


def test_training_learns_a_separable_signal() -> None:
    train, test = synthetic_clips(64, seed=0, signal=1.0), synthetic_clips(32, seed=1, signal=1.0)
    config = {**SMALL, "audio_gru_layers": 1, "lr": 1.0e-2}
    trainer = song.make_trainer(config, "audio", train, seed=0)
    for _ in range(15):
        trainer.fit_epoch()
    metrics = evaluate(test.labels, trainer.predict_proba(test), len(song.CLASSES))
    assert metrics.accuracy > 0.5  # chance is 1/8


def test_standardisation_uses_the_training_frames_only() -> None:
    train = synthetic_clips(10)
    trainer = song.make_trainer(SMALL, "audio", train, seed=0)
    frames = np.concatenate(train.columns[song.AUDIO_COLUMN])
    np.testing.assert_allclose(
        trainer.scalers["audio"].mean_, frames.mean(axis=0), rtol=1e-4, atol=1e-5
    )
    shifted = synthetic_clips(6, seed=1)
    shifted.columns[song.AUDIO_COLUMN] = [a + 50.0 for a in shifted.columns[song.AUDIO_COLUMN]]
    trainer.predict_proba(shifted)
    np.testing.assert_allclose(
        trainer.scalers["audio"].mean_, frames.mean(axis=0), rtol=1e-4, atol=1e-5
    )


def test_a_clip_centred_video_branch_ignores_what_stays_constant_in_a_clip() -> None:
    """With ``video_clip_centred`` a per-clip offset of every frame changes nothing; without
    it, it does (the branch reads the frames as they are, as the paper's)."""
    train, clips = synthetic_clips(20), synthetic_clips(8, seed=3)
    rng = np.random.default_rng(4)
    offset = clips.subset(list(range(len(clips))))
    offset.columns[song.VIDEO_COLUMN] = [
        a + rng.normal(scale=3.0, size=(1, a.shape[1])).astype(np.float32)
        for a in clips.columns[song.VIDEO_COLUMN]
    ]
    for centred in (True, False):
        trainer = song.make_trainer({**SMALL, "video_clip_centred": centred}, "video", train, 0)
        trainer.fit_epoch()
        same = np.allclose(
            trainer.predict_proba(clips), trainer.predict_proba(offset), rtol=1e-4, atol=1e-5
        )
        assert same is centred


def test_clip_centring_lets_the_video_branch_learn_a_change_under_a_constant() -> None:
    """The class shows as a rise and fall of its own dimensions under a clip-constant offset
    ten times larger (a random network's features of a face on its background): centred, the
    branch learns it; reading the frames as they are, it stays near chance."""

    def clips(n: int, seed: int) -> FeatureSet:
        rng = np.random.default_rng(seed)
        features = synthetic_clips(n, seed)
        video = []
        for noise, label in zip(features.columns[song.VIDEO_COLUMN], features.labels, strict=True):
            pattern = np.zeros(512, dtype=np.float32)
            pattern[label * 64 : (label + 1) * 64] = 1.0
            rise = np.sin(np.linspace(0.0, np.pi, len(noise)))[:, None].astype(np.float32)
            constant = rng.normal(scale=10.0, size=(1, 512)).astype(np.float32)
            video.append(constant + rise * pattern + 0.1 * noise)
        features.columns[song.VIDEO_COLUMN] = video
        return features

    train, test = clips(64, 0), clips(32, 1)
    accuracy = {}
    for centred in (True, False):
        config = {**SMALL, "video_clip_centred": centred, "lr": 3.0e-3}
        trainer = song.make_trainer(config, "video", train, seed=0)
        for _ in range(10):
            trainer.fit_epoch()
        predicted = trainer.predict_proba(test)
        accuracy[centred] = evaluate(test.labels, predicted, len(song.CLASSES)).accuracy
    assert accuracy[True] > 0.8 and accuracy[False] < 0.4, accuracy  # chance is 1/8


def test_unknown_variant_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="audio, video, fused"):
        song.make_trainer(SMALL, "text", synthetic_clips(4), seed=0)


@pytest.mark.parametrize(
    "bad",
    [
        {"gru_layers": 2},
        {"audio_gru_layers": 0},
        {"dropout": 1.0},
        {"lr": -1.0},
        {"video_batch_norm": "yes"},
    ],
)
def test_bad_config_is_a_clear_error(bad: dict) -> None:
    with pytest.raises(ValueError, match=f"song\\.{next(iter(bad))}: "):
        song.make_trainer({**SMALL, **bad}, "fused", synthetic_clips(4), seed=0)


def test_batch_size_one_is_refused_only_with_batch_norm() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        song.make_trainer({**SMALL, "batch_size": 1}, "audio", synthetic_clips(4), seed=0)
    trainer = song.make_trainer(
        {**SMALL, "batch_size": 1, "audio_batch_norm": False}, "audio", synthetic_clips(4), seed=0
    )
    assert np.isfinite(trainer.fit_epoch()["train_loss"])


def test_an_empty_or_malformed_sequence_names_the_clip() -> None:
    clips = synthetic_clips(6)
    clips.columns[song.VIDEO_COLUMN][3] = np.zeros((0, 512), dtype=np.float32)
    with pytest.raises(ValueError, match="clip-3: song_vgg16.features"):
        song.make_trainer(SMALL, "video", clips, seed=0)
    trainer = song.make_trainer(SMALL, "audio", synthetic_clips(6), seed=0)
    test = synthetic_clips(3, seed=1)
    test.columns[song.AUDIO_COLUMN][1] = np.zeros((10, 20), dtype=np.float32)
    with pytest.raises(
        ValueError, match="clip-1: song_mfcc.mfcc has 20 features per frame, expected 13"
    ):
        trainer.predict_proba(test)
    test.columns[song.AUDIO_COLUMN][1] = np.full((10, 13), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="clip-1: song_mfcc.mfcc holds NaN"):
        trainer.predict_proba(test)


def test_paper_facts() -> None:
    assert song.CLASSES == (
        "neutral",
        "calm",
        "happy",
        "sad",
        "angry",
        "fearful",
        "disgust",
        "surprised",
    )
    knobs = song.SongKnobs()  # the paper's best branches (Tables I and II)
    assert (knobs.video_gru_layers, knobs.video_gru_units) == (1, 512)
    assert (knobs.audio_gru_layers, knobs.audio_gru_units) == (3, 256)
    assert {r.variant: r.value for r in song.PAPER_RESULTS} == {
        "audio": 0.80,
        "video": 0.79,
        "fused": 0.90,
    }
    assert {r.metric for r in song.PAPER_RESULTS} == {"accuracy"}


def test_search_space_values_are_accepted_by_the_task() -> None:
    """Every knob the YAML searches is a DEFAULTS key, and the task accepts its extremes."""
    load_search_space("song")  # the sweep stage's own validation
    space = yaml.safe_load(
        (Path(song.__file__).parents[1] / "search_spaces" / "song.yaml").read_text()
    )
    assert space["task"] == "song" and space["mode"] == "max"
    searched = set(space["params"])
    assert searched <= set(song.SPEC.defaults)
    for knob in (
        "video_gru_layers",
        "video_gru_units",
        "video_batch_norm",
        "video_clip_centred",
        "audio_gru_layers",
        "audio_gru_units",
        "audio_batch_norm",
        "fc_units",
        "dropout",
        "lr",
    ):
        assert knob in searched
    for name, spec in space["params"].items():
        if spec["type"] == "choice":
            values = spec["values"]
        elif spec["type"] == "randint":
            values = [spec["low"], spec["high"] - 1]  # high is exclusive
        else:
            values = [spec["low"], spec["high"] * 0.999]
        for value in values:
            song.SPEC.config("fused", {name: value})
