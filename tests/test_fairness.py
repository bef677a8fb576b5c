"""Tests of per-class accuracy (fedmpq_flwr.training.loop.loss_accuracy_per_class) and the per-client fairness numbers
(fedmpq_flwr.analysis.fairness), against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmpq_flwr.analysis import fairness
from fedmpq_flwr.training.loop import loss_accuracy_per_class, loss_and_accuracy

# The "images" are the logits themselves (the model is the identity): 7 examples, 4 classes.
LOGITS = torch.tensor(
    [
        [2.0, 0.0, 0.0, 0.0],  # label 0, predicted 0: hit
        [0.0, 3.0, 0.0, 0.0],  # label 0, predicted 1: miss
        [0.0, 1.0, 0.0, 0.0],  # label 1, hit
        [0.0, 1.0, 0.0, 0.0],  # label 1, hit
        [1.0, 0.0, 0.0, 0.0],  # label 1, miss
        [0.0, 0.0, 0.0, 5.0],  # label 2, miss
        [0.0, 0.0, 0.0, 1.0],  # label 2, miss
    ]
)
LABELS = torch.tensor([0, 0, 1, 1, 1, 2, 2])  # class 3 never occurs


def loader(batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(LOGITS, LABELS), batch_size=batch_size, shuffle=False)


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_evaluate_classes_hand_computed(batch_size: int) -> None:
    model = nn.Identity()
    loss, accuracy, per_class = loss_accuracy_per_class(model, loader(batch_size), torch.device("cpu"), 4)
    expected_loss = torch.nn.functional.cross_entropy(LOGITS, LABELS).item()
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert accuracy == pytest.approx(3 / 7)
    assert per_class[:3] == pytest.approx([1 / 2, 2 / 3, 0.0])
    assert per_class[3] is None  # absent from the test set
    assert (loss, accuracy) == pytest.approx(loss_and_accuracy(model, loader(batch_size), torch.device("cpu")))


def test_evaluate_classes_checks_classes() -> None:
    with pytest.raises(ValueError):
        loss_accuracy_per_class(nn.Identity(), loader(7), torch.device("cpu"), 5)  # 4 logits, 5 classes
    bad = DataLoader(TensorDataset(LOGITS[:2], torch.tensor([0, 4])), batch_size=2)
    with pytest.raises(ValueError):
        loss_accuracy_per_class(nn.Linear(4, 4), bad, torch.device("cpu"), 4)  # label 4 out of range


def test_evaluate_sets_eval_mode() -> None:
    model = nn.Sequential(nn.BatchNorm1d(4))
    model.train()
    loss_accuracy_per_class(model, loader(3), torch.device("cpu"), 4)
    assert not model.training


def test_label_distribution() -> None:
    np.testing.assert_allclose(fairness.label_distribution(np.array([0, 0, 1, 3]), 4), [0.5, 0.25, 0, 0.25])
    rows = fairness.label_distributions([np.array([2, 2]), np.array([0, 1, 1, 1])], 3)
    np.testing.assert_allclose(rows, [[0, 0, 1], [0.25, 0.75, 0]])
    with pytest.raises(ValueError):
        fairness.label_distribution(np.array([], dtype=np.int64), 3)
    with pytest.raises(ValueError):
        fairness.label_distribution(np.array([0, 3]), 3)


CLASS_ACCURACY = [1.0, 0.5, 0.0, None]  # class 3 absent from the test set
DISTRIBUTIONS = [
    [0.5, 0.5, 0.0, 0.0],  # 0.5 * 1 + 0.5 * 0.5 = 0.75
    [0.0, 0.25, 0.75, 0.0],  # 0.25 * 0.5 = 0.125
    [0.0, 0.0, 0.0, 1.0],  # only the absent class: None
    [0.2, 0.2, 0.2, 0.4],  # (0.2 * 1 + 0.2 * 0.5 + 0) / 0.6 = 0.5 (renormalised over known classes)
]


def test_client_accuracies_hand_computed() -> None:
    values = fairness.client_accuracies(DISTRIBUTIONS, CLASS_ACCURACY)
    assert values[0] == pytest.approx(0.75)
    assert values[1] == pytest.approx(0.125)
    assert values[2] is None
    assert values[3] == pytest.approx(0.5)
    # NaN marks an absent class as None does
    nan_values = fairness.client_accuracies(DISTRIBUTIONS, [1.0, 0.5, 0.0, math.nan])
    assert nan_values[2] is None and nan_values[3] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        fairness.expected_accuracy([0.5, 0.5], CLASS_ACCURACY)


def test_summary_hand_computed() -> None:
    """Over 0.75, 0.125, 0.5 (the None client left out): mean 0.458333; population std
    sqrt((0.291667^2 + 0.333333^2 + 0.041667^2) / 3) = 0.256851; worst 0.125; p10 by linear
    interpolation at rank 0.1 * (3 - 1) = 0.2: 0.125 + 0.2 * (0.5 - 0.125) = 0.2."""
    summary = fairness.summarize_clients(fairness.client_accuracies(DISTRIBUTIONS, CLASS_ACCURACY))
    assert summary["mean"] == pytest.approx(0.4583333333)
    assert summary["std"] == pytest.approx(math.sqrt((0.2916666667**2 + 0.3333333333**2 + 0.0416666667**2) / 3))
    assert summary["std"] == pytest.approx(0.256851, abs=1e-6)
    assert summary["worst"] == pytest.approx(0.125)
    assert summary["p10"] == pytest.approx(0.2)
    assert fairness.summarize_clients([0.3]) == pytest.approx({"mean": 0.3, "std": 0.0, "worst": 0.3, "p10": 0.3})
    assert all(math.isnan(v) for v in fairness.summarize_clients([None, math.nan]).values())


def test_fairness_end_to_end_with_evaluate_classes() -> None:
    """The per-class accuracies of loss_accuracy_per_class feed the clients' expected accuracies."""
    _, accuracy, per_class = loss_accuracy_per_class(nn.Identity(), loader(4), torch.device("cpu"), 4)
    # a client with the test set's own label mix gets the overall test accuracy
    test_mix = fairness.label_distribution(LABELS.numpy(), 4)
    assert fairness.expected_accuracy(test_mix, per_class) == pytest.approx(accuracy)
