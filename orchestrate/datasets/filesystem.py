"""Local-or-S3 file access for dataset adapters, the feature store and ingest.

Every helper takes a *URI*: a local path (absolute, relative or ``file://``) or
``s3://bucket/key``. S3 is reached through :class:`pyarrow.fs.S3FileSystem`; where to find
it comes from ``storage_options``, a dict with the optional keys

- ``endpoint_url``: an S3-compatible endpoint such as ``http://127.0.0.1:5000`` (MinIO,
  moto, Ceph). ``http://`` endpoints are spoken to over plain HTTP.
- ``region``: the bucket's region (otherwise the AWS SDK's own default applies).

Credentials never travel in ``storage_options``: the standard AWS chain supplies them
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` environment variables, ``~/.aws``, instance
metadata), so they are never logged or written into configs.

URIs handed back by :func:`list_files` keep the caller's flavour: ``s3://bucket/key`` for S3
and absolute local paths (not ``file://``) for local files, so Ray workers with another
working directory resolve them the same way.

:func:`file_identities` is ingest's cheap identity check, one listing of a dataset's root:
a local file's size and modification time (nanoseconds), an S3 object's size and ETag. As
with rsync, a file rewritten with the same size and modification time is trusted to be
unchanged (``ingest.always_hash`` turns the check off).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from orchestrate.errors import InputError, MissingInput

STORAGE_OPTION_KEYS = ("endpoint_url", "region")

# 1 MiB: large enough that hashing a clip is not dominated by per-read overhead on S3.
CHUNK_SIZE = 1 << 20


def is_s3_uri(uri: str) -> bool:
    """Whether ``uri`` names an object in S3 (or an S3-compatible store)."""
    return uri.startswith("s3://")


def _s3_filesystem(storage_options: Mapping[str, str]) -> pafs.S3FileSystem:
    endpoint_url = storage_options.get("endpoint_url")
    endpoint_override = None
    scheme = None
    if endpoint_url:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise InputError(
                f"storage_options.endpoint_url: {endpoint_url!r} is not http(s)://host[:port]"
            )
        endpoint_override = parts.netloc
        scheme = parts.scheme
    return pafs.S3FileSystem(
        region=storage_options.get("region") or None,
        endpoint_override=endpoint_override,
        scheme=scheme,
    )


def resolve_filesystem(
    uri: str, storage_options: Mapping[str, str] | None = None
) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``uri`` and the path of ``uri`` inside it.

    Local paths come back absolute; ``s3://bucket/prefix`` comes back as ``bucket/prefix``
    on an :class:`~pyarrow.fs.S3FileSystem`. Nothing is checked for existence, so a feature
    store can resolve a directory it is about to create.
    """
    options = dict(storage_options or {})
    unknown = sorted(set(options) - set(STORAGE_OPTION_KEYS))
    if unknown:
        raise InputError(
            f"storage_options: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(STORAGE_OPTION_KEYS)} (credentials come from the AWS chain)"
        )
    if not uri:
        raise InputError("empty path or URI")
    if is_s3_uri(uri):
        path = uri[len("s3://") :].rstrip("/")
        if not path or path.startswith("/"):
            raise InputError(f"{uri}: an S3 URI needs a bucket, as in s3://bucket/prefix")
        return _s3_filesystem(options), path
    if uri.startswith("file://"):
        filesystem, path = pafs.FileSystem.from_uri(uri)
        return filesystem, path
    if "://" in uri:
        raise InputError(f"{uri}: only local paths, file:// and s3:// URIs are supported")
    # abspath, not resolve(): symlinked data directories keep the name the user gave.
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _uri_for(uri: str, path: str) -> str:
    """The URI of ``path`` on the filesystem that ``uri`` resolved to."""
    return f"s3://{path}" if is_s3_uri(uri) else path


def list_files(root: str, storage_options: Mapping[str, str] | None = None) -> list[str]:
    """Every file under the directory ``root`` (recursively), as sorted URIs.

    Hidden files and folders below ``root`` (names starting with ``.``, such as macOS
    ``._*`` resource forks or ``.ipynb_checkpoints``) are skipped. Raises FileNotFoundError
    when ``root`` does not exist and NotADirectoryError when it is a file.
    """
    filesystem, path = resolve_filesystem(root, storage_options)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise MissingInput(f"{root}: no such directory")
    if info.type != pafs.FileType.Directory:
        raise NotADirectoryError(f"{root}: is a file, expected a directory of clips")
    selector = pafs.FileSelector(path, recursive=True)
    return sorted(
        _uri_for(root, entry.path)
        for entry in filesystem.get_file_info(selector)
        if entry.type == pafs.FileType.File and not _is_hidden(entry.path[len(path) :])
    )


def _is_hidden(relative_path: str) -> bool:
    return any(part.startswith(".") for part in relative_path.split("/") if part)


