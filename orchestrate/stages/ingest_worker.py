"""The part of ingest that runs in Ray's workers and actors: read, decode, extract, embed, write.

Kept apart from ``orchestrate.stages.ingest`` (the driver's side: listing, cache check,
planning, summary) so that a worker process imports only what it runs: the extractors, the
media and face code, the feature store. Importing the driver's module would also import the
tasks and scikit-learn (through the fold code), about 1-3 s of every network actor's start on a
loaded 2-core machine (BENCHMARKS.md); ``tests/test_ingest_cache.py`` checks the worker's imports.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from orchestrate.datasets.filesystem import hashed_local_copy, is_s3_uri
from orchestrate.extractors import build_extractor
from orchestrate.extractors.base import ClipMedia, ExtractionError, Extractor, param_hash
from orchestrate.faces import DETECT_WIDTH
from orchestrate.store import (
    CLIP_COLUMNS,
    SHAPE_SUFFIX,
    ExtractorKey,
    FeatureStore,
    encode_arrays,
    row_schema,
)


def extractor_key(
    extractor: Extractor, faces: str = "detect", detect_width: int = DETECT_WIDTH
) -> ExtractorKey:
    """The store key of ``extractor``'s rows: name, version and parameter hash.

    A video extractor's rows also depend on how faces were found: ``dataset.faces`` (under
    ``given`` the frames are face crops already) and, under ``detect``, the width the Haar
    cascade sees (``ingest.face_detect_width``: another width finds other boxes, or none).
    Its parameter hash covers both, so a change recomputes and never reuses the other
    setting's rows; the defaults (``detect`` at ``DETECT_WIDTH``) keep the keys rows had
    before the settings were keyed.
    """
    params = extractor.params
    if extractor.modality == "video" and faces != "detect":
        params = {**params, "faces": faces}
    elif extractor.modality == "video" and detect_width != DETECT_WIDTH:
        params = {**params, "face_detect_width": detect_width}
    return ExtractorKey(extractor.name, extractor.version, param_hash(params))


class TransientReadError(OSError):
    """Reading a clip's file failed in a way that may pass (S3 timeout, lost connection).

    Raised, never stored: Ray retries the task, and a clip that still can't be read stops
    the ingest (what was written stays) instead of being cached as failed.
    """


def retry_args() -> dict[str, Any]:
    """Ray retries a task whose worker died (by default) and one that raised TransientReadError."""
    return {"max_retries": 3, "retry_exceptions": [TransientReadError]}


def missing_extractors(
    row: dict[str, Any], content: str, extractors: list[Extractor], cached: dict[str, Any]
) -> list[str]:
    # An audio-only clip has no video extractors to run (and vice versa): not a failure.
    return [
        e.name for e in extractors if row[f"{e.modality}_uri"] and content not in cached[e.name]
    ]


@dataclass(frozen=True)
class StoreWrite:
    """What a block's writer needs: the store and, per extractor, its key and stored arrays."""

    store_uri: str
    storage_options: dict[str, str]
    extractors: tuple[tuple[str, ExtractorKey, tuple[str, ...]], ...]

    def __call__(self, batch: pd.DataFrame, store: FeatureStore | None = None) -> pd.DataFrame:
        """Write the batch's computed rows, one file per extractor; return clip outcomes."""
        store = store or FeatureStore(self.store_uri, self.storage_options)
        for name, key, outputs in self.extractors:
            table = to_store_rows(batch, name, key, outputs)
            if table.num_rows:
                store.write_rows(key, table)
        decoded = np.zeros(len(batch), dtype=bool)
        for name, _, _ in self.extractors:
            decoded |= (batch[f"{name}.status"] != "cached").to_numpy()
        # Only what the driver needs: no feature array travels back.
        return pd.DataFrame(
            {
                "clip_id": batch["clip_id"].to_numpy(),
                "content_hash": batch["content_hash"].to_numpy(),
                "decoded": decoded,
            }
        )


@dataclass(frozen=True)
class ExtractClip:
    """The per-clip step of the Ray Data pass (``Dataset.map``): ``extract_one_clip`` with
    the run's settings; ``cached_ref`` is the cache's content hashes in the object store,
    for clips hashed in the worker (None when every clip's hash was known)."""

    extractors: tuple[Extractor, ...]
    face_detect_width: int
    storage_options: dict[str, str]
    faces: str
    cached_ref: ray.ObjectRef | None

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return extract_one_clip(
            row,
            list(self.extractors),
            self.face_detect_width,
            self.storage_options,
            _cached_sets(self.cached_ref),
            self.faces,
        )


