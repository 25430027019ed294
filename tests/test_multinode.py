"""More than one node, on this machine: ``ray.cluster_utils.Cluster`` with a head that runs no
work (``num_cpus=0``) and two worker nodes of one CPU, moto's S3 server as the feature store
and the dataset, and nodes lost mid-run.

- a local store or dataset path is refused on that cluster, unless every node shares it: a
  third node started in its own mount namespace (``unshare --mount``, a tmpfs over the
  test's private directory) sees another directory there, as a node with its own disk does;
- a worker node removed in the middle of an ingest: every clip's row is stored exactly
  once, none failed;
- a worker node removed in the middle of a sweep, while it runs a trial past its first
  checkpoints: that trial resumes from its checkpoint, and the sweep completes with its table;
- an ingest killed half way (SIGKILL): the rerun computes only the clips without rows.
"""

from __future__ import annotations

import json
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
from typing import TYPE_CHECKING, Any

import psutil
import pytest
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from orchestrate.cluster import MARKER_PREFIX, RunPath, UnsharedPathError, ingest_paths
from orchestrate.cluster import require_shared_paths as require_shared
from orchestrate.config import RunConfig, load_config
from orchestrate.corpus import synthesize_corpus
from orchestrate.extractors import build_extractor
from orchestrate.pipeline import ingest, sweep
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
    # No dashboard: its fixed port may be another Ray's on a shared machine.
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
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


def s3_config(
    moto_s3: MotoS3, workspace: Path, *overrides: str, selection: tuple[str, ...] = ()
) -> RunConfig:
    """Dataset and store on moto's S3; ``selection`` (default EMODal's audio) picks the
    extractors."""
    return load_config(
        None,
        [
            f"workspace={workspace}",
            "dataset.root=s3://media/ravdess",
            "store.uri=s3://store/features",
            f"store.endpoint_url={moto_s3.endpoint_url}",
            "store.region=us-east-1",
            "sweep.baseline=[]",  # the mechanisms, on the named extractors and rows alone
            *(selection or (AUDIO, EMODAL_AUDIO)),
            *overrides,
        ],
    )


def audio_rows(config: RunConfig, extractor: str = "emodal_audio", params: dict | None = None):
    """Every stored row of one extractor (a DataFrame), duplicates and failures included."""
    store = FeatureStore(config.store_uri, config.storage_options)
    rows = store.read_features(extractor_key(build_extractor(extractor, params or {})))
    assert rows is not None, f"no {extractor} rows in the store"
    return rows


def part_files(moto_s3: MotoS3, extractor: str = "emodal_audio") -> dict[str, float]:
    """One extractor's Parquet files in the store on S3: key -> last-modified time."""
    prefix = f"features/features/{extractor}/"
    listed = moto_s3.client.list_objects_v2(Bucket="store", Prefix=prefix)
    return {
        item["Key"]: item["LastModified"].timestamp()
        for item in listed.get("Contents", [])
        if item["Key"].endswith(".parquet")
    }


def assert_every_clip_once(
    config: RunConfig, clips: set[str], extractor: str = "emodal_audio", params: dict | None = None
) -> None:
    rows = audio_rows(config, extractor, params)
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


def worker_processes(node: Any) -> Iterator[tuple[str, psutil.Process]]:
    """The processes under a node's raylet with their titles (``ray::<task>`` or
    ``ray::<actor class>.<method>``): read from the processes, so no dashboard is needed."""
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
    for process in psutil.Process(raylet.pid).children(recursive=True):
        try:
            title = " ".join(process.cmdline()).split(" ", 1)[0]
        except psutil.Error:
            continue  # it just exited
        yield title, process


def running(node: Any) -> set[str]:
    """What a node's Ray workers run now: their process titles, idle workers and Ray's own
    agents left out."""
    return {
        title
        for title, _ in worker_processes(node)
        if title.startswith("ray::") and title not in IDLE_TITLES
    }


