"""Nested selection: the outer test clips never steer a search; trials retry from checkpoints.

These run real Tune studies (OptunaSearch + ASHA) on a local Ray, on small feature sets
built in the test: EMODal's audio DNN trains in well under a second per epoch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from orchestrate.config import load_config
from orchestrate.datasets.ravdess import list_ravdess
from orchestrate.search_spaces import load_search_space
from orchestrate.stages.sweep import (
    StudyOutcome,
    StudyPlan,
    VariantResult,
    search_study,
    searched_knobs,
    study_plans,
    sweep_directory,
    task_config,
)
from orchestrate.stages.trials import FAIL_ONCE_ENV, retrain_and_test
from tasks import TASKS, emodal
from tasks.common import FeatureSet


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def audio_clips(actors: int = 6, clips_per_class: int = 3, seed: int = 0) -> FeatureSet:
    """EMODal audio vectors: a class signal, an actor offset and noise."""
    rng = np.random.default_rng(seed)
    classes = emodal.CLASSES
    centres = rng.normal(0, 1, (len(classes), 68))
    ids, actor_ids, labels, vectors = [], [], [], []
    for actor in range(1, actors + 1):
        offset = rng.normal(0, 0.5, 68)
        for label in range(len(classes)):
            for take in range(clips_per_class):
                ids.append(f"a{actor:02d}-{classes[label]}-{take}")
                actor_ids.append(f"{actor:02d}")
                labels.append(label)
                vectors.append((centres[label] + offset + rng.normal(0, 1.5, 68)).astype("f4"))
    return FeatureSet(
        clip_ids=ids,
        actors=np.asarray(actor_ids),
        labels=np.asarray(labels),
        columns={emodal.AUDIO: vectors},
        classes=classes,
    )


def plans_for(
    tmp_path: Path, features: FeatureSet, *overrides: str, protocol: str = "actor-kfold"
) -> list[StudyPlan]:
    config = load_config(
        overrides=[
            f"workspace={tmp_path}",
            "sweep.num_samples=4",
            "sweep.max_concurrent=1",
            "sweep.max_epochs=4",
            "sweep.folds=3",
            *overrides,
        ]
    )
    space = load_search_space("emodal")
    row = VariantResult("emodal", "audio", protocol, "nested", False, len(emodal.CLASSES))
    base = task_config(config, emodal.SPEC, "audio", {})
    searched = searched_knobs(space, emodal.SPEC, "audio", {})
    sweep_dir = sweep_directory(config, resume=False)
    return study_plans(config, row, features, base, searched, space, sweep_dir)


def with_test_labels_moved(features: FeatureSet, test_ids: tuple[str, ...]) -> FeatureSet:
    """The same clips, each test clip's label moved to the next class."""
    labels = features.labels.copy()
    test = np.isin(features.clip_ids, test_ids)
    labels[test] = (labels[test] + 1) % len(features.classes)
    return FeatureSet(
        features.clip_ids, features.actors, labels, features.columns, features.classes
    )


def search_history(outcome: StudyOutcome) -> list[tuple]:
    """What the search saw and chose: every trial's config and validation curve, in order."""
    return [
        (
            sorted(trial.config.items()),
            [
                {k: round(v, 6) for k, v in epoch.items() if k.startswith("val_")}
                for epoch in trial.history
            ],
        )
        for trial in outcome.trials
    ]