_CACHED_SETS: dict[str, dict[str, set[str]]] = {}


def _cached_sets(ref: ray.ObjectRef | None) -> dict[str, set[str]] | None:
    """The cache's content hashes, fetched once per worker process."""
    if ref is None:
        return None
    key = ref.hex()
    if key not in _CACHED_SETS:
        _CACHED_SETS.clear()
        _CACHED_SETS[key] = ray.get(ref)
    return _CACHED_SETS[key]


def extract_one_clip(
    row: dict[str, Any],
    extractors: list[Extractor],
    face_detect_width: int,
    storage_options: dict[str, str],
    cached: dict[str, set[str]] | None = None,
    faces: str = "detect",
) -> dict[str, Any]:
    """Read one clip once, and decode it once for its missing extractors; failures become reasons.

    ``faces``: ``detect`` finds each frame's largest face; ``given`` takes every frame (or
    still image) as a face crop already. A still image (``is_image_uri``) is one frame.

    A clip without a known content hash (``row["content_hash"]`` None) is hashed in the
    same read; its missing extractors are then those without a row in ``cached``. Every
    row gets the same columns (``<extractor>.status/.reason/.payload``) so that Ray Data
    blocks share one schema; an extractor whose row is cached gets ``cached``.
    """
    import cv2

    from orchestrate.datasets.base import is_image_uri
    from orchestrate.faces import HaarFaceDetector
    from orchestrate.media import decode_audio, decode_faces, decode_image

    # One Ray CPU, one thread: Ray already sets OMP_NUM_THREADS=1 for torch in its workers,
    # and OpenCV's own thread pool would otherwise oversubscribe the node's cores.
    cv2.setNumThreads(1)
    uris = {"video": row["video_uri"], "audio": row["audio_uri"]}
    with ExitStack() as stack:
        paths, read_errors, content = _read_clip_files(row, stack, storage_options)
        if row["missing"] is None:
            assert cached is not None
            missing_names = missing_extractors(row, content, extractors, cached)
        else:
            missing_names = row["missing"]
        missing = [e for e in extractors if e.name in missing_names]
        modalities = [m for m in ("video", "audio") if any(e.modality == m for e in missing)]
        media: dict[str, ClipMedia] = {}
        decode_error: dict[str, str] = {}
        for modality in modalities:
            uri = uris[modality]
            still = modality == "video" and is_image_uri(uri)
            if uri in read_errors:
                decode_error[modality] = read_errors[uri]("image" if still else modality)
                continue
            try:
                # Each modality decoded once: a clip without audio spares its faces.
                if modality == "video":
                    detector = (
                        HaarFaceDetector(detect_width=face_detect_width)
                        if faces == "detect"
                        else None
                    )
                    decode = decode_image if still else decode_faces
                    media[modality] = ClipMedia(faces=decode(paths[uri], detector), audio=None)
                else:
                    media[modality] = ClipMedia(faces=None, audio=decode_audio(paths[uri]))
            except ExtractionError as error:
                decode_error[modality] = str(error)
        if "video" in media and "audio" in media:
            # Extractors of one modality see a ClipMedia as decode_clip gives it.
            both = ClipMedia(faces=media["video"].faces, audio=media["audio"].audio)
            media = {"video": both, "audio": both}

        out = {name: row[name] for name in CLIP_COLUMNS if name != "content_hash"}
        out["content_hash"] = content
        for extractor in extractors:
            status, reason, payload = "cached", "", b""
            if extractor in missing:
                status = "ok"
                try:
                    if extractor.modality in decode_error:
                        raise ExtractionError(decode_error[extractor.modality])
                    payload = pack_arrays(extractor.extract(media[extractor.modality]))
                except ExtractionError as error:
                    status, reason = "failed", str(error)
            out[f"{extractor.name}.status"] = status
            out[f"{extractor.name}.reason"] = reason
            out[f"{extractor.name}.payload"] = payload
    return out


