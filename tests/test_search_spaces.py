"""Search spaces are data, validated on load against each task's knobs."""

from __future__ import annotations

import pytest
from ray.tune.search.sample import Categorical, Float, Integer

from orchestrate.search_spaces import SearchSpaceError, load_search_space
from tasks import TASKS


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_has_a_valid_space(task: str) -> None:
    space = load_search_space(task)
    assert space.params, f"{task} searches nothing"
    assert set(space.params) <= set(TASKS[task].defaults)
    for name, distribution in space.distributions().items():
        assert isinstance(distribution, Categorical | Float | Integer), name


def test_spec_knobs_are_searched() -> None:
    # SPEC's "Search spaces": what each task must search.
    song = load_search_space("song").params
    assert any("gru_layers" in name for name in song) and any("batch_norm" in name for name in song)
    wang = load_search_space("wang").params
    assert any("angle" in name or "threshold" in name for name in wang)
    emodal = load_search_space("emodal").params
    assert any(name.startswith("w_") for name in emodal)
    mitseas = load_search_space("mitseas").params
    assert any("svm" in name for name in mitseas) and any("rf" in name for name in mitseas)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task: song\nparams: {lr: {type: normal, low: 0, high: 1}}", "needs type, one of"),
        ("task: song\nparams: {lr: {type: uniform, low: 1, high: 0}}", "low must be below high"),
        (
            "task: song\nparams: {lr: {type: loguniform, low: 0, high: 1}}",
            "loguniform needs low > 0",
        ),
        ("task: song\nparams: {warp_drive: {type: choice, values: [1]}}", "not a knob of song"),
        ("task: song\nparams: {lr: {type: choice, values: []}}", "values must be a non-empty list"),
        ("task: song\nmetric: loss\nparams: {}", "metric 'loss' is not one of"),
        ("task: wang\nparams: {}", "task is 'wang', expected 'song'"),
        ("task: song\nsearch: {}", "unknown key 'search'"),
    ],
)
def test_malformed_spaces_are_refused(text: str, message: str) -> None:
    with pytest.raises(SearchSpaceError, match=message):
        load_search_space("song", text)
