"""Every paper's run config shipped in ``orchestrate/configs`` sweeps, in-process, on tiny data.

Each config is loaded as shipped, then sized down with overrides only (two trials, one
epoch, two outer folds, the speaker-independent protocol), and run through the real stages
(ingest into a feature store shared by all of them, then nested sweeps on a local Ray, into
MLflow on SQLite). The clip configs read a generated corpus; ``wang_sfew`` reads a tiny
generated table in the ``SFEW.xlsx`` layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openpyxl
import pytest
import ray

from orchestrate.config import RunConfig, TaskRun, load_config, shipped_configs
from orchestrate.corpus import synthesize_corpus
from orchestrate.features import baseline_beside
from orchestrate.pipeline import ingest, sweep
from tasks import TASKS

SMALL = [
    "sweep.num_samples=2",
    "sweep.max_epochs=1",
    "sweep.folds=2",
    "sweep.protocols=[actor-kfold]",
    "sweep.max_concurrent=1",
    # No network weights to fetch in a test: the rows say "random weights".
    "ingest.extractors.song_vgg16.weights=random",
    "ingest.extractors.mitseas_fer.model_path=random",
]
SFEW_HEADER = [None, "label", "First 5 PCs of LPQ", *[None] * 4, "First 5 PCs of PHOG", *[None] * 4]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("shipped")
    corpus = base / "corpus"
    # 6 actors: two outer folds leave 3 training actors, enough for Mitseas' base/meta split.
    synthesize_corpus(corpus, actors=6, clips_per_emotion=2, seed=0, progress=False)
    return {"corpus": corpus, "sfew": write_sfew_like_table(base / "sfew.xlsx"), "base": base}


def write_sfew_like_table(path: Path) -> Path:
    """84 rows in the SFEW.xlsx layout: 7 emotions x 4 films x 3 stills, separable features."""
    rng = np.random.default_rng(0)
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(SFEW_HEADER)
    for film in ("Juno", "Town", "Up", "Heat"):
        for label in range(1, 8):
            for still in range(3):
                centre = np.eye(7)[label - 1, :5] * 3.0
                lpq, phog = centre + rng.normal(size=5), centre + rng.normal(size=5)
                name = f"{film}_{label:06d}_{still:08d}.mat"
                sheet.append([name, label, *lpq.round(4).tolist(), *phog.round(4).tolist()])
    workbook.save(path)
    return path


# demo.yaml is swept end to end by tests/test_demo.py (`orchestrate demo`, reduced).
PAPER_CONFIGS = sorted(name for name in shipped_configs() if name != "demo")


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_a_shipped_config_sweeps_on_tiny_data(
    name: str, data: dict[str, Path], local_ray: None
) -> None:
    workspace = data["base"] / f"ws-{name}"
    root = data["sfew"] if name == "wang_sfew" else data["corpus"]
    config = load_config(
        name,
        [
            f"workspace={workspace}",
            f"store.uri={data['base'] / 'store'}",  # shared: later configs reuse the features
            f"dataset.root={root}",
            *SMALL,
        ],
    )
    summary = ingest(config, progress=False)
    assert summary.ok == summary.clips > 0
    tables = sweep(config, progress=False)
    expected = {run.name: run.variants + beside(config, name, run) for run in config.task_runs()}
    assert set(tables) == set(expected)
    for task_name, table in tables.items():
        assert list(table["variant"]) == expected[task_name]
        assert (table["error"] == "").all(), table[["variant", "error"]].to_string()
        assert (table["protocol"] == "actor-kfold").all()
        assert (table["n"] == 2).all()  # two outer folds, one seed: every fold tested once
        chance = round(1 / len(TASKS[task_name].classes), 4)
        assert (table["chance_uar"] == chance).all()
        assert table["uar"].between(0, 1).all()


def beside(config: RunConfig, name: str, run: TaskRun) -> list[str]:
    """The baseline's rows in a paper's table, after the paper's own. The SFEW table holds
    no ``modality.video`` for the baseline's video model: Wang's table has none."""
    if name == "wang_sfew":
        return []
    return [f"baseline-{v}" for v in baseline_beside(config, TASKS[run.name], run.variants)]


@pytest.mark.slow
def test_sweep_exits_one_when_a_row_cannot_be_swept(
    data: dict[str, Path], local_ray: None, capsys: pytest.CaptureFixture
) -> None:
    """The paper's actor-8-12-4 needs 8 actors; the corpus has 6: that row is not swept."""
    from orchestrate.cli import main

    workspace = data["base"] / "ws-not-swept"
    status = main(
        [
            "run", "--config", "mitseas_ravdess", "--workspace", str(workspace), "--quiet",
            f"store.uri={data['base'] / 'store'}", f"dataset.root={data['corpus']}",
            *SMALL, "sweep.protocols=[actor-kfold, paper]", "sweep.baseline=[]",
            "tasks.mitseas.variants=[audio-all-actors]",
        ]
    )  # fmt: skip
    assert status == 1
    err = capsys.readouterr().err
    assert "1 row(s) not swept" in err and "mitseas/audio-all-actors (actor-8-12-4)" in err
    table = (workspace / "reports" / "mitseas.md").read_text()  # the table is still written
    assert "actor-8-12-4" in table and "actor-kfold" in table
