"""Loss-landscape snapshots taken by the server (`diagnostics.landscape`, config/diagnostics.py).

After each listed round, the global float model's test loss and accuracy over a grid along two
filter-normalized random directions, seeded by the run's seed and the round (the same directions for
every method of a seed, each scaled to its own model's filters); for a method whose strategy assigns
clients bits (`MethodStrategy.quantized_end`), also along the line from the median client's quantized
model (its dequantized weights) to the float model, and that quantized model's own loss and accuracy
(activations quantized too). All on one fixed class-balanced subset of the test set, drawn with
`dataset.seed` like `eval.quant_test_images`'s, so runs of a setting share images. The maths is in
training/landscape.py. landscape.npz is rewritten after every snapshot: a resumed run keeps the
snapshots of its completed rounds. Nothing here touches torch's global random state or the model, so
training goes on exactly as without the snapshots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fedmpq_flwr.config.diagnostics import landscape_rounds
from fedmpq_flwr.quant import dequantized_state, quantize_model
from fedmpq_flwr.rundir.results import LANDSCAPE_FILE, landscape_key
from fedmpq_flwr.server.evaluation import ServerEvaluator, balanced_subset
from fedmpq_flwr.training.landscape import grid_coordinates, line_coordinates, loss_grid, loss_line, random_directions
from fedmpq_flwr.training.loop import loss_and_accuracy


@dataclass(frozen=True)
class QuantizedEnd:
    """The quantized end of a snapshot's line: one client's per-layer bits, its average, activation bits."""

    partition: int
    bits: dict[str, int]
    avg_bits: float
    act_bits: int


def median_client(avg_bits: dict[int, float]) -> int:
    """The partition whose average bits is the median of all clients' (the lower one of an even count;
    ties by partition id): an assignment a client really has, which a mean need not be."""
    ordered = sorted(avg_bits, key=lambda pid: (avg_bits[pid], pid))
    return ordered[(len(ordered) - 1) // 2]


def direction_seed(seed: int, server_round: int) -> int:
    """The directions' seed of a round: the run's seed and the round mixed (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, server_round]).generate_state(1)[0])


def read_snapshots(path: Path, up_to_round: int) -> tuple[list[int], dict[str, np.ndarray]]:
    """The snapshot rounds of landscape.npz up to `up_to_round` and their arrays (none without the file)."""
    if not path.is_file():
        return [], {}
    with np.load(path, allow_pickle=False) as data:
        kept = [r for r in data["rounds"].tolist() if r <= up_to_round]
        prefixes = tuple(landscape_key(r, "") for r in kept)
        return kept, {key: data[key] for key in data.files if key.startswith(prefixes)}


class LandscapeSnapshots:
    """The snapshots of one run: which rounds take one, the test batches they use, landscape.npz."""

    def __init__(self, config: dict[str, Any], evaluator: ServerEvaluator, run_dir: Path, completed_rounds: int):
        diagnostics = config["diagnostics"]
        self.rounds = landscape_rounds(config) if diagnostics["landscape"] else []
        self.points = diagnostics["landscape_points"]
        self.seed = config["seed"]
        self.device = evaluator.device
        self.path = Path(run_dir) / LANDSCAPE_FILE
        if not self.rounds:
            return
        data = evaluator.data
        chosen = balanced_subset(data.y_test, diagnostics["landscape_images"], config["dataset"]["seed"])
        self.images = len(chosen)
        self.batches = evaluator.batches(data.x_test[chosen], data.y_test[chosen])
        self.taken, self.arrays = read_snapshots(self.path, completed_rounds)  # a run started again keeps none
        if self.taken:
            self.write()
        else:
            self.path.unlink(missing_ok=True)

    def due(self, server_round: int) -> bool:
        """Whether a snapshot follows `server_round`."""
        return server_round in self.rounds

    def take(self, server_round: int, model: nn.Module, end: QuantizedEnd | None) -> dict[str, Any]:
        """Snapshot `model` (the global model after `server_round`; unchanged), write landscape.npz and
        return the round record's `landscape_time_s`."""
        started = time.perf_counter()
        coords = grid_coordinates(self.points)
        directions = random_directions(model, direction_seed(self.seed, server_round))
        loss, accuracy = loss_grid(model, directions, coords, self.batches, self.device)
        arrays: dict[str, Any] = {"coords": coords, "loss": loss, "accuracy": accuracy}
        if end is not None:
            arrays.update(self.line(model, end))
        self.arrays.update({landscape_key(server_round, name): np.asarray(value) for name, value in arrays.items()})
        self.taken.append(server_round)
        self.write()
        return {"landscape_time_s": time.perf_counter() - started}

    def line(self, model: nn.Module, end: QuantizedEnd) -> dict[str, Any]:
        """The line from `end`'s quantized model (dequantized weights, float activations) to `model`,
        and the quantized model itself (activations quantized too)."""
        quantized = quantize_model(model, end.bits, end.act_bits)
        start = dequantized_state(quantized, [name for name, _ in model.named_parameters()])
        t = line_coordinates(self.points)
        loss, accuracy = loss_line(model, start, t, self.batches, self.device)
        quant_loss, quant_accuracy = loss_and_accuracy(quantized, self.batches, self.device)
        return {
            "line_t": t,
            "line_loss": loss,
            "line_accuracy": accuracy,
            "line_partition": end.partition,
            "line_avg_bits": end.avg_bits,
            "quant_loss": quant_loss,
            "quant_accuracy": quant_accuracy,
        }

    def write(self) -> None:
        """landscape.npz with every snapshot so far (`rounds`, `images`), through a temporary file."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, rounds=np.array(self.taken, dtype=np.int64), images=np.array(self.images), **self.arrays)
        tmp.replace(self.path)
