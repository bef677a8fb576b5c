"""The committed reference study (docs/study/) is what the analyzer makes of its committed runs: rerun on a copy
of docs/study/runs, it gives the committed comparison.json's tests, success criteria and per-variation means.
Torch-free; it fails when an analyzer change moves a published number without the study being republished
(experiments/studies/publish_study.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fedmpq_flwr.analysis.cli import COMPARISON_FILE, build_comparison
from fedmpq_flwr.analysis.runs import find_run_dirs, load_run
from fedmpq_flwr.rundir.results import RESULTS_FILE

STUDY = Path(__file__).resolve().parent.parent / "docs" / "study"
SUMMARIES = ("final_accuracy", "auc_accuracy", "best_accuracy", "final_quant_accuracy_mean", "n", "seeds", "run_ids")


def rounded(value: Any) -> Any:
    """Floats to 12 significant digits, recursively: another CPU's libm may move a p-value's last bit, never more."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def test_every_committed_run_finished_every_round() -> None:
    run_dirs = sorted((STUDY / "runs").iterdir())
    assert run_dirs
    for run_dir in run_dirs:
        results = json.loads((run_dir / RESULTS_FILE).read_text())
        assert results["status"] == "completed", run_dir.name
        rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert rounds == list(range(1, results["num_rounds"] + 1)), run_dir.name


def test_the_analyzer_reproduces_the_committed_comparison(tmp_path: Path) -> None:
    copy = tmp_path / "runs"
    shutil.copytree(STUDY / "runs", copy)
    comparison, _ = build_comparison([load_run(run_dir) for run_dir in find_run_dirs(copy)])
    committed = json.loads((STUDY / COMPARISON_FILE).read_text())
    assert rounded(comparison["tests"]) == rounded(committed["tests"])
    assert rounded(comparison["success_criteria"]) == rounded(committed["success_criteria"])
    assert sorted(comparison["variations"]) == sorted(committed["variations"])
    for name, variation in comparison["variations"].items():
        mine, published = ({k: v[k] for k in SUMMARIES} for v in (variation, committed["variations"][name]))
        assert rounded(mine) == rounded(published), name
