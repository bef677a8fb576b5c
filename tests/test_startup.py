"""Start-up instrumentation (startup.json) and the app the launcher stages for `flwr run` (no Flower run here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmpq_flwr.rundir.startup import MARKS_ENV, POINTS, breakdown, mark, read_marks, write_startup

T0 = 1_700_000_000.0
MARKS = [  # (name, seconds after the launcher's process was created), in the order processes write them
    ("launcher_started", 0.0),
    ("superlink_started", 1.5),
    ("superlink_ready", 3.0),
    ("run_submitted", 7.0),
    ("server_app_started", 12.0),
    ("strategy_ready", 15.0),
    ("round_started", 15.5),
    ("client_started", 30.0),
    ("client_started", 31.0),
    ("round_finished", 40.5),
    ("round_started", 40.6),
    ("client_started", 41.0),
    ("round_finished", 45.6),
    ("round_started", 45.7),
    ("round_finished", 52.7),
    ("server_app_finished", 54.0),
    ("flwr_run_finished", 60.0),
    ("shutdown_done", 62.0),
]


def test_breakdown_gives_seconds_per_phase_and_the_first_rounds_extra() -> None:
    result = breakdown([(name, T0 + seconds) for name, seconds in MARKS])
    assert list(result["points_s"]) == list(POINTS)
    assert result["points_s"]["first_client_started"] == 30.0 and result["points_s"]["last_round_finished"] == 52.7
    assert result["phases_s"]["superlink_ready"] == 1.5 and result["phases_s"]["first_client_started"] == 14.5
    assert result["phases_s"]["first_round_finished"] == 10.5 and result["phases_s"]["last_round_finished"] == 12.2
    assert sum(result["phases_s"].values()) == pytest.approx(62.0)
    assert result["rounds_s"] == [25.0, 5.0, 7.0]
    assert result["first_round_extra_s"] == 19.0  # 25 s against a mean of 6 s: Ray and actors in round 1
    assert result["before_first_round_s"] == 15.5 and result["after_last_round_s"] == pytest.approx(9.3)


def test_a_stopped_run_keeps_the_phases_it_reached(tmp_path: Path) -> None:
    marks = tmp_path / "marks.jsonl"
    for name, seconds in MARKS[:8]:  # stopped during the first round
        mark(name, marks, when=T0 + seconds)
    mark("shutdown_done", marks, when=T0 + 35.0)
    with open(marks, "a") as handle:
        handle.write('["round_fin')  # cut short by a killed process
    assert [name for name, _ in read_marks(marks)][-1] == "shutdown_done"
    write_startup(tmp_path, marks)
    result = json.loads((tmp_path / "startup.json").read_text())
    assert "first_round_finished" not in result["points_s"] and result["rounds_s"] == []
    assert set(result["phases_s"]) == set(POINTS[1:8])  # shutdown_done's phase would start at a missing point
    assert "after_last_round_s" not in result and "first_round_extra_s" not in result


def test_marks_go_where_the_environment_says_or_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MARKS_ENV, raising=False)
    mark("client_started")  # a bare `flwr run .`: nothing to write to, nothing written
    monkeypatch.setenv(MARKS_ENV, str(tmp_path / "marks.jsonl"))
    mark("client_started")
    assert [name for name, _ in read_marks(tmp_path / "marks.jsonl")] == ["client_started"]
    monkeypatch.setenv(MARKS_ENV, str(tmp_path / "gone" / "marks.jsonl"))  # the launcher cleaned up
    mark("client_started")  # a mark never fails a client


def test_the_staged_app_is_the_fab_of_the_checkout(tmp_path: Path) -> None:
    """`flwr run` gets a folder with only what it packs: the FAB (so the app the ServerApp and the
    ClientApps load) is byte for byte the one it builds from the checkout."""
    from flwr.cli.build import build_fab_from_disk

    from fedmpq_flwr.runner.launcher import APP_DIR, stage_app

    staged = stage_app(tmp_path / "app")
    assert build_fab_from_disk(staged) == build_fab_from_disk(APP_DIR)
    assert not (staged / "tests").exists() and not (staged / ".venv").exists()