def test_test_labels_cannot_move_the_choice(local_ray: None, tmp_path: Path) -> None:
    features = audio_clips()
    plans = plans_for(tmp_path / "first", features)
    plan = plans[0]
    moved = with_test_labels_moved(features, plan.test_ids)
    assert (moved.labels != features.labels).sum() == len(plan.test_ids)
    replan = plans_for(tmp_path / "second", moved)[0]
    assert replan.validation == plan.validation and replan.test_ids == plan.test_ids

    first = ray.get(search_study.remote(plan, [ray.put(features)], False))
    second = ray.get(search_study.remote(replan, [ray.put(moved)], False))
    assert len(first.trials) == plan.num_samples
    assert search_history(first) == search_history(second)
    assert first.chosen_config == second.chosen_config
    assert first.validation == second.validation

    # Only the reported test scores differ: the same model, scored on other labels.
    scored = [
        retrain_and_test(
            "emodal", "audio", first.chosen_config, clips, plan.train_ids, plan.test_ids, 0, 0
        )
        for clips in (features, moved)
    ]
    assert scored[0].confusion != scored[1].confusion
    assert np.asarray(scored[0].confusion).sum(axis=0).tolist() == (
        np.asarray(scored[1].confusion).sum(axis=0).tolist()
    )  # same predictions, other truths


def test_nested_folds_keep_actors_apart(tmp_path: Path) -> None:
    features = audio_clips(actors=8, clips_per_class=1)
    actor_of = dict(zip(features.clip_ids, features.actors, strict=True))
    for inner in ("sweep.inner_folds=1", "sweep.inner_folds=3"):
        plans = plans_for(tmp_path, features, inner, "sweep.folds=4")
        assert len(plans) == 4
        tested = [clip for plan in plans for clip in plan.test_ids]
        assert sorted(tested) == sorted(features.clip_ids)  # every clip tested once
        for plan in plans:
            test_actors = {actor_of[c] for c in plan.test_ids}
            assert not test_actors & {actor_of[c] for c in plan.train_ids}
            for inner_train, validation in plan.validation:
                validation_actors = {actor_of[c] for c in validation}
                assert validation_actors and not validation_actors & test_actors
                assert not validation_actors & {actor_of[c] for c in inner_train}
                assert sorted(inner_train + validation) == sorted(plan.train_ids)


def test_no_recording_in_two_splits(tmp_path: Path) -> None:
    # A release with each recording three ways (full AV, video-only, audio-only).
    root = tmp_path / "ravdess"
    for actor in range(1, 9):
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for emotion in ("01", "03", "04", "05"):
            codes = f"01-{emotion}-01-01-01-{actor:02d}"
            for name in (f"01-{codes}.mp4", f"02-{codes}.mp4", f"03-{codes}.wav"):
                (folder / name).write_bytes(b"")
    listing = list_ravdess(str(root))
    recording = {clip.clip_id: clip.clip_id.split("-", 1)[1] for clip in listing.clips}
    assert len(set(recording.values())) == len(recording) == 8 * 4
    features = FeatureSet(
        clip_ids=[clip.clip_id for clip in listing.clips],
        actors=np.asarray([clip.actor for clip in listing.clips]),
        labels=np.asarray([emodal.CLASSES.index(clip.label) for clip in listing.clips]),
        columns={emodal.AUDIO: [np.zeros(68, "f4")] * len(listing.clips)},
        classes=emodal.CLASSES,
    )
    for plan in plans_for(tmp_path, features, "sweep.folds=4"):
        for inner_train, validation in plan.validation:
            parts = [inner_train, validation, plan.test_ids]
            seen = [{recording[c] for c in part} for part in parts]
            assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def test_stratified_protocols_validate_on_a_stratified_split(tmp_path: Path) -> None:
    features = audio_clips(actors=4, clips_per_class=5)
    (plan,) = plans_for(tmp_path, features, protocol="random-80-20")
    ((inner_train, validation),) = plan.validation
    assert not set(validation) & set(plan.test_ids)
    labels = dict(zip(features.clip_ids, features.labels, strict=True))
    assert {labels[c] for c in validation} == set(range(len(emodal.CLASSES)))


