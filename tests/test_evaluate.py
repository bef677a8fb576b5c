"""Tests of the analyzer (fedmpq_flwr.evaluate) on hand-made results folders."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedmpq_flwr.analysis import cli as analyzer

REPO = Path(__file__).resolve().parents[1]

# variation -> seed -> test accuracy per round (rounds 1..len)
ACCS = {
    "fedavg_cnn": {0: [0.2, 0.5, 0.4], 1: [0.3, 0.4, 0.6]},
    # seed 1 ran one round longer: the per-round stats use the shared rounds 1..2 only
    "fedmpq_kd_with_a_rather_long_variation_name": {0: [0.1, 0.3], 1: [0.2, 0.6, 0.7]},
}
STRATEGY = {"fedavg_cnn": "fedavg", "fedmpq_kd_with_a_rather_long_variation_name": "fedmpq_kd"}


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-12)


def write_config(run_dir: Path, variation: str, seed: int, num_rounds: int) -> None:
    run_dir.mkdir(parents=True)
    config = {
        "run_id": run_dir.name,
        "variation": variation,
        "description": f"{variation} test run",
        "seed": seed,
        "strategy": {"name": STRATEGY.get(variation, "fedavg")},
        "model": {"name": "tiny_cnn"},
        "dataset": {"name": "synthetic"},
        "train": {"num_rounds": num_rounds},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


def round_record(run_id: str, rnd: int, acc: float) -> dict[str, Any]:
    """bits_up = 1000 * round, bits_down = 2000 * round, round_time_s = round / 2."""
    return {
        "run_id": run_id,
        "round": rnd,
        "test_accuracy": acc,
        "test_loss": 1.0 - acc,
        "bits_up": 1000 * rnd,
        "bits_down": 2000 * rnd,
        "round_time_s": rnd / 2,
        "num_sampled": 4,
        "num_failures": 0,
    }


def write_run(
    results: Path,
    variation: str,
    seed: int,
    accs: list[float],
    complete: bool = True,
    torn: bool = False,
    planned: int | None = None,
) -> Path:
    run_dir = results / f"{variation}_s{seed}"
    write_config(run_dir, variation, seed, planned or len(accs))
    history = [round_record(run_dir.name, i + 1, a) for i, a in enumerate(accs)]
    text = "".join(json.dumps(rec) + "\n" for rec in history)
    if torn:
        text += '{"run_id": "' + run_dir.name + '", "round": 3, "test_acc'
    (run_dir / "metrics.jsonl").write_text(text)
    if complete:
        results_json = {
            "run_id": run_dir.name,
            "status": "completed",
            "num_rounds": len(history),
            "history": history,
            "metadata": {"seed": seed},
        }
        (run_dir / "results.json").write_text(json.dumps(results_json))
    return run_dir


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    for variation, seeds in ACCS.items():
        for seed, accs in seeds.items():
            write_run(tmp_path, variation, seed, accs)
    # a crash after round 1 (same variation as complete runs: must not enter their stats)
    write_run(tmp_path, "fedavg_cnn", 2, [0.9], complete=False, planned=3)
    # killed mid-write: two good lines and a torn third one
    write_run(tmp_path, "torn", 0, [0.5, 0.6], complete=False, torn=True, planned=3)
    # crashed before any round
    write_config(tmp_path / "early_crash_s0", "early_crash", 0, 3)
    # top-level clutter the analyzer must ignore
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a run")
    (tmp_path / "summary.txt").write_text("not a run either")
    return tmp_path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedmpq_flwr.evaluate", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def analyzed(results_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, dict[str, Any], str]:
    assert analyzer.main(["--results-dir", str(results_dir)]) == 0
    out = capsys.readouterr().out
    return results_dir, json.loads((results_dir / "comparison.json").read_text()), out


def test_numbers_match_hand_computation(analyzed: tuple[Path, dict[str, Any], str]) -> None:
    _, comp, _ = analyzed
    runs = {r["run_id"]: r for r in comp["runs"]}

    a0 = runs["fedavg_cnn_s0"]  # accuracies 0.2, 0.5, 0.4
    assert a0["status"] == "completed" and a0["rounds_completed"] == 3
    assert a0["variation"] == "fedavg_cnn" and a0["strategy"] == "fedavg" and a0["seed"] == 0
    assert a0["final_accuracy"] == approx(0.4)
    assert a0["best_accuracy"] == approx(0.5)
    # trapezoids: ((0.2+0.5)/2 * 1 + (0.5+0.4)/2 * 1) / (3 - 1) = (0.35 + 0.45) / 2
    assert a0["auc_accuracy"] == approx(0.4)
    assert runs["fedavg_cnn_s1"]["auc_accuracy"] == approx(((0.3 + 0.4) / 2 + (0.4 + 0.6) / 2) / 2)  # 0.425
    assert a0["mean_round_time_s"] == approx((0.5 + 1.0 + 1.5) / 3)
    assert a0["total_bits_up"] == approx(1000 + 2000 + 3000)
    assert a0["total_bits_down"] == approx(2000 + 4000 + 6000)
    assert a0["mean_bits_up_per_round"] == approx(6000 / 3)
    assert a0["mean_bits_down_per_round"] == approx(12000 / 3)

    a = comp["variations"]["fedavg_cnn"]
    assert a["n"] == 2 and a["seeds"] == [0, 1] and a["strategy"] == "fedavg"
    assert a["run_ids"] == ["fedavg_cnn_s0", "fedavg_cnn_s1"]
    # final 0.4, 0.6: mean 0.5, sample std sqrt((0.1^2 + 0.1^2) / (2 - 1))
    assert a["final_accuracy"]["mean"] == approx(0.5)
    assert a["final_accuracy"]["std"] == approx(math.sqrt(0.02))
    # best 0.5, 0.6
    assert a["best_accuracy"]["mean"] == approx(0.55)
    assert a["best_accuracy"]["std"] == approx(math.sqrt(2 * 0.05**2))
    # auc 0.4, 0.425
    assert a["auc_accuracy"]["mean"] == approx(0.4125)
    assert a["auc_accuracy"]["std"] == approx(math.sqrt(2 * 0.0125**2))
    assert a["total_bits_up"]["mean"] == approx(6000) and a["total_bits_up"]["std"] == approx(0.0)
    assert a["rounds"] == [1, 2, 3]
    assert a["accuracy_per_round_mean"] == [approx(0.25), approx(0.45), approx(0.5)]
    assert a["accuracy_per_round_std"] == [approx(math.sqrt(0.005)), approx(math.sqrt(0.005)), approx(math.sqrt(0.02))]

    b = comp["variations"]["fedmpq_kd_with_a_rather_long_variation_name"]
    # seed 0: 0.1, 0.3 -> final 0.3, best 0.3, auc (0.1+0.3)/2 / 1 = 0.2
    # seed 1: 0.2, 0.6, 0.7 -> final 0.7, best 0.7, auc ((0.2+0.6)/2 + (0.6+0.7)/2) / 2 = 0.525
    assert b["n"] == 2 and b["strategy"] == "fedmpq_kd"
    assert b["final_accuracy"]["mean"] == approx(0.5)
    assert b["final_accuracy"]["std"] == approx(math.sqrt(2 * 0.2**2))
    assert b["best_accuracy"]["mean"] == approx(0.5)
    assert b["auc_accuracy"]["mean"] == approx((0.2 + 0.525) / 2)
    assert b["auc_accuracy"]["std"] == approx(math.sqrt(2 * 0.1625**2))
    assert b["rounds"] == [1, 2]  # round 3 exists for seed 1 only
    assert b["accuracy_per_round_mean"] == [approx(0.15), approx(0.45)]
    assert b["accuracy_per_round_std"] == [approx(math.sqrt(0.005)), approx(math.sqrt(0.045))]


def test_incomplete_runs_reported_not_aggregated(analyzed: tuple[Path, dict[str, Any], str]) -> None:
    _, comp, _ = analyzed
    assert set(comp["variations"]) == {"fedavg_cnn", "fedmpq_kd_with_a_rather_long_variation_name"}
    assert "fedavg_cnn_s2" not in comp["variations"]["fedavg_cnn"]["run_ids"]
    incomplete = {r["run_id"]: r for r in comp["incomplete_runs"]}
    assert set(incomplete) == {"fedavg_cnn_s2", "torn_s0", "early_crash_s0"}
    assert incomplete["fedavg_cnn_s2"]["rounds_completed"] == 1
    assert incomplete["torn_s0"]["rounds_completed"] == 2
    assert "unparseable" in incomplete["torn_s0"]["reason"]
    assert incomplete["early_crash_s0"]["rounds_completed"] == 0
    assert all(r["reason"] for r in comp["incomplete_runs"])

    runs = {r["run_id"]: r for r in comp["runs"]}
    assert set(runs) == {
        "fedavg_cnn_s0",
        "fedavg_cnn_s1",
        "fedavg_cnn_s2",
        "torn_s0",
        "early_crash_s0",
        "fedmpq_kd_with_a_rather_long_variation_name_s0",
        "fedmpq_kd_with_a_rather_long_variation_name_s1",
    }
    assert runs["fedavg_cnn_s2"]["status"] == "incomplete"
    assert runs["torn_s0"]["status"] == "incomplete"
    assert runs["torn_s0"]["final_accuracy"] == approx(0.6)  # partial summary, flagged by status
    assert runs["torn_s0"]["torn_metrics_lines"] == 1
    assert runs["early_crash_s0"]["status"] == "failed-no-metrics"
    assert runs["early_crash_s0"]["final_accuracy"] is None


def test_stdout_and_figures(analyzed: tuple[Path, dict[str, Any], str]) -> None:
    """stdout: the JSON, the success criteria, then one line per written and per skipped figure."""
    results_dir, comp, out = analyzed
    assert comp["figures"] == [
        "images/accuracy_vs_rounds.pdf",
        "images/final_accuracy.pdf",
        "images/auc_accuracy.pdf",
        "images/gap_to_full_precision.pdf",
        "images/bits_per_round.pdf",
        "images/round_time.pdf",
    ]
    skipped = {s["name"]: s["why"] for s in comp["figures_skipped"]}
    assert skipped["quantized_accuracy_vs_rounds"] == "no variation records it"
    assert "no bit_assignments.json" in skipped["bit_histogram_fedmpq_kd_with_a_rather_long_variation_name"]
    printed, end = json.JSONDecoder().raw_decode(out)
    assert printed == comp
    lines = out[end:].strip().splitlines()
    assert lines[0] == "success criteria:" and len(lines[1:5]) == 4
    assert all(line.startswith(f"  ({i})") for i, line in enumerate(lines[1:5], 1))
    assert lines[5:] == (
        [f"figure: {f}" for f in comp["figures"]]
        + [f"figure skipped: {s['name']}: {s['why']}" for s in comp["figures_skipped"]]
    )
    images = results_dir / "images"
    for rel in comp["figures"]:
        data = (results_dir / rel).read_bytes()
        assert data.startswith(b"%PDF") and len(data) > 5000
    assert sorted(p.name for p in images.iterdir()) == sorted(Path(f).name for f in comp["figures"])


def test_single_seed_std_is_null(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path, "solo", 3, [0.1, 0.4])
    assert analyzer.main(["--results-dir", str(tmp_path)]) == 0
    solo = json.loads((tmp_path / "comparison.json").read_text())["variations"]["solo"]
    assert solo["n"] == 1 and solo["seeds"] == [3]
    assert solo["final_accuracy"] == {"mean": approx(0.4), "std": None}
    assert solo["accuracy_per_round_std"] is None
    assert (tmp_path / "images" / "final_accuracy.pdf").read_bytes().startswith(b"%PDF")


def test_cli_missing_dir_exits_2(tmp_path: Path) -> None:
    proc = run_cli("--results-dir", str(tmp_path / "nope"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "Traceback" not in proc.stderr


def test_cli_empty_dir_skips_figures(tmp_path: Path) -> None:
    proc = run_cli("--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    comp = json.loads((tmp_path / "comparison.json").read_text())
    assert {
        k: comp[k]
        for k in (
            "runs",
            "variations",
            "incomplete_runs",
            "figures",
            "figures_skipped",
            "tests",
            "methods",
            "robustness",
        )
    } == {
        "runs": [],
        "variations": {},
        "incomplete_runs": [],
        "figures": [],
        "figures_skipped": [],
        "tests": [],
        "methods": {},
        "robustness": {},
    }
    assert [c["passed"] for c in comp["success_criteria"]] == [None] * 4
    assert comp["target_accuracy"]["value"] is None
    assert "figures skipped: no completed runs with recorded rounds" in proc.stdout
    assert not (tmp_path / "images").exists()
    assert (tmp_path / "report.md").exists()


def test_import_does_not_load_torch() -> None:
    code = "import fedmpq_flwr.evaluate, sys; assert 'torch' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_quantized_results_are_summarised_and_plotted(tmp_path: Path) -> None:
    """Runs with quantized-model accuracy and average bits: last-round values aggregated over
    seeds, the per-round quantized curve averaged, and its own figure written."""
    quant = {0: ([0.1, 0.3], 3.5), 1: ([0.2, 0.5], 3.9)}
    for seed, (accs, bits) in quant.items():
        run_dir = write_run(tmp_path, "mpq", seed, [0.4, 0.6])
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        for record, acc in zip(records, accs):
            record.update(quant_test_accuracy_mean=acc, quant_test_accuracy_min=acc / 2, avg_bits=bits)
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_run(tmp_path, "fp", 0, [0.5, 0.7])
    comp = analyzer.analyze(tmp_path)
    mpq, fp = comp["variations"]["mpq"], comp["variations"]["fp"]
    assert mpq["final_quant_accuracy_mean"] == {"mean": approx(0.4), "std": approx(math.sqrt(0.02))}
    assert mpq["final_quant_accuracy_min"]["mean"] == approx(0.2)
    assert mpq["final_avg_bits"]["mean"] == approx(3.7)
    assert mpq["quant_accuracy_per_round_mean"] == [approx(0.15), approx(0.4)]
    assert fp["quant_accuracy_per_round_mean"] is None and fp["final_avg_bits"] == {"mean": None, "std": None}
    assert "images/quantized_accuracy_vs_rounds.pdf" in comp["figures"]
    assert (tmp_path / "images" / "quantized_accuracy_vs_rounds.pdf").read_bytes().startswith(b"%PDF")


def test_target_accuracy_must_be_a_fraction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        analyzer.main(["--results-dir", str(tmp_path), "--target-accuracy", "90"])
    assert exit_info.value.code == 2
    assert "not an accuracy fraction" in capsys.readouterr().err
