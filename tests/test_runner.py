"""The experiment runner's validation, expansion and skipping (no training is started here)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, write

from fedmpq_flwr.config import ConfigError, deep_merge, dump_yaml, flatten
from fedmpq_flwr.config.runner_file import expand_runs, parse_overrides
from fedmpq_flwr.methods.catalog import method_names
from fedmpq_flwr.rundir.results import RESULTS_FILE, STATUS_COMPLETED

REPO = Path(__file__).resolve().parent.parent


def run_main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedmpq_flwr.main", *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_seeds_expand_and_overrides_apply(tmp_path: Path) -> None:
    overrides = parse_overrides(["train.num_rounds=3", "eval.every=2"])
    runs = expand_runs(write(tmp_path, TINY), tmp_path / "out", overrides)
    assert [r["run_id"] for r in runs] == ["a_seed0", "a_seed1", "b"]
    assert [r["seed"] for r in runs] == [0, 1, 0]
    assert {r["variation"] for r in runs} == {"a", "b"}
    assert all(
        r["train"]["num_rounds"] == 3 and r["eval"] == {"every": 2, "quant_every": 1, "quant_test_images": 0}
        for r in runs
    )
    assert runs[2]["train"]["lr"] == 0.01 and runs[0]["train"]["lr"] == 0.1
    assert runs[0]["results_dir"] == str(tmp_path / "out")


def test_a_run_folders_config_is_run_again_as_it_was(tmp_path: Path) -> None:
    """A run folder's config.yaml is a runner file of that one run: the same settings into another results
    directory, `--set` still applying, a bad value named with the file it is in."""
    original = expand_runs(write(tmp_path, TINY), tmp_path / "out", {})[1]
    saved = tmp_path / "out" / original["run_id"] / "config.yaml"
    saved.parent.mkdir(parents=True)
    dump_yaml(original, str(saved))
    (rerun,) = expand_runs(saved, tmp_path / "again", parse_overrides(["train.num_rounds=1"]))
    assert rerun["results_dir"] == str(tmp_path / "again") and rerun["train"]["num_rounds"] == 1
    changed = {"results_dir": rerun["results_dir"], "train": {**original["train"], "num_rounds": 1}}
    assert rerun == {**original, **changed}
    with pytest.raises(ConfigError, match=rf"^{saved}: key 'train.lr': value 'fast' has type str"):
        expand_runs(saved, tmp_path / "again", parse_overrides(["train.lr=fast"]))
    with pytest.raises(ConfigError, match="or one run's config.yaml"):
        expand_runs(write(tmp_path, {"defaults": {}}), tmp_path / "again", {})


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d["runs"][1].update(train={"lr": "fast"}), "run 'b': key 'train.lr': value 'fast' has type str"),
        (lambda d: d["runs"][1].update(optimiser="adam"), "run 'b': unknown key 'optimiser'"),
        (lambda d: d["runs"][0].update(seeds=[0, -1]), "run 'a': key 'seeds'"),
        (lambda d: d["runs"][1].pop("description"), "runs[1]: key 'description' is missing"),
        (lambda d: d["runs"][1].update(run_id="a_seed0"), "run_id 'a_seed0' appears twice"),
        (lambda d: d.update(extra=1), "unknown top-level key 'extra'"),
        (lambda d: d["defaults"]["dataset"].update(name="DATASET_PLACEHOLDER"), "leftover placeholder"),
    ],
)
def test_invalid_files_are_rejected(tmp_path: Path, mutate, fragment: str) -> None:
    document = json.loads(json.dumps(TINY))
    mutate(document)
    with pytest.raises(ConfigError) as info:
        expand_runs(write(tmp_path, document), tmp_path / "out", {})
    assert fragment in str(info.value)


def test_cli_config_error_is_one_line_exit_2_and_keeps_files(tmp_path: Path) -> None:
    document = json.loads(json.dumps(TINY))
    document["runs"][1]["train"] = {"num_rounds": 0}
    results = tmp_path / "out"
    (results / "a_seed0").mkdir(parents=True)
    keep = results / "a_seed0" / "stdout.log"
    keep.write_text("earlier output\n")
    proc = run_main("--config", str(write(tmp_path, document)), "--results-dir", str(results))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "key 'train.num_rounds': value 0 is out of range" in lines[0]
    assert keep.read_text() == "earlier output\n"


def test_missing_data_source_fails_before_training(tmp_path: Path) -> None:
    document = json.loads(json.dumps(TINY))
    document["defaults"]["dataset"] = {"name": "cifar10", "source": "npz", "path": str(tmp_path / "nowhere")}
    proc = run_main("--config", str(write(tmp_path, document)), "--results-dir", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "dataset.path" in proc.stderr and "npz" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_only_is_rejected(tmp_path: Path) -> None:
    proc = run_main("--config", str(write(tmp_path, TINY)), "--results-dir", str(tmp_path / "out"), "--only", "zzz")
    assert proc.returncode == 2 and "--only: unknown run_id 'zzz'" in proc.stderr


def fake_finished_runs(tmp_path: Path, results: Path) -> None:
    """Results folders of TINY's runs that look finished, each with the config it would run with."""
    for run in expand_runs(write(tmp_path, TINY), results, {}):
        run_dir = results / run["run_id"]
        run_dir.mkdir(parents=True)
        record = {"run_id": run["run_id"], "round": 1, "test_accuracy": 0.5}
        (run_dir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        dump_yaml(run, str(run_dir / "config.yaml"))
        (run_dir / RESULTS_FILE).write_text(json.dumps({"status": STATUS_COMPLETED, "history": [record]}))


def test_finished_runs_are_skipped_not_overwritten(tmp_path: Path) -> None:
    results = tmp_path / "out"
    fake_finished_runs(tmp_path, results)
    before = (results / "b" / RESULTS_FILE).read_text()
    proc = run_main("--config", str(write(tmp_path, TINY)), "--results-dir", str(results))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"event"')]
    assert [(e["event"], e["run_id"]) for e in events] == [
        ("run_skipped", "a_seed0"),
        ("run_skipped", "a_seed1"),
        ("run_skipped", "b"),
    ]
    assert (results / "b" / RESULTS_FILE).read_text() == before
    assert (results / "comparison.json").exists()  # the analyzer still ran


def test_a_failed_run_does_not_stop_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import fedmpq_flwr.runner.cli as runner

    executed = []

    def fake_execute(run: dict, results_dir: Path, overwrite: bool, position: str, **_: object) -> str:
        executed.append((run["run_id"], position))
        return "failed" if run["run_id"] == "a_seed0" else "completed"

    monkeypatch.setattr(runner, "execute", fake_execute)
    code = runner.main(["--config", str(write(tmp_path, TINY)), "--results-dir", str(tmp_path / "out")])
    assert code == 1
    assert executed == [("a_seed0", "1/3"), ("a_seed1", "2/3"), ("b", "3/3")]
    assert "failed runs (1): a_seed0" in capsys.readouterr().err
    assert (tmp_path / "out" / "comparison.json").exists()  # the analyzer ran anyway


def test_only_selects_a_variation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fedmpq_flwr.runner.cli as runner

    executed = []
    monkeypatch.setattr(runner, "execute", lambda run, *_, **__: executed.append(run["run_id"]) or "completed")
    assert (
        runner.main(["--config", str(write(tmp_path, TINY)), "--results-dir", str(tmp_path / "o"), "--only", "a"]) == 0
    )
    assert executed == ["a_seed0", "a_seed1"]


def test_run_teed_copies_both_streams(tmp_path: Path, capsys) -> None:
    from fedmpq_flwr.runner.tee import run_teed

    code = "import sys; print('to out'); print('to err', file=sys.stderr); sys.exit(3)"
    returncode = run_teed([sys.executable, "-c", code], tmp_path / "o.log", tmp_path / "e.log", "# header\n")
    assert returncode == 3
    assert (tmp_path / "o.log").read_text() == "# header\nto out\n"
    assert (tmp_path / "e.log").read_text() == "to err\n"
    console = capsys.readouterr()
    assert "to out" in console.out and "to err" in console.err


def test_a_finished_run_with_another_config_is_an_error(tmp_path: Path) -> None:
    results = tmp_path / "out"
    fake_finished_runs(tmp_path, results)
    before = (results / "b" / RESULTS_FILE).read_text()
    proc = run_main("--config", str(write(tmp_path, TINY)), "--results-dir", str(results), "--set", "train.lr=0.2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"config error: run 'a_seed0' in {results} finished with train.lr = 0.1, now 0.2; "
        "use --overwrite to rerun it or another --results-dir"
    )
    assert (results / "b" / RESULTS_FILE).read_text() == before


def test_extends_inherits_defaults_and_axis_is_checked(tmp_path: Path) -> None:
    write(tmp_path, {**TINY, "defaults": {**TINY["defaults"], "train": {"num_rounds": 2, "lr": 0.03}}}, "base.yaml")
    child = {
        "extends": "base.yaml",
        "defaults": {"train": {"num_rounds": 4}},
        "runs": [
            {
                "run_id": "c",
                "description": "varies the epochs",
                "axis": "train.local_epochs",
                "train": {"local_epochs": 2},
            },
        ],
    }
    (run,) = expand_runs(write(tmp_path, child), tmp_path / "out", {})
    assert run["model"]["name"] == "tiny_cnn" and run["train"]["lr"] == 0.03  # inherited
    assert run["train"]["num_rounds"] == 4 and run["train"]["local_epochs"] == 2  # own settings win
    assert run["axis"] == "train.local_epochs"
    with pytest.raises(ConfigError, match=r"key 'extends': value 'nowhere.yaml' must name an existing runner file"):
        expand_runs(write(tmp_path, {**child, "extends": "nowhere.yaml"}), tmp_path / "out", {})
    child["runs"][0]["axis"] = "train.epochs"
    with pytest.raises(ConfigError, match=r"run 'c': key 'axis': value 'train.epochs' is not a config key"):
        expand_runs(write(tmp_path, child), tmp_path / "out", {})


ABLATIONS = {  # file -> the kd setting each of its variations differs in (kd_main: none)
    "no_kd.yaml": {"kd_alpha0": {"alpha": 0.0}},
    "alpha.yaml": {"kd_alpha0.1": {"alpha": 0.1}, "kd_alpha1.0": {"alpha": 1.0}},
    "temperature.yaml": {"kd_temp1": {"temperature": 1.0}, "kd_temp4": {"temperature": 4.0}},
    "teacher.yaml": {"kd_updating": {"teacher": "updating"}, "kd_history": {"teacher": "history"}},
    "refresh.yaml": {"kd_refresh5": {"refresh_every": 5}},
    "kd_schedule.yaml": {
        "kd_ramp10": {"schedule": "ramp", "schedule_rounds": 10},
        "kd_decay50": {"schedule": "decay", "schedule_rounds": 50},
    },
    "kd_gate.yaml": {"kd_gate_correct": {"gate": "correct"}, "kd_gate_confidence": {"gate": "confidence"}},
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_files_vary_one_kd_setting_of_the_main_experiment(name: str, tmp_path: Path) -> None:
    assert sorted(p.name for p in (REPO / "configs" / "ablations").glob("*.yaml")) == sorted(ABLATIONS)
    runs = expand_runs(REPO / "configs" / "ablations" / name, tmp_path, {})
    main = {
        r["seed"]: r
        for r in expand_runs(REPO / "configs" / "full_experiment.yaml", tmp_path, {})
        if r["variation"] == "fedmpq_kd"
    }
    assert {r["variation"] for r in runs} == {"kd_main", *ABLATIONS[name]}
    for run in runs:
        assert run["strategy"]["name"] == "fedmpq_kd"
        expected = deep_merge(main[run["seed"]], {"kd": ABLATIONS[name].get(run["variation"], {})})
        differing = {k for k in expected if expected[k] != run[k]}
        assert differing == {"run_id", "variation", "description"}, (run["run_id"], differing)


def test_full_experiment_is_the_design(tmp_path: Path) -> None:
    """configs/full_experiment.yaml: the main experiment for every method and axes A to G for two,
    with the faithful scale gradient; beside it, FedMPQ and FedMPQ-KD with the frozen scale in the
    main experiment and along axis A, each equal to its faithful run but for quant.scale_grad."""
    expanded = expand_runs(REPO / "configs" / "full_experiment.yaml", tmp_path, {})
    runs = [r for r in expanded if r["quant"].get("scale_grad", "plain") == "plain"]
    frozen = [r for r in expanded if r not in runs]
    faithful = {(r["strategy"]["name"], r["axis"], r["train"]["local_epochs"], r["seed"]): flatten(r) for r in runs}
    assert sorted((r["strategy"]["name"], r["axis"], r["train"]["local_epochs"]) for r in frozen) == sorted(
        (method, axis, epochs)
        for method in ("fedmpq", "fedmpq_kd")
        for axis, epochs in (("", 1), ("train.local_epochs", 2), ("train.local_epochs", 5))
        for _seed in range(3)
    )
    for run in frozen:
        flat = flatten(run)
        twin = faithful[run["strategy"]["name"], run["axis"], run["train"]["local_epochs"], run["seed"]]
        differing = {k for k in flat.keys() | twin.keys() if flat.get(k) != twin.get(k)}
        assert differing <= {"run_id", "variation", "description", "quant.scale_grad"}, run["run_id"]
        assert flat["quant.scale_grad"] == "frozen"
    main = [r for r in runs if not r["axis"]]
    methods = ("fedavg", "fedgkd", "fedkd", "fedmpq", "fedmpq_kd", "fedpaq", "fedpq", "qffl")
    assert sorted((r["strategy"]["name"], r["seed"]) for r in main) == [
        (method, seed) for method in methods for seed in (0, 1, 2)
    ]
    by_method = {r["strategy"]["name"]: r for r in main}
    assert by_method["fedpq"]["quant"] == by_method["fedmpq"]["quant"]  # the same budgets
    assert by_method["fedpaq"]["paq"] == {"bits": 4, "bucket": 512} and by_method["qffl"]["qffl"] == {
        "q": 1.0,
        "lipschitz_scale": 0.01,
    }
    for run in main:  # one setting: the methods differ only in the sections they own
        assert {k: run[k] for k in ("model", "dataset", "train", "federation")} == {
            k: main[0][k] for k in ("model", "dataset", "train", "federation")
        }
    assert main[0]["gkd"] == {"gamma": 0.1, "temperature": 1.0, "buffer": 5, "gate": "none"}
    assert main[0]["fedkd"] == {"mentor": "resnet32", "energy_start": 0.95, "energy_end": 0.98}
    setting = main[0]
    assert (setting["model"]["name"], setting["dataset"]["name"], setting["dataset"]["alpha"]) == (
        "resnet20",
        "cifar10",
        0.5,
    )
    assert setting["federation"]["num_clients"] == 10 and setting["train"]["num_rounds"] == 50
    assert {k: setting["train"][k] for k in ("local_epochs", "batch_size", "lr", "momentum")} == {
        "local_epochs": 1,
        "batch_size": 64,
        "lr": 0.1,
        "momentum": 0.9,
    }
    assert sum(setting["quant"]["budgets"]) / 10 == 4 and setting["quant"]["lambda_b"] == 0.01
    assert (setting["kd"]["alpha"], setting["kd"]["temperature"]) == (0.5, 2.0)

    def value(run: dict, axis: str) -> float:
        if axis == "quant.avg_bits":
            return sum(run["quant"]["budgets"]) / len(run["quant"]["budgets"])
        section, key = axis.split(".")
        return run[section][key]

    axes = {
        "train.local_epochs": {1, 2, 5},
        "quant.avg_bits": {2, 4, 8},
        "dataset.alpha": {0.1, 0.5, math.inf},
        "model.name": {"resnet20", "mobilenet_v2", "vit_small"},
        "federation.num_clients": {10, 50, 100},
        "federation.dropout": {0.0, 0.2},
        "dataset.label_noise": {0.0, 0.1},
    }
    for axis, expected in axes.items():
        for method in ("fedmpq", "fedmpq_kd"):
            points = [r for r in runs if r["strategy"]["name"] == method and r["axis"] in ("", axis)]
            assert {value(r, axis) for r in points} == expected, (axis, method)
            assert all(sum(value(r, axis) == v for r in points) == 3 for v in expected)  # 3 seeds each
            assert all(r["axis"] == axis or value(r, axis) == value(setting, axis) for r in points)
    assert {r["axis"] for r in runs} == {"", *axes}
    assert {r["strategy"]["name"] for r in runs if r["axis"]} == {"fedmpq", "fedmpq_kd"}

    # an axis run differs from its method's main run (same seed) in its axis key, and in what goes with it
    goes_with = {
        "quant.avg_bits": {"quant.budgets"},
        "federation.num_clients": {"strategy.fraction_fit"},
        "model.name": {"train.optimizer", "train.lr", "train.weight_decay", "train.warmup_rounds", "train.lr_schedule"},
    }
    main_of = {(r["strategy"]["name"], r["seed"]): flatten(r) for r in main}
    for run in (r for r in runs if r["axis"]):
        flat = flatten(run)
        differing = {k for k, v in flat.items() if v != main_of[run["strategy"]["name"], run["seed"]][k]}
        allowed = {"run_id", "variation", "description", "axis", run["axis"], *goes_with.get(run["axis"], ())}
        assert differing <= allowed, (run["run_id"], differing - allowed)
    clients = [r for r in runs if r["axis"] == "federation.num_clients"]
    assert {r["strategy"]["fraction_fit"] for r in clients} == {0.1}
    assert all(r["quant"]["budgets"] == setting["quant"]["budgets"] for r in clients)  # tiled to 50 and 100
    vit = [r for r in runs if r["model"]["name"] == "vit_small"]
    keys = ("optimizer", "lr", "weight_decay", "warmup_rounds", "lr_schedule")
    vit_settings = {tuple(r["train"][k] for k in keys) for r in vit}
    assert vit_settings == {("adamw", 0.001, 0.05, 5, "cosine")}
    assert all(r["train"]["optimizer"] == "sgd" for r in runs if r["model"]["name"] != "vit_small")


def test_finished_runs_survive_a_package_upgrade(tmp_path: Path) -> None:
    """A finished run whose saved config lacks keys a newer package added (counted as their defaults),
    or differs only in sections its method never reads, is still skipped; its labels follow the file."""
    results = tmp_path / "out"
    fake_finished_runs(tmp_path, results)
    for run_id in ("a_seed0", "a_seed1", "b"):
        path = results / run_id / "config.yaml"
        saved = yaml.safe_load(path.read_text())
        del saved["train"]["momentum"], saved["kd"], saved["eval"]  # a defaulted key and sections added later
        saved["quant"]["lambda_b"] = 0.5  # FedAvg never reads quant.*
        path.write_text(yaml.safe_dump(saved))
    before = (results / "b" / RESULTS_FILE).read_text()
    relabelled = deep_merge(TINY, {})
    relabelled["runs"][1] = {**TINY["runs"][1], "axis": "train.lr", "description": "second, now an axis run"}
    proc = run_main("--config", str(write(tmp_path, relabelled)), "--results-dir", str(results))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"event"')]
    assert [e["event"] for e in events] == ["run_skipped"] * 3
    assert (results / "b" / RESULTS_FILE).read_text() == before
    saved_b = yaml.safe_load((results / "b" / "config.yaml").read_text())
    assert (saved_b["axis"], saved_b["description"]) == ("train.lr", "second, now an axis run")
    assert "momentum" not in saved_b["train"] and saved_b["quant"]["lambda_b"] == 0.5  # nothing else rewritten
    # a real change is still an error naming the key, also for a key the saved config lacks
    proc = run_main(
        "--config", str(write(tmp_path, TINY)), "--results-dir", str(results), "--set", "train.momentum=0.5"
    )
    assert proc.returncode == 2
    assert "run 'a_seed0'" in proc.stderr and "finished with train.momentum = 0.9, now 0.5" in proc.stderr


@pytest.mark.parametrize("where", ["file", "below_a_file"])
def test_results_dir_that_is_not_a_folder_is_a_one_line_error(tmp_path: Path, where: str) -> None:
    """Checked with the rest of the input, before anything runs (it used to end in a FileExistsError)."""
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder\n")
    results = blocker if where == "file" else blocker / "out"
    proc = run_main("--config", str(write(tmp_path, TINY)), "--results-dir", str(results))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    expected = "exists and is not a folder" if where == "file" else f"{blocker} is not a folder"
    assert len(lines) == 1 and lines[0] == f"config error: --results-dir {results}: {expected}"
    assert blocker.read_text() == "not a folder\n"


def test_quick_study_is_the_main_experiment_on_10000_images_for_20_rounds(tmp_path: Path) -> None:
    """configs/quick.yaml: the full file's main runs of seed 0 (every method, the frozen-scale pair
    included), each equal to its full-experiment twin but for 10,000 training images, 20 rounds and
    the quantized models evaluated every 5th round, on 2,000 test images."""
    quick = expand_runs(REPO / "configs" / "quick.yaml", tmp_path, {})
    full = expand_runs(REPO / "configs" / "full_experiment.yaml", tmp_path, {})
    twins = {r["run_id"]: flatten(r) for r in full if not r["axis"] and r["seed"] == 0}
    assert sorted(r["run_id"] for r in quick) == sorted(twins)
    assert sorted((r["strategy"]["name"], r["quant"]["scale_grad"]) for r in quick) == sorted(
        [(m, "plain") for m in ("fedavg", "fedgkd", "fedkd", "fedmpq", "fedmpq_kd", "fedpaq", "fedpq", "qffl")]
        + [("fedmpq", "frozen"), ("fedmpq_kd", "frozen")]
    )
    for run in quick:
        flat, twin = flatten(run), twins[run["run_id"]]
        differing = {k for k in flat.keys() | twin.keys() if flat.get(k) != twin.get(k)}
        quick_only = {
            "description",
            "dataset.train_subset",
            "train.num_rounds",
            "eval.quant_every",
            "eval.quant_test_images",
        }
        assert differing == quick_only, run["run_id"]
        assert (flat["dataset.train_subset"], flat["train.num_rounds"], flat["seed"]) == (10000, 20, 0)
        assert (flat["eval.every"], flat["eval.quant_every"], flat["eval.quant_test_images"]) == (1, 5, 2000)
        assert (flat["dataset.name"], flat["dataset.alpha"], flat["federation.num_clients"]) == ("cifar10", 0.5, 10)


def test_smoke_file_runs_every_method_in_miniature(tmp_path: Path) -> None:
    """configs/smoke_test.yaml (`make smoke`): every catalog method on synthetic data for 3 rounds;
    only FedKD's run, which needs models with ResNet stages, leaves the tiny CNN and the full image set."""
    runs = expand_runs(REPO / "configs" / "smoke_test.yaml", tmp_path, {})
    assert sorted({r["strategy"]["name"] for r in runs}) == sorted(method_names())
    for run in runs:
        assert (run["dataset"]["name"], run["train"]["num_rounds"], run["seed"]) == ("synthetic", 3, 0)
        sizes = (run["model"]["name"], run["dataset"]["synthetic_train_size"], run["dataset"]["synthetic_test_size"])
        assert sizes == (("resnet20", 400, 200) if run["strategy"]["name"] == "fedkd" else ("tiny_cnn", 1200, 400))


def test_qffl_sweep_is_the_main_experiment_in_the_v1_real_data_setting(tmp_path: Path) -> None:
    """configs/sweeps/qffl.yaml: FedAvg and q-FFL at several (q, lipschitz_scale), each equal to the
    full file's seed-0 run of its method but for 10,000 images, 10 rounds and the qffl section."""
    sweep = expand_runs(REPO / "configs" / "sweeps" / "qffl.yaml", tmp_path, {})
    full = {
        r["strategy"]["name"]: flatten(r)
        for r in expand_runs(REPO / "configs" / "full_experiment.yaml", tmp_path, {})
        if r["variation"] in ("fedavg", "qffl") and r["seed"] == 0
    }
    points = {(r["qffl"]["q"], r["qffl"]["lipschitz_scale"]) for r in sweep if r["strategy"]["name"] == "qffl"}
    assert (1.0, 1.0) in points and len(points) == len(sweep) - 1  # the authors' point, no repeats
    for run in sweep:
        flat, twin = flatten(run), full[run["strategy"]["name"]]
        differing = {k for k in flat.keys() | twin.keys() if flat.get(k) != twin.get(k)}
        assert differing <= {
            "run_id", "variation", "description", "dataset.train_subset", "train.num_rounds", "qffl.q",
            "qffl.lipschitz_scale",
        }, run["run_id"]  # fmt: skip
        assert (flat["dataset.train_subset"], flat["train.num_rounds"], flat["seed"]) == (10000, 10, 0)
