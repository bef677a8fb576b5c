"""Analyzer: summarise a results folder into comparison.json, report.md and PDF figures.

Usage: python -m fedmpq_flwr.evaluate --results-dir DIR [--target-accuracy F]

Reads only files (via fedmpq_flwr.rundir.results); never imports torch or training code. The parts live
in fedmpq_flwr.analysis: runs (loading, grouping), reference (who is compared with whom), stats
(derived numbers, t-tests, robustness), criteria (success criteria), scalability (hypothesis (d)), figures
and report.
Accuracies in comparison.json are fractions (0..1) as in metrics.jsonl; figures and report.md show %.
Std is the sample std (ddof=1); it is null when a variation has a single seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedmpq_flwr.analysis import criteria, report, scalability, stats
from fedmpq_flwr.analysis.figures import Context, make_figures
from fedmpq_flwr.analysis.reference import choose_references
from fedmpq_flwr.analysis.runs import find_run_dirs, group_runs, load_run, public_run, summarize_variation
from fedmpq_flwr.rundir.results import write_atomic

COMPARISON_FILE = "comparison.json"


def build_comparison(
    runs: list[dict[str, Any]], target_override: float | None = None
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The comparison dict (without figures) and the completed runs by variation (for the figures)."""
    groups, incomplete = group_runs(runs)
    variations = {name: summarize_variation(group) for name, group in groups.items()}
    references = choose_references(variations)
    axis_vals = stats.axis_values(variations, groups)
    target = stats.choose_target(variations, references, target_override)
    methods = stats.derive_methods(variations, axis_vals, target["value"])
    comparison = {
        "runs": [public_run(run) for run in runs],
        "variations": variations,
        "incomplete_runs": incomplete,
        "reference": references,
        "target_accuracy": target,
        "methods": methods,
        "tests": stats.welch_tests(variations, groups, methods, references),
        "success_criteria": criteria.success_criteria(variations, groups, references, axis_vals),
        "robustness": stats.robustness(variations, axis_vals),
    }
    comparison["scalability"] = scalability.scalability(variations, groups, comparison["robustness"])
    return comparison, groups


def analyze(results_dir: Path, target_accuracy: float | None = None) -> dict[str, Any]:
    """Load all runs, write figures, comparison.json and report.md; return the comparison dict."""
    comparison, groups = build_comparison([load_run(d) for d in find_run_dirs(results_dir)], target_accuracy)
    written, skipped = make_figures(
        Context(results_dir, comparison["variations"], groups, comparison["methods"], comparison["robustness"])
    )
    comparison["figures"] = [figure["path"] for figure in written]
    comparison["figures_skipped"] = skipped
    comparison = stats.finite_or_none(comparison)
    write_atomic(results_dir / COMPARISON_FILE, json.dumps(comparison, indent=2, allow_nan=False) + "\n")
    write_atomic(results_dir / report.REPORT_FILE, report.render(comparison, results_dir.name, written))
    return comparison


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not an accuracy fraction in (0, 1]")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", required=True, type=Path, help="folder with one sub-folder per run")
    parser.add_argument(
        "--target-accuracy",
        type=_fraction,
        default=None,
        help="accuracy (fraction) for 'rounds to target'; default 90%% of the full-precision "
        "reference's mean final accuracy",
    )
    args = parser.parse_args(argv)
    if not args.results_dir.is_dir():
        print(f"error: results directory not found: {args.results_dir}", file=sys.stderr)
        return 2
    comparison = analyze(args.results_dir, args.target_accuracy)
    print(json.dumps(comparison, indent=2))
    print()
    print("\n".join(criteria.criteria_lines(comparison["success_criteria"])))
    for line in scalability.text_lines(comparison["scalability"]):
        print(line)
    for figure in comparison["figures"]:
        print(f"figure: {figure}")
    for skipped in comparison["figures_skipped"]:
        print(f"figure skipped: {skipped['name']}: {skipped['why']}")
    if not comparison["variations"]:
        print("figures skipped: no completed runs with recorded rounds")
    return 0
