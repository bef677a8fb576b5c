"""Every script in experiments/ in a tiny mode, so that a moved module or a renamed option breaks a test, not a
researcher's evening: the run scripts through the runner's --dry-run (one of them for real), each benchmark and
study on a few images and steps on the CPU, and the runner's --dry-run itself.

The Python scripts run as a user runs them (`python experiments/...`), with this checkout first on the path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml
from analysis_builders import write_variation
from conftest import TINY, write

import fedmpq_flwr.runner.cli as runner
from fedmpq_flwr.config.runner_file import expand_runs
from fedmpq_flwr.models import build_model, save_final_model
from fedmpq_flwr.quant import quantizable_layers
from fedmpq_flwr.rundir.results import MODEL_FILE, RESULTS_FILE
from fedmpq_flwr.training.weights import get_weights

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"
BENCH = EXPERIMENTS / "bench"
STUDIES = EXPERIMENTS / "studies"
RUN_SCRIPTS = sorted(EXPERIMENTS.glob("run_*.sh"))
HELPERS = {EXPERIMENTS / "lib.sh", BENCH / "common.py"}  # exercised through the scripts that use them

# Stands in for the interpreter: writes the arguments a script hands it to $RUNNER_ARGS, NUL-separated.
RECORDER = '#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$RUNNER_ARGS"\n'


SCRIPT_VARIABLES = ("PY", "CIFAR10_DIR", "RESULTS_DIR", "OUT", "TINY", "KD_SECONDS")  # what the scripts read


def script_env(**extra: str | Path) -> dict[str, str]:
    """The environment of a script under test: this checkout's package first, only the script variables given."""
    env = {key: value for key, value in os.environ.items() if key not in SCRIPT_VARIABLES}
    return {**env, "PYTHONPATH": str(REPO), **{key: str(value) for key, value in extra.items()}}