def _read_clip_files(
    row: dict[str, Any], stack: ExitStack, storage_options: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Callable[[str], str]], str]:
    """(local path per URI, read error per URI by role, content hash); each file read once.

    Files are read (hashed; on S3 downloaded too) only when the clip's content hash is
    unknown or a file must be decoded. The content hash is the sha256 of the files' sha256
    digests; an unreadable file contributes its error, so that a clip that becomes
    readable gets a new hash. A transient error on S3 raises ``TransientReadError``.
    """
    uris = [uri for uri in dict.fromkeys((row["video_uri"], row["audio_uri"])) if uri]
    paths: dict[str, Any] = {}
    errors: dict[str, Callable[[str], str]] = {}
    digest = hashlib.sha256()
    for uri in uris:
        try:
            path, file_digest = stack.enter_context(hashed_local_copy(uri, storage_options))
        except FileNotFoundError as error:
            errors[uri] = lambda role: f"{role} file not found"  # decode_clip's reasons
            digest.update(f"unreadable:{uri}:{error}".encode())
            continue
        except (OSError, ValueError) as error:
            if is_s3_uri(uri) and isinstance(error, OSError):
                raise TransientReadError(f"{uri}: {error}") from error
            detail = _one_line(error)
            errors[uri] = lambda role, detail=detail: f"unreadable {role} file ({detail})"
            digest.update(f"unreadable:{uri}:{error}".encode())
            continue
        paths[uri] = path
        digest.update(file_digest.encode())
    content = row["content_hash"] or digest.hexdigest()
    return paths, errors, content


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class EmbedClips:
    """``map_batches`` actor: the networks (VGG16, FER CNN) over a batch of clips' crops,
    then the batch's rows written to the store.

    The networks load in a thread started here, so the actor's first clips decode (on a
    CPU cluster, in this same actor) while torch loads the weights.
    """

    def __init__(self, networks: dict[str, dict[str, Any]], writer: StoreWrite):
        import torch

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        self.writer = writer
        self.store = FeatureStore(writer.store_uri, writer.storage_options)
        self.embedders: dict[str, Any] = {}
        self._load_error: BaseException | None = None
        self._loader = threading.Thread(target=self._load, args=(networks,), daemon=True)
        self._loader.start()

    def _load(self, networks: dict[str, dict[str, Any]]) -> None:
        try:
            for name, params in networks.items():
                embed = build_extractor(name, params).make_embedder()
                load = getattr(embed, "_load", None)
                if load is not None:
                    load()  # the network itself, not only the batch function
                self.embedders[name] = embed
        except BaseException as error:  # re-raised in __call__, on Ray's error path
            self._load_error = error

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        self._loader.join()
        if self._load_error is not None:
            raise self._load_error
        for name, embed in self.embedders.items():
            status = batch[f"{name}.status"]
            todo = [i for i, value in enumerate(status) if value == "ok"]
            if not todo:
                continue
            payloads = list(batch[f"{name}.payload"])
            inputs = [unpack_arrays(payloads[i]) for i in todo]
            for i, features in zip(todo, embed(inputs), strict=True):
                payloads[i] = pack_arrays(features)
            batch[f"{name}.payload"] = payloads
        return self.writer(batch, self.store)


def to_store_rows(
    batch: pd.DataFrame, extractor: str, key: ExtractorKey, outputs: tuple[str, ...]
) -> pa.Table:
    """The rows one extractor computed in this batch, in the store's schema."""
    computed = batch[batch[f"{extractor}.status"] != "cached"]
    columns: dict[str, list[Any]] = {name: list(computed[name]) for name in CLIP_COLUMNS}
    columns["extractor"] = [key.name] * len(computed)
    columns["version"] = [key.version] * len(computed)
    columns["param_hash"] = [key.param_hash] * len(computed)
    columns["status"] = list(computed[f"{extractor}.status"])
    columns["reason"] = list(computed[f"{extractor}.reason"])
    encoded = [
        encode_arrays(unpack_arrays(payload) if payload else {}, outputs)
        for payload in computed[f"{extractor}.payload"]
    ]
    for name in outputs:
        columns[name] = [row[name] for row in encoded]
        columns[name + SHAPE_SUFFIX] = [row[name + SHAPE_SUFFIX] for row in encoded]
    return pa.Table.from_pydict(columns, schema=row_schema(outputs))


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise an extractor's arrays for the trip between pipeline steps."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    return buffer.getvalue()


def unpack_arrays(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
