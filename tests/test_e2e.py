"""End to end through the real Flower path: `flwr run .` and the experiment runner.

Each test starts a SuperLink on a free port with a private FLWR_HOME and checks that no
Flower or Ray process is left behind.
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from flower_checks import check_results_contract, flower_processes_since, processes_with_env

from fedmpq_flwr.client.failures import drops_out
from fedmpq_flwr.config import dump_yaml, validate
from fedmpq_flwr.data.load import load_data
from fedmpq_flwr.data.partition import flipped_label_counts
from fedmpq_flwr.models import build_model
from fedmpq_flwr.runner.launcher import flower_env, free_port
from fedmpq_flwr.runner.processes import stop_process_tree
from fedmpq_flwr.server.sampling import ClientSampler
from fedmpq_flwr.training.weights import get_weights

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow  # each test starts Flower and Ray: minutes on 2 cores


def run_experiment_file(
    document: dict, config_path: Path, results_dir: Path, jobs: int = 1
) -> subprocess.CompletedProcess:
    """Write an experiment YAML and run it through the runner (`--jobs`); it must succeed."""
    config_path.write_text(yaml.safe_dump(document))
    runner = [sys.executable, "-m", "fedmpq_flwr.main", "--config", str(config_path), "--results-dir", str(results_dir)]
    proc = subprocess.run(
        [*runner, "--jobs", str(jobs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_flwr_run_dot_with_overrides(tmp_path: Path) -> None:
    """The command a user types: `flwr run . --stream` with --run-config/--federation-config."""
    port = free_port()
    marker = f"flwr-run-dot-{port}"  # only this test's processes carry it (others may run Flower too)
    env = {**flower_env(tmp_path / "flwr_home", port), "FEDMPQ_TEST_MARKER": marker}
    results_dir = tmp_path / "results"
    cmd = [
        str(BIN / "flwr"),
        "run",
        ".",
        "--stream",
        "--run-config",
        f"results_dir='{results_dir}' run_id='e2e' train.num_rounds=2",
        "--federation-config",
        "num-supernodes=3",
    ]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:  # `flwr run` started a detached local SuperLink on our port: stop it and its children
        for candidate in psutil.process_iter(["cmdline"]):
            cmdline = candidate.info["cmdline"] or []
            if any("flower-superlink" in part for part in cmdline) and str(port) in cmdline:
                stop_process_tree(candidate.pid)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    streamed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"run_id"')]
    assert [r["round"] for r in streamed] == [1, 2]
    results = check_results_contract(results_dir / "e2e", "e2e", rounds=2, clients_per_round=3)
    assert results["metadata"]["num_clients"] == 3
    assert results["final_accuracy"] > 0.2  # synthetic data: 10 classes, chance is 0.1
    deadline = time.monotonic() + 20  # orphaned Ray actors notice their raylet is gone within seconds
    while processes_with_env("FEDMPQ_TEST_MARKER", marker) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert processes_with_env("FEDMPQ_TEST_MARKER", marker) == []


def test_runner_end_to_end_is_deterministic(tmp_path: Path) -> None:
    """Two identical runs through the runner: same metrics, logs written, analyzer run, nothing left."""
    started = time.time()
    settings = {
        "model": {"name": "tiny_cnn"},
        "dataset": {"name": "synthetic", "synthetic_train_size": 600, "synthetic_test_size": 200},
        "train": {"num_rounds": 2, "batch_size": 32, "lr": 0.05},
        "strategy": {"fraction_fit": 0.67},
        "federation": {"num_clients": 3, "device": "cpu"},
    }
    document = {
        "defaults": settings,
        "runs": [
            {"run_id": "same_a", "description": "first copy", "seed": 5},
            {"run_id": "same_b", "description": "second copy", "seed": 5},
        ],
    }
    results_dir = tmp_path / "results"
    proc = run_experiment_file(document, tmp_path / "runs.yaml", results_dir)
    assert proc.stdout.index("first copy") < proc.stdout.index('{"run_id": "same_a", "round": 1')
    runs = {}
    for run_id in ("same_a", "same_b"):
        run_dir = results_dir / run_id
        runs[run_id] = check_results_contract(run_dir, run_id, rounds=2, clients_per_round=2)
        stdout_log = (run_dir / "stdout.log").read_text()
        assert stdout_log.startswith("# reproduce: ") and "fedmpq_flwr.launch --config" in stdout_log.splitlines()[0]
        assert f'{{"run_id": "{run_id}", "round": 2' in stdout_log
        assert (run_dir / "stderr.log").exists()
    # times and memory vary between identical runs (also inside each round's `clients` entries)
    volatile = {
        "run_id",
        "round_time_s",
        "client_time_s",
        "client_compute_s",
        "peak_rss_mb",
        "client_peak_rss_mb",
        "server_peak_rss_mb",
    }

    def strip(history: list[dict]) -> list[dict]:
        return [
            {
                k: [{ck: cv for ck, cv in c.items() if ck not in volatile} for c in v] if k == "clients" else v
                for k, v in record.items()
                if k not in volatile
            }
            for record in history
        ]

    assert strip(runs["same_a"]["history"]) == strip(runs["same_b"]["history"])
    comparison = json.loads((results_dir / "comparison.json").read_text())
    assert set(comparison["variations"]) == {"same_a", "same_b"}
    assert (results_dir / "images" / "accuracy_vs_rounds.pdf").read_bytes().startswith(b"%PDF")
    assert flower_processes_since(started) == []


def test_fedmpq_and_fedmpq_kd_runner_end_to_end_learn(tmp_path: Path) -> None:
    """FedMPQ and FedMPQ-KD through the runner and Flower: quantized clients learn, bits are counted
    per client, KD sends what FedMPQ sends, and a node keeps its teacher between rounds."""
    started = time.time()
    settings = {
        "model": {"name": "tiny_cnn"},
        # no augmentation: a flipped template is another pattern, and the test is of FedMPQ's mechanics
        "dataset": {
            "name": "synthetic",
            "synthetic_train_size": 1200,
            "synthetic_test_size": 200,
            "alpha": ".inf",
            "augment": False,
        },
        "train": {"num_rounds": 4, "local_epochs": 3, "batch_size": 32, "lr": 0.05},
        "quant": {"budgets": [3, 4, 5]},
        "federation": {"num_clients": 3, "device": "cpu"},
    }
    document = {
        "defaults": settings,
        "runs": [
            {"run_id": "fedmpq_e2e", "description": "FedMPQ end to end", "seed": 0, "strategy": {"name": "fedmpq"}},
            {
                "run_id": "kd_e2e",
                "description": "FedMPQ-KD end to end, teacher refreshed every 2 rounds",
                "seed": 0,
                "strategy": {"name": "fedmpq_kd"},
                "kd": {"refresh_every": 2},
            },
        ],
    }
    results_dir = tmp_path / "results"
    run_experiment_file(document, tmp_path / "runs.yaml", results_dir, jobs=min(2, os.cpu_count() or 1))
    floats = sum(w.size for w in get_weights(build_model("tiny_cnn")))
    layers = {"conv1", "conv2", "fc"}
    history = {}
    for run_id in ("fedmpq_e2e", "kd_e2e"):
        run_dir = results_dir / run_id
        records = history[run_id] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        for record in records:
            clients = record["clients"]
            assert [c["partition_id"] for c in clients] == [0, 1, 2] and [c["budget"] for c in clients] == [3, 4, 5]
            assert all(set(c["bits"]) == layers and c["avg_bits"] <= c["budget"] + 1e-9 for c in clients)
            assert record["bits_up"] == sum(c["bits_up"] for c in clients) < 3 * 32 * floats
            assert record["bits_down"] == 3 * 32 * floats
            assert record["quant_test_accuracy_min"] <= record["quant_test_accuracy_mean"] <= 1.0
        first, last = records[0], records[-1]
        assert last["test_accuracy"] >= 0.2 and last["quant_test_accuracy_mean"] >= 0.2, run_id  # chance is 0.1
        assert last["quant_test_accuracy_mean"] > first["quant_test_accuracy_mean"] + 0.05, run_id
        assignments = json.loads((run_dir / "bit_assignments.json").read_text())
        assert set(assignments["layer_params"]) == layers and sorted(assignments["clients"]) == ["0", "1", "2"]
        assert '"quant_test_accuracy_mean"' in (run_dir / "stdout.log").read_text()
    kd = history["kd_e2e"]
    # the teacher of rounds 1-2 is the initial model, of rounds 3-4 the global model of round 2:
    # each node kept it in its Flower context between rounds
    assert [[c["teacher_round"] for c in record["clients"]] for record in kd] == [[0] * 3, [0] * 3, [2] * 3, [2] * 3]
    assert all(0 <= record["agreement"] <= 1 and record["kd_loss"] > 0 for record in kd)
    assert [r["bits_down"] for r in kd] == [r["bits_down"] for r in history["fedmpq_e2e"]]
    assert flower_processes_since(started) == []


def test_dropout_and_label_noise_through_flower(tmp_path: Path) -> None:
    """20 clients, a quarter sampled, half of them dropping after training and 10 % noisy labels, one
    run through the launcher (its own SuperLink, no analyzer): the dropouts travel Flower's failure
    path as exceptions and come back named; the run finishes and records them and the flipped labels."""
    marker = f"axes-e2e-{time.time_ns()}"  # in the environment of every process of this run only
    config = validate(
        {
            "run_id": "axes_e2e",
            "seed": 3,
            "results_dir": str(tmp_path / "results"),
            "strategy": {"name": "fedmpq", "fraction_fit": 0.25},
            "model": {"name": "tiny_cnn"},
            "dataset": {
                "name": "synthetic",
                "synthetic_train_size": 400,
                "synthetic_test_size": 100,
                "alpha": ".inf",
                "label_noise": 0.1,
            },
            "train": {"num_rounds": 2, "batch_size": 32, "lr": 0.05},
            "quant": {"budgets": [2, 3, 4, 5]},  # tiled over the 20 clients
            "federation": {"num_clients": 20, "device": "cpu", "dropout": 0.5},
        }
    )
    sampler = ClientSampler(config["seed"], 0.25)
    sampled = [sampler.sample(list(range(20))) for _ in range(2)]
    dropped = [[p for p in s if drops_out(config["seed"], r, p, 0.5)] for r, s in enumerate(sampled, start=1)]
    assert all(0 < len(d) < len(s) for d, s in zip(dropped, sampled))  # this seed: some drop, never all
    run_dir = tmp_path / "results" / "axes_e2e"
    run_dir.mkdir(parents=True)
    dump_yaml(config, str(run_dir / "config.yaml"))
    proc = subprocess.run(
        [sys.executable, "-m", "fedmpq_flwr.launch", "--config", str(run_dir / "config.yaml")],
        cwd=REPO,
        env={**os.environ, "FEDMPQ_TEST_MARKER": marker},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["sampled_partitions"] for r in records] == sampled
    assert [r["dropped_partitions"] for r in records] == dropped
    assert [r["num_failures"] for r in records] == [len(d) for d in dropped]
    for record, drops in zip(records, dropped):
        assert record["client_errors"] == []
        clients = record["clients"]
        assert [c["partition_id"] for c in clients] == [p for p in record["sampled_partitions"] if p not in drops]
        assert all(c["budget"] == [2, 3, 4, 5][c["partition_id"] % 4] for c in clients)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["num_rounds"] == 2
    data = load_data(config["dataset"])
    assert results["flipped_labels"] == flipped_label_counts(data, 20, math.inf, 42, 0.1)
    assert sum(results["flipped_labels"]) > 0
    # an orphaned Ray actor notices a few seconds after the launcher's cleanup that its raylet is gone
    deadline = time.monotonic() + 20
    while processes_with_env("FEDMPQ_TEST_MARKER", marker) and time.monotonic() < deadline:
        time.sleep(1)
    assert processes_with_env("FEDMPQ_TEST_MARKER", marker) == []


def test_synthetic100_through_partitioning_training_and_the_analyzer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 100-class stand-in for CIFAR-100 through the runner: a Dirichlet split over 100 classes,
    FedMPQ for one round, per-class accuracies with 100 entries for the global model and each client's
    quantized model, and the analyzer's per-client (label-mix) accuracies from them."""
    marker = f"synthetic100-e2e-{time.time_ns()}"  # inherited by this run's processes only
    monkeypatch.setenv("FEDMPQ_TEST_MARKER", marker)
    document = {
        "defaults": {
            "model": {"name": "tiny_cnn"},
            "dataset": {"name": "synthetic100", "synthetic_train_size": 600, "synthetic_test_size": 200},
            "train": {"num_rounds": 1, "batch_size": 32, "lr": 0.05},
            "strategy": {"name": "fedmpq"},
            "quant": {"budgets": [3, 4, 5]},
            "federation": {"num_clients": 3, "device": "cpu"},
        },
        "runs": [{"run_id": "c100", "description": "FedMPQ on the 100-class stand-in", "seed": 0}],
    }
    results_dir = tmp_path / "results"
    run_experiment_file(document, tmp_path / "runs.yaml", results_dir)
    run_dir = results_dir / "c100"
    check_results_contract(run_dir, "c100", rounds=1, clients_per_round=3)
    config = validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    y_train = load_data(config["dataset"]).y_train

    partitions = json.loads((run_dir / "partitions.json").read_text())
    counts = np.array([partitions["label_counts"][pid] for pid in ("0", "1", "2")])
    assert partitions["num_classes"] == 100 and counts.shape == (3, 100)
    assert counts.sum(axis=0).tolist() == np.bincount(y_train, minlength=100).tolist()  # every image once
    assert (counts.sum(axis=0) > 0).all()  # all 100 classes are trained on

    (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # the 200 test images hold each class twice: every class has an accuracy, their mean is the accuracy
    float_classes = np.array(record["class_accuracy"], dtype=float)
    assert float_classes.shape == (100,) and float_classes.mean() == pytest.approx(record["test_accuracy"])
    quant_classes = {pid: np.array(c, dtype=float) for pid, c in record["quant_class_accuracy"].items()}
    assert sorted(quant_classes) == ["0", "1", "2"]
    for pid, classes in quant_classes.items():
        assert classes.shape == (100,) and classes.mean() == pytest.approx(record["quant_test_accuracy"][pid])

    # the analyzer's fairness numbers: each client's accuracy on its own label mix
    comparison = json.loads((results_dir / "comparison.json").read_text())
    (run,) = comparison["runs"]
    shares = {pid: counts[int(pid)] / counts[int(pid)].sum() for pid in ("0", "1", "2")}
    assert run["per_client_accuracy"] == pytest.approx({pid: s @ float_classes for pid, s in shares.items()})
    assert run["per_client_quant_accuracy"] == pytest.approx({pid: s @ quant_classes[pid] for pid, s in shares.items()})
    assert run["client_quant_accuracy_worst"] == pytest.approx(min(run["per_client_quant_accuracy"].values()))
    assert comparison["methods"]["c100"]["client_accuracy"]["model"] == "quant"
    report = (results_dir / "report.md").read_text()
    assert "## Per-client accuracy (final round)" in report and "client's quantized model (the devices')" in report
    deadline = time.monotonic() + 20  # orphaned Ray actors notice their raylet is gone within seconds
    while processes_with_env("FEDMPQ_TEST_MARKER", marker) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert processes_with_env("FEDMPQ_TEST_MARKER", marker) == []
