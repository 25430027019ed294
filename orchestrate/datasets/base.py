"""What a dataset adapter hands to the ingest stage: clips with labels and actors."""

from __future__ import annotations

from dataclasses import dataclass, field


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


def split_file_name(uri: str) -> tuple[str, str, str]:
    """``(name, stem, extension)`` of the last part of a path or URI; extension lowercased."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    stem, dot, extension = name.rpartition(".")
    if not dot:
        return name, name, ""
    return name, stem, "." + extension.lower()
