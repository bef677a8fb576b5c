"""Run one experiment through the real Flower path and leave no process behind.

`python -m fedmpq_flwr.launch --config RUN_DIR/config.yaml` starts a private SuperLink
(simulation runtime, free port, private FLWR_HOME and Ray temp folder, no runtime dependency
installation), submits the app with `flwr run --stream`, then stops the SuperLink and everything it
started. Exit status 0 means the run wrote a complete results.json. Runs launched side by side (the
runner's `--jobs`) share nothing but the machine; `--ray-cpus K` gives this run's Ray K CPUs.
RUN_DIR/startup.json says where the time outside the rounds went (`fedmpq_flwr.rundir.startup`).

Resuming: an unfinished run with a checkpoint (`RUN_DIR/checkpoint/`) continues after its last
completed round when the same command is run again; `--overwrite` starts it from round 1.

Stopping: SIGTERM, SIGINT (Ctrl-C) and SIGHUP stop the SuperLink, SuperExec, simulation and Ray
(found by their private FLWR_HOME even when Ray's daemons were reparented), keep the checkpoint,
print the command that resumes the run and exit with 128 + the signal number.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import psutil

from fedmpq_flwr.config import ConfigError, load_yaml, validate
from fedmpq_flwr.config.flower import write_run_config_toml
from fedmpq_flwr.rundir.checkpoint import checkpoint_dir, checkpoint_summary, remove_checkpoint
from fedmpq_flwr.rundir.provenance import COMMIT_ENV, git_commit
from fedmpq_flwr.rundir.results import is_complete
from fedmpq_flwr.rundir.reuse import check_results_dir, check_resumable, make_results_dir
from fedmpq_flwr.rundir.startup import MARKS_ENV, mark, write_startup
from fedmpq_flwr.runner.processes import HOME_PREFIX, RAY_PREFIX, claim, remove_abandoned, stop_process_tree
from fedmpq_flwr.runner.signals import Stopped, stop_signals

APP_DIR = Path(__file__).resolve().parents[2]


APP_FILES = ("pyproject.toml", ".gitignore")  # with the package's .py files: what the FAB holds


DEFAULT_GPU_SHARE = 0.25


SUPERLINK_ATTEMPTS = 3  # ports tried when another process takes the chosen one first


HEALTH_POLL_S = 0.05


SUBMITTED = b"Successfully started run"  # what `flwr run` prints once the SuperLink created the run


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_gpu_share(config: dict[str, Any]) -> float:
    """`federation.client_gpus`, with -1 meaning a quarter GPU per client when CUDA exists."""
    share = config["federation"]["client_gpus"]
    if share >= 0:
        return share
    if config["federation"]["device"] == "cpu":
        return 0.0
    import torch

    return DEFAULT_GPU_SHARE if torch.cuda.is_available() else 0.0


def federation_config(config: dict[str, Any], ray_cpus: int | None = None) -> str:
    """`--federation-config` value: SuperNodes, per-client CPU/GPU resources and, when runs share
    the machine, the CPUs this run's Ray may use (else Ray counts the machine's)."""
    fed = config["federation"]
    value = (
        f"num-supernodes={fed['num_clients']} client-resources-num-cpus={fed['client_cpus']} "
        f"client-resources-num-gpus={client_gpu_share(config)}"
    )
    return value if ray_cpus is None else f"{value} init-args-num-cpus={ray_cpus}"


def flower_env(flwr_home: Path, port: int, ray_tmpdir: Path | None = None, marks: Path | None = None) -> dict[str, str]:
    """Environment for a private SuperLink: own FLWR_HOME and port, offline-safe, venv on PATH;
    optionally its own Ray temp folder (else Ray's default, or the user's RAY_TMPDIR) and the file
    its processes append start-up marks to. The ServerApp runs from Flower's copy of the app, not a git
    checkout: it gets this checkout's commit through `COMMIT_ENV`."""
    bin_dir = Path(sys.executable).parent
    return {
        **os.environ,
        COMMIT_ENV: git_commit(),
        **({"RAY_TMPDIR": str(ray_tmpdir)} if ray_tmpdir else {}),
        **({MARKS_ENV: str(marks)} if marks else {}),
        "FLWR_HOME": str(flwr_home),
        # `flwr run` (connection "local") uses the SuperLink on this port instead of starting one.
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
        # flower-superlink starts flower-superexec by name: the venv's bin must be on PATH.
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def listens_on(process: subprocess.Popen, port: int) -> bool:
    """Whether `process` itself listens on `port` (a SuperLink answering there may be another run's)."""
    try:
        connections = psutil.Process(process.pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(conn.status == psutil.CONN_LISTEN and conn.laddr.port == port for conn in connections)


def wait_healthy(port: int, process: subprocess.Popen, timeout_s: float = 60.0) -> bool:
    """True once `process` listens on `port` and answers its health check; False when it exited
    first (the port was taken)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).is_success and listens_on(process, port):
                return True
        except httpx.HTTPError:
            pass
        time.sleep(HEALTH_POLL_S)
    raise RuntimeError(f"flower-superlink did not answer on port {port} within {timeout_s:.0f} s")


def stage_app(target: Path) -> Path:
    """A folder with what `flwr run` packs of this checkout (pyproject.toml, .gitignore and the
    package's .py files, as `fab-include` says). `flwr run` walks every file of its app folder before
    filtering, and a checkout holds .venv and results: seconds per run spent on files it drops."""
    files = [APP_DIR / name for name in APP_FILES if (APP_DIR / name).is_file()]
    files += sorted((APP_DIR / "fedmpq_flwr").rglob("*.py"))
    for source in files:
        copy = target / source.relative_to(APP_DIR)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
    return target


def submit(run_cmd: list[str], env: dict[str, str], marks: Path) -> int:
    """Run `flwr run --stream`, passing its output on to this process's stdout, and mark when it
    reports the run created; its exit status."""
    process = subprocess.Popen(run_cmd, env=env, cwd=APP_DIR, stdout=subprocess.PIPE)
    try:
        submitted = False
        for line in iter(process.stdout.readline, b""):
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
            if not submitted and SUBMITTED in line:
                mark("run_submitted", marks)
                submitted = True
        return process.wait()
    finally:  # stopped: as subprocess.run does (the shutdown finds it by FLWR_HOME anyway)
        if process.poll() is None:
            process.kill()
            process.wait()


def shut_down(superlink: subprocess.Popen | None, flwr_home: Path) -> int:
    """Stop the SuperLink and everything it started, even if a stop signal arrives meanwhile (the
    cleanup starts over, and the next signals are ignored); return that signal's number, or 0."""
    signum = 0
    while True:
        try:
            stop_process_tree(superlink.pid if superlink else None, flwr_home=flwr_home)
            if superlink is not None:
                superlink.wait()
            return signum
        except Stopped as stop:
            signum = stop.signum


def prepare_run_dir(config: dict[str, Any], overwrite: bool) -> tuple[Path, int]:
    """The run's folder, created, and the round it resumes after (0: from the start). Raises
    ConfigError for a results folder that is not one, or a checkpoint of another config."""
    results_dir = Path(config["results_dir"]).expanduser().resolve()
    check_results_dir(results_dir)
    run_dir = results_dir / config["run_id"]
    if overwrite:
        remove_checkpoint(run_dir)
    completed = check_resumable(config, run_dir)
    make_results_dir(run_dir)
    if completed:
        print(
            f"resuming run {config['run_id']} after round {completed}/{config['train']['num_rounds']}"
            f" (checkpoint in {checkpoint_dir(run_dir)}; --overwrite starts it again)",
            file=sys.stderr,
            flush=True,
        )
    return run_dir, completed


def stopped_message(config: dict[str, Any], run_dir: Path, signum: int, config_path: Path) -> str:
    """What a user reads after stopping a run: where it stopped and the command that resumes it."""
    try:
        summary = checkpoint_summary(run_dir)
    except ValueError:
        summary = None
    where = (
        f"after round {summary['round']}/{summary['num_rounds']}; its checkpoint is kept in {checkpoint_dir(run_dir)}"
        if summary
        else "before its first round finished (no checkpoint: it starts again from round 1)"
    )
    resume = shlex.join([sys.executable, "-m", "fedmpq_flwr.launch", "--config", str(config_path)])
    return (
        f"stopped by {Stopped(signum).name}: run {config['run_id']} stopped {where}; "
        f"the SuperLink and its processes were stopped. Resume with: {resume}"
    )


def superlink_command(port: int, log_file: Path) -> list[str]:
    return [
        str(Path(sys.executable).parent / "flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
        "--log-file",
        str(log_file),
    ]


def ray_temp_dir() -> tempfile.TemporaryDirectory | nullcontext:
    """A private Ray temp folder (Ray's default, /tmp/ray, is shared by every Ray on the machine),
    unless the user chose one with RAY_TMPDIR. Short: Ray's socket paths in it must fit 107 bytes."""
    if os.environ.get("RAY_TMPDIR"):
        return nullcontext(None)
    return tempfile.TemporaryDirectory(prefix=RAY_PREFIX, ignore_cleanup_errors=True)


def launch(config_path: Path, overwrite: bool = False, ray_cpus: int | None = None) -> int:
    """Run the experiment described by `config_path`; return 0 when its results are complete."""
    if not (APP_DIR / "pyproject.toml").is_file():
        raise RuntimeError(f"no pyproject.toml in {APP_DIR}: `flwr run` needs a source checkout (pip install -e .)")
    config = validate(load_yaml(str(config_path)) or {})
    run_dir, _ = prepare_run_dir(config, overwrite)
    for folder in remove_abandoned():
        print(f"removed {folder}: its launcher was gone", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=HOME_PREFIX) as flwr_home, ray_temp_dir() as ray_dir:
        home = Path(flwr_home)
        for folder in (home, ray_dir):
            if folder:
                claim(Path(folder))
        marks = home / "startup_marks.jsonl"
        mark("launcher_started", marks, when=psutil.Process().create_time())
        superlink: subprocess.Popen | None = None
        stopped_by = 0
        try:
            app = stage_app(home / "app")
            for attempt in range(1, SUPERLINK_ATTEMPTS + 1):
                port = free_port()
                env = flower_env(home, port, Path(ray_dir) if ray_dir else None, marks)
                superlink = subprocess.Popen(
                    superlink_command(port, run_dir / "superlink.log"),
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                mark("superlink_started", marks)
                if wait_healthy(port, superlink):
                    break
                superlink.wait()
                if attempt == SUPERLINK_ATTEMPTS:
                    raise RuntimeError(
                        f"flower-superlink exited with code {superlink.returncode} before it was ready, "
                        f"on {SUPERLINK_ATTEMPTS} ports (see {run_dir / 'superlink.log'})"
                    )
            mark("superlink_ready", marks)
            run_cmd = [
                str(Path(sys.executable).parent / "flwr"),
                "run",
                str(app),
                "local",
                "--stream",
                *run_config_args(config, home),
                "--federation-config",
                federation_config(config, ray_cpus),
            ]
            print("$ " + shlex.join(run_cmd), file=sys.stderr, flush=True)
            submit(run_cmd, env, marks)
            mark("flwr_run_finished", marks)
        except Stopped as stop:
            stopped_by = stop.signum
        finally:
            stopped_by = shut_down(superlink, home) or stopped_by
            mark("shutdown_done", marks)
            write_startup(run_dir, marks)
    if stopped_by:
        print(stopped_message(config, run_dir, stopped_by, config_path), file=sys.stderr, flush=True)
        return Stopped(stopped_by).exit_code
    if not is_complete(run_dir):
        print(f"run {config['run_id']} did not complete: no complete results.json in {run_dir}", file=sys.stderr)
        return 1
    return 0


def run_config_args(config: dict[str, Any], work_dir: Path) -> list[str]:
    """`flwr run` arguments that carry the whole resolved config as flat run-config keys.

    They go in a TOML file that the `flwr` CLI reads here and sends to the SuperLink, so neither the
    ServerApp nor any ClientApp reads a file of this machine (no `config_file`).
    """
    return ["--run-config", str(write_run_config_toml(config, work_dir / "run_config.toml"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="a resolved run config (config.yaml)")
    parser.add_argument("--overwrite", action="store_true", help="start an unfinished run again from round 1")
    parser.add_argument(
        "--ray-cpus",
        type=int,
        metavar="K",
        help="CPUs this run's Ray may use when runs share the machine (the runner's --jobs); default: all",
    )
    args = parser.parse_args(argv)
    with stop_signals():
        try:
            return launch(args.config, args.overwrite, args.ray_cpus)
        except (ConfigError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except Stopped as stop:  # outside the SuperLink's lifetime: nothing to stop
            print(f"stopped by {stop.name}", file=sys.stderr)
            return stop.exit_code