IDLE_TITLES = {"ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent"}


# Ray tasks (EMODal's audio features), or the network actor pool fused with the per-clip map
# (Song's VGG16, random weights: what it computes does not matter here).
PIPELINES = {
    "tasks": ("emodal_audio", {}, []),
    "actor-pool": (
        "song_vgg16",
        {"weights": "random"},
        [
            "ingest.extractors={song_vgg16: {weights: random}}",
            "tasks={song: {variants: [video]}}",
            "ingest.embed_batch_size=2",  # a file every two clips, as the tasks write
        ],
    ),
}


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_worker_node_lost_mid_ingest_stores_every_clip_once(
    moto_s3: MotoS3, tmp_path: Path, pipeline: str
) -> None:
    """A worker node is removed while it runs ingest work, blocks already on S3: Ray retries
    the lost tasks (or restarts the lost actor) on the other worker, and every clip's row is
    stored exactly once, ok."""
    extractor, params, selection = PIPELINES[pipeline]
    clips = corpus_on_s3(moto_s3, tmp_path / "corpus", actors=2)
    config = s3_config(moto_s3, tmp_path / "ws", selection=tuple(selection))
    with head_and_two_workers() as (cluster, workers):
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["summary"] = ingest(config, progress=False)
            except BaseException as error:  # re-raised below, in the test's thread
                outcome["error"] = error

        driver = threading.Thread(target=run, daemon=True)
        driver.start()
        wait_until(lambda: part_files(moto_s3, extractor) or not driver.is_alive(), "a first block")
        # The worker node to lose: one running ingest work now, blocks already written.
        busy: dict[Any, set[str]] = {}

        def watch(nodes: list[Any]) -> None:
            for node in nodes:
                if titles := running(node):
                    busy.setdefault(node, set()).update(titles)

        def a_worker_is_busy() -> bool:
            watch(workers)
            return bool(busy) or not driver.is_alive()

        wait_until(a_worker_is_busy, "ingest work running on a worker node")
        written_before = len(part_files(moto_s3, extractor))
        assert driver.is_alive(), f"the ingest ended before a node could be lost: {outcome}"
        lost = next(iter(busy))
        cluster.remove_node(lost, allow_graceful=False)
        removed_at = time.monotonic()
        (left,) = [node for node in workers if node is not lost]
        while driver.is_alive():  # what the node that is left runs, until the ingest ends
            watch([left])
            time.sleep(0.1)
        files = len(part_files(moto_s3, extractor))
        print(
            f"{pipeline}: node lost with {written_before} files written, the ingest ended "
            f"{time.monotonic() - removed_at:.1f} s later with {files}"
        )
        driver.join()
        assert "error" not in outcome, outcome.get("error")
        summary: IngestSummary = outcome["summary"]  # type: ignore[assignment]
        wait_until(lambda: alive_node_count() == 2, "the lost node to be marked dead")
        # Spread over both workers: the lost one was running ingest work, the one left too.
        assert set(busy) == set(workers), busy
        print(
            f"ingest work seen on the lost node: {sorted(busy[lost])}, on the other: "
            f"{sorted(busy[left])}"
        )

    assert (summary.clips, summary.failed, summary.computed) == (len(clips), 0, len(clips))
    assert_every_clip_once(config, clips, extractor, params)
    assert 0 < written_before < len(part_files(moto_s3, extractor))


# -- an ingest killed half way ---------------------------------------------------------------


