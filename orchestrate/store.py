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

Ingest writes as its blocks finish: each block of clips leaves one file per extractor,
``part-<digest>.parquet``, named by the digest of the block's content hashes (a retried or
repeated block overwrites its own file, never adds a second one) and written under a
hidden temporary name first (Parquet readers skip names starting with ``.``), so a
stopped ingest keeps every finished block and never leaves a half-written file behind.
A content hash may still have two rows under one key (the same bytes under two names, a
``--retry-failed`` run): readers take an ``ok`` row over a ``failed`` one, else the first.

A manifest row holds the clip columns and ``source_identity``: the size and modification
time (ETag on S3) of each of the clip's files when it was hashed, so the next ingest knows
an unchanged clip's content hash without reading it (``ingest.always_hash`` reads it anyway).
The cache check and the ingest summary read only ``content_hash``, ``status`` and
``reason`` (column projection and a filter): no feature array reaches the driver.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrate.datasets.filesystem import resolve_filesystem
from orchestrate.errors import MissingInput

CLIP_COLUMNS = ("clip_id", "dataset", "actor", "label", "source_uri", "content_hash")
ROW_COLUMNS = (*CLIP_COLUMNS, "extractor", "version", "param_hash", "status", "reason")
SHAPE_SUFFIX = "__shape"
STATUS_COLUMNS = ["content_hash", "status", "reason"]
IDENTITY_COLUMN = "source_identity"


def row_schema(outputs: tuple[str, ...]) -> pa.Schema:
    """The schema of one extractor's rows: the row columns, then each array and its shape."""
    return pa.schema(
        [(name, pa.string()) for name in ROW_COLUMNS]
        + [
            field
            for name in outputs
            for field in (
                (name, pa.list_(pa.float32())),
                (name + SHAPE_SUFFIX, pa.list_(pa.int32())),
            )
        ]
    )


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

    def cached_hashes(self, key: ExtractorKey, ok_only: bool = False) -> set[str]:
        """Content hashes that already have a row (ok or failed; ``ok_only``: ok) for this key."""
        if not ok_only:
            table = self._read(key.directory, columns=["content_hash"])
            return set() if table is None else set(table.column("content_hash").to_pylist())
        table = self._read(
            key.directory, columns=["content_hash"], filter=pc.field("status") == "ok"
        )
        return set() if table is None else set(table.column("content_hash").to_pylist())

    def row_statuses(self, key: ExtractorKey, content_hashes: set[str]) -> pd.DataFrame:
        """``content_hash``, ``status``, ``reason`` of the rows of ``content_hashes``.

        Projected and filtered in pyarrow: the feature arrays are never read.
        """
        wanted = pa.array(sorted(content_hashes), type=pa.string())
        table = self._read(
            key.directory, columns=STATUS_COLUMNS, filter=pc.field("content_hash").isin(wanted)
        )
        if table is None:
            return pd.DataFrame(columns=STATUS_COLUMNS)
        return table.to_pandas()

    def write_rows(self, key: ExtractorKey, table: pa.Table) -> str:
        """Write one block's rows for ``key``; returns the file's path.

        The name is the digest of the rows' content hashes, so writing the same block again
        (a retried task) replaces the file instead of adding duplicate rows; the rows go to
        a hidden temporary name first, which readers skip, then are moved into place.
        """
        hashes = sorted(table.column("content_hash").to_pylist())
        digest = hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:24]
        directory = self.path(key.directory)
        self.filesystem.create_dir(directory, recursive=True)
        final = f"{directory}/part-{digest}.parquet"
        if isinstance(self.filesystem, pafs.S3FileSystem):
            # An S3 PUT is atomic: the object appears whole or not at all.
            with self.filesystem.open_output_stream(final) as stream:
                pq.write_table(table, stream)
            return final
        temporary = f"{directory}/.part-{digest}-{uuid.uuid4().hex[:8]}.tmp"
        with self.filesystem.open_output_stream(temporary) as stream:
            pq.write_table(table, stream)
        self.filesystem.move(temporary, final)
        return final

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
        # A clip ingested twice under the same key keeps its first row (same input, same
        # output), except that an ok row (a failure retried with --retry-failed) wins.
        frame = frame.iloc[np.argsort((frame["status"] != "ok").to_numpy(), kind="stable")]
        return frame.drop_duplicates("content_hash", keep="first").reset_index(drop=True)

    def _read(
        self, relative: str, columns: list[str] | None = None, filter: pc.Expression | None = None
    ) -> pa.Table | None:
        path = self.path(relative)
        if self.filesystem.get_file_info(path).type != pafs.FileType.Directory:
            return None
        dataset = pds.dataset(path, filesystem=self.filesystem, format="parquet")
        if not dataset.files:
            return None
        return dataset.to_table(columns=columns, filter=filter)

    # -- manifests --------------------------------------------------------------------------

    def manifest_path(self, dataset: str, root: str) -> str:
        root_hash = hashlib.sha256(root.encode()).hexdigest()[:8]
        return self.path(f"manifests/{dataset}-{root_hash}.parquet")

    def write_manifest(self, dataset: str, root: str, clips: pd.DataFrame) -> None:
        """Record the clips of an ingest: the sweep reads this, never the media.

        ``clips`` has the clip columns and, for media datasets, ``source_identity``.
        """
        path = self.manifest_path(dataset, root)
        self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        columns = [*CLIP_COLUMNS, *([IDENTITY_COLUMN] if IDENTITY_COLUMN in clips else [])]
        table = pa.Table.from_pandas(clips[columns], preserve_index=False)
        with self.filesystem.open_output_stream(path) as stream:
            pq.write_table(table, stream)

    def read_manifest(self, dataset: str, root: str) -> pd.DataFrame:
        path = self.manifest_path(dataset, root)
        if self.filesystem.get_file_info(path).type != pafs.FileType.File:
            raise MissingInput(
                f"no ingest of {dataset} at {root} in the feature store {self.uri}: "
                "run `orchestrate ingest` first"
            )
        with self.filesystem.open_input_file(path) as stream:
            return pq.read_table(stream).to_pandas()

    def manifest_identities(self, dataset: str, root: str) -> dict[str, tuple[str, str, str]]:
        """clip id -> (source URI, source identity, content hash) from the last ingest's manifest.

        Empty when there is none, or when it predates identities (every clip is hashed).
        """
        path = self.manifest_path(dataset, root)
        if self.filesystem.get_file_info(path).type != pafs.FileType.File:
            return {}
        with self.filesystem.open_input_file(path) as stream:
            parquet = pq.ParquetFile(stream)
            if IDENTITY_COLUMN not in parquet.schema_arrow.names:
                return {}
            table = parquet.read(columns=["clip_id", "source_uri", IDENTITY_COLUMN, "content_hash"])
        return {
            clip_id: (uri, identity, content)
            for clip_id, uri, identity, content in zip(*table.to_pydict().values(), strict=True)
            if identity
        }


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
