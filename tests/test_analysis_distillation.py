"""The analyzer on the full-precision distillation baselines (hand-made FedGKD and FedKD runs next to
FedAvg, FedMPQ and FedMPQ-KD): catalog facts, curves with a round without a teacher, the mentor's
FLOPs, the report's distillation table and the KD figures."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from analysis_builders import FEDAVG, FEDMPQ, FEDMPQ_KD, approx, run_main, write_config, write_history, write_variation

from fedmpq_flwr.analysis import cli as analyzer
from fedmpq_flwr.analysis.figures import _curve_series, _main_or_all
from fedmpq_flwr.analysis.runs import curve_matrix

FEDGKD = {0: 0.81, 1: 0.83, 2: 0.85}
FEDKD = {0: 0.76, 1: 0.78, 2: 0.80}


def distiller_round(strategy: str, rnd: int, acc: float) -> dict[str, Any]:
    """FedGKD: no teacher in round 1 (no kd_loss, agreement; teacher FLOPs 0); FedKD: a mentor in every round."""
    record: dict[str, Any] = {
        "round": rnd,
        "test_accuracy": acc,
        "test_loss": 1 - acc,
        "round_time_s": 9.0,
        "client_compute_s": 12.0,
        "train_flops": 1e9,
        "task_loss": 1.0,
        "grad_norm": 1.5,
    }
    if strategy == "fedgkd":
        record.update(bits_up=32000.0, bits_down=64000.0 if rnd > 1 else 32000.0)
        record["teacher_flops"] = 0.0 if rnd == 1 else 0.3e9
        if rnd > 1:
            record.update(kd_loss=0.2, agreement=0.9)
    else:
        record.update(bits_up=8000.0, bits_down=32000.0, client_compute_s=30.0, mentor_flops=1.7e9)
        record.update(kd_loss=0.4, agreement=0.6)
    return record


def write_distiller(root: Path, strategy: str, finals: dict[int, float]) -> None:
    for seed, final in finals.items():
        run_dir = root / f"{strategy}_s{seed}"
        write_config(run_dir, strategy, seed, strategy)
        accuracies = (final - 0.2, final - 0.1, final)
        write_history(
            run_dir,
            [{"run_id": run_dir.name, **distiller_round(strategy, r, a)} for r, a in enumerate(accuracies, 1)],
        )


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("distillation")
    write_variation(root, "fedavg", "fedavg", FEDAVG, round_time=8.0, bits=(32000.0, 32000.0))
    write_variation(root, "fedmpq", "fedmpq", FEDMPQ)
    write_variation(root, "fedmpq_kd", "fedmpq_kd", FEDMPQ_KD)
    write_distiller(root, "fedgkd", FEDGKD)
    write_distiller(root, "fedkd", FEDKD)
    with contextlib.redirect_stdout(io.StringIO()):
        assert analyzer.main(["--results-dir", str(root)]) == 0
    return root, json.loads((root / "comparison.json").read_text())


def test_the_catalog_classifies_the_baselines(analyzed) -> None:
    _, comp = analyzed
    for name in ("fedgkd", "fedkd"):
        method = comp["methods"][name]
        assert (method["family"], method["distils"], method["overhead_reference"]) == ("full_precision", True, "fedavg")
        assert method["gap_closed_vs_fedmpq"] is None  # only quantized methods close FedMPQ's gap
    assert comp["reference"]["best_quantized_baseline"] == "fedmpq"  # a full-precision distiller never is
    assert comp["methods"]["fedgkd"]["gap_to_full_precision_points"] == approx(-1.0)  # 82 - 83


def test_a_round_without_a_teacher_leaves_a_gap_in_the_curves(analyzed) -> None:
    _, comp = analyzed
    gkd, kd = comp["variations"]["fedgkd"], comp["variations"]["fedkd"]
    assert gkd["kd_loss_per_round_mean"] == [None, approx(0.2), approx(0.2)]
    assert gkd["agreement_per_round_mean"] == [None, approx(0.9), approx(0.9)]
    assert kd["agreement_per_round_mean"] == [approx(0.6)] * 3
    assert gkd["mean_teacher_flops_per_round"]["mean"] == approx(0.2e9)  # (0 + 0.3 + 0.3) / 3 GFLOP
    assert kd["mean_mentor_flops_per_round"]["mean"] == approx(1.7e9)
    assert comp["variations"]["fedavg"]["agreement_per_round_mean"] is None


def test_a_diagnostic_missing_in_one_seed_only_is_no_curve() -> None:
    """A round that one run records and another lacks is still an error of the data, not a gap."""
    runs = [
        {"history": [{"round": 1, "kd_loss": 0.1}, {"round": 2, "kd_loss": 0.2}]},
        {"history": [{"round": 1}, {"round": 2, "kd_loss": 0.3}]},
    ]
    assert curve_matrix(runs, "kd_loss") is None
    runs[0]["history"][0].pop("kd_loss")
    values = curve_matrix(runs, "kd_loss")
    assert np.isnan(values[:, 0]).all() and values[:, 1].tolist() == [0.2, 0.3]


def test_the_kd_figures_show_every_distilling_method(analyzed) -> None:
    root, comp = analyzed
    for name in ("agreement_vs_rounds", "kd_losses_vs_rounds", "flops_per_round"):
        assert (root / "images" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    main = _main_or_all(comp["variations"])
    for curve in ("agreement", "kd_loss"):
        labels = [s.label.split(" (n=")[0] for s in _curve_series(main, curve)]
        assert labels == ["fedgkd", "fedkd", "fedmpq_kd"]  # by recorded data; the catalog says they distil
        assert all(comp["methods"][name]["distils"] for name in labels)


def test_the_report_compares_fedmpq_kd_with_the_distillation_baselines(analyzed) -> None:
    root, _ = analyzed
    text = (root / "report.md").read_text()
    section = text.split("## Distillation methods")[1].split("## Welch")[0]
    rows = [line for line in section.splitlines() if line.startswith("| fed")]
    assert rows == [
        # final acc., minus FedMPQ-KD (71.00), bits up/down (Mbit), client compute, train + teacher + mentor GFLOP
        "| fedgkd | fedgkd | full_precision | 3 | 83.00 ± 2.00 | +12.00 | 0.032 ± 0 | 0.0533 ± 0 | 12 ± 0 | 1.2 |",
        "| fedkd | fedkd | full_precision | 3 | 78.00 ± 2.00 | +7.00 | 0.008 ± 0 | 0.032 ± 0 | 30 ± 0 | 2.7 |",
        "| fedmpq_kd | fedmpq_kd | quantized | 3 | 71.00 ± 1.00 | +0.00 | 0.001 ± 0 | 0.002 ± 0 | 22 ± 0 | 1.5 |",
    ]
    assert "mentor GFLOP / round" in text


def test_a_categorical_axis_draws_its_robustness_figure(tmp_path: Path, capsys) -> None:
    """FedKD's smoke run varies model.name: a categorical axis, drawn with its values as categories."""
    write_variation(tmp_path, "fedavg", "fedavg", FEDAVG)
    write_variation(tmp_path, "fedkd_resnet", "fedkd", FEDKD, axis="model.name")
    comp, _ = run_main(tmp_path, capsys)
    assert {"images/robustness_model.pdf", "images/accuracy_vs_rounds_axis_model.pdf"} <= set(comp["figures"])
    (row,) = comp["robustness"]["model.name"]["methods"]["fedkd"]
    assert row["variation"] == "fedkd_resnet" and row["degradation_points"] == 0.0
