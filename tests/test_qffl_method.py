"""q-FFL's client and strategy (fedmpq_flwr.methods.qffl) without Flower: F_k, h_k, the server step,
bits and the FLOPs of the F_k pass; q = 0 is uniform FedAvg."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.common import parameters_to_ndarrays
from torch.utils.flop_counter import FlopCounterMode

from fedmpq_flwr.config import ConfigError
from fedmpq_flwr.data.load import load_data
from fedmpq_flwr.data.loaders import eval_loader
from fedmpq_flwr.data.partition import partition_indices
from fedmpq_flwr.methods import qffl_update
from fedmpq_flwr.methods.qffl import QFFLClient
from fedmpq_flwr.models import build_model
from fedmpq_flwr.training.loop import loss_and_accuracy
from fedmpq_flwr.training.weights import set_weights, trainable_mask


def qffl_config(fedavg_config, q: float, **overrides):
    return fedavg_config(strategy={"name": "qffl"}, qffl={"q": q}, **overrides)


def test_q0_equals_uniform_fedavg(fedavg_config, fl) -> None:
    """Same seed, same participants: q-FFL with q = 0 and FedAvg with uniform weighting end at the
    same global model (to float32 precision) and the same accuracy in every round."""
    participants = [[0, 3, 5, 8], [1, 3, 4, 9], [0, 2, 6, 7]]
    qffl_records, qffl_weights = fl.run(qffl_config(fedavg_config, 0.0, run_id="q0"), 3, participants)
    fedavg = fedavg_config(run_id="fedavg", strategy={"weighting": "uniform"})
    fedavg_records, fedavg_weights = fl.run(fedavg, 3, participants)
    for a, b in zip(qffl_weights, fedavg_weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(qffl_records, fedavg_records):
        assert mine["test_accuracy"] == pytest.approx(theirs["test_accuracy"], abs=1e-9)
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-6)
        assert all(c["qffl_h"] == pytest.approx(1 / 0.1) for c in mine["clients"])  # h_k = L = 1/train.lr at q = 0
    # and sample weighting is a different model (the partitions have different sizes)
    _, weighted = fl.run(fedavg_config(run_id="samples"), 3, participants)
    assert not all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(qffl_weights, weighted))


@pytest.mark.parametrize("lipschitz_scale", [1.0, 0.1])
def test_client_reports_f_k_of_the_received_model_and_h_k(fedavg_config, fl, lipschitz_scale) -> None:
    """h_k uses L = qffl.lipschitz_scale / train.lr (the authors' 1/lr at scale 1)."""
    q, pid = 2.0, 4
    config = fedavg_config(strategy={"name": "qffl"}, qffl={"q": q, "lipschitz_scale": lipschitz_scale})
    lipschitz = lipschitz_scale / config["train"]["lr"]
    strategy = fl.strategy(config)
    res = fl.fit_result(QFFLClient(config, pid, 10), strategy, pid)
    # F_k by hand: the global model on the client's whole partition, eval mode, no augmentation
    data = load_data(config["dataset"])
    idx = partition_indices(data.y_train, 10, config["dataset"]["alpha"], config["dataset"]["seed"])[pid]
    model = build_model("tiny_cnn")
    set_weights(model, strategy.latest_parameters)
    loss = loss_and_accuracy(
        model, eval_loader(data.x_train[idx], data.y_train[idx], 128, mean=data.mean, std=data.std), torch.device("cpu")
    )[0]
    assert res.metrics["qffl_loss"] == pytest.approx(loss, rel=1e-6)
    assert res.num_examples == len(idx)
    # h_k from the uploaded Delta_k = F^q L (w - w_k): q F^(q-1) ||Delta / F^q||^2 + L F^q
    mask = trainable_mask(model)
    deltas = [a.astype(np.float64) for a, t in zip(parameters_to_ndarrays(res.parameters), mask) if t]
    squared = sum(float(np.sum((d / loss**q) ** 2)) for d in deltas)
    assert res.metrics["qffl_h"] == pytest.approx(q * loss ** (q - 1) * squared + lipschitz * loss**q, rel=1e-4)
    # the F_k pass costs one forward per image, reported apart from the training FLOPs
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, 32, 32))
    assert res.metrics["eval_flops"] == len(idx) * counter.get_total_flops()
    assert res.metrics["train_flops"] > 0


def test_server_step_and_bits(fedavg_config, fl) -> None:
    """w - sum Delta_k / sum h_k on trainable tensors, uniform mean of BatchNorm statistics; bits up
    are FedAvg's plus one float32 (h_k) per client; rounds sum the clients' eval FLOPs."""
    config = qffl_config(fedavg_config, 1.0)
    strategy = fl.strategy(config)
    sent = [a.copy() for a in strategy.latest_parameters]
    strategy.start_round(1, [2, 7], sent)
    results = [(None, fl.fit_result(QFFLClient(config, pid, 10), strategy, pid)) for pid in (7, 2)]
    new, _ = strategy.aggregate_fit(1, results, [])
    uploads = [
        parameters_to_ndarrays(res.parameters) for _, res in sorted(results, key=lambda r: r[1].metrics["partition_id"])
    ]
    hs = [res.metrics["qffl_h"] for _, res in sorted(results, key=lambda r: r[1].metrics["partition_id"])]
    mask = trainable_mask(build_model("tiny_cnn"))
    expected = qffl_update.aggregate(sent, uploads, hs, mask)
    for got, want in zip(parameters_to_ndarrays(new), expected):
        np.testing.assert_array_equal(got, want)
    for i, trainable in enumerate(mask):
        if trainable:
            step = (uploads[0][i].astype(np.float64) + uploads[1][i]) / (hs[0] + hs[1])
            np.testing.assert_allclose(expected[i], sent[i] - step, rtol=1e-5, atol=1e-7)
        else:
            np.testing.assert_allclose(expected[i], (uploads[0][i] + uploads[1][i]) / 2, rtol=1e-6)
    floats = sum(a.size for a in sent)
    fit = strategy.current.fit
    assert [c["bits_up"] for c in fit.fields["clients"]] == [32 * floats + 32] * 2
    assert fit.fields["eval_flops"] == sum(c["eval_flops"] for c in fit.fields["clients"])


def test_q_must_be_non_negative(fedavg_config) -> None:
    assert qffl_config(fedavg_config, 0.0)["qffl"]["q"] == 0.0
    assert fedavg_config(strategy={"name": "qffl"})["qffl"]["q"] == 1.0
    with pytest.raises(ConfigError, match=r"^key 'qffl.q': value -0.5 is out of range"):
        qffl_config(fedavg_config, -0.5)


def test_h_k_uses_the_learning_rate_of_the_round(fedavg_config, fl) -> None:
    """With a warm-up the round's lr is not `train.lr`: at q = 0, h_k = L = scale / (the lr the client
    trained with), round by round."""
    config = qffl_config(fedavg_config, 0.0, train={"lr": 0.1, "warmup_rounds": 3})
    records, _ = fl.run(config, rounds=2)
    for server_round, record in enumerate(records, start=1):
        lr = 0.1 * server_round / 3  # linear warm-up over the first 3 rounds
        assert all(c["qffl_h"] == pytest.approx(1 / lr) for c in record["clients"])
