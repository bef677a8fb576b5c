"""The scalability fits (hypothesis (d)): known slopes and R^2 recovered, the model each quantity follows,
the verdicts, and the analyzer's `scalability` section and figure on hand-made runs at 4, 8 and 16 clients."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from analysis_builders import approx, run_main, write_config, write_history

from fedmpq_flwr.analysis.scalability import fit, method_scalability, shape
from fedmpq_flwr.config.runner_file import expand_runs

N = [1.0, 2.0, 5.0, 10.0, 20.0]


def test_fit_recovers_a_linear_law() -> None:
    y = [3.0 + 2.0 * n for n in N]
    fits = fit(N, y)
    assert fits["linear"] == {"slope": approx(2.0), "intercept": approx(3.0), "r2": approx(1.0)}
    assert fits["logarithmic"]["r2"] < 0.95
    assert shape(N, y, fits) == "linear"


def test_fit_recovers_a_logarithmic_law() -> None:
    y = [3.0 + 2.0 * math.log(n) for n in N]
    fits = fit(N, y)
    assert fits["logarithmic"] == {"slope": approx(2.0), "intercept": approx(3.0), "r2": approx(1.0)}
    assert fits["linear"]["r2"] < 0.95
    assert shape(N, y, fits) == "logarithmic"


def test_a_flat_quantity_is_constant_and_noise_is_undecided() -> None:
    flat = [5.0, 5.01, 4.99, 5.0, 5.02]
    assert shape(N, flat, fit(N, flat)) == "constant"
    constant = [7.0] * len(N)
    assert fit(N, constant)["linear"]["r2"] is None
    assert shape(N, constant, fit(N, constant)) == "constant"
    noisy = [1.0, 9.0, 2.0, 8.0, 1.5]
    assert shape(N, noisy, fit(N, noisy)) == "undecided"


def write_scaled_run(root: Path, name: str, strategy: str, clients: int, compute: float, axis: str) -> None:
    """One 3-round run where every one of `clients` clients takes part in every round; each participant
    sends 1000 bits and receives 2000, and the round's summed client compute is `compute`."""
    run_dir = root / f"{name}_s0"
    write_config(run_dir, name, 0, strategy, axis=axis)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["federation"] = {"num_clients": clients}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    history = [
        {
            "round": rnd,
            "test_accuracy": 0.5 + 0.1 * rnd,
            "num_sampled": clients,
            "client_compute_s": compute,
            "round_time_s": 2.0 + math.log(clients),
            "bits_up": 1000.0 * clients,
            "bits_down": 2000.0 * clients,
            "server_peak_rss_mb": 800.0,
        }
        for rnd in (1, 2, 3)
    ]
    write_history(run_dir, history)


def write_clients_axis(root: Path, strategy: str, compute: dict[int, float]) -> None:
    """The strategy's main variation at the first client count, axis variations at the others."""
    for i, (clients, seconds) in enumerate(compute.items()):
        name = strategy if i == 0 else f"{strategy}_clients{clients}"
        write_scaled_run(root, name, strategy, clients, seconds, "" if i == 0 else "federation.num_clients")


