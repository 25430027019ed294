"""FeatureSource.load: from the store's manifest and feature rows to a task's FeatureSet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrate.features import FeatureSource
from orchestrate.store import CLIP_COLUMNS, ExtractorKey, FeatureStore, encode_arrays

KEY = ExtractorKey("emodal_audio", "1", "abc123")
ROOT = "/corpus/ravdess"


def write_ingest(store_dir: Path, clips: list[dict], rows: list[dict]) -> FeatureStore:
    """A manifest and one extractor's rows, written through the store's own layout."""
    store = FeatureStore(str(store_dir))
    manifest = pd.DataFrame(
        [
            {**clip, "dataset": "ravdess", "source_uri": f"{ROOT}/{clip['clip_id']}.wav"}
            for clip in clips
        ]
    )
    store.write_manifest("ravdess", ROOT, manifest)
    by_hash = {clip["content_hash"]: clip for clip in clips}
    records = []
    for row in rows:
        clip = {**by_hash[row["content_hash"]], "dataset": "ravdess", "source_uri": "-"}
        arrays = {"features": row["features"]} if "features" in row else {}
        records.append(
            {
                **{name: clip[name] for name in CLIP_COLUMNS},
                "extractor": KEY.name,
                "version": KEY.version,
                "param_hash": KEY.param_hash,
                "status": row["status"],
                "reason": row.get("reason", ""),
                **encode_arrays(arrays, ("features",)),
            }
        )
    directory = Path(store.path(KEY.directory))
    directory.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(records), directory / "part-0.parquet")
    return store


def test_byte_identical_clips_count_once(tmp_path: Path) -> None:
    clips = [
        # Outside the task's classes: never a clip here, so never the "first" of a twin pair.
        {
            "clip_id": "03-01-01-01-01-01-07",
            "actor": "07",
            "label": "neutral",
            "content_hash": "h1",
        },
        # RAVDESS's public audio copy: two takes of Actor_07 with the very same bytes.
        {"clip_id": "03-01-03-01-02-02-07", "actor": "07", "label": "happy", "content_hash": "h1"},
        {"clip_id": "03-01-03-01-02-01-07", "actor": "07", "label": "happy", "content_hash": "h1"},
        {"clip_id": "03-01-04-01-01-01-07", "actor": "07", "label": "sad", "content_hash": "h2"},
        {"clip_id": "03-01-05-01-01-01-08", "actor": "08", "label": "angry", "content_hash": "h3"},
        {"clip_id": "03-01-05-01-01-02-08", "actor": "08", "label": "angry", "content_hash": "h3"},
    ]
    write_ingest(
        tmp_path / "store",
        clips,
        [
            {"content_hash": "h1", "status": "ok", "features": np.ones(3)},
            {"content_hash": "h2", "status": "ok", "features": np.full(3, 2.0)},
            {"content_hash": "h3", "status": "failed", "reason": "no audio stream"},
        ],
    )
    source = FeatureSource(
        store_uri=str(tmp_path / "store"),
        storage_options={},
        dataset="ravdess",
        root=ROOT,
        columns=("emodal_audio.features",),
        keys={"emodal_audio": KEY},
        classes=("angry", "happy", "sad"),
    )
    features, left_out = source.load()
    # The first clip (by clip_id) of each content hash is kept, the others are reported.
    assert features.clip_ids == ["03-01-03-01-02-01-07", "03-01-04-01-01-01-07"]
    assert features.labels.tolist() == [1, 2] and features.actors.tolist() == ["07", "07"]
    np.testing.assert_array_equal(features.columns["emodal_audio.features"][0], np.ones(3))
    assert left_out == [
        ("03-01-03-01-02-02-07", "byte-identical to 03-01-03-01-02-01-07"),
        ("03-01-05-01-01-01-08", "emodal_audio: no audio stream"),
        ("03-01-05-01-01-02-08", "byte-identical to 03-01-05-01-01-01-08"),
    ]
