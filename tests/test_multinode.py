"""More than one node, on this machine: ``ray.cluster_utils.Cluster`` with a head that runs no
work (``num_cpus=0``) and two worker nodes of one CPU, moto's S3 server as the feature store
and the dataset, and nodes lost mid-run.

- a local store or dataset path is refused on that cluster, unless every node shares it: a
  third node started in its own mount namespace (``unshare --mount``, a tmpfs over the
  test's private directory) sees another directory there, as a node with its own disk does;
- a worker node removed in the middle of an ingest: every clip's row is stored exactly
  once, none failed;
- a worker node removed in the middle of a sweep: the sweep completes with its table;
- an ingest killed half way (SIGKILL): the rerun computes only the clips without rows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import ray
from ray.cluster_utils import Cluster

from orchestrate.cluster import MARKER_PREFIX, RunPath, UnsharedPathError, ingest_paths
from orchestrate.cluster import require_shared_paths as require_shared
from orchestrate.config import RunConfig, load_config
from orchestrate.corpus import synthesize_corpus
from orchestrate.extractors import build_extractor
from orchestrate.pipeline import ingest
from orchestrate.stages.ingest import IngestSummary, extractor_key
from orchestrate.store import FeatureStore

if TYPE_CHECKING:  # registered as a plugin in conftest.py
    from s3_server import MotoS3

pytestmark = pytest.mark.slow

WAIT_S = 300.0  # an upper bound on a step that normally takes seconds, never an assertion
# One cheap extractor (EMODal's audio features), named both ways a run selects extractors.
AUDIO = "ingest.extractors={emodal_audio: {}}"
EMODAL_AUDIO = "tasks={emodal: {variants: [audio]}}"


# -- the cluster -----------------------------------------------------------------------------


@contextmanager
def head_and_two_workers() -> Iterator[tuple[Cluster, list]]:
    """A head that runs nothing (``num_cpus=0``, as in infra/) and two one-CPU workers; the
    test's driver connected to it. Started after moto's fixture: workers inherit its
    credentials from the environment."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


