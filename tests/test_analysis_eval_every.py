"""The analyzer on runs that evaluated only some rounds (`eval.every`, `eval.quant_every`): costs over
every round, accuracies (AUC, best, curves, rounds to target) over the evaluated ones, seeds with
different evaluation rounds compared over the rounds they share, fairness at the final round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from analysis_builders import (
    FEDMPQ,
    FEDMPQ_KD,
    approx,
    write_client_accuracy,
    write_config,
    write_history,
    write_variation,
)

from fedmpq_flwr.analysis import cli as analyzer
from fedmpq_flwr.rundir.results import auc_accuracy

ROUNDS = 6
# variation -> seed -> {round: float accuracy}; rounds without an entry did not evaluate
FLOAT = {
    "fedavg": {0: {2: 0.3, 4: 0.6, 6: 0.7}, 1: {2: 0.4, 4: 0.5, 6: 0.9}},  # eval.every 2
    # seed 0 evaluated every round, seed 1 every third one: compared over rounds 3 and 6
    "fedmpq": {0: {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.9, 5: 0.5, 6: 0.6}, 1: {3: 0.2, 6: 0.5}},
}
QUANT_ROUNDS = {"fedavg": (), "fedmpq": (3, 6)}  # eval.quant_every 3


def write_thinned_runs(root: Path) -> None:
    for variation, seeds in FLOAT.items():
        for seed, accuracies in seeds.items():
            run_dir = root / f"{variation}_s{seed}"
            write_config(run_dir, variation, seed, variation, num_rounds=ROUNDS)
            history = []
            for rnd in range(1, ROUNDS + 1):
                record: dict[str, Any] = {"run_id": run_dir.name, "round": rnd, "bits_up": 100.0 * rnd}
                record.update(round_time_s=1.0, train_loss=1.0 / rnd)
                if rnd in accuracies:
                    record.update(test_accuracy=accuracies[rnd], test_loss=1 - accuracies[rnd])
                if rnd in QUANT_ROUNDS[variation]:
                    record.update(quant_test_accuracy_mean=accuracies[rnd] - 0.1, quant_test_accuracy_min=0.0)
                history.append(record)
            write_history(run_dir, history)
            quant = {0: [0.5, 0.5], 1: [0.5, 0.5]} if variation == "fedmpq" else None
            write_client_accuracy(run_dir, {0: [1, 0], 1: [0, 1]}, [1.0, 0.5], quant)


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("thinned")
    write_thinned_runs(root)
    analyzer.analyze(root, target_accuracy=0.55)
    return root, json.loads((root / "comparison.json").read_text())


def test_costs_over_every_round_accuracy_over_the_evaluated_ones(analyzed: tuple[Path, dict[str, Any]]) -> None:
    _, comp = analyzed
    runs = {run["run_id"]: run for run in comp["runs"]}
    fedavg = runs["fedavg_s0"]
    assert fedavg["status"] == "completed" and fedavg["rounds_completed"] == ROUNDS  # not taken for incomplete
    assert comp["incomplete_runs"] == []
    assert fedavg["mean_bits_up_per_round"] == approx(350.0)  # (100 + ... + 600) / 6: every round
    assert fedavg["auc_rounds"] == [2, 4, 6]
    assert fedavg["auc_accuracy"] == approx(auc_accuracy([2, 4, 6], [0.3, 0.6, 0.7]))
    assert fedavg["final_accuracy"] == approx(0.7) and fedavg["best_accuracy"] == approx(0.7)

    var = comp["variations"]["fedavg"]
    assert var["rounds"] == list(range(1, ROUNDS + 1))
    assert var["accuracy_rounds"] == [2, 4, 6] and var["quant_accuracy_rounds"] == []
    assert var["accuracy_per_round_mean"] == [approx(0.35), approx(0.55), approx(0.8)]
    assert var["bits_up_per_round_mean"] == [approx(100.0 * r) for r in range(1, ROUNDS + 1)]
    assert var["quant_accuracy_per_round_mean"] is None
    assert comp["methods"]["fedavg"]["rounds_to_target"] == 4  # mean 0.55 at round 4, the target


def test_seeds_with_different_evaluation_rounds_share_theirs(analyzed: tuple[Path, dict[str, Any]]) -> None:
    """Seed 0's best round (4, 0.9) is not one seed 1 evaluated: both seeds' best and AUC are over 3 and 6."""
    _, comp = analyzed
    runs = {run["run_id"]: run for run in comp["runs"]}
    for run_id, (at3, at6) in {"fedmpq_s0": (0.3, 0.6), "fedmpq_s1": (0.2, 0.5)}.items():
        assert runs[run_id]["auc_rounds"] == [3, 6]
        assert runs[run_id]["auc_accuracy"] == approx((at3 + at6) / 2)
        assert runs[run_id]["best_accuracy"] == approx(at6)
    assert runs["fedmpq_s0"]["final_accuracy"] == approx(0.6)
    var = comp["variations"]["fedmpq"]
    assert var["accuracy_rounds"] == [3, 6] and var["quant_accuracy_rounds"] == [3, 6]
    assert var["accuracy_per_round_mean"] == [approx(0.25), approx(0.55)]
    assert var["quant_accuracy_per_round_mean"] == [approx(0.15), approx(0.45)]
    assert var["auc_accuracy"]["mean"] == approx((0.45 + 0.35) / 2)
    assert var["final_quant_accuracy_mean"]["mean"] == approx(0.45)  # the last round, always evaluated
    assert comp["methods"]["fedmpq"]["rounds_to_target"] == 6
    # fairness reads the final round's per-class accuracies
    assert var["client_accuracy_mean"]["mean"] == approx(0.75)
    assert var["client_quant_accuracy_mean"]["mean"] == approx(0.5)


def test_report_says_which_rounds_and_figures_are_drawn(analyzed: tuple[Path, dict[str, Any]]) -> None:
    root, comp = analyzed
    report = (root / "report.md").read_text()
    note = next(line for line in report.splitlines() if line.startswith("Evaluated in only some rounds"))
    assert "fedavg (float in rounds 2, 4, 6 of 6)" in note
    assert "fedmpq (float in rounds 3, 6 of 6; quantized in rounds 3, 6 of 6)" in note
    assert "computed over the evaluated rounds only" in report
    for figure in ("accuracy_vs_rounds", "quantized_accuracy_vs_rounds", "auc_accuracy"):
        assert f"images/{figure}.pdf" in comp["figures"]
        assert (root / "images" / f"{figure}.pdf").read_bytes().startswith(b"%PDF")


def test_partners_need_not_share_the_evaluation_cadence(tmp_path: Path) -> None:
    """eval.every changes what is recorded, not what is trained: a frozen-scale FedMPQ-KD evaluated
    every round still pairs with the frozen-scale FedMPQ evaluated every other round."""
    frozen = {"scale_grad": "frozen"}
    write_variation(tmp_path, "fedmpq", "fedmpq", FEDMPQ)
    for run_dir in write_variation(tmp_path, "fedmpq_scale_frozen", "fedmpq", FEDMPQ, quant=frozen):
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        (run_dir / "config.yaml").write_text(yaml.safe_dump({**config, "eval": {"every": 2}}))
    write_variation(tmp_path, "fedmpq_kd_scale_frozen", "fedmpq_kd", FEDMPQ_KD, quant=frozen)
    methods = analyzer.analyze(tmp_path)["methods"]
    assert methods["fedmpq_kd_scale_frozen"]["fedmpq"] == "fedmpq_scale_frozen"
    assert methods["fedmpq_kd_scale_frozen"]["overhead_reference"] == "fedmpq_scale_frozen"
