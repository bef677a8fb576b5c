"""Measure: seconds per round and memory of the server and the clients at 10 and 100 clients.

Tiny data (tiny_cnn, synthetic), FedMPQ-KD (the heaviest method) by default, a few rounds, in one of
two ways:

* `--path flower`: each setting is one real run through the launcher (`python -m fedmpq_flwr.launch`:
  its own SuperLink, Flower's simulation with one Ray actor per client CPU), exactly as the runner
  starts a run. Read back from metrics.jsonl per round: `round_time_s`, `server_peak_rss_mb` (the
  ServerApp process) and `client_peak_rss_mb` (the largest peak of the round's participants' actor
  processes). Peaks never fall, so a peak that still rises between rounds 2 and the last is growth.
* `--path inprocess`: the strategy and the clients in this one process, called as Flower would (the
  path of the tests' `fl` fixture); after every round the current RSS of the process (psutil), so
  per-client state that piles up shows as growth between round 2 and the last round; also the
  process's CPU seconds per round (user + system), which other load on the machine disturbs less
  than wall-clock seconds.

Settings are `clients:fraction_fit` pairs (default 10:1.0 100:0.1 100:1.0). Prints a table per
setting and, last, one JSON line with every number.

Run:
    .venv/bin/python experiments/bench/federation_scale.py --path flower --rounds 5
    .venv/bin/python experiments/bench/federation_scale.py --path inprocess --rounds 5 --settings 10:1.0 100:0.1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUDGETS = [2, 2, 3, 3, 4, 4, 5, 5, 6, 6]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", choices=["flower", "inprocess"], default="flower")
    parser.add_argument("--method", default="fedmpq_kd")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settings", nargs="+", default=["10:1.0", "100:0.1", "100:1.0"], help="clients:fraction_fit")
    parser.add_argument("--train-size", type=int, default=2000, help="synthetic training images (all clients)")
    parser.add_argument("--test-size", type=int, default=500, help="synthetic test images")
    parser.add_argument("--alpha", default="inf", help="dataset.alpha (default inf: IID, any size splits)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def run_config(args: argparse.Namespace, clients: int, fraction: float, results_dir: Path) -> dict[str, Any]:
    from fedmpq_flwr.config import validate

    return validate(
        {
            "run_id": f"scale_{clients}_{fraction:g}",
            "seed": args.seed,
            "results_dir": str(results_dir),
            "strategy": {"name": args.method, "fraction_fit": fraction},
            "model": {"name": "tiny_cnn"},
            "dataset": {
                "name": "synthetic",
                "synthetic_train_size": args.train_size,
                "synthetic_test_size": args.test_size,
                "alpha": args.alpha,
            },
            "train": {"num_rounds": args.rounds, "batch_size": 32, "lr": 0.05},
            "quant": {"budgets": BUDGETS},
            "federation": {"num_clients": clients, "device": "cpu"},
        }
    )


def flower_run(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One run through the launcher; its per-round numbers."""
    from fedmpq_flwr.config import dump_yaml

    run_dir = Path(config["results_dir"]) / config["run_id"]
    run_dir.mkdir(parents=True)
    dump_yaml(config, str(run_dir / "config.yaml"))
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fedmpq_flwr.launch", "--config", str(run_dir / "config.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{config['run_id']} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [
        {
            "round": r["round"],
            "round_time_s": r["round_time_s"],
            "server_peak_rss_mb": r["server_peak_rss_mb"],
            "client_peak_rss_mb": r.get("client_peak_rss_mb"),
            "participants": len(r["clients"]),
        }
        for r in records
    ]
    rows[-1]["run_wall_s"] = time.perf_counter() - started  # SuperLink, Ray and every round
    return rows


def inprocess_run(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The strategy and the clients in this process (as the tests' `fl` fixture drives them)."""
    import psutil
    from common import inprocess_round
    from flwr.common import RecordDict

    from fedmpq_flwr.methods.registry import load_method
    from fedmpq_flwr.rundir.results import RunRecorder

    method = load_method(config["strategy"]["name"])
    strategy = method.strategy(config, RunRecorder(Path(config["results_dir"]) / config["run_id"], config["run_id"]))
    num_clients = config["federation"]["num_clients"]
    states = {pid: RecordDict() for pid in range(num_clients)}
    process = psutil.Process()
    rows = []
    for server_round in range(1, config["train"]["num_rounds"] + 1):
        started, cpu_started = time.perf_counter(), sum(process.cpu_times()[:2])
        sampled = strategy.sampler.sample(list(range(num_clients)))
        inprocess_round(method, strategy, config, server_round, sampled, states)
        rows.append(
            {
                "round": server_round,
                "round_time_s": time.perf_counter() - started,
                "cpu_s": sum(process.cpu_times()[:2]) - cpu_started,  # user + system: less sensitive to load
                "rss_mb": process.memory_info().rss / 2**20,
                "participants": len(sampled),
            }
        )
    return rows


def main() -> None:
    args = parse_args()
    numbers = []
    with tempfile.TemporaryDirectory(prefix="fedmpq-scale-") as tmp:
        for setting in args.settings:
            clients, fraction = setting.split(":")
            config = run_config(args, int(clients), float(fraction), Path(tmp))
            rows = flower_run(config) if args.path == "flower" else inprocess_run(config)
            print(f"\n== {args.path}: {clients} clients, fraction_fit {fraction}, {args.method}, tiny_cnn ==")
            keys = [k for k in rows[0] if k != "round"]
            print("round " + " ".join(f"{k:>20}" for k in keys))
            for row in rows:
                print(f"{row['round']:>5} " + " ".join(f"{row.get(k, float('nan')):>20.2f}" for k in keys))
            numbers.append(
                {"path": args.path, "clients": int(clients), "fraction_fit": float(fraction), "rounds": rows}
            )
    print(json.dumps({"method": args.method, "model": "tiny_cnn", "settings": numbers}))


if __name__ == "__main__":
    main()
