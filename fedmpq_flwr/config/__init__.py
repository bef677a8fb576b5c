"""Run configuration: one schema, defaults, and validation with one-line errors.

A run config is a nested dict (`train: {lr: 0.1}`), the same shape in the runner's YAML
files, in `config.yaml` of a run and (flattened to `train.lr`) in Flower's run config.
The sections are declared by their owners (`config/schema.py` for the common ones, the method
catalog for the methods' own) and checked here. Pure Python: importing it must not pull in torch.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fedmpq_flwr.config.diagnostics import check_landscape_rounds
from fedmpq_flwr.config.fields import ConfigError, Field, coerce
from fedmpq_flwr.config.schema import schema, section_of
from fedmpq_flwr.data.registry import DATASETS

__all__ = [
    "ConfigError",
    "Field",
    "deep_merge",
    "defaults",
    "dump_yaml",
    "flatten",
    "from_flower_run_config",
    "load_yaml",
    "schema",
    "unflatten",
    "validate",
]

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
    return unflatten({key: field.default for key, field in schema().items()})


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `override` applied key by key (nested dicts merged)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def validate(config: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in, every key known and typed and in range; raise ConfigError otherwise."""
    fields = schema()
    flat = flatten(deep_merge(defaults(), config))
    for key in flat:
        if key not in fields:
            section = section_of(key)
            known = sorted(k for k in fields if section_of(k) == section)
            raise ConfigError(f"unknown key '{key}'; known keys here: {', '.join(known)}")
    checked = {key: coerce(key, value, fields[key]) for key, value in flat.items()}
    if not RUN_ID_PATTERN.match(checked["run_id"]):
        raise ConfigError(f"key 'run_id': value {checked['run_id']!r} must be letters, digits, '_', '.' or '-'")
    if (
        not DATASETS[checked["dataset.name"]].synthetic
        and checked["dataset.source"] in ("npz", "torchvision")
        and not checked["dataset.path"]
    ):
        raise ConfigError(
            f"key 'dataset.path': value '' is empty; dataset.source {checked['dataset.source']!r} needs a directory"
        )
    budgets = checked["quant.budgets"]
    if budgets and checked["federation.num_clients"] % len(budgets):
        raise ConfigError(
            f"key 'quant.budgets': value {budgets} has {len(budgets)} entries; expected one per client or a list "
            f"whose length divides federation.num_clients = {checked['federation.num_clients']} (it is repeated)"
        )
    default_avg = fields["quant.avg_bits"].default
    if budgets and checked["quant.avg_bits"] not in (default_avg, sum(budgets) / len(budgets)):
        raise ConfigError(
            f"key 'quant.avg_bits': value {checked['quant.avg_bits']:g} conflicts with quant.budgets {budgets} "
            f"(mean {sum(budgets) / len(budgets):g}); set one of them"
        )
    check_landscape_rounds(checked["diagnostics.landscape_rounds"], checked["train.num_rounds"])
    if checked["axis"] and checked["axis"] not in fields:
        raise ConfigError(
            f"key 'axis': value {checked['axis']!r} is not a config key; "
            "name the key the run varies, e.g. train.local_epochs"
        )
    if not checked["variation"]:
        checked["variation"] = checked["run_id"]
    config = unflatten(checked)
    from fedmpq_flwr.methods.catalog import spec_of  # the catalog imports config.fields: import late

    spec = spec_of(config["strategy"]["name"])
    if spec is not None and spec.check is not None:
        spec.check(config)  # the method's own rules (fedpq: whole-number budgets; fedkd: mentor's stages)
    return config


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
    """Write a config as YAML (infinity written as .inf, readable back by load_yaml), through a
    temporary file and a rename, so a reader never sees half of it."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    tmp.replace(path)


def write_config(config: Mapping[str, Any], path: str | Path) -> bool:
    """Write `config` to `path` unless the file already holds exactly it (the runner wrote it before
    starting the run, and the ServerApp would write the same again); whether it wrote."""
    path = Path(path)
    if path.is_file():
        try:
            if load_yaml(str(path)) == dict(config):
                return False
        except ConfigError:
            pass  # an unreadable file is replaced
    dump_yaml(config, str(path))
    return True


def from_flower_run_config(
    run_config: Mapping[str, Any], num_clients: int, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The validated config of a Flower run: `config_file` when set, else the flat run-config keys.

    `config_file` (a YAML file that the reading process must be able to open) is for a user's own
    simulation runs; the launcher and the deployment script pass every key instead (config/flower.py).
    `num_clients` is the federation's real size (SuperNodes), which wins over the config's, so
    per-client settings such as `quant.budgets` are checked against the clients that exist.
    `overrides` (nested) are this process's own settings, e.g. a node's data path.
    """
    flat = dict(run_config)
    config_file = str(flat.pop("config_file", "") or "")
    config = (load_yaml(config_file) or {}) if config_file else unflatten(flat)
    if not isinstance(config, Mapping):
        raise ConfigError(f"{config_file}: expected a mapping of config keys, got {type(config).__name__}")
    merged = deep_merge(config, overrides or {})
    return validate(deep_merge(merged, {"federation": {"num_clients": num_clients}}))
