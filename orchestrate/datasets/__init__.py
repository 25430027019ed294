"""Dataset adapters: a plain name -> listing-function registry.

``ADAPTERS`` maps a dataset name to a function
``(root, storage_options, vocal_channel) -> ClipListing`` that lists the labelled clips under
a local folder or ``s3://bucket/prefix`` (``vocal_channel``, ``dataset.vocal_channel``, is
RAVDESS's speech/song choice; adapters of datasets without one ignore it). ``DATASETS``
is every dataset the project knows, including ``sfew-table``: a table of precomputed
features rather than media, read with :func:`read_sfew_table` instead of listed as clips.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from orchestrate.datasets.base import Clip, ClipListing, RejectedFile
from orchestrate.datasets.crema_d import list_crema_d
from orchestrate.datasets.ravdess import list_ravdess
from orchestrate.datasets.sfew_table import SfewTable, read_sfew_table


class ClipLister(Protocol):
    """A dataset adapter's listing function."""

    def __call__(
        self,
        root: str,
        storage_options: Mapping[str, str] | None = None,
        vocal_channel: str = "speech",
    ) -> ClipListing: ...


ADAPTERS: dict[str, ClipLister] = {
    "ravdess": list_ravdess,
    "crema-d": list_crema_d,
}
DATASETS: tuple[str, ...] = ("ravdess", "crema-d", "sfew-table")

__all__ = [
    "ADAPTERS",
    "DATASETS",
    "Clip",
    "ClipListing",
    "RejectedFile",
    "SfewTable",
    "list_clips",
    "read_sfew_table",
]


def list_clips(
    dataset: str,
    root: str,
    storage_options: Mapping[str, str] | None = None,
    vocal_channel: str = "speech",
) -> ClipListing:
    """The clips of ``dataset`` under ``root`` (a local folder or ``s3://bucket/prefix``).

    ``vocal_channel`` (``speech``, ``song`` or ``all``) selects RAVDESS's channel; datasets
    without one ignore it.

    Raises ValueError for a name not in ``ADAPTERS`` (``sfew-table`` included: it has no
    clips) and FileNotFoundError when ``root`` does not exist.
    """
    if dataset == "sfew-table":
        raise ValueError(
            "dataset 'sfew-table' is a feature table, not clips: read it with read_sfew_table"
        )
    if dataset not in ADAPTERS:
        raise ValueError(
            f"unknown dataset {dataset!r}; clip datasets are: {', '.join(ADAPTERS)} "
            f"(all datasets: {', '.join(DATASETS)})"
        )
    return ADAPTERS[dataset](root, storage_options, vocal_channel=vocal_channel)
