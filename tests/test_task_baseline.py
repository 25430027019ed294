"""The baseline task: how its modality columns resolve per dataset, its knobs, seeding, and
that fusing two complementary modalities beats each alone (unit level, then swept end to
end from a generated feature table through ``ingest`` + ``sweep``)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
from threadpoolctl import threadpool_limits

from orchestrate.config import ConfigError, load_config
from orchestrate.datasets import DATASETS
from orchestrate.features import (
    CLIP_MODALITY_COLUMNS,
    baseline_beside,
    feature_source,
    stored_column,
)
from orchestrate.protocols import make_folds
from orchestrate.search_spaces import load_search_space
from orchestrate.stages.ingest import requested_extractors
from orchestrate.stages.sweep import variant_modality
from tasks import TASKS, baseline
from tasks.common import FeatureSet, evaluate

SMALL: dict[str, object] = {}  # scikit-learn fits these sizes in well under a second


@pytest.fixture(autouse=True)
def one_blas_thread() -> Iterator[None]:
    """Tiny fits run fastest on one BLAS thread (two thrash on a busy 2-core machine)."""
    with threadpool_limits(1):
        yield


# Designed like the demo corpus: audio (arousal) tells {angry, happy} from {sad, neutral},
# video (valence) tells {angry, sad} from {happy, neutral}; only both name the emotion.
EMOTIONS = ("angry", "happy", "sad", "neutral")
AROUSAL = {"angry": 1, "happy": 1, "sad": 0, "neutral": 0}
VALENCE = {"angry": 0, "sad": 0, "happy": 1, "neutral": 1}
AUDIO_DIM, VIDEO_DIM = 12, 10


def complementary_rows(
    actors: np.ndarray, clips_per_actor: int, seed: int = 0
) -> list[tuple[str, str, str, np.ndarray, np.ndarray]]:
    """``(clip id, actor, emotion, audio, video)``: each modality separates one pair of groups."""
    rng = np.random.default_rng(seed)
    rows = []
    for actor in actors:
        offset = rng.normal(scale=0.3, size=AUDIO_DIM + VIDEO_DIM)  # per-actor identity
        for i in range(clips_per_actor):
            emotion = EMOTIONS[i % len(EMOTIONS)]
            audio = rng.normal(size=AUDIO_DIM) + offset[:AUDIO_DIM]
            video = rng.normal(size=VIDEO_DIM) + offset[AUDIO_DIM:]
            audio[:3] += 2.0 * AROUSAL[emotion]
            video[:3] += 2.0 * VALENCE[emotion]
            rows.append((f"{actor}-{i:03d}", str(actor), emotion, audio, video))
    return rows


def complementary_clips(actors: np.ndarray, clips_per_actor: int, seed: int = 0) -> FeatureSet:
    rows = complementary_rows(actors, clips_per_actor, seed)
    return FeatureSet(
        clip_ids=[row[0] for row in rows],
        actors=np.array([row[1] for row in rows]),
        labels=np.array([baseline.CLASSES.index(row[2]) for row in rows]),
        columns={
            baseline.AUDIO: [row[3].astype(np.float32) for row in rows],
            baseline.VIDEO: [row[4].astype(np.float32) for row in rows],
        },
        classes=baseline.CLASSES,
    )


def cross_validated_uar(features: FeatureSet, variant: str, knobs: dict, seed: int = 0) -> float:
    folds = make_folds("actor-kfold", features.actors, features.labels, n_folds=4, seed=seed)
    uars = []
    for train, test in folds:
        trainer = baseline.make_trainer(knobs, variant, features.subset(train), seed)
        trainer.fit_epoch()
        probabilities = trainer.predict_proba(features.subset(test))
        uars.append(evaluate(features.labels[test], probabilities, len(baseline.CLASSES)).uar)
    return float(np.mean(uars))


def test_modality_columns_resolve_per_dataset_kind(tmp_path: Path) -> None:
    ravdess = DATASETS["ravdess"]
    assert stored_column(ravdess, None, baseline.AUDIO) == "emodal_audio.features"
    assert stored_column(ravdess, None, baseline.VIDEO) == "wang_texture.lpq"
    assert stored_column(ravdess, None, "song_mfcc.mfcc") == "song_mfcc.mfcc"  # papers' as-is
    table = DATASETS["feature-table"]
    config = load_config(
        None,
        [
            "dataset.name=feature-table",
            f"dataset.root={tmp_path / 't.csv'}",
            "dataset.label_column=label",
            "dataset.modalities.audio=egemaps_*",
            "dataset.modalities.video=AU*",
        ],
    )
    stored_as = table.table_stored_as(config.dataset)
    assert stored_column(table, stored_as, baseline.VIDEO) == "feature_table.video"
    source = feature_source(config, TASKS["baseline"], "late-fused")
    assert source.stored == {
        baseline.AUDIO: "feature_table.audio",
        baseline.VIDEO: "feature_table.video",
    }
    assert set(source.keys) == {"feature_table"}


def test_a_clip_run_of_the_baseline_ingests_the_extractors_standing_for_each_modality() -> None:
    config = load_config(None, ["tasks.baseline.variants=[fused]"])
    wanted = {column.split(".", 1)[0] for column in CLIP_MODALITY_COLUMNS.values()}
    assert set(requested_extractors(config)) == wanted == {"emodal_audio", "wang_texture"}
    keys = feature_source(
        load_config(None, ["dataset.root=/nowhere"]), TASKS["baseline"], "fused"
    ).keys
    assert set(keys) == wanted


def test_the_baseline_beside_a_paper_reads_only_the_modalities_the_papers_rows_read() -> None:
    config = load_config(None, [])
    assert config.sweep.baseline == ["audio", "video", "fused"]  # on by default
    assert baseline_beside(config, TASKS["emodal"], ["audio", "video"]) == [
        "audio",
        "video",
        "fused",
    ]
    assert baseline_beside(config, TASKS["emodal"], ["audio"]) == ["audio"]
    assert baseline_beside(config, TASKS["wang"], list(TASKS["wang"].variants)) == ["video"]
    assert baseline_beside(config, TASKS["baseline"], ["fused"]) == []  # not beside itself
    late = load_config(None, ["sweep.baseline=[late-fused]"])
    assert baseline_beside(late, TASKS["song"], ["fused"]) == ["late-fused"]
    assert baseline_beside(load_config(None, ["sweep.baseline=[]"]), TASKS["song"], ["fused"]) == []
    with pytest.raises(ConfigError, match="sweep.baseline: 'svm' is not one of audio, video"):
        load_config(None, ["sweep.baseline=[svm]"])


def test_a_paper_run_ingests_what_its_baseline_reads_too() -> None:
    song = load_config(None, ["tasks.song.variants=[audio]"])
    assert list(requested_extractors(song)) == ["song_mfcc", "emodal_audio"]
    alone = load_config(None, ["tasks.song.variants=[audio]", "sweep.baseline=[]"])
    assert list(requested_extractors(alone)) == ["song_mfcc"]


def test_rows_are_labelled_by_the_modality_they_read() -> None:
    config = load_config(None, [])
    modalities = {v: variant_modality(config, baseline.SPEC, v) for v in baseline.VARIANTS}
    assert modalities == {
        "audio": "audio",
        "video": "video",
        "fused": "fused",
        "late-fused": "fused",
    }


def test_a_run_that_lists_no_tasks_leaves_the_baseline_out_and_one_that_lists_it_sweeps_it():
    assert "baseline" not in {run.name for run in load_config(None, []).task_runs()}
    [run] = load_config(None, ["tasks.baseline.classifier=mlp"]).task_runs()
    assert (run.name, run.variants, run.knobs) == (
        "baseline",
        list(baseline.VARIANTS),
        {"classifier": "mlp"},
    )


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"classifier": "svm"}, "baseline.classifier: must be one of ('logistic', 'mlp')"),
        ({"late_fusion": "max"}, "baseline.late_fusion: must be one of ('average', 'stacking')"),
        ({"C": 0.0}, "baseline.C: must be > 0"),
        ({"mlp_hidden_units": 0}, "baseline.mlp_hidden_units: must be >= 1"),
        ({"lr": 0.1}, "baseline.lr: unknown knob"),
    ],
)
def test_bad_knobs_are_named(knobs: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        baseline.BaselineKnobs.of(knobs)
    assert str(error.value).startswith(message)


def test_the_search_space_covers_both_classifiers_and_both_late_fusions() -> None:
    params = load_search_space("baseline").params
    assert params["classifier"]["values"] == ["logistic", "mlp"]
    assert params["late_fusion"]["values"] == ["average", "stacking"]
    assert "late_fusion" in baseline.VARIANTS["late-fused"].knobs
    assert "late_fusion" not in baseline.VARIANTS["fused"].knobs


@pytest.mark.parametrize("variant", list(baseline.VARIANTS))
def test_the_same_seed_gives_the_same_probabilities(variant: str) -> None:
    features = complementary_clips(np.arange(1, 9).astype(str), 4)
    knobs = {"classifier": "mlp", "mlp_hidden_units": 8, "late_fusion": "stacking"}

    def run(seed: int) -> np.ndarray:
        trainer = baseline.make_trainer(knobs, variant, features, seed)
        trainer.fit_epoch()
        return trainer.predict_proba(features)

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))  # the MLP's initialisation follows the seed


def test_a_class_absent_from_training_gets_probability_zero() -> None:
    features = complementary_clips(np.arange(1, 5).astype(str), 8)
    trainer = baseline.make_trainer({}, "fused", features, 0)
    trainer.fit_epoch()
    probabilities = trainer.predict_proba(features)
    assert probabilities.shape == (len(features), len(baseline.CLASSES))
    absent = [baseline.CLASSES.index(e) for e in baseline.CLASSES if e not in EMOTIONS]
    assert (probabilities[:, absent] == 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_a_nan_feature_names_the_clip() -> None:
    features = complementary_clips(np.arange(1, 5).astype(str), 4)
    features.columns[baseline.VIDEO][2] = np.full(VIDEO_DIM, np.nan, np.float32)
    with pytest.raises(ValueError, match=r"^clip 1-002: modality.video holds NaN"):
        baseline.make_trainer({}, "video", features, 0)


@pytest.mark.parametrize(
    ("knobs", "variants"),
    [
        ({}, ("fused", "late-fused")),
        ({"late_fusion": "stacking"}, ("late-fused",)),
        ({"classifier": "mlp", "mlp_hidden_units": 16, "mlp_alpha": 1.0}, ("fused",)),
    ],
    ids=["logistic-early-and-averaged", "logistic-stacked", "mlp-early"],
)
def test_fusing_complementary_modalities_beats_each_alone(
    knobs: dict, variants: tuple[str, ...]
) -> None:
    """Actor-disjoint 4-fold CV: each modality caps near 0.5 UAR; both together do not.

    (Averaging an MLP's overconfident posteriors hardly fuses: on these clips the averaged
    MLPs reach 0.55 UAR, stacked ones 0.8; the search chooses, the test does not.)
    """
    features = complementary_clips(np.arange(1, 13).astype(str), 16)
    alone = {v: cross_validated_uar(features, v, knobs) for v in ("audio", "video")}
    assert max(alone.values()) < 0.6  # one modality: two groups of two emotions
    for fused in variants:
        uar = cross_validated_uar(features, fused, knobs)
        assert uar > max(alone.values()) + 0.1, (fused, uar, alone)


# -- end to end: a generated feature table through ingest + sweep ----------------------------


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def write_complementary_table(path: Path) -> Path:
    """The generator's clips as a lab's CSV: RAVDESS-like ids, egemaps_* and AU* columns."""
    rows = complementary_rows(np.arange(1, 13).astype(str), 12, seed=1)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["clip", "emotion", "speaker"]
            + [f"egemaps_{i}" for i in range(AUDIO_DIM)]
            + [f"AU{i:02d}_r" for i in range(VIDEO_DIM)]
        )
        for clip_id, actor, emotion, audio, video in rows:
            writer.writerow([clip_id, emotion, actor, *audio.round(5), *video.round(5)])
        writer.writerow(["broken", "angry", "1", *([""] * (AUDIO_DIM + VIDEO_DIM))])
    return path


@pytest.mark.slow
def test_baseline_sweeps_a_feature_table_and_fused_beats_each_modality(
    tmp_path: Path, local_ray: None
) -> None:
    from orchestrate.pipeline import ingest, sweep

    table = write_complementary_table(tmp_path / "lab_features.csv")
    config = load_config(
        None,
        [
            f"workspace={tmp_path / 'ws'}",
            "dataset.name=feature-table",
            f"dataset.root={table}",
            "dataset.clip_id_column=clip",
            "dataset.label_column=emotion",
            "dataset.actor_column=speaker",
            "dataset.modalities.audio=egemaps_*",
            "dataset.modalities.video=AU*_r",
            "tasks.baseline.variants=[audio,video,fused,late-fused]",
            "sweep.protocols=[actor-kfold]",
            "sweep.folds=3",
            "sweep.num_samples=2",
            "sweep.max_concurrent=1",
        ],
    )
    summary = ingest(config, progress=False)
    assert (summary.clips, summary.computed) == (144, 144)
    assert any("row 146 (broken): missing audio value(s)" in r for _, r in summary.rejected_files)
    tables = sweep(config, progress=False)
    rows = tables["baseline"].set_index("variant")
    assert (rows["error"] == "").all(), rows["error"].to_string()
    assert (rows["n"] == 3).all()
    assert list(rows["modality"]) == ["audio", "video", "fused", "fused"]
    assert (rows["chance_uar"] == 0.25).all()  # four emotions in the table, not eight
    assert not rows["is_paper_protocol"].any()  # no paper, no paper's protocol
    uar = rows["uar"]
    for fused in ("fused", "late-fused"):
        assert uar[fused] > max(uar["audio"], uar["video"]), uar.to_dict()


@pytest.mark.slow
def test_baseline_sweeps_a_clip_dataset_from_the_extractors_standing_for_each_modality(
    tmp_path: Path, local_ray: None
) -> None:
    """On generated RAVDESS clips: ingest computes only the two vectors, every row sweeps."""
    from orchestrate.corpus import synthesize_corpus
    from orchestrate.pipeline import ingest, sweep

    corpus = tmp_path / "corpus"
    synthesize_corpus(corpus, actors=4, clips_per_emotion=1, seed=0, progress=False)
    config = load_config(
        None,
        [
            f"workspace={tmp_path / 'ws'}",
            f"dataset.root={corpus}",
            "tasks.baseline.variants=[audio,video,fused,late-fused]",
            "sweep.protocols=[actor-kfold]",
            "sweep.folds=2",
            "sweep.num_samples=1",
            "sweep.max_concurrent=1",
        ],
    )
    summary = ingest(config, progress=False)
    assert summary.ok == summary.clips == 32
    # Only the two extractors standing for the modalities ran.
    assert sorted(p.name for p in (tmp_path / "ws" / "store" / "features").iterdir()) == [
        "emodal_audio",
        "wang_texture",
    ]
    rows = sweep(config, progress=False)["baseline"].set_index("variant")
    assert (rows["error"] == "").all(), rows["error"].to_string()
    assert (rows["n"] == 2).all()
    assert list(rows["modality"]) == ["audio", "video", "fused", "fused"]


@pytest.mark.slow
def test_the_baseline_is_swept_beside_a_papers_rows_on_its_clips_and_folds(
    tmp_path: Path, local_ray: None
) -> None:
    """EMODal's audio row and the baseline's beside it: same clips, same outer test folds,
    EMODal's four emotions; the rows land in EMODal's table and its MLflow parent run."""
    from mlflow import MlflowClient

    from orchestrate.corpus import synthesize_corpus
    from orchestrate.pipeline import baseline_plan, ingest, sweep
    from orchestrate.stages.sweep import plan_task

    corpus = tmp_path / "corpus"
    synthesize_corpus(corpus, actors=4, clips_per_emotion=1, seed=0, progress=False)
    config = load_config(
        None,
        [
            f"workspace={tmp_path / 'ws'}",
            f"dataset.root={corpus}",
            "tasks.emodal.variants=[audio]",
            "sweep.baseline=[audio, fused]",  # fused reads video: EMODal's audio row doesn't
            "sweep.protocols=[actor-kfold]",
            "sweep.folds=2",
            "sweep.num_samples=1",
            "sweep.max_epochs=1",
            "sweep.max_concurrent=1",
        ],
    )
    assert ingest(config, progress=False).ok == 32
    paper = plan_task(config, "emodal", ["audio"], {}, str(tmp_path / "plan"))
    beside = baseline_plan(config, TASKS["emodal"], ["audio"], paper, str(tmp_path / "plan"))
    assert [row.label for row in beside.rows] == ["baseline-audio"]
    assert sorted(beside.rows[0].clips) == sorted(
        (clip, actor, label) for clip, actor, label in paper.rows[0].clips
    )  # the same 16 clips (4 emotions x 4 actors), labelled by emotion name
    assert len(paper.rows[0].clips) == 16
    assert [s.test_ids for _, s, _ in beside.studies] == [s.test_ids for _, s, _ in paper.studies]

    rows = sweep(config, progress=False)["emodal"].set_index("variant")
    assert list(rows.index) == ["audio", "baseline-audio"]
    assert (rows["error"] == "").all(), rows["error"].to_string()
    assert (rows["n"] == 2).all() and (rows["chance_uar"] == 0.25).all()
    assert rows.loc["baseline-audio", "model"] == "baseline"
    assert rows.loc["baseline-audio", "paper"] == ""
    assert "| baseline-audio |" in (tmp_path / "ws" / "reports" / "emodal.md").read_text()
    client = MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    [parent] = client.search_runs(
        [experiment.experiment_id], "tags.kind = 'sweep' and tags.task = 'emodal'"
    )
    nested = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    by_task = {(run.data.tags["task"], run.data.tags.get("beside", "")) for run in nested}
    assert by_task == {("emodal", ""), ("baseline", "emodal")}
