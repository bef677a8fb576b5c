"""`eval.quant_test_images`: the quantized passes on a fixed class-balanced subset of the test set, the
float global model on all of it, and the subset's size in every quantized round's record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedmpq_flwr.analysis.report import _quant_subset_note
from fedmpq_flwr.analysis.runs import load_run, mean_std
from fedmpq_flwr.data.load import load_data
from fedmpq_flwr.data.loaders import eval_batches
from fedmpq_flwr.quant import quantize_model
from fedmpq_flwr.server.evaluation import ServerEvaluator, balanced_subset
from fedmpq_flwr.training.loop import loss_accuracy_per_class

CPU = torch.device("cpu")


def test_balanced_subset_spreads_over_the_classes_and_is_fixed() -> None:
    labels = np.random.default_rng(0).permutation(np.r_[np.arange(950) % 10, np.full(50, 3)])  # class 3: 145
    chosen = balanced_subset(labels, 200, seed=4)
    assert len(chosen) == 200 == len(np.unique(chosen)) and np.all(np.diff(chosen) > 0)
    np.testing.assert_array_equal(np.bincount(labels[chosen], minlength=10), [20] * 10)
    np.testing.assert_array_equal(balanced_subset(labels, 200, seed=4), chosen)  # the same every round
    assert not np.array_equal(balanced_subset(labels, 200, seed=5), chosen)
    counts = np.bincount(labels[balanced_subset(labels, 205, seed=4)], minlength=10)
    assert counts.sum() == 205 and counts.max() - counts.min() == 1
    few = np.r_[np.zeros(90, int), np.ones(10, int)]  # a class smaller than its share gives all it has
    np.testing.assert_array_equal(np.bincount(few[balanced_subset(few, 40, seed=0)]), [30, 10])
    np.testing.assert_array_equal(balanced_subset(labels, 0, seed=4), np.arange(len(labels)))
    np.testing.assert_array_equal(balanced_subset(labels, 5000, seed=4), np.arange(len(labels)))


def test_quantized_passes_use_the_subset_and_the_float_pass_the_whole_set(fedmpq_config, fl) -> None:
    config = fedmpq_config(dataset={"synthetic_test_size": 60}, eval={"quant_test_images": 20})
    strategy = fl.strategy(config)
    data = strategy.data
    evaluator = strategy.evaluator
    chosen = balanced_subset(data.y_test, 20, config["dataset"]["seed"])
    assert evaluator.quant_images == 20 and sum(len(y) for _, y in evaluator.test_batches) == 60
    bits = {name: 3 for name in strategy.bits[0]}
    metrics = evaluator.quantized_metrics(strategy.model, {0: bits}, config["quant"]["act_bits"])
    subset = eval_batches(data.x_test[chosen], data.y_test[chosen], 128, mean=data.mean, std=data.std, device=CPU)
    qmodel = quantize_model(strategy.model, bits, config["quant"]["act_bits"])
    _, accuracy, classes = loss_accuracy_per_class(qmodel, subset, CPU, data.num_classes)
    assert metrics[0] == (accuracy, classes)
    whole = ServerEvaluator(load_data(config["dataset"]), 128, CPU)
    assert whole.quant_images == 60 and whole.quant_batches is whole.test_batches


def test_every_quantized_round_records_the_subset_size_and_the_report_says_so(fedmpq_config, fl) -> None:
    config = fedmpq_config(eval={"quant_test_images": 24})
    records, _ = fl.run(config, rounds=2)
    assert [r["quant_test_images"] for r in records] == [24, 24]
    run = load_run(Path(config["results_dir"]) / config["run_id"])
    assert run["final_quant_test_images"] == 24
    variations = {"fedmpq": {"final_quant_test_images": mean_std([24])}, "fedavg": {"final_quant_test_images": None}}
    note = _quant_subset_note(variations)
    assert "fedmpq (24 images)" in note[0] and "fedavg" not in note[0]
    assert _quant_subset_note({"fedmpq": {"final_quant_test_images": mean_std([None])}}) == []
    default, _ = fl.run(fedmpq_config(run_id="default"), rounds=1)
    assert "quant_test_accuracy_mean" in default[0] and "quant_test_images" not in default[0]  # the whole set
