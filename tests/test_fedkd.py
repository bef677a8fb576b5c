"""FedKD without a Flower runtime: the private mentor on the node, the SVD uplink and its exact bit
count, the server's reconstruction and average, the mentor's FLOPs apart from the mentee's."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import Rounds
from flwr.common import Code, FitRes, RecordDict, Status, ndarrays_to_parameters, parameters_to_ndarrays

from fedmpq_flwr.config import ConfigError, deep_merge, validate
from fedmpq_flwr.methods.fedkd import FedKDClient, mentor_key, training_step_flops
from fedmpq_flwr.models import build_model
from fedmpq_flwr.quant.svd import energy_threshold, matrix_shape, svd_decode, svd_encode
from fedmpq_flwr.server.update import ClientUpdate
from fedmpq_flwr.training.weights import get_weights


def tiny_config(results_dir: Path, method: str = "fedkd", run_id: str = "kd") -> dict:
    """A tiny FedKD run: ResNet-20 mentee, ResNet-32 mentor, 2 clients of 32 synthetic images, 3 rounds
    (ResNets, because FedKD compares stage outputs; the first step's FLOP count makes them slow here)."""
    base = {
        "run_id": run_id,
        "seed": 2,
        "results_dir": str(results_dir),
        "model": {"name": "resnet20"},
        "strategy": {"name": method},
        "dataset": {"name": "synthetic", "synthetic_train_size": 64, "synthetic_test_size": 20, "alpha": "inf"},
        "train": {"num_rounds": 3, "batch_size": 16},
        "federation": {"num_clients": 2, "device": "cpu"},
    }
    return validate(deep_merge(base, {}))


@pytest.fixture
def fedkd_config(tmp_path: Path):
    return lambda method="fedkd", run_id="kd": tiny_config(tmp_path, method, run_id)


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Two rounds of FedKD and of FedAvg in the same setting (the metrics records), run once."""
    results_dir = tmp_path_factory.mktemp("fedkd")
    return {
        method: Rounds.run(tiny_config(results_dir, method, run_id=method), rounds=2)[0]
        for method in ("fedavg", "fedkd")
    }


@pytest.fixture(scope="module")
def first_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """One client's first FedKD round: (strategy, its reply)."""
    config = tiny_config(tmp_path_factory.mktemp("fit"))
    strategy = Rounds.strategy(config)
    return strategy, Rounds.fit_result(FedKDClient(config, 0, 2, RecordDict()), strategy, 0, server_round=1)


def analytic_bits(layout: list[int], shapes: list[tuple[int, ...]]) -> int:
    """32 * (m*K + K + K*n) per factorised matrix, 32 * numel per raw tensor."""
    total = 0
    for rank, shape in zip(layout, shapes):
        if rank == 0:
            total += 32 * int(np.prod(shape))
        else:
            m, n = matrix_shape(shape)
            total += 32 * rank * (m + n + 1)
    return total


def test_bits_up_are_the_analytic_svd_count_of_a_real_update(first_fit) -> None:
    strategy, res = first_fit
    shapes = [a.shape for a in strategy.latest_parameters]
    layout = json.loads(res.metrics["svd_layout"])
    arrays = parameters_to_ndarrays(res.parameters)
    assert res.metrics["svd_energy"] == energy_threshold(1, 3) == 0.95
    assert any(rank > 0 for rank in layout)  # some matrices were factorised ...
    assert sum(1 if rank == 0 else 3 for rank in layout) == len(arrays)
    expected = analytic_bits(layout, shapes)
    assert (
        strategy.upload_bits(ClientUpdate.from_fit_res(res, strategy.encoded_metrics))
        == expected
        < 32 * sum(int(np.prod(s)) for s in shapes)
    )  # ... and pay off


def test_the_mentor_never_travels(two_rounds) -> None:
    """Every upload decodes to exactly the mentee's tensors; the ResNet-32 mentor has more."""
    records = two_rounds["fedkd"]
    mentee = get_weights(build_model("resnet20"))
    mentor = get_weights(build_model("resnet32"))
    assert len(mentor) > len(mentee)
    for record in records:
        for client in record["clients"]:
            assert len(client["svd_ranks"]) == len(mentee)
            assert client["bits_up"] == analytic_bits(client["svd_ranks"], [a.shape for a in mentee])
            assert client["bits_up"] < 32 * sum(a.size for a in mentee)
            assert client["mentor_state_bytes"] == sum(a.nbytes for a in mentor)


def test_fedkd_sends_fewer_bits_up_than_fedavg_and_the_same_down(two_rounds) -> None:
    fedavg, fedkd = two_rounds["fedavg"], two_rounds["fedkd"]
    for a, b in zip(fedavg, fedkd):
        assert b["bits_up"] < a["bits_up"] and b["bits_down"] == a["bits_down"]
        assert 0 <= b["agreement"] <= 1 and b["kd_loss"] >= 0 and b["mentor_flops"] > b["train_flops"] > 0
    # energy kept grows from energy_start to energy_end over the configured rounds
    assert [r["clients"][0]["svd_energy"] for r in fedkd] == [energy_threshold(t, 3) for t in (1, 2)]


def test_the_mentor_stays_on_the_node_and_learns(fedkd_config, fl) -> None:
    config = fedkd_config()
    strategy = fl.strategy(config)
    state = RecordDict()
    fresh = get_weights(FedKDClient(config, 1, 2, RecordDict()).mentor(10))
    again = get_weights(FedKDClient(config, 1, 2, RecordDict()).mentor(10))
    other = get_weights(FedKDClient(config, 0, 2, RecordDict()).mentor(10))
    assert all(np.array_equal(a, b) for a, b in zip(fresh, again))  # seeded per (seed, partition)
    assert any(not np.array_equal(a, b) for a, b in zip(fresh, other))
    kept = []
    for server_round in (1, 2):
        fl.fit_result(FedKDClient(config, 1, 2, state), strategy, 1, server_round=server_round)
        assert list(state) == [mentor_key(1)]
        kept.append(state[mentor_key(1)].to_numpy_ndarrays())
    assert len(kept[0]) == len(fresh)
    assert any(not np.array_equal(a, b) for a, b in zip(fresh, kept[0]))  # round 1 trained the fresh mentor
    assert any(not np.array_equal(a, b) for a, b in zip(kept[0], kept[1]))  # round 2 went on from it


def test_server_adds_the_weighted_mean_of_the_decoded_updates(fedkd_config, fl) -> None:
    strategy = fl.strategy(fedkd_config())
    start = [a.copy() for a in strategy.latest_parameters]
    rng = np.random.default_rng(0)
    updates = {pid: [rng.standard_normal(a.shape).astype(np.float32) for a in start] for pid in (0, 1)}
    results = []
    decoded = {}
    for pid, n in ((0, 1), (1, 3)):
        arrays, layout = svd_encode(updates[pid], 0.9)
        decoded[pid] = svd_decode(arrays, layout, [a.shape for a in start])
        metrics = {"partition_id": pid, "train_loss": 1.0, "client_time_s": 0.1, "svd_layout": json.dumps(layout)}
        results.append((None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, metrics)))
    strategy.start_round(1, [0, 1], start)
    strategy.aggregate_fit(1, results, [])
    for i, new in enumerate(strategy.latest_parameters):
        np.testing.assert_allclose(new, start[i] + (decoded[0][i] + 3 * decoded[1][i]) / 4, rtol=1e-5, atol=1e-6)


