"""Stage 1, ingest: clips → Ray Data → per-clip decode + extractors → Parquet feature store.

The pipeline, for one dataset:

1. the dataset adapter lists clips (local path or ``s3://``), with labels and actors;
2. Ray Data hashes every clip's bytes (``map``): the content hash is the cache key's first part;
3. for every requested extractor, the clips whose (content hash, extractor, version,
   parameter hash) has no row in the store are the work; nothing else is decoded;
4. one function per clip (``map``) decodes the clip once (frames → largest-face crops, audio
   track), runs the clip's missing extractors and serialises their outputs: raw frames
   never leave that function;
5. extractors with a network (VGG16, FER CNN) finish in ``map_batches`` on an actor pool,
   on a GPU when the cluster has one;
6. each extractor's rows are written as Parquet to its own directory of the store.

A clip that fails (corrupt container, no audio stream, no face...) becomes a ``failed`` row
with a one-line reason; the rest goes on, and the summary counts failures by reason.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from orchestrate.config import RunConfig
from orchestrate.datasets import list_clips
from orchestrate.datasets.base import Clip
from orchestrate.datasets.filesystem import content_hash
from orchestrate.extractors import EXTRACTORS, build_extractor
from orchestrate.extractors.base import ExtractionError, Extractor, param_hash
from orchestrate.store import (
    CLIP_COLUMNS,
    SHAPE_SUFFIX,
    ExtractorKey,
    FeatureStore,
    encode_arrays,
)
from tasks import TASKS

SFEW_TABLE_KEY = ExtractorKey("wang_texture", "sfew-table-1", "published-pca")


@dataclass
class IngestSummary:
    """What an ingest did: counts by outcome, failures with reasons, and throughput."""

    dataset: str
    clips: int
    computed: int  # clips decoded this run (the rest were cache hits)
    ok: int
    failed: int
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    failed_clips: list[tuple[str, str]] = field(default_factory=list)
    rejected_files: list[tuple[str, str]] = field(default_factory=list)
    # Media files the run's settings leave out on purpose (ClipListing.skipped): reason -> count.
    skipped_files: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failure_ratio(self) -> float:
        return self.failed / self.clips if self.clips else 0.0

    @property
    def clips_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        out = [
            f"ingest {self.dataset}: {self.clips} clips, {self.computed} computed, "
            f"{self.clips - self.computed} from cache, {self.seconds:.1f} s "
            f"({self.clips_per_second:.2f} clips/s computed)",
            f"  ok: {self.ok}   failed: {self.failed}",
        ]
        for reason, count in sorted(self.failures_by_reason.items(), key=lambda kv: -kv[1]):
            out.append(f"    {count:4d} × {reason}")
        for clip_id, reason in self.failed_clips[:20]:
            out.append(f"    {clip_id}: {reason}")
        if len(self.failed_clips) > 20:
            out.append(f"    ... and {len(self.failed_clips) - 20} more")
        for reason, count in sorted(self.skipped_files.items()):
            out.append(f"  {count} {reason}")
        if self.rejected_files:
            out.append(f"  rejected by the {self.dataset} adapter: {len(self.rejected_files)}")
            for _, reason in self.rejected_files[:20]:
                out.append(f"    {reason}")
        return out


def requested_extractors(config: RunConfig) -> dict[str, dict[str, Any]]:
    """The extractors to run: those the config names, else every one the run's tasks read."""
    if config.ingest.extractors:
        return dict(config.ingest.extractors)
    names: list[str] = []
    for run in config.task_runs():
        task = TASKS[run.name]
        for variant in run.variants or task.VARIANTS:
            for column in task.VARIANTS[variant]:
                extractor = column.split(".", 1)[0]
                if extractor in EXTRACTORS and extractor not in names:
                    names.append(extractor)
    return {name: {} for name in names}


def extractor_key(extractor: Extractor) -> ExtractorKey:
    return ExtractorKey(extractor.name, extractor.version, param_hash(extractor.params))


def run_ingest(config: RunConfig, progress: bool = True) -> IngestSummary:
    """Fill the feature store for the config's dataset; returns the summary."""
    if config.dataset.root is None:
        raise ValueError("dataset.root: give the dataset's directory, s3:// prefix or table file")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.WARNING)

    store = FeatureStore(config.store_uri, config.storage_options)
    if config.dataset.name == "sfew-table":
        return _ingest_sfew_table(config, store)

    started = time.perf_counter()
    listing = list_clips(
        config.dataset.name,
        config.dataset.root,
        config.storage_options,
        vocal_channel=config.dataset.vocal_channel,
    )
    extractors = [
        build_extractor(name, params) for name, params in requested_extractors(config).items()
    ]
    rejected = [(r.uri, r.reason) for r in listing.rejected]
    if not listing.clips:
        return IngestSummary(
            config.dataset.name,
            0,
            0,
            0,
            0,
            rejected_files=rejected,
            skipped_files=dict(listing.skipped),
        )

    clips = _hash_clips(listing.clips, config)
    store.write_manifest(config.dataset.name, config.dataset.root, clips)

    # The work: for every clip, the extractors whose cache key has no row yet.
    cached = {
        extractor.name: store.cached_hashes(extractor_key(extractor)) for extractor in extractors
    }
    work = []
    for row in clips.to_dict("records"):
        # An audio-only clip has no video extractors to run (and vice versa): not a failure.
        missing = [
            e.name
            for e in extractors
            if row[f"{e.modality}_uri"] and row["content_hash"] not in cached[e.name]
        ]
        if missing:
            work.append({**row, "missing": missing})

    if work:
        _extract(work, extractors, config, store)
    seconds = time.perf_counter() - started
    summary = _summarise(config.dataset.name, clips, extractors, store, len(work), seconds)
    summary.rejected_files = rejected
    summary.skipped_files = dict(listing.skipped)
    return summary


