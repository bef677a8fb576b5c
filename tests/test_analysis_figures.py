"""The analyzer's figures, report.md and printed output on hand-made folders (test_analysis_builders)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from analysis_builders import FEDAVG, run_main, write_study, write_variation

from fedmpq_flwr.analysis import bit_figures, tsne
from fedmpq_flwr.analysis import cli as analyzer
from fedmpq_flwr.analysis.figures import axis_names
from fedmpq_flwr.analysis.plotting import spread

STUDY_FIGURES = [
    "accuracy_vs_rounds",
    "quantized_accuracy_vs_rounds",
    "agreement_vs_rounds",
    "grad_norm_vs_rounds",
    "kd_losses_vs_rounds",
    "accuracy_vs_rounds_axis_alpha",
    "robustness_alpha",
    "final_accuracy",
    "auc_accuracy",
    "gap_to_full_precision",
    "bits_per_round",
    "round_time",
    "flops_per_round",
    "peak_memory",
    "bit_histogram_fedmpq",
    "bit_allocation_heatmap_fedmpq",
    "bit_allocation_heatmap_fedmpq_dir0_1",
    "bit_allocation_heatmap_fedmpq_iid",
    "bit_histogram_fedmpq_kd",
    "bit_allocation_heatmap_fedmpq_kd",
    "tsne_fedmpq_kd_pair1",
    "bit_allocation_heatmap_fedmpq_kd_dir0_1",
]


@pytest.fixture(scope="module")
def analyzed_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    root = write_study(tmp_path_factory.mktemp("study"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert analyzer.main(["--results-dir", str(root)]) == 0
    return root, json.loads((root / "comparison.json").read_text()), out.getvalue()


def test_every_study_figure_is_a_pdf(analyzed_study: tuple[Path, dict[str, Any], str]) -> None:
    root, comp, out = analyzed_study
    assert comp["figures"] == [f"images/{name}.pdf" for name in STUDY_FIGURES]
    for rel in comp["figures"]:
        assert (root / rel).read_bytes().startswith(b"%PDF")
        assert f"figure: {rel}" in out.splitlines()
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(f"{n}.pdf" for n in STUDY_FIGURES)


def test_figures_without_data_are_skipped_with_a_message(analyzed_study: tuple[Path, dict[str, Any], str]) -> None:
    _, comp, out = analyzed_study
    skipped = {s["name"]: s["why"] for s in comp["figures_skipped"]}
    assert skipped == {
        "tsne_fedmpq_pair1": "no features.npz in run fedmpq_s0",
        "bit_histogram_fedmpq_dir0_1": "no bit_assignments.json in run fedmpq_dir0.1_s0",
        "tsne_fedmpq_dir0_1_pair1": "no features.npz in run fedmpq_dir0.1_s0",
        "bit_histogram_fedmpq_iid": "no bit_assignments.json in run fedmpq_iid_s0",
        "tsne_fedmpq_iid_pair1": "no features.npz in run fedmpq_iid_s0",
        "bit_histogram_fedmpq_kd_dir0_1": "no bit_assignments.json in run fedmpq_kd_dir0.1_s0",
        "tsne_fedmpq_kd_dir0_1_pair1": "no features.npz in run fedmpq_kd_dir0.1_s0",
        "client_accuracy": "no variation records per-class accuracy and its clients' label counts",
        "kd_weights_vs_rounds": "no variation records kd_alpha or kd_gate_mean",
        "scalability": "no run varies federation.num_clients",
    }
    for name, why in skipped.items():
        assert f"figure skipped: {name}: {why}" in out.splitlines()


def test_full_precision_only_skips_quantized_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_variation(tmp_path, "fedavg", "fedavg", FEDAVG, costs=False)
    comp, out = run_main(tmp_path, capsys)
    assert comp["figures"] == ["images/accuracy_vs_rounds.pdf", "images/final_accuracy.pdf", "images/auc_accuracy.pdf"]
    for line in [
        "figure skipped: kd_losses_vs_rounds: no variation records kd_loss",
        "figure skipped: gap_to_full_precision: no quantized variation with a full-precision run in the same setting",
        "figure skipped: bits_per_round: no variation records it",
        "figure skipped: bit_histogram: no quantized variation",
        "figure skipped: tsne: no quantized variation",
    ]:
        assert line in out.splitlines()


def test_report_has_criteria_and_tables(analyzed_study: tuple[Path, dict[str, Any], str]) -> None:
    root, comp, out = analyzed_study
    text = (root / "report.md").read_text()
    for heading in (
        "## Success criteria",
        "## Accuracy",
        "## Costs per round",
        "## Welch t-tests over seeds",
        "## Robustness along the axes",
        "### Axis `dataset.alpha`",
        "## Incomplete runs",
        "## Figures",
    ):
        assert heading in text
    assert "1. **yes** — accuracy" in text and "gain_points = 9" in text
    # final, best, AUC and quantized final accuracy of FedMPQ-KD (finals 0.70, 0.71, 0.72)
    assert (
        "| fedmpq_kd | fedmpq_kd | main | – | 3 | 71.00 ± 1.00 | 71.00 ± 1.00 | 61.00 ± 1.00 | 66.00 ± 1.00 |" in text
    )
    assert "| 0.1 | 41.00 ± 1.41 (fedmpq_dir0.1) | 25.00 | 44.00 ± 1.41 (fedmpq_kd_dir0.1) | 27.00 | +3.00 |" in text
    assert "- `images/tsne_fedmpq_kd_pair1.pdf`: fedmpq_kd: t-SNE" in text
    assert "- skipped `tsne_fedmpq_pair1`: no features.npz in run fedmpq_s0" in text
    criteria_lines = [line for line in out.splitlines() if line.startswith("  (")]
    assert [line.split()[1] for line in criteria_lines] == ["yes", "yes", "yes", "yes"]


def test_bit_allocation_matrix_is_the_mean_over_clients(tmp_path: Path) -> None:
    (run_dir,) = write_variation(tmp_path, "fedmpq", "fedmpq", {0: 0.6})
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    layers, rounds, matrix = bit_figures.allocation_matrix(history)
    assert layers == ["conv1", "layer1.conv", "fc"] and rounds == [1, 2, 3]
    # conv1: client 0 has 2 + round % 2, client 1 has 6
    assert matrix.tolist() == [[4.5, 4.0, 4.5], [3.0, 3.0, 3.0], [8.0, 8.0, 8.0]]
    assert bit_figures.allocation_matrix([{"round": 1, "test_accuracy": 0.5}]) is None


def test_identical_client_assignments_share_a_panel() -> None:
    same = {"conv1": 8, "fc": 2}
    clients = {"10": {"bits": same}, "2": {"bits": same}, "1": {"bits": {"conv1": 4, "fc": 4}}}
    panels = bit_figures._client_panels(clients)
    assert [(pids, client["bits"]) for pids, client in panels] == [(["1"], {"conv1": 4, "fc": 4}), (["2", "10"], same)]


def test_tsne_subsamples_seeded_and_embeds_both_sets_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tsne, "MAX_POINTS", 40)
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    teacher = rng.normal(size=(60, 5)).astype(np.float32)
    student = teacher + 0.1
    first = tsne.embed(teacher, student, labels)
    second = tsne.embed(teacher, student, labels)
    assert first[0].shape == (20, 2) and first[1].shape == (20, 2) and first[2].shape == (20,)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)


def test_unusable_features_are_skipped(tmp_path: Path) -> None:
    run = {"run_dir": str(tmp_path), "run_id": "r", "seed": 0}
    (tmp_path / "features.npz").write_bytes(b"not a zip")
    assert tsne.pair_figure("v", run).why == "unreadable features.npz in run r"
    np.savez(tmp_path / "features.npz", labels=np.arange(5), float_features=np.zeros((5, 2)))
    assert tsne.pair_figure("v", run).why == "features.npz of run r lacks quant_features"
    (tmp_path / "bit_assignments.json").write_text('{"clients": {"0": {"budget"')
    assert bit_figures.histogram_figure("v", run).why == "unreadable bit_assignments.json in run r"


def test_axis_file_names() -> None:
    assert axis_names(["dataset.alpha", "train.local_epochs"]) == {
        "dataset.alpha": "alpha",
        "train.local_epochs": "local_epochs",
    }
    assert axis_names(["dataset.alpha", "kd.alpha"]) == {"dataset.alpha": "dataset_alpha", "kd.alpha": "kd_alpha"}


def test_end_labels_are_pushed_apart_but_stay_near_their_lines() -> None:
    heights = spread([5.0, 1.0, 1.01, 1.02], 0.5)
    ordered = sorted(heights)
    assert all(b - a >= 0.5 - 1e-12 for a, b in zip(ordered, ordered[1:]))
    assert heights[0] == pytest.approx(5.0, abs=1.0) and heights[1] < heights[2] < heights[3]
    assert spread([1.0, 3.0], 0.5) == [1.0, 3.0]  # already apart: unchanged
