"""The analyzer's derived numbers against hand computation: references, target and rounds to it,
gaps, overheads, costs, Welch tests, success criteria and robustness (folders from test_analysis_builders)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from analysis_builders import (
    FEDAVG,
    FEDMPQ,
    FEDMPQ_DIR,
    FEDMPQ_KD,
    FEDMPQ_KD_DIR,
    approx,
    run_main,
    write_config,
    write_history,
    write_study,
    write_variation,
)
from scipy import stats as scipy_stats

from fedmpq_flwr.analysis import cli as analyzer
from fedmpq_flwr.methods.catalog import CATALOG, FULL_PRECISION, QUANTIZED, MethodSpec


def compare_folder(root: Path, target: float | None = None) -> dict[str, Any]:
    """comparison.json's numbers without drawing figures (fast)."""
    return analyzer.build_comparison([analyzer.load_run(d) for d in analyzer.find_run_dirs(root)], target)[0]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compare_folder(write_study(tmp_path_factory.mktemp("study")))


def test_references_and_target(study: dict[str, Any]) -> None:
    ref = study["reference"]
    assert (ref["full_precision"], ref["fedmpq"], ref["proposed"], ref["best_quantized_baseline"]) == (
        "fedavg",
        "fedmpq",
        "fedmpq_kd",
        "fedmpq",
    )
    # 90 % of fedavg's mean final accuracy (0.80 + 0.82 + 0.84) / 3
    assert study["target_accuracy"]["value"] == approx(0.9 * 0.82)
    assert "fedavg" in study["target_accuracy"]["source"]


def test_per_variation_accuracy_and_costs(study: dict[str, Any]) -> None:
    var = study["variations"]
    kd = var["fedmpq_kd"]
    assert kd["final_accuracy"] == {"mean": approx(0.71), "std": approx(0.01)}
    assert kd["best_accuracy"]["mean"] == approx(0.71)
    # AUC of final-0.2, final-0.1, final: ((2f - 0.3)/2 + (2f - 0.1)/2) / 2 = f - 0.1
    assert kd["auc_accuracy"]["mean"] == approx(0.61)
    assert kd["final_quant_accuracy_mean"]["mean"] == approx(0.66)
    assert kd["mean_bits_up_per_round"] == {"mean": approx(1000), "std": approx(0)}
    assert kd["mean_bits_total_per_round"]["mean"] == approx(3000)
    assert kd["mean_round_time_s"]["mean"] == approx(10.5)
    # FedMPQ-KD rounds carry no cost fields: derived from the two clients
    assert kd["mean_client_compute_s"]["mean"] == approx(22.0)
    assert kd["mean_train_flops_per_round"]["mean"] == approx(1e9)
    assert kd["mean_teacher_flops_per_round"]["mean"] == approx(0.5e9)
    assert kd["peak_client_rss_mb"]["mean"] == approx(650.0)
    assert kd["peak_server_rss_mb"]["mean"] == approx(900.0)
    assert kd["peak_client_gpu_mb"] == {"mean": None, "std": None}
    assert var["fedmpq"]["mean_client_compute_s"]["mean"] == approx(20.0)
    assert var["fedmpq"]["mean_teacher_flops_per_round"]["mean"] is None
    assert var["fedavg"]["mean_train_flops_per_round"]["mean"] is None
    assert kd["kd_loss_per_round_mean"] == [approx(0.3)] * 3 and kd["agreement_per_round_std"] == [approx(0)] * 3
    assert var["fedmpq"]["kd_loss_per_round_mean"] is None
    assert kd["accuracy_per_round_mean"] == [approx(0.51), approx(0.61), approx(0.71)]
    assert var["fedmpq_iid"]["axis_value"] == "inf" and var["fedmpq_iid"]["dataset_alpha"] == "inf"


