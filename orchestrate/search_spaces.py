"""Search spaces are data: ``search_spaces/<task>.yaml``, validated on load.

Format::

    task: song
    metric: uar            # what the sweep maximises (accuracy, uar or macro_f1)
    mode: max
    params:                # each name a key of the task's DEFAULTS
      audio_gru_layers: {type: choice, values: [1, 2, 3]}
      lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}

Types map one to one onto Ray Tune's sampling functions: choice, uniform, loguniform,
randint (high exclusive).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml
from ray import tune

from orchestrate.errors import InputError
from tasks import TASKS

SAMPLERS = {
    "choice": ("values",),
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "randint": ("low", "high"),
}
METRICS = ("accuracy", "uar", "macro_f1")


class SearchSpaceError(InputError):
    """A search space file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class SearchSpace:
    task: str
    metric: str
    mode: str
    params: dict[str, dict[str, Any]]

    def distributions(self) -> dict[str, Any]:
        """The params as Ray Tune sampling objects (OptunaSearch converts them)."""
        out = {}
        for name, spec in self.params.items():
            kind = spec["type"]
            if kind == "choice":
                out[name] = tune.choice(list(spec["values"]))
            elif kind == "uniform":
                out[name] = tune.uniform(spec["low"], spec["high"])
            elif kind == "loguniform":
                out[name] = tune.loguniform(spec["low"], spec["high"])
            else:
                out[name] = tune.randint(spec["low"], spec["high"])
        return out


def load_search_space(task: str, text: str | None = None) -> SearchSpace:
    """Read and validate ``search_spaces/<task>.yaml`` (or the given YAML text)."""
    where = f"search_spaces/{task}.yaml"
    if text is None:
        try:
            text = resources.files("search_spaces").joinpath(f"{task}.yaml").read_text()
        except FileNotFoundError:
            raise SearchSpaceError(f"{where}: no search space for task {task!r}") from None
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise SearchSpaceError(f"{where}: must be a mapping with task, metric, mode, params")
    unknown = set(raw) - {"task", "metric", "mode", "params"}
    if unknown:
        raise SearchSpaceError(
            f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: task, metric, mode, params)"
        )
    if raw.get("task") != task:
        raise SearchSpaceError(f"{where}: task is {raw.get('task')!r}, expected {task!r}")
    metric, mode = raw.get("metric", "uar"), raw.get("mode", "max")
    if metric not in METRICS:
        raise SearchSpaceError(f"{where}: metric {metric!r} is not one of {', '.join(METRICS)}")
    if mode not in ("max", "min"):
        raise SearchSpaceError(f"{where}: mode {mode!r} is not max or min")
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise SearchSpaceError(f"{where}: params must be a mapping of knob name to distribution")
    defaults = TASKS[task].defaults if task in TASKS else {}
    for name, spec in params.items():
        field = f"{where}: params.{name}"
        if task in TASKS and name not in defaults:
            raise SearchSpaceError(f"{field}: not a knob of {task} (knobs: {', '.join(defaults)})")
        if not isinstance(spec, dict) or spec.get("type") not in SAMPLERS:
            raise SearchSpaceError(f"{field}: needs type, one of {', '.join(SAMPLERS)}")
        required = SAMPLERS[spec["type"]]
        extra = set(spec) - {"type", *required}
        if extra or any(key not in spec for key in required):
            raise SearchSpaceError(f"{field}: a {spec['type']} takes exactly {', '.join(required)}")
        if spec["type"] == "choice":
            if not isinstance(spec["values"], list) or not spec["values"]:
                raise SearchSpaceError(f"{field}: values must be a non-empty list")
        elif not spec["low"] < spec["high"]:
            raise SearchSpaceError(f"{field}: low must be below high")
        elif spec["type"] == "loguniform" and spec["low"] <= 0:
            raise SearchSpaceError(f"{field}: loguniform needs low > 0")
    return SearchSpace(task=task, metric=metric, mode=mode, params=params)
