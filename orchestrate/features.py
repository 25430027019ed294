"""From the feature store to a task's ``FeatureSet``: what sweeps and ``orchestrate train`` read.

Trials read cached features only, never media: the clip manifest of the last ingest says
which clips the dataset holds, and each extractor's rows are joined on the content hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from orchestrate.config import RunConfig
from orchestrate.errors import InputError
from orchestrate.extractors import EXTRACTORS, build_extractor
from orchestrate.store import SHAPE_SUFFIX, ExtractorKey, FeatureStore, decode_array
from tasks.common import MODALITY_PREFIX, FeatureSet, TaskSpec

if TYPE_CHECKING:
    from orchestrate.datasets import DatasetAdapter, StoredAs

# What a ``modality.<name>`` column reads on a clip dataset: a fixed-size vector per clip,
# computed without network weights. Audio: EMODal's 68 pyAudioAnalysis short-term features
# averaged over the clip. Video: the 256-bin LPQ texture histogram of the face (Wang's
# descriptor; the FER CNN's 7 probabilities need a weights file, EMODal's face is a
# 128x128 image, VGG16's features a sequence).
CLIP_MODALITY_COLUMNS: dict[str, str] = {
    "audio": "emodal_audio.features",
    "video": "wang_texture.lpq",
}


@dataclass(frozen=True)
class FeatureSource:
    """Where a task variant's features live: picklable, so every trial reads them itself."""

    store_uri: str
    storage_options: dict[str, str]
    dataset: str
    root: str
    columns: tuple[str, ...]  # "<extractor>.<array>", as the task names them
    keys: dict[str, ExtractorKey] = field(hash=False)  # by the stored extractor's name
    classes: tuple[str, ...]
    # The store column each task column is read from, where it differs (stored_column).
    stored: dict[str, str] = field(default_factory=dict, hash=False)
    # Only clips of these emotions (empty: every class of the task): the baseline beside a
    # paper reads that paper's clips, its labels still indexing its own classes.
    only_labels: tuple[str, ...] = ()

    @property
    def manifest_uri(self) -> str:
        """Where the clip manifest of this dataset's last ingest lives in the store."""
        store = FeatureStore(self.store_uri, self.storage_options)
        path = store.manifest_path(self.dataset, self.root)
        return f"s3://{path}" if self.store_uri.startswith("s3://") else path

    def load(self) -> tuple[FeatureSet, list[tuple[str, str]]]:
        """The features of every clip that has them all, and the clips left out with why.

        Clips whose media are byte-identical (one content hash) are one clip: the first by
        ``clip_id`` is kept, the others are left out as "byte-identical to <clip id>" (e.g.
        RAVDESS's Actor_07 audio 03-01-03-01-02-01-07 and -02-07), so one recording never
        counts twice or sits on both sides of a split. Left-out clips come sorted by id.
        """
        store = FeatureStore(self.store_uri, self.storage_options)
        manifest = store.read_manifest(self.dataset, self.root)
        manifest = manifest[manifest["label"].isin(self.classes)]
        if self.only_labels:
            manifest = manifest[manifest["label"].isin(self.only_labels)]
        manifest = manifest.sort_values("clip_id").reset_index(drop=True)
        twins = manifest.duplicated("content_hash", keep="first")
        first_of = dict(
            zip(manifest.loc[~twins, "content_hash"], manifest.loc[~twins, "clip_id"], strict=True)
        )
        identical = [
            (clip_id, f"byte-identical to {first_of[content]}")
            for clip_id, content in zip(
                manifest.loc[twins, "clip_id"], manifest.loc[twins, "content_hash"], strict=True
            )
        ]
        manifest = manifest[~twins].reset_index(drop=True)
        hashes = set(manifest["content_hash"])
        arrays: dict[str, dict[str, np.ndarray]] = {}
        left_out: dict[str, str] = {}
        stored = {column: self.stored.get(column, column) for column in self.columns}
        for extractor in dict.fromkeys(s.split(".", 1)[0] for s in stored.values()):
            rows = store.feature_rows(self.keys[extractor], hashes)
            wanted = {
                column: s.split(".", 1)[1]
                for column, s in stored.items()
                if s.split(".", 1)[0] == extractor
            }
            found = set()
            for row in rows.to_dict("records"):
                found.add(row["content_hash"])
                if row["status"] != "ok":
                    left_out.setdefault(row["content_hash"], f"{extractor}: {row['reason']}")
                    continue
                for column, name in wanted.items():
                    arrays.setdefault(column, {})[row["content_hash"]] = decode_array(
                        row[name], row[name + SHAPE_SUFFIX]
                    )
            for content in hashes - found:
                left_out.setdefault(content, f"{extractor}: not ingested")
        keep = manifest[~manifest["content_hash"].isin(left_out)]
        features = FeatureSet(
            clip_ids=list(keep["clip_id"]),
            actors=keep["actor"].to_numpy(dtype=str),
            labels=np.array([self.classes.index(label) for label in keep["label"]], dtype=int),
            columns={
                column: [arrays[column][content] for content in keep["content_hash"]]
                for column in self.columns
            },
            classes=self.classes,
        )
        dropped = manifest[manifest["content_hash"].isin(left_out)]
        reasons = [
            (clip_id, left_out[content])
            for clip_id, content in zip(dropped["clip_id"], dropped["content_hash"], strict=True)
        ]
        return features, sorted(reasons + identical)


