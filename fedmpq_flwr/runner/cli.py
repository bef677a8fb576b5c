"""Experiment runner: every run variation of a YAML file, one after another or N at once, then the analyzer.

    python -m fedmpq_flwr.main --smoke-test|--full-experiment|--config FILE --results-dir DIR
        [--only RUN_ID ...] [--overwrite] [--set KEY=VALUE ...] [--jobs N] [--dry-run]

The whole file is validated before anything runs. Each run is a subprocess
(`python -m fedmpq_flwr.launch`) whose output goes to DIR/<run_id>/stdout.log|stderr.log and
to the console. Finished runs (complete results.json) are skipped unless --overwrite; an
unfinished run with a checkpoint resumes after its last completed round (--overwrite: from round 1).
`--jobs N` keeps up to N runs in flight (`fedmpq_flwr.runner.jobs`); the console then shows one progress
line per round of each run and the runner's events instead of the runs' raw output.
`--dry-run` stops after the validation: one line per run (run_id, key settings), nothing run or created.

Ctrl-C, SIGTERM and SIGHUP stop the runs in flight cleanly (the launcher stops Flower and Ray; the
checkpoint stays) and print the command that resumes; the exit status is 128 + the signal number.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedmpq_flwr.config import ConfigError, dump_yaml
from fedmpq_flwr.config.runner_file import CONFIG_DIR, expand_runs, parse_overrides
from fedmpq_flwr.data.registry import DATASETS
from fedmpq_flwr.rundir.checkpoint import CheckpointError, checkpoint_summary
from fedmpq_flwr.rundir.progress import MetricsFollower
from fedmpq_flwr.rundir.results import CONFIG_FILE, METRICS_FILE, is_complete
from fedmpq_flwr.rundir.reuse import (
    check_finished_runs,
    check_results_dir,
    check_resumable,
    make_results_dir,
    update_labels,
)
from fedmpq_flwr.runner.jobs import JobsStopped, check_jobs, ray_cpus, run_jobs
from fedmpq_flwr.runner.signals import Stopped, stop_signals
from fedmpq_flwr.runner.tee import run_teed, say


def preflight(runs: list[dict[str, Any]]) -> None:
    """Check devices, load and partition each distinct data setting once: bad input fails before training."""
    from fedmpq_flwr.data.load import load_data  # imports torch: only after validation
    from fedmpq_flwr.data.partition import partition_indices
    from fedmpq_flwr.training.loop import resolve_device

    checked: set[str] = set()
    for run in runs:
        try:
            resolve_device(run["federation"]["device"])
        except RuntimeError as err:
            raise ConfigError(f"run '{run['run_id']}': {err}") from None
        dataset, num_clients = run["dataset"], run["federation"]["num_clients"]
        key = json.dumps([dataset, num_clients], sort_keys=True)
        if key in checked:
            continue
        checked.add(key)
        try:
            data = load_data(dataset)
            partition_indices(data.y_train, num_clients, dataset["alpha"], dataset["seed"])
        except ValueError as err:  # DataSourceError included
            raise ConfigError(f"run '{run['run_id']}': {err}") from None


def emit(event: dict[str, Any]) -> None:
    say(json.dumps(event))


def settings(run: dict[str, Any]) -> str:
    """The run's key settings on one line: `strategy=... model=... dataset=... seed=...`."""
    dataset, train = run["dataset"], run["train"]
    return (
        f"strategy={run['strategy']['name']} model={run['model']['name']} dataset={dataset['name']}"
        f" (source={'generated' if DATASETS[dataset['name']].synthetic else dataset['source']},"
        f" train_subset={dataset['train_subset'] or 'all'}, alpha={dataset['alpha']})"
        f" clients={run['federation']['num_clients']} rounds={train['num_rounds']}"
        f" local_epochs={train['local_epochs']} batch={train['batch_size']} lr={train['lr']} seed={run['seed']}"
    )


def describe(run: dict[str, Any], position: str) -> str:
    return f"=== [{position}] {run['run_id']} ===\n{run['description'].strip()}\n{settings(run)}"


def dry_run(runs: list[dict[str, Any]], results_dir: Path, overwrite: bool) -> None:
    """One line per validated run: its run_id, its settings, and `(finished: skipped)` where a run would skip it."""
    for run in runs:
        skipped = not overwrite and is_complete(results_dir / run["run_id"])
        print(f"{run['run_id']}: {settings(run)}{' (finished: skipped)' if skipped else ''}", flush=True)


