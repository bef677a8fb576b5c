"""Run configuration: one schema, defaults, and validation with one-line errors.

A run config is a nested dict (`train: {lr: 0.1}`), the same shape in the runner's YAML
files, in `config.yaml` of a run and (flattened to `train.lr`) in Flower's run config.
Pure Python: importing it must not pull in torch.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

PLACEHOLDER_PATTERN = re.compile(r"PLACEHOLDER|\bTODO\b|\bTBD\b|\?\?\?|<[A-Za-z_ ]+>")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(ValueError):
    """A user mistake in a config: the message is one line naming key, value and what is allowed."""


@dataclass(frozen=True)
class Field:
    """One config key: its type, default and the allowed values."""

    kind: type
    default: Any
    check: Callable[[Any], bool] | None = None
    allowed: str = ""
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()
    parse: Callable[[str, Any], Any] | None = None  # turns accepted spellings into `kind`, or raises ConfigError


def _range(
    low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False
) -> tuple[Callable[[Any], bool], str]:
    def check(value: float) -> bool:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    left, right = ("(" if low_open else "["), (")" if high_open or high == math.inf else "]")
    return check, f"a number in {left}{low:g}, {high:g}{right}"


def _field(kind: type, default: Any, bounds: tuple[Callable[[Any], bool], str] | None = None) -> Field:
    check, allowed = bounds if bounds else (None, "")
    return Field(kind, default, check, allowed)


def _choice(default: str, *choices: str) -> Field:
    return Field(str, default, choices=choices)


def _parse_budgets(key: str, value: Any) -> list[float]:
    """Per-client bit budgets: a YAML list or a comma-separated string ("2,2,3"); "" means none."""
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError(f"key '{key}': value {value!r} must be a list of numbers in [1, 8] or a string like '2,2,3'")
    budgets = []
    for item in items:
        try:
            budget = float(item)
        except (TypeError, ValueError):
            budget = math.nan
        if isinstance(item, bool) or not 1 <= budget <= 8:
            raise ConfigError(
                f"key '{key}': value {value!r} has entry {item!r}; each budget must be a number in [1, 8]"
            )
        budgets.append(int(budget) if budget.is_integer() else budget)
    return budgets


def _strategy_names() -> tuple[str, ...]:
    from fedmpq_flwr.methods import METHODS  # imported late: the registry pulls in torch

    return tuple(METHODS)


def _model_names() -> tuple[str, ...]:
    from fedmpq_flwr.models import MODELS

    return tuple(MODELS)


SCHEMA: dict[str, Field] = {
    "run_id": _field(str, "flwr-run"),
    "variation": _field(str, ""),
    "axis": _field(str, ""),  # the config key this run varies against the main experiment ("" = none)
    "description": _field(str, ""),
    "seed": _field(int, 0, _range(0)),
    "results_dir": _field(str, "results"),
    "strategy.name": Field(str, "fedavg", choices=_strategy_names),
    "strategy.fraction_fit": _field(float, 1.0, _range(0, 1, low_open=True)),
    "model.name": Field(str, "resnet20", choices=_model_names),
    "dataset.name": _choice("cifar10", "cifar10", "synthetic"),
    "dataset.source": _choice("hub", "hub", "npz", "torchvision"),
    "dataset.path": _field(str, ""),
    "dataset.train_subset": _field(int, 0, _range(0)),
    "dataset.val_fraction": _field(float, 0.0, _range(0, 1, high_open=True)),
    "dataset.augment": _field(bool, True),
    "dataset.alpha": _field(float, 0.5, _range(0, math.inf, low_open=True)),
    "dataset.seed": _field(int, 42, _range(0)),
    "dataset.synthetic_train_size": _field(int, 2000, _range(20)),
    "dataset.synthetic_test_size": _field(int, 500, _range(10)),
    "train.num_rounds": _field(int, 50, _range(1)),
    "train.local_epochs": _field(int, 1, _range(1)),
    "train.batch_size": _field(int, 64, _range(1)),
    "train.lr": _field(float, 0.1, _range(0, low_open=True)),
    "train.momentum": _field(float, 0.9, _range(0, 1, high_open=True)),
    "train.weight_decay": _field(float, 0.0, _range(0)),
    "train.eval_batch_size": _field(int, 128, _range(1)),  # faster per image than 256 on CPU
    "strategy.weighting": _choice("samples", "samples", "uniform"),
    "quant.budgets": Field(list, [], parse=_parse_budgets),
    "quant.avg_bits": _field(float, 4.0, _range(1, 8)),
    "quant.lambda_b": _field(float, 0.01, _range(0)),
    "quant.thre": _field(float, 2.0, _range(0, 100)),
    "quant.act_bits": _field(int, 4, _range(1, 8)),
    "quant.rounding": _choice("stochastic", "stochastic", "nearest"),
    "quant.scale_grad": _choice("plain", "plain", "lsq", "frozen"),  # how the bit-plane scales learn
    "kd.alpha": _field(float, 0.5, _range(0)),
    "kd.temperature": _field(float, 2.0, _range(0, low_open=True)),
    "kd.teacher": _choice("frozen", "frozen", "updating"),
    "kd.ema_decay": _field(float, 0.99, _range(0, 1)),
    "kd.refresh_every": _field(int, 1, _range(1)),
    "federation.num_clients": _field(int, 10, _range(1)),
    "federation.client_cpus": _field(int, 1, _range(1)),
    "federation.client_gpus": _field(
        float, -1.0, (lambda v: v == -1 or 0 <= v <= 1, "-1 (auto) or a number in [0, 1]")
    ),
    "federation.device": _choice("auto", "auto", "cpu", "cuda"),
}


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 0.1}}` -> `{"train.lr": 0.1}`."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten`."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def defaults() -> dict[str, Any]:
    """The nested default config."""
    return unflatten({key: field.default for key, field in SCHEMA.items()})


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `override` applied key by key (nested dicts merged)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _coerce(key: str, value: Any, field: Field) -> Any:
    """Check the type of one value (ints pass as floats, 'inf' as infinity)."""
    if isinstance(value, str) and PLACEHOLDER_PATTERN.search(value):
        raise ConfigError(f"key '{key}': value {value!r} is a leftover placeholder; set a real value")
    if field.parse is not None:
        value = field.parse(key, value)
    if field.kind is float and isinstance(value, str) and value.strip().lower() in ("inf", "+inf", ".inf"):
        value = math.inf
    if field.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, field.kind) and not (field.kind is not bool and isinstance(value, bool))
    if not ok:
        raise ConfigError(
            f"key '{key}': value {value!r} has type {type(value).__name__}; expected {field.kind.__name__}"
        )
    if field.kind is float and math.isnan(value):
        raise ConfigError(f"key '{key}': value nan is not allowed; expected {field.allowed}")
    choices = field.choices() if callable(field.choices) else field.choices
    if choices and value not in choices:
        raise ConfigError(f"key '{key}': value {value!r} is not allowed; choose one of {', '.join(choices)}")
    if field.check and not field.check(value):
        raise ConfigError(f"key '{key}': value {value!r} is out of range; expected {field.allowed}")
    return value


def validate(config: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in, every key known and typed and in range; raise ConfigError otherwise."""
    flat = flatten(deep_merge(defaults(), config))
    for key in flat:
        if key not in SCHEMA:
            section = key.rsplit(".", 1)[0] if "." in key else ""
            known = sorted(k for k in SCHEMA if (k.rsplit(".", 1)[0] if "." in k else "") == section)
            raise ConfigError(f"unknown key '{key}'; known keys here: {', '.join(known)}")
    checked = {key: _coerce(key, value, SCHEMA[key]) for key, value in flat.items()}
    if not RUN_ID_PATTERN.match(checked["run_id"]):
        raise ConfigError(f"key 'run_id': value {checked['run_id']!r} must be letters, digits, '_', '.' or '-'")
    if (
        checked["dataset.name"] == "cifar10"
        and checked["dataset.source"] in ("npz", "torchvision")
        and not checked["dataset.path"]
    ):
        raise ConfigError(
            f"key 'dataset.path': value '' is empty; dataset.source {checked['dataset.source']!r} needs a directory"
        )
    budgets = checked["quant.budgets"]
    if budgets and len(budgets) != checked["federation.num_clients"]:
        raise ConfigError(
            f"key 'quant.budgets': value {budgets} has {len(budgets)} entries; "
            f"expected one per client (federation.num_clients = {checked['federation.num_clients']})"
        )
    default_avg = SCHEMA["quant.avg_bits"].default
    if budgets and checked["quant.avg_bits"] not in (default_avg, sum(budgets) / len(budgets)):
        raise ConfigError(
            f"key 'quant.avg_bits': value {checked['quant.avg_bits']:g} conflicts with quant.budgets {budgets} "
            f"(mean {sum(budgets) / len(budgets):g}); set one of them"
        )
    if checked["axis"] and checked["axis"] not in SCHEMA:
        raise ConfigError(
            f"key 'axis': value {checked['axis']!r} is not a config key; "
            "name the key the run varies, e.g. train.local_epochs"
        )
    if not checked["variation"]:
        checked["variation"] = checked["run_id"]
    return unflatten(checked)


def load_yaml(path: str) -> Any:
    """Parse a YAML file, turning syntax errors into a one-line ConfigError."""
    try:
        with open(path) as handle:
            return yaml.safe_load(handle)
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(err, 'problem', err)})") from None


def dump_yaml(config: Mapping[str, Any], path: str) -> None:
    """Write a config as YAML (infinity written as .inf, readable back by load_yaml)."""
    with open(path, "w") as handle:
        yaml.safe_dump(dict(config), handle, sort_keys=False)


def from_flower_run_config(run_config: Mapping[str, Any], num_clients: int) -> dict[str, Any]:
    """The validated config of a Flower run: `config_file` when set, else the flat run-config keys.

    `num_clients` is the federation's real size (SuperNodes), which wins over the config's, so
    per-client settings such as `quant.budgets` are checked against the clients that exist.
    """
    flat = dict(run_config)
    config_file = str(flat.pop("config_file", "") or "")
    config = (load_yaml(config_file) or {}) if config_file else unflatten(flat)
    if not isinstance(config, Mapping):
        raise ConfigError(f"{config_file}: expected a mapping of config keys, got {type(config).__name__}")
    return validate(deep_merge(config, {"federation": {"num_clients": num_clients}}))