@contextmanager
def node_with_its_own_disk(address: str, private: Path) -> Iterator[subprocess.Popen]:
    """A worker node joined to ``address`` whose view of ``private`` is its own (an empty
    tmpfs in a mount namespace of its own), as a node with a local disk sees a local path."""
    if not _can_unshare():
        pytest.skip("needs mount namespaces (unshare --mount) to give a node its own disk")
    ray_cli = Path(sys.executable).with_name("ray")
    script = (
        f'mount -t tmpfs tmpfs "{private}" && exec "{ray_cli}" start --address={address} '
        "--num-cpus=1 --block --disable-usage-stats"
    )
    node = subprocess.Popen(
        [*_unshare_prefix(), "sh", "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield node
    finally:
        os.killpg(node.pid, signal.SIGTERM)  # its own process group: only what it started
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def _unshare_prefix() -> list[str]:
    # As root a mount namespace is enough; otherwise map the user to root in a user namespace.
    return ["unshare", "--mount", "--propagation", "private"] + (
        [] if os.geteuid() == 0 else ["-r"]
    )


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        [*_unshare_prefix(), "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True
    )
    return probe.returncode == 0


def alive_node_count() -> int:
    return sum(1 for node in ray.nodes() if node["Alive"])


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(0.2)


# -- the data --------------------------------------------------------------------------------


def corpus_on_s3(moto_s3: MotoS3, root: Path, actors: int) -> set[str]:
    """Synthesise ``actors`` × 8 clips and upload them to s3://media/ravdess; their ids."""
    paths = synthesize_corpus(root, actors=actors, clips_per_emotion=1, seed=0, progress=False)
    moto_s3.client.create_bucket(Bucket="media")
    moto_s3.client.create_bucket(Bucket="store")
    for path in paths:
        moto_s3.upload(path, "media", f"ravdess/{path.relative_to(root)}")
    return {path.stem for path in paths}


def s3_config(moto_s3: MotoS3, workspace: Path, *overrides: str) -> RunConfig:
    return load_config(
        None,
        [
            f"workspace={workspace}",
            "dataset.root=s3://media/ravdess",
            "store.uri=s3://store/features",
            f"store.endpoint_url={moto_s3.endpoint_url}",
            "store.region=us-east-1",
            AUDIO,
            EMODAL_AUDIO,
            *overrides,
        ],
    )


def audio_rows(config: RunConfig):
    """Every stored emodal_audio row (a DataFrame), duplicates and failures included."""
    store = FeatureStore(config.store_uri, config.storage_options)
    rows = store.read_features(extractor_key(build_extractor("emodal_audio", {})))
    assert rows is not None, "no emodal_audio rows in the store"
    return rows


def part_files(moto_s3: MotoS3) -> dict[str, float]:
    """The store's emodal_audio Parquet files on S3: key -> last-modified time."""
    listed = moto_s3.client.list_objects_v2(
        Bucket="store", Prefix="features/features/emodal_audio/"
    )
    return {
        item["Key"]: item["LastModified"].timestamp()
        for item in listed.get("Contents", [])
        if item["Key"].endswith(".parquet")
    }


def assert_every_clip_once(config: RunConfig, clips: set[str]) -> None:
    rows = audio_rows(config)
    assert sorted(rows["clip_id"]) == sorted(clips), "a clip is missing or stored twice"
    assert rows["content_hash"].is_unique
    assert set(rows["status"]) == {"ok"}, rows.loc[rows["status"] != "ok", "reason"].tolist()


# -- a local path on a multi-node cluster ---------------------------------------------------


def test_local_paths_are_refused_unless_every_node_shares_them(tmp_path: Path) -> None:
    """Three nodes; the third sees an empty tmpfs at ``private/``. A store or dataset under
    ``private/`` is refused with one line before any work (the CLI exits 2 with it); paths
    under ``shared/``, which every node sees, pass; no marker is left behind."""
    private, shared = tmp_path / "private", tmp_path / "shared"
    private.mkdir()
    clips = shared / "clips"
    clips.mkdir(parents=True)
    (clips / "Actor_01").mkdir()
    (clips / "Actor_01" / "01-01-01-01-01-01-01.mp4").write_bytes(b"not decoded by this test")
    with head_and_two_workers() as (cluster, _), node_with_its_own_disk(cluster.address, private):
        wait_until(lambda: alive_node_count() == 4, "the fourth node to join")

        # The store in a workspace under private/: the CLI says so in one line, exit 2.
        workspace = private / "ws"
        cli = subprocess.run(
            [sys.executable, "-m", "orchestrate", "ingest", "--quiet", "--workspace",
             str(workspace), f"dataset.root={clips}", AUDIO],
            capture_output=True, text=True, timeout=WAIT_S,
            env={**os.environ, "RAY_ADDRESS": cluster.address},
        )  # fmt: skip
        lines = [line for line in cli.stderr.splitlines() if line.startswith("orchestrate:")]
        assert cli.returncode == 2, cli.stderr[-3000:]
        assert len(lines) == 1, cli.stderr[-3000:]
        assert lines[0].startswith(
            f"orchestrate: config error: store.uri (default: in the workspace): "
            f"{workspace / 'store'} is a local path"
        ), lines
        assert "1 of the cluster's 4 nodes" in lines[0]
        assert lines[0].endswith("use s3://bucket/prefix or a path every node shares")
        assert not list((workspace / "store").iterdir()), "the refused ingest wrote something"

        # A dataset under private/ (the store shared): refused the same way, in process.
        hidden = private / "clips"
        shutil.copytree(clips, hidden)
        config = load_config(None, [f"workspace={shared / 'ws'}", f"dataset.root={hidden}", AUDIO])
        with pytest.raises(UnsharedPathError, match=r"^dataset\.root: .* is a local path"):
            ingest(config, progress=False)
        assert not (shared / "ws" / "store" / "features").exists()

        # Paths every node shares pass the check.
        shared_config = load_config(
            None, [f"workspace={shared / 'ws'}", f"dataset.root={clips}", AUDIO]
        )
        require_shared(ingest_paths(shared_config))
        # A file (the SFEW table) is compared by its size and first MiB instead of a marker.
        table = shared / "SFEW.xlsx"
        table.write_bytes(b"a table every node reads")
        require_shared([RunPath("dataset.root", str(table), output=False)])
        (private / "SFEW.xlsx").write_bytes(table.read_bytes())
        with pytest.raises(UnsharedPathError, match=r"^dataset\.root: "):
            require_shared([RunPath("dataset.root", str(private / "SFEW.xlsx"), output=False)])
    assert list(tmp_path.rglob(f"{MARKER_PREFIX}*")) == []  # every marker removed


# -- a node lost mid-ingest ----------------------------------------------------------------


def map_task_nodes(state: str | None = None) -> set[str]:
    """The nodes where Ray Data map tasks ran (any attempt), or are in ``state`` now, as
    Ray's state API last heard."""
    from ray.util.state import list_tasks

    filters = [("func_or_class_name", "=", "_map_task")]
    if state is not None:
        filters.append(("state", "=", state))
    return {task.node_id for task in list_tasks(filters=filters, limit=10_000) if task.node_id}


def test_worker_node_lost_mid_ingest_stores_every_clip_once(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    """A worker node is removed once the first blocks are on S3: Ray retries the lost
    node's tasks on the other worker, and every clip's row is stored exactly once, ok."""
    clips = corpus_on_s3(moto_s3, tmp_path / "corpus", actors=2)
    config = s3_config(moto_s3, tmp_path / "ws")
    with head_and_two_workers() as (cluster, workers):
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["summary"] = ingest(config, progress=False)
            except BaseException as error:  # re-raised below, in the test's thread
                outcome["error"] = error

        driver = threading.Thread(target=run, daemon=True)
        driver.start()
        wait_until(lambda: part_files(moto_s3) or not driver.is_alive(), "a first block")
        # The worker node to lose: one seen running a map task now, blocks already written.
        by_id = {node.node_id: node for node in workers}
        running: set[str] = set()

        def a_worker_is_busy() -> bool:
            running.update(map_task_nodes("RUNNING") & set(by_id))
            return bool(running) or not driver.is_alive()

        wait_until(a_worker_is_busy, "a map task running on a worker node")
        written_before = len(part_files(moto_s3))
        assert driver.is_alive(), f"the ingest ended before a node could be lost: {outcome}"
        lost = sorted(running)[0]
        cluster.remove_node(by_id[lost], allow_graceful=False)
        driver.join(WAIT_S)
        assert not driver.is_alive(), "the ingest did not finish after the node was lost"
        assert "error" not in outcome, outcome.get("error")
        summary: IngestSummary = outcome["summary"]  # type: ignore[assignment]
        wait_until(lambda: alive_node_count() == 2, "the lost node to be marked dead")
        # Spread over both workers: the lost one ran tasks, the one left finished the rest.
        assert map_task_nodes() == set(by_id)

    assert (summary.clips, summary.failed, summary.computed) == (len(clips), 0, len(clips))
    assert_every_clip_once(config, clips)
    assert 0 < written_before < len(part_files(moto_s3))
