"""Benchmark: what checkpointing costs per round, per model (seconds and bytes).

For each model, in one process, with that model's real global state (`get_weights`, what the
server holds) and FedMPQ's server state (10 clients' per-layer bits):

- server save: the checkpointing wrapper's work after a round: the global model from Flower's
  `Parameters` (`parameters_to_ndarrays`), `capture` + `ServerCheckpoint.save` (temporary file,
  fsync, rename) of `checkpoint/server.npz`, once per round;
- server load: `ServerCheckpoint.load`, once per resumed run;
- node save: one node's `context.state` holding a full-precision teacher (FedMPQ-KD with
  kd.refresh_every > 1), `state_to_arrays` + `save_node_file`, done by a client in a round in which
  its state changed; plus the snapshot a client takes before and compares after each fit to see
  whether it did (`snapshot` + `unchanged`).

Medians of `--repeats` runs. Run:
    .venv/bin/python experiments/bench/checkpoint_cost.py --models resnet20 vit_small
The last line printed is JSON with every median and size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import median_seconds
from flwr.common import ArrayRecord, ConfigRecord, RecordDict, ndarrays_to_parameters, parameters_to_ndarrays

from fedmpq_flwr.models import build_model
from fedmpq_flwr.quant import quantizable_layers
from fedmpq_flwr.quant.allocation import initial_bits
from fedmpq_flwr.rundir.checkpoint import ServerCheckpoint, save_node_file
from fedmpq_flwr.rundir.node_state import snapshot, state_to_arrays, unchanged
from fedmpq_flwr.training.weights import get_weights


def bench_model(name: str, repeats: int, directory: Path) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(name, 10)
    weights = get_weights(model)
    layers = quantizable_layers(model)
    bits = {str(pid): initial_bits(layers, 2 + pid % 4) for pid in range(10)}
    run_dir = directory / name
    parameters = ndarrays_to_parameters(weights)  # what Flower hands the strategy's `evaluate`

    def server_save() -> int:
        checkpoint = ServerCheckpoint(
            round=7,
            num_rounds=50,
            token="bench",
            started_at="2026-11-27T00:00:00+00:00",
            config={"model": {"name": name}},
            parameters=parameters_to_ndarrays(parameters),
            sampler=np.random.default_rng(0).bit_generator.state,
            torch_rng=torch.get_rng_state().numpy(),
            method_meta={"bits": bits},
        )
        return checkpoint.save(run_dir)

    state = RecordDict()
    state["kd.teacher.partition_0"] = ArrayRecord(weights)
    state["kd.teacher_round.partition_0"] = ConfigRecord({"round": 6})
    rounds = iter(range(1, 10_000))

    def node_save() -> int:
        arrays, meta = state_to_arrays(state)
        return save_node_file(run_dir / "checkpoint" / "clients", 0, next(rounds), "bench", arrays, meta)

    server_bytes = server_save()
    node_bytes = node_save()
    return {
        "parameters": int(sum(w.size for w in weights)),
        "server_save_s": median_seconds(server_save, repeats),
        "server_load_s": median_seconds(lambda: ServerCheckpoint.load(run_dir), repeats),
        "server_bytes": server_bytes,
        "node_save_s": median_seconds(node_save, repeats),
        "node_change_check_s": median_seconds(lambda: unchanged(snapshot(state), state), repeats),
        "node_bytes": node_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "vit_small"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-", dir=args.dir) as directory:
        for name in args.models:
            results[name] = bench_model(name, args.repeats, Path(directory))
            row = results[name]
            print(
                f"{name:>12}: {row['parameters'] / 1e6:6.2f} M params | server save {row['server_save_s']:.3f} s"
                f" load {row['server_load_s']:.3f} s {row['server_bytes'] / 2**20:7.2f} MiB | node save"
                f" {row['node_save_s']:.3f} s change check {row['node_change_check_s'] * 1e3:.2f} ms"
                f" {row['node_bytes'] / 2**20:7.2f} MiB",
                flush=True,
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
