"""When a results folder's contents may be reused: skip a finished run, resume a stopped one, refuse a mix.

One rule for the runner, the launcher and the ServerApp: a finished run is skipped only when made
with the same config (`config_differences` ignores labels and sections the method does not read),
and a stopped run resumes from its checkpoint only under the same condition. Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fedmpq_flwr.config import ConfigError, deep_merge, defaults, dump_yaml, flatten, load_yaml
from fedmpq_flwr.config.schema import section_of
from fedmpq_flwr.methods.catalog import reads_section
from fedmpq_flwr.rundir.checkpoint import CheckpointError, checkpoint_summary
from fedmpq_flwr.rundir.results import CONFIG_FILE, is_complete, kept_metrics

# Keys that never change what a run computes: a finished run is not rerun for them. The labels
# (how the experiment file describes and groups the run) are brought up to date in its config.yaml.
LABELS = ("description", "variation", "axis")


NOT_COMPARED = {*LABELS, "results_dir"}


def config_differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, saved value, wanted value) for every key that would change what a finished run computed.

    A key the saved config lacks counts as its default (a newer package added it), and keys of
    sections the method does not read (the catalog's `sections`) are ignored.
    """
    saved_flat = flatten(deep_merge(defaults(), saved))
    wanted_flat = flatten(wanted)
    method = wanted_flat.get("strategy.name")
    return [
        (key, saved_flat.get(key), wanted_flat.get(key))
        for key in sorted(set(saved_flat) | set(wanted_flat))
        if key not in NOT_COMPARED
        and reads_section(method, section_of(key))
        and saved_flat.get(key) != wanted_flat.get(key)
    ]


def check_finished_runs(runs: list[dict[str, Any]], results_dir: Path) -> None:
    """A finished run is skipped only if it was made with the same config: anything else (another
    --set, an edited file) is an error, so a results folder never mixes settings unnoticed."""
    for run in runs:
        run_dir = results_dir / run["run_id"]
        if not is_complete(run_dir):
            continue
        saved = load_yaml(str(run_dir / CONFIG_FILE)) or {}
        differences = config_differences(saved if isinstance(saved, dict) else {}, run)
        if differences:
            key, before, now = differences[0]
            raise ConfigError(
                f"run '{run['run_id']}' in {results_dir} finished with {key} = {before!r}, now {now!r}; "
                "use --overwrite to rerun it or another --results-dir"
            )


def check_resumable(run: dict[str, Any], run_dir: Path) -> int:
    """The round after which an unfinished run resumes from its checkpoint (0: there is none, the
    run starts from round 1). Raises ConfigError when the checkpoint was made with another config,
    cannot be read, or does not match the run's metrics.jsonl."""
    if is_complete(run_dir):
        return 0
    try:
        summary = checkpoint_summary(run_dir)
        if summary is None:
            return 0
        completed = summary["round"]
        kept_metrics(run_dir, completed)
    except (CheckpointError, ValueError) as err:
        raise ConfigError(f"run '{run['run_id']}': {err}") from None
    differences = config_differences(summary["config"], run)
    if differences:
        key, before, now = differences[0]
        raise ConfigError(
            f"run '{run['run_id']}' in {run_dir.parent} stopped after round {completed} with {key} = {before!r}, "
            f"now {now!r}; use --overwrite to start it again or another --results-dir"
        )
    return completed


def check_results_dir(results_dir: Path) -> None:
    """The results folder is a folder, or can be made one: ConfigError otherwise."""
    if results_dir.exists() and not results_dir.is_dir():
        raise ConfigError(f"--results-dir {results_dir}: exists and is not a folder")
    existing = results_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--results-dir {results_dir}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--results-dir {results_dir}: {existing} is not writable")


def make_results_dir(folder: Path) -> None:
    """Create a results (or run) folder; ConfigError naming it and the reason when that fails (no
    permission, a read-only file system, a path under /proc ...)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--results-dir {folder}: cannot create it ({err.strerror or err})") from None


def update_labels(config_path: Path, run: dict[str, Any]) -> None:
    """Give a finished run the labels the experiment file has now (the analyzer groups by them);
    every other saved value stays as it was."""
    saved = load_yaml(str(config_path)) or {}
    if isinstance(saved, dict) and any(saved.get(key) != run[key] for key in LABELS):
        dump_yaml({**saved, **{key: run[key] for key in LABELS}}, str(config_path))
