"""The runner's `--jobs N`: resource checks, the scheduler, the console, private ports; one slow end-to-end
test runs two tiny runs at once through Flower."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY, VARYING_KEYS, write
from flower_checks import processes_with_env

from fedmpq_flwr.config import ConfigError, dump_yaml
from fedmpq_flwr.rundir.results import RESULTS_FILE, STATUS_COMPLETED
from fedmpq_flwr.runner.jobs import JobsStopped, check_jobs, ray_cpus, run_jobs
from fedmpq_flwr.runner.signals import stop_received, stop_signals

REPO = Path(__file__).resolve().parent.parent
CPUS = os.cpu_count() or 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1, 0.0, 2, 0), "--jobs 0: must be at least 1 (the number of runs in flight at once)"),
        (
            (3, 1, 0.0, 2, 0),
            "--jobs 3: 3 runs at once with federation.client_cpus 1 need 3 CPUs, this machine has 2; "
            "allowed: --jobs 1 to 2",
        ),
        ((2, 16, 0.0, 16, 0), "need 32 CPUs, this machine has 16; allowed: --jobs 1 to 1"),
        (
            (5, 1, 0.25, 16, 1),
            "--jobs 5: 5 runs at once with federation.client_gpus 0.25 need 1.25 GPUs, this machine has 1; "
            "allowed: --jobs 1 to 4 (or a smaller federation.client_gpus)",
        ),
    ],
)
def test_requests_that_do_not_fit_are_one_line_errors(args: tuple, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_jobs(*args)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_requests_that_fit_pass_and_share_the_machine() -> None:
    check_jobs(1, 64, 1.0, 2, 0)  # one run has the machine, as before --jobs existed
    check_jobs(2, 1, 0.0, 2, 0)
    check_jobs(4, 1, 0.25, 16, 1)  # 4 x 0.25 fits one GPU
    assert ray_cpus(1, 16, 1, 1, 0.25) is None  # Ray counts the machine itself
    assert ray_cpus(2, 2, 1, 0, 0.0) == 1
    assert ray_cpus(3, 16, 2, 0, 0.0) == 5
    # on a GPU: 2 runs x 2 actors x 0.25 = the whole GPU, though 8 CPUs would allow 8 actors each
    assert ray_cpus(2, 16, 1, 1, 0.25) == 2
    assert ray_cpus(4, 16, 2, 1, 0.25) == 2  # one actor of 2 CPUs each


def test_ray_cpus_reach_flower_as_its_init_args(fedavg_config) -> None:
    """What `flwr run --federation-config` makes of the launcher's value (a connection without options)."""
    from types import SimpleNamespace

    from flwr.cli.run.run import _parse_federation_config_overrides

    from fedmpq_flwr.runner.launcher import federation_config

    config = fedavg_config(federation={"num_clients": 4, "client_cpus": 2, "device": "cpu"})
    connection = SimpleNamespace(options=None)
    alone = _parse_federation_config_overrides([federation_config(config)], connection)
    shared = _parse_federation_config_overrides([federation_config(config, ray_cpus=3)], connection)
    assert (alone.num_supernodes, alone.client_resources_num_cpus) == (4, 2)
    assert not alone.HasField("init_args_num_cpus") and shared.init_args_num_cpus == 3


def test_cli_jobs_errors_are_one_line_before_anything_runs(tmp_path: Path, capsys) -> None:
    from fedmpq_flwr.runner.cli import main

    config, results = str(write(tmp_path, TINY)), tmp_path / "out"
    assert main(["--config", config, "--results-dir", str(results), "--jobs", "0"]) == 2
    assert (
        capsys.readouterr().err == "config error: --jobs 0: must be at least 1 (the number of runs in flight at once)\n"
    )
    too_many = ["--set", f"federation.client_cpus={CPUS}", "--jobs", "2"]
    assert main(["--config", config, "--results-dir", str(results), *too_many]) == 2
    assert capsys.readouterr().err == (
        f"config error: --jobs 2: 2 runs at once with federation.client_cpus {CPUS} need {2 * CPUS} CPUs, "
        f"this machine has {CPUS}; allowed: --jobs 1 to 1\n"
    )
    assert not results.exists()


