"""Config loading: embedded defaults, overrides, and one-line errors before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrate.cli import main
from orchestrate.config import ConfigError, load_config


def test_embedded_defaults_stay_inside_the_workspace(tmp_path: Path) -> None:
    config = load_config(None, [f"workspace={tmp_path / 'ws'}"])
    assert config.store_uri == str(tmp_path / "ws" / "store")
    assert config.tracking_uri == f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}"
    assert config.artifact_location == (tmp_path / "ws" / "mlartifacts").as_uri()
    assert [run.name for run in config.task_runs()] == ["emodal", "song", "mitseas", "wang"]


def test_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "dataset: {name: crema-d, root: /data/crema}\n"
        "tasks:\n  song:\n    variants: [audio]\n    lr: 0.01\n"
        "sweep: {num_samples: 3}\n"
    )
    config = load_config(
        path, ["sweep.num_samples=5", "tasks.song.variants=[audio, fused]", "seed=7"]
    )
    assert config.dataset.name == "crema-d"
    assert config.dataset.vocal_channel == "speech"  # the papers' choice, by default
    assert config.sweep.num_samples == 5
    assert config.seed == 7
    (run,) = config.task_runs()
    assert (run.name, run.variants, run.knobs) == ("song", ["audio", "fused"], {"lr": 0.01})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sweep.num_sample=3"], "sweep.num_sample: unknown key"),
        (["sweep.num_samples=many"], "sweep.num_samples: must be int, got 'many'"),
        (["sweep.num_samples=2.5"], "sweep.num_samples: must be int, got '2.5'"),
        (["sweep.num_samples=0"], "sweep.num_samples: must be at least 1"),
        (
            ["dataset.name=mnist"],
            "dataset.name: 'mnist' is not one of ravdess, crema-d, image-folder, sfew-table",
        ),
        (
            ["dataset.vocal_channel=singing"],
            "dataset.vocal_channel: 'singing' is not one of speech, song, all",
        ),
        (["sweep.protocols=[leave-one-out]"], "sweep.protocols: 'leave-one-out' is not one of"),
        (
            ["sweep.protocols=[random-80-20, paper]"],
            "sweep.protocols: name a speaker-independent protocol too",
        ),
        (["sweep.selection=best-test"], "sweep.selection: 'best-test' is not one of"),
        (["sweep.seeds=[1, 1]"], "sweep.seeds: a seed is listed twice"),
        (["sweep.validation_fraction=1.5"], "sweep.validation_fraction: must be between 0 and 1"),
        (["ingest.extractors.vgg19={}"], "ingest.extractors.vgg19: unknown extractor"),
        (["ingest.max_failure_ratio=2"], "ingest.max_failure_ratio: must be between 0 and 1"),
        (
            ["tasks.bert.lr=0.1"],
            "tasks.bert: unknown task (allowed: emodal, song, mitseas, wang, baseline)",
        ),
        (["tasks.song.variants=[text]"], "tasks.song.variants: 'text' is not one of"),
        (["tasks.wang.dropout_rate=0.1"], "tasks.wang.dropout_rate: unknown knob"),
        (["tasks.song=3"], "tasks.song: Cannot assign int to Dict"),
        (["tasks=[{name: song}]"], "tasks: a mapping by task name, e.g. tasks: {song: "),
        (
            ["ingest.extractors.song_mfcc.n_mfc=20"],
            "ingest.extractors.song_mfcc.n_mfc: unknown parameter (allowed: ",
        ),
        (["sweep"], "override 'sweep' must look like key=value"),
        (["seed=true"], "seed: must be int"),
        (["bogus.key=1"], "bogus: unknown key (allowed: workspace, seed, dataset"),
    ],
)
def test_bad_values_name_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, overrides)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_bad_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("sweep: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_cli_stops_on_config_error_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    workspace = tmp_path / "ws"
    status = main(["ingest", "--workspace", str(workspace), "sweep.folds=1"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["orchestrate: config error: sweep.folds: must be at least 2"]
    assert not workspace.exists()  # nothing was started or written


def test_retry_failed_flag_sets_the_ingest_option() -> None:
    from orchestrate.cli import _config, build_parser

    args, _ = build_parser().parse_known_args(["ingest", "--retry-failed", "dataset.root=/x"])
    assert _config(args).ingest.retry_failed is True
    args, _ = build_parser().parse_known_args(["ingest", "dataset.root=/x"])
    assert _config(args).ingest.retry_failed is False


# --- the traps of the hand-written parser, each closed ---------------------------------------


@pytest.mark.parametrize("text", ["0123", "yes", "1e3", "null-ish", "on"])
def test_a_string_field_keeps_the_text_as_written(text: str) -> None:
    """YAML 1.1 would read 0123 as 83 and yes/on as true; a string field keeps the text."""
    assert load_config(None, [f"tracking.experiment={text}"]).tracking.experiment == text


def test_null_still_clears_an_optional_string() -> None:
    config = load_config(None, ["store.uri=s3://bucket/features", "store.uri=null"])
    assert config.store.uri is None


def test_one_extractor_parameter_merges_into_the_defaults() -> None:
    """Naming one extractor's parameter keeps every extractor the tasks read, at its defaults."""
    from orchestrate.stages.ingest import requested_extractors

    config = load_config(None, ["ingest.extractors.song_mfcc.n_mfcc=20"])
    requested = requested_extractors(config)
    assert requested["song_mfcc"] == {"n_mfcc": 20}
    assert set(requested) == {
        "emodal_face",
        "emodal_audio",
        "song_vgg16",
        "song_mfcc",
        "mitseas_audio",
        "mitseas_fer",
        "wang_texture",
    }
    assert all(params == {} for name, params in requested.items() if name != "song_mfcc")