def test_gaps_overheads_and_rounds_to_target(study: dict[str, Any]) -> None:
    m = study["methods"]
    kd, mpq, fp = m["fedmpq_kd"], m["fedmpq"], m["fedavg"]
    # target 0.738: fedavg's mean curve 0.62, 0.72, 0.82 reaches it in round 3; FedMPQ's (max 0.62) never
    assert fp["rounds_to_target"] == 3 and mpq["rounds_to_target"] is None and kd["rounds_to_target"] is None
    assert kd["gap_to_full_precision_points"] == approx(100 * (0.82 - 0.71))
    assert mpq["gap_to_full_precision_points"] == approx(100 * (0.82 - 0.62))
    assert kd["gap_closed_vs_fedmpq"] == approx((0.71 - 0.62) / (0.82 - 0.62))
    assert mpq["gap_closed_vs_fedmpq"] is None and fp["gap_closed_vs_fedmpq"] is None
    assert kd["overhead_reference"] == "fedmpq" and mpq["overhead_reference"] == "fedavg"
    assert fp["overhead_reference"] is None and fp["round_time_overhead"] is None
    assert kd["round_time_overhead"] == approx(10.5 / 10 - 1)
    assert kd["client_compute_overhead"] == approx(22 / 20 - 1)
    assert kd["final_accuracy_diff_points"] == approx(100 * (0.71 - 0.62))
    assert mpq["round_time_overhead"] == approx(10 / 8 - 1)
    assert mpq["bits_up_overhead"] == approx(1000 / 32000 - 1)
    # like with like on the alpha axis: the Dirichlet(0.1) runs are compared with each other; no
    # full-precision run at alpha 0.1, so no gap there
    axis_kd = m["fedmpq_kd_dir0.1"]
    assert axis_kd["overhead_reference"] == "fedmpq_dir0.1" and axis_kd["fedmpq"] == "fedmpq_dir0.1"
    assert axis_kd["full_precision"] is None and axis_kd["gap_to_full_precision_points"] is None
    assert axis_kd["final_accuracy_diff_points"] == approx(100 * (0.44 - 0.41))
    assert m["fedmpq_iid"]["overhead_reference"] is None


def test_partners_share_the_scale_mode(tmp_path: Path) -> None:
    """Variations that differ from their method's faithful run in a setting (quant.scale_grad) are
    compared like with like: FedMPQ-KD with the frozen scale against FedMPQ with the frozen scale,
    on the main experiment and along an axis; the best quantized baseline may be either FedMPQ."""
    frozen = {"scale_grad": "frozen"}
    write_variation(tmp_path, "fedavg", "fedavg", FEDAVG, round_time=8.0, bits=(32000.0, 32000.0))
    write_variation(tmp_path, "fedmpq", "fedmpq", FEDMPQ)
    write_variation(tmp_path, "fedmpq_scale_frozen", "fedmpq", {0: 0.66, 1: 0.68, 2: 0.70}, quant=frozen)
    write_variation(tmp_path, "fedmpq_kd", "fedmpq_kd", FEDMPQ_KD)
    write_variation(tmp_path, "fedmpq_kd_scale_frozen", "fedmpq_kd", FEDMPQ_KD, quant=frozen)
    epochs = {"axis": "train.local_epochs", "local_epochs": 2}
    write_variation(tmp_path, "fedmpq_epochs2", "fedmpq", FEDMPQ, **epochs)
    write_variation(tmp_path, "fedmpq_scale_frozen_epochs2", "fedmpq", FEDMPQ, quant=frozen, **epochs)
    write_variation(tmp_path, "fedmpq_kd_epochs2", "fedmpq_kd", FEDMPQ_KD, **epochs)
    write_variation(tmp_path, "fedmpq_kd_scale_frozen_epochs2", "fedmpq_kd", FEDMPQ_KD, quant=frozen, **epochs)
    comp = compare_folder(tmp_path)
    m = comp["methods"]
    pairs = {name: (m[name]["fedmpq"], m[name]["full_precision"]) for name in m if name.startswith("fedmpq_kd")}
    assert pairs == {
        "fedmpq_kd": ("fedmpq", "fedavg"),
        "fedmpq_kd_scale_frozen": ("fedmpq_scale_frozen", "fedavg"),  # fedavg never reads quant.*
        "fedmpq_kd_epochs2": ("fedmpq_epochs2", None),
        "fedmpq_kd_scale_frozen_epochs2": ("fedmpq_scale_frozen_epochs2", None),
    }
    assert m["fedmpq_kd_scale_frozen_epochs2"]["overhead_reference"] == "fedmpq_scale_frozen_epochs2"
    assert comp["reference"]["best_quantized_baseline"] == "fedmpq_scale_frozen"  # 0.68 > 0.62
    accuracy = next(c for c in comp["success_criteria"] if c["name"].startswith("accuracy"))
    assert (accuracy["numbers"]["proposed"], accuracy["numbers"]["baseline"]) == ("fedmpq_kd", "fedmpq_scale_frozen")