def test_run_jobs_starts_in_order_at_most_n_at_once_and_a_failure_stops_nothing() -> None:
    lock, running, most, started = threading.Lock(), [0], [0], []
    both = threading.Barrier(2, timeout=60)  # the first two are in flight together, or this times out

    def run_one(index: int) -> str:
        with lock:
            started.append(index)
            running[0] += 1
            most[0] = max(most[0], running[0])
        if index < 2:
            both.wait()
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return "failed" if index == 1 else "completed"

    assert run_jobs(5, 2, run_one) == ["completed", "failed", "completed", "completed", "completed"]
    assert sorted(started[:2]) == [0, 1] and started[2:] == [2, 3, 4] and most[0] == 2
    assert run_jobs(3, 1, lambda i: f"s{i}") == ["s0", "s1", "s2"]


def test_a_stop_signal_stops_the_runs_in_flight_and_starts_no_other() -> None:
    """SIGTERM to the runner (as `kill PID` sends it) while two runs are in flight: each worker notices
    (`stop_received`) and stops its run, and the runner waits for both, however long each takes (run 0
    the longest: a worker's end once went unnoticed when the signal cut the main thread's join short);
    the third run never starts."""
    from fedmpq_flwr.runner.signals import Stopped

    started = []
    in_flight = threading.Barrier(3, timeout=60)  # both runs, and the one who stops them

    def run_one(index: int) -> str:
        started.append(index)
        in_flight.wait()
        deadline = time.monotonic() + 60
        while not stop_received() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0 if index == 0 else 0.1)  # stopping Flower takes a while
        raise Stopped(stop_received())

    def stop_the_runner() -> None:
        in_flight.wait()
        time.sleep(0.3)  # the main thread is waiting for the workers
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_the_runner, daemon=True).start()
    with stop_signals(), pytest.raises(JobsStopped) as info:
        run_jobs(3, 2, run_one)
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    assert info.value.stopped == [0, 1] and info.value.first_unstarted == 2 and 2 not in started


