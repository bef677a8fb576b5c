"""FedPAQ through its real strategy and clients, without Flower: what is sent, counted and averaged."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from flwr.common import parameters_to_ndarrays

from fedmpq_flwr.config import ConfigError
from fedmpq_flwr.methods.fedpaq import FedPAQClient
from fedmpq_flwr.models import build_model
from fedmpq_flwr.quant.qsgd import decode_model_update
from fedmpq_flwr.server.update import ClientUpdate
from fedmpq_flwr.training.weights import communicated_keys, trainable_mask


def paq_config(fedavg_config, weighting: str = "samples", **overrides):
    return fedavg_config(strategy={"name": "fedpaq", "weighting": weighting}, **overrides)


def analytic_bits(bits: int, bucket: int) -> int:
    """tiny_cnn by hand: `bits` per trainable coordinate and 32 per bucket of each trainable tensor,
    32 per BatchNorm running statistic."""
    model = build_model("tiny_cnn")
    state = model.state_dict()
    total = 0
    for key, trainable in zip(communicated_keys(model), trainable_mask(model)):
        numel = state[key].numel()
        total += numel * bits + 32 * math.ceil(numel / bucket) if trainable else 32 * numel
    return total


@pytest.mark.parametrize(("bits", "bucket"), [(4, 512), (2, 64), (8, 100000)])
def test_bits_up_equal_the_analytic_count(fedavg_config, fl, bits: int, bucket: int) -> None:
    config = paq_config(fedavg_config, paq={"bits": bits, "bucket": bucket})
    strategy = fl.strategy(config)
    res = fl.fit_result(FedPAQClient(config, 3, 10), strategy, 3)
    upload = parameters_to_ndarrays(res.parameters)
    assert strategy.upload_bits(ClientUpdate.from_fit_res(res)) == analytic_bits(bits, bucket)
    fedavg_bits = 32 * sum(a.size for a in strategy.latest_parameters)
    # about paq.bits / 32 of FedAvg: plus a float32 norm per bucket and the raw BatchNorm statistics (1 %)
    assert bits / 32 < analytic_bits(bits, bucket) / fedavg_bits < (bits + 32 / bucket) / 32 + 0.012
    levels = [a for a, q in zip(upload, trainable_mask(build_model("tiny_cnn"))) if q]
    assert all(a.dtype == np.int8 and int(np.abs(a).max()) <= 2 ** (bits - 1) - 1 for a in levels)


def test_uploads_are_seeded_per_round_and_partition(fedavg_config, fl) -> None:
    config = paq_config(fedavg_config)
    strategy = fl.strategy(config)

    def upload(pid: int, server_round: int) -> list[np.ndarray]:
        return parameters_to_ndarrays(
            fl.fit_result(FedPAQClient(config, pid, 10), strategy, pid, server_round).parameters
        )

    first, again, later = upload(2, 1), upload(2, 1), upload(2, 2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, later))


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
def test_server_adds_the_weighted_mean_of_the_decoded_updates(fedavg_config, fl, weighting: str) -> None:
    """x_new = x + sum_k w_k Q(d_k), decoded against the model sent this round; BatchNorm statistics
    (sent raw) averaged with the same weights."""
    config = paq_config(fedavg_config, weighting)
    strategy = fl.strategy(config)
    sent = [a.copy() for a in strategy.latest_parameters]
    strategy.start_round(1, [1, 6], sent)
    results = [(None, fl.fit_result(FedPAQClient(config, pid, 10), strategy, pid)) for pid in (6, 1)]
    new, _ = strategy.aggregate_fit(1, results, [])
    mask = trainable_mask(build_model("tiny_cnn"))
    shares = np.array([1.0 if weighting == "uniform" else res.num_examples for _, res in results], dtype=float)
    shares /= shares.sum()
    decoded = [decode_model_update(parameters_to_ndarrays(res.parameters), sent, mask) for _, res in results]
    for i, (got, x) in enumerate(zip(parameters_to_ndarrays(new), sent)):
        mean_update = sum(share * (d[i].astype(np.float64) - x) for share, d in zip(shares, decoded))
        np.testing.assert_allclose(got, x + mean_update, rtol=1e-5, atol=1e-6)
        if not mask[i]:  # raw values: the weighted mean of the clients' local statistics
            raw = [parameters_to_ndarrays(res.parameters)[i] for _, res in results]
            np.testing.assert_allclose(got, sum(s * r for s, r in zip(shares, raw)), rtol=1e-5, atol=1e-6)


def test_rounds_record_the_quantized_upload(fedavg_config, fl) -> None:
    config = paq_config(fedavg_config)
    records, weights = fl.run(config, rounds=2, participants=[[0, 4, 9], [2, 4]])
    per_client = analytic_bits(4, 512)
    assert [r["bits_up"] for r in records] == [3 * per_client, 2 * per_client]
    assert all(c["bits_up"] == per_client for r in records for c in r["clients"])
    fedavg_down = 32 * sum(a.size for a in weights)
    assert [r["bits_down"] for r in records] == [3 * fedavg_down, 2 * fedavg_down]
    assert all(np.all(np.isfinite(a)) for a in weights)


@pytest.mark.parametrize(
    ("paq", "key"), [({"bits": 1}, "paq.bits"), ({"bits": 9}, "paq.bits"), ({"bucket": 0}, "paq.bucket")]
)
def test_bad_paq_settings_are_config_errors(fedavg_config, paq: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^key '{key}'.*out of range"):
        paq_config(fedavg_config, paq=paq)


def test_defaults(fedavg_config, tmp_path: Path) -> None:
    assert paq_config(fedavg_config)["paq"] == {"bits": 4, "bucket": 512}
