"""The runner file format: `defaults`, `runs`, `extends`, `seeds` expansion and `--set` overrides.

A runner file lists run variations; `expand_runs` resolves each into one validated config per seed
(run_id `<variation>_seed<k>`), merging the file's defaults, the base file it `extends` and the
command line's `--set KEY=VALUE` overrides. One run's `config.yaml`, as the runner writes it into
every run folder, is read as a runner file of that one run, so that a published run can be run
again as it was (into another results directory, with `--set` for a local dataset path).
Torch-free: the runner, the launcher and the deployment helper all resolve runs through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedmpq_flwr.config import ConfigError, deep_merge, load_yaml, unflatten, validate

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


FILE_KEYS = {"extends", "defaults", "runs"}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set train.lr=0.05` -> {"train": {"lr": 0.05}} (values parsed as YAML scalars)."""
    flat = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. train.lr=0.05")
        flat[key.strip()] = yaml.safe_load(value) if value else ""
    return unflatten(flat)


def inherited_defaults(path: Path, extends: Any) -> dict[str, Any]:
    """The `defaults` of the file named by `extends` (relative to `path`), so that ablation files
    share the main experiment's setting instead of copying it."""
    base_path = path.parent / str(extends)
    if not isinstance(extends, str) or not base_path.is_file():
        raise ConfigError(f"{path}: key 'extends': value {extends!r} must name an existing runner file next to it")
    base = load_yaml(str(base_path))
    if not isinstance(base, dict) or not isinstance(base.get("defaults") or {}, dict) or "extends" in base:
        raise ConfigError(
            f"{path}: key 'extends': {base_path} must be a runner file with a 'defaults' mapping and no 'extends'"
        )
    return base.get("defaults") or {}


def resolve(where: str, run: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    """One run's settings validated, writing into results_dir, its dataset path made absolute."""
    try:
        resolved = validate({**run, "results_dir": str(results_dir)})
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    if resolved["dataset"]["path"]:
        resolved["dataset"]["path"] = str(Path(resolved["dataset"]["path"]).expanduser().resolve())
    return resolved


def expand_runs(path: Path, results_dir: Path, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """All runs of a runner file, resolved and validated; raises ConfigError on the first problem."""
    document = load_yaml(str(path))
    if isinstance(document, dict) and "run_id" in document and "runs" not in document:
        return [resolve(f"{path}", deep_merge(document, overrides), results_dir)]
    if not isinstance(document, dict) or not isinstance(document.get("runs"), list) or not document["runs"]:
        raise ConfigError(
            f"{path}: expected a mapping with a non-empty 'runs' list (and optional 'defaults'), "
            "or one run's config.yaml (with a 'run_id')"
        )
    unknown = set(document) - FILE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key '{sorted(unknown)[0]}'; allowed: extends, defaults, runs")
    shared = document.get("defaults") or {}
    if not isinstance(shared, dict):
        raise ConfigError(f"{path}: key 'defaults' must be a mapping")
    if document.get("extends") is not None:
        shared = deep_merge(inherited_defaults(path, document["extends"]), shared)
    runs: list[dict[str, Any]] = []
    for index, entry in enumerate(document["runs"]):
        where = f"{path}: runs[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with run_id, description and settings")
        entry = dict(entry)
        for required in ("run_id", "description"):
            if not entry.get(required):
                raise ConfigError(f"{where}: key '{required}' is missing or empty")
        where = f"{path}: run '{entry['run_id']}'"
        seeds = entry.pop("seeds", None)
        if seeds is not None and "seed" in entry:
            raise ConfigError(f"{where}: give either 'seed' or 'seeds', not both")
        if seeds is not None and (
            not isinstance(seeds, list)
            or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        ):
            raise ConfigError(f"{where}: key 'seeds': value {seeds!r} must be a non-empty list of integers >= 0")
        variation = str(entry["run_id"])
        for seed in seeds if seeds is not None else [None]:
            run = deep_merge(deep_merge(shared, entry), overrides)
            run["variation"] = variation
            if seed is not None:
                run["seed"], run["run_id"] = seed, f"{variation}_seed{seed}"
            runs.append(resolve(where, run, results_dir))
    seen: set[str] = set()
    for run in runs:
        if run["run_id"] in seen:
            raise ConfigError(f"{path}: run_id '{run['run_id']}' appears twice")
        seen.add(run["run_id"])
    return runs
