"""Image-folder adapter: still images, one folder per emotion, or a CSV of ``path,label[,group]``.

Still-image corpora (SFEW, FER-style face crops, a lab's own stills) come in two layouts:

- **a folder per emotion** (SFEW's ``Angry/ Disgust/ Fear/ Happy/ Neutral/ Sad/ Surprise/``):
  ``dataset.root`` is the directory above them. An image's label is the name of the folder
  that holds it, matched case-insensitively against the emotion vocabulary and its common
  synonyms (``Fear`` -> fearful, ``Surprise`` -> surprised, ``Anger`` -> angry; see
  ``orchestrate.emotions.emotion_named``), so ``Train/Angry/x.png`` is an angry image too.
  A folder whose name is not an emotion is reported once, with the number of images it
  holds; images directly under the root are reported as not in an emotion folder.
- **a CSV** (``dataset.root`` ends in ``.csv``): a header naming ``path`` and ``label``
  and optionally ``group``; relative paths are relative to the CSV's folder (absolute
  paths and ``s3://`` URIs are taken as they are). Labels go through the same vocabulary.
  A row with an unknown label, an empty path or group, or a path that is not an image is
  reported with its line number.

Each image becomes a one-frame clip: ``video_uri`` is the image, there is no audio, and
ingest decodes it as a single frame (``orchestrate.media.decode_image``), finding the face
with the detector or, under ``dataset.faces=given``, taking the whole image as the face.
``clip_id`` is the image's file name without its extension (SFEW's image names, so the
ids match the SFEW feature table's); a second image of the same name is reported, never
listed twice. The ``actor`` column carries the CSV's ``group`` (e.g. the film a still
comes from, so that folds keep a film's stills together); without a group each image is
its own group, and ``actor-kfold`` is then a plain k-fold over images. Files with other
extensions (README, CSV, ``.mat``) are not images and are ignored in the folder layout.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Mapping

from orchestrate.datasets.base import (
    IMAGE_EXTENSIONS,
    Clip,
    ClipListing,
    DatasetAdapter,
    RejectedFile,
    split_file_name,
)
from orchestrate.datasets.filesystem import is_s3_uri, list_files, read_bytes, resolve_filesystem
from orchestrate.emotions import EMOTIONS, emotion_named
from orchestrate.errors import InputError

DATASET = "image-folder"
CSV_COLUMNS = ("path", "label", "group")
_KNOWN = ", ".join(EMOTIONS)


def list_image_folder(
    root: str,
    storage_options: Mapping[str, str] | None = None,
    vocal_channel: str = "speech",
) -> ClipListing:
    """List the labelled images under ``root``: a directory of emotion folders, or a CSV.

    ``vocal_channel`` is not used (still images have no voice; it is taken so that every
    adapter has the registry's one signature). Clips come back sorted by ``clip_id``,
    rejected files sorted by URI. Raises MissingInput when ``root`` does not exist and
    InputError for a CSV without ``path`` and ``label`` columns.
    """
    if split_file_name(root)[2] == ".csv":
        entries, listing = _csv_entries(root, storage_options)
    else:
        entries, listing = _folder_entries(root, storage_options)
    first_uri: dict[str, str] = {}
    for uri, label, group in entries:
        clip_id = split_file_name(uri)[1]
        if clip_id in first_uri:
            listing.rejected.append(
                RejectedFile(
                    uri=uri,
                    reason=f"{uri}: same image name as {first_uri[clip_id]}, which is listed",
                )
            )
            continue
        first_uri[clip_id] = uri
        listing.clips.append(
            Clip(
                clip_id=clip_id,
                dataset=DATASET,
                actor=group if group is not None else clip_id,
                label=label,
                video_uri=uri,
                audio_uri=None,
            )
        )
    listing.clips.sort(key=lambda clip: clip.clip_id)
    listing.rejected.sort(key=lambda rejected: rejected.uri)
    return listing


def _folder_entries(
    root: str, storage_options: Mapping[str, str] | None
) -> tuple[list[tuple[str, str, str | None]], ClipListing]:
    """(uri, label, None) per image in an emotion folder; the rest reported."""
    listing = ClipListing(dataset=DATASET)
    entries: list[tuple[str, str, str | None]] = []
    unknown: dict[str, int] = {}  # folder URI -> images in it
    # The root in list_files' flavour: an absolute local path, or s3://bucket/prefix.
    root_path = resolve_filesystem(root, storage_options)[1]
    root_uri = f"s3://{root_path}" if is_s3_uri(root) else root_path
    for uri in list_files(root, storage_options):
        if split_file_name(uri)[2] not in IMAGE_EXTENSIONS:
            continue
        folder = posixpath.dirname(uri)
        if folder == root_uri:
            listing.rejected.append(
                RejectedFile(uri=uri, reason=f"{uri}: not in an emotion folder (Angry/, Sad/, ...)")
            )
            continue
        label = emotion_named(posixpath.basename(folder))
        if label is None:
            unknown[folder] = unknown.get(folder, 0) + 1
            continue
        entries.append((uri, label, None))
    for folder, count in unknown.items():
        images = "image" if count == 1 else "images"
        listing.rejected.append(
            RejectedFile(
                uri=folder,
                reason=f"{folder}/: {count} {images} left out: folder "
                f"{posixpath.basename(folder)!r} is not an emotion (known: {_KNOWN}, "
                "or a synonym such as Fear or Surprise)",
            )
        )
    return entries, listing


def _csv_entries(
    root: str, storage_options: Mapping[str, str] | None
) -> tuple[list[tuple[str, str, str | None]], ClipListing]:
    """(uri, label, group or None) per usable CSV row; the other rows reported by line."""
    listing = ClipListing(dataset=DATASET)
    text = read_bytes(root, storage_options).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip().lower() for name in reader.fieldnames or []]
    missing = [name for name in CSV_COLUMNS[:2] if name not in header]
    if missing:
        raise InputError(
            f"{root}: the CSV needs a header with columns path,label[,group]; "
            f"missing {', '.join(missing)} (found: {', '.join(header) or 'no header'})"
        )
    reader.fieldnames = header
    has_group = "group" in header
    base = _csv_folder(root)
    entries: list[tuple[str, str, str | None]] = []
    for line, row in enumerate(reader, start=2):  # the header is line 1
        where = f"{root}#line {line}"
        path = (row.get("path") or "").strip()
        label_text = (row.get("label") or "").strip()
        group = (row.get("group") or "").strip() if has_group else None
        problems = []
        if not path:
            problems.append("empty path")
        elif split_file_name(path)[2] not in IMAGE_EXTENSIONS:
            problems.append(f"{path} is not an image ({' '.join(IMAGE_EXTENSIONS)})")
        label = emotion_named(label_text)
        if label is None:
            problems.append(f"label {label_text!r} is not an emotion (known: {_KNOWN})")
        if has_group and not group:
            problems.append("empty group")
        if problems:
            listing.rejected.append(
                RejectedFile(uri=where, reason=f"{where}: {'; '.join(problems)}")
            )
            continue
        assert label is not None
        entries.append((_resolve(base, path), label, group))
    return entries, listing


def _csv_folder(root: str) -> str:
    """The folder relative CSV paths start from, in the CSV URI's own flavour."""
    if is_s3_uri(root):
        return root.rsplit("/", 1)[0]
    return posixpath.dirname(resolve_filesystem(root)[1])


def _resolve(base: str, path: str) -> str:
    if is_s3_uri(path) or posixpath.isabs(path):
        return path
    if is_s3_uri(base):
        return f"{base}/{posixpath.normpath(path)}"
    return posixpath.normpath(posixpath.join(base, path))


ADAPTER = DatasetAdapter(
    name=DATASET,
    yields="clips",
    description="still images: one folder per emotion (SFEW's Angry/ ... Surprise/) "
    "or a CSV of path,label[,group]; each image a one-frame clip",
    list_clips=list_image_folder,
)