def test_no_partner_without_the_same_scale_mode(tmp_path: Path) -> None:
    """A frozen-scale FedMPQ-KD with only a faithful FedMPQ beside it has no FedMPQ partner."""
    write_variation(tmp_path, "fedmpq", "fedmpq", FEDMPQ)
    write_variation(tmp_path, "fedmpq_kd", "fedmpq_kd", FEDMPQ_KD)
    write_variation(tmp_path, "fedmpq_kd_scale_frozen", "fedmpq_kd", FEDMPQ_KD, quant={"scale_grad": "frozen"})
    m = compare_folder(tmp_path)["methods"]
    assert m["fedmpq_kd"]["fedmpq"] == "fedmpq"
    assert m["fedmpq_kd_scale_frozen"]["fedmpq"] is None
    assert m["fedmpq_kd_scale_frozen"]["overhead_reference"] is None


def test_rounds_to_target_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_variation(tmp_path, "fedavg", "fedavg", FEDAVG, costs=False)
    write_variation(tmp_path, "fedmpq", "fedmpq", FEDMPQ, costs=False)
    comp, _ = run_main(tmp_path, capsys, "--target-accuracy", "0.6")
    assert comp["target_accuracy"] == {"value": 0.6, "source": "--target-accuracy"}
    # mean curves: fedavg 0.62, 0.72, 0.82 -> round 1; fedmpq 0.42, 0.52, 0.62 -> round 3
    assert comp["methods"]["fedavg"]["rounds_to_target"] == 1
    assert comp["methods"]["fedmpq"]["rounds_to_target"] == 3


def test_target_without_full_precision_uses_best_variation(tmp_path: Path) -> None:
    write_variation(tmp_path, "fedmpq", "fedmpq", FEDMPQ)
    write_variation(tmp_path, "fedmpq_kd", "fedmpq_kd", FEDMPQ_KD)
    comp = compare_folder(tmp_path)
    assert comp["reference"]["full_precision"] is None
    assert comp["target_accuracy"]["value"] == approx(0.9 * 0.71)
    assert "fedmpq_kd" in comp["target_accuracy"]["source"]
    assert comp["methods"]["fedmpq_kd"]["gap_closed_vs_fedmpq"] is None


