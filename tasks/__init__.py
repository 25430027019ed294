"""The registry of tasks: one spec per paper's model family (``TaskSpec``), by name."""

from tasks import baseline, emodal, mitseas, song, wang
from tasks.common import TaskSpec

TASKS: dict[str, TaskSpec] = {
    spec.name: spec for spec in (emodal.SPEC, song.SPEC, mitseas.SPEC, wang.SPEC, baseline.SPEC)
}