def test_mentor_flops_are_counted_apart_from_the_mentees(first_fit) -> None:
    metrics = first_fit[1].metrics
    shape = (16, 3, 32, 32)
    assert metrics["steps"] == 2
    assert metrics["mentor_flops"] == 2 * training_step_flops(build_model("resnet32"), shape)
    assert metrics["train_flops"] == 2 * training_step_flops(build_model("resnet20"), shape)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"model": {"name": "tiny_cnn"}}, r"key 'model.name': value 'tiny_cnn' has no stages layer1, layer2, layer3"),
        ({"fedkd": {"mentor": "mobilenet_v2"}}, r"key 'fedkd.mentor': value 'mobilenet_v2' has no stages"),
        ({"fedkd": {"mentor": "resnet9"}}, r"key 'fedkd.mentor': value 'resnet9' is not allowed; choose one of"),
        ({"fedkd": {"energy_start": 0}}, r"key 'fedkd.energy_start': value 0.0 is out of range"),
        ({"fedkd": {"energy_end": 1.5}}, r"key 'fedkd.energy_end': value 1.5 is out of range"),
    ],
)
def test_fedkd_keys_are_validated_in_one_line(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        validate({"strategy": {"name": "fedkd"}, **override})
    assert "\n" not in str(info.value)


def test_fedkd_defaults_are_the_reference_code() -> None:
    config = validate({"strategy": {"name": "fedkd"}})
    assert config["fedkd"] == {"mentor": "resnet32", "energy_start": 0.95, "energy_end": 0.98}