def test_welch_tests_match_scipy(study: dict[str, Any]) -> None:
    tests = {(t["a"], t["b"], t["metric"]): t for t in study["tests"]}
    pairs = {(a, b) for a, b, _ in tests}
    assert pairs == {
        ("fedmpq", "fedavg"),
        ("fedmpq_kd", "fedmpq"),
        ("fedmpq_kd", "fedavg"),
        ("fedmpq_kd_dir0.1", "fedmpq_dir0.1"),
    }
    t = tests[("fedmpq_kd", "fedmpq", "final_accuracy")]
    expected = scipy_stats.ttest_ind(list(FEDMPQ_KD.values()), list(FEDMPQ.values()), equal_var=False)
    assert t["t"] == approx(expected.statistic) and t["p"] == approx(expected.pvalue) and t["note"] is None
    assert (t["n_a"], t["n_b"], t["diff_points"]) == (3, 3, approx(9.0))
    auc = tests[("fedmpq_kd", "fedmpq", "auc_accuracy")]
    expected = scipy_stats.ttest_ind(
        [f - 0.1 for f in FEDMPQ_KD.values()], [f - 0.1 for f in FEDMPQ.values()], equal_var=False
    )
    assert auc["p"] == approx(expected.pvalue)
    quant = tests[("fedmpq_kd", "fedmpq", "final_quant_accuracy_mean")]
    assert quant["diff_points"] == approx(9.0)
    assert ("fedmpq", "fedavg", "final_quant_accuracy_mean") not in tests  # full precision has none
    axis = tests[("fedmpq_kd_dir0.1", "fedmpq_dir0.1", "final_accuracy")]
    expected = scipy_stats.ttest_ind(list(FEDMPQ_KD_DIR.values()), list(FEDMPQ_DIR.values()), equal_var=False)
    assert axis["p"] == approx(expected.pvalue)


def test_welch_not_applicable() -> None:
    from fedmpq_flwr.analysis.stats import welch

    assert welch([0.5], [0.4, 0.6]) == {"t": None, "p": None, "note": "n/a: fewer than 2 seeds (1 vs 2)"}
    assert welch([0.5, 0.5], [0.4, 0.4])["note"] == "n/a: zero variance on both sides"
    one_sided = welch([0.5, 0.5], [0.4, 0.6])
    assert one_sided["p"] == approx(scipy_stats.ttest_ind([0.5, 0.5], [0.4, 0.6], equal_var=False).pvalue)


def criteria_of(root: Path) -> list[dict[str, Any]]:
    return compare_folder(root)["success_criteria"]


def test_criteria_pass(study: dict[str, Any]) -> None:
    accuracy, bits, time, non_iid = study["success_criteria"]
    assert [c["passed"] for c in study["success_criteria"]] == [True, True, True, True]
    n = accuracy["numbers"]
    assert n["gain_points"] == approx(9.0)
    assert n["gap_baseline_points"] == approx(20.0) and n["gap_proposed_points"] == approx(11.0)
    assert n["gap_reduction"] == approx(1 - 11 / 20)
    assert n["p"] == approx(
        scipy_stats.ttest_ind(list(FEDMPQ_KD.values()), list(FEDMPQ.values()), equal_var=False).pvalue
    )
    assert n["quant_accuracy_diff_points"] == approx(9.0)
    assert bits["numbers"]["bits_up_ratio"] == approx(1.0) and bits["numbers"]["bits_down_ratio"] == approx(1.0)
    assert time["numbers"]["round_time_overhead"] == approx(0.05)
    assert time["numbers"]["client_compute_overhead"] == approx(0.10)
    assert non_iid["numbers"]["alpha"] == 0.1 and non_iid["numbers"]["gain_points"] == approx(3.0)
    assert (non_iid["numbers"]["proposed"], non_iid["numbers"]["fedmpq"]) == ("fedmpq_kd_dir0.1", "fedmpq_dir0.1")
    assert all(c["why"] and "\n" not in c["why"] for c in study["success_criteria"])


