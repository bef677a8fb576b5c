"""FedMPQ client and strategy without a Flower runtime: what is sent, counted, averaged, allocated."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

from fedmpq_flwr.config import ConfigError, validate
from fedmpq_flwr.methods.fedmpq import FedMPQClient, FedMPQStrategy
from fedmpq_flwr.models import build_model
from fedmpq_flwr.quant import quantizable_layers
from fedmpq_flwr.quant.allocation import average_bitwidth
from fedmpq_flwr.rundir.results import BIT_ASSIGNMENTS_FILE
from fedmpq_flwr.server.update import ClientUpdate


def test_resnet20_upload_bits_match_the_analytic_count(tmp_path: Path, fedmpq_config, fl) -> None:
    """A real client update of ResNet-20: N bits per quantized weight, 32 per other float and scale."""
    config = fedmpq_config(model="resnet20")
    strategy = fl.strategy(config)
    res = fl.fit_result(FedMPQClient(config, 2, 4), strategy, pid=2)
    bits = json.loads(res.metrics["bits"])
    model = build_model("resnet20")
    state = model.state_dict()
    quantized = {f"{layer}.{leaf}" for layer in bits for leaf in ("weight", "bias") if f"{layer}.{leaf}" in state}
    assert len(quantized) == 21  # 19 convolutions, the classifier weight and its bias
    expected = sum(state[key].numel() * bits[key.rsplit(".", 1)[0]] for key in quantized)
    other_floats = sum(v.numel() for k, v in state.items() if v.is_floating_point() and k not in quantized)
    # BatchNorm: 4 tensors x channels, 7 BN layers per width (with the shortcut BNs); two 1x1 shortcuts
    assert other_floats == 4 * 7 * (16 + 32 + 64) + 16 * 32 + 32 * 64
    expected += 32 * (other_floats + len(quantized))
    assert strategy.upload_bits(ClientUpdate.from_fit_res(res, strategy.encoded_metrics)) == expected
    # the downlink is the float global model
    assert strategy.download_bits(strategy.latest_parameters, 2) == 32 * sum(
        v.numel() for v in state.values() if v.is_floating_point()
    )


def test_client_update_is_deterministic_and_on_the_grid(tmp_path: Path, fedmpq_config, fl) -> None:
    config = fedmpq_config()
    strategy = fl.strategy(config)
    client = FedMPQClient(config, 0, 4)
    first, second = fl.fit_result(client, strategy, 0), fl.fit_result(client, strategy, 0)
    for a, b in zip(parameters_to_ndarrays(first.parameters), parameters_to_ndarrays(second.parameters)):
        np.testing.assert_array_equal(a, b)
    assert first.metrics == {**second.metrics, "client_time_s": first.metrics["client_time_s"]}
    bits = json.loads(first.metrics["bits"])
    assert set(bits) == set(quantizable_layers(build_model("tiny_cnn")))
    arrays = parameters_to_ndarrays(first.parameters)
    codes = [a for a in arrays if a.dtype == np.int16]
    assert len(codes) == 4  # conv1, conv2, fc weight, fc bias
    for layer, code in zip(["conv1", "conv2", "fc", "fc"], codes):
        assert np.abs(code).max() <= 2 ** bits[layer] - 1
    assert first.metrics["bit_loss"] > 0 and first.metrics["train_loss"] == pytest.approx(
        first.metrics["task_loss"] + first.metrics["bit_loss"]
    )


def test_aggregate_decodes_averages_and_reallocates(tmp_path: Path, fedmpq_config, fl) -> None:
    config = fedmpq_config()
    strategy = fl.strategy(config)
    layer_sizes = strategy.layer_sizes
    assert strategy.bits[0] == {"conv1": 2, "conv2": 2, "fc": 2}  # round 1: the budget in every layer
    results = [(None, fl.fit_result(FedMPQClient(config, pid, 4), strategy, pid)) for pid in (3, 1)]
    strategy.start_round(1, [1, 3], strategy.latest_parameters)
    parameters, _ = strategy.aggregate_fit(1, results, [])
    by_pid = {int(res.metrics["partition_id"]): res for _, res in results}
    decoded = {}
    for pid, res in by_pid.items():
        arrays = parameters_to_ndarrays(res.parameters)
        bits = json.loads(res.metrics["bits"])
        scales, index, out = arrays[-1], 0, []
        for key, array in zip(strategy.float_keys, arrays[:-1]):
            layer = key.rsplit(".", 1)[0]
            if array.dtype == np.int16:
                out.append(scales[index] * array / (2 ** bits[layer] - 1))
                index += 1
            else:
                out.append(array)
        decoded[pid] = out
    n1, n3 = by_pid[1].num_examples, by_pid[3].num_examples
    for got, a, b in zip(parameters_to_ndarrays(parameters), decoded[1], decoded[3]):
        np.testing.assert_allclose(got, (n1 * a + n3 * b) / (n1 + n3), rtol=1e-5, atol=1e-6)
    # every client (sampled or not) has a new assignment that fits its budget
    assert sorted(strategy.bits) == [0, 1, 2, 3]
    for pid, budget in strategy.budgets.items():
        assert average_bitwidth(strategy.bits[pid], layer_sizes) <= budget + 1e-9
    record = {"bits_up": strategy.current.fit.bits_up, **strategy.current.fit.fields}
    assert [c["partition_id"] for c in record["clients"]] == [1, 3]
    assert record["clients"][0]["budget"] == 3.0 and record["clients"][1]["bits_up"] == strategy.upload_bits(
        ClientUpdate.from_fit_res(by_pid[3], strategy.encoded_metrics)
    )
    assert record["bits_up"] == sum(c["bits_up"] for c in record["clients"])


def test_uniform_weighting_ignores_sample_counts(tmp_path: Path, fedmpq_config, fl) -> None:
    config = fedmpq_config()
    config["strategy"]["weighting"] = "uniform"
    strategy = fl.strategy(config)
    shapes = [w.shape for w in strategy.latest_parameters]
    updates = [
        ClientUpdate(pid, [np.full(s, float(pid), np.float32) for s in shapes], n, {}) for pid, n in ((1, 10), (3, 90))
    ]
    for array in super(FedMPQStrategy, strategy).aggregate(updates):
        np.testing.assert_allclose(array, 2.0)


def test_evaluation_reports_quantized_accuracy_and_final_assignments(tmp_path: Path, fedmpq_config, fl) -> None:
    strategy = fl.strategy(fedmpq_config())
    strategy.start_round(1, [0], strategy.latest_parameters)
    strategy.evaluate(1, ndarrays_to_parameters(strategy.latest_parameters))
    record = json.loads((tmp_path / "unit" / "metrics.jsonl").read_text())
    accuracies = record["quant_test_accuracy"]
    assert sorted(accuracies) == ["0", "1", "2", "3"]
    assert record["quant_test_accuracy_mean"] == pytest.approx(np.mean(list(accuracies.values())))
    assert record["quant_test_accuracy_min"] == min(accuracies.values())
    strategy.save_outputs()
    saved = json.loads((tmp_path / "unit" / BIT_ASSIGNMENTS_FILE).read_text())
    assert saved["layer_params"] == {"conv1": 864, "conv2": 18432, "fc": 650}
    assert saved["clients"]["3"] == {"budget": 5.0, "avg_bits": 5.0, "bits": {"conv1": 5, "conv2": 5, "fc": 5}}


def test_budget_errors_are_one_line_config_errors(tmp_path: Path, fedmpq_config, fl) -> None:
    assert fedmpq_config(quant=dict(budgets="2, 3,4,5"))["quant"]["budgets"] == [2, 3, 4, 5]
    with pytest.raises(ConfigError, match=r"key 'quant.budgets'.*4 entries.*num_clients = 4|3 entries"):
        fedmpq_config(quant=dict(budgets=[2, 3, 4]))
    with pytest.raises(ConfigError, match=r"key 'quant.budgets'.*entry 9.*\[1, 8\]"):
        fedmpq_config(quant=dict(budgets=[2, 3, 4, 9]))
    with pytest.raises(ConfigError, match=r"key 'quant.budgets'.*entry 'x'"):
        fedmpq_config(quant=dict(budgets="2,3,x,4"))
    with pytest.raises(ConfigError, match=r"key 'quant.avg_bits'.*conflicts with quant.budgets"):
        fedmpq_config(quant=dict(avg_bits=3))
    assert fedmpq_config(quant=dict(avg_bits=3.5))["quant"]["avg_bits"] == 3.5  # equals the budgets' mean
    config = fedmpq_config()
    config["federation"]["num_clients"] = 5  # the federation has 5 nodes, the config 4 budgets
    with pytest.raises(ConfigError, match=r"key 'quant.budgets'.*4 entries.*num_clients = 5"):
        validate(config)


def test_final_features_of_the_float_and_the_most_compressed_model(tmp_path: Path, fedmpq_config, fl) -> None:
    strategy = fl.strategy(fedmpq_config())
    strategy.save_outputs()
    features = np.load(tmp_path / "unit" / "features.npz")
    labels = features["labels"]
    assert len(labels) == 40 and set(labels.tolist()) <= set(range(10))  # the whole 40-image test set
    np.testing.assert_array_equal(labels, strategy.data.y_test)  # a sorted subset: here all, in order
    assert features["float_features"].shape == features["quant_features"].shape == (40, 64)
    assert int(features["quant_partition"]) == 0  # budget 2, the smallest
    assert not np.allclose(features["float_features"], features["quant_features"])
    images, _ = strategy.evaluator.test_batches[0]  # the same images in the same order
    with torch.inference_mode():
        expected = strategy.model.eval().penultimate(images).numpy()
    np.testing.assert_allclose(features["float_features"][: len(images)], expected, rtol=1e-5, atol=1e-6)


def test_client_trains_the_scales_as_quant_scale_grad_says(fedmpq_config, fl) -> None:
    """`frozen`: the uploaded scales are max |w| of the received global model (nothing pruned with
    thre 0); `plain` and `lsq` train them, and differently (the same data, seed and planes' step)."""
    uploads = {}
    for mode in ("plain", "lsq", "frozen"):
        config = fedmpq_config(run_id=mode, quant={"scale_grad": mode, "thre": 0.0})
        strategy = fl.strategy(config)
        res = fl.fit_result(FedMPQClient(config, 3, 4), strategy, pid=3)
        uploads[mode] = parameters_to_ndarrays(res.parameters)[-1]
    global_state = dict(zip(strategy.float_keys, strategy.latest_parameters))
    quantized_keys = ["conv1.weight", "conv2.weight", "fc.weight", "fc.bias"]  # tiny CNN, in upload order
    expected = np.array([np.abs(global_state[key]).max() for key in quantized_keys], dtype=np.float32)
    np.testing.assert_array_equal(uploads["frozen"], expected)
    assert not np.allclose(uploads["plain"], expected) and not np.allclose(uploads["lsq"], expected)
    assert not np.allclose(uploads["plain"], uploads["lsq"])
    with pytest.raises(ConfigError, match="quant.scale_grad"):
        fedmpq_config(quant={"scale_grad": "LSQ"})
