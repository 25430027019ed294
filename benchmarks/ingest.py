"""Ingest benchmark: ratios measured in one run, on the same clips and the same cores.

    pip install -e '.[bench]'
    python benchmarks/ingest.py --actors 4 --clips-per-emotion 2 [--fer-model PATH] [--out DIR]

Two generated corpora, N clips (``--actors`` x 8 emotions x ``--clips-per-emotion``) and 4N
(four times the actors), after one ingest of 8 other clips (so that every timed run finds
the page cache and the bytecode warm, as any ingest after the first one following an
install does). Each measurement on a fresh feature store unless said otherwise:

- decode floor: Ray Data over the N clips doing nothing but decoding every frame (OpenCV)
  and the audio track (PyAV): what any pipeline must pay;
- cold ingest with every extractor of N and of 4N clips on 2 CPUs: the fixed cost is the
  intercept of the line through the two, the per-clip cost its slope;
- cold ingest of the 4N clips on 1 CPU (Ray restarted in between);
- warm re-ingest of the 4N clips: every cache key present; the media bytes read during it
  (files whose access time moved: each file's atime is set before its mtime first, so the
  kernel's relatime records the next read);
- the papers' way on the 4N clips: a plain sequential script, one clip after another in one
  process, computing the same features (decode, faces, extractors, networks per clip), with
  the libraries' default thread pools and again with OpenCV and torch on one thread;
- peak resident memory of the driver (this process) and of Ray's worker processes while
  ingesting N and 4N clips (flat means it does not grow with the number of clips);
- the CPU seconds the ingest's actors and every other process spent during the 4N-clip
  cold ingest (how much of the two cores the work got);
- each network actor's start in the N-clip ingest, from Ray's task events
  (``ray.timeline``): when its constructor ran and for how long, and its first batch
  against the median of its next ones (the imports and network loads it pays once);
- what a network actor pays before its first clip, in a fresh process on the quiet
  machine: importing torch, building VGG16 and loading the FER CNN (part of the fixed cost);
- each network's time per input on one thread at its CPU forward size against a forward of
  256 inputs (``orchestrate.extractors.base.forward_batch_size``).

Prints a Markdown table of seconds and ratios for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import psutil
import ray

from orchestrate.config import RunConfig, load_config
from orchestrate.corpus import synthesize_corpus
from orchestrate.datasets import list_clips
from orchestrate.extractors import build_extractor
from orchestrate.extractors.base import GPU_FORWARD_BATCH
from orchestrate.extractors.fer_cnn import CPU_FORWARD_FACES
from orchestrate.extractors.vgg16 import CPU_FORWARD_CROPS
from orchestrate.faces import HaarFaceDetector
from orchestrate.media import decode_audio, decode_clip
from orchestrate.stages.ingest import requested_extractors, run_ingest


def extractor_spec(fer_model: str | None) -> str:
    fer = fer_model or "random"
    return (
        "{emodal_face: {}, emodal_audio: {}, song_mfcc: {}, song_vgg16: {weights: random},"
        f" mitseas_audio: {{}}, mitseas_fer: {{model_path: {fer}}}, wang_texture: {{}}}}"
    )


def config_for(root: Path, workspace: Path, fer_model: str | None) -> RunConfig:
    return load_config(
        None,
        [
            f"workspace={workspace}",
            f"dataset.root={root}",
            f"ingest.extractors={extractor_spec(fer_model)}",
        ],
    )


def decode_only(row: dict) -> dict:
    """Every frame and the audio track decoded, nothing computed: the floor."""
    capture = cv2.VideoCapture(row["video_uri"])
    frames = 0
    while True:
        ok, _ = capture.read()
        if not ok:
            break
        frames += 1
    capture.release()
    audio = decode_audio(Path(row["audio_uri"]))
    return {"clip_id": row["clip_id"], "frames": frames, "samples": len(audio.samples)}


def time_decode_floor(root: Path) -> float:
    clips = list_clips("ravdess", str(root)).clips
    items = [
        {"clip_id": c.clip_id, "video_uri": c.video_uri, "audio_uri": c.audio_uri} for c in clips
    ]
    started = time.perf_counter()
    blocks = min(len(items), 4 * int(ray.cluster_resources()["CPU"]))
    ray.data.from_items(items, override_num_blocks=blocks).map(decode_only).take_all()
    return time.perf_counter() - started


def time_ingest(config: RunConfig) -> tuple[float, int]:
    started = time.perf_counter()
    summary = run_ingest(config, progress=False)
    return time.perf_counter() - started, summary.computed


def time_sequential(root: Path, fer_model: str | None, threads: int | None = None) -> float:
    """The papers' way: one clip after another, every feature, in this process.

    ``threads=None`` leaves OpenCV, torch and the BLAS/OpenMP libraries their default
    thread pools (every core); ``threads=1`` holds them all to one thread, as each Ray worker
    is (Ray sets ``OMP_NUM_THREADS=1`` in its workers, which numpy's BLAS reads too).
    """
    import torch
    from threadpoolctl import threadpool_limits

    saved = cv2.getNumThreads(), torch.get_num_threads()
    if threads is not None:
        cv2.setNumThreads(threads)
        torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            return _time_sequential(root, fer_model)
    finally:
        cv2.setNumThreads(saved[0])
        torch.set_num_threads(saved[1])


def _time_sequential(root: Path, fer_model: str | None) -> float:
    config = config_for(root, Path(tempfile.mkdtemp()), fer_model)
    extractors = [
        build_extractor(name, params) for name, params in requested_extractors(config).items()
    ]
    embedders = {e.name: e.make_embedder() for e in extractors}
    detector = HaarFaceDetector()
    started = time.perf_counter()
    for clip in list_clips("ravdess", str(root)).clips:
        media = decode_clip(clip, need_video=True, need_audio=True, detector=detector)
        for extractor in extractors:
            arrays = extractor.extract(media)
            if embedders[extractor.name] is not None:
                embedders[extractor.name]([arrays])
    return time.perf_counter() - started


class PeakMemory:
    """Peak resident memory of Ray's worker processes and of this driver, polled during a run.

    Cheap on purpose, since it shares the cores with the run it measures: Ray's workers are
    looked up once a second, and only their resident set size is read (every 0.2 s).
    """

    def __init__(self) -> None:
        self.workers = 0
        self.driver = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._me = psutil.Process()

    def _poll(self) -> None:
        workers: dict[int, psutil.Process] = {}
        looked_up = 0.0
        while not self._stop.is_set():
            if time.monotonic() - looked_up >= 1.0:
                looked_up = time.monotonic()
                for process in psutil.process_iter(["cmdline"]):
                    command = " ".join(process.info["cmdline"] or [])
                    if "ray::" in command or "default_worker" in command:
                        workers.setdefault(process.pid, process)
            self.driver = max(self.driver, self._me.memory_info().rss)
            for pid, process in list(workers.items()):
                try:
                    self.workers = max(self.workers, process.memory_info().rss)
                except psutil.Error:  # the worker ended
                    del workers[pid]
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class CpuShare:
    """CPU seconds spent during a run by Ray's worker processes (the ingest's actors and
    tasks) and by every other process (this driver, raylet, GCS, Ray Data's own actors,
    the dashboard agent): how much of the machine the work itself got."""

    def __init__(self) -> None:
        self.work = 0.0
        self.other = 0.0
        self.wall = 0.0

    @staticmethod
    def _snapshot() -> dict[int, tuple[bool, float]]:
        out = {}
        for process in psutil.process_iter(["cmdline", "cpu_times"]):
            times = process.info["cpu_times"]
            if times is None:
                continue
            command = " ".join(process.info["cmdline"] or [])
            out[process.pid] = ("ray::MapWorker" in command, times.user + times.system)
        return out

    def __enter__(self) -> CpuShare:
        self._before = self._snapshot()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self._started
        for pid, (is_work, seconds) in self._snapshot().items():
            spent = seconds - self._before.get(pid, (is_work, 0.0))[1]
            if is_work:
                self.work += spent
            else:
                self.other += spent


@dataclass(frozen=True)
class ActorStart:
    """One network actor of an ingest, from Ray's task events (``ray.timeline``)."""

    constructor_at: float  # seconds after the ingest was called
    constructor: float  # seconds its constructor ran (the worker module and torch imported)
    first_batch: float  # seconds of its first batch (the other imports, the networks' load)
    next_batches: float  # median seconds of its other batches

    @property
    def start(self) -> float:
        """What the actor paid once: its constructor and its first batch's excess."""
        return self.constructor + self.first_batch - self.next_batches