def _hash_clips(clips: list[Clip], config: RunConfig) -> pd.DataFrame:
    """Clip fields plus the content hash of the clip's media, computed on the cluster."""
    storage_options = config.storage_options

    def hash_clip(row: dict[str, Any]) -> dict[str, Any]:
        uris = [uri for uri in dict.fromkeys((row["video_uri"], row["audio_uri"])) if uri]
        digest = hashlib.sha256()
        for uri in uris:
            try:
                digest.update(content_hash(uri, storage_options).encode())
            except OSError as error:
                # Unreadable media still gets a row: extraction will report it as failed.
                digest.update(f"unreadable:{uri}:{error}".encode())
        return {**row, "content_hash": digest.hexdigest(), "source_uri": " + ".join(uris)}

    items = [asdict(clip) for clip in clips]
    blocks = max(1, min(len(items), 4 * _cluster_cpus()))
    hashed = ray.data.from_items(items, override_num_blocks=blocks).map(hash_clip).take_all()
    clips = pd.DataFrame(hashed).sort_values("clip_id").reset_index(drop=True)
    # A missing stream is None, not pandas' NaN: the extract step tests it for truth.
    return clips.astype(object).where(clips.notna(), None)


def _cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _extract(
    work: list[dict[str, Any]],
    extractors: list[Extractor],
    config: RunConfig,
    store: FeatureStore,
) -> None:
    face_detect_width = config.ingest.face_detect_width
    storage_options = config.storage_options

    def extract_clip(row: dict[str, Any]) -> dict[str, Any]:
        return extract_one_clip(row, extractors, face_detect_width, storage_options)

    # Small datasets: explicit blocks so every core gets work (one block per CPU otherwise).
    blocks = max(1, min(len(work), 4 * _cluster_cpus()))
    dataset = ray.data.from_items(work, override_num_blocks=blocks).map(extract_clip)
    networks = [e for e in extractors if e.make_embedder() is not None]
    if networks:
        # One actor pool runs every network, each loaded once per actor. On a CPU cluster
        # the pool has one actor per CPU and Ray Data fuses the per-clip map into it (each
        # actor decodes, extracts and embeds); with GPUs it has one actor per GPU and the
        # per-clip map stays in CPU tasks that feed it.
        gpus = int(ray.cluster_resources().get("GPU", 0))
        workers = config.ingest.embed_workers or gpus or _cluster_cpus()
        dataset = dataset.map_batches(
            EmbedClips,
            fn_constructor_kwargs={"networks": {e.name: e.params for e in networks}},
            batch_size=config.ingest.embed_batch_size,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=1 if gpus else 0,
        )
    # Features only from here on (no frames, no crops): small enough to hold once.
    dataset = dataset.materialize()
    for extractor in extractors:
        key = extractor_key(extractor)
        rows = dataset.map_batches(
            to_store_rows,
            fn_kwargs={
                "extractor": extractor.name,
                "key": key,
                "outputs": tuple(extractor.outputs),
            },
            batch_format="pandas",
        )
        rows.write_parquet(store.path(key.directory), filesystem=store.filesystem)


def extract_one_clip(
    row: dict[str, Any],
    extractors: list[Extractor],
    face_detect_width: int,
    storage_options: dict[str, str],
) -> dict[str, Any]:
    """Decode one clip once and run its missing extractors; failures become reasons.

    Every row gets the same columns (``<extractor>.status/.reason/.payload``) so that
    Ray Data blocks share one schema; an extractor whose row is cached gets ``cached``.
    """
    import cv2

    from orchestrate.faces import HaarFaceDetector
    from orchestrate.media import decode_clip

    # One Ray CPU, one thread: Ray already sets OMP_NUM_THREADS=1 for torch in its workers,
    # and OpenCV's own thread pool would otherwise oversubscribe the node's cores.
    cv2.setNumThreads(1)
    clip = Clip(**{name: row[name] for name in Clip.__dataclass_fields__})
    missing = [e for e in extractors if e.name in row["missing"]]
    media: dict[str, Any] = {}
    decode_error: dict[str, str] = {}
    modalities = [m for m in ("video", "audio") if any(e.modality == m for e in missing)]
    detector = HaarFaceDetector(detect_width=face_detect_width)

    def decode(*wanted: str) -> Any:
        return decode_clip(
            clip,
            need_video="video" in wanted,
            need_audio="audio" in wanted,
            detector=detector,
            storage_options=storage_options,
        )

    try:
        # One pass (and, for S3, one download) when the clip decodes cleanly...
        both = decode(*modalities)
        media = {modality: both for modality in modalities}
    except ExtractionError:
        # ...else decode each modality alone, so a missing audio stream spares the faces.
        for modality in modalities:
            try:
                media[modality] = decode(modality)
            except ExtractionError as error:
                decode_error[modality] = str(error)

    out = {name: row[name] for name in CLIP_COLUMNS}
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


