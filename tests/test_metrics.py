"""tasks.common.evaluate: accuracy, UAR and macro-F1 over the classes a test fold holds."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.common import evaluate


def test_a_class_absent_from_the_fold_is_not_averaged_as_zero() -> None:
    # Four classes; this fold's test clips hold classes 0-2 only, every one right.
    labels = np.array([0, 0, 1, 1, 2, 2])
    metrics = evaluate(labels, np.eye(4)[labels], n_classes=4)
    assert (metrics.accuracy, metrics.uar, metrics.macro_f1) == (1.0, 1.0, 1.0)
    assert metrics.confusion.shape == (4, 4)  # still over every class
    np.testing.assert_array_equal(metrics.confusion, np.diag([2, 2, 2, 0]))


def test_a_prediction_of_the_absent_class_still_costs_its_own_class() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 3, 1, 1, 2, 2])  # one class-0 clip called class 3
    metrics = evaluate(labels, np.eye(4)[predicted], n_classes=4)
    assert metrics.accuracy == pytest.approx(5 / 6)
    assert metrics.uar == pytest.approx((0.5 + 1 + 1) / 3)
    class_0_f1 = 2 * 1.0 * 0.5 / (1.0 + 0.5)  # precision 1, recall 1/2
    assert metrics.macro_f1 == pytest.approx((class_0_f1 + 1 + 1) / 3)
    assert metrics.confusion[0, 3] == 1 and metrics.confusion[3].sum() == 0


def test_every_class_present_is_the_usual_macro_average() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2])
    predicted = np.array([0, 1, 2, 1, 1, 0])
    metrics = evaluate(labels, np.eye(3)[predicted], n_classes=3)
    assert metrics.uar == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert metrics.confusion.sum() == 6
