"""Stage 1, ingest: clips → Ray Data → per-clip read + decode + extractors → Parquet feature store.

The pipeline, for one dataset:

1. the dataset adapter lists clips (local path or ``s3://``), with labels and actors, and one
   listing of the root gives every file's identity (size and modification time; ETag on
   S3). A clip whose files have the identity the last ingest's manifest recorded keeps
   that ingest's content hash and is not read (``ingest.always_hash`` turns this off: then,
   as for a new or changed clip, the hash is computed in the same read as the decode);
2. the work: clips whose (content hash, extractor, version, parameter hash) key has no row
   yet for some requested extractor, and clips whose content hash is not known yet (those
   are hashed first, in the worker, and decoded only if the hash has keys missing);
3. one Ray Data pass, streamed, whose worker side is ``orchestrate.stages.ingest_worker``
   (a worker imports it without the tasks and scikit-learn): one function per clip reads its
   files once (hash and, on S3, download together), decodes them once (frames →
   largest-face crops, audio track), runs the clip's missing extractors and serialises
   their outputs (raw frames never leave that function); the networks (VGG16, FER CNN)
   then run batched over the block's clips in ``map_batches`` on one actor pool (a GPU per
   actor when the cluster has GPUs), each network loaded once per actor, in a thread,
   while its first clips decode;
4. as each block finishes, its rows go to the store: one file per extractor, in the
   extractor's own directory, named by the block's content hashes (a retried block
   replaces its file), so a stopped ingest keeps what it wrote and a rerun computes only
   the rest;
5. the manifest (the clips, their content hashes and file identities) is written last,
   and the summary reads only ``content_hash``, ``status`` and ``reason`` from the store.

A clip that fails (corrupt container, no audio stream, no face...) becomes a ``failed`` row
with a one-line reason; the rest goes on, and the summary counts failures by reason. A
transient read error (an S3 timeout, a lost connection) is not a property of the clip: it
raises ``TransientReadError``, which Ray retries (``max_retries``, ``retry_exceptions``) and
which is never cached as a failed row. ``ingest.retry_failed`` recomputes failed rows.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import ray

from orchestrate.config import RunConfig
from orchestrate.console import progress_bar
from orchestrate.datasets import DatasetAdapter, StoredAs, dataset_adapter, list_clips
from orchestrate.datasets.base import Clip
from orchestrate.datasets.filesystem import content_hash, file_identities
from orchestrate.errors import InputError
from orchestrate.extractors import EXTRACTORS, build_extractor
from orchestrate.extractors.base import Extractor
from orchestrate.features import CLIP_MODALITY_COLUMNS, baseline_beside
from orchestrate.stages.ingest_worker import (
    EmbedClips,
    ExtractClip,
    StoreWrite,
    TransientReadError,
    extractor_key,
    missing_extractors,
    retry_args,
)
from orchestrate.store import (
    CLIP_COLUMNS,
    SHAPE_SUFFIX,
    ExtractorKey,
    FeatureStore,
    encode_arrays,
    row_schema,
)
from tasks import TASKS
from tasks.common import MODALITY_PREFIX

__all__ = [
    "IngestSummary",
    "TransientReadError",
    "extractor_key",
    "requested_extractors",
    "retry_args",
    "run_ingest",
    "table_key",
]


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
    """The extractors to run: every one the run's tasks read, then any other the config names.

    Each with the config's parameters for it (``ingest.extractors.<name>``) over its paper
    defaults: naming one extractor's parameters never drops the others.
    """
    names: list[str] = []
    baseline = TASKS["baseline"]
    for run in config.task_runs():
        task = TASKS[run.name]
        variants = [(task, variant) for variant in run.variants]
        # The baseline swept beside the paper's rows reads its modalities' extractors too.
        variants += [(baseline, v) for v in baseline_beside(config, task, run.variants)]
        for task, variant in variants:
            for column in task.variant(variant).columns:
                prefix, array = column.split(".", 1)
                if prefix == MODALITY_PREFIX:  # modality.audio: the extractor standing for it
                    column = CLIP_MODALITY_COLUMNS.get(array, column)
                extractor = column.split(".", 1)[0]
                if extractor in EXTRACTORS and extractor not in names:
                    names.append(extractor)
    names += [name for name in config.ingest.extractors if name not in names]
    return {name: dict(config.ingest.extractors.get(name) or {}) for name in names}


def run_ingest(config: RunConfig, progress: bool = True) -> IngestSummary:
    """Fill the feature store for the config's dataset; returns the summary."""
    if config.dataset.root is None:
        raise InputError("dataset.root: give the dataset's directory, s3:// prefix or table file")
    context = ray.data.DataContext.get_current()
    # One bar of our own (clips ingested, orchestrate.console) instead of Ray Data's per
    # operator bars, which on a pipe become a block of log lines every few seconds.
    context.enable_progress_bars = False
    # UDF errors reach Ray as themselves, so that retry_exceptions can match them.
    context.raise_original_map_exception = True
    context.actor_task_retry_on_errors = [TransientReadError]

    store = FeatureStore(config.store_uri, config.storage_options)
    adapter = dataset_adapter(config.dataset.name)
    if adapter.yields == "feature-table":
        return _ingest_feature_table(config, store, adapter)

    started = time.perf_counter()
    root = config.dataset.root
    listing = list_clips(
        config.dataset.name,
        root,
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

    clips = _identify_clips(listing.clips, config, store)
    keys = {
        e.name: extractor_key(e, config.dataset.faces, config.ingest.face_detect_width)
        for e in extractors
    }
    # Hashes that have a row, per extractor: the projected content_hash column only.
    cached = {
        e.name: store.cached_hashes(keys[e.name], ok_only=config.ingest.retry_failed)
        for e in extractors
    }
    work = []
    for row in clips:
        if row["content_hash"] is None:
            work.append({**row, "missing": None})  # hashed in the worker, then checked
            continue
        missing = missing_extractors(row, row["content_hash"], extractors, cached)
        if missing:
            work.append({**row, "missing": missing})

    computed = 0
    if work:
        hashed = _extract(work, extractors, keys, cached, config, store, progress)
        computed = sum(decoded for _, decoded in hashed.values())
        for row in clips:
            if row["clip_id"] in hashed:
                row["content_hash"] = hashed[row["clip_id"]][0]
    manifest = pd.DataFrame(clips).sort_values("clip_id").reset_index(drop=True)
    store.write_manifest(config.dataset.name, root, manifest)
    seconds = time.perf_counter() - started
    summary = _summarise(config.dataset.name, manifest, extractors, keys, store, computed, seconds)
    summary.rejected_files = rejected
    summary.skipped_files = dict(listing.skipped)
    return summary


def _identify_clips(clips: list[Clip], config: RunConfig, store: FeatureStore) -> list[dict]:
    """Clip fields, source URI and identity, and the content hash where the identity vouches.

    One listing of the dataset's root gives every file's identity; a clip whose URI and
    identity match the last manifest's keeps that manifest's content hash (None otherwise:
    the worker hashes it).
    """
    always_hash = config.ingest.always_hash
    root = config.dataset.root
    assert root is not None
    identities = {} if always_hash else file_identities(root, config.storage_options)
    previous = {} if always_hash else store.manifest_identities(config.dataset.name, root)
    rows = []
    for clip in clips:
        uris = [uri for uri in dict.fromkeys((clip.video_uri, clip.audio_uri)) if uri]
        source_uri = " + ".join(uris)
        parts = [identities.get(uri) for uri in uris]
        identity = " + ".join(parts) if all(parts) else None  # type: ignore[arg-type]
        known = previous.get(clip.clip_id)
        content = known[2] if identity and known and known[:2] == (source_uri, identity) else None
        rows.append(
            {
                **asdict(clip),
                "source_uri": source_uri,
                "source_identity": identity,
                "content_hash": content,
            }
        )
    return rows


def _cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# Peak resident memory, with headroom: a Ray worker that decodes a clip and runs the
# extractors without networks, and one that also holds VGG16 and the FER CNN (BENCHMARKS.md
# measured 2.2-2.7 GiB for the latter).
CLIP_TASK_MEMORY = 1 << 30
NETWORK_ACTOR_MEMORY = 3 << 30


def _memory_request(need: int) -> int:
    """Bytes of Ray's ``memory`` resource a task asks for: what it needs, but never more
    than a CPU's share of the cluster's memory, so that a small machine still runs a task
    per CPU."""
    resources = ray.cluster_resources()
    share = int(resources.get("memory", need) / max(1.0, resources.get("CPU", 1.0)))
    return max(1, min(need, share))


# Clips per Ray Data block (the unit of streaming, of a store write and of a retry).
CLIPS_PER_BLOCK = 8


def _extract(
    work: list[dict[str, Any]],
    extractors: list[Extractor],
    keys: dict[str, ExtractorKey],
    cached: dict[str, set[str]],
    config: RunConfig,
    store: FeatureStore,
    progress: bool = True,
) -> dict[str, tuple[str, bool]]:
    """Run the work through one streamed Ray Data pass; clip id -> (content hash, decoded)."""
    face_detect_width = config.ingest.face_detect_width
    faces = config.dataset.faces
    storage_options = config.storage_options
    # Workers check a freshly hashed clip against the cache themselves: only those need it.
    cached_ref = ray.put(cached) if any(row["missing"] is None for row in work) else None

    extract_clip = ExtractClip(
        tuple(extractors), face_detect_width, storage_options, faces, cached_ref
    )

    writer = StoreWrite(
        store.uri,
        store.storage_options,
        tuple((e.name, keys[e.name], tuple(e.outputs)) for e in extractors),
    )
    # Explicit blocks: at least four per CPU so every core gets work on a small dataset,
    # and at most CLIPS_PER_BLOCK clips each, so what a worker holds at once (a block's
    # crops and payloads) does not grow with the corpus.
    blocks = max(1, min(len(work), max(4 * _cluster_cpus(), -(-len(work) // CLIPS_PER_BLOCK))))
    dataset = ray.data.from_items(work, override_num_blocks=blocks)
    networks = [e for e in extractors if e.make_embedder() is not None]
    gpus = int(ray.cluster_resources().get("GPU", 0))
    # What one task or actor asks of the scheduler, so that it packs nodes by memory too.
    clip_task = {"num_cpus": 1, "memory": _memory_request(CLIP_TASK_MEMORY)}
    network_actor = {"num_cpus": 1, "memory": _memory_request(NETWORK_ACTOR_MEMORY)}
    if networks and not gpus:
        # Fused into the actor pool below, so the map asks exactly what the actors ask
        # (other remote args, a ray_remote_args_fn included, would keep it apart, and its
        # tasks would wait for CPUs the actors hold): actor tasks are retried through
        # DataContext.actor_task_retry_on_errors instead.
        dataset = dataset.map(extract_clip, **network_actor)
    else:
        dataset = dataset.map(extract_clip, ray_remote_args_fn=retry_args, **clip_task)
    if networks:
        # One actor pool runs every network, each loaded once per actor, and writes the
        # block's rows. On a CPU cluster the pool has up to one actor per CPU and Ray Data
        # fuses the per-clip map into it (each actor reads, decodes, extracts, embeds and
        # writes); with GPUs it has up to one actor per GPU and the per-clip map stays in
        # CPU tasks that feed it. The pool starts at that size and autoscales between one
        # actor and it (an actor lost with its node is restarted where there is room).
        workers = config.ingest.embed_workers or gpus or _cluster_cpus()
        dataset = dataset.map_batches(
            EmbedClips,
            fn_constructor_kwargs={
                "networks": {e.name: e.params for e in networks},
                "writer": writer,
            },
            batch_size=config.ingest.embed_batch_size,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers, initial_size=workers),
            num_gpus=1 if gpus else 0,
            **network_actor,
        )
    else:
        dataset = dataset.map_batches(
            writer, batch_format="pandas", ray_remote_args_fn=retry_args, **clip_task
        )
    # Streamed: each block is written as it finishes; only clip outcomes come back.
    outcomes: dict[str, tuple[str, bool]] = {}
    with progress_bar(len(work), "clips ingested", "clip", enabled=progress) as bar:
        for batch in dataset.iter_batches(batch_format="pandas", batch_size=None):
            for clip_id, content, decoded in zip(
                batch["clip_id"], batch["content_hash"], batch["decoded"], strict=True
            ):
                outcomes[clip_id] = (content, bool(decoded))
            bar.update(len(batch))
    return outcomes


def _summarise(
    dataset: str,
    clips: pd.DataFrame,
    extractors: list[Extractor],
    keys: dict[str, ExtractorKey],
    store: FeatureStore,
    computed: int,
    seconds: float,
) -> IngestSummary:
    """Per clip: ok when every extractor it has rows for is ok; else failed, with its reasons."""
    hashes = set(clips["content_hash"])
    # content hash -> reason -> the extractors that failed with it
    reasons: dict[str, dict[str, list[str]]] = {}
    for extractor in extractors:
        # Three projected columns, filtered to this dataset's clips: never a feature array.
        rows = store.row_statuses(keys[extractor.name], hashes)
        ok = set(rows.loc[rows["status"] == "ok", "content_hash"])
        failed = rows[(rows["status"] != "ok") & ~rows["content_hash"].isin(ok)]
        failed = failed.drop_duplicates("content_hash", keep="first")
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


def table_key(stored_as: StoredAs) -> ExtractorKey:
    """The store key of a feature table's rows (its own version: never mixed with media's)."""
    return ExtractorKey(stored_as.extractor, stored_as.version, stored_as.param_hash)


def _ingest_feature_table(
    config: RunConfig, store: FeatureStore, adapter: DatasetAdapter
) -> IngestSummary:
    """A feature table already holds an extractor's features: store them under their key.

    Each row's content hash is derived from the table file's hash and the clip id, so a
    changed table is a new set of rows; rows go through the store's one row schema.
    """
    assert adapter.read_table is not None
    started = time.perf_counter()
    root = config.dataset.root
    stored_as = adapter.table_stored_as(config.dataset)
    table = adapter.read_table(config.dataset, config.storage_options)
    root_hash = content_hash(root, config.storage_options)
    rows = table.rows.copy()
    rows["dataset"] = adapter.name
    rows["actor"] = rows["group"]
    rows["source_uri"] = [f"{root}#{clip_id}" for clip_id in rows["clip_id"]]
    rows["content_hash"] = [
        hashlib.sha256(f"{root_hash}:{clip_id}".encode()).hexdigest() for clip_id in rows["clip_id"]
    ]
    store.write_manifest(adapter.name, root, rows)
    key = table_key(stored_as)
    arrays = stored_as.arrays
    todo = rows[~rows["content_hash"].isin(store.cached_hashes(key))]
    if len(todo):
        columns: dict[str, list[Any]] = {name: list(todo[name]) for name in CLIP_COLUMNS}
        columns.update(
            extractor=[key.name] * len(todo),
            version=[key.version] * len(todo),
            param_hash=[key.param_hash] * len(todo),
            status=["ok"] * len(todo),
            reason=[""] * len(todo),
        )
        encoded = [
            encode_arrays({name: row[name] for name in arrays}, arrays)
            for row in todo.to_dict("records")
        ]
        for name in (*arrays, *(array + SHAPE_SUFFIX for array in arrays)):
            columns[name] = [row[name] for row in encoded]
        store.write_rows(key, pa.Table.from_pydict(columns, schema=row_schema(arrays)))
    rejected = [(r.uri, r.reason) for r in table.rejected]
    return IngestSummary(
        dataset=adapter.name,
        clips=len(rows),
        computed=len(todo),
        ok=len(rows),
        failed=0,
        rejected_files=rejected,
        seconds=time.perf_counter() - started,
    )