def test_criteria_fail(tmp_path: Path) -> None:
    # +1 point and a 5 % smaller gap (19 vs 20 points); 10 % more bits up; 20 % more time; -1 point at alpha 0.1
    write_study(
        tmp_path,
        kd={0: 0.62, 1: 0.63, 2: 0.64},
        kd_dir={0: 0.40, 1: 0.40},
        kd_round_time=12.0,
        kd_bits=(1100.0, 2000.0),
    )
    accuracy, bits, time, non_iid = criteria_of(tmp_path)
    assert [accuracy["passed"], bits["passed"], time["passed"], non_iid["passed"]] == [False] * 4
    assert accuracy["numbers"]["gain_points"] == approx(1.0)
    assert accuracy["numbers"]["gap_reduction"] == approx(1 - 19 / 20)
    assert "gap to full precision 19.00 vs 20.00 points (+5.0 % reduction): below both thresholds" in accuracy["why"]
    assert bits["numbers"]["bits_up_ratio"] == approx(1.1)
    assert time["numbers"]["round_time_overhead"] == approx(0.2)
    assert non_iid["numbers"]["gain_points"] == approx(-1.0)


def test_criteria_not_evaluable(tmp_path: Path) -> None:
    # one seed per method (no p-value), no round times or bits, no fedmpq at any alpha but the main one
    write_variation(tmp_path, "fedmpq", "fedmpq", {0: 0.60}, costs=False)
    write_variation(tmp_path, "fedmpq_kd", "fedmpq_kd", {0: 0.70}, costs=False)
    accuracy, bits, time, non_iid = criteria_of(tmp_path)
    assert accuracy["passed"] is None and "fewer than 2 seeds" in accuracy["why"]
    assert accuracy["numbers"]["gain_points"] == approx(10.0)
    assert bits["passed"] is None and time["passed"] is None
    # the main experiment is the only setting both ran: alpha 0.5, evaluable without a p-value
    assert non_iid["passed"] is True and non_iid["numbers"]["alpha"] == 0.5

    empty = tmp_path / "no_proposed"
    write_variation(empty, "fedmpq", "fedmpq", FEDMPQ)
    assert [c["passed"] for c in criteria_of(empty)] == [None] * 4
    assert all("cannot evaluate" in c["why"] for c in criteria_of(empty))


def test_accuracy_criterion_gap_only_and_significance(tmp_path: Path) -> None:
    """+1.5 points but a 30 % smaller gap (3.5 vs 5 points) passes when significant; a big gain with
    overlapping seeds fails on p."""
    write_variation(tmp_path, "fedavg", "fedavg", {0: 0.65, 1: 0.65, 2: 0.65})
    write_variation(tmp_path, "fedmpq", "fedmpq", {0: 0.599, 1: 0.600, 2: 0.601})
    write_variation(tmp_path, "fedmpq_kd", "fedmpq_kd", {0: 0.614, 1: 0.615, 2: 0.616})
    accuracy = criteria_of(tmp_path)[0]
    assert accuracy["numbers"]["gain_points"] == approx(1.5)
    assert accuracy["numbers"]["gap_reduction"] == approx(1 - 3.5 / 5)
    expected = scipy_stats.ttest_ind([0.614, 0.615, 0.616], [0.599, 0.600, 0.601], equal_var=False).pvalue
    assert accuracy["numbers"]["p"] == approx(expected) and expected < 0.05
    assert accuracy["passed"] is True

    noisy = tmp_path / "noisy"
    write_variation(noisy, "fedmpq", "fedmpq", {0: 0.40, 1: 0.80})
    write_variation(noisy, "fedmpq_kd", "fedmpq_kd", {0: 0.45, 1: 0.85})
    accuracy = criteria_of(noisy)[0]
    assert accuracy["numbers"]["gain_points"] == approx(5.0) and accuracy["numbers"]["p"] > 0.05
    assert accuracy["passed"] is False and "p = " in accuracy["why"]