def test_the_analyzer_fits_and_judges_three_client_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_clients_axis(tmp_path, "fedmpq_kd", {4: 1.0 + 2.0 * 4, 8: 1.0 + 2.0 * 8, 16: 1.0 + 2.0 * 16})
    write_clients_axis(
        tmp_path, "fedmpq", {4: 1.0 + 5.0 * np.log(4), 8: 1.0 + 5.0 * np.log(8), 16: 1.0 + 5.0 * np.log(16)}
    )
    comparison, out = run_main(tmp_path, capsys)
    section = comparison["scalability"]
    kd = section["methods"]["fedmpq_kd"]
    assert [p["num_clients"] for p in kd["points"]] == [4, 8, 16]
    assert [p["num_sampled"] for p in kd["points"]] == [4, 8, 16]
    assert kd["fits"]["client_compute_s"]["linear"] == {
        "slope": approx(2.0),
        "intercept": approx(1.0),
        "r2": approx(1.0),
    }
    assert kd["fits"]["bits_up"]["linear"]["slope"] == approx(1000.0)
    assert kd["fits"]["round_time_s"]["shape"] == "logarithmic"
    assert kd["fits"]["server_peak_rss_mb"]["shape"] == "constant"
    assert kd["fits"]["bits_per_participant"]["shape"] == "constant"
    assert kd["claims"]["compute_linear"]["verdict"] == "yes"
    assert kd["claims"]["communication_logarithmic"]["verdict"] == "yes"
    mpq = section["methods"]["fedmpq"]
    assert mpq["fits"]["client_compute_s"]["logarithmic"]["slope"] == approx(5.0)
    assert mpq["claims"]["compute_linear"]["verdict"] == "no"
    assert (tmp_path / "images" / "scalability.pdf").stat().st_size > 0
    assert "images/scalability.pdf" in comparison["figures"]
    report = (tmp_path / "report.md").read_text()
    assert "- compute_linear: **yes**" in report and "- compute_linear: **no**" in report
    assert "scalability fedmpq_kd compute_linear: yes" in out


def test_fewer_than_three_client_counts_are_not_judged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_clients_axis(tmp_path, "fedmpq_kd", {4: 9.0, 8: 17.0})
    comparison, _ = run_main(tmp_path, capsys)
    kd = comparison["scalability"]["methods"]["fedmpq_kd"]
    assert kd["fits"] == {}
    assert {c["verdict"] for c in kd["claims"].values()} == {"n/a"}
    assert "2 client count(s) (4, 8); 3 needed" in kd["claims"]["compute_linear"]["why"]
    assert "images/scalability.pdf" not in comparison["figures"]
    assert any(s["name"] == "scalability" for s in comparison["figures_skipped"])


def test_three_client_counts_with_two_participant_counts_are_not_judged() -> None:
    """Axis E of the main experiment: 10 clients all sampled, 50 and 100 at 10 % -> 10, 5 and 10 per round."""
    variations = {
        name: {"n": 1, **{k: {"mean": 1.0} for k in ("mean_client_compute_s", "mean_round_time_s")}}
        for name in ("a", "b", "c")
    }
    for var in variations.values():
        var.update(
            {k: {"mean": 1.0} for k in ("mean_bits_up_per_round", "mean_bits_down_per_round", "peak_server_rss_mb")}
        )
    groups = {name: [{"history": [{"round": 1, "num_sampled": n}]}] for name, n in (("a", 10), ("b", 5), ("c", 10))}
    rows = [{"value": v, "variation": name} for v, name in ((10.0, "a"), (50.0, "b"), (100.0, "c"))]
    result = method_scalability(rows, variations, groups)
    assert result["claims"]["compute_linear"]["verdict"] == "n/a"
    assert "2 distinct value(s) (5, 10)" in result["claims"]["compute_linear"]["why"]


def test_the_cpu_sweep_has_four_participant_counts_and_the_same_work_per_client(tmp_path: Path) -> None:
    """configs/sweeps/scalability_cpu.yaml: each method at 10, 20, 50 and 100 clients, 10 % sampled, 100
    training images per client; the 10-client runs are the main variations."""
    runs = expand_runs(Path(__file__).resolve().parent.parent / "configs/sweeps/scalability_cpu.yaml", tmp_path, {})
    for method in ("fedmpq", "fedmpq_kd"):
        mine = sorted(
            (r for r in runs if r["strategy"]["name"] == method), key=lambda r: r["federation"]["num_clients"]
        )
        clients = [r["federation"]["num_clients"] for r in mine]
        assert clients == [10, 20, 50, 100]
        assert [max(1, round(r["strategy"]["fraction_fit"] * r["federation"]["num_clients"])) for r in mine] == [
            1,
            2,
            5,
            10,
        ]
        assert [r["dataset"]["synthetic_train_size"] for r in mine] == [100 * c for c in clients]
        assert [r["axis"] for r in mine] == ["", *["federation.num_clients"] * 3]
        assert {(r["model"]["name"], r["dataset"]["name"], r["train"]["num_rounds"]) for r in mine} == {
            ("tiny_cnn", "synthetic", 5)
        }