def test_killed_ingest_keeps_its_blocks_and_the_rerun_computes_only_the_rest(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    """``orchestrate ingest`` (its own one-CPU Ray) is killed with SIGKILL once a first block
    is on S3. What it wrote stays, untouched; the rerun, on the multi-node cluster, decodes
    only the clips without a row, and every clip ends with one row. 64 clips: the one-CPU
    ingest writes 8 blocks one after another, so blocks are still to come when the watch
    sees the first (with 16 clips its 4 short audio blocks could all land between two
    looks)."""
    clips = corpus_on_s3(moto_s3, tmp_path / "corpus", actors=8)
    config = s3_config(moto_s3, tmp_path / "ws")
    command = [
        sys.executable, "-m", "orchestrate", "ingest", "--quiet", "--workspace",
        str(tmp_path / "ws"), "dataset.root=s3://media/ravdess", "store.uri=s3://store/features",
        f"store.endpoint_url={moto_s3.endpoint_url}", "store.region=us-east-1", AUDIO,
        EMODAL_AUDIO, "ray.num_cpus=1",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    with (tmp_path / "killed.log").open("wb") as log:
        killed = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            wait_until(lambda: part_files(moto_s3) or killed.poll() is not None, "a first block")
            assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        finally:
            os.killpg(killed.pid, signal.SIGKILL)  # the driver and the Ray it started
            killed.wait()
    wait_until(lambda: not _group_alive(killed.pid), "the killed ingest's processes to exit")

    kept_files = part_files(moto_s3)
    kept = audio_rows(config)
    assert 0 < len(kept) < len(clips), "the ingest was not stopped half way"
    assert kept["content_hash"].is_unique and set(kept["status"]) == {"ok"}

    with head_and_two_workers():
        summary = ingest(config, progress=False)
    assert (summary.clips, summary.failed) == (len(clips), 0)
    assert summary.computed == len(clips) - len(kept)  # only the clips without a row
    print(f"killed after {len(kept)} of {len(clips)} clips; the rerun computed {summary.computed}")
    assert_every_clip_once(config, clips)
    after = part_files(moto_s3)
    assert {key: after[key] for key in kept_files} == kept_files  # kept files not rewritten


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# -- a node lost mid-sweep -------------------------------------------------------------------

SWEEP_EPOCHS = 16
# ASHA's first rung (grace period, ``max(1, epochs // 4)`` in sweep._new_tuner); its next is
# the last epoch, so a trial that reported past the first runs to the end unless lost.
FIRST_RUNG = SWEEP_EPOCHS // 4
TO_GO = 4  # epochs a trial has left at the least when its node is removed: still training


def trial_progress(moto_s3: MotoS3) -> dict[str, int]:
    """Each trial's checkpointed epochs on S3, by its directory name. Tune keeps a trial's
    last checkpoint only (``num_to_keep=1``): ``checkpoint_<n>`` after n + 1 epochs."""
    progress: dict[str, int] = {}
    pages = moto_s3.client.get_paginator("list_objects_v2").paginate(
        Bucket="store", Prefix="sweeps/"
    )
    for page in pages:
        for item in page.get("Contents", []):
            parts = item["Key"].split("/")
            for trial, part in zip(parts, parts[1:], strict=False):
                if part.startswith("checkpoint_"):
                    epochs = int(part.removeprefix("checkpoint_")) + 1
                    progress[trial] = max(progress.get(trial, 0), epochs)
    return progress


def trials_on(node: Any) -> set[str]:
    """The trials a node runs, by directory name: Tune runs a trial in an ``ImplicitFunc``
    actor whose working directory is ``…/working_dirs/<the trial's directory>``."""
    trials = set()
    for title, process in worker_processes(node):
        if title.startswith("ray::ImplicitFunc"):
            try:
                cwd = Path(process.cwd())
            except psutil.Error:
                continue  # it just exited
            if cwd.parent.name == "working_dirs":
                trials.add(cwd.name)
    return trials


def test_worker_node_lost_mid_sweep_resumes_its_trial_from_a_checkpoint(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    """EMODal audio, one study of two trials at once (one per worker node), its Tune driver
    on the head, checkpoints and results on S3. Once a trial has checkpointed past ASHA's
    first rung and is still training, the worker node running it is removed: that trial is
    retried from its checkpoint on the node left, and the sweep ends with its table, the
    study with both trials complete and a final model."""
    corpus_on_s3(moto_s3, tmp_path / "corpus", actors=4)
    config = s3_config(
        moto_s3,
        tmp_path / "ws",
        "sweep.storage_path=s3://store/sweeps",
        "sweep.protocols=[actor-kfold]",
        "sweep.selection=holdout",
        "sweep.folds=2",
        "sweep.num_samples=2",
        "sweep.max_concurrent=2",
        "sweep.max_concurrent_studies=1",
        f"sweep.max_epochs={SWEEP_EPOCHS}",
    )
    with head_and_two_workers() as (cluster, workers):
        assert ingest(config, progress=False).failed == 0
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["tables"] = sweep(config, progress=False)
            except BaseException as error:  # re-raised below, in the test's thread
                outcome["error"] = error

        driver = threading.Thread(target=run, daemon=True)
        driver.start()
        seen: list[str] = []  # what the watch saw, said if it gives up
        study_seen_on: set[str] = set()  # where the study's Tune driver was seen running
        target: dict[str, Any] = {}

        def a_trial_is_mid_way() -> bool:
            """A trial past ASHA's first rung, epochs to go, running on a worker node."""
            if not driver.is_alive():
                return True
            for name, node in [("head", cluster.head_node), *(("worker", n) for n in workers)]:
                if "ray::search_study" in running(node):
                    study_seen_on.add(name)
            progress = trial_progress(moto_s3)
            for node in workers:
                for trial in trials_on(node):
                    epochs = progress.get(trial, 0)
                    seen.append(f"{trial[:40]}: {epochs}")
                    if FIRST_RUNG < epochs <= SWEEP_EPOCHS - TO_GO:
                        target.update(node=node, trial=trial, epochs=epochs)
                        return True
            return False

        wait_until(a_trial_is_mid_way, "a trial mid-way on a worker node")
        assert driver.is_alive(), f"the sweep ended before a node could be lost: {seen[-20:]}"
        cluster.remove_node(target["node"], allow_graceful=False)
        print(f"removed the node running {target['trial']} after {target['epochs']} epochs")
        driver.join(WAIT_S)
        assert not driver.is_alive(), "the sweep did not finish after the node was lost"
        assert "error" not in outcome, outcome.get("error")
        # The study's Tune driver ran on the head, out of reach of the lost node.
        assert study_seen_on == {"head"}, study_seen_on

    tables = outcome["tables"]
    table = tables["emodal"]  # type: ignore[index]
    assert list(table["variant"]) == ["audio"], table
    assert table["uar"].notna().all() and not table["error"].fillna("").any(), table
    outcomes = [
        item["Key"]
        for item in moto_s3.client.list_objects_v2(Bucket="store", Prefix="sweeps/")["Contents"]
        if item["Key"].endswith(".outcome.json")
    ]
    assert len(outcomes) == 1, outcomes
    body = moto_s3.client.get_object(Bucket="store", Key=outcomes[0])["Body"].read()
    study = json.loads(body)
    assert len(study["trials"]) == 2 and all(t["error"] is None for t in study["trials"])
    assert study["finals"], "no final model"
    (lost,) = [t for t in study["trials"] if f"_{t['trial_id']}_" in target["trial"]]
    resumed = max(row.get("resumed_from_epoch", 0) for row in lost["history"])
    print(f"the lost trial resumed from epoch {resumed:.0f} and trained to epoch "
          f"{lost['history'][-1]['training_iteration']:.0f}")  # fmt: skip
    # Retried from its last checkpoint Tune had, not from scratch, and trained to the end: it
    # was past ASHA's only rung before the last epoch. Tune's last checkpoint may be one
    # behind what S3 showed (uploaded, its report not yet at the driver when the node went),
    # or ahead (a killed node's worker may finish an epoch before it exits).
    assert target["epochs"] - 1 <= resumed < SWEEP_EPOCHS, lost["history"]
    assert lost["history"][-1]["training_iteration"] == SWEEP_EPOCHS, lost["history"]
