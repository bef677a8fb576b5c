"""FedMPQ-KD's alpha schedule (`kd.schedule`) and per-sample gate (`kd.gate`, and FedGKD's `gkd.gate`)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fedmpq_flwr.config import ConfigError, validate
from fedmpq_flwr.methods.fedmpq_kd import scheduled_alpha
from fedmpq_flwr.training.distillation import (
    TeacherDistillation,
    distillation_loss,
    gate_weights,
    round_gate_mean,
)

REPO = Path(__file__).resolve().parent.parent
KD_ONLY_KEYS = {"kd_loss", "agreement", "teacher_round", "teacher_flops", "kd_alpha", "kd_gate_mean"}

# Three samples, three classes: the teacher is right on samples 0 and 2, wrong on sample 1.
TEACHER = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
LABELS = torch.tensor([0, 2, 2])
STUDENT = torch.tensor([[0.5, 0.2, -0.1], [1.0, -1.0, 0.3], [0.0, 0.4, 0.2]])


def test_gate_weights_on_hand_made_logits() -> None:
    assert gate_weights(TEACHER, None, "none").tolist() == [1.0, 1.0, 1.0]
    assert gate_weights(TEACHER, LABELS, "correct").tolist() == [1.0, 0.0, 1.0]
    e = np.e
    expected = [e**2 / (e**2 + 2), 1 / (e + 2), e**3 / (e**3 + 2)]  # softmax at T 1, the label's entry
    np.testing.assert_allclose(gate_weights(TEACHER, LABELS, "confidence").numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="needs the batch's labels"):
        gate_weights(TEACHER, None, "correct")


def test_weighted_loss_is_the_mean_of_weighted_per_sample_kl() -> None:
    weights = torch.tensor([1.0, 0.0, 0.5])
    log_student = torch.log_softmax(STUDENT / 2.0, dim=1)
    teacher = torch.softmax(TEACHER / 2.0, dim=1)
    per_sample = (teacher * (teacher.log() - log_student)).sum(dim=1)
    expected = (weights * per_sample).mean() * 4.0
    torch.testing.assert_close(distillation_loss(STUDENT, TEACHER, 2.0, weights), expected)


def _terms(gate: str, teacher_logits: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """One gated term through `TeacherDistillation` (the teacher returns `teacher_logits`): the terms,
    the student logits' gradient and the reported gate mean."""
    student = STUDENT.clone().requires_grad_(True)
    distillation = TeacherDistillation(lambda images: teacher_logits, 0.5, 2.0, gate)
    terms = distillation.terms(torch.zeros(3, 3, 4, 4), student, LABELS)
    terms["loss"].backward()
    metrics = {"steps": 1.0, "train_flops": 0.0}
    distillation.report(metrics)
    return terms, student.grad, metrics["kd_gate_mean"]


def test_gate_none_is_todays_loss_exactly() -> None:
    terms, grad, gate_mean = _terms("none", TEACHER)
    student = STUDENT.clone().requires_grad_(True)
    today = 0.5 * distillation_loss(student, TEACHER, 2.0)
    today.backward()
    assert torch.equal(terms["loss"], today) and torch.equal(grad, student.grad)
    assert gate_mean == 1.0


def test_gate_correct_with_an_always_right_teacher_is_none() -> None:
    right = TEACHER.clone()
    right[1] = torch.tensor([0.0, 0.0, 1.0])  # now the teacher's top class is the label everywhere
    none, none_grad, _ = _terms("none", right)
    correct, correct_grad, gate_mean = _terms("correct", right)
    assert torch.equal(none["loss"], correct["loss"]) and torch.equal(none_grad, correct_grad)
    assert gate_mean == 1.0
    wrong_once, _, gate_mean = _terms("correct", TEACHER)
    assert gate_mean == pytest.approx(2 / 3) and not torch.equal(wrong_once["loss"], none["loss"])


def test_round_gate_mean_weights_participants_by_samples() -> None:
    clients = [{"num_examples": 30, "kd_gate_mean": 1.0}, {"num_examples": 10, "kd_gate_mean": 0.2}]
    assert round_gate_mean(clients) == {"kd_gate_mean": pytest.approx(0.8)}
    assert round_gate_mean([clients[0], {"num_examples": 5}]) == {}  # a participant without a teacher
    assert round_gate_mean([]) == {}