def test_accuracy_criterion_when_the_baseline_beats_full_precision(tmp_path: Path) -> None:
    """FedMPQ above full precision: no gap to close, so no share closed, and criterion (1) is not
    evaluable on the gap; its line says why with both accuracies."""
    write_variation(tmp_path, "fedavg", "fedavg", {0: 0.60})
    write_variation(tmp_path, "fedmpq", "fedmpq", {0: 0.62})
    write_variation(tmp_path, "fedmpq_kd", "fedmpq_kd", {0: 0.61})
    accuracy = criteria_of(tmp_path)[0]
    assert accuracy["passed"] is None and accuracy["numbers"]["gap_reduction"] is None
    assert "fedmpq has no gap to full precision to close (62.00 % vs fedavg 60.00 %)" in accuracy["why"]
    methods = compare_folder(tmp_path)["methods"]
    assert methods["fedmpq_kd"]["gap_closed_vs_fedmpq"] is None  # not (0.61 - 0.62) / (0.60 - 0.62) = 50 %
    assert methods["fedmpq_kd"]["gap_to_full_precision_points"] == approx(-1.0)


def test_best_quantized_baseline_is_the_strongest_non_kd_method(tmp_path: Path, monkeypatch) -> None:
    another = replace(CATALOG["fedmpq"], cost_reference="fedmpq", summary="another quantized method")
    monkeypatch.setitem(CATALOG, "another_quantized", another)
    write_variation(tmp_path, "fedmpq", "fedmpq", FEDMPQ)
    write_variation(tmp_path, "other_quant", "another_quantized", {0: 0.66, 1: 0.68})
    write_variation(tmp_path, "fedmpq_kd", "fedmpq_kd", FEDMPQ_KD)
    comp = compare_folder(tmp_path)
    assert comp["reference"]["best_quantized_baseline"] == "other_quant"
    assert comp["success_criteria"][0]["numbers"]["gain_points"] == approx(100 * (0.71 - 0.67))
    # its declared cost reference
    assert comp["methods"]["other_quant"]["overhead_reference"] == "fedmpq"


def test_best_quantized_baseline_is_the_best_of_fedmpq_and_fedpq(tmp_path: Path) -> None:
    """The candidates are the methods whose devices run quantized models (catalog family): FedPAQ
    (float devices, compressed upload) is the compressed baseline beside it; q-FFL (float upload)
    and FedMPQ-KD (the proposed method) are neither, however accurate."""
    write_variation(tmp_path, "fedavg", "fedavg", FEDAVG)
    write_variation(tmp_path, "fedmpq", "fedmpq", FEDMPQ)  # 0.62
    write_variation(tmp_path, "fedpq", "fedpq", {0: 0.63, 1: 0.65})  # 0.64
    write_variation(tmp_path, "fedpaq", "fedpaq", {0: 0.74, 1: 0.76})  # 0.75
    write_variation(tmp_path, "qffl", "qffl", {0: 0.78, 1: 0.80})  # 0.79
    write_variation(tmp_path, "fedmpq_kd", "fedmpq_kd", {0: 0.90, 1: 0.92})
    comp = compare_folder(tmp_path)
    assert comp["reference"]["best_quantized_baseline"] == "fedpq"
    assert comp["reference"]["best_compressed_baseline"] == "fedpaq"
    assert "devices run quantized models" in comp["reference"]["rule"]
    assert comp["success_criteria"][0]["numbers"]["baseline"] == "fedpq"
    assert comp["success_criteria"][0]["numbers"]["gain_points"] == approx(100 * (0.91 - 0.64))
    tested = {(t["a"], t["b"]) for t in comp["tests"]}
    assert {("fedmpq_kd", "fedpq"), ("fedmpq_kd", "fedpaq")} <= tested
    assert {n: comp["methods"][n]["overhead_reference"] for n in ("fedpq", "fedpaq", "qffl")} == dict.fromkeys(
        ("fedpq", "fedpaq", "qffl"), "fedavg"
    )
    assert [comp["methods"][n]["family"] for n in ("fedpq", "fedpaq", "qffl")] == [
        "quantized",
        "full_precision",
        "full_precision",
    ]
    # FedPQ is a quantized method: its share of FedMPQ's gap closed is reported, FedPAQ's is not
    assert comp["methods"]["fedpq"]["gap_closed_vs_fedmpq"] == approx((0.64 - 0.62) / (0.82 - 0.62))
    assert comp["methods"]["fedpaq"]["gap_closed_vs_fedmpq"] is None


