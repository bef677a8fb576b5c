"""Experiment runner: every run variation of a YAML file, one after another or N at once, then the analyzer.

    python -m fedmpq_flwr.main --smoke-test|--full-experiment|--config FILE --results-dir DIR
        [--only RUN_ID ...] [--overwrite] [--set KEY=VALUE ...] [--jobs N]

The whole file is validated before anything runs. Each run is a subprocess
(`python -m fedmpq_flwr.launch`) whose output goes to DIR/<run_id>/stdout.log|stderr.log and
to the console. Finished runs (complete results.json) are skipped unless --overwrite; an
unfinished run with a checkpoint resumes after its last completed round (--overwrite: from round 1).
`--jobs N` keeps up to N runs in flight (`fedmpq_flwr.jobs`); the console then shows one progress
line per round of each run and the runner's events instead of the runs' raw output.

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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

from fedmpq_flwr.checkpoint import CheckpointError, checkpoint_summary
from fedmpq_flwr.config import ConfigError, deep_merge, defaults, dump_yaml, flatten, load_yaml, unflatten, validate
from fedmpq_flwr.config.schema import section_of
from fedmpq_flwr.data.registry import DATASETS
from fedmpq_flwr.jobs import JobsStopped, check_jobs, progress_line, ray_cpus, run_jobs
from fedmpq_flwr.methods.catalog import reads_section
from fedmpq_flwr.results import CONFIG_FILE, is_complete, kept_metrics
from fedmpq_flwr.signals import Stopped, stop_received, stop_signals

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
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


def expand_runs(path: Path, results_dir: Path, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """All runs of a runner file, resolved and validated; raises ConfigError on the first problem."""
    document = load_yaml(str(path))
    if not isinstance(document, dict) or not isinstance(document.get("runs"), list) or not document["runs"]:
        raise ConfigError(f"{path}: expected a mapping with a non-empty 'runs' list (and optional 'defaults')")
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
            run["results_dir"] = str(results_dir)
            try:
                resolved = validate(run)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
            if resolved["dataset"]["path"]:
                resolved["dataset"]["path"] = str(Path(resolved["dataset"]["path"]).expanduser().resolve())
            runs.append(resolved)
    seen: set[str] = set()
    for run in runs:
        if run["run_id"] in seen:
            raise ConfigError(f"{path}: run_id '{run['run_id']}' appears twice")
        seen.add(run["run_id"])
    return runs


def preflight(runs: list[dict[str, Any]]) -> None:
    """Check devices, load and partition each distinct data setting once: bad input fails before training."""
    from fedmpq_flwr.dataset import load_data, partition_indices  # imports torch: only after validation
    from fedmpq_flwr.train import resolve_device

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


def update_labels(config_path: Path, run: dict[str, Any]) -> None:
    """Give a finished run the labels the experiment file has now (the analyzer groups by them);
    every other saved value stays as it was."""
    saved = load_yaml(str(config_path)) or {}
    if isinstance(saved, dict) and any(saved.get(key) != run[key] for key in LABELS):
        dump_yaml({**saved, **{key: run[key] for key in LABELS}}, str(config_path))


CONSOLE = threading.Lock()  # whole lines on the console while runs share it (--jobs)


def say(text: str, file: IO[str] | None = None) -> None:
    """Print one line (or block) to the console (stdout by default) without interleaving."""
    with CONSOLE:
        print(text, file=file or sys.stdout, flush=True)


def _pump(source: IO[str], log: IO[str], echo: Callable[[str], None] | None) -> None:
    for line in iter(source.readline, ""):
        log.write(line)
        log.flush()
        if echo is not None:
            echo(line)


def _raw(stream: IO[str]) -> Callable[[str], None]:
    def echo(line: str) -> None:
        stream.write(line)
        stream.flush()

    return echo


def _progress(run_id: str) -> Callable[[str], None]:
    def echo(line: str) -> None:
        progress = progress_line(line, run_id)
        if progress is not None:
            say(progress)

    return echo


CHILD_STOP_S = 60.0  # how long the runner waits for a stopped launcher to shut Flower down
POLL_S = 0.2  # how often a --jobs worker looks for a stop signal while its run is in flight


def wait_child(process: subprocess.Popen) -> int:
    """The child's exit status. In the main thread a stop signal interrupts the wait (Stopped); a
    worker thread (--jobs) cannot be interrupted, so it polls, and raises Stopped itself."""
    if threading.current_thread() is threading.main_thread():
        return process.wait()
    while True:
        try:
            return process.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            if signum := stop_received():
                raise Stopped(signum) from None


def run_teed(
    cmd: list[str], stdout_log: Path, stderr_log: Path, header: str, append: bool = False, quiet_as: str = ""
) -> int:
    """Run `cmd`, copying its stdout/stderr to the log files (appended to with `append`) and to this
    process's console; with `quiet_as` (a run id, under --jobs) only that run's progress lines reach
    the console. On a stop signal the child gets it too (it may have had it already: the launcher
    ignores a repeat) and is waited for, so that it stops what it started."""
    mode = "a" if append else "w"
    with open(stdout_log, mode) as out_file, open(stderr_log, mode) as err_file:
        out_file.write(header)
        out_file.flush()
        if signum := stop_received():  # a --jobs worker about to start a run while the runner stops
            raise Stopped(signum)
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        echo_out = _progress(quiet_as) if quiet_as else _raw(sys.stdout)
        echo_err = None if quiet_as else _raw(sys.stderr)
        pumps = [
            threading.Thread(target=_pump, args=(process.stdout, out_file, echo_out), daemon=True),
            threading.Thread(target=_pump, args=(process.stderr, err_file, echo_err), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        try:
            returncode = wait_child(process)
        except Stopped as stop:
            stop_child(process, stop.signum)
            for pump in pumps:
                pump.join(timeout=5.0)
            raise
        for pump in pumps:
            pump.join()
    return returncode


def stop_child(process: subprocess.Popen, signum: int) -> None:
    """Pass a stop signal on to the launcher and wait until it has stopped Flower (killed after
    `CHILD_STOP_S`)."""
    try:
        process.send_signal(signum)
        process.wait(timeout=CHILD_STOP_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    except ProcessLookupError:
        pass


def emit(event: dict[str, Any]) -> None:
    say(json.dumps(event))


def describe(run: dict[str, Any], position: str) -> str:
    dataset, train = run["dataset"], run["train"]
    return (
        f"=== [{position}] {run['run_id']} ===\n{run['description'].strip()}\n"
        f"strategy={run['strategy']['name']} model={run['model']['name']} dataset={dataset['name']}"
        f" (source={'generated' if DATASETS[dataset['name']].synthetic else dataset['source']},"
        f" train_subset={dataset['train_subset'] or 'all'}, alpha={dataset['alpha']})"
        f" clients={run['federation']['num_clients']} rounds={train['num_rounds']}"
        f" local_epochs={train['local_epochs']} batch={train['batch_size']} lr={train['lr']} seed={run['seed']}"
    )


def execute(
    run: dict[str, Any],
    results_dir: Path,
    overwrite: bool,
    position: str,
    quiet: bool = False,
    ray_cpus: int | None = None,
) -> str:
    """Run one variation; return its status: completed, skipped or failed. `quiet` (--jobs > 1):
    the console gets the run's progress lines and events only; `ray_cpus`: its share of the CPUs."""
    run_dir = results_dir / run["run_id"]
    if is_complete(run_dir) and not overwrite:
        update_labels(run_dir / CONFIG_FILE, run)
        emit({"event": "run_skipped", "run_id": run["run_id"], "reason": "already complete (use --overwrite)"})
        return "skipped"
    completed = 0 if overwrite else check_resumable(run, run_dir)  # checked before anything ran
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
        quiet_as=run["run_id"] if quiet else "",
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
    from fedmpq_flwr.launch import client_gpu_share  # imports torch for client_gpus -1 (auto)

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
        if not args.overwrite:
            check_finished_runs(runs, results_dir)
            for run in runs:
                check_resumable(run, results_dir / run["run_id"])
        preflight(runs)
        shares = machine_shares(args.jobs, runs)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    results_dir.mkdir(parents=True, exist_ok=True)

    def run_one(index: int) -> str:
        run = runs[index]
        position = f"{index + 1}/{len(runs)}"
        if args.jobs == 1:
            return execute(run, results_dir, args.overwrite, position)
        return execute(run, results_dir, args.overwrite, position, quiet=True, ray_cpus=shares[run["run_id"]])

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


if __name__ == "__main__":
    sys.exit(main())