def actor_starts(called: float) -> list[ActorStart]:
    """The network actors of the ingest called at ``called`` (``time.time()``): those whose
    constructor ran after it, with at least two batches."""
    events: dict[str, list[tuple[float, float, str]]] = {}
    for event in ray.timeline():
        at = event.get("ts", 0) / 1e6 - called
        if event.get("ph") == "X" and at >= 0 and event["name"] in ("__init__", "submit"):
            events.setdefault(event["tid"], []).append((at, event["dur"] / 1e6, event["name"]))
    starts = []
    for worker in events.values():
        worker.sort()
        constructors = [(at, seconds) for at, seconds, name in worker if name == "__init__"]
        batches = [seconds for _, seconds, name in worker if name == "submit"]
        if constructors and len(batches) >= 2:
            at, seconds = constructors[0]
            starts.append(ActorStart(at, seconds, batches[0], statistics.median(batches[1:])))
    return starts


def media_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".mp4", ".wav"))


def age_access_times(paths: list[Path]) -> dict[Path, int]:
    """atime set before mtime (mtime kept): with relatime, the next read moves it."""
    for path in paths:
        mtime = path.stat().st_mtime_ns
        os.utime(path, ns=(mtime - 10**12, mtime))
    return {path: path.stat().st_atime_ns for path in paths}


