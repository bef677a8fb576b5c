"""Analyzer: summarise a results folder into comparison.json and figures.

Usage: python -m fedmpq_flwr.evaluate --results-dir DIR

Reads only files (via fedmpq_flwr.results); never imports torch or training code.
Accuracies in comparison.json are fractions (0..1) as in metrics.jsonl; figures show %.
Std is the sample std (ddof=1); it is null (None) when a variation has a single seed.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedmpq_flwr.results import (CONFIG_FILE, METRICS_FILE, STATUS_COMPLETED, is_complete, read_metrics,
                                 read_results, summarize_history)

IMAGES_DIR = "images"
COMPARISON_FILE = "comparison.json"
ACCURACY_KEYS = ("final_accuracy", "best_accuracy", "auc_accuracy")
# Last-round values of quantized methods (None for full-precision runs): summary name -> metrics key.
FINAL_VALUES = {"final_quant_accuracy_mean": "quant_test_accuracy_mean",
                "final_quant_accuracy_min": "quant_test_accuracy_min", "final_avg_bits": "avg_bits"}
# Per-run scalars aggregated across seeds in each variation (add a key here to aggregate it).
VARIATION_SCALARS = ACCURACY_KEYS + ("mean_round_time_s", "total_bits_up", "total_bits_down") + tuple(FINAL_VALUES)
# Per-round curves averaged across seeds: name prefix -> metrics key (skipped when a run lacks it).
CURVES = {"accuracy": "test_accuracy", "quant_accuracy": "quant_test_accuracy_mean"}
RUN_LABELS = ("variation", "description", "strategy", "model", "dataset")
STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1)), "v"), ((0, (3, 1, 1, 1)), "x")]
INCOMPLETE_REASONS = {
    "failed-no-metrics": "no complete results.json and no metrics recorded (crashed before round 1)",
    "incomplete": "no complete results.json (crashed, killed or still running)",
    STATUS_COMPLETED: "completed but no rounds recorded",
}
HATCHES = ["//", "..", "xx", "\\\\", "oo", "--", "++", "**"]


def _agg(records: list[dict[str, Any]], key: str, fn: Callable[[Any], Any]) -> float | None:
    """fn (np.mean / np.sum) over the records that carry `key`, or None when none do."""
    values = [float(r[key]) for r in records if r.get(key) is not None]
    return float(fn(values)) if values else None


def _read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.yaml as a dict ({} when missing or unreadable)."""
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def _torn_lines(run_dir: Path, parsed: int) -> int:
    """How many non-empty metrics lines read_metrics dropped as unparseable."""
    try:
        lines = (run_dir / METRICS_FILE).read_text().splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if line.strip()) - parsed


def load_run(run_dir: Path) -> dict[str, Any]:
    """One run's summary row (plus its `history`, popped before writing JSON)."""
    config, results, metrics = _read_config(run_dir), read_results(run_dir), read_metrics(run_dir)
    history = [r for r in (metrics or (results or {}).get("history") or [])
               if isinstance(r, dict) and "round" in r and "test_accuracy" in r]
    history.sort(key=lambda r: r["round"])
    status = STATUS_COMPLETED if is_complete(run_dir) else ("incomplete" if history else "failed-no-metrics")
    run_id = str(config.get("run_id") or run_dir.name)
    seed = config.get("seed", ((results or {}).get("metadata") or {}).get("seed"))
    return {
        "run_id": run_id,
        "variation": str(config.get("variation") or run_id),
        "description": config.get("description", ""),
        **{key: (config.get(key) or {}).get("name") for key in ("strategy", "model", "dataset")},
        "seed": seed,
        "status": status,
        "rounds_completed": len(history),
        "num_rounds_planned": (config.get("train") or {}).get("num_rounds"),
        **(summarize_history(history) if history else dict.fromkeys(ACCURACY_KEYS)),
        "mean_round_time_s": _agg(history, "round_time_s", np.mean),
        **{f"total_{key}": _agg(history, key, np.sum) for key in ("bits_up", "bits_down")},
        **{f"mean_{key}_per_round": _agg(history, key, np.mean) for key in ("bits_up", "bits_down")},
        **{name: (history[-1].get(key) if history else None) for name, key in FINAL_VALUES.items()},
        "torn_metrics_lines": _torn_lines(run_dir, len(metrics)),
        "history": history,
    }


