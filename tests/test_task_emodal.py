"""The EMODal task: Soft-HGR, shapes, one optimisation step, seeding, learning, bad input.

Synthetic FeatureSets of the store's shapes ((H, W) uint8 faces, (68,) audio vectors);
faces are 32x32 here (the CNN adapts to the face size) so the file runs in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from orchestrate.search_spaces import load_search_space
from tasks import emodal
from tasks.common import FeatureSet, evaluate


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Small nets run fastest on one thread (and two threads thrash on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = {"conv_channels": 4, "fc_width": 16, "batch_size": 8, "epochs": 2}


def synthetic_clips(
    n: int, seed: int = 0, face_side: int = 32, signal: float = 0.0, audio_dim: int = 68
) -> FeatureSet:
    """Random faces and audio vectors; ``signal`` adds a class-dependent pattern to both."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(emodal.CLASSES)
    faces, audio = [], []
    for label in labels:
        face = rng.normal(128, 30, size=(face_side, face_side))
        face[:, label * face_side // 4 : (label + 1) * face_side // 4] += signal * 60
        faces.append(np.clip(face, 0, 255).astype(np.uint8))
        vector = rng.normal(size=audio_dim)
        vector[label] += signal * 3
        audio.append(vector.astype(np.float32))
    return FeatureSet(
        clip_ids=[f"clip-{i}" for i in range(n)],
        actors=np.array([f"{i % 4 + 1:02d}" for i in range(n)]),
        labels=labels,
        columns={emodal.FACE: faces, emodal.AUDIO: audio},
        classes=emodal.CLASSES,
    )


# -- Soft-HGR -----------------------------------------------------------------------------------


def soft_hgr_by_the_formula(f: np.ndarray, g: np.ndarray) -> float:
    """The estimator written out term by term, in float64 numpy."""
    m = len(f)
    f = f - f.mean(axis=0)
    g = g - g.mean(axis=0)
    correlation = sum(float(f[i] @ g[i]) for i in range(m)) / (m - 1)
    cov_f = f.T @ f / (m - 1)
    cov_g = g.T @ g / (m - 1)
    return correlation - 0.5 * float(np.trace(cov_f @ cov_g))


def test_soft_hgr_equals_the_formula() -> None:
    rng = np.random.default_rng(0)
    f, g = rng.normal(size=(17, 6)), rng.normal(size=(17, 6)) + 2.0
    g[:, 0] += 0.8 * f[:, 0]  # some correlation, so both terms matter
    value = emodal.soft_hgr(torch.as_tensor(f), torch.as_tensor(g)).item()
    assert value == pytest.approx(soft_hgr_by_the_formula(f, g), rel=1e-10)


def test_soft_hgr_is_invariant_to_one_rotation_of_both_features() -> None:
    rng = np.random.default_rng(1)
    f, g = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
    rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    before = emodal.soft_hgr(torch.as_tensor(f), torch.as_tensor(g)).item()
    after = emodal.soft_hgr(torch.as_tensor(f @ rotation), torch.as_tensor(g @ rotation)).item()
    assert after == pytest.approx(before, rel=1e-10)
    # Rotating only one of them changes it: the invariance is not vacuous.
    one_sided = emodal.soft_hgr(torch.as_tensor(f @ rotation), torch.as_tensor(g)).item()
    assert abs(one_sided - before) > 1e-3


def test_soft_hgr_of_a_whitened_feature_with_itself_is_half_its_dimension() -> None:
    m, k = 40, 7
    rng = np.random.default_rng(2)
    centred = rng.normal(size=(m, k))
    centred -= centred.mean(axis=0)
    orthonormal, _ = np.linalg.qr(centred)  # columns stay centred: they span centred columns
    f = torch.as_tensor(orthonormal * np.sqrt(m - 1))  # covariance exactly the identity
    assert emodal.soft_hgr(f, f).item() == pytest.approx(k / 2, rel=1e-10)


def test_soft_hgr_passes_gradients() -> None:
    rng = np.random.default_rng(3)
    f = torch.tensor(rng.normal(size=(9, 4)), requires_grad=True)
    g = torch.tensor(rng.normal(size=(9, 4)), requires_grad=True)
    assert torch.autograd.gradcheck(emodal.soft_hgr, (f, g))
    (-emodal.soft_hgr(f, g)).backward()
    assert f.grad is not None and g.grad is not None
    assert f.grad.abs().sum() > 0 and g.grad.abs().sum() > 0


def test_soft_hgr_refuses_a_lone_pair_and_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        emodal.soft_hgr(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="one shape"):
        emodal.soft_hgr(torch.zeros(4, 3), torch.zeros(4, 2))


# -- the networks -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(emodal.VARIANTS))
def test_probabilities_have_one_row_per_clip_and_one_column_per_class(variant: str) -> None:
    trainer = emodal.make_trainer(SMALL, variant, synthetic_clips(20), seed=0)
    metrics = trainer.fit_epoch()
    assert np.isfinite(metrics["train_loss"])
    probabilities = trainer.predict_proba(synthetic_clips(11, seed=1))
    assert probabilities.shape == (11, len(emodal.CLASSES)) == (11, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_paper_sized_inputs_give_ten_dimensional_features() -> None:
    config = emodal.EmodalKnobs(conv_channels=2, fc_width=8)
    net = emodal.EmodalNet(config, "fused", (128, 128), 68)
    out = net(torch.zeros(3, 128, 128), torch.zeros(3, 68))
    assert out["f_img"].shape == out["f_aud"].shape == (3, 10)
    assert out["fused"].shape == out["img"].shape == out["aud"].shape == (3, 4)
    assert [
        layer.out_features for layer in net.audio.layers if isinstance(layer, torch.nn.Linear)
    ] == [
        128,
        64,
        10,
    ]
    assert sum(isinstance(layer, torch.nn.Conv2d) for layer in net.image.convolutions) == 3


@pytest.mark.parametrize("variant", list(emodal.VARIANTS))
def test_one_optimisation_step_lowers_the_loss_on_a_tiny_batch(variant: str) -> None:
    torch.manual_seed(0)
    config = emodal.EmodalKnobs.of(SMALL)
    net = emodal.EmodalNet(config, variant, (32, 32), 68).eval()  # eval: no dropout noise
    clips = synthetic_clips(8)
    faces = torch.as_tensor(np.stack(clips.columns[emodal.FACE]).astype(np.float32) / 255)
    audio = torch.as_tensor(np.stack(clips.columns[emodal.AUDIO]))
    labels = torch.as_tensor(clips.labels)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    before, parts = emodal.emodal_loss(net(faces, audio), labels, config)
    if variant == "fused":
        assert set(parts) == {"ce_fused", "ce_img", "ce_aud", "soft_hgr"}
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after, _ = emodal.emodal_loss(net(faces, audio), labels, config)
    assert after.item() < before.item()


def test_the_fused_loss_weighs_its_four_parts() -> None:
    torch.manual_seed(0)
    config = emodal.EmodalKnobs.of(SMALL)
    net = emodal.EmodalNet(config, "fused", (32, 32), 68).eval()
    clips = synthetic_clips(8)
    faces = torch.as_tensor(np.stack(clips.columns[emodal.FACE]).astype(np.float32) / 255)
    audio = torch.as_tensor(np.stack(clips.columns[emodal.AUDIO]))
    outputs = net(faces, audio)
    weights = {"w_common": 0.3, "w_cls": 2.0, "w_img": 0.5, "w_aud": 0.25}
    loss, parts = emodal.emodal_loss(
        outputs, torch.as_tensor(clips.labels), config.replace(**weights)
    )
    expected = (
        -0.3 * parts["soft_hgr"]
        + 2.0 * parts["ce_fused"]
        + 0.5 * parts["ce_img"]
        + 0.25 * parts["ce_aud"]
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# -- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(emodal.VARIANTS))
def test_the_same_seed_gives_the_same_result(variant: str) -> None:
    train, test = synthetic_clips(24, signal=1.0), synthetic_clips(10, seed=5)

    def run(seed: int) -> np.ndarray:
        trainer = emodal.make_trainer(SMALL, variant, train, seed=seed)
        for _ in range(2):
            trainer.fit_epoch()
        return trainer.predict_proba(test)

    first = run(0)
    np.testing.assert_array_equal(first, run(0))
    assert not np.array_equal(first, run(1))


def test_the_fused_model_learns_a_separable_training_set() -> None:
    clips = synthetic_clips(48, signal=1.5)
    config = {**SMALL, "epochs": 15, "dropout": 0.0}
    trainer = emodal.make_trainer(config, "fused", clips, seed=0)
    losses = [trainer.fit_epoch()["train_loss"] for _ in range(config["epochs"])]
    assert losses[-1] < losses[0]
    metrics = evaluate(clips.labels, trainer.predict_proba(clips), len(emodal.CLASSES))
    assert metrics.accuracy > 0.9


def test_audio_standardisation_comes_from_the_training_split() -> None:
    train = synthetic_clips(16)
    trainer = emodal.make_trainer(SMALL, "audio", train, seed=0)
    np.testing.assert_allclose(
        trainer.audio_scaler.mean_, np.stack(train.columns[emodal.AUDIO]).mean(0), rtol=1e-5
    )


# -- bad input ----------------------------------------------------------------------------------


def test_an_unknown_variant_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="audio, video, fused"):
        emodal.make_trainer(SMALL, "lidar", synthetic_clips(8), seed=0)


def test_an_unknown_knob_is_named() -> None:
    with pytest.raises(ValueError, match="emodal.warp_factor: unknown knob"):
        emodal.make_trainer({"warp_factor": 9}, "audio", synthetic_clips(8), seed=0)


def test_bad_values_are_named() -> None:
    with pytest.raises(ValueError, match="dropout"):
        emodal.make_trainer({"dropout": 1.5}, "video", synthetic_clips(8), seed=0)


def test_nan_audio_names_the_clip() -> None:
    clips = synthetic_clips(8)
    clips.columns[emodal.AUDIO][3] = np.full(68, np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="clip-3.*NaN"):
        emodal.make_trainer(SMALL, "audio", clips, seed=0)


def test_a_face_of_another_size_names_the_clip() -> None:
    clips = synthetic_clips(8)
    clips.columns[emodal.FACE][5] = np.zeros((16, 16), dtype=np.uint8)
    with pytest.raises(ValueError, match="clip-5"):
        emodal.make_trainer(SMALL, "video", clips, seed=0)


def test_a_missing_column_is_named() -> None:
    clips = synthetic_clips(8)
    del clips.columns[emodal.FACE]
    with pytest.raises(ValueError, match="emodal_face.face"):
        emodal.make_trainer(SMALL, "fused", clips, seed=0)


# -- contract -----------------------------------------------------------------------------------


def test_the_task_follows_the_contract() -> None:
    assert emodal.NAME == "emodal"
    assert set(emodal.CLASSES) == {"angry", "happy", "sad", "neutral"}
    assert {result.variant for result in emodal.PAPER_RESULTS} == set(emodal.SPEC.variants)
    assert all(
        result.protocol == emodal.PAPER_PROTOCOL == "random-80-20"
        for result in emodal.PAPER_RESULTS
    )
    assert emodal.SPEC.defaults["feature_size"] == 10


def test_the_search_space_searches_the_loss_weights_and_feature_size() -> None:
    space = load_search_space("emodal")
    assert {"w_common", "w_img", "w_aud", "feature_size"} <= set(space.params)
    raw = yaml.safe_load((Path(__file__).parents[1] / "search_spaces" / "emodal.yaml").read_text())
    assert set(raw["params"]) <= set(emodal.SPEC.defaults)