def execute(
    run: dict[str, Any],
    results_dir: Path,
    overwrite: bool,
    position: str,
    resume_after: int = 0,
    quiet: bool = False,
    ray_cpus: int | None = None,
) -> str:
    """Run one variation; return its status: completed, skipped or failed. `resume_after`: the round
    after which it resumes (`check_resumable`, run before anything started); `quiet` (--jobs > 1): the
    console gets the run's progress lines and events only; `ray_cpus`: its share of the CPUs."""
    run_dir = results_dir / run["run_id"]
    if is_complete(run_dir) and not overwrite:
        update_labels(run_dir / CONFIG_FILE, run)
        emit({"event": "run_skipped", "run_id": run["run_id"], "reason": "already complete (use --overwrite)"})
        return "skipped"
    completed = 0 if overwrite else resume_after
    if run_dir.exists() and not completed:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / CONFIG_FILE
    dump_yaml(run, str(config_path))
    cmd = [sys.executable, "-m", "fedmpq_flwr.launch", "--config", str(config_path)]
    if not quiet:
        say(describe(run, position))
    resumed = {"resumed_after_round": completed} if completed else {}
    emit(
        {
            "event": "run_started",
            "run_id": run["run_id"],
            "variation": run["variation"],
            "description": run["description"].strip(),
            **resumed,
        }
    )
    header = f"# reproduce: {shlex.join(cmd)}\n"  # alone, the run has the machine: no --ray-cpus
    if completed:
        header = f"# resumed after round {completed}/{run['train']['num_rounds']}\n" + header
    if ray_cpus is not None:
        cmd += ["--ray-cpus", str(ray_cpus)]
    started = time.perf_counter()
    returncode = run_teed(
        cmd,
        run_dir / "stdout.log",
        run_dir / "stderr.log",
        header,
        append=bool(completed),
        progress=MetricsFollower(run["run_id"], run_dir / METRICS_FILE, run["train"]["num_rounds"]) if quiet else None,
    )
    status = "completed" if returncode == 0 and is_complete(run_dir) else "failed"
    if quiet and status == "failed":
        say(f"[{run['run_id']}] failed (exit {returncode}): see {run_dir / 'stderr.log'}", file=sys.stderr)
    emit(
        {
            "event": "run_" + status,
            "run_id": run["run_id"],
            "returncode": returncode,
            "duration_s": round(time.perf_counter() - started, 1),
        }
    )
    return status


def stopped_where(run: dict[str, Any], results_dir: Path) -> str:
    """`run X stopped after round k/N (checkpoint kept in ...)`, or before its first round finished,
    or after its results were complete (stopped while Flower shut down: it will be skipped)."""
    run_dir = results_dir / run["run_id"]
    if is_complete(run_dir):
        return f"run {run['run_id']} stopped after its results were complete (it will be skipped)"
    try:
        summary = checkpoint_summary(run_dir)
    except CheckpointError:
        summary = None
    where = (
        f"after round {summary['round']}/{summary['num_rounds']} (checkpoint kept in {run_dir / 'checkpoint'})"
        if summary
        else "before its first round finished (it will start from round 1)"
    )
    return f"run {run['run_id']} stopped {where}"