def test_a_failed_trial_resumes_from_its_checkpoint(local_ray: None, tmp_path: Path) -> None:
    features = audio_clips()
    plan = plans_for(tmp_path, features, "sweep.num_samples=1", "sweep.max_epochs=4")[0]
    marker = tmp_path / "failed-once"
    env = {"env_vars": {FAIL_ONCE_ENV: str(marker)}}
    outcome = ray.get(
        search_study.options(runtime_env=env).remote(plan, [ray.put(features)], False)
    )
    assert marker.exists()  # the trial did fail once, after epoch 2
    (trial,) = outcome.trials
    assert trial.error is None
    epochs = [int(epoch["training_iteration"]) for epoch in trial.history]
    assert epochs[-1] == 4 and outcome.chosen_config["epochs"] == 4
    resumed = [epoch["resumed_from_epoch"] for epoch in trial.history]
    assert resumed[-1] == 2  # epochs 3 and 4 ran on the trainers restored after epoch 2


def test_each_variant_searches_only_the_knobs_it_reads() -> None:
    emodal_space = load_search_space("emodal")
    audio = searched_knobs(emodal_space, emodal.SPEC, "audio", {})
    assert "w_common" not in audio and "conv_channels" not in audio and "lr" in audio
    assert "w_common" in searched_knobs(emodal_space, emodal.SPEC, "fused", {})
    song = TASKS["song"]
    video = searched_knobs(load_search_space("song"), song, "video", {})
    assert video and not any(name.startswith("audio_") for name in video)
    assert "lr" not in searched_knobs(emodal_space, emodal.SPEC, "audio", {"lr": 1e-3})
    mitseas = TASKS["mitseas"]
    assert searched_knobs(load_search_space("mitseas"), mitseas, "video", {}) == {}
    for task in TASKS.values():
        for variant in task.variants.values():
            assert set(variant.knobs) <= set(task.defaults), task.name


@pytest.mark.parametrize("variant", ["audio", "video"])
def test_knobs_a_variant_does_not_read_change_nothing(variant: str) -> None:
    """Every EMODal knob outside a unimodal variant's list leaves its model unchanged."""
    rng = np.random.default_rng(1)
    n = 16
    clips = FeatureSet(
        clip_ids=[f"c{i}" for i in range(n)],
        actors=np.asarray(["01"] * n),
        labels=np.arange(n) % 4,
        columns={
            emodal.AUDIO: list(rng.normal(size=(n, 68)).astype("f4")),
            emodal.FACE: list(rng.random((n, 32, 32)).astype("f4")),
        },
        classes=emodal.CLASSES,
    )
    base = {**emodal.SPEC.defaults, "epochs": 1}

    def predictions(config: dict) -> np.ndarray:
        trainer = emodal.make_trainer(config, variant, clips, seed=0)
        trainer.fit_epoch()
        return trainer.predict_proba(clips)

    reference = predictions(base)
    unread = set(emodal.SPEC.defaults) - set(emodal.VARIANTS[variant].knobs)
    assert unread
    for knob in sorted(unread):
        value = base[knob]
        changed = {**base, knob: value * 0.5 if isinstance(value, float) else value * 2}
        assert np.array_equal(predictions(changed), reference), knob


def test_studies_live_on_s3_and_restore_from_there(
    local_ray: None, moto_s3: Any, tmp_path: Path
) -> None:
    moto_s3.client.create_bucket(Bucket="sweeps")
    features = audio_clips()
    plan = plans_for(
        tmp_path,
        features,
        "sweep.num_samples=2",
        "sweep.max_epochs=2",
        "sweep.storage_path=s3://sweeps/team",
        f"store.endpoint_url={moto_s3.endpoint_url}",
        "store.region=us-east-1",
    )[0]
    assert plan.sweep_dir.startswith("s3://sweeps/team")
    # Workers find S3 credentials through the standard AWS chain, as on a cluster.
    env = {"env_vars": {k: os.environ[k] for k in os.environ if k.startswith("AWS_")}}
    reference = [ray.put(features)]
    first = ray.get(search_study.options(runtime_env=env).remote(plan, reference, False))
    keys = [
        item["Key"]
        for item in moto_s3.client.list_objects_v2(Bucket="sweeps", Prefix="team/")["Contents"]
    ]
    prefix = plan.sweep_dir.removeprefix("s3://sweeps/")
    assert f"{prefix}/{plan.name}.optuna.log" in keys
    assert any(key.startswith(f"{prefix}/{plan.name}/") and "checkpoint" in key for key in keys)
    again = ray.get(search_study.options(runtime_env=env).remote(plan, reference, True))
    # Restored, not searched again: the same trials (the grid may list them in another order).
    assert sorted(map(repr, search_history(again))) == sorted(map(repr, search_history(first)))