class EmbedClips:
    """``map_batches`` actor: runs the networks (VGG16, FER CNN) over a batch of clips' crops."""

    def __init__(self, networks: dict[str, dict[str, Any]]):
        self.embedders = {
            name: build_extractor(name, params).make_embedder() for name, params in networks.items()
        }

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
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
        return batch


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
    schema = pa.schema(
        [
            (name, pa.string())
            for name in (*CLIP_COLUMNS, "extractor", "version", "param_hash", "status", "reason")
        ]
        + [
            field
            for name in outputs
            for field in (
                (name, pa.list_(pa.float32())),
                (name + SHAPE_SUFFIX, pa.list_(pa.int32())),
            )
        ]
    )
    return pa.Table.from_pydict(columns, schema=schema)


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise an extractor's arrays for the trip between pipeline steps."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    return buffer.getvalue()


def unpack_arrays(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _summarise(
    dataset: str,
    clips: pd.DataFrame,
    extractors: list[Extractor],
    store: FeatureStore,
    computed: int,
    seconds: float,
) -> IngestSummary:
    """Per clip: ok when every extractor it has rows for is ok; else failed, with its reasons."""
    hashes = set(clips["content_hash"])
    # content hash -> reason -> the extractors that failed with it
    reasons: dict[str, dict[str, list[str]]] = {}
    for extractor in extractors:
        rows = store.feature_rows(extractor_key(extractor), hashes)
        failed = rows[rows["status"] != "ok"]
        for content, reason in zip(failed["content_hash"], failed["reason"], strict=True):
            reasons.setdefault(content, {}).setdefault(reason, []).append(extractor.name)
    failed_clips = [
        (
            clip_id,
            "; ".join(
                f"{reason} ({', '.join(names)})" for reason, names in reasons[content].items()
            ),
        )
        for clip_id, content in zip(clips["clip_id"], clips["content_hash"], strict=True)
        if content in reasons
    ]
    # "no face in any of 15 frames" and "... of 99 frames" are one reason in the counts.
    by_reason = Counter(
        reason
        for by_text in reasons.values()
        for reason in {re.sub(r"\d+", "N", text) for text in by_text}
    )
    return IngestSummary(
        dataset=dataset,
        clips=len(clips),
        computed=computed,
        ok=len(clips) - len(failed_clips),
        failed=len(failed_clips),
        failures_by_reason=dict(by_reason),
        failed_clips=failed_clips,
        seconds=seconds,
    )


def _ingest_sfew_table(config: RunConfig, store: FeatureStore) -> IngestSummary:
    """The SFEW table already holds Wang's features: store them under their own key."""
    from orchestrate.datasets.sfew_table import read_sfew_table

    started = time.perf_counter()
    table = read_sfew_table(config.dataset.root, config.storage_options)
    root_hash = content_hash(config.dataset.root, config.storage_options)
    rows = table.rows.copy()
    rows["dataset"] = "sfew-table"
    rows["actor"] = rows["group"]
    rows["source_uri"] = [f"{config.dataset.root}#{clip_id}" for clip_id in rows["clip_id"]]
    rows["content_hash"] = [
        hashlib.sha256(f"{root_hash}:{clip_id}".encode()).hexdigest() for clip_id in rows["clip_id"]
    ]
    store.write_manifest("sfew-table", config.dataset.root, rows)
    cached = store.cached_hashes(SFEW_TABLE_KEY)
    todo = rows[~rows["content_hash"].isin(cached)]
    if len(todo):
        records = [
            {
                **{name: row[name] for name in CLIP_COLUMNS},
                "extractor": SFEW_TABLE_KEY.name,
                "version": SFEW_TABLE_KEY.version,
                "param_hash": SFEW_TABLE_KEY.param_hash,
                "status": "ok",
                "reason": "",
                **encode_arrays({"lpq": row["lpq"], "phog": row["phog"]}, ("lpq", "phog")),
            }
            for row in todo.to_dict("records")
        ]
        ray.data.from_items(records, override_num_blocks=1).write_parquet(
            store.path(SFEW_TABLE_KEY.directory), filesystem=store.filesystem
        )
    rejected = [(r.uri, r.reason) for r in table.rejected]
    return IngestSummary(
        dataset="sfew-table",
        clips=len(rows),
        computed=len(todo),
        ok=len(rows),
        failed=0,
        rejected_files=rejected,
        seconds=time.perf_counter() - started,
    )
