"""Stopping and resuming through the real Flower path: SIGTERM to the runner's process group, SIGKILL of
the whole process tree, then the same command again.

Every process a test starts carries a marker in its environment (Flower and Ray pass it down to
all their processes), so "nothing is left" is checked on exactly this test's processes, whatever
else runs on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from conftest import VARYING_KEYS

from fedmpq_flwr.models import load_final_model
from fedmpq_flwr.rundir.checkpoint import checkpoint_summary

REPO = Path(__file__).resolve().parent.parent
MARKER = "FEDMPQ_TEST_PROCESS_MARKER"
pytestmark = pytest.mark.slow  # Flower and Ray start five times: minutes on 2 cores

RUN_ID = "kd_resume"
# FedMPQ-KD with half the clients per round (the sampler's RNG matters) and a teacher that nodes keep
# for two rounds (their state matters): everything a resumed run must restore.
EXPERIMENT = {
    "defaults": {
        "model": {"name": "tiny_cnn"},
        "dataset": {"name": "synthetic", "synthetic_train_size": 480, "synthetic_test_size": 100, "alpha": ".inf"},
        "train": {"num_rounds": 5, "batch_size": 32, "lr": 0.05},
        "strategy": {"name": "fedmpq_kd", "fraction_fit": 0.5},
        "quant": {"budgets": [2, 3, 4, 5]},
        "kd": {"refresh_every": 2},
        "federation": {"num_clients": 4, "device": "cpu"},
    },
    "runs": [{"run_id": RUN_ID, "description": "FedMPQ-KD, stopped and resumed", "seed": 3}],
}


def marked_processes(marker: str) -> list[psutil.Process]:
    """Live processes whose environment carries `marker`."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.environ().get(MARKER) == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def assert_nothing_left(marker: str, within_s: float) -> None:
    """Within `within_s` every process of this test is gone (Flower, Ray, launcher, runner)."""
    deadline = time.monotonic() + within_s
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    names = []
    for proc in left:
        try:
            names.append(" ".join(proc.cmdline())[:160])
        except psutil.Error:
            continue
    assert not names, f"left after {within_s:.0f} s: {names}"


class Attempt:
    """One command of the test, started in its own session (as a shell starts a job) with the marker."""

    def __init__(self, cmd: list[str], logs: Path, marker: str) -> None:
        self.marker = marker
        self.stdout, self.stderr = logs.with_suffix(".out"), logs.with_suffix(".err")
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.process = subprocess.Popen(
                cmd, cwd=REPO, stdout=out, stderr=err, start_new_session=True, env={**os.environ, MARKER: marker}
            )

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"still running after {timeout_s:.0f} s:\n{self.tail()}") from None

    def output(self) -> tuple[str, str]:
        return self.stdout.read_text(), self.stderr.read_text()

    def tail(self, run_dir: Path | None = None) -> str:
        """The ends of both streams (the ServerApp's log is in stdout) and of the SuperLink's log
        (the simulation's errors), for failure messages."""
        out, err = self.output()
        text = f"--- stdout ---\n{out[-4000:]}\n--- stderr ---\n{err[-3000:]}"
        log = run_dir / "superlink.log" if run_dir else None
        return text + (f"\n--- superlink.log ---\n{log.read_text()[-4000:]}" if log and log.exists() else "")

    def kill_all(self) -> None:
        """SIGKILL to every process of the attempt at once: the runner's tree (the SuperLink's
        session included) and whatever carries the marker."""
        procs = {proc.pid: proc for proc in marked_processes(self.marker)}
        try:
            root = psutil.Process(self.process.pid)
            procs.update({proc.pid: proc for proc in [root, *root.children(recursive=True)]})
        except psutil.NoSuchProcess:
            pass
        for proc in procs.values():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait()


@pytest.fixture
def new_marker() -> Iterator[Callable[[], str]]:
    """Markers for a test's process trees; whatever carries one is killed when the test ends (a
    failing test leaves nothing running)."""
    markers: list[str] = []

    def make() -> str:
        markers.append(uuid.uuid4().hex)
        return markers[-1]

    yield make
    for marker in markers:
        for proc in marked_processes(marker):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def runner_cmd(config_path: Path, results_dir: Path) -> list[str]:
    return [sys.executable, "-m", "fedmpq_flwr.main", "--config", str(config_path), "--results-dir", str(results_dir)]


