"""FedAvgStrategy without a Flower runtime: sampling, weighted averaging, bit counting, logging."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from fedmpq_flwr.client import FedAvgClient
from fedmpq_flwr.config import validate
from fedmpq_flwr.models import build_model
from fedmpq_flwr.results import RunRecorder
from fedmpq_flwr.strategy import FedAvgStrategy
from fedmpq_flwr.train import train_epochs
from fedmpq_flwr.weights import get_weights


def small_config(tmp_path: Path, **train) -> dict:
    return validate(
        {
            "run_id": "unit",
            "seed": 3,
            "results_dir": str(tmp_path),
            "model": {"name": "tiny_cnn"},
            "dataset": {"name": "synthetic", "synthetic_train_size": 200, "synthetic_test_size": 100},
            "train": {"num_rounds": 2, "batch_size": 32, **train},
            "strategy": {"fraction_fit": 0.5},
            "federation": {"device": "cpu"},
        }
    )


def make_strategy(tmp_path: Path) -> FedAvgStrategy:
    config = small_config(tmp_path)
    return FedAvgStrategy(config, RunRecorder(tmp_path / "unit", "unit"))


def fit_res(weights: list[np.ndarray], num_examples: int, partition_id: int) -> FitRes:
    metrics = {"partition_id": partition_id, "train_loss": 1.0, "client_time_s": 0.1}
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), num_examples, metrics)


def test_sampling_is_seeded_and_by_partition(tmp_path: Path) -> None:
    first, second = make_strategy(tmp_path), make_strategy(tmp_path)
    draws = [first.sample_partitions(list(range(10))) for _ in range(5)]
    assert draws == [second.sample_partitions(list(range(10))) for _ in range(5)]
    assert all(len(d) == 5 and d == sorted(set(d)) for d in draws)
    assert len({tuple(d) for d in draws}) > 1  # participation changes between rounds
    # the draw depends on partition ids, not on the order nodes were listed in
    third = make_strategy(tmp_path)
    assert third.sample_partitions(list(reversed(range(10)))) == draws[0]


def test_aggregate_is_sample_weighted_and_bits_are_counted(tmp_path: Path) -> None:
    strategy = make_strategy(tmp_path)
    shapes = [w.shape for w in strategy.latest_parameters]
    ones = [np.ones(s, np.float32) for s in shapes]
    threes = [np.full(s, 3.0, np.float32) for s in shapes]
    strategy.round_stats = {"sampled_partitions": [4, 7], "bits_down": 0}
    # results arrive in any order: 3 examples of ones from partition 7, 1 example of threes from 4
    results = [(None, fit_res(ones, 3, 7)), (None, fit_res(threes, 1, 4))]
    parameters, _ = strategy.aggregate_fit(1, results, [])
    for array in parameters_to_ndarrays(parameters):
        np.testing.assert_allclose(array, 1.5)  # (3*1 + 1*3) / 4
    num_floats = sum(int(np.prod(s)) for s in shapes)
    assert strategy.round_stats["bits_up"] == 2 * 32 * num_floats
    clients = strategy.round_stats["clients"]
    assert [(c["partition_id"], c["num_examples"], c["bits_up"]) for c in clients] == [
        (4, 1, 32 * num_floats),
        (7, 3, 32 * num_floats),
    ]
    assert strategy.round_stats["num_failures"] == 0
    assert strategy.download_bits(strategy.latest_parameters, 0) == 32 * num_floats


def test_communicated_floats_are_the_model_state(tmp_path: Path) -> None:
    """32 bits for every float entry of the state dict (weights, biases, BatchNorm statistics)."""
    model = build_model("resnet20")
    floats = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    params = sum(p.numel() for p in model.parameters())
    assert sum(w.size for w in get_weights(model)) == floats
    assert floats - params == 2 * sum(m.num_features for m in model.modules() if hasattr(m, "running_mean"))


def test_evaluate_logs_a_round_record(tmp_path: Path) -> None:
    strategy = make_strategy(tmp_path)
    strategy.round_stats = {"sampled_partitions": [1, 2], "bits_down": 10, "bits_up": 20, "num_failures": 0}
    loss, metrics = strategy.evaluate(1, ndarrays_to_parameters(strategy.latest_parameters))
    record = json.loads((tmp_path / "unit" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["round"] == 1 and record["run_id"] == "unit"
    assert record["test_accuracy"] == metrics["test_accuracy"] and record["test_loss"] == pytest.approx(loss)
    assert (record["bits_up"], record["bits_down"], record["num_sampled"]) == (20, 10, 2)
    assert strategy.evaluate(0, ndarrays_to_parameters(strategy.latest_parameters)) is None


def test_client_fit_is_deterministic_and_learns(tmp_path: Path) -> None:
    config = small_config(tmp_path, local_epochs=2, lr=0.05)
    initial = make_strategy(tmp_path).latest_parameters
    client = FedAvgClient(config, partition_id=0, num_partitions=2)
    first, n_first, metrics = client.fit(initial, {"server_round": 1})
    second, n_second, _ = client.fit(initial, {"server_round": 1})
    assert n_first == n_second > 0 and metrics["partition_id"] == 0
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other_round, _, _ = client.fit(initial, {"server_round": 2})
    assert any(not np.array_equal(a, b) for a, b in zip(first, other_round))
    assert any(not np.allclose(a, b) for a, b in zip(first, initial))


def test_client_costs_are_reported_and_summed_per_round(tmp_path: Path) -> None:
    """A linear model: the first step's FLOPs (2*B*in*out forward, the same for the weight
    gradient) times the steps; the round sums FLOPs and client seconds and takes the peak memory."""
    model = torch.nn.Linear(8, 3, bias=False)
    data = torch.utils.data.TensorDataset(torch.randn(10, 8), torch.randint(0, 3, (10,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    stats = train_epochs(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), 2, torch.device("cpu"))
    assert stats["steps"] == 6 and stats["train_flops"] == 6 * 2 * (2 * 4 * 8 * 3)
    assert stats["grad_norm"] > 0

    strategy = make_strategy(tmp_path)
    res = FedAvgClient(strategy.config, 0, 10).fit(strategy.latest_parameters, {"server_round": 1})[2]
    assert res["train_flops"] > 0 and res["peak_rss_mb"] > 50 and "peak_gpu_mb" not in res  # CPU
    shapes = [w.shape for w in strategy.latest_parameters]
    ones = [np.ones(s, np.float32) for s in shapes]
    results = []
    for pid, (flops, seconds, rss) in enumerate([(10.0, 1.5, 300.0), (30.0, 2.5, 200.0)]):
        res = fit_res(ones, 5, pid)
        res.metrics.update(train_flops=flops, client_time_s=seconds, peak_rss_mb=rss)
        results.append((None, res))
    strategy.round_stats = {"sampled_partitions": [0, 1], "bits_down": 0}
    strategy.aggregate_fit(1, results, [])
    stats = strategy.round_stats
    assert (stats["train_flops"], stats["client_compute_s"], stats["client_peak_rss_mb"]) == (40.0, 4.0, 300.0)
    assert "teacher_flops" not in stats and "client_peak_gpu_mb" not in stats
