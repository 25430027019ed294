"""What a dataset adapter is and what it hands to the ingest stage.

An adapter is described as data (``DatasetAdapter``): its name, what it yields — clips to
decode (``"clips"``: a ``ClipListing``) or a table of features computed elsewhere
(``"feature-table"``: rows of arrays, stored under the extractor key they stand for) —
and the function that produces them. The stages branch on ``yields``, never on a name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from orchestrate.config import DatasetConfig


@dataclass(frozen=True)
class Clip:
    """One labelled recording, as a dataset adapter lists it.

    ``video_uri`` and ``audio_uri`` are local paths or ``s3://`` URIs. For a full
    audio-visual container both name the same file; for RAVDESS video-only clips paired
    with their audio-only twin they differ; one of them is ``None`` for a single-modality
    clip.
    """

    clip_id: str
    dataset: str
    actor: str
    label: str  # one of orchestrate.emotions.EMOTIONS
    video_uri: str | None
    audio_uri: str | None


@dataclass(frozen=True)
class RejectedFile:
    """A file an adapter could not turn into a clip, with a one-line reason."""

    uri: str
    reason: str


@dataclass
class ClipListing:
    """An adapter's answer: the clips it understood, the files it rejected, and those skipped.

    ``skipped`` counts media files the run's settings leave out on purpose (not errors,
    e.g. RAVDESS's song channel under ``dataset.vocal_channel=speech``): one-line reason ->
    number of files, each reason phrased to follow its count ("12 files of the ... left out").
    """

    dataset: str
    clips: list[Clip] = field(default_factory=list)
    rejected: list[RejectedFile] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


# Containers an adapter treats as media: a file with one of these extensions whose name
# does not parse is reported as rejected; files with any other extension (README, CSV,
# images) are not clips and are left out of the listing.
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".flv", ".mkv")
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".mp3", ".m4a")
MEDIA_EXTENSIONS: tuple[str, ...] = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS
# Still images (the ``image-folder`` adapter): a clip whose ``video_uri`` is one of these is
# decoded as a single frame (``orchestrate.media.decode_image``).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_uri(uri: str) -> bool:
    """Whether ``uri`` names a still image (by its extension), not a video container."""
    return split_file_name(uri)[2] in IMAGE_EXTENSIONS


def split_file_name(uri: str) -> tuple[str, str, str]:
    """``(name, stem, extension)`` of the last part of a path or URI; extension lowercased."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    stem, dot, extension = name.rpartition(".")
    if not dot:
        return name, name, ""
    return name, stem, "." + extension.lower()


class ClipLister(Protocol):
    """A clip adapter's listing function."""

    def __call__(
        self,
        root: str,
        storage_options: Mapping[str, str] | None = None,
        vocal_channel: str = "speech",
    ) -> ClipListing: ...


@dataclass
class FeatureTable:
    """What a feature-table adapter reads: one row per clip, features computed elsewhere.

    ``rows`` has ``clip_id``, ``label`` (canonical emotion name), ``group`` (the actor or
    other unit folds keep together) and one column per array named in the adapter's
    ``StoredAs.arrays`` (a float32 array per row); ``rejected`` are rows left out, with why.
    """

    uri: str
    rows: Any  # pandas.DataFrame
    rejected: list[RejectedFile] = field(default_factory=list)


@dataclass(frozen=True)
class StoredAs:
    """The extractor key a feature table's rows are stored under, and the arrays it holds.

    Tasks read ``"<extractor>.<array>"`` columns: a table of, say, Wang's published LPQ
    and PHOG components stands in for the ``wang_texture`` extractor, under a version of
    its own so it never mixes with features computed from media.
    """

    extractor: str
    version: str
    param_hash: str
    arrays: tuple[str, ...]


@dataclass(frozen=True)
class DatasetAdapter:
    """A dataset the project reads, described by what it yields."""

    name: str
    yields: Literal["clips", "feature-table"]
    description: str
    list_clips: ClipLister | None = None  # yields "clips"
    # yields "feature-table": read_table(the run's dataset config, storage options), and the
    # key its rows are stored under: fixed (stored_as), or following the config (stored_as_for,
    # for a table whose arrays are the config's modality mapping).
    read_table: Callable[[DatasetConfig, Mapping[str, str] | None], FeatureTable] | None = None
    stored_as: StoredAs | None = None
    stored_as_for: Callable[[DatasetConfig], StoredAs] | None = None

    def __post_init__(self) -> None:
        clips = self.yields == "clips" and self.list_clips is not None
        keyed = self.stored_as is not None or self.stored_as_for is not None
        table = self.yields == "feature-table" and self.read_table is not None and keyed
        if not (clips or table):
            raise TypeError(f"dataset adapter {self.name}: nothing to read what it yields")

    def table_stored_as(self, dataset: DatasetConfig) -> StoredAs:
        """The extractor key and arrays of this feature table under ``dataset``'s config."""
        if self.stored_as_for is not None:
            return self.stored_as_for(dataset)
        assert self.stored_as is not None, f"{self.name} yields {self.yields}, not a table"
        return self.stored_as