def superlink_started(run_dir: Path) -> bool:
    """A SuperLink logs into this run's folder (its command line names the log file)."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any("flower-superlink" in part for part in cmdline) and str(run_dir / "superlink.log") in cmdline:
            return True
    return False


def completed_round(run_dir: Path) -> int:
    summary = checkpoint_summary(run_dir)
    return summary["round"] if summary else 0


def strip_history(history: list[dict]) -> list[dict]:
    """Round records without times and memory (also inside each participant's entry)."""
    return [
        {
            key: [{k: v for k, v in client.items() if k not in VARYING_KEYS} for client in value]
            if key == "clients"
            else value
            for key, value in record.items()
            if key not in VARYING_KEYS
        }
        for record in history
    ]


def test_stopped_and_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, new_marker) -> None:
    """SIGTERM to the runner's process group at SuperLink start and after round 1, SIGKILL of the
    whole process tree during round 3, then the launcher's command: every stop leaves no process
    within 30 s, and the finished run equals an uninterrupted one in every round (accuracies, bits,
    participants, teachers) and in its final model."""
    marker, reference_marker = new_marker(), new_marker()
    config_path = tmp_path / "runs.yaml"
    config_path.write_text(yaml.safe_dump(EXPERIMENT))
    # the uninterrupted run, alongside (much of Flower's and Ray's start is waiting)
    reference = Attempt(runner_cmd(config_path, tmp_path / "reference"), tmp_path / "reference", reference_marker)

    results = tmp_path / "results"
    run_dir = results / RUN_ID
    # 1. SIGTERM to the whole process group (as `timeout` sends it) while the SuperLink starts
    first = Attempt(runner_cmd(config_path, results), tmp_path / "first", marker)
    wait_until(lambda: superlink_started(run_dir), 300, "the SuperLink to start")
    os.killpg(first.process.pid, signal.SIGTERM)
    assert first.wait(30) == 128 + signal.SIGTERM
    assert_nothing_left(marker, within_s=30)
    stderr = first.output()[1]
    assert "stopped by SIGTERM: run kd_resume stopped before its first round finished" in stderr
    assert f"Resume with: {' '.join(runner_cmd(config_path, results))}" in stderr
    assert completed_round(run_dir) == 0

    # 2. the same command; SIGTERM to the process group once round 1 is checkpointed
    second = Attempt(runner_cmd(config_path, results), tmp_path / "second", marker)
    wait_until(lambda: completed_round(run_dir) >= 1, 600, "round 1's checkpoint")
    os.killpg(second.process.pid, signal.SIGTERM)
    assert second.wait(30) == 128 + signal.SIGTERM
    assert_nothing_left(marker, within_s=30)
    stopped_after = completed_round(run_dir)
    assert 1 <= stopped_after < 5
    assert f"stopped by SIGTERM: run kd_resume stopped after round {stopped_after}/5" in second.output()[1]

    # 3. the same command resumes; SIGKILL to every process of it while round 3 runs
    third = Attempt(runner_cmd(config_path, results), tmp_path / "third", marker)
    wait_until(lambda: completed_round(run_dir) >= 2, 600, "round 2's checkpoint", interval_s=0.02)
    third.kill_all()
    assert_nothing_left(marker, within_s=30)
    killed_after = completed_round(run_dir)
    assert 2 <= killed_after < 5, killed_after
    assert f'"resumed_after_round": {stopped_after}' in third.output()[0]

    # 4. the launcher's own command finishes it
    config = run_dir / "config.yaml"
    last = Attempt([sys.executable, "-m", "fedmpq_flwr.launch", "--config", str(config)], tmp_path / "last", marker)
    assert last.wait(900) == 0, last.tail(run_dir)
    assert f"resuming run {RUN_ID} after round {killed_after}/5" in last.output()[1]
    assert_nothing_left(marker, within_s=30)
    assert not (run_dir / "checkpoint").exists()  # a finished run drops its checkpoint

    assert reference.wait(900) == 0, reference.tail(tmp_path / "reference" / RUN_ID)
    assert_nothing_left(reference_marker, within_s=30)
    expected = json.loads((tmp_path / "reference" / RUN_ID / "results.json").read_text())
    resumed = json.loads((run_dir / "results.json").read_text())
    assert [r["round"] for r in resumed["history"]] == [1, 2, 3, 4, 5]
    assert strip_history(resumed["history"]) == strip_history(expected["history"])
    assert len({tuple(r["sampled_partitions"]) for r in expected["history"]}) > 1  # the sampler matters
    teachers = {c["teacher_round"] for r in expected["history"] for c in r["clients"]}
    assert {0, 2, 4} <= teachers  # nodes kept teachers across rounds
    metadata_keys = {"start_time", "end_time", "host"}

    def summary(results: dict) -> dict:
        return {
            **{k: v for k, v in results.items() if k not in ("history", "metadata")},
            "metadata": {k: v for k, v in results["metadata"].items() if k not in metadata_keys},
        }

    assert summary(resumed) == summary(expected)
    assert (run_dir / "bit_assignments.json").read_text() == (
        tmp_path / "reference" / RUN_ID / "bit_assignments.json"
    ).read_text()
    for got, want in zip(
        load_final_model(run_dir).state_dict().values(),
        load_final_model(tmp_path / "reference" / RUN_ID).state_dict().values(),
    ):
        assert torch.equal(got, want)
    log = (run_dir / "stdout.log").read_text()
    assert log.startswith("# reproduce: ") and f"# resumed after round {stopped_after}/5\n# reproduce: " in log