def incomplete_reason(run: dict[str, Any]) -> str | None:
    """Why a run is excluded from the variation statistics (None when it is not)."""
    if run["status"] == STATUS_COMPLETED and run["rounds_completed"]:
        return None
    reason = INCOMPLETE_REASONS[run["status"]]
    if run["torn_metrics_lines"]:
        reason += f"; {run['torn_metrics_lines']} unparseable metrics line(s) ignored"
    return reason


def find_run_dirs(results_dir: Path) -> list[Path]:
    """Sub-directories that hold a config.yaml or a metrics.jsonl, sorted by name."""
    return sorted(d for d in results_dir.iterdir()
                  if d.is_dir() and ((d / CONFIG_FILE).exists() or (d / METRICS_FILE).exists()))


def mean_std(values: list[float | None]) -> dict[str, float | None]:
    """Mean and sample std (ddof=1; None when n == 1); both None if any value is missing."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None}
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else None}


def summarize_variation(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Across-seed statistics of the completed runs of one variation."""
    runs = sorted(runs, key=lambda r: (not isinstance(r["seed"], int), r["seed"] if isinstance(r["seed"], int)
                                       else 0, r["run_id"]))
    per_run = [{rec["round"]: rec for rec in r["history"]} for r in runs]
    shared = sorted(set.intersection(*(set(records) for records in per_run)))
    curves: dict[str, Any] = {}
    for prefix, key in CURVES.items():
        mean = std = None
        if all(key in records[rnd] for records in per_run for rnd in shared):
            values = np.array([[float(records[rnd][key]) for rnd in shared] for records in per_run]).reshape(len(runs), -1)
            mean, std = values.mean(axis=0).tolist(), (values.std(axis=0, ddof=1).tolist() if len(runs) > 1 else None)
        curves.update({f"{prefix}_per_round_mean": mean, f"{prefix}_per_round_std": std})
    return {
        **{key: runs[0][key] for key in RUN_LABELS},
        "n": len(runs),
        "seeds": [r["seed"] for r in runs],
        "run_ids": [r["run_id"] for r in runs],
        **{key: mean_std([r[key] for r in runs]) for key in VARIATION_SCALARS},
        "rounds": shared,
        **curves,
    }


def build_comparison(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The comparison dict (without `figures`) from loaded runs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    incomplete = []
    for run in runs:
        reason = incomplete_reason(run)
        if reason is None:
            groups.setdefault(run["variation"], []).append(run)
        else:
            incomplete.append({k: run[k] for k in ("run_id", "variation", "status", "rounds_completed",
                                                   "num_rounds_planned")} | {"reason": reason})
    return {
        "runs": [{k: v for k, v in run.items() if k != "history"} for run in runs],
        "variations": {name: summarize_variation(group) for name, group in sorted(groups.items())},
        "incomplete_runs": incomplete,
    }


# ---- figures: each builder takes the variations dict and an output path ---------------------

def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported lazily: importing this module stays light)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _wrap(name: str, width: int = 14) -> str:
    """Break a long variation name into short lines, preferably after an underscore."""
    return "\n".join(textwrap.wrap(name.replace("_", "_ "), width)).replace("_ ", "_")


def _save(fig: Any, path: Path) -> None:
    plt = _pyplot()
    plt.tight_layout()
    fig.savefig(path, format="pdf", bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)


