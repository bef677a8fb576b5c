"""Evaluation cost under control: which rounds evaluate (`eval.every`, `eval.quant_every`), what a round
without evaluation records and prints, and the test set staged once on the device giving exactly the
DataLoader's numbers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from fedmpq_flwr.data.loaders import eval_batches, eval_loader
from fedmpq_flwr.quant import quantize_model
from fedmpq_flwr.rundir.progress import accuracy_text
from fedmpq_flwr.rundir.results import RunRecorder, auc_accuracy
from fedmpq_flwr.server.round_log import RoundLog
from fedmpq_flwr.training.loop import loss_accuracy_per_class, loss_and_accuracy

FLOAT_KEYS = {"test_accuracy", "test_loss", "class_accuracy"}
QUANT_KEYS = {"quant_test_accuracy_mean", "quant_test_accuracy_min", "quant_test_accuracy", "quant_class_accuracy"}


def test_the_strategy_evaluates_every_kth_round_and_always_the_last(fedmpq_config, fl) -> None:
    strategy = fl.strategy(fedmpq_config(train={"num_rounds": 10}, eval={"every": 3, "quant_every": 4}))
    assert [r for r in range(1, 11) if strategy.schedule.evaluates(r)] == [3, 6, 9, 10]
    assert [r for r in range(1, 11) if strategy.schedule.evaluates_quantized(r)] == [4, 8, 10]
    every_round = fl.strategy(fedmpq_config(run_id="default", train={"num_rounds": 10})).schedule
    assert all(every_round.evaluates(r) and every_round.evaluates_quantized(r) for r in range(1, 11))


def test_rounds_without_evaluation_record_everything_but_accuracy(
    fedmpq_config, fl, caplog: pytest.LogCaptureFixture
) -> None:
    """Every round has its record (training, bits, the next bit assignment); the accuracy keys only in
    the rounds that evaluated. Thinning the evaluation changes nothing else: the same records, minus
    those keys, as evaluating every round."""
    thinned_config = fedmpq_config(run_id="thinned", train={"num_rounds": 3}, eval={"every": 2, "quant_every": 3})
    participants = [[0, 3], [1, 2], [0, 1]]  # two clients a round: the others keep their assignment
    with caplog.at_level(logging.INFO, logger="flwr"):
        thinned, thinned_weights = fl.run(thinned_config, rounds=3, participants=participants)
    full, full_weights = fl.run(fedmpq_config(run_id="full", train={"num_rounds": 3}), 3, participants)
    assert [r["round"] for r in thinned] == [1, 2, 3]
    assert [(FLOAT_KEYS <= set(r), bool(QUANT_KEYS & set(r))) for r in thinned] == [
        (False, False),
        (True, False),
        (True, True),  # the last round always evaluates both
    ]
    assert not FLOAT_KEYS & set(thinned[0])
    assert QUANT_KEYS <= set(thinned[2])
    ignored = fl.varying_keys | FLOAT_KEYS | QUANT_KEYS | {"server_peak_rss_mb"}
    for thin, every in zip(thinned, full):
        assert {"train_loss", "bits_up", "bits_down", "round_time_s", "clients", "next_avg_bits"} <= set(thin)
        assert fl.without(thin, ignored) == fl.without(every, ignored)  # training and bits unaffected
    for thin_array, full_array in zip(thinned_weights, full_weights):
        torch.testing.assert_close(torch.from_numpy(thin_array), torch.from_numpy(full_array), rtol=0, atol=0)
    progress = [m for m in caplog.messages if m.startswith("[thinned] round")]
    assert "test_acc" not in progress[0] and "quant_acc" not in progress[0]
    assert f"test_acc={thinned[1]['test_accuracy']:.4f}  " in progress[1] and "quant_acc" not in progress[1]
    assert "quant_acc mean=" in progress[2]


def test_the_progress_line_names_the_round_of_the_last_evaluated_accuracy(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path / "run", "run")
    round_log = RoundLog(recorder, num_rounds=4)
    texts = []
    for server_round, accuracy in ((1, None), (2, 0.5), (3, None), (4, 0.625)):
        record = {"round": server_round, "round_time_s": 1.0}
        if accuracy is not None:
            record.update(test_accuracy=accuracy, test_loss=1.0)
        round_log.write(record)
        last_evaluated = next((r for r in reversed(recorder.history[:-1]) if "test_accuracy" in r), None)
        texts.append(accuracy_text(record, last_evaluated))
    assert texts == ["", "  test_acc=0.5000", "  test_acc=0.5000 (round 2)", "  test_acc=0.6250"]
    results = recorder.finish({})
    assert results["num_rounds"] == 4 and len(results["history"]) == 4
    assert results["final_accuracy"] == 0.625 and results["best_accuracy"] == 0.625
    assert results["auc_accuracy"] == auc_accuracy([2, 4], [0.5, 0.625])  # over the evaluated rounds


def test_staged_batches_give_exactly_the_data_loaders_numbers(fedmpq_config, fl) -> None:
    """The float model's and every quantized assignment's loss, accuracy and per-class accuracy from the
    staged test batches equal those from a DataLoader over the same images, bit for bit (CPU)."""
    config = fedmpq_config(dataset={"val_fraction": 0.25}, train={"eval_batch_size": 7}, quant={"budgets": [2, 5]})
    strategy = fl.strategy(config)  # 4 clients, 2 distinct assignments
    data, cpu, model = strategy.data, torch.device("cpu"), strategy.model
    batches = eval_batches(data.x_test, data.y_test, 7, mean=data.mean, std=data.std, device=cpu)
    assert [len(labels) for _, labels in batches] == [7] * 5 + [5]  # 40 images, the last batch short
    test_loader = eval_loader(data.x_test, data.y_test, 7, mean=data.mean, std=data.std)
    for (staged, staged_labels), (loaded, loaded_labels) in zip(batches, test_loader):
        assert torch.equal(staged, loaded) and torch.equal(staged_labels, loaded_labels)

    metrics = strategy.evaluator.float_metrics(model)
    loss, accuracy, classes = loss_accuracy_per_class(model, test_loader, cpu, data.num_classes)
    assert (metrics["test_loss"], metrics["test_accuracy"], metrics["class_accuracy"]) == (loss, accuracy, classes)
    val_loader = eval_loader(data.x_val, data.y_val, 7, mean=data.mean, std=data.std)
    assert (metrics["val_loss"], metrics["val_accuracy"]) == loss_and_accuracy(model, val_loader, cpu)

    act_bits = strategy.config["quant"]["act_bits"]
    quantized = strategy.evaluator.quantized_metrics(model, strategy.bits, act_bits)
    assert sorted(quantized) == [0, 1, 2, 3]
    for pid, bits in strategy.bits.items():
        _, expected_accuracy, expected_classes = loss_accuracy_per_class(
            quantize_model(model, bits, act_bits), test_loader, cpu, data.num_classes
        )
        assert quantized[pid] == (expected_accuracy, expected_classes)