def test_jobs_skip_finished_runs_and_run_the_others_side_by_side(tmp_path: Path, monkeypatch, capsys) -> None:
    """--jobs 2 with the real `execute` and a fake launcher: a finished run is skipped, the two others
    are launched together (each told its share of the CPUs), one completes, one fails; the runner
    reports the failure as with one job, and the analyzer still runs."""
    import fedmpq_flwr.runner.cli as runner
    from fedmpq_flwr.config.runner_file import expand_runs

    results = tmp_path / "out"
    finished = next(r for r in expand_runs(write(tmp_path, TINY), results, {}) if r["run_id"] == "a_seed0")
    (results / "a_seed0").mkdir(parents=True)
    dump_yaml(finished, str(results / "a_seed0" / "config.yaml"))
    record = {"run_id": "a_seed0", "round": 1, "test_accuracy": 0.5}
    (results / "a_seed0" / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    (results / "a_seed0" / RESULTS_FILE).write_text(json.dumps({"status": STATUS_COMPLETED, "history": [record]}))
    together = threading.Barrier(2, timeout=60)
    launched = {}

    def fake_run_teed(cmd, stdout_log, stderr_log, header, append=False, progress=None):
        run_id = progress.run_id
        launched[run_id] = (cmd, header)
        together.wait()
        run_dir = Path(stdout_log).parent
        if run_id == "b":
            return 1
        record = {"run_id": run_id, "round": 1, "test_accuracy": 0.4}
        (run_dir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        (run_dir / RESULTS_FILE).write_text(json.dumps({"status": STATUS_COMPLETED, "history": [record]}))
        return 0

    monkeypatch.setattr(runner, "run_teed", fake_run_teed)
    assert runner.main(["--config", str(tmp_path / "runs.yaml"), "--results-dir", str(results), "--jobs", "2"]) == 1
    assert sorted(launched) == ["a_seed1", "b"]
    for cmd, header in launched.values():
        assert cmd[-2:] == ["--ray-cpus", str(CPUS // 2)]  # two runs in flight share the CPUs
        assert header == f"# reproduce: {' '.join(cmd[:-2])}\n"  # alone, a run has the machine
    console = capsys.readouterr()
    events = [json.loads(line) for line in console.out.splitlines() if line.startswith('{"event"')]
    outcome = {e["run_id"]: e["event"] for e in events if e["event"] != "run_started"}
    assert outcome == {"a_seed0": "run_skipped", "a_seed1": "run_completed", "b": "run_failed"}
    assert "===" not in console.out  # no description blocks: one line per event
    assert f"[b] failed (exit 1): see {results / 'b' / 'stderr.log'}" in console.err
    assert "failed runs (1): b" in console.err
    assert (results / "comparison.json").exists()


def test_quiet_run_teed_shows_one_line_per_recorded_round(tmp_path: Path, capsys) -> None:
    """Under --jobs the console gets the progress line of each round the run appends to metrics.jsonl
    (and none of its output); a round recorded before the run started (resumed) is not shown again."""
    from fedmpq_flwr.rundir.progress import MetricsFollower
    from fedmpq_flwr.runner.tee import run_teed

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"round": 1, "test_accuracy": 0.1, "round_time_s": 2.0}) + "\n")
    rounds = [{"round": 2, "round_time_s": 3.0}, {"round": 3, "test_accuracy": 0.3, "round_time_s": 1.0}]
    child = (
        "import json, sys, time\n"
        "print('INFO :      [ROUND 2]')\n"
        f"for record in {rounds!r}:\n"
        f"    open({str(metrics)!r}, 'a').write(json.dumps(record) + '\\n')\n"
        "    time.sleep(0.3)\n"
        "print('noise', file=sys.stderr)\n"
    )
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    progress = MetricsFollower("x", metrics, num_rounds=4)
    assert run_teed([sys.executable, "-c", child], out, err, "# header\n", progress=progress) == 0
    console = capsys.readouterr()
    lines = console.out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["[x] round 2/4", "[x] round 3/4"]
    assert "test_acc=0.1000 (round 1)  3.0 s/round" in lines[0] and "test_acc=0.3000  1.0 s/round" in lines[1]
    assert all("elapsed" in line and "ETA" in line for line in lines)
    assert console.err == ""
    assert out.read_text() == "# header\nINFO :      [ROUND 2]\n" and err.read_text() == "noise\n"  # the logs keep all


def test_the_runner_and_the_round_log_print_the_same_line(tmp_path: Path) -> None:
    """The ServerApp's progress line and the runner's, made from metrics.jsonl, share one format."""
    import io
    import logging

    from fedmpq_flwr.rundir.progress import MetricsFollower
    from fedmpq_flwr.rundir.results import RunRecorder
    from fedmpq_flwr.server.round_log import RoundLog

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    recorder = RunRecorder(tmp_path / "r", "fedavg_seed0")
    follower = MetricsFollower("fedavg_seed0", tmp_path / "r" / "metrics.jsonl", 20)
    try:
        RoundLog(recorder, 20).write({"round": 1, "test_accuracy": 0.25, "round_time_s": 4.0})
    finally:
        logger.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    (progress,) = follower.poll()
    assert line.startswith("[fedavg_seed0] round 1/20  test_acc=0.2500  4.0 s/round  elapsed ")
    assert progress.split("  elapsed")[0] == line.split("  elapsed")[0]


HEALTH_SERVER = """
import http.server, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Health)
print(server.server_port, flush=True)
server.serve_forever()
"""


def test_a_superlink_is_ready_only_when_it_is_the_one_answering(tmp_path: Path) -> None:
    """Two runs that chose the same port: the one whose SuperLink lost the port never takes the other's
    for its own (it would submit its run there); one that exited is reported, so another port is tried."""
    from fedmpq_flwr.runner.launcher import wait_healthy

    other = subprocess.Popen([sys.executable, "-c", HEALTH_SERVER], stdout=subprocess.PIPE, text=True)
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        port = int(other.stdout.readline())
        assert wait_healthy(port, other, timeout_s=30) is True
        with pytest.raises(RuntimeError, match=f"did not answer on port {port}"):
            wait_healthy(port, ours, timeout_s=1.0)
        ours.kill()
        ours.wait()
        assert wait_healthy(port, ours, timeout_s=30) is False
    finally:
        for process in (other, ours):
            process.kill()
            process.wait()


@pytest.mark.slow
def test_two_runs_at_once_compute_what_one_at_a_time_computes(tmp_path: Path) -> None:
    """Two tiny synthetic runs with --jobs 2 (each a private SuperLink, port, FLWR_HOME and Ray, one
    CPU each): both finish, the console shows only run-prefixed progress lines and events, and the
    FedMPQ run's records equal those of the same run launched alone (all CPUs, as --jobs 1 does)."""
    marker = f"jobs-e2e-{time.time_ns()}"  # in the environment of every process of this test only
    env = {**os.environ, "FEDMPQ_TEST_MARKER": marker}
    settings = {
        "model": {"name": "tiny_cnn"},
        "dataset": {"name": "synthetic", "synthetic_train_size": 240, "synthetic_test_size": 80},
        "train": {"num_rounds": 2, "batch_size": 32, "lr": 0.05},
        "federation": {"num_clients": 2, "device": "cpu"},
    }
    document = {
        "defaults": settings,
        "runs": [
            {"run_id": "left", "description": "FedAvg", "seed": 1},
            {
                "run_id": "right",
                "description": "FedMPQ",
                "seed": 2,
                "strategy": {"name": "fedmpq"},
                "quant": {"budgets": [2, 4]},
            },
        ],
    }
    results = tmp_path / "jobs2"
    cmd = [sys.executable, "-m", "fedmpq_flwr.main", "--config", str(write(tmp_path, document))]
    proc = subprocess.run(
        [*cmd, "--results-dir", str(results), "--jobs", "2"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    last_event = max(i for i, line in enumerate(lines) if line.startswith('{"event"'))
    for line in lines[: last_event + 1]:  # then the analyzer's summary
        if line.startswith("{"):
            assert json.loads(line)["run_id"] in ("left", "right"), line
        else:
            assert line.startswith(("[left] round ", "[right] round ")) and " ETA " in line, line
    for run_id in ("left", "right"):
        assert [line.split()[2] for line in lines if line.startswith(f"[{run_id}] round ")] == ["1/2", "2/2"]
        startup = json.loads((results / run_id / "startup.json").read_text())
        assert set(startup["points_s"]) == {
            "launcher_started", "superlink_started", "superlink_ready", "run_submitted", "server_app_started",
            "strategy_ready", "first_round_started", "first_client_started", "first_round_finished",
            "last_round_finished", "server_app_finished", "flwr_run_finished", "shutdown_done",
        }  # fmt: skip
        assert sum(startup["phases_s"].values()) == pytest.approx(startup["points_s"]["shutdown_done"], abs=0.01)
        assert len(startup["rounds_s"]) == 2
    # the FedMPQ run alone, as --jobs 1 launches it, in another folder
    alone = tmp_path / "jobs1" / "right"
    alone.mkdir(parents=True)
    config = yaml.safe_load((results / "right" / "config.yaml").read_text())
    dump_yaml({**config, "results_dir": str(tmp_path / "jobs1")}, str(alone / "config.yaml"))
    proc = subprocess.run(
        [sys.executable, "-m", "fedmpq_flwr.launch", "--config", str(alone / "config.yaml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def records(run_dir: Path) -> list[dict]:
        kept = []
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            record = {k: v for k, v in json.loads(line).items() if k not in VARYING_KEYS}
            record["clients"] = [{k: v for k, v in c.items() if k not in VARYING_KEYS} for c in record["clients"]]
            kept.append(record)
        return kept

    assert records(alone) == records(results / "right")
    assert (alone / "bit_assignments.json").read_text() == (results / "right" / "bit_assignments.json").read_text()
    deadline = time.monotonic() + 20  # orphaned Ray actors notice their raylet is gone within seconds
    while processes_with_env("FEDMPQ_TEST_MARKER", marker) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert processes_with_env("FEDMPQ_TEST_MARKER", marker) == []