def feature_source(
    config: RunConfig, task: TaskSpec, variant: str, only_labels: tuple[str, ...] = ()
) -> FeatureSource:
    """The feature source of one task variant under this run's dataset and extractor params.

    ``only_labels`` keeps the clips of those emotions only (the baseline beside a paper).
    """
    from orchestrate.datasets import dataset_adapter
    from orchestrate.stages.ingest import extractor_key, table_key

    columns = task.variant(variant).columns
    adapter = dataset_adapter(config.dataset.name)
    stored_as = (
        adapter.table_stored_as(config.dataset) if adapter.yields == "feature-table" else None
    )
    keys: dict[str, ExtractorKey] = {}
    stored: dict[str, str] = {}
    for column in columns:
        stored[column] = stored_column(adapter, stored_as, column)
        name = stored[column].split(".", 1)[0]
        if stored_as is not None:
            keys[name] = table_key(stored_as)
        else:
            keys[name] = extractor_key(
                build_extractor(name, config.ingest.extractors.get(name, {})),
                config.dataset.faces,
                config.ingest.face_detect_width,
            )
    if config.dataset.root is None:
        raise InputError("dataset.root: give the dataset the features were ingested from")
    return FeatureSource(
        store_uri=config.store_uri,
        storage_options=config.storage_options,
        dataset=config.dataset.name,
        root=config.dataset.root,
        columns=columns,
        keys=keys,
        classes=task.classes,
        stored={column: s for column, s in stored.items() if s != column},
        only_labels=tuple(only_labels),
    )


def stored_column(adapter: DatasetAdapter, stored_as: StoredAs | None, column: str) -> str:
    """The store column (``"<extractor>.<array>"``) a task's ``column`` reads on this dataset.

    On a clip dataset a column is itself, and ``modality.<name>`` is the extractor vector
    ``CLIP_MODALITY_COLUMNS`` names. A feature table (``stored_as``) holds one set of
    arrays and serves each task column by its array name: ``modality.audio``,
    ``feature_table.audio`` or ``wang_texture.lpq`` read the table's ``audio`` / ``lpq``.
    """
    prefix, array = column.split(".", 1)
    if stored_as is not None:
        if array not in stored_as.arrays:
            raise InputError(
                f"the {adapter.name} table holds {', '.join(stored_as.arrays)}, not {column}"
            )
        return f"{stored_as.extractor}.{array}"
    if prefix == MODALITY_PREFIX:
        if array not in CLIP_MODALITY_COLUMNS:
            known = ", ".join(f"{MODALITY_PREFIX}.{m}" for m in CLIP_MODALITY_COLUMNS)
            raise InputError(f"{column}: clip datasets give {known}")
        return CLIP_MODALITY_COLUMNS[array]
    return column


def column_modality(column: str) -> str:
    """``audio`` or ``video``: a column's extractor's, or the name a ``modality.<name>`` gives."""
    prefix, array = column.split(".", 1)
    if prefix == MODALITY_PREFIX:
        return array
    return getattr(EXTRACTORS.get(prefix), "modality", "video")


def variant_modalities(task: TaskSpec, variant: str) -> set[str]:
    """The modalities a task variant's columns read."""
    return {column_modality(column) for column in task.variant(variant).columns}


def baseline_beside(config: RunConfig, task: TaskSpec, variants: list[str]) -> list[str]:
    """The baseline's variants swept beside ``task``'s rows: ``sweep.baseline``, less any that
    reads a modality none of the paper's ``variants`` reads (Wang's stills: video only)."""
    from tasks import TASKS

    baseline = TASKS["baseline"]
    if task.name == baseline.name or not task.paper_results:
        return []
    read = set().union(*(variant_modalities(task, v) for v in variants)) if variants else set()
    return [v for v in config.sweep.baseline if variant_modalities(baseline, v) <= read]
