"""The whole resolved config as flat Flower run-config keys, as the launcher and the deployment script
send it: the ServerApp and the ClientApps get the same validated config as from `config_file`, without
reading a file of the submitting machine; a node's own data path comes from its node config."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import get_fused_config_from_dir, parse_config_args

import fedmpq_flwr.client_app as client_app
from fedmpq_flwr.config import ConfigError, dump_yaml, from_flower_run_config, validate
from fedmpq_flwr.config.flower import app_defaults, flower_value, to_flower_run_config, write_run_config_toml
from fedmpq_flwr.runner.launcher import run_config_args

REPO = Path(__file__).resolve().parent.parent

CONFIGS: dict[str, dict[str, Any]] = {
    "bare flwr run defaults": app_defaults(),
    "fedmpq, budgets, infinite alpha, awkward strings": {
        "run_id": "mpq.budgets-1",
        "description": "it's a \"quoted\" description\nover two lines, with = and # and 'x=1 y=2'",
        "results_dir": "/tmp/results dir/it's here",
        "strategy": {"name": "fedmpq", "fraction_fit": 0.67},
        "model": {"name": "tiny_cnn"},
        "dataset": {"name": "cifar10", "source": "npz", "path": "/data/cifar 10", "alpha": "inf", "train_subset": 500},
        "quant": {"budgets": [3, 4, 5], "rounding": "nearest"},
        "federation": {"num_clients": 3, "device": "cpu", "client_gpus": 0.25},
        "seed": 7,
    },
    "fedmpq_kd, fractional budgets": {
        "strategy": {"name": "fedmpq_kd"},
        "dataset": {"alpha": 0.1, "label_noise": 0.2, "augment": False},
        "quant": {"budgets": [2.5, 4]},
        "kd": {"teacher": "updating", "refresh_every": 2, "temperature": 3.0},
        "train": {"lr": 1e-05, "weight_decay": 5e-4},
        "eval": {"every": 3, "quant_every": 2},
        "federation": {"num_clients": 2},
        "axis": "kd.temperature",
    },
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_flat_run_config_gives_the_config_of_config_file(name: str, tmp_path: Path) -> None:
    """Through Flower's own parsing: `flwr run --run-config FILE.toml` reads the file, the SuperLink fuses
    it with pyproject's declared keys (an undeclared key would raise), and the apps validate the result."""
    config = validate(CONFIGS[name])
    num_clients = config["federation"]["num_clients"]
    overrides = parse_config_args([str(write_run_config_toml(config, tmp_path / "run_config.toml"))])
    assert set(overrides) == set(to_flower_run_config(config))
    assert all(isinstance(value, bool | int | float | str) for value in overrides.values())
    fused = get_fused_config_from_dir(REPO, overrides)
    assert fused["config_file"] == ""  # the launcher no longer sends a path
    assert from_flower_run_config(fused, num_clients=num_clients) == config

    dump_yaml(config, str(tmp_path / "config.yaml"))
    from_file = from_flower_run_config({"config_file": str(tmp_path / "config.yaml")}, num_clients=num_clients)
    assert from_file == config  # `config_file` still works for a user's own simulation runs


def test_lists_and_infinity_travel_as_strings_that_validate_parses() -> None:
    config = validate(CONFIGS["fedmpq, budgets, infinite alpha, awkward strings"])
    flat = to_flower_run_config(config)
    assert flat["quant.budgets"] == "3,4,5" and flat["dataset.alpha"] == "inf"
    assert to_flower_run_config(validate({}))["quant.budgets"] == ""
    assert flower_value("quant.budgets", [2.5, 4]) == "2.5,4"
    assert math.isinf(validate({"dataset": {"alpha": flat["dataset.alpha"]}})["dataset"]["alpha"])
    with pytest.raises(ConfigError, match="key 'x'"):
        flower_value("x", {"nested": 1})


def test_the_launcher_passes_every_key_not_a_path(tmp_path: Path) -> None:
    config = validate(CONFIGS["fedmpq_kd, fractional budgets"])
    args = run_config_args(config, tmp_path)
    assert args[0] == "--run-config" and args[1].endswith(".toml") and len(args) == 2
    written = tomllib.loads(Path(args[1]).read_text())
    assert "config_file" not in written and written["kd"]["teacher"] == "updating"
    assert from_flower_run_config(parse_config_args([args[1]]), num_clients=2) == config


def test_a_node_data_path_replaces_dataset_path() -> None:
    """`flower-supernode --node-config "... data-path='/data/node 0'"`: that node reads its own copy."""
    node_config = parse_config_args(["partition-id=0 num-partitions=3 data-path='/data/node 0'"])
    assert node_config == {"partition-id": 0, "num-partitions": 3, "data-path": "/data/node 0"}
    raw = to_flower_run_config(validate(CONFIGS["fedmpq, budgets, infinite alpha, awkward strings"]))
    client_app._run_config.cache_clear()
    assert client_app.run_config(raw, 3, node_config["data-path"])["dataset"]["path"] == "/data/node 0"
    assert client_app.run_config(raw, 3)["dataset"]["path"] == "/data/cifar 10"
    assert client_app.run_config(raw, 3, "/data/node1")["quant"]["budgets"] == [3, 4, 5]


def test_a_node_data_path_also_overrides_a_config_file(tmp_path: Path) -> None:
    dump_yaml({"dataset": {"name": "cifar10", "source": "npz", "path": "/server/data"}}, str(tmp_path / "c.yaml"))
    raw = {"config_file": str(tmp_path / "c.yaml")}
    client_app._run_config.cache_clear()
    assert client_app.run_config(raw, 2, "/node/data")["dataset"]["path"] == "/node/data"


def test_client_fn_builds_the_client_from_run_config_and_node_config() -> None:
    """What a SuperNode's ClientApp process does: no config file, the node's own partition and data path."""
    from flwr.common import Context, RecordDict

    config = validate({"model": {"name": "tiny_cnn"}, "dataset": {"name": "synthetic", "path": "/server/data"}})
    node_config = {"partition-id": 1, "num-partitions": 3, "data-path": "/node1/data"}
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=raw_of(config))
    client_app._run_config.cache_clear()
    client = client_app.client_fn(context).numpy_client.inner  # the method's client inside its guard
    assert client.partition_id == 1 and client.num_partitions == 3
    assert client.config["dataset"]["path"] == "/node1/data" and client.config["federation"]["num_clients"] == 3


def raw_of(config: dict[str, Any]) -> dict[str, Any]:
    """The run config a ClientApp receives: pyproject's declared keys fused with the flat overrides."""
    return get_fused_config_from_dir(REPO, to_flower_run_config(config))
