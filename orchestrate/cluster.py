"""The paths a run's Ray tasks read and write must be the same on every node of the cluster.

On one machine every task sees the driver's disk. On a cluster of several nodes a local
path names a different directory on each node: workers would write the store's Parquet
files to their own disks while the driver reads its own, and a sweep's checkpoints would
land where a retried trial can't find them, silently. So before ingest or a sweep starts,
each local path it hands to tasks (the feature store, the dataset, the sweep's storage) is
checked when Ray has more than one alive node: the driver writes a marker file holding a
random token into the directory, and a task pinned to each alive node
(``NodeAffinitySchedulingStrategy(soft=False)``, no CPU asked) reads it back. A path some
node can't read the token from is refused with one line (:class:`UnsharedPathError`, a
``ConfigError``) before any work; ``s3://`` URIs are shared by construction and not probed.

A directory the driver can't write to (a read-only dataset mount) or a file (the SFEW
table) is compared instead: every node must see the same tree (relative names and file sizes)
or the same file (size and a digest of its first MiB) as the driver.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrate.config import ConfigError, RunConfig

MARKER_PREFIX = ".orchestrate-shared-"
# How long a node may take to start a worker and answer (a busy node is slow, not unshared).
PROBE_TIMEOUT_S = 120.0
# A read-only tree is compared by its first entries' names and sizes (a full RAVDESS is 2 880).
FINGERPRINT_ENTRIES = 10_000


class UnsharedPathError(ConfigError):
    """A local path the run's tasks use is not the same directory on every node."""


@dataclass(frozen=True)
class RunPath:
    """A path a stage hands to its tasks: the config field it comes from, and whether the
    stage writes there (an output directory is created if missing; an input must exist)."""

    field: str
    path: str
    output: bool


def ingest_paths(config: RunConfig) -> list[RunPath]:
    """What ingest's tasks read and write: the dataset and the feature store."""
    paths = [RunPath(_field("store.uri", config.store.uri), config.store_uri, output=True)]
    if config.dataset.root:
        paths.append(RunPath("dataset.root", config.dataset.root, output=False))
    return paths


def sweep_paths(config: RunConfig) -> list[RunPath]:
    """What a sweep's tasks read and write: the store, and Tune's results and journals."""
    return [
        RunPath(_field("store.uri", config.store.uri), config.store_uri, output=True),
        RunPath(
            _field("sweep.storage_path", config.sweep.storage_path),
            config.sweep_storage,
            output=True,
        ),
    ]


def _field(name: str, given: str | None) -> str:
    return name if given else f"{name} (default: in the workspace)"


def alive_nodes() -> list[str]:
    """The node ids of the Ray cluster's alive nodes."""
    return [node["NodeID"] for node in ray.nodes() if node["Alive"]]


def require_shared_paths(paths: list[RunPath]) -> None:
    """Refuse (UnsharedPathError) a local path that some alive node does not share.

    Nothing is probed on a one-node cluster, nor for ``s3://`` URIs; an input that does
    not exist on the driver is left to the stage, which says so.
    """
    local = [p for p in paths if not p.path.startswith("s3://")]
    nodes = alive_nodes()
    if len(nodes) <= 1 or not local:
        return
    for run_path in local:
        path = Path(run_path.path.removeprefix("file://")).expanduser()
        if not run_path.output and not path.exists():
            continue
        missing = nodes_not_sharing(path, nodes, create=run_path.output)
        if missing:
            shown = ", ".join(node[:8] for node in missing)
            raise UnsharedPathError(
                f"{run_path.field}: {run_path.path} is a local path and {len(missing)} of "
                f"the cluster's {len(nodes)} nodes see another directory there (node "
                f"{shown}): use s3://bucket/prefix or a path every node shares"
            )


def nodes_not_sharing(path: Path, nodes: list[str], create: bool = False) -> list[str]:
    """The nodes (among ``nodes``) that do not see at ``path`` what the driver sees.

    A writable directory (with ``create``, made if it does not exist yet, as the store
    would be) gets a marker holding a random token, removed afterwards; anything else is
    fingerprinted. A node that left the cluster during the probe is not counted.
    """
    marker: Path | None = None
    if path.is_dir() or (create and not path.exists()):
        try:
            path.mkdir(parents=True, exist_ok=True)
            marker = path / f"{MARKER_PREFIX}{secrets.token_hex(8)}"
            marker.write_text(secrets.token_hex(16))
        except OSError:
            marker = None  # read-only: compare what every node sees instead
    try:
        if marker is not None:
            expected, probed = marker.read_text(), str(marker)
        else:
            expected, probed = fingerprint(str(path)), str(path)
        refs = {
            node: _read_evidence.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote(probed, marker is not None)
            for node in nodes
        }
        missing = []
        for node, ref in refs.items():
            try:
                seen = ray.get(ref, timeout=PROBE_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                seen = None
            except ray.exceptions.RayError:
                if node not in alive_nodes():
                    continue  # the node left the cluster: it can't write anything
                seen = None
            if seen != expected:
                missing.append(node)
        return missing
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)


@ray.remote(num_cpus=0, max_retries=0)
def _read_evidence(path: str, is_marker: bool) -> str | None:
    """On one node: the marker's token, or the path's fingerprint; None when unreadable."""
    try:
        return Path(path).read_text() if is_marker else fingerprint(path)
    except OSError:
        return None


def fingerprint(path: str, limit: int = FINGERPRINT_ENTRIES) -> str:
    """What a reader sees at ``path``: a tree's relative names and file sizes (its first
    ``limit`` entries, in sorted order), or a file's size and first MiB."""
    digest = hashlib.sha256()
    target = Path(path)
    if target.is_dir():
        seen = 0
        for directory, subdirs, files in os.walk(target):
            subdirs.sort()
            for name in sorted(files):
                file = Path(directory, name)
                try:
                    size = file.stat().st_size
                except OSError:
                    size = -1  # a dangling link: seen the same on every node that shares it
                digest.update(f"{file.relative_to(target)}\0{size}\n".encode())
                seen += 1
                if seen >= limit:
                    return digest.hexdigest()
    else:
        with target.open("rb") as stream:
            digest.update(f"{target.stat().st_size}\n".encode())
            digest.update(stream.read(1 << 20))
    return digest.hexdigest()
