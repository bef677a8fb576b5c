"""Publish a study's finished runs into the repository: the files the analyzer needs, then its outputs.

    .venv/bin/python experiments/studies/publish_study.py --results-dir /work/real/study --to docs/study

Every finished run of --results-dir (results.json status `completed`) gets its small files copied to
`TO/runs/<run_id>/`: config.yaml, metrics.jsonl, results.json, bit_assignments.json and partitions.json, enough
for the analyzer to redraw every figure but t-SNE (models and features stay behind: they are large). Runs still
in flight are left out, so a study that spans days lands in pieces. Then the analyzer runs on a scratch copy of
`TO/runs`, and its comparison.json, report.md and images/ replace those in TO. Torch-free, like the analyzer.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from fedmpq_flwr.analysis.cli import COMPARISON_FILE, analyze
from fedmpq_flwr.analysis.report import REPORT_FILE
from fedmpq_flwr.rundir.results import RESULTS_FILE, read_results

RUN_FILES = ("config.yaml", "metrics.jsonl", RESULTS_FILE, "bit_assignments.json", "partitions.json")


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


def publish(results_dir: Path, to: Path) -> list[str]:
    """Copy the finished runs, re-run the analyzer on them; the run ids published."""
    runs = finished_runs(results_dir)
    for run_dir in runs:
        copy_run(run_dir, to / "runs")
    if not (to / "runs").is_dir():
        return []
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "runs"
        shutil.copytree(to / "runs", copy)
        analyze(copy)
        for name in (COMPARISON_FILE, REPORT_FILE):
            shutil.copy2(copy / name, to / name)
        shutil.rmtree(to / "images", ignore_errors=True)
        if (copy / "images").is_dir():
            shutil.copytree(copy / "images", to / "images")
    return [run_dir.name for run_dir in runs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, required=True, help="the study's results folder")
    parser.add_argument("--to", type=Path, required=True, help="the folder in the repository, e.g. docs/study")
    args = parser.parse_args(argv)
    if not args.results_dir.is_dir():
        print(f"error: --results-dir {args.results_dir} is not a folder", file=sys.stderr)
        return 2
    published = publish(args.results_dir, args.to)
    print(f"{len(published)} finished runs in {args.to / 'runs'}: {', '.join(published) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
