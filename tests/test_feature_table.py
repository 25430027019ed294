"""The feature-table adapter: per-clip features computed elsewhere, CSV or Parquet, grouped
into modalities by the config; bad rows reported and left out; stored like extractor rows.

Reading and ingest run without Ray (a table's ingest is one driver-side pass); the SFEW test
reads the real spreadsheet in ``../shared/data`` and checks that, converted to a CSV feature
table, it gives Wang the same features and the same trained predictions as ``sfew-table``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import openpyxl
import pandas as pd
import pytest
import torch

from orchestrate.config import ConfigError, RunConfig, load_config
from orchestrate.datasets import DATASETS
from orchestrate.datasets.feature_table import read_feature_table
from orchestrate.datasets.sfew_table import _IMAGE_NAME, SFEW_LABELS
from orchestrate.errors import InputError
from orchestrate.features import feature_source
from orchestrate.protocols import make_folds
from orchestrate.stages.ingest import run_ingest
from orchestrate.stages.trials import retrain_and_test
from tasks import TASKS, wang

HEADER = ["clip_id", "label", "actor", "mfcc_1", "mfcc_2", "AU01", "AU02", "AU03"]


def write_csv(path: Path, rows: list[list[Any]], header: list[str] = HEADER) -> str:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def table_config(root: str, *overrides: str, workspace: Path | None = None) -> RunConfig:
    """A feature-table run: audio = mfcc_*, video = AU01..AU03, label and actor columns."""
    settings = [
        "dataset.name=feature-table",
        f"dataset.root={root}",
        "dataset.label_column=label",
        "dataset.actor_column=actor",
        "dataset.modalities.audio=mfcc_*",
        "dataset.modalities.video=[AU01,'AU0[23]']",
    ]
    if workspace is not None:
        settings.append(f"workspace={workspace}")
    return load_config(None, [*settings, *overrides])


GOOD_ROWS = [
    ["c1", "angry", "01", 0.1, 0.2, 1.0, 2.0, 3.0],
    ["c2", "Happy", "01", 0.3, 0.4, 4.0, 5.0, 6.0],
    ["c3", "Sadness", "02", 0.5, 0.6, 7.0, 8.0, 9.0],
]


def test_columns_are_grouped_into_the_configured_modalities(tmp_path: Path) -> None:
    root = write_csv(tmp_path / "features.csv", GOOD_ROWS)
    table = read_feature_table(table_config(root).dataset)
    assert table.rejected == []
    assert list(table.rows["clip_id"]) == ["c1", "c2", "c3"]
    assert list(table.rows["label"]) == ["angry", "happy", "sad"]  # any case, synonyms
    assert list(table.rows["group"]) == ["01", "01", "02"]  # "01" stays text
    np.testing.assert_array_equal(table.rows["audio"][1], np.float32([0.3, 0.4]))
    np.testing.assert_array_equal(table.rows["video"][2], np.float32([7, 8, 9]))
    assert table.rows["video"][0].dtype == np.float32


def test_parquet_reads_like_csv(tmp_path: Path) -> None:
    frame = pd.DataFrame(GOOD_ROWS, columns=HEADER)
    frame.to_parquet(tmp_path / "features.parquet")
    from_parquet = read_feature_table(table_config(str(tmp_path / "features.parquet")).dataset)
    from_csv = read_feature_table(
        table_config(write_csv(tmp_path / "features.csv", GOOD_ROWS)).dataset
    )
    assert list(from_parquet.rows["label"]) == list(from_csv.rows["label"])
    for name in ("audio", "video"):
        for a, b in zip(from_parquet.rows[name], from_csv.rows[name], strict=True):
            np.testing.assert_array_equal(a, b)


def test_labels_and_actors_parsed_from_ravdess_and_crema_d_clip_ids(tmp_path: Path) -> None:
    header = ["file", "f1", "f2"]
    ravdess_root = write_csv(
        tmp_path / "ravdess.csv",
        [
            ["03-01-05-01-01-01-04", 1.0, 2.0],  # audio-only angry, actor 04, no extension
            ["01-01-03-02-01-01-12.mp4", 1.0, 2.0],  # full AV happy, actor 12
            ["01-01-09-01-01-01-01", 1.0, 2.0],  # emotion 09 does not exist
        ],
        header,
    )
    overrides = ["dataset.clip_id_column=file", "dataset.modalities.audio=f*"]
    dataset = load_config(
        None,
        [
            "dataset.name=feature-table",
            f"dataset.root={ravdess_root}",
            "dataset.naming=ravdess",
            *overrides,
        ],
    ).dataset
    table = read_feature_table(dataset)
    assert list(table.rows["label"]) == ["angry", "happy"]
    assert list(table.rows["group"]) == ["04", "12"]
    [bad] = table.rejected
    assert bad.reason.startswith("row 4 (01-01-09-01-01-01-01): 01-01-09-01-01-01-01: emotion")
    crema_root = write_csv(
        tmp_path / "crema.csv",
        [["1001_DFA_ANG_XX", 1.0, 2.0], ["1091_IEO_SAD_HI.wav", 1.0, 2.0]],
        header,
    )
    dataset = load_config(
        None,
        [
            "dataset.name=feature-table",
            f"dataset.root={crema_root}",
            "dataset.naming=crema-d",
            *overrides,
        ],
    ).dataset
    table = read_feature_table(dataset)
    assert list(table.rows["label"]) == ["angry", "sad"]
    assert list(table.rows["group"]) == ["1001", "1091"]


def test_bad_rows_are_reported_one_line_each_and_left_out(tmp_path: Path) -> None:
    rows = [
        *GOOD_ROWS,
        ["c4", "angry", "02", "", 0.2, 1.0, 2.0, 3.0],  # a missing audio value
        ["c5", "angry", "02", 0.1, 0.2, "NaN", 2.0, "abc"],  # NaN and text in video
        ["c6", "bored", "02", 0.1, 0.2, 1.0, 2.0, 3.0],  # not an emotion
        ["c1", "sad", "03", 0.1, 0.2, 1.0, 2.0, 3.0],  # c1 again, another label
        ["c3", "sad", "02", 0.5, 0.6, 7.0, 8.0, 9.0],  # c3 again, same label
        ["c7", "neutral", "03", 0.1, 0.2, 1.0, 2.0, 3.0],
    ]
    table = read_feature_table(table_config(write_csv(tmp_path / "t.csv", rows)).dataset)
    assert list(table.rows["clip_id"]) == ["c2", "c3", "c7"]  # nothing imputed
    reasons = [r.reason for r in table.rejected]
    assert reasons == [
        "row 2 (c1): clip also labelled in row 8 as sad (conflicting labels)",
        "row 5 (c4): missing audio value(s): mfcc_1",
        "row 6 (c5): missing video value(s): AU01; not a finite number (video): AU03='abc'",
        "row 7 (c6): unknown label 'bored' (known: neutral, calm, happy, sad, angry, "
        "fearful, disgust, surprised)",
        "row 8 (c1): clip also labelled in row 2 as angry (conflicting labels)",
        "row 9 (c3): clip id repeats row 4",
    ]
    assert all("\n" not in reason for reason in reasons)
    assert table.rejected[0].uri.endswith("t.csv#row 2")


def test_a_missing_clip_id_column_is_one_line(tmp_path: Path) -> None:
    root = write_csv(tmp_path / "t.csv", GOOD_ROWS, ["name", *HEADER[1:]])
    with pytest.raises(InputError) as error:
        read_feature_table(table_config(root).dataset)
    message = str(error.value)
    assert "\n" not in message
    assert "no clip-id column 'clip_id' (dataset.clip_id_column)" in message
    assert "columns: name, label, actor" in message


def test_a_modality_pattern_that_matches_no_column_is_one_line(tmp_path: Path) -> None:
    root = write_csv(tmp_path / "t.csv", GOOD_ROWS)
    with pytest.raises(InputError) as error:
        read_feature_table(table_config(root, "dataset.modalities.video=pose_*").dataset)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("dataset.modalities.video: 'pose_*' matches no column of ")
    assert "(feature columns: mfcc_1, mfcc_2, AU01, AU02, AU03)" in message  # not id/label


def test_a_pickle_or_an_unreadable_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^dataset.root: a feature table is a .csv or .parquet"):
        table_config(str(tmp_path / "features.pkl"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a readable parquet table"):
        read_feature_table(table_config(str(tmp_path / "broken.parquet")).dataset)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.modalities.label=mfcc_*"], "dataset.modalities.label: a modality name is"),
        (["dataset.modalities.audio=[]"], "dataset.modalities.audio: must be a glob pattern"),
        (["dataset.naming=iemocap"], "dataset.naming: 'iemocap' is not one of ravdess, crema-d"),
        (["dataset.label_column=null"], "dataset.label_column: give the table's label column"),
    ],
)
def test_bad_table_settings_stop_before_any_work(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    root = write_csv(tmp_path / "t.csv", GOOD_ROWS)
    with pytest.raises(ConfigError) as error:
        table_config(root, *overrides)
    assert str(error.value).startswith(message)


def test_a_table_without_modalities_is_refused(tmp_path: Path) -> None:
    root = write_csv(tmp_path / "t.csv", GOOD_ROWS)
    with pytest.raises(ConfigError, match=r"^dataset.modalities: give the table's modalities"):
        load_config(
            None, ["dataset.name=feature-table", f"dataset.root={root}", "dataset.label_column=x"]
        )


def test_table_settings_on_another_dataset_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"^dataset.modalities: only the feature-table dataset"):
        load_config(None, ["dataset.name=ravdess", "dataset.modalities.audio=x"])


def test_the_mapping_is_part_of_the_cache_key(tmp_path: Path) -> None:
    root = write_csv(tmp_path / "t.csv", GOOD_ROWS)
    adapter = DATASETS["feature-table"]
    first = adapter.table_stored_as(table_config(root).dataset)
    same = adapter.table_stored_as(table_config(root).dataset)
    other = adapter.table_stored_as(table_config(root, "dataset.modalities.video=AU0*").dataset)
    assert first == same and first.arrays == ("audio", "video")
    assert other.param_hash != first.param_hash


def test_ingest_stores_the_rows_reports_rejects_and_reingests_only_what_changed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.csv"
    rows = [*GOOD_ROWS, ["c4", "angry", "02", "", 0.2, 1.0, 2.0, 3.0]]
    config = table_config(write_csv(path, rows), workspace=tmp_path / "ws")
    summary = run_ingest(config, progress=False)
    assert (summary.clips, summary.computed) == (3, 3)
    assert "row 5 (c4): missing audio value(s): mfcc_1" in "\n".join(summary.lines())
    assert run_ingest(config, progress=False).computed == 0  # warm: the same key and rows

    features, left_out = feature_source(config, TASKS["baseline"], "fused").load()
    assert left_out == []
    assert features.clip_ids == ["c1", "c2", "c3"]
    np.testing.assert_array_equal(features.columns["modality.video"][0], np.float32([1, 2, 3]))
    np.testing.assert_array_equal(features.columns["modality.audio"][2], np.float32([0.5, 0.6]))

    regrouped = table_config(
        str(path), "dataset.modalities.video=[AU01]", workspace=tmp_path / "ws"
    )
    assert run_ingest(regrouped, progress=False).computed == 3  # a new mapping, a new key
    features, _ = feature_source(regrouped, TASKS["baseline"], "video").load()
    np.testing.assert_array_equal(features.columns["modality.video"][0], np.float32([1]))

    rows[0][3] = 9.5  # the table changes: every row has a new content hash
    write_csv(path, rows)
    assert run_ingest(config, progress=False).computed == 3
    features, _ = feature_source(config, TASKS["baseline"], "audio").load()
    np.testing.assert_array_equal(features.columns["modality.audio"][0], np.float32([9.5, 0.2]))

    with pytest.raises(InputError, match=r"the feature-table table holds audio, video, not "):
        feature_source(config, TASKS["wang"], "cnn-lpq")


def test_a_table_on_s3_reads_like_a_local_one(tmp_path: Path, moto_s3) -> None:
    local = write_csv(tmp_path / "t.csv", GOOD_ROWS)
    moto_s3.client.create_bucket(Bucket="tables")
    uri = moto_s3.upload(Path(local), "tables", "lab/features.csv")
    config = table_config(uri, f"store.endpoint_url={moto_s3.endpoint_url}")
    table = read_feature_table(config.dataset, config.storage_options)
    assert list(table.rows["clip_id"]) == ["c1", "c2", "c3"]


# -- the real SFEW table, as a feature table ------------------------------------------------


def sfew_as_csv(xlsx: Path, out: Path) -> str:
    """The spreadsheet's rows as a plain CSV: what a lab would export (label names, movie)."""
    sheet = openpyxl.load_workbook(xlsx, read_only=True, data_only=True).worksheets[0]
    lines = io.StringIO()
    writer = csv.writer(lines)
    writer.writerow(
        ["image", "emotion", "movie", *(f"lpq_{i}" for i in range(1, 6))]
        + [f"phog_{i}" for i in range(1, 6)]
    )
    for cells in list(sheet.iter_rows(values_only=True))[1:]:
        cells = tuple(cells) + (None,) * (12 - len(cells))
        if all(cell is None for cell in cells[:12]):
            continue
        image = str(cells[0]).removesuffix(".mat")
        movie = _IMAGE_NAME.fullmatch(image)
        code = cells[1]
        label = SFEW_LABELS.get(int(code), str(code)) if isinstance(code, int | float) else code
        writer.writerow([image, label, movie.group("movie") if movie else "", *cells[2:12]])
    out.write_text(lines.getvalue())
    return str(out)