def test_tasks_are_addressed_by_name() -> None:
    config = load_config(
        None, ["tasks.song.lr=0.001", "tasks.song.variants=audio", "tasks.mitseas.svm_gamma=0.5"]
    )
    runs = {run.name: run for run in config.task_runs()}
    assert set(runs) == {"song", "mitseas"}
    assert (runs["song"].variants, runs["song"].knobs) == (["audio"], {"lr": 0.001})
    assert runs["mitseas"].variants == ["audio", "audio-all-actors", "video", "fused"]
    assert runs["mitseas"].knobs == {"svm_gamma": 0.5}
    assert load_config(None, ["tasks.mitseas.svm_gamma=scale"]).tasks["mitseas"] == {
        "svm_gamma": "scale"
    }


@pytest.mark.parametrize(
    ("task", "knob", "bad", "message"),
    [
        ("emodal", "batch_size", "2.7", "tasks.emodal.batch_size: must be int, got 2.7"),
        ("emodal", "dropout", "1.0", "tasks.emodal.dropout: must be in [0, 1), got 1.0"),
        ("song", "batch_size", "2.7", "tasks.song.batch_size: must be int, got 2.7"),
        ("song", "audio_gru_layers", "0", "tasks.song.audio_gru_layers: must be >= 1, got 0"),
        ("song", "video_batch_norm", "maybe", "tasks.song.video_batch_norm: must be bool"),
        ("mitseas", "rf_n_estimators", "2.7", "tasks.mitseas.rf_n_estimators: must be int"),
        ("mitseas", "svm_C", "-1", "tasks.mitseas.svm_C: must be > 0, got -1.0"),
        ("mitseas", "svm_kernel", "cubic", "tasks.mitseas.svm_kernel: must be one of linear"),
        ("wang", "batch_size", "2.7", "tasks.wang.batch_size: must be int, got 2.7"),
        ("wang", "prune_angle", "200", "tasks.wang.prune_angle: must be in (0, 180] degrees"),
        ("wang", "activation_centring", "median", "tasks.wang.activation_centring: must be one"),
        ("wang", "hidden_layers", "2", "tasks.wang.hidden_layers: unknown knob (knobs: "),
    ],
)
def test_task_knobs_are_typed_and_checked_on_load(
    task: str, knob: str, bad: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, [f"tasks.{task}.{knob}={bad}"])
    assert str(raised.value).startswith(message), str(raised.value)


def test_print_config_shows_the_resolved_config(capsys: pytest.CaptureFixture) -> None:
    import yaml

    assert main(["sweep", "--print-config", "tasks.song.lr=0.001", "sweep.folds=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["tasks"] == {"song": {"lr": 0.001}}
    assert printed["sweep"]["folds"] == 3 and printed["sweep"]["num_samples"] == 8
    assert main(["demo", "--print-config"]) == 0  # the demo's shipped config, resolved
    assert yaml.safe_load(capsys.readouterr().out)["sweep"]["max_concurrent"] == 1


def test_a_shipped_config_is_found_by_name(tmp_path: Path) -> None:
    from orchestrate.config import shipped_configs

    shipped = shipped_configs()
    assert {"demo", "song_ravdess", "mitseas_ravdess", "emodal_ravdess", "wang_sfew"} <= set(
        shipped
    )
    for name, command in shipped.items():
        assert command.startswith("orchestrate "), (name, command)
        load_config(name, ["dataset.root=/data/x"])  # each one loads and validates
    with pytest.raises(ConfigError, match="shipped configs: "):
        load_config("song_ravdes")


# --- errors: the project's own are one line, a bug keeps its traceback -----------------------


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrate import cli

    def broken(args: object) -> int:
        raise ValueError("an internal bug, not a user error")

    monkeypatch.setattr(cli, "cmd_configs", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["configs"])


def test_a_user_error_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "song", "--variant", "lidar"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "orchestrate: song has no variant 'lidar' (allowed: audio, video, fused)"
    ]


def test_a_row_not_swept_makes_the_exit_status_one(capsys: pytest.CaptureFixture) -> None:
    import pandas as pd

    from orchestrate.cli import _not_swept_status

    swept = pd.DataFrame({"variant": ["audio"], "protocol": ["actor-kfold"], "error": [""]})
    assert _not_swept_status({"emodal": swept}) == 0
    failed = pd.DataFrame(
        {
            "variant": ["audio", "audio"],
            "protocol": ["actor-kfold", "actor-8-12-4"],
            "error": ["", "needs 8 actors"],
        }
    )
    assert _not_swept_status({"emodal": swept, "mitseas": failed}) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mitseas/audio (actor-8-12-4)" in err[0]
