"""Config schema: defaults, one-line errors, and the Flower app's declared keys."""

import math
import tomllib
from pathlib import Path

import pytest

from fedmpq_flwr.config import ConfigError, defaults, flatten, from_flower_run_config, schema, unflatten, validate

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_the_main_experiment() -> None:
    config = validate({})
    assert config["model"]["name"] == "resnet20"
    assert config["train"] == {
        "num_rounds": 50,
        "local_epochs": 1,
        "batch_size": 64,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "eval_batch_size": 128,
        "optimizer": "sgd",
        "warmup_rounds": 0,
        "lr_schedule": "constant",
        "channels_last": False,
        "amp": "off",
    }
    assert config["dataset"]["alpha"] == 0.5 and config["federation"]["num_clients"] == 10
    assert config["federation"]["dropout"] == 0.0
    assert config["eval"] == {"every": 1, "quant_every": 1, "quant_test_images": 0}  # every round, every image
    assert config["variation"] == config["run_id"]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"train": {"lr": -0.1}}, "key 'train.lr': value -0.1 is out of range"),
        ({"train": {"lrr": 0.1}}, "unknown key 'train.lrr'"),
        ({"seed": "one"}, "key 'seed': value 'one' has type str; expected int"),
        ({"train": {"num_rounds": True}}, "key 'train.num_rounds': value True has type bool"),
        (
            {"dataset": {"name": "mnist"}},
            "key 'dataset.name': value 'mnist' is not allowed; "
            "choose one of cifar10, cifar100, synthetic, synthetic100",
        ),
        (
            {"strategy": {"name": "fedprox"}},
            "key 'strategy.name': value 'fedprox' is not allowed; choose one of fedavg",
        ),
        (
            {"model": {"name": "MODEL_PLACEHOLDER"}},
            "key 'model.name': value 'MODEL_PLACEHOLDER' is a leftover placeholder",
        ),
        ({"dataset": {"alpha": 0}}, "key 'dataset.alpha': value 0.0 is out of range"),
        (
            {"strategy": {"name": "qffl"}, "qffl": {"lipschitz_scale": 0}},
            "key 'qffl.lipschitz_scale': value 0.0 is out of range; expected a number in (0, inf)",
        ),
        ({"dataset": {"source": "npz"}}, "key 'dataset.path': value '' is empty"),
        ({"strategy": {"fraction_fit": 1.5}}, "key 'strategy.fraction_fit': value 1.5 is out of range"),
        ({"run_id": "a b"}, "key 'run_id': value 'a b' must be"),
        ({"eval": {"every": 0}}, "key 'eval.every': value 0 is out of range; expected a number in [1, inf)"),
        ({"eval": {"every": -1}}, "key 'eval.every': value -1 is out of range; expected a number in [1, inf)"),
        (
            {"eval": {"every": 1.5}},
            "key 'eval.every': value 1.5 has type float; expected int, a number in [1, inf)",
        ),
        ({"eval": {"quant_every": -1}}, "key 'eval.quant_every': value -1 is out of range; expected a number in [1"),
        (
            {"eval": {"quant_every": 1.5}},
            "key 'eval.quant_every': value 1.5 has type float; expected int, a number in [1, inf)",
        ),
    ],
)
def test_bad_values_give_one_line_naming_the_key(override: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(override)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_inf_alpha_and_int_for_float() -> None:
    config = validate({"dataset": {"alpha": "inf"}, "train": {"lr": 1}})
    assert math.isinf(config["dataset"]["alpha"])
    assert config["train"]["lr"] == 1.0 and isinstance(config["train"]["lr"], float)


def test_flatten_round_trip() -> None:
    nested = defaults()
    assert unflatten(flatten(nested)) == nested
    assert flatten({"train": {"lr": 0.1}}) == {"train.lr": 0.1}


def test_flower_app_config_declares_valid_keys() -> None:
    """`flwr run .` only accepts --run-config keys declared in pyproject: they must be schema keys."""
    with open(REPO / "pyproject.toml", "rb") as handle:
        app_config = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]
    flat = flatten(app_config)
    assert flat.pop("config_file") == ""
    assert set(flat) == set(schema())  # every key, the methods' sections included, is reachable
    config = from_flower_run_config(flatten(app_config), num_clients=2)
    assert config["dataset"]["name"] == "synthetic" and config["model"]["name"] == "tiny_cnn"
    assert config["federation"]["num_clients"] == 2


def test_flower_run_config_checks_budgets_against_the_real_federation() -> None:
    """`flwr run . --run-config "quant.budgets='2,6'"` on 2 SuperNodes: the node count decides."""
    run_config = {"strategy.name": "fedmpq", "quant.budgets": "2,6"}
    assert from_flower_run_config(run_config, num_clients=2)["quant"]["budgets"] == [2, 6]
    with pytest.raises(ConfigError, match=r"key 'quant.budgets'.*2 entries.*num_clients = 3"):
        from_flower_run_config(run_config, num_clients=3)


def test_config_file_replaces_flat_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("run_id: from_file\ntrain: {lr: 0.02}\n")
    config = from_flower_run_config({"config_file": str(path), "run_id": "ignored"}, num_clients=4)
    assert config["run_id"] == "from_file" and config["train"]["lr"] == 0.02


def test_sections_come_from_their_owners() -> None:
    """The common sections are the schema's; each method's own section is declared in the catalog."""
    from fedmpq_flwr.config.schema import COMMON, RUN, sections
    from fedmpq_flwr.data.options import DATASET
    from fedmpq_flwr.methods.catalog import CATALOG, METHOD_SECTIONS

    keys = set(schema())
    assert set(RUN) <= keys
    assert sections() == {**COMMON, "dataset": DATASET, **METHOD_SECTIONS}
    for name, section in sections().items():
        assert {f"{name}.{key}" for key in section} <= keys
    assert len(keys) == len(RUN) + sum(len(s) for s in sections().values())
    for spec in CATALOG.values():  # every section a method reads exists
        assert set(spec.sections) <= set(METHOD_SECTIONS)


def test_the_client_app_parses_a_run_config_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower calls `client_fn` for every message: the run config is validated once, and each client
    gets its own copy."""
    import fedmpq_flwr.client_app as client_app

    calls = []
    real = client_app.from_flower_run_config
    monkeypatch.setattr(client_app, "from_flower_run_config", lambda *a, **k: calls.append(1) or real(*a, **k))
    client_app._run_config.cache_clear()
    raw = {"strategy.name": "fedmpq", "quant.budgets": "2,6", "train.lr": 0.05}
    first = client_app.run_config(raw, 2)
    first["train"]["lr"] = 99.0
    second = client_app.run_config(dict(reversed(list(raw.items()))), 2)
    assert len(calls) == 1 and second["train"]["lr"] == 0.05 and second["quant"]["budgets"] == [2, 6]