def test_the_sfew_table_as_a_feature_table_gives_wang_the_same_numbers(
    shared_data: Path, tmp_path: Path
) -> None:
    xlsx = shared_data / "sfew" / "SFEW.xlsx"
    if not xlsx.is_file():
        pytest.skip(f"the real SFEW spreadsheet is not at {xlsx}")
    root = sfew_as_csv(xlsx, tmp_path / "sfew.csv")
    workspace = f"workspace={tmp_path / 'ws'}"
    table = load_config(
        None,
        [
            workspace,
            "dataset.name=feature-table",
            f"dataset.root={root}",
            "dataset.clip_id_column=image",
            "dataset.label_column=emotion",
            "dataset.actor_column=movie",
            "dataset.modalities.lpq=lpq_*",
            "dataset.modalities.phog=phog_*",
        ],
    )
    sfew = load_config(None, [workspace, "dataset.name=sfew-table", f"dataset.root={xlsx}"])
    assert run_ingest(table, progress=False).clips == 672  # as sfew-table: 3 rows left out
    run_ingest(sfew, progress=False)

    variant = "cnn-fused"
    ours, _ = feature_source(table, wang.SPEC, variant).load()
    theirs, _ = feature_source(sfew, wang.SPEC, variant).load()
    assert len(ours) == len(theirs) == 672
    assert ours.clip_ids == theirs.clip_ids
    np.testing.assert_array_equal(ours.labels, theirs.labels)
    np.testing.assert_array_equal(ours.actors, theirs.actors)
    for column in (wang.LPQ, wang.PHOG):
        np.testing.assert_array_equal(np.stack(ours.columns[column]), theirs.stacked(column))

    # One outer fold of the paper's protocol, a short training: the same folds, seed, numbers.
    folds = make_folds(wang.PAPER_PROTOCOL, ours.actors, ours.labels, n_folds=5, seed=0)
    train, test = folds[0]
    ids = np.asarray(ours.clip_ids)
    settings = {**wang.SPEC.config(variant).as_dict(), "epochs": 3, "lr": 1e-2, "batch_size": 32}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: one thread is fastest on a busy machine
    try:
        finals = [
            retrain_and_test("wang", variant, settings, features, ids[train], ids[test], 0, seed=0)
            for features in (ours, theirs)
        ]
    finally:
        torch.set_num_threads(threads)
    assert finals[0].metrics == finals[1].metrics
    assert finals[0].confusion == finals[1].confusion
    predicted_classes = np.count_nonzero(np.asarray(finals[0].confusion).sum(axis=0))
    assert predicted_classes >= 2  # a trained net, not one constant answer twice
