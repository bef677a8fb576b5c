"""FedGKD without a Flower runtime: the buffer and its teacher on the server, the teacher travelling
with the fit instructions, the distillation term, and gamma 0 being FedAvg exactly."""

import json

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from fedmpq_flwr.client.guard import GuardedClient
from fedmpq_flwr.config import ConfigError, validate
from fedmpq_flwr.methods.fedgkd import FedGKDClient
from fedmpq_flwr.methods.history_teacher import TEACHER_ARRAYS, TEACHER_ROUNDS

# Fields only a distilling client reports (and their round-level means/sums).
KD_ONLY_KEYS = {"kd_loss", "agreement", "teacher_flops", "teacher_round", "teacher_models", "kd_gate_mean"}


def small(fedavg_config, **overrides):
    """FedAvg's tiny test run with 4 clients and 3 rounds."""
    return fedavg_config(train={"num_rounds": 3}, federation={"num_clients": 4}, **overrides)


def gkd_config(fedavg_config, **overrides):
    """The same run as FedGKD."""
    return small(fedavg_config, run_id="gkd", strategy={"name": "fedgkd"}, **overrides)


def model_floats(weights: list[np.ndarray]) -> int:
    return sum(int(array.size) for array in weights)


def test_gamma_zero_is_fedavg_exactly(fedavg_config, fl) -> None:
    """gkd.gamma 0: the teacher is sent and run, yet every logged number and the final global model
    equal FedAvg's; only the download grows, by the teacher, from round 3 on (in round 2 the buffer
    holds one model, the global model the clients receive anyway: nothing more is sent)."""
    fedavg, fedavg_weights = fl.run(small(fedavg_config), rounds=3)
    gkd, gkd_weights = fl.run(gkd_config(fedavg_config, gkd={"gamma": 0.0}), rounds=3)
    for a, b in zip(fedavg_weights, gkd_weights):
        np.testing.assert_array_equal(a, b)
    ignored = fl.varying_keys | KD_ONLY_KEYS | {"bits_down"}
    assert [fl.without(r, ignored) for r in fedavg] == [fl.without(r, ignored) for r in gkd]
    teacher_bits = 32 * model_floats(fedavg_weights)
    for server_round, (a, b) in enumerate(zip(fedavg, gkd), start=1):
        extra = 0 if server_round <= 2 else len(b["clients"]) * teacher_bits
        assert b["bits_down"] == a["bits_down"] + extra
        assert b["bits_up"] == a["bits_up"]
    assert "kd_loss" not in gkd[0] and all(r["kd_loss"] > 0 and 0 <= r["agreement"] <= 1 for r in gkd[1:])


def test_fedgkd_distils_from_round_two(fedavg_config, fl) -> None:
    """gamma 0.1, T 1: the loss is CE + 0.1 * KL, the model differs from FedAvg's, the teacher's FLOPs
    are counted apart, and the same bits go up."""
    fedavg, fedavg_weights = fl.run(small(fedavg_config), rounds=3)
    gkd, gkd_weights = fl.run(gkd_config(fedavg_config), rounds=3)
    assert any(not np.array_equal(a, b) for a, b in zip(fedavg_weights, gkd_weights))
    assert [r["bits_up"] for r in gkd] == [r["bits_up"] for r in fedavg]
    assert gkd[1]["bits_down"] == fedavg[1]["bits_down"]  # round 2: the teacher is the received model
    assert all(b["bits_down"] > a["bits_down"] for a, b in zip(fedavg[2:], gkd[2:]))
    assert gkd[0]["teacher_flops"] == 0 and all(c["teacher_flops"] == 0 for c in gkd[0]["clients"])
    for server_round, record in enumerate(gkd[1:], start=2):
        assert record["teacher_flops"] > 0
        for client in record["clients"]:
            assert client["train_loss"] == pytest.approx(client["task_loss"] + 0.1 * client["kd_loss"], rel=1e-5)
            assert (client["teacher_round"], client["teacher_models"]) == (server_round - 1, server_round - 1)
        # the student's FLOPs are FedAvg's: the teacher forward is counted apart
        assert record["train_flops"] == fedavg[server_round - 1]["train_flops"]


def test_a_buffer_of_one_sends_no_teacher_and_distils_from_the_received_model(fedavg_config, fl) -> None:
    """gkd.buffer 1: the teacher is the global model each client receives, so the server sends FedAvg's
    download only, and the clients still distil from round 2 on (from their copy of that model)."""
    fedavg, _ = fl.run(small(fedavg_config), rounds=3)
    gkd, _ = fl.run(gkd_config(fedavg_config, gkd={"buffer": 1}), rounds=3)
    assert [r["bits_down"] for r in gkd] == [r["bits_down"] for r in fedavg]
    for server_round, record in enumerate(gkd[1:], start=2):
        assert record["kd_loss"] > 0 and record["teacher_flops"] > 0
        assert all((c["teacher_round"], c["teacher_models"]) == (server_round - 1, 1) for c in record["clients"])