def test_robustness_along_alpha(study: dict[str, Any]) -> None:
    alpha = study["robustness"]["dataset.alpha"]
    mpq = {row["value"]: row for row in alpha["methods"]["fedmpq"]}
    kd = {row["value"]: row for row in alpha["methods"]["fedmpq_kd"]}
    assert list(mpq) == [0.1, 0.5, "inf"] and list(kd) == [0.1, 0.5]
    assert mpq[0.5]["variation"] == "fedmpq" and mpq["inf"]["variation"] == "fedmpq_iid"
    # FedMPQ's best is IID (0.66): degradation 25 points at 0.1, 4 at 0.5, 0 at IID
    assert mpq[0.1]["degradation_points"] == approx(100 * (0.66 - 0.41))
    assert mpq[0.5]["degradation_points"] == approx(100 * (0.66 - 0.62))
    assert mpq["inf"]["degradation_points"] == approx(0.0) and mpq["inf"]["final_accuracy_std"] is None
    assert kd[0.1]["degradation_points"] == approx(100 * (0.71 - 0.44)) and kd[0.5]["degradation_points"] == approx(0)
    assert kd[0.1]["final_accuracy_std"] == approx(math.sqrt(2 * 0.01**2))
    assert alpha["proposed_minus_fedmpq_points"] == [
        {"value": 0.1, "points": approx(3.0)},
        {"value": 0.5, "points": approx(9.0)},
    ]


def test_quant_avg_bits_axis_reads_the_budgets(tmp_path: Path) -> None:
    """Axis values of quant.avg_bits are the mean budget; full precision is every bit width's reference."""
    write_variation(tmp_path, "fedavg", "fedavg", FEDAVG)
    write_variation(tmp_path, "fedmpq", "fedmpq", FEDMPQ, budgets=[2, 6])
    write_variation(tmp_path, "fedmpq_kd", "fedmpq_kd", FEDMPQ_KD, budgets=[2, 6])
    write_variation(tmp_path, "fedmpq_bits2", "fedmpq", {0: 0.5, 1: 0.52}, axis="quant.avg_bits", budgets=[1, 3])
    write_variation(tmp_path, "fedmpq_kd_bits2", "fedmpq_kd", {0: 0.55, 1: 0.57}, axis="quant.avg_bits", budgets=[1, 3])
    comp = compare_folder(tmp_path)
    assert comp["variations"]["fedmpq_bits2"]["axis_value"] == 2.0
    rows = comp["robustness"]["quant.avg_bits"]["methods"]["fedmpq_kd"]
    assert [(r["value"], r["variation"]) for r in rows] == [(2.0, "fedmpq_kd_bits2"), (4.0, "fedmpq_kd")]
    assert rows[0]["degradation_points"] == approx(100 * (0.71 - 0.56))
    m = comp["methods"]["fedmpq_kd_bits2"]
    assert m["fedmpq"] == "fedmpq_bits2" and m["full_precision"] == "fedavg"
    assert m["gap_to_full_precision_points"] == approx(100 * (0.82 - 0.56))
    assert m["gap_closed_vs_fedmpq"] == approx((0.56 - 0.51) / (0.82 - 0.51))


