"""FedPQ (fixed-precision quantized FedAvg) through its real strategy and clients, without Flower."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

from fedmpq_flwr.config import ConfigError
from fedmpq_flwr.methods.fedpq import FedPQClient
from fedmpq_flwr.models import build_model
from fedmpq_flwr.quant import quantizable_layers
from fedmpq_flwr.quant.payload import upload_bits
from fedmpq_flwr.rundir.results import BIT_ASSIGNMENTS_FILE
from fedmpq_flwr.server.update import ClientUpdate
from fedmpq_flwr.training.weights import communicated_keys

BUDGETS = [2, 3, 4, 5]  # fedmpq_config's


def test_every_layer_stays_at_the_budget_in_every_round(tmp_path: Path, fedmpq_config, fl) -> None:
    """quant.thre = 100 would make a FedMPQ client prune (almost) every plane: FedPQ keeps them all,
    and the server never re-allocates, so every layer of client k runs at budget k in every round."""
    config = fedmpq_config(method="fedpq", quant={"thre": 100.0})
    layers = list(quantizable_layers(build_model("tiny_cnn")))
    records, _ = fl.run(config, rounds=3, participants=[[0, 1, 2, 3], [1, 3], [0, 2]])
    for record in records:
        for client in record["clients"]:
            budget = BUDGETS[client["partition_id"]]
            uniform = dict.fromkeys(layers, budget)
            assert client["bits"] == uniform and client["assigned_bits"] == uniform
            assert client["reductions"] == dict.fromkeys(layers, 0)
            assert client["avg_bits"] == budget and client["budget"] == budget
        assert record["next_avg_bits"] == {str(pid): float(b) for pid, b in enumerate(BUDGETS)}
        assert sorted(record["quant_test_accuracy"]) == ["0", "1", "2", "3"]
    # FedMPQ, same setting: its clients prune and its server moves bits between layers
    mpq, _ = fl.run(fedmpq_config(quant={"thre": 100.0}, run_id="mpq"), rounds=1)
    assert any(any(client["reductions"].values()) for client in mpq[0]["clients"])


def test_final_bit_assignments_are_the_budgets(tmp_path: Path, fedmpq_config, fl) -> None:
    config = fedmpq_config(method="fedpq")
    strategy = fl.strategy(config)
    for server_round in (1, 2):
        strategy.start_round(server_round, [0, 3], strategy.latest_parameters)
        results = [(None, fl.fit_result(FedPQClient(config, pid, 4), strategy, pid, server_round)) for pid in (0, 3)]
        strategy.aggregate_fit(server_round, results, [])
        strategy.evaluate(server_round, ndarrays_to_parameters(strategy.latest_parameters))
    strategy.save_outputs()
    saved = json.loads((tmp_path / "unit" / BIT_ASSIGNMENTS_FILE).read_text())
    for pid, budget in enumerate(BUDGETS):
        assert saved["clients"][str(pid)] == {
            "budget": float(budget),
            "avg_bits": float(budget),
            "bits": {"conv1": budget, "conv2": budget, "fc": budget},
        }


def test_upload_is_about_budget_over_32_of_fedavg(tmp_path: Path, fedmpq_config, fl) -> None:
    """bits_up of client k = budget_k bits per quantized weight and bias + 32 per other float and
    per scale (quant.payload.upload_bits), i.e. about budget/32 of FedAvg's 32 bits per float."""
    config = fedmpq_config(method="fedpq")
    strategy = fl.strategy(config)
    model = build_model("tiny_cnn")
    state = model.state_dict()
    floats = sum(state[key].numel() for key in communicated_keys(model))
    quantized = sum(state[f"{layer}.{leaf}"].numel() for layer in ("conv1", "conv2", "fc") for leaf in ("weight",))
    quantized += state["fc.bias"].numel()
    scales = 4  # conv1, conv2, fc weight, fc bias
    for pid, budget in enumerate(BUDGETS):
        res = fl.fit_result(FedPQClient(config, pid, 4), strategy, pid)
        weights = parameters_to_ndarrays(res.parameters)
        bits = dict.fromkeys(("conv1", "conv2", "fc"), budget)
        expected = budget * quantized + 32 * (floats - quantized + scales)
        assert (
            strategy.upload_bits(ClientUpdate.from_fit_res(res, strategy.encoded_metrics))
            == upload_bits(weights, strategy.float_keys, bits)
            == expected
        )
        fedavg_bits = 32 * floats
        assert budget / 32 < expected / fedavg_bits < budget / 32 + 0.02
        codes = [a for a in weights if a.dtype == np.int16]
        assert len(codes) == scales and max(int(np.abs(c).max()) for c in codes) <= 2**budget - 1


@pytest.mark.parametrize(
    ("quant", "message"),
    [
        ({"budgets": [2, 3.5, 4, 5]}, r"^key 'quant.budgets': value \[2, 3.5, 4, 5\] has entry 3.5; fedpq"),
        ({"budgets": [], "avg_bits": 3.5}, r"^key 'quant.avg_bits': value 3.5 is not a whole number; .*quant.budgets"),
    ],
)
def test_a_fractional_budget_is_a_one_line_config_error(fedmpq_config, quant: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        fedmpq_config(method="fedpq", quant=quant)
    assert "\n" not in str(info.value)
    assert fedmpq_config(method="fedmpq", quant=quant)["quant"]  # FedMPQ allocates fractional budgets