def test_schedule_values() -> None:
    assert [scheduled_alpha(0.5, "constant", 0, t) for t in (1, 2, 9)] == [0.5, 0.5, 0.5]
    assert [scheduled_alpha(0.5, "ramp", 2, t) for t in (1, 2, 3, 4)] == [0.0, 0.25, 0.5, 0.5]
    assert [scheduled_alpha(1.0, "ramp", 4, t) for t in range(1, 7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert [scheduled_alpha(1.0, "decay", 4, t) for t in range(1, 7)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]


@pytest.mark.parametrize(
    ("kd", "message"),
    [
        ({"gate": "junk"}, r"^key 'kd.gate': value 'junk' is not allowed; choose one of none, correct, confidence$"),
        ({"schedule": "cosine"}, r"^key 'kd.schedule': value 'cosine' is not allowed; choose one of constant, ramp"),
        ({"schedule": "ramp"}, r"^key 'kd.schedule_rounds': value 0 is unset; kd.schedule ramp needs an int >= 1"),
        ({"schedule": "decay", "schedule_rounds": -2}, r"^key 'kd.schedule_rounds': value -2 is out of range"),
        ({"schedule_rounds": 5}, r"^key 'kd.schedule_rounds': value 5 needs kd.schedule ramp or decay"),
        ({"schedule": "ramp", "schedule_rounds": 2.5}, r"^key 'kd.schedule_rounds': value 2.5 has type float"),
    ],
)
def test_bad_schedule_and_gate_values_are_one_line_errors(kd: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate({"strategy": {"name": "fedmpq_kd"}, "kd": kd})


def test_gkd_gate_is_validated() -> None:
    assert validate({"strategy": {"name": "fedgkd"}})["gkd"]["gate"] == "none"
    with pytest.raises(ConfigError, match=r"^key 'gkd.gate': value 'all' is not allowed"):
        validate({"strategy": {"name": "fedgkd"}, "gkd": {"gate": "all"}})


def test_ramp_starts_as_fedmpq_and_records_alpha(fedmpq_config, fl) -> None:
    """Ramp over 2 rounds at alpha 0.5: kd_alpha 0, 0.25, 0.5; round 1 is FedMPQ's round 1 exactly."""
    fedmpq, _ = fl.run(fedmpq_config(train={"num_rounds": 3}), rounds=1)
    kd = {"schedule": "ramp", "schedule_rounds": 2}
    config = fedmpq_config("fedmpq_kd", run_id="ramp", kd=kd, train={"num_rounds": 3})
    ramp, _ = fl.run(config, rounds=3)
    assert [r["kd_alpha"] for r in ramp] == [0.0, 0.25, 0.5]
    assert fl.without(ramp[0], fl.varying_keys | KD_ONLY_KEYS) == fl.without(fedmpq[0], fl.varying_keys)
    assert all(r["kd_gate_mean"] == 1.0 for r in ramp)


def test_constant_records_alpha_every_round_and_a_schedule_sends_it(fedmpq_config, fl) -> None:
    """`constant` sends FedMPQ's instructions (the client weighs with `kd.alpha`); `ramp` and `decay`
    send the round's alpha_t."""
    config = fedmpq_config("fedmpq_kd")
    records, _ = fl.run(config, rounds=2)
    assert [r["kd_alpha"] for r in records] == [0.5, 0.5]
    assert "kd_alpha" not in fl.strategy(config).fit_config(2, 0)
    decay = fl.strategy(fedmpq_config("fedmpq_kd", kd={"schedule": "decay", "schedule_rounds": 4}))
    assert [decay.fit_config(t, 1)["kd_alpha"] for t in (1, 3, 5)] == [0.5, 0.25, 0.0]


@pytest.mark.parametrize("teacher", ["frozen", "updating", "history"])
def test_gates_change_the_result_with_every_teacher(fedmpq_config, fl, teacher: str) -> None:
    """`correct` and `confidence` each give another global model than `none`, and the round's
    kd_gate_mean is the participants' sample-weighted mean (in [0, 1), below none's 1)."""
    rounds = 2 if teacher == "history" else 1  # the history teacher exists from round 2 on
    results = {}
    for gate in ("none", "correct", "confidence"):
        config = fedmpq_config("fedmpq_kd", run_id=gate, kd={"teacher": teacher, "gate": gate})
        results[gate] = fl.run(config, rounds=rounds)
    for gate in ("correct", "confidence"):
        records, weights = results[gate]
        assert any(not np.array_equal(a, b) for a, b in zip(results["none"][1], weights)), gate
        last = records[-1]
        clients = last["clients"]
        expected = sum(c["kd_gate_mean"] * c["num_examples"] for c in clients) / sum(c["num_examples"] for c in clients)
        assert last["kd_gate_mean"] == pytest.approx(expected) and 0 <= last["kd_gate_mean"] < 1
    assert results["none"][0][-1]["kd_gate_mean"] == 1.0


def test_fedgkd_gate_changes_the_result(fedavg_config, fl) -> None:
    """gkd.gate correct: a different model than FedGKD's, from round 2 (round 1 has no teacher)."""
    runs = {
        gate: fl.run(fedavg_config(run_id=gate, strategy={"name": "fedgkd"}, gkd={"gate": gate}), rounds=2)
        for gate in ("none", "correct")
    }
    (none, none_weights), (correct, correct_weights) = runs["none"], runs["correct"]
    assert any(not np.array_equal(a, b) for a, b in zip(none_weights, correct_weights))
    assert "kd_gate_mean" not in none[0] and none[1]["kd_gate_mean"] == 1.0
    assert 0 <= correct[1]["kd_gate_mean"] < 1
    assert all(0 <= c["kd_gate_mean"] <= 1 for c in correct[1]["clients"])


def test_runner_rejects_a_junk_gate_in_one_line(tmp_path: Path) -> None:
    document = {
        "defaults": {"model": {"name": "tiny_cnn"}, "dataset": {"name": "synthetic"}},
        "runs": [
            {"run_id": "kd", "description": "bad gate", "strategy": {"name": "fedmpq_kd"}, "kd": {"gate": "junk"}}
        ],
    }
    path = tmp_path / "runs.yaml"
    path.write_text(yaml.safe_dump(document))
    proc = subprocess.run(
        [sys.executable, "-m", "fedmpq_flwr.main", "--config", str(path), "--results-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "key 'kd.gate': value 'junk' is not allowed" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_sweep_file_is_the_v1_setting(tmp_path: Path) -> None:
    """configs/sweeps/kd_variants.yaml: six single-seed runs in the V1 setting, quantized passes as make quick's."""
    from fedmpq_flwr.config.runner_file import expand_runs

    runs = {r["variation"]: r for r in expand_runs(REPO / "configs" / "sweeps" / "kd_variants.yaml", tmp_path, {})}
    assert sorted(runs) == ["fedmpq", "fedmpq_kd", "kd_decay", "kd_gate_confidence", "kd_gate_correct", "kd_ramp5"]
    for run in runs.values():
        assert run["seed"] == 0 and run["train"]["num_rounds"] == 10 and run["dataset"]["train_subset"] == 10000
        assert run["federation"]["num_clients"] == 10 and run["dataset"]["alpha"] == 0.5
        assert run["eval"]["quant_every"] == 5 and run["eval"]["quant_test_images"] == 2000
    assert runs["fedmpq"]["strategy"]["name"] == "fedmpq"
    kd = {name: json.dumps(r["kd"], sort_keys=True) for name, r in runs.items() if name != "fedmpq"}
    assert runs["kd_ramp5"]["kd"]["schedule"] == "ramp" and runs["kd_ramp5"]["kd"]["schedule_rounds"] == 5
    assert runs["kd_decay"]["kd"]["schedule"] == "decay" and runs["kd_decay"]["kd"]["schedule_rounds"] == 10
    assert runs["kd_gate_correct"]["kd"]["gate"] == "correct"
    assert runs["kd_gate_confidence"]["kd"]["gate"] == "confidence"
    assert len(set(kd.values())) == 5  # five different kd settings


def test_analyzer_shows_the_ablation_variations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hand-made kd_main, kd_ramp2 and kd_gate_correct runs (2 seeds): every variation is in the
    accuracy table, alpha_t and the gate mean are averaged per round and drawn in kd_weights_vs_rounds."""
    from analysis_builders import run_main, write_config, write_history

    alphas = {"kd_main": [0.5, 0.5, 0.5], "kd_ramp2": [0.0, 0.25, 0.5], "kd_gate_correct": [0.5, 0.5, 0.5]}
    gates = {"kd_main": [1.0, 1.0, 1.0], "kd_ramp2": [1.0, 1.0, 1.0], "kd_gate_correct": [0.2, 0.4, 0.6]}
    for name in alphas:
        for seed in (0, 1):
            run_dir = tmp_path / f"{name}_s{seed}"
            write_config(run_dir, name, seed, "fedmpq_kd")
            history = [
                {"run_id": run_dir.name, "round": r, "test_accuracy": 0.1 * r + 0.01 * seed, "kd_loss": 0.3}
                | {"kd_alpha": alphas[name][r - 1], "kd_gate_mean": gates[name][r - 1] + 0.1 * seed}
                for r in (1, 2, 3)
            ]
            write_history(run_dir, history)
    comp, out = run_main(tmp_path, capsys)
    variations = comp["variations"]
    assert variations["kd_ramp2"]["kd_alpha_per_round_mean"] == [0.0, 0.25, 0.5]
    assert variations["kd_gate_correct"]["kd_gate_mean_per_round_mean"] == pytest.approx([0.25, 0.45, 0.65])
    assert "images/kd_weights_vs_rounds.pdf" in comp["figures"]
    assert (tmp_path / "images" / "kd_weights_vs_rounds.pdf").read_bytes().startswith(b"%PDF")
    report = (tmp_path / "report.md").read_text()
    assert all(f"| {name} |" in report for name in alphas)
