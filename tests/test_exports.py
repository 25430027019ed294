"""Every trainer exports its model in a library's own form: the same probabilities as its
``predict_proba`` on the same clips, so the model MLflow logs is the model that was scored."""

from __future__ import annotations

import numpy as np
import pytest
import test_task_baseline
import test_task_emodal
import test_task_mitseas
import test_task_song
import test_task_wang

from orchestrate.tracking import predict_example
from tasks import TASKS

SMALL = {
    "emodal": test_task_emodal.SMALL,
    "song": test_task_song.SMALL,
    "mitseas": test_task_mitseas.SMALL,
    "wang": test_task_wang.SMALL,
    "baseline": test_task_baseline.SMALL,
}


def clips(task: str):
    if task == "baseline":
        return test_task_baseline.complementary_clips(np.arange(1, 13).astype(str), 8)
    if task == "emodal":
        return test_task_emodal.synthetic_clips(24, signal=1.0)
    if task == "song":
        return test_task_song.synthetic_clips(24, signal=1.0)
    if task == "mitseas":
        return test_task_mitseas.synthetic_clips(np.arange(1, 25).astype(str), 5, signal=1.0)
    return test_task_wang.synthetic_rows(28, signal=1.0)


CASES = [(name, variant) for name, task in TASKS.items() for variant in task.variants]


@pytest.mark.parametrize(("task_name", "variant"), CASES)
def test_the_exported_model_gives_the_trainers_probabilities(task_name: str, variant: str) -> None:
    task = TASKS[task_name]
    features = clips(task_name)
    trainer = task.make_trainer(SMALL[task_name], variant, features, seed=0)
    trainer.fit_epoch()
    example = features.subset(range(6))
    exported = trainer.export(example)
    if task_name == "mitseas" and variant == "video":
        assert exported is None  # the pretrained CNN's mapped probabilities: nothing trained
        return
    assert exported is not None and exported.description
    probabilities = np.asarray(predict_example(exported.flavour, exported.model, exported.inputs))
    expected = trainer.predict_proba(example)
    if exported.flavour == "sklearn":
        # predict_proba of a scikit-learn model covers the classes seen in training.
        expected = expected[:, exported.model.classes_]
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-5)