def stopped_note(stop: JobsStopped, argv: list[str], runs: list[dict[str, Any]], results_dir: Path) -> str:
    """Where a stopped runner left the runs it stopped, and the command(s) that continue."""
    stopped = [runs[index] for index in stop.stopped]
    where = "; ".join(stopped_where(run, results_dir) for run in stopped) or "no run was in flight"
    runner = [sys.executable, "-m", "fedmpq_flwr.main"]
    if "--overwrite" not in argv:
        return f"stopped by {stop.name}: {where}. Resume with: {shlex.join(runner + argv)}"
    # --overwrite would start the stopped runs again: resume them without, then rerun the ones not started
    kept = [arg for arg in argv if arg != "--overwrite"]
    later = [run["run_id"] for run in runs[stop.first_unstarted :]]
    commands = []
    if stopped:
        commands.append(f"Resume with: {shlex.join(runner + kept + ['--only', *(r['run_id'] for r in stopped)])}")
    if later:
        rest = shlex.join(runner + argv + ["--only", *later])
        commands.append(f"then run the rest with: {rest}" if stopped else f"Run the rest with: {rest}")
    return f"stopped by {stop.name}: {where}. " + "; ".join(commands)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the run variations of a YAML file, then the analyzer.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--smoke-test", action="store_true", help="configs/smoke_test.yaml")
    which.add_argument("--full-experiment", action="store_true", help="configs/full_experiment.yaml")
    which.add_argument("--config", type=Path, help="another runner YAML file (e.g. configs/ablations/...)")
    parser.add_argument("--results-dir", required=True, type=Path)
    parser.add_argument("--only", nargs="+", metavar="RUN_ID", help="run only these run_ids or variations")
    parser.add_argument(
        "--overwrite", action="store_true", help="rerun runs that already finished; start unfinished runs from round 1"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="runs in flight at once (default 1), each with its own SuperLink, ports and Ray and a share "
        "of the CPUs; with N > 1 the console shows one progress line per round of each run",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every run, e.g. --set train.num_rounds=5",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate everything a run would (file, overrides, data, devices, --jobs), print one line per run "
        "(run_id and key settings), run nothing",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    with stop_signals():
        try:
            return run_all(args, argv)
        except Stopped as stop:  # outside a run (validation, the analyzer): nothing of Flower to stop
            print(f"stopped by {stop.name}", file=sys.stderr, flush=True)
            return stop.exit_code


def machine_shares(jobs: int, runs: list[dict[str, Any]]) -> dict[str, int | None]:
    """Check that `jobs` runs fit this machine at once (ConfigError naming --jobs otherwise) and give
    each run the CPUs its Ray may use (None: the machine, as for one run at a time)."""
    from fedmpq_flwr.runner.launcher import client_gpu_share  # imports torch for client_gpus -1 (auto)

    cpus = os.cpu_count() or 1
    gpu_shares = {run["run_id"]: client_gpu_share(run) for run in runs}
    gpus = 0
    if jobs > 1 and any(gpu_shares.values()):
        import torch

        gpus = torch.cuda.device_count()
    client_cpus = {run["run_id"]: run["federation"]["client_cpus"] for run in runs}
    check_jobs(jobs, max(client_cpus.values()), max(gpu_shares.values()), cpus, gpus)
    in_flight = min(jobs, len(runs))
    return {name: ray_cpus(in_flight, cpus, client_cpus[name], gpus, gpu_shares[name]) for name in client_cpus}


def run_all(args: argparse.Namespace, argv: list[str]) -> int:
    """Validate everything, run each variation, then the analyzer; the exit status of `main`."""
    path = args.config or CONFIG_DIR / ("smoke_test.yaml" if args.smoke_test else "full_experiment.yaml")
    results_dir = args.results_dir.expanduser().resolve()
    try:
        check_results_dir(results_dir)
        runs = expand_runs(path, results_dir, parse_overrides(args.overrides))
        if args.only:
            names = {r["run_id"] for r in runs} | {r["variation"] for r in runs}
            missing = [name for name in args.only if name not in names]
            if missing:
                raise ConfigError(f"--only: unknown run_id {missing[0]!r}; known: {', '.join(sorted(names))}")
            runs = [r for r in runs if r["run_id"] in args.only or r["variation"] in args.only]
        resume_after = dict.fromkeys((run["run_id"] for run in runs), 0)
        if not args.overwrite:
            check_finished_runs(runs, results_dir)
            resume_after = {run["run_id"]: check_resumable(run, results_dir / run["run_id"]) for run in runs}
        preflight(runs)
        shares = machine_shares(args.jobs, runs)
        if not args.dry_run:
            make_results_dir(results_dir)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        dry_run(runs, results_dir, args.overwrite)
        return 0

    def run_one(index: int) -> str:
        run = runs[index]
        position = f"{index + 1}/{len(runs)}"
        resumes = resume_after[run["run_id"]]
        if args.jobs == 1:
            return execute(run, results_dir, args.overwrite, position, resume_after=resumes)
        return execute(
            run, results_dir, args.overwrite, position, resume_after=resumes, quiet=True, ray_cpus=shares[run["run_id"]]
        )

    try:
        statuses = run_jobs(len(runs), args.jobs, run_one)
    except JobsStopped as stop:
        print(stopped_note(stop, argv, runs, results_dir), file=sys.stderr, flush=True)
        return stop.exit_code
    failed = [run["run_id"] for run, status in zip(runs, statuses) if status == "failed"]
    analyzer = subprocess.run(
        [sys.executable, "-m", "fedmpq_flwr.evaluate", "--results-dir", str(results_dir)], check=False
    )
    if failed:
        print(f"failed runs ({len(failed)}): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 1 if analyzer.returncode else 0