def fit_res(weights: list[np.ndarray], partition_id: int) -> FitRes:
    metrics = {"partition_id": partition_id, "train_loss": 1.0, "client_time_s": 0.1}
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), 1, metrics)


def test_the_teacher_is_the_average_of_the_last_m_global_models(fedavg_config, fl) -> None:
    """Buffer 2: in round t the teacher is the mean of w_{t-1} and w_{t-2} (w_0 never), sent after the
    global model's arrays, announced in the instructions and counted in bits_down."""
    strategy = fl.strategy(gkd_config(fedavg_config, gkd={"buffer": 2}))
    globals_ = {0: [a.copy() for a in strategy.latest_parameters]}
    size = len(globals_[0])
    for server_round in range(1, 5):
        sent = strategy.fit_arrays(server_round, strategy.latest_parameters)
        config = strategy.fit_config(server_round, 3)
        kept = [globals_[r] for r in range(max(1, server_round - 2), server_round)]
        assert config[TEACHER_ARRAYS] == (size if len(kept) >= 2 else 0)  # one model: the one received
        assert json.loads(config[TEACHER_ROUNDS]) == list(range(max(1, server_round - 2), server_round))
        for array, expected in zip(sent[:size], strategy.latest_parameters):
            np.testing.assert_array_equal(array, expected)
        if len(kept) >= 2:
            assert len(sent) == 2 * size
            for i, teacher in enumerate(sent[size:]):
                np.testing.assert_allclose(teacher, np.mean([m[i] for m in kept], axis=0), rtol=1e-6, atol=1e-6)
        else:
            assert len(sent) == size  # rounds 1 and 2: nothing extra
        strategy.start_round(server_round, [3, 5], sent)
        assert strategy.current.bits_down == 2 * 32 * model_floats(sent)
        new = [(a + server_round).astype(np.float32) for a in globals_[0]]
        strategy.aggregate_fit(server_round, [(None, fit_res(new, 3))], [])
        globals_[server_round] = new


def test_a_client_sampled_late_gets_the_servers_teacher(fedavg_config, fl) -> None:
    """Partition 1 takes part for the first time in round 3: it distils from the server's average of
    w_1 and w_2, which it never received, as partition 0 does."""
    config = gkd_config(fedavg_config)
    strategy = fl.strategy(config)
    states = {}
    for server_round, sampled in enumerate([[0], [0], [0, 1]], start=1):
        sent = strategy.fit_arrays(server_round, strategy.latest_parameters)
        strategy.start_round(server_round, sampled, sent)
        results = []
        for pid in sampled:
            client = GuardedClient(FedGKDClient(config, pid, 4, states.setdefault(pid, None)))
            weights, n, metrics = client.fit(sent, strategy.fit_config(server_round, pid))
            results.append((None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), n, metrics)))
            if server_round == 3:
                expected = strategy.history.teacher()
                assert strategy.history.rounds == [1, 2] and client.inner.teacher_rounds == [1, 2]
                for received, average in zip(client.inner.received_teacher, expected):
                    np.testing.assert_array_equal(received, average)
                assert metrics["teacher_round"] == 2 and metrics["teacher_models"] == 2 and metrics["kd_loss"] > 0
        strategy.aggregate_fit(server_round, results, [])


def test_a_wrong_teacher_announcement_is_an_error(fedavg_config, fl) -> None:
    config = gkd_config(fedavg_config)
    strategy = fl.strategy(config)
    parameters = strategy.latest_parameters
    with pytest.raises(ValueError, match="teacher arrays announced"):
        FedGKDClient(config, 0, 4).fit(parameters, {"server_round": 2, TEACHER_ARRAYS: len(parameters)})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("gamma", -0.1, r"key 'gkd.gamma': value -0.1 is out of range; expected a number in \[0, inf\)"),
        ("temperature", 0, r"key 'gkd.temperature': value 0.0 is out of range"),
        ("buffer", 0, r"key 'gkd.buffer': value 0 is out of range"),
    ],
)
def test_gkd_keys_are_validated(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate({"strategy": {"name": "fedgkd"}, "gkd": {key: value}})


def test_gkd_defaults_are_the_reference_readme() -> None:
    assert validate({"strategy": {"name": "fedgkd"}})["gkd"] == {
        "gamma": 0.1,
        "temperature": 1.0,
        "buffer": 5,
        "gate": "none",
    }
