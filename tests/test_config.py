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
        "tasks:\n  - name: song\n    variants: [audio]\n"
        "sweep: {num_samples: 3}\n"
    )
    config = load_config(path, ["sweep.num_samples=5", "tasks.0.variants=[audio, fused]", "seed=7"])
    assert config.dataset.name == "crema-d"
    assert config.dataset.vocal_channel == "speech"  # the papers' choice, by default
    assert config.sweep.num_samples == 5
    assert config.tasks[0].variants == ["audio", "fused"]
    assert config.seed == 7
    assert config.task_runs()[0].variants == ["audio", "fused"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sweep.num_sample=3"], "sweep.num_sample: unknown key"),
        (["sweep.num_samples=many"], "sweep.num_samples: must be int"),
        (["sweep.num_samples=0"], "sweep.num_samples: must be at least 1"),
        (
            ["dataset.name=mnist"],
            "dataset.name: 'mnist' is not one of ravdess, crema-d, sfew-table",
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
        (["tasks=[{name: bert}]"], "tasks.0.name: 'bert' is not one of"),
        (["tasks=[{name: song, variants: [text]}]"], "tasks.0.variants: 'text' is not one of"),
        (
            ["tasks=[{name: wang, config: {dropout_rate: 0.1}}]"],
            "tasks.0.config.dropout_rate: unknown knob",
        ),
        (["sweep"], "override 'sweep' must look like key=value"),
        (["seed=true"], "seed: must be int"),
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
