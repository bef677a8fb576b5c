"""Markdown tables of a few finished runs side by side, from their saved files only.

The real-data checks of the baseline issues (first 10,000 CIFAR-10 images, 10 clients, Dirichlet
0.5, 10 rounds, seed 0) compare methods on accuracy per round, bits, per-client accuracy, client
compute and seconds per round; this prints those tables for docs/measurements.md. It reads what
the analyzer reads (`fedmpq_flwr.analysis.runs.load_run`) and never imports torch.

    python experiments/studies/compare_runs.py --results-dir DIR fedavg_seed0 fedmpq_seed0 ...
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedmpq_flwr.analysis.runs import load_run


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def number(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "–" if value is None else f"{value / scale:.{digits}f}"


def accuracy_table(runs: list[dict[str, Any]]) -> list[str]:
    """Float global test accuracy (%) per round, one column per run."""
    rounds = sorted({r["round"] for run in runs for r in run["history"]})
    lines = ["| round | " + " | ".join(run["run_id"] for run in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for rnd in rounds:
        cells = []
        for run in runs:
            record = next((r for r in run["history"] if r["round"] == rnd), None)
            cells.append(percent(record.get("test_accuracy") if record else None))
        lines.append(f"| {rnd} | " + " | ".join(cells) + " |")
    return lines


def summary_table(runs: list[dict[str, Any]]) -> list[str]:
    """Per run: final and area-under-curve accuracy, the quantized clients' mean, bits per round,
    seconds per round, summed client compute per round and the per-client accuracy of the model the
    devices run (mean, std, worst, 10th percentile over clients, final round)."""
    header = (
        "| run | final % | AUC % | quantized mean % | Mbit up / round | Mbit down / round | s / round "
        "| client compute s / round | device model | client acc. mean % | std | worst % | p10 % |"
    )
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for run in runs:
        prefix = "client_quant_accuracy" if run.get("client_quant_accuracy_mean") is not None else "client_accuracy"
        model = "quantized" if prefix == "client_quant_accuracy" else "float"
        cells = [
            run["run_id"],
            percent(run["final_accuracy"]),
            percent(run["auc_accuracy"]),
            percent(run["final_quant_accuracy_mean"]),
            number(run["mean_bits_up_per_round"], 1e6),
            number(run["mean_bits_down_per_round"], 1e6),
            number(run["mean_round_time_s"]),
            number(run["mean_client_compute_s"]),
            model,
            percent(run[f"{prefix}_mean"]),
            percent(run[f"{prefix}_std"]),
            percent(run[f"{prefix}_worst"]),
            percent(run[f"{prefix}_p10"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, required=True)
    parser.add_argument("run_ids", nargs="+")
    args = parser.parse_args()
    runs = [load_run(args.results_dir / run_id) for run_id in args.run_ids]
    unfinished = [f"{run['run_id']} ({run['status']})" for run in runs if run["status"] != "completed"]
    if unfinished:
        print("not completed: " + ", ".join(unfinished))
    print("\n".join(accuracy_table(runs) + [""] + summary_table(runs)))


if __name__ == "__main__":
    main()