def test_the_table_reports_outer_test_numbers_with_their_protocol() -> None:
    from orchestrate.stages.report import ablation_table, table_markdown
    from orchestrate.stages.trials import FinalModel

    def outcome(fold: int, validation_uar: float, test_uars: list[float]) -> StudyOutcome:
        finals = [
            FinalModel(fold, seed, {"accuracy": u, "uar": u, "macro_f1": u}, [[1]], 3, 0.1)
            for seed, u in enumerate(test_uars)
        ]
        return StudyOutcome(
            f"emodal-audio-actor-kfold-fold{fold}",
            fold,
            [],
            "t",
            {"lr": 0.001 * (fold + 1), "epochs": 3},
            {"val_uar": validation_uar},
            finals,
        )

    independent = VariantResult("emodal", "audio", "actor-kfold", "nested", False, 4)
    independent.outcomes = [outcome(0, 0.6, [0.4, 0.5]), outcome(1, 0.8, [0.3, 0.6])]
    dependent = VariantResult("emodal", "audio", "random-80-20", "nested", True, 4)
    dependent.outcomes = [outcome(0, 0.9, [0.7])]
    table = ablation_table(emodal.SPEC, [independent, dependent])
    first, second = table.to_dict("records")
    assert first["uar"] == 0.45 and first["n"] == 4 and first["folds"] == 2
    assert first["uar_std"] == round(float(np.std([0.4, 0.5, 0.3, 0.6], ddof=1)), 4)
    assert first["uar_ci95_low"] < 0.45 < first["uar_ci95_high"]
    assert first["validation_uar"] == 0.7  # mean of the chosen configurations' validation
    assert first["chance_uar"] == 0.25 and first["speaker_independent"]
    assert json.loads(first["chosen_configs"])[1]["lr"] == 0.002
    assert not second["speaker_independent"] and second["is_paper_protocol"]
    markdown = table_markdown(table)
    assert "actor-kfold (speaker-independent, 2 folds x 2 seeds)" in markdown
    assert "random-80-20 (paper's, speaker-dependent, 1 folds x 1 seeds)" in markdown
    assert "0.450 ± " in markdown and "0.700 (n=1)" in markdown


