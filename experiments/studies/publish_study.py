"""Publish a study's finished runs into the repository: the files the analyzer needs, then its outputs.

    .venv/bin/python experiments/studies/publish_study.py --results-dir results/study --to docs/study \
        --pages docs/study/README.md README.md

Every finished run of --results-dir (results.json status `completed`) gets its small files copied to
`TO/runs/<run_id>/`: config.yaml, metrics.jsonl, results.json, bit_assignments.json and partitions.json, enough
for the analyzer to redraw every figure but t-SNE (models and features stay behind: they are large). Runs still
in flight are left out, so a study that spans days lands in pieces. Then the analyzer runs on a scratch copy of
`TO/runs`, and its comparison.json, report.md and images/ replace those in TO. In each --pages file (default
TO/README.md) that holds the two table markers (TABLE_BEGIN, TABLE_END), the results table between them is
rewritten from the new comparison.json: per variation the mean +- std over seeds of the final, AUC and clients'
quantized accuracy, the rounds to the target, and the Welch p-values against the method's reference (FedMPQ for
FedMPQ-KD and its variants, in the same regime). The accuracy-per-round figures (the main experiment's and one per
axis, e.g. local epochs) are also drawn as TO/<figure>.png, PNGs that a web page can show inline (the analyzer's
figures are PDFs). Torch-free, like the analyzer.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedmpq_flwr.analysis.cli import COMPARISON_FILE, analyze
from fedmpq_flwr.analysis.figures import Context, axis_figures, curve_figures
from fedmpq_flwr.analysis.report import REPORT_FILE
from fedmpq_flwr.rundir.results import RESULTS_FILE, read_results

RUN_FILES = ("config.yaml", "metrics.jsonl", RESULTS_FILE, "bit_assignments.json", "partitions.json")
TABLE_BEGIN = "<!-- results table: written by experiments/studies/publish_study.py -->"
TABLE_END = "<!-- end of the results table -->"
TESTED = ("final_accuracy", "auc_accuracy", "final_quant_accuracy_mean")  # the p-value column's order
PREVIEW_FIGURE = "accuracy_vs_rounds"  # and accuracy_vs_rounds_axis_<axis>, one per axis


def finished_runs(results_dir: Path) -> list[Path]:
    """Run folders of `results_dir` whose results.json says the run completed, by name."""
    return sorted(
        run_dir
        for run_dir in results_dir.iterdir()
        if (run_dir / RESULTS_FILE).is_file() and (read_results(run_dir) or {}).get("status") == "completed"
    )


def copy_run(run_dir: Path, runs_dir: Path) -> list[str]:
    """Copy one run's small files to runs_dir/<run_id>/; the names copied."""
    target = runs_dir / run_dir.name
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, target / name)
            copied.append(name)
    return copied


def percent(stat: dict[str, float | None]) -> str:
    """A {mean, std} of fractions as "mean +- std" in %, the std left out for one seed."""
    if stat["mean"] is None:
        return "–"
    return f"{100 * stat['mean']:.2f}" + (f" ± {100 * stat['std']:.2f}" if stat["std"] is not None else "")


def study_table(comparison: dict[str, Any]) -> str:
    """The study page's results table (markdown) from a comparison.json."""
    target = comparison["target_accuracy"]["value"]
    lines = [
        f"Accuracies in %, mean ± std over the seeds; rounds to target: the first round whose mean accuracy reaches "
        f"{100 * target:.2f} % ({comparison['target_accuracy']['source']}). p: Welch's t-test of final, AUC and "
        "quantized accuracy against the reference named.",
        "",
        "| variation | regime | rounds | seeds | final accuracy | AUC | clients' quantized accuracy | rounds to target "
        "| p (final, AUC, quantized) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, var in comparison["variations"].items():
        reference = comparison["methods"][name]["overhead_reference"]
        tests = {t["metric"]: t for t in comparison["tests"] if (t["a"], t["b"]) == (name, reference)}
        p_values = ", ".join(
            "n/a" if tests.get(metric, {}).get("p") is None else f"{tests[metric]['p']:.3f}" for metric in TESTED
        )
        regime = f"{var['axis']} = {var['axis_value']}" if var["axis"] else "main"
        rounds_to_target = comparison["methods"][name]["rounds_to_target"]
        cells = [
            name, regime, str(max(var["rounds"], default=0)), ", ".join(map(str, var["seeds"])),
            percent(var["final_accuracy"]), percent(var["auc_accuracy"]), percent(var["final_quant_accuracy_mean"]),
            "not reached" if rounds_to_target is None else str(rounds_to_target),
            f"against {reference}: {p_values}" if tests else "",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(readme: Path, comparison: dict[str, Any]) -> None:
    """Rewrite the table between the markers of `readme`; a page without them is left alone."""
    text = readme.read_text() if readme.is_file() else ""
    begin, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if begin < 0 or end < begin:
        return
    readme.write_text(f"{text[: begin + len(TABLE_BEGIN)]}\n{study_table(comparison)}\n{text[end:]}")


def draw_previews(comparison: dict[str, Any], to: Path) -> None:
    """The analyzer's accuracy-per-round figures of `comparison` (main, then per axis), drawn as TO/<name>.png in
    place of the previous ones."""
    for stale in to.glob(f"{PREVIEW_FIGURE}*.png"):
        stale.unlink()
    context = Context(to, comparison["variations"], {}, comparison["methods"], comparison["robustness"])
    for figure in [*curve_figures(context), *axis_figures(context)]:
        wanted = figure.name == PREVIEW_FIGURE or figure.name.startswith(f"{PREVIEW_FIGURE}_axis_")
        if wanted and figure.draw is not None:
            figure.draw(to / f"{figure.name}.png")


def publish(results_dir: Path, to: Path, pages: list[Path] | None = None) -> list[str]:
    """Copy the finished runs, re-run the analyzer on them, rewrite the pages' tables (default TO/README.md);
    the run ids published."""
    runs = finished_runs(results_dir)
    for run_dir in runs:
        copy_run(run_dir, to / "runs")
    if not (to / "runs").is_dir():
        return []
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "runs"
        shutil.copytree(to / "runs", copy)
        comparison = analyze(copy)
        for name in (COMPARISON_FILE, REPORT_FILE):
            shutil.copy2(copy / name, to / name)
        shutil.rmtree(to / "images", ignore_errors=True)
        if (copy / "images").is_dir():
            shutil.copytree(copy / "images", to / "images")
    draw_previews(comparison, to)
    for page in pages if pages is not None else [to / "README.md"]:
        write_table(page, comparison)
    return [run_dir.name for run_dir in runs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, required=True, help="the study's results folder")
    parser.add_argument("--to", type=Path, required=True, help="the folder in the repository, e.g. docs/study")
    parser.add_argument(
        "--pages", type=Path, nargs="+", help="markdown files whose results table to rewrite (default: TO/README.md)"
    )
    args = parser.parse_args(argv)
    if not args.results_dir.is_dir():
        print(f"error: --results-dir {args.results_dir} is not a folder", file=sys.stderr)
        return 2
    published = publish(args.results_dir, args.to, args.pages)
    print(f"{len(published)} finished runs in {args.to / 'runs'}: {', '.join(published) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