def test_missing_and_partial_runs_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_variation(tmp_path, "fedmpq", "fedmpq", FEDMPQ)
    # crashed before round 1: a config and nothing else
    write_config(tmp_path / "crashed_s0", "crashed", 0, "fedmpq")
    # killed after 2 of 3 rounds, no results.json, and a torn last line
    killed = tmp_path / "fedmpq_s3"
    write_config(killed, "fedmpq", 3, "fedmpq")
    write_history(killed, [{"round": r, "test_accuracy": 0.9} for r in (1, 2)], complete=False, torn=True)
    # results.json says completed but only 2 of the 3 planned rounds are there
    short = tmp_path / "short_s0"
    write_config(short, "fedmpq", 4, "fedmpq")
    write_history(short, [{"round": r, "test_accuracy": 0.9} for r in (1, 2)])
    # metrics and results but no config.yaml
    headless = tmp_path / "headless"
    headless.mkdir()
    write_history(headless, [{"round": r, "test_accuracy": 0.5} for r in (1, 2, 3)])
    comp, out = run_main(tmp_path, capsys)
    reasons = {r["run_id"]: r["reason"] for r in comp["incomplete_runs"]}
    assert set(reasons) == {"crashed_s0", "fedmpq_s3", "short_s0", "headless"}
    assert "crashed before round 1" in reasons["crashed_s0"]
    assert "2 of 3 planned rounds" in reasons["fedmpq_s3"] and "1 unparseable" in reasons["fedmpq_s3"]
    assert "2 of 3 planned rounds" in reasons["short_s0"] and "no complete" not in reasons["short_s0"]
    assert "config.yaml" in reasons["headless"]
    assert comp["variations"]["fedmpq"]["seeds"] == [0, 1, 2]  # none of them entered the statistics
    assert comp["variations"]["fedmpq"]["final_accuracy"]["mean"] == approx(np.mean(list(FEDMPQ.values())))
    assert "short_s0" in (tmp_path / "report.md").read_text()
    assert "success criteria:" in out


def test_a_new_full_precision_method_is_classified_by_the_catalog(tmp_path: Path, monkeypatch) -> None:
    """A method the catalog declares full precision (whatever its name) is not a quantized baseline,
    has no quantized cost reference and no gap closed, even when it is the most accurate."""
    monkeypatch.setitem(
        CATALOG,
        "dummy_mpq_kd",  # a name that the old name rules would have read as quantized and distilling
        MethodSpec(
            module="fedavg", client="FedAvgClient", strategy="FedAvgStrategy", family=FULL_PRECISION,
            distils=False, compresses_upload=False, cost_reference=None, sections=(), summary="test method",
            payload=CATALOG["fedavg"].payload,
        ),
    )  # fmt: skip
    write_variation(tmp_path, "fedavg", "fedavg", {0: 0.60, 1: 0.61})
    write_variation(tmp_path, "fedmpq", "fedmpq", {0: 0.50, 1: 0.51})
    write_variation(tmp_path, "fedmpq_kd", "fedmpq_kd", {0: 0.55, 1: 0.56})
    write_variation(tmp_path, "dummy_mpq_kd", "dummy_mpq_kd", {0: 0.70, 1: 0.71})
    comparison = compare_folder(tmp_path)
    dummy = comparison["methods"]["dummy_mpq_kd"]
    assert (dummy["family"], dummy["distils"]) == ("full_precision", False)
    assert dummy["overhead_reference"] is None and dummy["gap_closed_vs_fedmpq"] is None
    assert comparison["reference"]["best_quantized_baseline"] == "fedmpq"
    assert comparison["methods"]["fedmpq_kd"]["family"] == "quantized" and comparison["methods"]["fedmpq_kd"]["distils"]
    # a full-precision method that compresses its upload is the compressed baseline, never the quantized one
    monkeypatch.setitem(CATALOG, "dummy_mpq_kd", replace(CATALOG["dummy_mpq_kd"], compresses_upload=True))
    references = compare_folder(tmp_path)["reference"]
    assert (references["best_quantized_baseline"], references["best_compressed_baseline"]) == ("fedmpq", "dummy_mpq_kd")
    # a quantized one is a quantized baseline, whether it distils or not
    monkeypatch.setitem(CATALOG, "dummy_mpq_kd", replace(CATALOG["dummy_mpq_kd"], family=QUANTIZED, distils=True))
    references = compare_folder(tmp_path)["reference"]
    assert (references["best_quantized_baseline"], references["best_compressed_baseline"]) == ("dummy_mpq_kd", None)
