"""Ingest from and into S3 (moto's real S3 HTTP server on 127.0.0.1): same rows as a local run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from orchestrate.config import load_config
from orchestrate.extractors import build_extractor
from orchestrate.pipeline import ingest
from orchestrate.stages.ingest import extractor_key
from orchestrate.store import FeatureStore

CLIPS = {
    "av/01-01-01-01-01-01-01.mp4": "ravdess/av/01-01-01-01-01-01-01.mp4",
    "Actor_01/03-01-05-01-01-01-01.wav": "ravdess/audio/Actor_01/03-01-05-01-01-01-01.wav",
    "Actor_02/03-01-03-02-02-01-02.wav": "ravdess/audio/Actor_02/03-01-03-02-02-01-02.wav",
}
# What these tasks read is what is ingested: emodal_audio, emodal_face, song_mfcc.
TASKS = "{emodal: {}, song: {variants: [audio]}}"


def _rows(store: FeatureStore, name: str) -> pd.DataFrame:
    key = extractor_key(build_extractor(name, {}))
    frame = store.read_features(key)
    assert frame is not None, f"no {name} rows in {store.uri}"
    return frame.sort_values("clip_id").reset_index(drop=True)


def test_s3_round_trip_matches_local(shared_data: Path, tmp_path: Path, moto_s3) -> None:
    local_root = tmp_path / "clips"
    moto_s3.client.create_bucket(Bucket="media")
    moto_s3.client.create_bucket(Bucket="store")
    for key, source in CLIPS.items():
        (local_root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / source, local_root / key)
        moto_s3.upload(shared_data / source, "media", f"ravdess/{key}")

    # Ray starts after the fixture set the (fake) AWS credentials: workers inherit them.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s3_config = load_config(
            None,
            [
                f"workspace={tmp_path / 'ws-s3'}",
                "dataset.root=s3://media/ravdess",
                "store.uri=s3://store/features",
                f"store.endpoint_url={moto_s3.endpoint_url}",
                "store.region=us-east-1",
                f"tasks={TASKS}",
            ],
        )
        s3_summary = ingest(s3_config, progress=False)
        local_config = load_config(
            None,
            [
                f"workspace={tmp_path / 'ws-local'}",
                f"dataset.root={local_root}",
                f"tasks={TASKS}",
            ],
        )
        local_summary = ingest(local_config, progress=False)
    finally:
        ray.shutdown()

    assert s3_summary.clips == local_summary.clips == 3
    assert s3_summary.failed == local_summary.failed == 0
    listed = moto_s3.client.list_objects_v2(Bucket="store", Prefix="features/features/")
    assert any(obj["Key"].endswith(".parquet") for obj in listed.get("Contents", []))

    s3_store = FeatureStore(s3_config.store_uri, s3_config.storage_options)
    local_store = FeatureStore(local_config.store_uri)
    for name in ("emodal_audio", "emodal_face", "song_mfcc"):
        remote, local = _rows(s3_store, name), _rows(local_store, name)
        assert list(remote["clip_id"]) == list(local["clip_id"])
        assert list(remote["content_hash"]) == list(local["content_hash"])
        assert list(remote["status"]) == list(local["status"])
        for column in local.columns:
            if column in ("source_uri",):
                continue
            for a, b in zip(remote[column], local[column], strict=True):
                if isinstance(b, np.ndarray):
                    np.testing.assert_array_equal(a, b)
                else:
                    assert a == b, (name, column)
    assert (
        s3_store.read_manifest("ravdess", "s3://media/ravdess")["source_uri"]
        .str.startswith("s3://")
        .all()
    )
