"""Success criteria (1) and (2) on hand-made results folders (tests/analysis_builders.py): accuracy
against the best baseline whose devices run quantized models, with the best compressed full-precision
baseline beside it for context; communication judged by the declared payload and a 1 % bits rule."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from analysis_builders import FEDAVG, FEDMPQ, FEDMPQ_KD, approx, write_study, write_variation

from fedmpq_flwr.analysis import cli as analyzer
from fedmpq_flwr.config import deep_merge, defaults
from fedmpq_flwr.methods.catalog import CATALOG, Message


def criteria_of(root: Path) -> list[dict[str, Any]]:
    """The success criteria of a folder, without drawing figures."""
    runs = [analyzer.load_run(d) for d in analyzer.find_run_dirs(root)]
    return analyzer.build_comparison(runs)[0]["success_criteria"]


def set_config(run_dirs: list[Path], **sections: dict[str, Any]) -> None:
    """Add config sections to saved runs (as a run configured with them would have written)."""
    for run_dir in run_dirs:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        (run_dir / "config.yaml").write_text(yaml.safe_dump({**config, **sections}))


def write_baselines(root: Path, with_compressed: bool) -> None:
    """Full precision, FedMPQ (0.62), FedMPQ with frozen scales (0.66), FedPQ (0.64) and FedMPQ-KD
    (0.71); with_compressed adds FedPAQ (0.78) and FedKD (0.80), full-precision devices with compressed
    uploads, both more accurate than every quantized-device method."""
    write_variation(root, "fedavg", "fedavg", FEDAVG, bits=(32000.0, 32000.0))
    write_variation(root, "fedmpq", "fedmpq", FEDMPQ)
    write_variation(root, "fedmpq_scale_frozen", "fedmpq", {0: 0.65, 1: 0.66, 2: 0.67}, quant={"scale_grad": "frozen"})
    write_variation(root, "fedpq", "fedpq", {0: 0.63, 1: 0.64, 2: 0.65})
    write_variation(root, "fedmpq_kd", "fedmpq_kd", FEDMPQ_KD)
    if with_compressed:
        write_variation(root, "fedpaq", "fedpaq", {0: 0.77, 1: 0.78, 2: 0.79}, bits=(8000.0, 32000.0))
        write_variation(root, "fedkd", "fedkd", {0: 0.79, 1: 0.80, 2: 0.81}, bits=(6000.0, 32000.0))


def test_accuracy_ignores_a_better_compressed_baseline_and_names_the_best_quantized_device_one(tmp_path: Path) -> None:
    write_baselines(tmp_path / "quantized_only", with_compressed=False)
    write_baselines(tmp_path / "with_compressed", with_compressed=True)
    alone = criteria_of(tmp_path / "quantized_only")[0]
    accuracy = criteria_of(tmp_path / "with_compressed")[0]
    n = accuracy["numbers"]
    assert (n["baseline"], n["baseline_final"]) == ("fedmpq_scale_frozen", approx(0.66))
    assert n["gain_points"] == approx(5.0) and n["gap_reduction"] == approx(1 - 11 / 16)
    # FedKD (0.80) is the best compressed full-precision baseline: reported, with its accuracy and bits
    assert (n["compressed_baseline"], n["compressed_baseline_final"]) == ("fedkd", approx(0.80))
    assert (n["compressed_baseline_bits_up"], n["compressed_baseline_bits_down"]) == (6000.0, 32000.0)
    assert "context only: fedkd (full precision, compressed upload) 80.00 %" in accuracy["why"]
    # ... and it decides nothing: verdict and numbers are those of the folder without it
    assert accuracy["passed"] is True and accuracy["passed"] == alone["passed"]
    assert {k: v for k, v in n.items() if not k.startswith("compressed_")} == {
        k: v for k, v in alone["numbers"].items() if not k.startswith("compressed_")
    }
    assert alone["numbers"]["compressed_baseline"] is None
    # the criterion says what it compares, from the catalog's families
    assert "devices run quantized models (fedmpq, fedpq)" in accuracy["name"]
    assert "compressed full-precision baselines (fedkd, fedpaq) are context only" in accuracy["name"]


def test_accuracy_without_a_quantized_device_baseline_cannot_be_evaluated(tmp_path: Path) -> None:
    """FedPAQ alone is no quantized-device baseline: n/a, with FedPAQ still reported beside it."""
    write_variation(tmp_path, "fedpaq", "fedpaq", {0: 0.77, 1: 0.79})
    write_variation(tmp_path, "fedmpq_kd", "fedmpq_kd", FEDMPQ_KD)
    accuracy = criteria_of(tmp_path)[0]
    assert accuracy["passed"] is None and "no completed main quantized-device baseline" in accuracy["why"]
    assert accuracy["numbers"]["compressed_baseline"] == "fedpaq"
    assert "baseline" not in accuracy["numbers"]


@pytest.mark.parametrize(
    ("kd_bits", "passed", "why_end"),
    [
        ((1004.0, 2008.0), True, "down)"),  # 1.004 each way
        ((1010.0, 2020.0), True, "down)"),  # exactly 1 % more
        ((990.0, 1990.0), True, "down)"),  # fewer bits
        ((1020.0, 2000.0), False, ": up above 1.01 x"),
        ((1000.0, 2040.0), False, ": down above 1.01 x"),
        ((1020.0, 2040.0), False, ": up and down above 1.01 x"),
    ],
)
def test_bits_within_one_percent_of_fedmpq_with_the_same_payload(
    tmp_path: Path, kd_bits: tuple[float, float], passed: bool, why_end: str
) -> None:
    write_study(tmp_path, kd_bits=kd_bits)  # FedMPQ sends 1000 bits up and 2000 down per round
    bits = criteria_of(tmp_path)[1]
    assert bits["passed"] is passed and bits["why"].endswith(why_end)
    n = bits["numbers"]
    assert (n["bits_up_ratio"], n["bits_down_ratio"]) == (approx(kd_bits[0] / 1000), approx(kd_bits[1] / 2000))
    assert (n["same_payload"], n["payload_differences"]) == (True, [])
    assert bits["why"].startswith("same payload fields; bits per round ")


def test_bits_fail_with_an_extra_payload_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The history teacher (kd.teacher: history) is an extra download: a fail at equal bits, as is a
    method whose declared upload carries a field FedMPQ's does not."""
    write_variation(tmp_path, "fedmpq", "fedmpq", FEDMPQ)
    kd_runs = write_variation(tmp_path, "fedmpq_kd", "fedmpq_kd", FEDMPQ_KD)
    assert criteria_of(tmp_path)[1]["passed"] is True
    set_config(kd_runs, kd={"teacher": "history"})
    bits = criteria_of(tmp_path)[1]
    assert bits["passed"] is False and bits["numbers"]["bits_up_ratio"] == approx(1.0)
    assert bits["numbers"]["same_payload"] is False
    assert bits["numbers"]["payload_differences"] == [
        "download arrays: +history_teacher",
        "download fields: +teacher_arrays +teacher_rounds",
    ]
    assert bits["why"].startswith("payload differs (download arrays: +history_teacher; ")

    set_config(kd_runs, kd={"teacher": "frozen"})
    spec = CATALOG["fedmpq_kd"]
    payload = spec.payload(deep_merge(defaults(), {"kd": {"teacher": "frozen"}}))
    upload = Message(payload.upload.arrays, (*payload.upload.fields, "teacher_logits"))
    monkeypatch.setitem(CATALOG, "fedmpq_kd", replace(spec, payload=lambda config: replace(payload, upload=upload)))
    bits = criteria_of(tmp_path)[1]
    assert bits["passed"] is False and bits["numbers"]["payload_differences"] == ["upload fields: +teacher_logits"]


def test_bits_without_recorded_bits(tmp_path: Path) -> None:
    """No bits recorded: n/a with the same payload, a fail with another one (one failed condition is enough)."""
    write_variation(tmp_path, "fedmpq", "fedmpq", FEDMPQ, costs=False)
    kd_runs = write_variation(tmp_path, "fedmpq_kd", "fedmpq_kd", FEDMPQ_KD, costs=False)
    bits = criteria_of(tmp_path)[1]
    assert bits["passed"] is None and bits["numbers"]["bits_up_ratio"] is None
    assert bits["why"] == "cannot evaluate: same payload fields; bits per round not recorded by both methods"
    set_config(kd_runs, kd={"teacher": "history"})
    assert criteria_of(tmp_path)[1]["passed"] is False
