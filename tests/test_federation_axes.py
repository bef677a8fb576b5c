"""The federation axes of the design: many clients (tiled budgets), dropout, client failures, label
noise records and the ViT's optimizer settings; all without Flower's runtime (the `fl` fixture drives
the real strategy and clients; tests/test_e2e.py runs them through Flower)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from analysis_builders import run_main, write_variation
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from fedmpq_flwr.client.failures import (
    DROPOUT,
    ERROR,
    ClientDropout,
    ClientFailure,
    describe_failure,
    drops_out,
    non_finite_problem,
)
from fedmpq_flwr.client.guard import GuardedClient
from fedmpq_flwr.config import ConfigError, validate
from fedmpq_flwr.data.device_batches import client_batches
from fedmpq_flwr.data.partition import flipped_label_counts
from fedmpq_flwr.methods.fedavg import FedAvgClient
from fedmpq_flwr.methods.fedmpq import FedMPQClient, client_budgets
from fedmpq_flwr.quant.allocation import ClientBits, allocate
from fedmpq_flwr.rundir.results import read_results
from fedmpq_flwr.server.outcome import RunFailed, run_rounds
from fedmpq_flwr.training.loop import build_optimizer, round_lr

MAIN_BUDGETS = [2, 2, 3, 3, 4, 4, 5, 5, 6, 6]


# ---- many clients: quant.budgets tiled -------------------------------------------------------


@pytest.mark.parametrize("num_clients", [10, 50, 100])
def test_budgets_shorter_than_the_federation_are_tiled(num_clients: int) -> None:
    config = validate(
        {"strategy": {"name": "fedmpq"}, "quant": {"budgets": MAIN_BUDGETS}, "federation": {"num_clients": num_clients}}
    )
    assert config["quant"]["budgets"] == MAIN_BUDGETS  # the config keeps what was written
    budgets = client_budgets(config)
    assert sorted(budgets) == list(range(num_clients))
    # the whole list repeats: partitions 0-9, 10-19, ... have the budgets of the 10-client experiment
    assert [budgets[pid] for pid in range(num_clients)] == [float(b) for b in MAIN_BUDGETS] * (num_clients // 10)
    assert np.mean(list(budgets.values())) == 4.0


@pytest.mark.parametrize(("budgets", "num_clients"), [([2, 3, 4], 10), (MAIN_BUDGETS + MAIN_BUDGETS, 10), ([2, 6], 5)])
def test_budgets_of_another_length_are_a_one_line_error(budgets: list[int], num_clients: int) -> None:
    with pytest.raises(ConfigError) as info:
        validate({"quant": {"budgets": budgets}, "federation": {"num_clients": num_clients}})
    message = str(info.value)
    assert "\n" not in message and message.startswith("key 'quant.budgets'")
    assert f"has {len(budgets)} entries" in message and f"divides federation.num_clients = {num_clients}" in message


def test_avg_bits_alone_serves_any_number_of_clients() -> None:
    config = validate({"strategy": {"name": "fedmpq"}, "quant": {"avg_bits": 3}, "federation": {"num_clients": 7}})
    assert client_budgets(config) == dict.fromkeys(range(7), 3.0)


# ---- dropout ---------------------------------------------------------------------------------


def test_dropout_draw_is_seeded_per_round_and_partition() -> None:
    draws = [[drops_out(5, r, p, 0.2) for p in range(100)] for r in range(1, 51)]
    assert draws == [[drops_out(5, r, p, 0.2) for p in range(100)] for r in range(1, 51)]  # reproducible
    assert 0.17 < np.mean(draws) < 0.23  # about p of the sampled clients
    assert draws != [[drops_out(6, r, p, 0.2) for p in range(100)] for r in range(1, 51)]  # another seed
    assert len({tuple(row) for row in draws}) > 40  # another round, other clients
    assert not any(drops_out(5, r, p, 0.0) for r in range(1, 20) for p in range(100))
    # a client's draw at a lower p is a subset of its draw at a higher one (one uniform per client)
    assert all(drops_out(5, 3, p, 0.5) for p in range(100) if drops_out(5, 3, p, 0.2))


def strip(records: list[dict], fl) -> list[dict]:
    return [fl.without(r, fl.varying_keys) for r in records]


def test_dropout_is_reproducible_recorded_and_keeps_the_dropped_clients_bits(fedmpq_config, fl) -> None:
    config = fedmpq_config(federation={"dropout": 0.5})  # 4 clients, all sampled, seed 1
    expected = [[p for p in range(4) if drops_out(config["seed"], r, p, 0.5)] for r in (1, 2)]
    assert expected == [[1, 3], [1, 2]]  # the seed's draws: some, never all, drop
    records, weights = fl.run(config, rounds=2)
    assert [r["dropped_partitions"] for r in records] == expected
    assert [r["num_failures"] for r in records] == [2, 2]
    assert all(r["client_errors"] == [] for r in records)
    for record, dropped in zip(records, expected):
        assert record["sampled_partitions"] == [0, 1, 2, 3]
        assert [c["partition_id"] for c in record["clients"]] == [p for p in range(4) if p not in dropped]
    # the clients that dropped in round 2 keep the assignment they were sent (after round 1)
    assert all(records[1]["next_avg_bits"][str(p)] == records[0]["next_avg_bits"][str(p)] for p in (1, 2))
    again, weights_again = fl.run(fedmpq_config(run_id="again", federation={"dropout": 0.5}), rounds=2)
    assert strip(again, fl) == strip(records, fl)
    for a, b in zip(weights, weights_again):
        np.testing.assert_array_equal(a, b)


def test_fedmpq_keeps_the_assignment_of_a_client_that_did_not_report(fedmpq_config, fl) -> None:
    config = fedmpq_config()
    strategy = fl.strategy(config)
    before = {pid: dict(bits) for pid, bits in strategy.bits.items()}
    strategy.start_round(1, [0, 1, 2, 3], strategy.latest_parameters)
    results = [(None, fl.fit_result(FedMPQClient(config, pid, 4), strategy, pid)) for pid in (0, 2, 3)]
    strategy.aggregate_fit(1, results, [ClientDropout(1, 1)])
    assert strategy.bits[1] == before[1]
    assert strategy.current.fit.dropped_partitions == [1] and strategy.current.fit.num_failures == 1
    # what allocate gives every client when nobody is kept (the behaviour for unsampled clients)
    reports = []
    for p, (_, res) in zip((0, 2, 3), results):
        bits, reductions = json.loads(res.metrics["bits"]), json.loads(res.metrics["reductions"])
        reports.append(ClientBits(res.num_examples, strategy.budgets[p], bits, reductions))
    fresh = allocate(strategy.layer_sizes, reports, strategy.budgets)
    assert {p: strategy.bits[p] for p in (0, 2, 3)} == {p: fresh[p] for p in (0, 2, 3)}


def test_allocate_keeps_the_given_assignments() -> None:
    sizes = {"a": 100, "b": 10}
    reports = [ClientBits(10, 4.0, {"a": 3, "b": 6}, {"a": 1, "b": 0})]
    budgets = {0: 4.0, 1: 2.0}
    fresh = allocate(sizes, reports, budgets)
    kept = allocate(sizes, reports, budgets, keep={1: {"a": 8, "b": 8}})
    assert kept == {0: fresh[0], 1: {"a": 8, "b": 8}}


# ---- client failures -------------------------------------------------------------------------


def flower_simulation_error(err: Exception) -> ValueError:
    """What Flower 1.42's simulation hands `aggregate_fit` for a client's exception: a ValueError with
    the error text of the Ray task wrapped in the reason of an error Message (grid_client_proxy.py)."""
    ray = (
        "ray::ClientAppActor.run() (pid=4242, ip=127.0.0.1, actor_id=ab12)\n"
        '  File "flwr/simulation/ray_transport/ray_actor.py", line 65, in run\n'
        f"    raise ClientAppException(str(ex)) from ex\nflwr.clientapp.client_app.ClientAppException: "
        f"\nException ClientAppException occurred. Message: {err}"
    )
    reason = f"<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'{ray}'>"
    return ValueError(
        f"Message contains an Error (reason: {reason}). It originated during client-side execution of a message."
    )


def test_failures_are_read_back_from_what_flower_delivers() -> None:
    failure = ClientFailure(3, 'ValueError: bad "input" } {\nsecond line')
    assert str(failure).startswith('partition 3 failed: ValueError: bad "input" } {')
    for delivered in (failure, flower_simulation_error(failure)):
        report = describe_failure(delivered)
        assert (report.partition_id, report.kind, report.error) == (3, ERROR, 'ValueError: bad "input" } {')
    dropout = describe_failure(flower_simulation_error(ClientDropout(7, 2)))
    assert (dropout.partition_id, dropout.kind) == (7, DROPOUT) and "round 2" in dropout.error
    unknown = describe_failure(TimeoutError("node vanished\ntraceback"))
    assert (unknown.partition_id, unknown.kind, unknown.error) == (None, ERROR, "TimeoutError: node vanished")
    status = FitRes(Status(Code.FIT_NOT_IMPLEMENTED, "no fit here"), ndarrays_to_parameters([]), 0, {"partition_id": 4})
    assert describe_failure((None, status)).record() == {"partition_id": 4, "error": "no fit here"}


def test_a_client_that_raises_is_a_failure_and_the_round_goes_on(fedavg_config, fl, monkeypatch) -> None:
    config = fedavg_config(strategy={"fraction_fit": 1.0}, federation={"num_clients": 4})
    original = FedAvgClient.train

    def train(self, model, loader, fit_config, seed):
        if self.partition_id == 2:
            raise ValueError("missing shard\nmore detail")
        return original(self, model, loader, fit_config, seed)

    monkeypatch.setattr(FedAvgClient, "train", train)
    with pytest.raises(ClientFailure, match=r"^partition 2 failed: ValueError: missing shard \[") as info:
        GuardedClient(FedAvgClient(config, 2, 4)).fit(fl.strategy(config).latest_parameters, {"server_round": 1})
    assert isinstance(info.value.__cause__, ValueError)
    records, _ = fl.run(config, rounds=2)
    for record in records:
        assert record["num_failures"] == 1 and record["dropped_partitions"] == []
        assert record["client_errors"] == [{"partition_id": 2, "error": "ValueError: missing shard"}]
        assert [c["partition_id"] for c in record["clients"]] == [0, 1, 3]
        assert 0 <= record["test_accuracy"] <= 1


def test_a_nan_or_infinite_loss_is_a_client_failure(fedavg_config, fl, monkeypatch) -> None:
    config = fedavg_config()
    strategy = fl.strategy(config)
    for bad in (math.nan, math.inf):
        monkeypatch.setattr(FedAvgClient, "train", lambda self, model, *a, bad=bad: ([], {"train_loss": bad}))
        with pytest.raises(ClientFailure, match=rf"^partition 1 failed: non-finite training loss {bad}"):
            GuardedClient(FedAvgClient(config, 1, 10)).fit(strategy.latest_parameters, {"server_round": 1})
    weights = [np.full(3, np.nan, np.float32), np.zeros(2, np.int8)]
    assert non_finite_problem(0.5, weights) == "3 non-finite values in the update"
    assert non_finite_problem(0.5, [np.zeros(3, np.float32)]) is None


def good_round(strategy, fl, config, server_round: int, pids: list[int]) -> None:
    strategy.start_round(server_round, pids, strategy.latest_parameters)
    results = [(None, fl.fit_result(FedAvgClient(config, p, 10), strategy, p, server_round)) for p in pids]
    strategy.aggregate_fit(server_round, results, [])
    strategy.evaluate(server_round, ndarrays_to_parameters(strategy.latest_parameters))


def test_a_round_without_any_update_fails_the_run_with_its_reason(fedavg_config, fl) -> None:
    config = fedavg_config()
    strategy = fl.strategy(config)

    def rounds(strategy) -> None:  # stands in for Flower's start_grid
        good_round(strategy, fl, config, 1, [0, 1])
        strategy.start_round(2, [3, 5], strategy.latest_parameters)
        failures = [ClientDropout(3, 2), ClientFailure(5, "OSError: disk")]
        failures = [flower_simulation_error(failure) for failure in failures]
        strategy.aggregate_fit(2, [], failures)

    assert run_rounds(rounds, strategy.recorder, strategy=strategy) is False
    strategy.save_outputs()  # what the ServerApp does next: nothing for a failed run
    strategy.recorder.finish({"seed": 3}, extra={"variation": "unit", "strategy": "fedavg"})
    run_dir = Path(config["results_dir"]) / "unit"
    results = read_results(run_dir)
    assert results["status"] == "failed" and results["num_rounds"] == 1
    assert results["reason"] == (
        "round 2: no client update (2 failures: dropped [3], errors [{'partition_id': 5, 'error': 'OSError: disk'}])"
    )
    assert [r["round"] for r in results["history"]] == [1]
    assert results["final_accuracy"] == results["history"][0]["test_accuracy"]
    assert results["metadata"] == {"seed": 3} and results["strategy"] == "fedavg"
    assert not (run_dir / "final_model.pt").exists() and not (run_dir / "features.npz").exists()


def test_a_nan_global_model_fails_the_run(fedavg_config, fl) -> None:
    config = fedavg_config()
    strategy = fl.strategy(config)
    poisoned = [np.full(w.shape, np.nan, np.float32) for w in strategy.latest_parameters]
    metrics = {"partition_id": 0, "train_loss": 1.0, "client_time_s": 0.1}
    strategy.start_round(1, [0], strategy.latest_parameters)
    reply = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(poisoned), 5, metrics)
    with pytest.raises(RunFailed, match=r"^round 1: the aggregated global model has \d+ NaN or infinite values$"):
        strategy.aggregate_fit(1, [(None, reply)], [])


def test_a_run_that_ends_normally_completes(fedavg_config, fl) -> None:
    config = fedavg_config()
    strategy = fl.strategy(config)
    assert (
        run_rounds(lambda strategy: good_round(strategy, fl, config, 1, [0]), strategy.recorder, strategy=strategy)
        is True
    )
    results = strategy.recorder.finish({}, extra={})
    assert results["status"] == "completed" and "reason" not in results


# ---- label noise -----------------------------------------------------------------------------


def test_flipped_label_counts_are_recorded_once_per_run(fedavg_config, fl) -> None:
    config = fedavg_config(dataset={"label_noise": 0.1}, federation={"num_clients": 4})
    strategy = fl.strategy(config)
    counts = strategy.recorder.info["flipped_labels"]
    dataset_cfg = config["dataset"]
    assert counts == flipped_label_counts(strategy.data, 4, dataset_cfg["alpha"], dataset_cfg["seed"], 0.1)
    # the flips the clients train on
    for pid in range(4):
        batches = client_batches(strategy.data, pid, 4, dataset_cfg, 32, 0, label_noise=0.1, device=torch.device("cpu"))
        assert batches.num_flipped == counts[pid]
    assert 0.05 * 200 < sum(counts) < 0.15 * 200
    results = strategy.recorder.finish({}, extra={})
    assert results["flipped_labels"] == counts
    assert fl.strategy(fedavg_config(run_id="clean")).recorder.info["flipped_labels"] == [0] * 10


# ---- optimizer and learning-rate schedule ----------------------------------------------------


def test_round_learning_rate_warms_up_then_follows_the_schedule() -> None:
    assert [round_lr(0.1, r, 10) for r in (1, 5, 10)] == [0.1, 0.1, 0.1]
    assert [round_lr(1e-3, r, 10, warmup_rounds=4) for r in (1, 2, 4, 5, 10)] == pytest.approx(
        [2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3]
    )
    cosine = [round_lr(1e-3, r, 10, warmup_rounds=2, schedule="cosine") for r in range(1, 11)]
    assert cosine[:3] == pytest.approx([5e-4, 1e-3, 1e-3])  # round 3 is the first after the warm-up
    assert all(a > b > 0 for a, b in zip(cosine[2:], cosine[3:]))
    assert cosine[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_adamw_with_warmup_builds_and_steps(fedmpq_config) -> None:
    model = torch.nn.Linear(4, 2)
    sgd = build_optimizer("sgd", model.parameters(), 0.1, 0.9, 0.0)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9
    adamw = build_optimizer("adamw", model.parameters(), 1e-3, 0.9, 0.05)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["betas"] == (0.9, 0.999)
    assert adamw.defaults["weight_decay"] == 0.05

    train = {"optimizer": "adamw", "lr": 1e-3, "warmup_rounds": 4, "lr_schedule": "cosine", "weight_decay": 0.05}
    config = fedmpq_config(train=train)
    client = FedMPQClient(config, 0, 4)
    seen = []
    original = client.optimizer

    def optimizer(parameters):
        built = original(parameters)
        seen.append((type(built), built.param_groups[0]["lr"]))
        return built

    client.optimizer = optimizer
    from fedmpq_flwr.methods.registry import load_method
    from fedmpq_flwr.rundir.results import RunRecorder

    strategy = load_method("fedmpq").strategy(config, RunRecorder(Path(config["results_dir"]) / "adamw", "adamw"))
    for server_round in (1, 2):
        weights, n, metrics = client.fit(strategy.latest_parameters, strategy.fit_config(server_round, 0))
        assert n > 0 and math.isfinite(metrics["train_loss"]) and metrics["steps"] > 0
    assert seen == [(torch.optim.AdamW, pytest.approx(2.5e-4)), (torch.optim.AdamW, pytest.approx(5e-4))]


# ---- experiment design and analyzer ----------------------------------------------------------


def test_a_categorical_axis_is_analysed(tmp_path: Path, capsys) -> None:
    """model.name is an axis of names: the robustness table and figure show each model."""
    finals = {"fedmpq": (0.60, 0.62), "fedmpq_kd": (0.64, 0.66)}
    for strategy, (main, vit) in finals.items():
        write_variation(tmp_path, strategy, strategy, {0: main, 1: main + 0.01})
        vit_runs = write_variation(tmp_path, f"{strategy}_vit", strategy, {0: vit, 1: vit + 0.01}, axis="model.name")
        for run_dir in vit_runs:
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
            config["model"]["name"] = "vit_small"
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    comp, _ = run_main(tmp_path, capsys)
    rows = comp["robustness"]["model.name"]["methods"]
    assert [(r["value"], r["variation"]) for r in rows["fedmpq_kd"]] == [
        ("tiny_cnn", "fedmpq_kd"),
        ("vit_small", "fedmpq_kd_vit"),
    ]
    assert rows["fedmpq"][0]["degradation_points"] == pytest.approx(100 * (0.625 - 0.605))
    diffs = comp["robustness"]["model.name"]["proposed_minus_fedmpq_points"]
    assert [d["value"] for d in diffs] == ["tiny_cnn", "vit_small"] and diffs[0]["points"] == pytest.approx(4.0)
    assert "images/robustness_model.pdf" in comp["figures"]
    report = (tmp_path / "report.md").read_text()
    assert "### Axis `model.name`" in report and "| vit_small |" in report
