"""Dataset adapters, described as data: a plain name -> ``DatasetAdapter`` registry.

Each adapter says what it yields: ``"clips"`` (RAVDESS, CREMA-D, and ``image-folder``'s
still images as one-frame clips: its ``list_clips`` lists the labelled clips under a local
folder or ``s3://bucket/prefix``, for ingest to decode) or
``"feature-table"`` (the SFEW spreadsheet, or any per-clip CSV/Parquet table: its
``read_table`` reads features computed elsewhere, stored under the extractor key
``table_stored_as`` names for the run's dataset config). The stages branch on
``yields``; everything dataset-specific lives in the adapter's module.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrate.datasets import crema_d, feature_table, image_folder, ravdess, sfew_table
from orchestrate.datasets.base import (
    Clip,
    ClipLister,
    ClipListing,
    DatasetAdapter,
    FeatureTable,
    RejectedFile,
    StoredAs,
)
from orchestrate.datasets.sfew_table import SfewTable, read_sfew_table
from orchestrate.errors import InputError

DATASETS: dict[str, DatasetAdapter] = {
    adapter.name: adapter
    for adapter in (
        ravdess.ADAPTER,
        crema_d.ADAPTER,
        image_folder.ADAPTER,
        sfew_table.ADAPTER,
        feature_table.ADAPTER,
    )
}

__all__ = [
    "DATASETS",
    "Clip",
    "ClipLister",
    "ClipListing",
    "DatasetAdapter",
    "FeatureTable",
    "RejectedFile",
    "SfewTable",
    "StoredAs",
    "dataset_adapter",
    "list_clips",
    "read_sfew_table",
]


def dataset_adapter(dataset: str) -> DatasetAdapter:
    """The adapter called ``dataset``; InputError naming the known ones otherwise."""
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    return DATASETS[dataset]


def list_clips(
    dataset: str,
    root: str,
    storage_options: Mapping[str, str] | None = None,
    vocal_channel: str = "speech",
) -> ClipListing:
    """The clips of ``dataset`` under ``root`` (a local folder or ``s3://bucket/prefix``).

    ``vocal_channel`` (``speech``, ``song`` or ``all``) selects RAVDESS's channel; datasets
    without one ignore it.

    Raises InputError for an unknown dataset or one that yields no clips (a feature
    table), and MissingInput when ``root`` does not exist.
    """
    adapter = dataset_adapter(dataset)
    if adapter.list_clips is None:
        clip_datasets = [name for name, a in DATASETS.items() if a.yields == "clips"]
        raise InputError(
            f"dataset {dataset!r} yields a {adapter.yields}, not clips "
            f"(clip datasets: {', '.join(clip_datasets)})"
        )
    return adapter.list_clips(root, storage_options, vocal_channel=vocal_channel)
