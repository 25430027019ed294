"""The feature store: Parquet under a local directory or ``s3://bucket/prefix``.

Layout::

    <store>/features/<extractor>/v<version>-<param hash>/*.parquet   one row per (clip, extractor)
    <store>/manifests/<dataset>-<root hash>.parquet                  the clips of the last ingest

A feature row holds the clip's id, dataset, actor, label, source URI and content hash, the
extractor's name, version and parameter hash, ``status`` (``ok`` or ``failed``) with a
one-line ``reason``, and every feature array as a flat ``list<float32>`` column ``<array>``
with its shape in ``<array>__shape``. The cache key is (content hash, extractor, version,
parameter hash): the directory names the last three, the row the first, so a changed
parameter or version lands in a new directory and a changed clip gets a new row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrate.datasets.filesystem import resolve_filesystem

CLIP_COLUMNS = ("clip_id", "dataset", "actor", "label", "source_uri", "content_hash")
ROW_COLUMNS = (*CLIP_COLUMNS, "extractor", "version", "param_hash", "status", "reason")
SHAPE_SUFFIX = "__shape"


@dataclass(frozen=True)
class ExtractorKey:
    """Which extractor, at which version, with which parameters, made a set of features."""

    name: str
    version: str
    param_hash: str

    @property
    def directory(self) -> str:
        return f"features/{self.name}/v{self.version}-{self.param_hash}"


class FeatureStore:
    """Reads and writes feature rows and clip manifests through ``pyarrow.fs``."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None):
        self.uri = uri.rstrip("/")
        self.storage_options = storage_options or {}
        self.filesystem, self.base_path = resolve_filesystem(self.uri, self.storage_options)

    def path(self, relative: str) -> str:
        return f"{self.base_path.rstrip('/')}/{relative}"

    # -- features ---------------------------------------------------------------------------

    def cached_hashes(self, key: ExtractorKey) -> set[str]:
        """Content hashes that already have a row (ok or failed) for this extractor key."""
        table = self._read(key.directory, columns=["content_hash"])
        return set() if table is None else set(table.column("content_hash").to_pylist())

    def read_features(self, key: ExtractorKey) -> pd.DataFrame | None:
        """Every row stored for this extractor key (None when nothing was stored yet)."""
        table = self._read(key.directory)
        return None if table is None else table.to_pandas()

    def feature_rows(self, key: ExtractorKey, content_hashes: set[str]) -> pd.DataFrame:
        """The newest row per content hash among ``content_hashes``, arrays decoded."""
        frame = self.read_features(key)
        if frame is None:
            return pd.DataFrame(columns=list(ROW_COLUMNS))
        frame = frame[frame["content_hash"].isin(content_hashes)]
        # A clip ingested twice under the same key keeps its first row: same input, same output.
        return frame.drop_duplicates("content_hash", keep="first").reset_index(drop=True)

    def _read(self, relative: str, columns: list[str] | None = None) -> pa.Table | None:
        path = self.path(relative)
        if self.filesystem.get_file_info(path).type != pafs.FileType.Directory:
            return None
        dataset = pds.dataset(path, filesystem=self.filesystem, format="parquet")
        if not dataset.files:
            return None
        return dataset.to_table(columns=columns)

    # -- manifests --------------------------------------------------------------------------

    def manifest_path(self, dataset: str, root: str) -> str:
        root_hash = hashlib.sha256(root.encode()).hexdigest()[:8]
        return self.path(f"manifests/{dataset}-{root_hash}.parquet")

    def write_manifest(self, dataset: str, root: str, clips: pd.DataFrame) -> None:
        """Record the clips of an ingest: the sweep reads this, never the media."""
        path = self.manifest_path(dataset, root)
        self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        table = pa.Table.from_pandas(clips[list(CLIP_COLUMNS)], preserve_index=False)
        with self.filesystem.open_output_stream(path) as stream:
            pq.write_table(table, stream)

    def read_manifest(self, dataset: str, root: str) -> pd.DataFrame:
        path = self.manifest_path(dataset, root)
        if self.filesystem.get_file_info(path).type != pafs.FileType.File:
            raise FileNotFoundError(
                f"no ingest of {dataset} at {root} in the feature store {self.uri}: "
                "run `orchestrate ingest` first"
            )
        with self.filesystem.open_input_file(path) as stream:
            return pq.read_table(stream).to_pandas()


def encode_arrays(arrays: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, Any]:
    """Feature arrays as store columns: flat float32 lists plus shapes (empty when missing)."""
    columns: dict[str, Any] = {}
    for name in outputs:
        array = arrays.get(name)
        if array is None:
            columns[name] = []
            columns[name + SHAPE_SUFFIX] = []
        else:
            array = np.asarray(array, dtype=np.float32)
            columns[name] = array.ravel().tolist()
            columns[name + SHAPE_SUFFIX] = list(array.shape)
    return columns


def decode_array(values: Any, shape: Any) -> np.ndarray:
    """One stored feature array back to its shape."""
    return np.asarray(values, dtype=np.float32).reshape(tuple(int(s) for s in shape))