def test_the_fusion_verdict_reads_the_table() -> None:
    from orchestrate.stages.report import ablation_table, fusion_verdict
    from orchestrate.stages.trials import FinalModel

    def row(variant: str, fold_uars: list[float], protocol: str = "actor-kfold") -> VariantResult:
        result = VariantResult("emodal", variant, protocol, "nested", False, 4)
        for fold, uar in enumerate(fold_uars):
            final = FinalModel(fold, 0, {"accuracy": uar, "uar": uar, "macro_f1": uar}, [[1]], 1, 0)
            result.outcomes.append(
                StudyOutcome(f"{variant}-fold{fold}", fold, [], "t", {}, {}, [final])
            )
        return result

    rows = [row("audio", [0.40, 0.50, 0.30]), row("video", [0.30, 0.40, 0.45]),
            row("fused", [0.52, 0.62, 0.40])]  # fmt: skip
    line = fusion_verdict("emodal", ablation_table(emodal.SPEC, rows))
    assert line == (
        "emodal: fused beats audio by +0.11 and video by +0.13 UAR (actor-kfold), in 2 of 3 folds"
    )
    losing = [rows[0], rows[1], row("fused", [0.30, 0.40, 0.40])]
    line = fusion_verdict("emodal", ablation_table(emodal.SPEC, losing))
    assert line.startswith("emodal: fused does not beat both: audio 0.40, video 0.38, fused 0.37")
    assert line.endswith("fused above both in 0 of 3 folds")
    # Only a speaker-dependent protocol, or no fused row: no verdict.
    dependent = [row(v, [0.5], "random-80-20") for v in ("audio", "video", "fused")]
    table = ablation_table(emodal.SPEC, dependent)
    table["speaker_independent"] = False
    assert fusion_verdict("emodal", table) is None
    assert fusion_verdict("emodal", ablation_table(emodal.SPEC, rows[:2])) is None
    # A row at or below chance (4 classes: 0.25) is named, with what to raise; others are not.
    from orchestrate.stages.report import chance_lines

    weak = ablation_table(emodal.SPEC, [rows[0], row("video", [0.25, 0.20, 0.25])])
    (line,) = chance_lines("emodal", weak)
    assert line.startswith(
        "emodal/video (actor-kfold): test UAR 0.233 is not above chance (0.250) with 0 trials"
    )
    assert "raise sweep.num_samples" in line
    # A row whose network ran on random weights says so instead of asking for more budget.
    random_video = row("video", [0.25, 0.20, 0.25])
    random_video.note = "random weights: song_vgg16"
    (line,) = chance_lines("emodal", ablation_table(emodal.SPEC, [rows[0], random_video]))
    assert line.endswith(
        "its features come from random weights: song_vgg16 (give the network's trained weights)"
    )


def test_the_baselines_rows_sit_in_the_papers_table_without_its_numbers() -> None:
    from orchestrate.stages.report import ablation_table, fusion_verdict, table_markdown
    from orchestrate.stages.trials import FinalModel

    def row(task: str, variant: str, uars: list[float], beside: str = "") -> VariantResult:
        result = VariantResult(task, variant, "actor-kfold", "nested", False, 4, beside=beside)
        for fold, uar in enumerate(uars):
            final = FinalModel(fold, 0, {"accuracy": uar, "uar": uar, "macro_f1": uar}, [[1]], 1, 0)
            result.outcomes.append(
                StudyOutcome(f"{variant}-fold{fold}", fold, [], "t", {}, {}, [final])
            )
        return result

    rows = [
        row("emodal", "audio", [0.40, 0.50]),
        row("emodal", "video", [0.30, 0.40]),
        row("emodal", "fused", [0.52, 0.62]),
        row("baseline", "audio", [0.35, 0.45], beside="emodal"),
        row("baseline", "fused", [0.60, 0.70], beside="emodal"),
    ]
    table = ablation_table(emodal.SPEC, rows)
    assert list(table["variant"]) == ["audio", "video", "fused", "baseline-audio", "baseline-fused"]
    assert list(table["task"]) == ["emodal"] * 5
    assert list(table["model"]) == ["emodal"] * 3 + ["baseline"] * 2
    reference = table[table["model"] == "baseline"]
    assert (reference["paper"] == "").all() and reference["difference"].isna().all()
    assert table.loc[0, "paper"]  # EMODal's own audio row keeps the paper's number
    assert "| baseline-fused | " in table_markdown(table)
    # The verdict compares the paper's rows and names the baseline's fused beside them.
    assert fusion_verdict("emodal", table) == (
        "emodal: fused beats audio by +0.12 and video by +0.22 UAR (actor-kfold), in 2 of 2 "
        "folds; the baseline's fused: 0.65"
    )
    # Study names keep a paper's baseline apart from another paper's.
    plan = StudyPlan("baseline", "audio", "actor-kfold", 0, (), (), (), {"epochs": 1}, {},
                     "val_uar", "max", 1, 1, 0, {}, 0, "/s", beside="emodal")  # fmt: skip
    assert plan.name == "emodal-baseline-audio-actor-kfold-fold0"
