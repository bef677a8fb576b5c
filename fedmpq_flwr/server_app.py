"""Flower ServerApp: runs the configured strategy and writes the run's results folder."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from flwr.common import Context
from flwr.server import Grid, ServerApp, ServerConfig
from flwr.server.compat import start_grid

from fedmpq_flwr.config import dump_yaml, from_flower_run_config
from fedmpq_flwr.methods import METHODS
from fedmpq_flwr.results import CONFIG_FILE, RunRecorder

PACKAGES = ("flwr", "flwr-datasets", "torch", "torchvision", "numpy")


def git_commit() -> str:
    """Commit of the checkout this package runs from (with '-dirty' for local changes)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty.strip() else "")


def run_metadata(config: dict[str, Any], started_at: str) -> dict[str, Any]:
    device = str(torch.device("cuda" if torch.cuda.is_available() and config["federation"]["device"] != "cpu" else "cpu"))
    if device == "cuda":
        device += f" ({torch.cuda.get_device_name(0)})"
    return {
        "seed": config["seed"],
        "git_commit": git_commit(),
        "versions": {"python": platform.python_version(), **{p: importlib_metadata.version(p) for p in PACKAGES}},
        "device": device,
        "host": platform.node(),
        "num_clients": config["federation"]["num_clients"],
        "start_time": started_at,
        "end_time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    config = from_flower_run_config(context.run_config)
    config["federation"]["num_clients"] = len(list(grid.get_node_ids()))
    run_dir = Path(config["results_dir"]).expanduser().resolve() / config["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, str(run_dir / CONFIG_FILE))
    recorder = RunRecorder(run_dir, config["run_id"])
    strategy = METHODS[config["strategy"]["name"]].strategy(config, recorder)
    start_grid(grid=grid, strategy=strategy, config=ServerConfig(num_rounds=config["train"]["num_rounds"]))
    strategy.save_final_model()
    recorder.finish(run_metadata(config, started_at), extra={"variation": config["variation"], "strategy": config["strategy"]["name"]})
