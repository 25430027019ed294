"""From the feature store to a task's ``FeatureSet``: what sweeps and ``orchestrate train`` read.

Trials read cached features only, never media: the clip manifest of the last ingest says
which clips the dataset holds, and each extractor's rows are joined on the content hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from orchestrate.config import RunConfig
from orchestrate.errors import InputError
from orchestrate.extractors import build_extractor
from orchestrate.store import SHAPE_SUFFIX, ExtractorKey, FeatureStore, decode_array
from tasks.common import FeatureSet, TaskSpec


@dataclass(frozen=True)
class FeatureSource:
    """Where a task variant's features live: picklable, so every trial reads them itself."""

    store_uri: str
    storage_options: dict[str, str]
    dataset: str
    root: str
    columns: tuple[str, ...]  # "<extractor>.<array>"
    keys: dict[str, ExtractorKey] = field(hash=False)
    classes: tuple[str, ...]

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
        for extractor in dict.fromkeys(column.split(".", 1)[0] for column in self.columns):
            rows = store.feature_rows(self.keys[extractor], hashes)
            wanted = [c.split(".", 1)[1] for c in self.columns if c.split(".", 1)[0] == extractor]
            found = set()
            for row in rows.to_dict("records"):
                found.add(row["content_hash"])
                if row["status"] != "ok":
                    left_out.setdefault(row["content_hash"], f"{extractor}: {row['reason']}")
                    continue
                for name in wanted:
                    column = f"{extractor}.{name}"
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


def feature_source(config: RunConfig, task: TaskSpec, variant: str) -> FeatureSource:
    """The feature source of one task variant under this run's dataset and extractor params."""
    from orchestrate.datasets import dataset_adapter
    from orchestrate.stages.ingest import extractor_key, table_key

    columns = task.variant(variant).columns
    adapter = dataset_adapter(config.dataset.name)
    keys: dict[str, ExtractorKey] = {}
    for column in columns:
        name, array = column.split(".", 1)
        stored_as = adapter.stored_as
        if adapter.yields == "feature-table" and stored_as is not None:
            if (name, array) not in {(stored_as.extractor, a) for a in stored_as.arrays}:
                held = ", ".join(f"{stored_as.extractor}.{a}" for a in stored_as.arrays)
                raise InputError(f"the {adapter.name} table holds {held}, not {column}")
            keys[name] = table_key(stored_as)
        else:
            keys[name] = extractor_key(
                build_extractor(name, config.ingest.extractors.get(name, {})),
                config.dataset.faces,
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
    )
