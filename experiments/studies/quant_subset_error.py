"""How far a quantized accuracy on `eval.quant_test_images` test images is from the same accuracy on all of them.

    .venv/bin/python experiments/studies/quant_subset_error.py --run-dir results/quick/fedmpq_seed0 --images 2000

A finished FedMPQ-family run leaves its final global model (final_model.pt) and every client's bit assignment
(bit_assignments.json). This script quantizes that model to each distinct assignment and evaluates it twice,
on the run's class-balanced subset of --images test images (the same one the run's quantized passes used:
`dataset.seed` draws it) and on the whole test set, and prints the per-client accuracies, their differences
and, for comparison, the sampling std that a subset of that size would have at that accuracy
(sqrt(p (1 - p) / n * (1 - n / N)), drawn without replacement), as JSON. The data source is the run's own
(config.yaml), or --data-dir (a folder of train.npz/test.npz) when the run's path does not exist here.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fedmpq_flwr.data.load import load_data
from fedmpq_flwr.models import load_final_model
from fedmpq_flwr.server.evaluation import ServerEvaluator


def subset_error(run_dir: Path, images: int, data_dir: Path | None) -> dict[str, Any]:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    dataset_cfg = dict(config["dataset"])
    if data_dir is not None:
        dataset_cfg.update(source="npz", path=str(data_dir))
    data = load_data(dataset_cfg)
    device = torch.device("cpu")
    batch = config["train"]["eval_batch_size"]
    subset = ServerEvaluator(data, batch, device, images, dataset_cfg["seed"])
    whole = ServerEvaluator(data, batch, device)
    clients = json.loads((run_dir / "bit_assignments.json").read_text())["clients"]
    assignments = {int(pid): client["bits"] for pid, client in clients.items()}
    model = load_final_model(run_dir)
    act_bits = config["quant"]["act_bits"]
    on_subset = subset.quantized_metrics(model, assignments, act_bits)
    on_whole = whole.quantized_metrics(model, assignments, act_bits)
    total = len(data.y_test)
    rows = []
    for pid in sorted(assignments):
        accuracy = on_whole[pid][0]
        rows.append(
            {
                "partition_id": pid,
                "subset_accuracy": on_subset[pid][0],
                "whole_accuracy": accuracy,
                "difference": on_subset[pid][0] - accuracy,
                "sampling_std": math.sqrt(
                    accuracy * (1 - accuracy) / subset.quant_images * (1 - subset.quant_images / total)
                ),
            }
        )
    differences = np.array([row["difference"] for row in rows])
    return {
        "run_dir": str(run_dir),
        "subset_images": subset.quant_images,
        "test_images": total,
        "clients": rows,
        "distinct_assignments": len({json.dumps(bits, sort_keys=True) for bits in assignments.values()}),
        "mean_subset_accuracy": float(np.mean([row["subset_accuracy"] for row in rows])),
        "mean_whole_accuracy": float(np.mean([row["whole_accuracy"] for row in rows])),
        "mean_abs_difference": float(np.abs(differences).mean()),
        "max_abs_difference": float(np.abs(differences).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished FedMPQ-family run")
    parser.add_argument("--images", type=int, default=2000, help="size of the class-balanced test subset")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of train.npz/test.npz to read instead")
    args = parser.parse_args()
    print(json.dumps(subset_error(args.run_dir, args.images, args.data_dir), indent=2))


if __name__ == "__main__":
    main()
