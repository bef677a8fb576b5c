"""`logging.tensorboard`: the round records as TensorBoard scalars at step = round, a resumed run's
repeated rounds replaced, nothing written when the key is off, and a bad value refused in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedmpq_flwr.config import ConfigError, validate
from fedmpq_flwr.rundir.results import RunRecorder
from fedmpq_flwr.server.round_log import RoundLog


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag under RUN_DIR/tensorboard as (step, value) pairs."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def record(server_round: int, accuracy: float) -> dict[str, Any]:
    return {
        "round": server_round,
        "test_accuracy": accuracy,
        "bits_up": 1000 * server_round,
        "kd_alpha": 0.5,
        "round_time_s": 2.0,
        "clients": [{"partition_id": 0}],
        "sampled_partitions": [0, 1],
        "flag": True,
    }


def test_a_strategy_run_writes_every_numeric_round_field_per_round(fedmpq_config: Any, fl: Any, tmp_path: Path) -> None:
    config = fedmpq_config("fedmpq_kd", train={"num_rounds": 3}, logging={"tensorboard": True})
    records, _ = fl.run(config, rounds=3, participants=[[0, 1]] * 3)
    found = scalars(tmp_path / "unit")
    assert [step for step, _ in found["test_accuracy"]] == [1, 2, 3]
    assert [value for _, value in found["test_accuracy"]] == pytest.approx([r["test_accuracy"] for r in records])
    numeric = {k for k, v in records[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert {"bits_up", "round_time_s", "train_loss"} <= set(found) and set(found) == numeric - {"round"}


def test_a_resumed_run_replaces_the_rounds_it_runs_again(tmp_path: Path) -> None:
    first = RoundLog(RunRecorder(tmp_path, "unit"), num_rounds=4, tensorboard=True)
    for server_round in (1, 2, 3):  # round 3 recorded, then the run stopped before its checkpoint
        first.write(record(server_round, 0.1 * server_round))
    resumed = RoundLog(RunRecorder(tmp_path, "unit", completed_rounds=2), num_rounds=4, tensorboard=True)
    resumed.resume_after(2)
    for server_round in (3, 4):
        resumed.write(record(server_round, 0.5 + 0.1 * server_round))
    found = scalars(tmp_path)
    assert found["test_accuracy"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2)), (3, pytest.approx(0.8)),
                                      (4, pytest.approx(0.9))]  # fmt: skip
    assert set(found) == {"test_accuracy", "bits_up", "kd_alpha", "round_time_s"}


def test_nothing_is_written_when_the_key_is_off(tmp_path: Path) -> None:
    log = RoundLog(RunRecorder(tmp_path, "unit"), num_rounds=1)
    log.write(record(1, 0.5))
    assert validate({})["logging"] == {"tensorboard": False}
    assert not (tmp_path / "tensorboard").exists()


def test_a_bad_value_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match=r"^key 'logging.tensorboard': value 'yes' has type str; expected bool$"):
        validate({"logging": {"tensorboard": "yes"}})