def run(cmd: list[str | Path], env: dict[str, str] | None = None, timeout: int = 300) -> str:
    """Run a command from the repository root; it must succeed. Its stdout."""
    proc = subprocess.run(
        [str(part) for part in cmd], cwd=REPO, env=env or script_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cifar10_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shaped like the local CIFAR-10 copy: train.npz (2,000 images) and test.npz (200), random pixels,
    labels sorted by class as in the real test.npz."""
    root = tmp_path_factory.mktemp("cifar10")
    rng = np.random.default_rng(0)
    for name, size in (("train", 2000), ("test", 200)):
        x = rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
        np.savez(root / f"{name}.npz", x=x, y=np.sort(np.arange(size) % 10))
    return root


def recorded_runner_args(script: Path, args: list[str], tmp_path: Path, **env: str | Path) -> list[str]:
    """The arguments `script` hands the interpreter ($PY, here the recorder)."""
    recorder = tmp_path / "python"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    record = tmp_path / "runner_args"
    run([script, *args], env=script_env(PY=recorder, RUNNER_ARGS=record, **env))
    return record.read_bytes().decode().split("\0")[:-1]


# ---- the scripts are all tested ----------------------------------------------------------------


def test_every_script_in_experiments_has_a_test() -> None:
    """A new script gets a test here (or in another test file that names it); the run scripts are found by glob."""
    scripts = {p for p in EXPERIMENTS.rglob("*") if p.suffix in (".sh", ".py")} - HELPERS - set(RUN_SCRIPTS)
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    untested = sorted(str(p.relative_to(REPO)) for p in scripts if f'"{p.name}"' not in tests)
    assert not untested, f"scripts without a test: {untested}"
    assert len(RUN_SCRIPTS) >= 13


# ---- the runner's --dry-run --------------------------------------------------------------------


def test_dry_run_prints_one_line_per_run_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "out"
    argv = ["--config", str(write(tmp_path, TINY)), "--results-dir", str(results), "--set", "train.lr=0.02"]
    assert runner.main([*argv, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["a_seed0", "a_seed1", "b"]
    assert "strategy=fedavg model=tiny_cnn dataset=synthetic" in lines[0] and "lr=0.02 seed=0" in lines[0]
    assert "seed=1" in lines[1]
    assert not results.exists()  # nothing created, nothing run


def test_dry_run_names_the_runs_a_run_would_skip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "out"
    path = write(tmp_path, TINY)
    (results / "b").mkdir(parents=True)
    (results / "b" / "config.yaml").write_text(yaml.safe_dump(expand_runs(path, results, {})[2]))
    (results / "b" / RESULTS_FILE).write_text(json.dumps({"run_id": "b", "status": "completed", "history": []}))
    assert runner.main(["--config", str(path), "--results-dir", str(results), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("b: ") and lines[2].endswith("(finished: skipped)")
    assert not lines[0].endswith("(finished: skipped)")
    assert runner.main(["--config", str(path), "--results-dir", str(results), "--dry-run", "--overwrite"]) == 0
    assert not capsys.readouterr().out.splitlines()[2].endswith("(finished: skipped)")


def test_dry_run_of_a_bad_file_is_the_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--config", str(write(tmp_path, TINY)), "--results-dir", str(tmp_path / "o"), "--set", "train.lr=-1"]
    assert runner.main([*argv, "--dry-run"]) == 2
    console = capsys.readouterr()
    assert console.out == ""
    assert console.err.count("\n") == 1 and console.err.startswith("config error: ") and "train.lr" in console.err


# ---- the run scripts, the Makefile and their data overrides ----------------------------------


@pytest.mark.parametrize("script", RUN_SCRIPTS, ids=lambda p: p.name)
def test_run_script_dry_run(
    script: Path, tmp_path: Path, cifar10_copy: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script hands the runner the local CIFAR-10 copy first, its own runner file and results folder, then
    the caller's arguments (so `--set` wins); the runner validates all of it and prints the runs."""
    results = tmp_path / "results"
    extra = ["--set", "train.num_rounds=2", "--dry-run"]
    argv = recorded_runner_args(script, extra, tmp_path, CIFAR10_DIR=cifar10_copy, RESULTS_DIR=results)
    assert argv[:6] == [
        "-m",
        "fedmpq_flwr.main",
        "--set",
        "dataset.source=npz",
        "--set",
        f"dataset.path={cifar10_copy}",
    ]
    assert argv[-len(extra) :] == extra
    assert argv[argv.index("--results-dir") + 1] == str(results)
    monkeypatch.chdir(REPO)  # the script ran the runner from the repository root
    assert runner.main(argv[2:]) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.splitlines()
    assert lines and all("dataset=cifar10 (source=npz" in line and " rounds=2 " in line for line in lines)
    run_ids = [line.split(":")[0] for line in lines]
    if script.name.startswith("run_ablation_"):  # each ablation file holds the main setting, trained once
        assert {"kd_main_seed0", "kd_main_seed1", "kd_main_seed2"} <= set(run_ids) and len(run_ids) > 3
        assert all("strategy=fedmpq_kd " in line for line in lines)
    else:
        method = script.stem.removeprefix("run_")
        assert run_ids == [f"{method}_seed{seed}" for seed in range(3)]
        assert all(f"strategy={method} " in line for line in lines)
    assert not results.exists()


def test_run_scripts_without_a_local_copy_leave_the_data_source_alone(tmp_path: Path) -> None:
    argv = recorded_runner_args(EXPERIMENTS / "run_fedavg.sh", [], tmp_path, CIFAR10_DIR=tmp_path / "none")
    assert argv == ["-m", "fedmpq_flwr.main", "--full-experiment", "--only", "fedavg", "--results-dir", "results/full"]


def test_the_makefile_takes_the_data_overrides_from_the_scripts_helper(cifar10_copy: Path, tmp_path: Path) -> None:
    quick = run(["make", "--no-print-directory", "-n", "quick", f"CIFAR10_DIR={cifar10_copy}"]).splitlines()[-1]
    assert quick.endswith(f"--set dataset.source=npz --set dataset.path={cifar10_copy}")
    full = run(["make", "--no-print-directory", "-n", "full", f"CIFAR10_DIR={tmp_path / 'none'}"]).splitlines()[-1]
    assert "fedmpq_flwr.main --full-experiment" in full and "dataset." not in full


@pytest.mark.slow
def test_a_run_script_runs_for_real(tmp_path: Path) -> None:
    """One run script end to end: the real interpreter, the runner, Flower, the analyzer (200 images, 1 round;
    the model stays ResNet-20, since `--set` reaches every run of the file and FedKD's mentee must be one)."""
    results = tmp_path / "results"
    tiny = [
        *("--only", "fedavg_seed0", "--set", "dataset.name=synthetic"),
        *("--set", "dataset.synthetic_train_size=200", "--set", "dataset.synthetic_test_size=50"),
        *("--set", "train.num_rounds=1", "--set", "strategy.fraction_fit=0.2"),
    ]
    env = script_env(PY=sys.executable, CIFAR10_DIR=tmp_path / "none", RESULTS_DIR=results)
    run([EXPERIMENTS / "run_fedavg.sh", *tiny], env=env, timeout=600)
    assert json.loads((results / "fedavg_seed0" / RESULTS_FILE).read_text())["status"] == "completed"
    assert (results / "comparison.json").is_file()


@pytest.mark.slow
def test_gpu_check_in_its_tiny_mode(tmp_path: Path) -> None:
    """`TINY=1 experiments/gpu_check.sh`: the P4 benchmark (GPU settings off) and the cut-off FedMPQ-KD run, on
    the CPU."""
    out = tmp_path / "gpu"
    env = script_env(TINY=1, OUT=out, WORK=tmp_path / "work", PY=sys.executable)
    run([EXPERIMENTS / "gpu_check.sh"], env=env, timeout=900)
    p4 = json.loads((out / "p4_settings_off.json").read_text())
    assert p4["data"] == "synthetic" and p4["P4_gpu_throughput"]["ratio_jobs"] > 0
    assert p4["setting"]["gpu_settings"] == "off"
    assert len(p4["P4_gpu_throughput"]["fedmpq_kd_round_s"]) == 1  # 2 rounds, the first not timed
    records = [json.loads(line) for line in (out / "kd_metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1]
    assert sorted(p.name for p in out.iterdir()) == [
        "data.txt",
        "kd.log",
        "kd_metrics.jsonl",
        "p4.log",
        "p4_settings_off.json",
    ]


def test_cifar10_jpeg_copy_round_trip(tmp_path: Path) -> None:
    """`cifar10_jpeg.py pack` then `unpack`: the same labels and shapes, pixels within JPEG's small error on
    smooth images (ramps of random direction and colour, as natural images are mostly smooth)."""
    source = tmp_path / "cifar10"
    source.mkdir()
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 32)
    for split, size in (("train", 60), ("test", 20)):
        slope = rng.uniform(-1, 1, (size, 2, 3))
        x = 128 + 100 * (
            slope[:, None, None, 0] * ramp[None, :, None, None] + slope[:, None, None, 1] * ramp[None, None, :, None]
        )
        np.savez(source / f"{split}.npz", x=x.clip(0, 255).astype(np.uint8), y=rng.integers(0, 10, size))
    packed = tmp_path / "cifar10_jpeg.npz"
    run([sys.executable, EXPERIMENTS / "cifar10_jpeg.py", "pack", source, packed])
    run([sys.executable, EXPERIMENTS / "cifar10_jpeg.py", "unpack", packed, tmp_path / "unpacked"])
    for split in ("train", "test"):
        with np.load(source / f"{split}.npz") as original, np.load(tmp_path / "unpacked" / f"{split}.npz") as back:
            assert back["x"].shape == original["x"].shape and back["x"].dtype == np.uint8
            np.testing.assert_array_equal(back["y"], original["y"])
            assert np.abs(back["x"].astype(int) - original["x"]).mean() < 3


# ---- benchmarks ----------------------------------------------------------------------------------


def test_quant_step_cost() -> None:
    args = ["--models", "tiny_cnn", "--tiny", "--steps", "2", "--warmup", "1", "--profile"]
    stdout = run([sys.executable, BENCH / "quant_step_cost.py", *args])
    result = last_json(stdout)
    assert result["model"] == "tiny_cnn" and result["tiny"] and result["steps"] == 2
    assert result["ratio"] == pytest.approx(result["quant_step_s"] / result["fp_step_s"], rel=1e-3)
    assert result["quantized_activations"] is True
    assert "== tiny_cnn (tiny): phases (median seconds) ==" in stdout and "quant weights, float acts" in stdout
    assert "top ops by self CPU time" in stdout


def test_kd_teacher_cost(tmp_path: Path) -> None:
    args = ["--steps", "1", "--rounds", "1", "--images", "200", "--results", tmp_path]
    result = last_json(run([sys.executable, BENCH / "kd_teacher_cost.py", *args]))
    assert set(result["step_s"]) == {
        "student_step",
        "no_grad",
        "inference_mode",
        "inference_mode+channels_last",
        "inference_mode+channels_last+bn_folded",
    }
    rounds = result["client_round_s"]
    assert result["client_round_ratio"] == pytest.approx(rounds["fedmpq_kd"] / rounds["fedmpq"])


def test_checkpoint_cost(tmp_path: Path) -> None:
    args = ["--models", "tiny_cnn", "--repeats", "1", "--dir", tmp_path]
    result = last_json(run([sys.executable, BENCH / "checkpoint_cost.py", *args]))["tiny_cnn"]
    assert result["parameters"] == sum(w.size for w in get_weights(build_model("tiny_cnn", 10)))
    assert result["server_bytes"] > 4 * result["parameters"] and result["node_bytes"] > 4 * result["parameters"]
    assert list(tmp_path.iterdir()) == []  # its scratch folder is gone


def test_throughput_p3(tmp_path: Path) -> None:
    """P3 (no Flower): the quantized against the float step. P4, through Flower, runs in the gpu_check test."""
    args = ["--parts", "P3", "--models", "tiny_cnn", "--steps", "1", "--out", tmp_path, "--data-dir", tmp_path / "x"]
    stdout = run([sys.executable, BENCH / "throughput.py", *args])
    report = json.loads((tmp_path / "bench.json").read_text())
    assert stdout.endswith(json.dumps(report, indent=2) + "\n")  # after P3's table, the report printed whole
    assert report["data"] == "synthetic" and set(report) >= {"P3_quant_over_float_step", "setting", "command"}
    assert report["P3_quant_over_float_step"]["tiny_cnn"]["steps"] == 1


def test_throughput_p7_p8(tmp_path: Path, cifar10_copy: Path) -> None:
    """P7 (the data path per batch, and a real-shaped client's seconds per step) and P8 (quantized against
    float evaluation pass), each a ratio of two things timed side by side."""
    tiny = ["--images", "200", "--p7-batches", "2", "--p7-epochs", "1", "--p8-images", "100", "--p8-passes", "1"]
    run(
        [
            sys.executable,
            BENCH / "throughput.py",
            "--parts",
            "P7,P8",
            *tiny,
            "--out",
            tmp_path,
            "--data-dir",
            cifar10_copy,
        ]
    )
    report = json.loads((tmp_path / "bench.json").read_text())
    p7, p8 = report["P7_data_path"], report["P8_quant_over_float_eval"]
    ms = p7["ms_per_batch64"]
    assert p7["device_batches_over_step"] == pytest.approx(ms["device_batches"] / ms["step"])
    assert p7["client_round"]["steps"] == 4 and p7["client_round"]["ratio"] > 0  # 200 images, batches of 64
    assert p8["ratio"] == pytest.approx(p8["median_s"]["quant"] / p8["median_s"]["float"])
    assert [len(p8["pass_s"][name]) for name in ("float", "quant")] == [1, 1]


def test_federation_scale_in_process(tmp_path: Path) -> None:
    args = ["--path", "inprocess", "--rounds", "2", "--settings", "10:0.2", "--train-size", "200", "--test-size", "40"]
    result = last_json(run([sys.executable, BENCH / "federation_scale.py", *args]))
    assert result["method"] == "fedmpq_kd"
    (setting,) = result["settings"]
    assert setting["clients"] == 10 and [r["participants"] for r in setting["rounds"]] == [2, 2]
    assert all(r["rss_mb"] > 0 and r["cpu_s"] > 0 for r in setting["rounds"])


# ---- studies -------------------------------------------------------------------------------------


def test_central_qat_and_its_merge(tmp_path: Path, cifar10_copy: Path) -> None:
    out = tmp_path / "qat"
    tiny = ["--data-dir", cifar10_copy, "--images", "64", "--test-images", "20", "--epochs", "1", "--no-float"]
    kd = ["--teacher", "--teacher-epochs", "1", "--kd-epochs", "1", "--kd-seeds", "1", "--kd-init", "teacher"]
    rows = ["--bits", "2", "--scale-grad", "plain", *kd, "--out", out, "--name", "tiny"]
    stdout = run([sys.executable, STUDIES / "central_qat.py", *tiny, *rows])
    assert stdout.strip().splitlines()[-1] == str(out / "tiny.json")
    result = json.loads((out / "tiny.json").read_text())
    assert [(row["bits"], row["scale_grad"], len(row["history"])) for row in result["rows"]] == [(2, "plain", 2)]
    assert [(row["kd"], row["init"]) for row in result["kd_rows"]] == [(False, "teacher"), (True, "teacher")]
    assert result["test_images_per_class"] == [2] * 10
    assert all(Path(figure).is_file() for figure in result["figures"]) and len(result["figures"]) == 2
    assert not (out / "tiny.partial.json").exists()

    run([sys.executable, STUDIES / "central_qat.py", "--merge", out / "tiny.json", "--out", out, "--name", "merged"])
    merged = json.loads((out / "merged.json").read_text())
    assert merged["rows"] == result["rows"] and merged["kd_rows"] == result["kd_rows"]
    assert merged["summary"] == result["summary"]


def test_compare_runs(tmp_path: Path) -> None:
    write_variation(tmp_path, "fedavg", "fedavg", {0: 0.8}, bits=(32e6, 64e6))
    write_variation(tmp_path, "fedmpq", "fedmpq", {0: 0.6})
    stdout = run([sys.executable, STUDIES / "compare_runs.py", "--results-dir", tmp_path, "fedavg_s0", "fedmpq_s0"])
    lines = stdout.splitlines()
    assert lines[:5] == [
        "| round | fedavg_s0 | fedmpq_s0 |",
        "|---|---|---|",
        "| 1 | 60.0 | 40.0 |",
        "| 2 | 70.0 | 50.0 |",
        "| 3 | 80.0 | 60.0 |",
    ]
    fedavg = next(line for line in lines if line.startswith("| fedavg_s0 |")).split(" | ")
    assert fedavg[1:6] == ["80.0", "70.0", "–", "32.0", "64.0"]  # final, AUC, no quantized clients, Mbit up, down


def test_publish_study(tmp_path: Path) -> None:
    """Finished runs' small files land in TO/runs, in-flight ones and large files stay behind, and the analyzer's
    outputs in TO match an analyzer run on the published runs; publishing again adds newly finished runs."""
    results, to = tmp_path / "results", tmp_path / "docs_study"
    write_variation(results, "fedavg", "fedavg", {0: 0.8, 1: 0.78})
    write_variation(results, "fedmpq", "fedmpq", {0: 0.6})
    (results / "fedmpq_s0" / "model.pt").write_bytes(b"large")
    (results / "fedmpq_s1").mkdir()
    (results / "fedmpq_s1" / "metrics.jsonl").write_text('{"round": 1, "test_accuracy": 0.1}\n')  # in flight
    stdout = run([sys.executable, STUDIES / "publish_study.py", "--results-dir", results, "--to", to])
    assert stdout.strip() == f"3 finished runs in {to / 'runs'}: fedavg_s0, fedavg_s1, fedmpq_s0"
    assert sorted(p.name for p in (to / "runs").iterdir()) == ["fedavg_s0", "fedavg_s1", "fedmpq_s0"]
    assert sorted(p.name for p in (to / "runs" / "fedmpq_s0").iterdir()) == [
        "config.yaml",
        "metrics.jsonl",
        RESULTS_FILE,
    ]
    comparison = json.loads((to / "comparison.json").read_text())
    assert sorted(comparison["variations"]) == ["fedavg", "fedmpq"]
    assert comparison["variations"]["fedavg"]["n"] == 2
    assert (to / "report.md").is_file() and any((to / "images").glob("*.pdf"))
    first_preview = (to / "accuracy_vs_rounds.png").read_bytes()
    assert first_preview.startswith(b"\x89PNG\r\n\x1a\n")  # the README's inline copy of the accuracy figure
    assert [p.name for p in to.glob("*.png")] == ["accuracy_vs_rounds.png"]  # no axis yet

    shutil.rmtree(results / "fedmpq_s1")
    write_variation(results, "fedmpq", "fedmpq", {1: 0.62})  # the second seed finished
    write_variation(results, "fedmpq_kd", "fedmpq_kd", {0: 0.64, 1: 0.67})
    write_variation(results, "fedmpq_epochs5", "fedmpq", {0: 0.7}, axis="train.local_epochs", local_epochs=5)
    page = "# The study\n\n<!-- results table: written by experiments/studies/publish_study.py -->\nold\n"
    (to / "README.md").write_text(page + "<!-- end of the results table -->\n\nWhat it shows.\n")
    (tmp_path / "plain.md").write_text("no markers\n")
    pages = ["--pages", to / "README.md", tmp_path / "plain.md"]
    run([sys.executable, STUDIES / "publish_study.py", "--results-dir", results, "--to", to, *pages])
    assert (tmp_path / "plain.md").read_text() == "no markers\n"
    assert json.loads((to / "comparison.json").read_text())["variations"]["fedmpq"]["n"] == 2
    readme = (to / "README.md").read_text()
    assert readme.startswith(page[: -len("old\n")]) and readme.endswith(
        "<!-- end of the results table -->\n\nWhat it shows.\n"
    )
    rows = {line.split(" | ")[0]: line.split(" | ") for line in readme.splitlines() if line.startswith("| fed")}
    assert sorted(rows) == ["| fedavg", "| fedmpq", "| fedmpq_epochs5", "| fedmpq_kd"] and "old" not in readme
    assert rows["| fedmpq_epochs5"][1:4] == ["train.local_epochs = 5", "3", "0"]
    # final accuracies 64 and 67 % against 60 and 62 %: Welch's p from scipy, the mean and std in %
    p_final = scipy.stats.ttest_ind([0.64, 0.67], [0.60, 0.62], equal_var=False).pvalue
    assert rows["| fedmpq_kd"][1:5] == ["main", "3", "0, 1", f"65.50 ± {100 * np.std([0.64, 0.67], ddof=1):.2f}"]
    assert rows["| fedmpq_kd"][-1].startswith(f"against fedmpq: {p_final:.3f}, ")
    preview = (to / "accuracy_vs_rounds.png").read_bytes()
    assert preview != first_preview  # redrawn with the new runs ...
    axis_preview = to / "accuracy_vs_rounds_axis_local_epochs.png"  # ... and the local-epochs axis drawn too
    assert axis_preview.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    run([sys.executable, STUDIES / "publish_study.py", "--results-dir", results, "--to", to, *pages])
    assert (to / "accuracy_vs_rounds.png").read_bytes() == preview  # ... and the same runs draw the same file


def test_quant_subset_error(tmp_path: Path, fedmpq_config) -> None:
    """A run's final model at two assignments, on a 20-image subset of its 40 test images and on all 40; with
    --images 0 the subset is the whole set and the differences vanish."""
    config = fedmpq_config()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    model = build_model("tiny_cnn", 10)
    save_final_model(run_dir / MODEL_FILE, model, "tiny_cnn", 10)
    layers = quantizable_layers(model)
    clients = {str(pid): {"bits": dict.fromkeys(layers, bits)} for pid, bits in enumerate((2, 2, 4, 8))}
    (run_dir / "bit_assignments.json").write_text(json.dumps({"clients": clients}))
    script = STUDIES / "quant_subset_error.py"
    result = json.loads(run([sys.executable, script, "--run-dir", run_dir, "--images", "20"]))
    assert (result["subset_images"], result["test_images"], result["distinct_assignments"]) == (20, 40, 3)
    assert [row["partition_id"] for row in result["clients"]] == [0, 1, 2, 3]
    assert all(round(row["subset_accuracy"] * 20, 6).is_integer() for row in result["clients"])
    assert result["clients"][0]["subset_accuracy"] == result["clients"][1]["subset_accuracy"]  # one assignment
    whole = json.loads(run([sys.executable, script, "--run-dir", run_dir, "--images", "0"]))
    assert whole["mean_abs_difference"] == 0 and whole["subset_images"] == 40
    assert [row["whole_accuracy"] for row in whole["clients"]] == [row["whole_accuracy"] for row in result["clients"]]