# A network actor's start, in a fresh interpreter: what each ingest's actors pay once.
NETWORK_LOAD = """
import json, sys, time
started = time.perf_counter()
import torch
import torchvision.models
from orchestrate.extractors import build_extractor
timings = {"import": time.perf_counter() - started}
torch.set_num_threads(1)
for name, params in json.loads(sys.argv[1]).items():
    started = time.perf_counter()
    embed = build_extractor(name, params).make_embedder()
    getattr(embed, "_load", lambda: None)()
    timings[name] = time.perf_counter() - started
print(json.dumps(timings))
"""


def time_network_load(fer_model: str | None) -> dict[str, float]:
    networks = {
        "song_vgg16": {"weights": "random"},
        "mitseas_fer": {"model_path": fer_model or "random"},
    }
    out = subprocess.run(
        [sys.executable, "-c", NETWORK_LOAD, json.dumps(networks)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# Per input, one thread, a network's cache-sized CPU forward against one of GPU_FORWARD_BATCH.
FORWARD_SIZES = """
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from orchestrate.extractors.base import GPU_FORWARD_BATCH
from orchestrate.extractors.fer_cnn import CPU_FORWARD_FACES, FerCnn
from orchestrate.extractors.vgg16 import CPU_FORWARD_CROPS, Vgg16Block5Embedder
model = sys.argv[1]
fer = FerCnn.from_keras_h5(model) if model != "random" else FerCnn.random()
vgg = Vgg16Block5Embedder("random")
rng = np.random.default_rng(0)
faces = rng.integers(0, 256, (2 * GPU_FORWARD_BATCH, 64, 64), dtype=np.uint8)
crops = rng.integers(0, 256, (GPU_FORWARD_BATCH, 48, 48, 3), dtype=np.uint8)
out = {}
for label, owner, network, inputs, cpu in (
    ("fer", fer, fer.predict_proba, faces, CPU_FORWARD_FACES),
    ("vgg16", vgg, vgg, crops, CPU_FORWARD_CROPS),
):
    network(inputs[:cpu])  # warm-up
    for size in (cpu, GPU_FORWARD_BATCH):
        owner.batch_size = size  # inputs per forward
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            network(inputs)
            best = min(best, time.perf_counter() - started)
        out[f"{label}:{size}"] = best / len(inputs)
print(json.dumps(out))
"""


def time_forward_sizes(fer_model: str | None) -> dict[str, float]:
    """Seconds per input of each network, one thread, at its CPU forward size and at 256."""
    out = subprocess.run(
        [sys.executable, "-c", FORWARD_SIZES, fer_model or "random"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def start_ray(cpus: int) -> None:
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--clips-per-emotion", type=int, default=2)
    parser.add_argument("--fer-model", help="FER-2013 mini-Xception HDF5 (default: random weights)")
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.mkdtemp(prefix="orchestrate-bench-"))
    )
    args = parser.parse_args()

    small, large = args.out / "corpus", args.out / "corpus-4x"
    warm_up = args.out / "corpus-warm-up"  # 8 clips of another seed
    synthesize_corpus(warm_up, 1, 1, seed=1, progress=False)
    synthesize_corpus(small, args.actors, args.clips_per_emotion, seed=0, progress=False)
    synthesize_corpus(large, 4 * args.actors, args.clips_per_emotion, seed=0, progress=False)
    n, n4 = len(media_files(small)), len(media_files(large))

    load = time_network_load(args.fer_model)
    forward = time_forward_sizes(args.fer_model)
    start_ray(2)
    time_decode_floor(small)  # warm-up: worker start, imports, page cache
    # One small ingest first, so that the timed ones share a warm page cache and compiled
    # bytecode: a fresh virtual environment's first import of torch reads its libraries
    # from disk, a cost of the first run after an install, not of every ingest.
    time_ingest(config_for(warm_up, args.out / "ws-warm-up", args.fer_model))
    floor = time_decode_floor(small)
    called = time.time()
    with PeakMemory() as memory_n:
        cold_n, computed = time_ingest(config_for(small, args.out / "ws-n", args.fer_model))
    assert computed == n, f"cold ingest computed {computed} of {n} clips"
    starts = actor_starts(called)
    assert starts, "no network actor in Ray's task events"
    with PeakMemory() as memory_4n, CpuShare() as cpu:
        cold, computed = time_ingest(config_for(large, args.out / "ws-4n", args.fer_model))
    assert computed == n4, f"cold ingest computed {computed} of {n4} clips"
    atimes = age_access_times(media_files(large))
    warm, recomputed = time_ingest(config_for(large, args.out / "ws-4n", args.fer_model))
    assert recomputed == 0
    read = [path for path, atime in atimes.items() if path.stat().st_atime_ns != atime]
    read_bytes = sum(path.stat().st_size for path in read)
    ray.shutdown()

    start_ray(1)
    one_cpu, _ = time_ingest(config_for(large, args.out / "ws-one", args.fer_model))
    ray.shutdown()
    shutil.rmtree(args.out / "ws-one", ignore_errors=True)

    sequential = time_sequential(large, args.fer_model)
    sequential_one_thread = time_sequential(large, args.fer_model, threads=1)

    per_clip = (cold - cold_n) / (n4 - n)
    fixed = cold_n - per_clip * n
    mib = 2**20
    rows = [
        (f"decode floor, {n} clips (2 CPUs)", f"{floor:.1f}", ""),
        (f"cold ingest, {n} clips, 2 CPUs", f"{cold_n:.1f}", ""),
        (f"cold ingest, {n4} clips, 2 CPUs", f"{cold:.1f}", ""),
        (
            f"fixed cost (intercept of the {n}/{n4} line)",
            f"{fixed:.1f}",
            "target ≤ 6 s",
        ),
        ("per-clip cost at the margin, 2 CPUs", f"{per_clip:.3f}", ""),
        (
            f"network actor start in the {n}-clip ingest, each of {len(starts)} actors "
            "(Ray's task events)",
            " / ".join(f"{start.start:.1f}" for start in starts),
            "; ".join(
                f"constructor from {start.constructor_at:.1f} s, {start.constructor:.1f} s; "
                f"first batch {start.first_batch:.1f} s against {start.next_batches:.1f} s "
                "for the next"
                for start in starts
            ),
        ),
        (
            f"CPU during the {n4}-clip cold ingest (2 CPUs x {cpu.wall:.1f} s)",
            f"{cpu.work:.1f} / {cpu.other:.1f}",
            f"the ingest's actors {cpu.work / (2 * cpu.wall):.0%} of the 2 CPUs; every other "
            f"process (this driver and its memory poller, raylet, GCS, Ray Data's actors) "
            f"{cpu.other / (2 * cpu.wall):.0%}",
        ),
        (
            f"cold ingest, {n4} clips, 1 CPU",
            f"{one_cpu:.1f}",
            f"2 CPUs are {one_cpu / cold:.2f}x faster (target ≥ 1.8x)",
        ),
        (
            f"sequential script, {n4} clips, libraries' default threads",
            f"{sequential:.1f}",
            f"the pipeline is {sequential / cold:.2f}x as fast (target ≥ 1.15x)",
        ),
        (
            f"sequential script, {n4} clips, OpenCV, torch and BLAS on 1 thread",
            f"{sequential_one_thread:.1f}",
            f"the pipeline is {sequential_one_thread / cold:.2f}x as fast (target ≥ 1.8x)",
        ),
        (
            f"warm re-ingest, {n4} clips, 2 CPUs",
            f"{warm:.2f}",
            f"{warm / cold:.1%} of cold (target ≤ 2%); media read: {len(read)} files, "
            f"{read_bytes} bytes (target 0)",
        ),
        (
            "peak driver memory",
            f"{memory_n.driver / mib:.0f} MiB ({n}) / {memory_4n.driver / mib:.0f} MiB ({n4})",
            f"{memory_4n.driver / max(memory_n.driver, 1):.2f}x (target ≤ 1.10x)",
        ),
        (
            "network actor start, one process (imports; VGG16; FER CNN)",
            f"{sum(load.values()):.1f}",
            ", ".join(f"{name} {seconds:.1f} s" for name, seconds in load.items()),
        ),
        *(
            (
                f"{label} per input, one thread, forward of {cpu} / {GPU_FORWARD_BATCH} inputs",
                f"{forward[f'{key}:{cpu}'] * 1e3:.2f} ms / "
                f"{forward[f'{key}:{GPU_FORWARD_BATCH}'] * 1e3:.2f} ms",
                f"{forward[f'{key}:{GPU_FORWARD_BATCH}'] / forward[f'{key}:{cpu}']:.2f}x "
                f"the time per input at {GPU_FORWARD_BATCH}",
            )
            for key, label, cpu in (
                ("fer", "FER CNN", CPU_FORWARD_FACES),
                ("vgg16", "VGG16", CPU_FORWARD_CROPS),
            )
        ),
        (
            "peak Ray worker memory",
            f"{memory_n.workers / mib:.0f} MiB ({n}) / {memory_4n.workers / mib:.0f} MiB ({n4})",
            f"{memory_4n.workers / max(memory_n.workers, 1):.2f}x (target ≤ 1.10x)",
        ),
    ]
    print(
        f"\n{n} and {n4} generated clips ({args.actors} and {4 * args.actors} actors x 8 emotions "
        f"x {args.clips_per_emotion}), {psutil.cpu_count()} cores, every extractor (VGG16 random "
        f"weights, FER {'from ' + args.fer_model if args.fer_model else 'random weights'})\n"
    )
    print("| measurement | seconds | ratio |\n|---|---|---|")
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds} | {ratio} |")


if __name__ == "__main__":
    main()
