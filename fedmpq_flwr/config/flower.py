"""A validated run config as Flower's run config: flat keys with Flower's value types, written to a TOML
file for `flwr run --run-config FILE.toml`.

The `flwr` CLI reads the file on the machine that submits the run and sends the values to the SuperLink,
which hands them to the ServerApp and to every ClientApp: no SuperLink or SuperNode reads a file of the
submitting machine. Flower values are bool, int, float or str, so lists (`quant.budgets`) travel as comma
strings and infinity (`dataset.alpha`) as the string "inf"; `validate` parses both back. A TOML file,
unlike a `key=value` string, carries any string (quotes, newlines) exactly. Pure Python, no torch.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from fedmpq_flwr.config import flatten, unflatten
from fedmpq_flwr.config.fields import ConfigError

FlowerValue = bool | int | float | str
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"  # of a source checkout, which `flwr run` needs


def flower_value(key: str, value: Any) -> FlowerValue:
    """One config value as a Flower run-config value (bool, int, float or str)."""
    if isinstance(value, list):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, bool | int | float | str):
        return value
    raise ConfigError(f"key '{key}': value {value!r} of type {type(value).__name__} has no Flower run-config form")


def to_flower_run_config(config: Mapping[str, Any]) -> dict[str, FlowerValue]:
    """The flat Flower run config of a validated (nested) config: every key, `config_file` left out."""
    return {key: flower_value(key, value) for key, value in flatten(config).items() if key != "config_file"}


def write_run_config_toml(config: Mapping[str, Any], path: Path) -> Path:
    """Write the flat run config of `config` as a TOML file that `flwr run --run-config` accepts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(unflatten(to_flower_run_config(config))))
    return path


def app_defaults() -> dict[str, Any]:
    """The run config of a bare `flwr run .`: `[tool.flwr.app.config]` of pyproject.toml, nested, without
    `config_file`."""
    with open(PYPROJECT, "rb") as handle:
        flat = flatten(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])
    flat.pop("config_file", None)
    return unflatten(flat)
