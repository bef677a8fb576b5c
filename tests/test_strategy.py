"""FedAvg's strategy and client without a Flower runtime: sampling, weighted averaging, bit counting, logging."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from fedmpq_flwr.client.guard import GuardedClient
from fedmpq_flwr.methods.fedavg import FedAvgClient
from fedmpq_flwr.models import build_model
from fedmpq_flwr.server.round_log import FitSummary, RoundInProgress
from fedmpq_flwr.server.sampling import ClientSampler
from fedmpq_flwr.training.loop import train_epochs
from fedmpq_flwr.training.weights import get_weights


def fit_res(weights: list[np.ndarray], num_examples: int, partition_id: int) -> FitRes:
    metrics = {"partition_id": partition_id, "train_loss": 1.0, "client_time_s": 0.1}
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), num_examples, metrics)


def test_sampling_is_seeded_and_by_partition() -> None:
    first, second = ClientSampler(seed=3, fraction=0.5), ClientSampler(seed=3, fraction=0.5)
    draws = [first.sample(list(range(10))) for _ in range(5)]
    assert draws == [second.sample(list(range(10))) for _ in range(5)]
    assert all(len(d) == 5 and d == sorted(set(d)) for d in draws)
    assert len({tuple(d) for d in draws}) > 1  # participation changes between rounds
    # the draw depends on partition ids, not on the order nodes were listed in
    assert ClientSampler(seed=3, fraction=0.5).sample(list(reversed(range(10)))) == draws[0]
    assert ClientSampler(seed=4, fraction=0.5).sample(list(range(10))) != draws[0]


def test_aggregate_is_sample_weighted_and_bits_are_counted(fedavg_config, fl) -> None:
    strategy = fl.strategy(fedavg_config())
    shapes = [w.shape for w in strategy.latest_parameters]
    ones = [np.ones(s, np.float32) for s in shapes]
    threes = [np.full(s, 3.0, np.float32) for s in shapes]
    strategy.start_round(1, [4, 7], strategy.latest_parameters)
    # results arrive in any order: 3 examples of ones from partition 7, 1 example of threes from 4
    results = [(None, fit_res(ones, 3, 7)), (None, fit_res(threes, 1, 4))]
    parameters, _ = strategy.aggregate_fit(1, results, [])
    for array in parameters_to_ndarrays(parameters):
        np.testing.assert_allclose(array, 1.5)  # (3*1 + 1*3) / 4
    num_floats = sum(int(np.prod(s)) for s in shapes)
    fit = strategy.current.fit
    assert fit.bits_up == 2 * 32 * num_floats and strategy.current.bits_down == 2 * 32 * num_floats
    clients = fit.fields["clients"]
    assert [(c["partition_id"], c["num_examples"], c["bits_up"]) for c in clients] == [
        (4, 1, 32 * num_floats),
        (7, 3, 32 * num_floats),
    ]
    assert fit.num_failures == 0 and fit.client_time_s == 0.1
    assert strategy.download_bits(strategy.latest_parameters, 0) == 32 * num_floats


def test_communicated_floats_are_the_model_state(tmp_path: Path) -> None:
    """32 bits for every float entry of the state dict (weights, biases, BatchNorm statistics)."""
    model = build_model("resnet20")
    floats = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    params = sum(p.numel() for p in model.parameters())
    assert sum(w.size for w in get_weights(model)) == floats
    assert floats - params == 2 * sum(m.num_features for m in model.modules() if hasattr(m, "running_mean"))


def test_evaluate_logs_a_round_record(tmp_path: Path, fedavg_config, fl) -> None:
    strategy = fl.strategy(fedavg_config())
    strategy.current = RoundInProgress(server_round=1, sampled=[1, 2], bits_down=10)
    strategy.current.fit = FitSummary(num_failures=0, bits_up=20, client_time_s=1.5)
    loss, metrics = strategy.evaluate(1, ndarrays_to_parameters(strategy.latest_parameters))
    record = json.loads((tmp_path / "unit" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["round"] == 1 and record["run_id"] == "unit"
    assert record["test_accuracy"] == metrics["test_accuracy"] and record["test_loss"] == pytest.approx(loss)
    assert (record["bits_up"], record["bits_down"], record["num_sampled"]) == (20, 10, 2)
    assert record["sampled_partitions"] == [1, 2] and record["client_time_s"] == 1.5
    assert strategy.evaluate(0, ndarrays_to_parameters(strategy.latest_parameters)) is None


def test_client_fit_is_deterministic_and_learns(fedavg_config, fl) -> None:
    config = fedavg_config(train={"local_epochs": 2, "lr": 0.05})
    initial = fl.strategy(config).latest_parameters
    client = GuardedClient(FedAvgClient(config, partition_id=0, num_partitions=2))
    first, n_first, metrics = client.fit(initial, {"server_round": 1})
    second, n_second, _ = client.fit(initial, {"server_round": 1})
    assert n_first == n_second > 0 and metrics["partition_id"] == 0
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other_round, _, _ = client.fit(initial, {"server_round": 2})
    assert any(not np.array_equal(a, b) for a, b in zip(first, other_round))
    assert any(not np.allclose(a, b) for a, b in zip(first, initial))


def test_client_costs_are_reported_and_summed_per_round(fedavg_config, fl) -> None:
    """A linear model: the first step's FLOPs (2*B*in*out forward, the same for the weight
    gradient) times the steps; the round sums FLOPs and client seconds and takes the peak memory."""
    model = torch.nn.Linear(8, 3, bias=False)
    data = torch.utils.data.TensorDataset(torch.randn(10, 8), torch.randint(0, 3, (10,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    stats = train_epochs(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), 2, torch.device("cpu"))
    assert stats["steps"] == 6 and stats["train_flops"] == 6 * 2 * (2 * 4 * 8 * 3)
    assert stats["grad_norm"] > 0

    strategy = fl.strategy(fedavg_config())
    res = GuardedClient(FedAvgClient(strategy.config, 0, 10)).fit(strategy.latest_parameters, {"server_round": 1})[2]
    assert res["train_flops"] > 0 and res["peak_rss_mb"] > 50 and "peak_gpu_mb" not in res  # CPU
    shapes = [w.shape for w in strategy.latest_parameters]
    ones = [np.ones(s, np.float32) for s in shapes]
    results = []
    for pid, (flops, seconds, rss) in enumerate([(10.0, 1.5, 300.0), (30.0, 2.5, 200.0)]):
        res = fit_res(ones, 5, pid)
        res.metrics.update(train_flops=flops, client_time_s=seconds, peak_rss_mb=rss)
        results.append((None, res))
    strategy.start_round(1, [0, 1], strategy.latest_parameters)
    strategy.aggregate_fit(1, results, [])
    stats = strategy.current.fit.fields
    assert (stats["train_flops"], stats["client_compute_s"], stats["client_peak_rss_mb"]) == (40.0, 4.0, 300.0)
    assert "teacher_flops" not in stats and "client_peak_gpu_mb" not in stats
