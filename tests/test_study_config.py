"""The reference study's runner file (configs/study.yaml) asks the question docs/study/README.md says it asks,
with the variants the first look (configs/sweeps/kd_variants.yaml) chose."""

from __future__ import annotations

from pathlib import Path

from fedmpq_flwr.config.runner_file import CONFIG_DIR, expand_runs

STUDY = CONFIG_DIR / "study.yaml"
FIRST_LOOK = CONFIG_DIR / "sweeps" / "kd_variants.yaml"
BASELINES = {"fedavg", "fedmpq", "fedmpq_kd"}


def test_study_is_21_runs_in_two_regimes(tmp_path: Path) -> None:
    runs = expand_runs(STUDY, tmp_path, {})
    assert len(runs) == 21
    seeds: dict[str, list[int]] = {}
    for run in runs:
        seeds.setdefault(run["variation"], []).append(run["seed"])
        dataset = run["dataset"]
        assert (dataset["name"], dataset["train_subset"], dataset["alpha"], dataset["seed"]) == (
            "cifar10",
            10000,
            0.5,
            42,
        )
        assert run["model"]["name"] == "resnet20" and run["federation"]["num_clients"] == 10
        assert run["strategy"]["fraction_fit"] == 1.0
        assert (run["eval"]["quant_every"], run["eval"]["quant_test_images"]) == (5, 2000)
        assert sum(run["quant"]["budgets"]) / len(run["quant"]["budgets"]) == 4
        regime = (run["train"]["local_epochs"], run["train"]["num_rounds"])
        assert regime == ((5, 10) if run["variation"].endswith("_epochs5") else (1, 20)), run["run_id"]
    assert all(values == [0, 1, 2] for values in seeds.values())
    strategies = {run["variation"]: run["strategy"]["name"] for run in runs}
    assert {v for v in strategies if v.endswith("_epochs5")} == {"fedmpq_epochs5", "fedmpq_kd_epochs5"}
    variants = {v for v in strategies if not v.endswith("_epochs5")} - BASELINES
    assert len(variants) == 2 and all(strategies[v] == "fedmpq_kd" for v in variants)
    assert {strategies[v] for v in BASELINES} == BASELINES


def test_the_study_variants_are_first_look_variants(tmp_path: Path) -> None:
    """Each variant of the study is a variation of the first look with the same kd settings; a decay schedule
    spans the run's rounds in both."""
    study = {run["variation"]: run for run in expand_runs(STUDY, tmp_path, {}) if run["seed"] == 0}
    first_look = {run["variation"]: run for run in expand_runs(FIRST_LOOK, tmp_path, {})}
    variants = {v for v in study if not v.endswith("_epochs5")} - BASELINES
    assert variants <= set(first_look)
    for variant in variants:
        kd, looked = dict(study[variant]["kd"]), dict(first_look[variant]["kd"])
        if kd["schedule"] == "decay":
            assert kd.pop("schedule_rounds") == study[variant]["train"]["num_rounds"]
            assert looked.pop("schedule_rounds") == first_look[variant]["train"]["num_rounds"]
        assert kd == looked, variant
