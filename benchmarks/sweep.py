"""Sweep benchmark: where a nested sweep's time goes, and that it never touches media.

    pip install -e '.[bench]'
    python benchmarks/sweep.py --actors 6 --clips-per-emotion 2 [--num-samples 4] [--out DIR]

Generates a corpus, ingests the audio features of three papers (EMODal, Song MFCC, Mitseas),
then **moves the corpus away** and runs a nested sweep of those audio variants
(speaker-independent protocol, a study per outer fold; Mitseas' all-actors SVM, as its
base-actor SVM needs more clips per actor than a small corpus has). Any media decode during
the sweep would fail on the missing files; the sweep finishing proves the count is zero.

Reports, from one run:

- the sweep's wall time and the time inside trial and final-model training (summed over
  trials, from the ``train_seconds`` every trial reports);
- the share of the sweep spent outside training = 1 - training / (wall x trial slots),
  where the slots are the cluster's CPUs / ``cpus_per_trial``: scheduling, process start,
  feature loading, checkpointing, MLflow logging;
- the same share inside the studies alone (from each study's start to its end).

Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import ray

from orchestrate.config import load_config
from orchestrate.corpus import synthesize_corpus
from orchestrate.pipeline import ingest, sweep
from orchestrate.stages.sweep import StudyOutcome

# The run's tasks decide what is ingested: emodal_audio, song_mfcc, mitseas_audio.
TASKS = (
    "{emodal: {variants: [audio]}, song: {variants: [audio]},"
    " mitseas: {variants: [audio-all-actors]}}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=6)
    parser.add_argument("--clips-per-emotion", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="keep the workspace here (default: a temp dir)")
    args = parser.parse_args()
    base = args.out or Path(tempfile.mkdtemp(prefix="orchestrate-bench-sweep-"))
    corpus, workspace = base / "corpus", base / "ws"
    synthesize_corpus(corpus, args.actors, args.clips_per_emotion, seed=0, progress=False)
    overrides = [
        f"workspace={workspace}",
        f"dataset.root={corpus}",
        f"tasks={TASKS}",
        "sweep.protocols=[actor-kfold]",
        f"sweep.folds={args.folds}",
        f"sweep.num_samples={args.num_samples}",
        "sweep.max_concurrent=1",
        "sweep.max_epochs=10",
    ]
    config = load_config(None, overrides)
    summary = ingest(config, progress=False)
    print("\n".join(summary.lines()))

    # The sweep must read the store only: with the media gone, one decode would fail it.
    hidden = corpus.with_name("corpus-moved-away")
    corpus.rename(hidden)
    try:
        started = time.perf_counter()
        tables = sweep(config, progress=False)
        wall = time.perf_counter() - started
    finally:
        hidden.rename(corpus)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // config.sweep.cpus_per_trial))
    outcomes = [
        StudyOutcome.from_json(path.read_text())
        for path in sorted(workspace.glob("sweeps/*/*/*.outcome.json"))
    ]
    trial_seconds = sum(outcome.train_seconds for outcome in outcomes)
    final_seconds = sum(f.train_seconds for outcome in outcomes for f in outcome.finals)
    study_seconds = sum(outcome.search_seconds for outcome in outcomes)
    trials = sum(len(outcome.trials) for outcome in outcomes)
    failed = [row for table in tables.values() for row in table["error"] if row]

    print(f"\n{len(outcomes)} studies, {trials} trials, {slots} trial slots, errors: {failed}\n")
    print("| measurement | seconds | share |")
    print("|---|---|---|")
    print(f"| sweep wall time (plan, studies, final models, MLflow report) | {wall:.1f} | 1.00 |")
    training = trial_seconds + final_seconds
    print(
        f"| training inside trials + final models (summed) | {training:.1f} | "
        f"{training / (wall * slots):.2f} of wall x slots |"
    )
    print(
        f"| outside training (scheduling, process start, loading, checkpoints, MLflow) | "
        f"{wall * slots - training:.1f} | {1 - training / (wall * slots):.2f} |"
    )
    print(
        f"| studies alone: time in trial training / study time (summed) | "
        f"{trial_seconds:.1f} / {study_seconds:.1f} | {trial_seconds / study_seconds:.2f} |"
    )
    print("| media files read during the sweep | 0 | corpus moved away, sweep finished |")
    (base / "sweep-benchmark.json").write_text(
        json.dumps(
            {
                "wall": wall,
                "slots": slots,
                "trial_seconds": trial_seconds,
                "final_seconds": final_seconds,
                "study_seconds": study_seconds,
                "studies": len(outcomes),
                "trials": trials,
            }
        )
    )
    if not args.out:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
