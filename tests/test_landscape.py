"""Loss-landscape snapshots: the directions and grids (training/landscape.py), the `diagnostics` keys, the
server's landscape.npz (server/diagnostics.py) and the analyzer's figures, end to end without Flower."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedmpq_flwr.analysis import cli as analyzer
from fedmpq_flwr.analysis.figures import TOPICS, Context, landscape_figures
from fedmpq_flwr.analysis.runs import find_run_dirs, load_run
from fedmpq_flwr.config import ConfigError, flatten, unflatten, validate, write_config
from fedmpq_flwr.config.flower import to_flower_run_config
from fedmpq_flwr.data.load import load_data
from fedmpq_flwr.models import build_model
from fedmpq_flwr.rundir.results import CONFIG_FILE, LANDSCAPE_FILE, RunRecorder, landscape_key
from fedmpq_flwr.server.diagnostics import LandscapeSnapshots, direction_seed, median_client
from fedmpq_flwr.server.evaluation import ServerEvaluator
from fedmpq_flwr.training.landscape import (
    grid_coordinates,
    line_coordinates,
    loss_grid,
    loss_line,
    random_directions,
)
from fedmpq_flwr.training.loop import loss_and_accuracy

CPU = torch.device("cpu")


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip


def tiny_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(12, 3, 6, 6, generator=generator), torch.arange(12) % 3
    return [(images[:5], labels[:5]), (images[5:], labels[5:])]


def test_directions_are_filter_normalized_and_skip_biases_and_batchnorm() -> None:
    model = tiny_net()
    first, second = random_directions(model, seed=7)
    parameters = dict(model.named_parameters())
    assert set(first) == set(second) == {"0.weight", "5.weight"}  # no bias, no BatchNorm weight or bias
    for name, direction in [*first.items(), *second.items()]:
        weight = parameters[name]
        assert direction.shape == weight.shape
        assert torch.allclose(direction.flatten(1).norm(dim=1), weight.flatten(1).norm(dim=1), rtol=1e-5)
    assert not torch.allclose(first["0.weight"], second["0.weight"])


def test_same_seed_same_directions_and_the_round_changes_them() -> None:
    model = tiny_net()
    again = random_directions(model, seed=7)
    for one, two in zip(random_directions(model, seed=7), again):
        assert all(torch.equal(one[name], two[name]) for name in one)
    other = random_directions(model, seed=8)[0]
    assert not torch.equal(other["0.weight"], again[0]["0.weight"])
    assert direction_seed(3, 5) == direction_seed(3, 5) != direction_seed(3, 6)
    assert direction_seed(3, 5) != direction_seed(4, 5)


def test_grid_centre_is_the_models_own_loss_and_the_model_does_not_move() -> None:
    model, batches = tiny_net(), tiny_batches()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    coords = grid_coordinates(5)
    assert coords.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    loss, accuracy = loss_grid(model, random_directions(model, seed=2), coords, batches, CPU)
    assert loss.shape == accuracy.shape == (5, 5)
    assert (loss[2, 2], accuracy[2, 2]) == loss_and_accuracy(model, batches, CPU)
    assert loss.max() > loss[2, 2]  # steps of the filters' own size change the loss
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_line_runs_from_the_start_weights_to_the_model() -> None:
    model, batches = tiny_net(), tiny_batches()
    start = {name: torch.zeros_like(p) for name, p in model.named_parameters() if name == "5.weight"}
    loss, accuracy = loss_line(model, start, line_coordinates(3), batches, CPU)
    assert line_coordinates(3).tolist() == [0.0, 0.5, 1.0]
    assert (loss[-1], accuracy[-1]) == loss_and_accuracy(model, batches, CPU)
    moved = tiny_net()
    with torch.no_grad():
        moved[5].weight.zero_()
    assert (loss[0], accuracy[0]) == loss_and_accuracy(moved, batches, CPU)


def test_the_line_starts_at_the_median_client() -> None:
    assert median_client({0: 2.0, 1: 5.0, 2: 3.0, 3: 4.0}) == 2  # lower median of an even count
    assert median_client({0: 4.0, 1: 2.0, 2: 4.0}) == 0  # ties: the smaller partition id
    assert median_client({5: 3.0}) == 5


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("landscape", "yes", "key 'diagnostics.landscape': value 'yes' has type str; expected bool"),
        ("landscape_points", 10, "key 'diagnostics.landscape_points': value 10 is out of range; expected an odd int"),
        ("landscape_points", 1, "value 1 is out of range; expected an odd int >= 3"),
        ("landscape_points", 11.0, "value 11.0 has type float; expected int, an odd int >= 3"),
        ("landscape_images", 0, "key 'diagnostics.landscape_images': value 0 is out of range; expected a number in"),
        ("landscape_images", -4, "value -4 is out of range"),
        ("landscape_rounds", [0, 2], "value [0, 2] has entry 0 outside 1..train.num_rounds = 4"),
        ("landscape_rounds", [2, 5], "key 'diagnostics.landscape_rounds': value [2, 5] has entry 5 outside"),
        ("landscape_rounds", [1.5], "value [1.5] has entry 1.5; expected a list of whole round numbers"),
        ("landscape_rounds", [True], "value [True] has entry True"),
        ("landscape_rounds", "2,x", "value '2,x' has entry 'x'"),
        ("landscape_rounds", 3, "value 3 is not a list"),
    ],
)
def test_bad_diagnostics_values_are_one_line_errors(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate({"train": {"num_rounds": 4}, "diagnostics": {key: value}})
    text = str(caught.value)
    assert message in text and "\n" not in text, text


def test_diagnostics_defaults_and_the_flower_run_config() -> None:
    assert validate({})["diagnostics"] == {
        "landscape": False,
        "landscape_rounds": [],
        "landscape_points": 11,
        "landscape_images": 1000,
    }
    config = validate({"train": {"num_rounds": 9}, "diagnostics": {"landscape": True, "landscape_rounds": [9, 3, 3]}})
    assert config["diagnostics"]["landscape_rounds"] == [3, 9]
    flat = to_flower_run_config(config)
    assert flat["diagnostics.landscape_rounds"] == "3,9"
    assert validate(unflatten(flat)) == config
    assert (
        validate(unflatten({**flatten(config), "diagnostics.landscape_rounds": ""}))["diagnostics"]["landscape_rounds"]
        == []
    )


def test_snapshots_change_neither_model_nor_random_state_and_survive_a_resume(fedmpq_config, tmp_path: Path) -> None:
    config = fedmpq_config(diagnostics={"landscape": True, "landscape_points": 3, "landscape_images": 20})
    data = load_data(config["dataset"])
    evaluator = ServerEvaluator(data, 16, CPU)
    model = build_model("tiny_cnn", data.num_classes)
    snapshots = LandscapeSnapshots(config, evaluator, tmp_path, completed_rounds=0)
    assert snapshots.images == 20 and not snapshots.due(1) and snapshots.due(2)  # default: the last round
    before, rng = {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()
    record = snapshots.take(1, model, None)
    snapshots.take(2, model, None)
    assert set(record) == {"landscape_time_s"}
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with np.load(tmp_path / LANDSCAPE_FILE) as saved:
        assert saved["rounds"].tolist() == [1, 2] and int(saved["images"]) == 20
        assert saved[landscape_key(2, "loss")].shape == (3, 3) and landscape_key(2, "line_t") not in saved.files
    LandscapeSnapshots(config, evaluator, tmp_path, completed_rounds=1)  # resumed after round 1
    with np.load(tmp_path / LANDSCAPE_FILE) as saved:
        assert saved["rounds"].tolist() == [1]
    LandscapeSnapshots(config, evaluator, tmp_path, completed_rounds=0)  # started again
    assert not (tmp_path / LANDSCAPE_FILE).exists()


def finish(config: dict) -> Path:
    """Write what the ServerApp writes around the rounds that `fl.run` drove: config.yaml, results.json."""
    run_dir = Path(config["results_dir"]) / config["run_id"]
    write_config(config, run_dir / CONFIG_FILE)
    RunRecorder(run_dir, config["run_id"], completed_rounds=config["train"]["num_rounds"]).finish({})
    return run_dir


def test_fedmpq_and_fedmpq_kd_write_landscapes_that_the_analyzer_draws(fedmpq_config, fl) -> None:
    diagnostics = {"landscape": True, "landscape_points": 3}  # 1000 images: the whole (40-image) test set
    two_clients = {"federation": {"num_clients": 2}, "quant": {"budgets": [4, 2]}}
    for method in ("fedmpq", "fedmpq_kd"):
        config = fedmpq_config(method, run_id=method, diagnostics=diagnostics, **two_clients)
        records, _ = fl.run(config, rounds=2)
        assert "landscape_time_s" not in records[0] and records[1]["landscape_time_s"] > 0
        with np.load(finish(config) / LANDSCAPE_FILE) as saved:
            assert saved["rounds"].tolist() == [2] and int(saved["images"]) == 40
            loss = saved[landscape_key(2, "loss")]
            assert loss[1, 1] == pytest.approx(records[1]["test_loss"], rel=1e-9)  # the centre: the global model
            line_loss, line_accuracy = saved[landscape_key(2, "line_loss")], saved[landscape_key(2, "line_accuracy")]
            assert line_loss[-1] == loss[1, 1] and line_accuracy[-1] == saved[landscape_key(2, "accuracy")][1, 1]
            assert int(saved[landscape_key(2, "line_partition")]) == 1  # the lower median: the 2-bit client
            assert float(saved[landscape_key(2, "line_avg_bits")]) <= 2
            assert 0 <= float(saved[landscape_key(2, "quant_accuracy")]) <= 1
    results_dir = Path(config["results_dir"])
    comparison, groups = analyzer.build_comparison([load_run(d) for d in find_run_dirs(results_dir)])
    context = Context(results_dir, comparison["variations"], groups, comparison["methods"], comparison["robustness"])
    assert landscape_figures in TOPICS  # the analyzer draws them with the others
    figures = landscape_figures(context)
    names = ["loss_landscape_fedmpq", "loss_landscape_fedmpq_kd", "loss_landscape_fedmpq_kd_pair1"]
    assert [figure.name for figure in figures] == names
    (results_dir / "images").mkdir()
    for figure in figures:
        assert figure.draw is not None, figure.why
        figure.draw(results_dir / "images" / f"{figure.name}.pdf")
        assert (results_dir / "images" / f"{figure.name}.pdf").read_bytes().startswith(b"%PDF")
