"""The analyzer's per-client accuracy (final round) against hand computation, on hand-made folders:
comparison.json (runs, variations, methods), report.md and the client_accuracy figure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from analysis_builders import approx, run_main, write_client_accuracy, write_variation

from fedmpq_flwr.analysis import cli as analyzer

# 3 clients, 4 classes; class 3 is absent from the test set (None): shares renormalise over 0..2.
COUNTS = {0: [10, 0, 0, 10], 1: [0, 30, 10, 0], 2: [5, 5, 5, 5]}
FLOAT_SEED0 = [0.8, 0.4, 0.6, None]  # clients: 0.8 | .75*.4 + .25*.6 = 0.45 | (.8 + .4 + .6) / 3 = 0.6
FLOAT_SEED1 = [0.6, 0.4, 0.6, None]  # clients: 0.6 | 0.45 | (.6 + .4 + .6) / 3 = 0.5333
QUANT_SEED0 = {  # client k's own quantized model, on k's label mix
    0: [0.5, 0.5, 0.5, None],  # 0.5
    1: [0.0, 0.2, 1.0, None],  # .75*.2 + .25*1 = 0.4
    2: [1.0, 0.0, 0.0, None],  # (1 + 0 + 0) / 3 = 0.3333
}
QUANT_SEED1 = {0: [0.3, 0.5, 0.5, None], 1: [0.0, 0.2, 1.0, None], 2: [1.0, 0.0, 0.0, None]}  # 0.3 | 0.4 | 0.3333


def summary(values: list[float]) -> dict[str, float]:
    """mean, population std, worst and 10th percentile (linear) by hand, for three values."""
    low, mid, high = sorted(values)
    mean = sum(values) / 3
    return {
        "mean": mean,
        "std": math.sqrt(sum((v - mean) ** 2 for v in values) / 3),
        "worst": low,
        "p10": low + 0.2 * (mid - low),  # position 0.1 * (3 - 1) = 0.2 between the two lowest
    }


EXPECTED = {
    ("fedavg", 0, "float"): [0.8, 0.45, 0.6],
    ("fedavg", 1, "float"): [0.6, 0.45, 1.6 / 3],
    ("fedpq", 0, "float"): [0.8, 0.45, 0.6],
    ("fedpq", 1, "float"): [0.6, 0.45, 1.6 / 3],
    ("fedpq", 0, "quant"): [0.5, 0.4, 1 / 3],
    ("fedpq", 1, "quant"): [0.3, 0.4, 1 / 3],
}


def build(root: Path) -> Path:
    for name, strategy in (("fedavg", "fedavg"), ("fedpq", "fedpq")):
        dirs = write_variation(root, name, strategy, {0: 0.6, 1: 0.62})
        for run_dir, float_classes, quant in zip(dirs, (FLOAT_SEED0, FLOAT_SEED1), (QUANT_SEED0, QUANT_SEED1)):
            write_client_accuracy(run_dir, COUNTS, float_classes, quant if strategy == "fedpq" else None)
    write_variation(root, "qffl", "qffl", {0: 0.5})  # an older run: no per-class accuracy, no partitions.json
    return root


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = build(tmp_path_factory.mktemp("fairness"))
    return analyzer.build_comparison([analyzer.load_run(d) for d in analyzer.find_run_dirs(root)])[0]


def test_each_runs_clients_and_their_summary(comparison: dict[str, Any]) -> None:
    runs = {r["run_id"]: r for r in comparison["runs"]}
    for (name, seed, model), values in EXPECTED.items():
        run = runs[f"{name}_s{seed}"]
        key = "client_accuracy" if model == "float" else "client_quant_accuracy"
        assert run[f"per_{key}"] == {str(pid): approx(v) for pid, v in enumerate(values)}
        for stat, value in summary(values).items():
            assert run[f"{key}_{stat}"] == approx(value), (name, seed, model, stat)
    assert runs["fedavg_s0"]["per_client_quant_accuracy"] is None
    assert runs["fedavg_s0"]["client_quant_accuracy_worst"] is None
    assert runs["qffl_s0"]["per_client_accuracy"] is None and runs["qffl_s0"]["client_accuracy_mean"] is None


def test_variations_average_over_seeds_and_methods_name_the_devices_model(comparison: dict[str, Any]) -> None:
    var, methods = comparison["variations"], comparison["methods"]
    for name, model in (("fedavg", "float"), ("fedpq", "float"), ("fedpq", "quant")):
        key = "client_accuracy" if model == "float" else "client_quant_accuracy"
        for stat in ("mean", "std", "worst", "p10"):
            per_seed = [summary(EXPECTED[(name, seed, model)])[stat] for seed in (0, 1)]
            assert var[name][f"{key}_{stat}"]["mean"] == approx(np.mean(per_seed))
            assert var[name][f"{key}_{stat}"]["std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)
    # FedPQ's devices run quantized models, FedAvg's the float one; q-FFL's run recorded neither
    quant = [summary(EXPECTED[("fedpq", seed, "quant")]) for seed in (0, 1)]
    assert methods["fedpq"]["client_accuracy"] == {
        "model": "quant",
        **{stat: approx(np.mean([s[stat] for s in quant])) for stat in ("mean", "std", "worst", "p10")},
    }
    assert methods["fedavg"]["client_accuracy"]["model"] == "float"
    assert methods["fedavg"]["client_accuracy"]["worst"] == approx(0.45)
    assert methods["qffl"]["client_accuracy"] == {"model": None, "mean": None, "std": None, "worst": None, "p10": None}


def test_report_table_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    comp, out = run_main(build(tmp_path), capsys)
    text = (tmp_path / "report.md").read_text()
    assert "## Per-client accuracy (final round)" in text
    fedpq_quant = [summary(EXPECTED[("fedpq", seed, "quant")]) for seed in (0, 1)]

    def cell(stat: str) -> str:  # mean ± sample std over the two seeds, in %
        values = [100 * s[stat] for s in fedpq_quant]
        return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"

    row = next(line for line in text.splitlines() if line.startswith("| fedpq | fedpq | client's quantized model"))
    assert row.endswith(" | ".join(cell(stat) for stat in ("mean", "std", "worst", "p10")) + " |")
    assert "(the devices')" in row
    assert "| fedavg | fedavg | global float model (the devices') | 2 | " in text
    assert "| qffl |" not in text.split("## Per-client accuracy")[1].split("## Costs")[0]
    assert "images/client_accuracy.pdf" in comp["figures"]
    assert (tmp_path / "images" / "client_accuracy.pdf").read_bytes().startswith(b"%PDF")
    assert "figure: images/client_accuracy.pdf" in out.splitlines()


def test_without_per_class_data_the_figure_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_variation(tmp_path, "fedavg", "fedavg", {0: 0.6})
    comp, out = run_main(tmp_path, capsys)
    why = "no variation records per-class accuracy and its clients' label counts"
    assert {"name": "client_accuracy", "why": why} in comp["figures_skipped"]
    assert "No run records per-class accuracy" in (tmp_path / "report.md").read_text()