def plot_accuracy_vs_rounds(variations: dict[str, dict[str, Any]], path: Path, curve: str = "accuracy",
                            ylabel: str = "Test accuracy (%)") -> None:
    """Mean of a per-round accuracy curve (%) per variation, std band when n > 1, final value labelled."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (name, var) in enumerate(variations.items()):
        rounds, mean = np.array(var["rounds"]), 100 * np.array(var[f"{curve}_per_round_mean"])
        style, marker = STYLES[i % len(STYLES)]
        (line,) = ax.plot(rounds, mean, linestyle=style, marker=marker, markevery=max(1, len(rounds) // 10),
                          label=f"{name} (n={var['n']})")
        if var[f"{curve}_per_round_std"] is not None:
            std = 100 * np.array(var[f"{curve}_per_round_std"])
            ax.fill_between(rounds, mean - std, mean + std, color=line.get_color(), alpha=0.2,
                            hatch=HATCHES[i % len(HATCHES)])
        ax.annotate(f"{mean[-1]:.1f}%", (rounds[-1], mean[-1]), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8, color=line.get_color())
    ax.set_xlabel("Communication round")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.1)  # room for the final-value labels
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_final_accuracy(variations: dict[str, dict[str, Any]], path: Path) -> None:
    """Bar per variation of mean final accuracy (%), std error bars when n > 1, values on top."""
    plt = _pyplot()
    names = list(variations)
    means = [100 * variations[n]["final_accuracy"]["mean"] for n in names]
    stds = [variations[n]["final_accuracy"]["std"] for n in names]
    errs = [np.nan if s is None else 100 * s for s in stds]  # no error bar for a single seed
    tops = [m + (0.0 if np.isnan(e) else e) for m, e in zip(means, errs)]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 1.2), 4.2))
    x = np.arange(len(names))
    bars = ax.bar(x, means, yerr=errs, capsize=4, edgecolor="black", color="lightgray",
                  label="mean over seeds", error_kw={"label": "± 1 std (n > 1)"} if tops != means else {})
    for i, bar in enumerate(bars):
        bar.set_hatch(HATCHES[i % len(HATCHES)])
        ax.text(bar.get_x() + bar.get_width() / 2, tops[i] + 1.0, f"{means[i]:.1f}",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{_wrap(n)}\n(n={variations[n]['n']})" for n in names], fontsize=8)
    ax.set_ylim(0, max(tops) * 1.25 + 2)
    ax.set_xlabel("Variation")
    ax.set_ylabel("Final test accuracy (%)")
    ax.legend(fontsize=8, loc="best")
    _save(fig, path)


# (file name, builder, the curve a variation must have to appear in it, or None for any variation)
FIGURES: list[tuple[str, Callable[[dict[str, dict[str, Any]], Path], None], str | None]] = [
    ("accuracy_vs_rounds.pdf", plot_accuracy_vs_rounds, None),
    ("final_accuracy.pdf", plot_final_accuracy, None),
    ("quantized_accuracy_vs_rounds.pdf",
     functools.partial(plot_accuracy_vs_rounds, curve="quant_accuracy",
                       ylabel="Test accuracy of the quantized client models,\nmean over clients (%)"),
     "quant_accuracy"),
]


def make_figures(variations: dict[str, dict[str, Any]], results_dir: Path) -> list[str]:
    """Write every figure in FIGURES into results_dir/images; return their relative paths."""
    plottable = {name: var for name, var in variations.items() if var["rounds"]}
    if not plottable:
        return []
    (results_dir / IMAGES_DIR).mkdir(exist_ok=True)
    written = []
    for name, builder, curve in FIGURES:
        shown = {k: v for k, v in plottable.items() if curve is None or v[f"{curve}_per_round_mean"] is not None}
        if shown:
            builder(shown, results_dir / IMAGES_DIR / name)
            written.append(f"{IMAGES_DIR}/{name}")
    return written


def analyze(results_dir: Path) -> dict[str, Any]:
    """Load all runs, write figures and comparison.json; return the comparison dict."""
    comparison = build_comparison([load_run(d) for d in find_run_dirs(results_dir)])
    comparison["figures"] = make_figures(comparison["variations"], results_dir)
    tmp = results_dir / (COMPARISON_FILE + ".tmp")
    tmp.write_text(json.dumps(comparison, indent=2, allow_nan=False) + "\n")
    tmp.replace(results_dir / COMPARISON_FILE)
    return comparison


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", required=True, type=Path, help="folder with one sub-folder per run")
    args = parser.parse_args(argv)
    if not args.results_dir.is_dir():
        print(f"error: results directory not found: {args.results_dir}", file=sys.stderr)
        return 2
    comparison = analyze(args.results_dir)
    print(json.dumps(comparison, indent=2))
    for figure in comparison["figures"]:
        print(f"figure: {figure}")
    if not comparison["figures"]:
        print("figures skipped: no completed runs with recorded rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
