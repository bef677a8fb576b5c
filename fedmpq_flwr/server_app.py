"""Flower ServerApp: runs the configured strategy and writes the run's results folder."""

from __future__ import annotations

import datetime as dt
import platform
from importlib import metadata as importlib_metadata
from logging import ERROR
from pathlib import Path
from typing import Any

import torch
from flwr.common import Context, log
from flwr.server import Grid, ServerApp, ServerConfig
from flwr.server.compat import start_grid

from fedmpq_flwr.config import ConfigError, from_flower_run_config, write_config
from fedmpq_flwr.methods.registry import load_method
from fedmpq_flwr.rundir.checkpoint import remove_checkpoint
from fedmpq_flwr.rundir.provenance import git_commit
from fedmpq_flwr.rundir.results import CONFIG_FILE, RunRecorder
from fedmpq_flwr.rundir.startup import mark
from fedmpq_flwr.server.outcome import run_rounds
from fedmpq_flwr.server.resume import CheckpointingStrategy, open_checkpoint
from fedmpq_flwr.training.loop import resolve_device

PACKAGES = ("flwr", "flwr-datasets", "torch", "torchvision", "numpy")


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), or what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict[str, str]:
    """What decides whether a rerun can match digit for digit: the CPU, the vector unit torch's CPU
    kernels use (e.g. AVX2 or AVX512: other kernels, other rounding), torch's version and the GPU."""
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
    }


def run_metadata(config: dict[str, Any], started_at: str) -> dict[str, Any]:
    """Provenance stored in results.json: what ran, where, with which code and versions."""
    device = str(resolve_device(config["federation"]["device"]))
    hardware = machine(device)
    if device.startswith("cuda"):
        device += f" ({hardware['device_name']})"
    return {
        "seed": config["seed"],
        "git_commit": git_commit(),
        "versions": {"python": platform.python_version(), **{p: importlib_metadata.version(p) for p in PACKAGES}},
        "device": device,
        "host": platform.node(),
        "machine": hardware,
        "num_clients": config["federation"]["num_clients"],
        "start_time": started_at,
        "end_time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Resolve the config, run the legacy-API strategy for all rounds (those after the checkpoint of
    a stopped run), then save model and results and drop the checkpoint. Under the launcher it marks
    its start-up points (`fedmpq_flwr.rundir.startup`)."""
    mark("server_app_started")
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    try:
        config = from_flower_run_config(context.run_config, num_clients=len(list(grid.get_node_ids())))
    except ConfigError as err:
        log(ERROR, "invalid run config: %s", err)  # the one line to read above Flower's traceback
        raise
    run_dir = Path(config["results_dir"]).expanduser().resolve() / config["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        checkpoint = open_checkpoint(config, run_dir)  # None: from round 1
    except ConfigError as err:
        log(ERROR, "cannot resume: %s", err)
        raise
    write_config(config, run_dir / CONFIG_FILE)  # once: the runner has written it already
    recorder = RunRecorder(run_dir, config["run_id"], completed_rounds=checkpoint.round if checkpoint else 0)
    strategy = load_method(config["strategy"]["name"]).strategy(config, recorder)
    rounds = CheckpointingStrategy(strategy, run_dir, started_at, checkpoint)  # Flower's round k is r + k
    mark("strategy_ready")
    if rounds.remaining:
        run_rounds(start_grid, recorder, grid=grid, strategy=rounds, config=ServerConfig(num_rounds=rounds.remaining))
    strategy.save_outputs()
    recorder.finish(
        run_metadata(config, rounds.started_at),
        extra={"variation": config["variation"], "strategy": config["strategy"]["name"]},
    )
    remove_checkpoint(run_dir)
    mark("server_app_finished")