def _check_file(filesystem: pafs.FileSystem, path: str, uri: str) -> None:
    # Ask first so that a missing S3 object reads as FileNotFoundError, like a local one.
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise MissingInput(f"{uri}: no such file")
    if info.type != pafs.FileType.File:
        raise IsADirectoryError(f"{uri}: is a directory, expected a file")


def open_input(uri: str, storage_options: Mapping[str, str] | None = None) -> BinaryIO:
    """Open ``uri`` for reading: a seekable binary file-like object (use it in ``with``)."""
    filesystem, path = resolve_filesystem(uri, storage_options)
    _check_file(filesystem, path, uri)
    return cast(BinaryIO, filesystem.open_input_file(path))


def read_bytes(uri: str, storage_options: Mapping[str, str] | None = None) -> bytes:
    """The whole content of ``uri``."""
    with open_input(uri, storage_options) as stream:
        return stream.read()


@contextmanager
def local_copy(uri: str, storage_options: Mapping[str, str] | None = None) -> Iterator[Path]:
    """A local path with the content of ``uri``, for decoders that only read local files.

    A local URI yields the file itself (nothing is copied). An S3 URI is downloaded in
    chunks to a temporary file that keeps the object's suffix (``.mp4``, ``.wav``: some
    decoders pick the demuxer by it) and is removed when the ``with`` block ends.
    """
    filesystem, path = resolve_filesystem(uri, storage_options)
    _check_file(filesystem, path, uri)
    if not is_s3_uri(uri):
        yield Path(path)
        return
    suffix = "".join(PurePosixPath(path).suffixes[-1:])
    handle, temp_name = tempfile.mkstemp(prefix="orchestrate-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as local, filesystem.open_input_stream(path) as remote:
            shutil.copyfileobj(remote, local, CHUNK_SIZE)
        yield Path(temp_name)
    finally:
        Path(temp_name).unlink(missing_ok=True)


def file_identities(root: str, storage_options: Mapping[str, str] | None = None) -> dict[str, str]:
    """URI -> identity of every file under ``root``, from one listing (no file is read).

    Local: ``"<size>:<mtime_ns>"``; S3: ``"<size>:etag:<ETag>"`` (``list_objects_v2`` gives
    both). A file whose identity is unchanged since the last ingest is not read again.
    """
    filesystem, path = resolve_filesystem(root, storage_options)
    if not is_s3_uri(root):
        if filesystem.get_file_info(path).type != pafs.FileType.Directory:
            return {}
        selector = pafs.FileSelector(path, recursive=True)
        return {
            entry.path: f"{entry.size}:{entry.mtime_ns}"
            for entry in filesystem.get_file_info(selector)
            if entry.type == pafs.FileType.File
        }
    import boto3  # here: local datasets don't pay boto3's import

    options = dict(storage_options or {})
    client = boto3.client(
        "s3",
        endpoint_url=options.get("endpoint_url") or None,
        region_name=options.get("region") or None,
    )
    bucket, _, prefix = path.partition("/")
    prefix = f"{prefix.rstrip('/')}/" if prefix else ""
    identities: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            identities[f"s3://{bucket}/{item['Key']}"] = f"{item['Size']}:etag:{item['ETag']}"
    return identities


@contextmanager
def hashed_local_copy(
    uri: str, storage_options: Mapping[str, str] | None = None
) -> Iterator[tuple[Path, str]]:
    """:func:`local_copy` plus the sha256 of the bytes, computed in the same read.

    An S3 object is hashed while it is downloaded (one GET); a local file is hashed in
    chunks, and the decoder that reads it next finds it in the page cache.
    """
    filesystem, path = resolve_filesystem(uri, storage_options)
    _check_file(filesystem, path, uri)
    digest = hashlib.sha256()
    if not is_s3_uri(uri):
        with filesystem.open_input_stream(path) as stream:
            while chunk := stream.read(CHUNK_SIZE):
                digest.update(chunk)
        yield Path(path), digest.hexdigest()
        return
    suffix = "".join(PurePosixPath(path).suffixes[-1:])
    handle, temp_name = tempfile.mkstemp(prefix="orchestrate-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as local, filesystem.open_input_stream(path) as remote:
            while chunk := remote.read(CHUNK_SIZE):
                digest.update(chunk)
                local.write(chunk)
        yield Path(temp_name), digest.hexdigest()
    finally:
        Path(temp_name).unlink(missing_ok=True)


def content_hash(uri: str, storage_options: Mapping[str, str] | None = None) -> str:
    """The sha256 hex digest of the bytes of ``uri``, read in chunks (memory stays flat)."""
    filesystem, path = resolve_filesystem(uri, storage_options)
    _check_file(filesystem, path, uri)
    digest = hashlib.sha256()
    with filesystem.open_input_stream(path) as stream:
        while chunk := stream.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()
