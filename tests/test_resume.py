"""Checkpoints and resuming without Flower's runtime: the checkpoint files, metrics.jsonl of a resumed
run, and rounds driven through `CheckpointingStrategy` as Flower's legacy loop drives them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import yaml
from conftest import TINY, write
from flwr.common import (
    ArrayRecord,
    Code,
    ConfigRecord,
    FitIns,
    FitRes,
    GetPropertiesIns,
    GetPropertiesRes,
    MetricRecord,
    RecordDict,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_proxy import ClientProxy

from fedmpq_flwr.config import ConfigError, deep_merge
from fedmpq_flwr.methods.registry import load_method
from fedmpq_flwr.rundir.checkpoint import (
    CheckpointError,
    ServerCheckpoint,
    checkpoint_summary,
    load_node_file,
    node_files,
    remove_partial_files,
    save_node_file,
)
from fedmpq_flwr.rundir.node_state import RESTORED_KEY, arrays_to_state, snapshot, state_to_arrays, unchanged
from fedmpq_flwr.rundir.results import RunRecorder, kept_metrics
from fedmpq_flwr.rundir.reuse import check_resumable
from fedmpq_flwr.server import resume
from fedmpq_flwr.server.resume import CheckpointingStrategy, open_checkpoint


def test_server_checkpoint_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    saved = ServerCheckpoint(
        round=3,
        num_rounds=5,
        token="abc",
        started_at="2026-11-27T10:00:00+00:00",
        config={"run_id": "r", "dataset": {"alpha": float("inf")}},
        parameters=[rng.normal(size=(3, 2)).astype(np.float32), np.zeros(4, np.float32)],
        sampler=np.random.default_rng([1, 1]).bit_generator.state,
        torch_rng=np.arange(10, dtype=np.uint8),
        method_arrays=[np.ones(2, np.float64)],
        method_meta={"bits": {"0": {"conv1": 4}}},
    )
    size = saved.save(tmp_path)
    assert size == (tmp_path / "checkpoint" / "server.npz").stat().st_size
    assert [p.name for p in (tmp_path / "checkpoint").iterdir()] == ["server.npz"]  # no temporary file left
    loaded = ServerCheckpoint.load(tmp_path)
    assert (loaded.round, loaded.num_rounds, loaded.token, loaded.config) == (3, 5, "abc", saved.config)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(loaded.parameters, saved.parameters))
    assert np.array_equal(loaded.torch_rng, saved.torch_rng) and loaded.method_meta == saved.method_meta
    assert np.array_equal(loaded.method_arrays[0], saved.method_arrays[0])
    generator = np.random.default_rng()
    generator.bit_generator.state = loaded.sampler  # the sampler's state survives JSON
    assert generator.integers(1 << 30) == np.random.default_rng([1, 1]).integers(1 << 30)
    assert checkpoint_summary(tmp_path) == {"round": 3, "num_rounds": 5, "config": saved.config}
    assert ServerCheckpoint.load(tmp_path / "none") is None and checkpoint_summary(tmp_path / "none") is None
    (tmp_path / "checkpoint" / "server.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        checkpoint_summary(tmp_path)


def test_node_files_keep_the_state_of_the_checkpoint_round(tmp_path: Path) -> None:
    """Per partition the newest file and the one before it are kept; a resumed run reads the newest
    file of its own run (token) written before the round it is in."""
    clients = tmp_path / "checkpoint" / "clients"
    for server_round in (1, 3, 4):
        save_node_file(clients, 0, server_round, "run", {"x": np.full(2, server_round)}, {"note": server_round})
    save_node_file(clients, 1, 2, "run", {"x": np.zeros(1)}, {})
    assert sorted(node_files(clients, 0)) == [3, 4] and sorted(node_files(clients, 1)) == [2]
    arrays, meta = load_node_file(clients, 0, before_round=4, token="run")
    assert meta["round"] == 3 and meta["note"] == 3 and arrays["x"].tolist() == [3, 3]
    assert load_node_file(clients, 0, before_round=5, token="run")[1]["round"] == 4
    assert load_node_file(clients, 0, before_round=3, token="run") is None
    assert load_node_file(clients, 0, before_round=5, token="another run") is None
    (clients / ".partition_0.round_5.npz.123.tmp").write_bytes(b"torn")  # a writer killed mid-file
    assert sorted(node_files(clients, 0)) == [3, 4]
    # round 4 again (a resumed run repeats it): the file of round 3 stays, 4 is replaced
    save_node_file(clients, 0, 4, "run", {"x": np.full(2, 40)}, {})
    assert sorted(node_files(clients, 0)) == [3, 4]
    assert load_node_file(clients, 0, before_round=5, token="run")[0]["x"].tolist() == [40, 40]
    remove_partial_files(tmp_path)
    assert sorted(p.name for p in clients.iterdir()) == [
        "partition_0.round_3.npz",
        "partition_0.round_4.npz",
        "partition_1.round_2.npz",
    ]


def test_node_state_records_round_trip() -> None:
    state = RecordDict()
    state["teacher"] = ArrayRecord([np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, np.float32)])
    state["round"] = ConfigRecord({"round": 2, "name": "x", "raw": b"\x00\x01", "values": [1.5, 2.5], "on": True})
    state["metrics"] = MetricRecord({"loss": 0.25, "steps": [1, 2]})
    state[RESTORED_KEY] = ConfigRecord({"from_round": 0})
    arrays, meta = state_to_arrays(state)
    assert RESTORED_KEY not in json.dumps(meta)
    restored = RecordDict()
    arrays_to_state(arrays, json.loads(json.dumps(meta)), restored)
    assert list(restored) == ["teacher", "round", "metrics"]
    expected = state["teacher"].to_numpy_ndarrays()
    assert all(np.array_equal(a, b) for a, b in zip(restored["teacher"].to_numpy_ndarrays(), expected))
    assert dict(restored["round"]) == dict(state["round"]) and dict(restored["metrics"]) == dict(state["metrics"])
    before = snapshot(restored)
    assert unchanged(before, restored)
    restored["round"]["round"] = 3  # a value changed in place
    assert not unchanged(before, restored)
    before = snapshot(restored)
    restored["teacher"] = ArrayRecord(restored["teacher"].to_numpy_ndarrays())  # the same values, new arrays
    assert not unchanged(before, restored)
    before = snapshot(restored)
    del restored["metrics"]
    assert not unchanged(before, restored)
    before = snapshot(restored)
    restored[RESTORED_KEY] = ConfigRecord({"from_round": 1})  # the node's own note is not state
    assert unchanged(before, restored)


def test_resumed_recorder_keeps_the_rounds_of_the_checkpoint(tmp_path: Path) -> None:
    lines = [json.dumps({"run_id": "r", "round": r, "test_accuracy": r / 10}) for r in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"run_id": "r", "rou')  # round 4 torn
    (tmp_path / "results.json").write_text("{}")
    recorder = RunRecorder(tmp_path, "r", completed_rounds=2)
    assert (tmp_path / "metrics.jsonl").read_text() == lines[0] + "\n" + lines[1] + "\n"
    assert [record["round"] for record in recorder.history] == [1, 2]
    assert not (tmp_path / "results.json").exists()
    recorder.log_round({"round": 3, "test_accuracy": 0.5})
    assert [json.loads(line)["round"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    with pytest.raises(ValueError, match=r"holds rounds \[1, 2, 3\] but the checkpoint is of round 4"):
        kept_metrics(tmp_path, 4)
    assert RunRecorder(tmp_path, "r").history == [] and (tmp_path / "metrics.jsonl").read_text() == ""


# ---- rounds through the checkpointing wrapper, as Flower's legacy loop calls it ----------------


class NodeProxy(ClientProxy):
    """One SuperNode: the method's real client, rebuilt per message, with the node's own state."""

    def __init__(self, config: dict[str, Any], partition_id: int, state: RecordDict) -> None:
        super().__init__(cid=f"node-{partition_id}")
        self.config, self.partition_id, self.state = config, partition_id, state
        self.fits: list[int] = []

    def get_properties(self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None) -> GetPropertiesRes:
        return GetPropertiesRes(Status(Code.OK, ""), {"partition_id": self.partition_id})

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        self.fits.append(int(ins.config["server_round"]))
        num_clients = self.config["federation"]["num_clients"]
        client = load_method(self.config["strategy"]["name"]).build_client(
            self.config, self.partition_id, num_clients, self.state
        )
        weights, num_examples, metrics = client.fit(parameters_to_ndarrays(ins.parameters), ins.config)
        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), num_examples, metrics)

    def get_parameters(self, ins, timeout, group_id):  # noqa: ANN001, ANN201 - never called
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):  # noqa: ANN001, ANN201 - never called
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):  # noqa: ANN001, ANN201 - never called
        raise NotImplementedError


class Nodes:
    """A federation of fresh nodes (empty `context.state`), as a (re)started simulation has."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.proxies = {
            f"node-{pid}": NodeProxy(config, pid, RecordDict()) for pid in range(config["federation"]["num_clients"])
        }

    def all(self) -> dict[str, ClientProxy]:
        return self.proxies


def flower_loop(config: dict[str, Any], stop_after: int | None = None) -> tuple[CheckpointingStrategy, Nodes]:
    """What the ServerApp does (resuming when a checkpoint exists), with Flower's `Server.fit` loop
    over fresh nodes; `stop_after` ends the process after that many of Flower's rounds."""
    run_dir = Path(config["results_dir"]) / config["run_id"]
    checkpoint = open_checkpoint(config, run_dir)
    recorder = RunRecorder(run_dir, config["run_id"], completed_rounds=checkpoint.round if checkpoint else 0)
    strategy = load_method(config["strategy"]["name"]).strategy(config, recorder)
    rounds = CheckpointingStrategy(strategy, run_dir, "2026-11-27T00:00:00+00:00", checkpoint)
    nodes = Nodes(config)
    parameters = rounds.initialize_parameters(nodes)
    assert rounds.evaluate(0, parameters) is None
    for flower_round in range(1, rounds.remaining + 1):
        if stop_after is not None and flower_round > stop_after:
            break
        instructions = rounds.configure_fit(flower_round, parameters, nodes)
        results = [(proxy, proxy.fit(ins, None, None)) for proxy, ins in instructions]
        new_parameters, _ = rounds.aggregate_fit(flower_round, results, [])
        parameters = new_parameters or parameters
        rounds.evaluate(flower_round, parameters)
    return rounds, nodes


def records(run_dir: Path, varying: set[str]) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in varying} for line in lines]


def test_a_resumed_run_repeats_the_uninterrupted_one(fedmpq_config, fl, monkeypatch) -> None:
    """FedMPQ-KD with half the clients per round and a teacher kept on the nodes for two rounds:
    stopped after round 2, then killed in round 4 between its record and its checkpoint, the
    resumed run has the true round numbers and the same participants, bits, teachers, accuracies
    and final state as the uninterrupted run."""
    settings = {
        "method": "fedmpq_kd",
        "strategy": {"fraction_fit": 0.5},
        "kd": {"refresh_every": 2},
        "train": {"num_rounds": 5},
    }
    whole = fedmpq_config(run_id="whole", **settings)
    flower_loop(whole)
    resumed = fedmpq_config(run_id="resumed", **settings)
    run_dir = Path(resumed["results_dir"]) / "resumed"
    first, _ = flower_loop(resumed, stop_after=2)
    assert checkpoint_summary(run_dir)["round"] == 2 and first.remaining == 5
    other = fedmpq_config(run_id="resumed", **{**settings, "train": {"num_rounds": 5, "lr": 0.2}})
    with pytest.raises(ConfigError, match=r"run 'resumed' in .* stopped after round 2 with train.lr = 0.1, now 0.2"):
        check_resumable(other, run_dir)

    # the second process records round 3, and round 4 but dies before round 4's checkpoint
    save = CheckpointingStrategy.save

    def save_until_round_3(self: CheckpointingStrategy, server_round: int, parameters: list) -> None:
        if server_round <= 3:
            save(self, server_round, parameters)

    monkeypatch.setattr(CheckpointingStrategy, "save", save_until_round_3)
    second, _ = flower_loop(resumed, stop_after=2)
    assert second.completed == 2 and second.remaining == 3
    assert [r["round"] for r in records(run_dir, set())] == [1, 2, 3, 4]
    assert checkpoint_summary(run_dir)["round"] == 3
    monkeypatch.setattr(CheckpointingStrategy, "save", save)

    third, nodes = flower_loop(resumed)
    assert third.completed == 3 and third.remaining == 2
    # fresh nodes got back the teacher they kept (saved in round 3 at the latest, not in round 4)
    restored_from = {
        proxy.partition_id: int(proxy.state[RESTORED_KEY]["from_round"])
        for proxy in nodes.all().values()
        if RESTORED_KEY in proxy.state
    }
    assert restored_from and 0 < max(restored_from.values()) <= 3, restored_from
    varying = fl.varying_keys
    whole_records = [fl.without(r, varying) for r in records(Path(whole["results_dir"]) / "whole", set())]
    resumed_records = [fl.without(r, varying) for r in records(run_dir, set())]
    assert [r["round"] for r in resumed_records] == [1, 2, 3, 4, 5]
    assert resumed_records == whole_records
    assert len({tuple(r["sampled_partitions"]) for r in whole_records}) > 1  # sampling matters here
    teachers = [[c["teacher_round"] for c in r["clients"]] for r in resumed_records]
    assert {t for round_teachers in teachers for t in round_teachers} >= {0, 2, 4}
    assert any(r["next_avg_bits"] != resumed_records[0]["next_avg_bits"] for r in resumed_records)
    final_whole = resume.ServerCheckpoint.load(Path(whole["results_dir"]) / "whole")
    final_resumed = resume.ServerCheckpoint.load(run_dir)
    assert final_whole.round == final_resumed.round == 5
    assert all(np.array_equal(a, b) for a, b in zip(final_whole.parameters, final_resumed.parameters))
    assert final_whole.method_meta == final_resumed.method_meta
    assert final_whole.sampler == final_resumed.sampler


@pytest.mark.parametrize(
    ("method", "settings"),
    [("fedgkd", {"gkd": {"buffer": 2}}), ("fedmpq_kd", {"kd": {"teacher": "history", "history": 2}})],
)
def test_a_resumed_history_teacher_is_the_uninterrupted_ones(
    method: str, settings: dict, fedavg_config, fedmpq_config, fl
) -> None:
    """FedGKD and FedMPQ-KD's history teacher: the server's buffer of global models is in the
    checkpoint, so the resumed run sends the same teachers and ends with the same model."""
    make = fedavg_config if method == "fedgkd" else fedmpq_config
    common = {"strategy": {"name": method}, "train": {"num_rounds": 4}, **settings}
    whole = make(run_id="whole", **common)
    flower_loop(whole)
    resumed = make(run_id="resumed", **common)
    flower_loop(resumed, stop_after=2)
    flower_loop(resumed)
    varying = fl.varying_keys
    runs = [fl.without(r, varying) for r in records(Path(whole["results_dir"]) / "whole", set())]
    assert [fl.without(r, varying) for r in records(Path(resumed["results_dir"]) / "resumed", set())] == runs
    assert [r["round"] for r in runs] == [1, 2, 3, 4] and runs[-1]["bits_down"] > runs[0]["bits_down"]


# ---- the runner and a run folder with a checkpoint (no Flower started) --------------------------


def stopped_run(tmp_path: Path, rounds_recorded: int, completed: int, **overrides: Any) -> tuple[dict, Path]:
    """A runner file with one run, and its folder as a run stopped after `completed` rounds leaves it."""
    from fedmpq_flwr.config.runner_file import expand_runs

    document = {
        "defaults": deep_merge(TINY["defaults"], {"train": {"num_rounds": 4}}),
        "runs": [{"run_id": "stopped", "description": "stopped run", **overrides}],
    }
    (run,) = expand_runs(write(tmp_path, document), tmp_path / "out", {})
    run_dir = tmp_path / "out" / "stopped"
    run_dir.mkdir(parents=True)
    lines = [
        json.dumps({"run_id": "stopped", "round": r, "test_accuracy": 0.1 * r}) for r in range(1, rounds_recorded + 1)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    (run_dir / "stdout.log").write_text("# reproduce: first attempt\n")
    ServerCheckpoint(
        round=completed,
        num_rounds=4,
        token="t",
        started_at="2026-11-27T00:00:00+00:00",
        config=run,
        parameters=[np.zeros(2, np.float32)],
        sampler=np.random.default_rng(0).bit_generator.state,
        torch_rng=np.zeros(4, np.uint8),
    ).save(run_dir)
    return run, run_dir


def test_runner_resumes_a_stopped_run_in_its_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    import fedmpq_flwr.runner.cli as runner

    run, run_dir = stopped_run(tmp_path, rounds_recorded=3, completed=2)
    launched = []

    def fake_run_teed(
        cmd: list[str], stdout_log: Path, stderr_log: Path, header: str, append: bool = False, progress=None
    ) -> int:
        launched.append((cmd, header, append))
        return 0

    monkeypatch.setattr(runner, "run_teed", fake_run_teed)
    assert runner.check_resumable(run, run_dir) == 2
    assert runner.execute(run, tmp_path / "out", False, "1/1", resume_after=2) == "failed"  # (nothing really ran)
    ((cmd, header, append),) = launched
    assert append and header.startswith("# resumed after round 2/4\n# reproduce: ") and cmd[-1].endswith("config.yaml")
    assert (run_dir / "checkpoint" / "server.npz").exists() and (run_dir / "metrics.jsonl").exists()
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"event"')]
    assert events[0]["event"] == "run_started" and events[0]["resumed_after_round"] == 2
    # --overwrite starts it from round 1: the folder is emptied first
    assert runner.execute(run, tmp_path / "out", True, "1/1") == "failed"
    assert not (run_dir / "checkpoint").exists() and not (run_dir / "metrics.jsonl").exists()
    assert launched[-1][2] is False and launched[-1][1].startswith("# reproduce: ")


@pytest.mark.parametrize(
    ("overrides", "rounds_recorded", "message"),
    [
        ({"train": {"lr": 0.5}}, 2, "run 'stopped' in {out} stopped after round 2 with train.lr = 0.1, now 0.5; "),
        ({}, 1, "run 'stopped': {metrics} holds rounds [1] but the checkpoint is of round 2"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_a_one_line_error(
    tmp_path: Path, overrides: dict, rounds_recorded: int, message: str, capsys
) -> None:
    """Another config (named by its key), or metrics.jsonl missing checkpointed rounds: the runner
    stops before anything runs and keeps the folder."""
    from fedmpq_flwr.runner.cli import main

    _, run_dir = stopped_run(tmp_path, rounds_recorded=rounds_recorded, completed=2)
    document = yaml.safe_load((tmp_path / "runs.yaml").read_text())
    document["runs"][0].update(overrides)
    write(tmp_path, document)
    assert main(["--config", str(tmp_path / "runs.yaml"), "--results-dir", str(tmp_path / "out")]) == 2
    expected = message.format(out=tmp_path / "out", metrics=run_dir / "metrics.jsonl")
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and expected in stderr and stderr.startswith("config error: ")
    assert (run_dir / "checkpoint" / "server.npz").exists()


def test_stopped_note_names_the_command_that_resumes(tmp_path: Path) -> None:
    from fedmpq_flwr.runner.cli import stopped_note
    from fedmpq_flwr.runner.jobs import JobsStopped

    run, _ = stopped_run(tmp_path, rounds_recorded=2, completed=2)
    later = {**run, "run_id": "later"}
    argv = ["--config", "runs.yaml", "--results-dir", "out"]
    note = stopped_note(JobsStopped(15, [0], 1), argv, [run, later], tmp_path / "out")
    assert note.startswith(f"stopped by SIGTERM: run stopped stopped after round 2/4 (checkpoint kept in {tmp_path}")
    assert note.endswith("Resume with: " + " ".join([sys.executable, "-m", "fedmpq_flwr.main", *argv]))
    # with --overwrite the stopped run resumes without it; the runs after it are rerun with it
    note = stopped_note(JobsStopped(2, [0], 1), [*argv, "--overwrite"], [run, later], tmp_path / "out")
    assert note.startswith("stopped by SIGINT")
    assert f"Resume with: {' '.join([sys.executable, '-m', 'fedmpq_flwr.main', *argv])} --only stopped; " in note
    assert note.endswith(
        f"then run the rest with: {' '.join([sys.executable, '-m', 'fedmpq_flwr.main', *argv])}"
        " --overwrite --only later"
    )


CHILD = """
import os, sys, time
from pathlib import Path
from fedmpq_flwr.runner.signals import Stopped, stop_signals

with stop_signals():
    try:
        Path(sys.argv[1]).write_text(str(os.getpid()))
        time.sleep(60)
    except Stopped as stop:
        time.sleep(1.0)  # cleanup, during which the second signal arrives and is ignored
        Path(sys.argv[1]).write_text(f"cleaned up after {stop.name}")
        sys.exit(stop.exit_code)
"""


def test_ctrl_c_twice_reaches_the_launcher_which_finishes_its_cleanup(tmp_path: Path) -> None:
    """The runner's `run_teed` under `stop_signals`: Ctrl-C (SIGINT to runner and child, as to a
    process group) raises Stopped, the runner passes it on and waits for the child; a second
    Ctrl-C cuts neither process's cleanup short."""
    import os
    import signal
    import threading

    from fedmpq_flwr.runner.signals import Stopped, stop_signals
    from fedmpq_flwr.runner.tee import run_teed

    note = tmp_path / "child.txt"

    def press_ctrl_c_twice() -> None:
        deadline = time.monotonic() + 120
        while not (note.exists() and note.read_text().isdigit()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(note.read_text())
        for _ in range(2):
            for pid in (os.getpid(), child):
                os.kill(pid, signal.SIGINT)
            time.sleep(0.3)

    previous = signal.getsignal(signal.SIGINT)
    presser = threading.Thread(target=press_ctrl_c_twice)
    with stop_signals(), pytest.raises(Stopped) as stopped:
        presser.start()
        run_teed([sys.executable, "-c", CHILD, str(note)], tmp_path / "out.log", tmp_path / "err.log", "")
    presser.join()
    assert stopped.value.signum == signal.SIGINT and stopped.value.exit_code == 130
    assert note.read_text() == "cleaned up after SIGINT"  # the child was waited for
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored after the block


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # reaped by whoever adopted it
    except psutil.NoSuchProcess:
        return True


def test_stop_process_tree_finds_reparented_processes_by_their_flwr_home(tmp_path: Path) -> None:
    """Ray's daemons outlive an abruptly ended parent and leave the tree; they keep FLWR_HOME."""
    from fedmpq_flwr.runner.processes import stop_process_tree

    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr_home")}
    sleep = [sys.executable, "-c", "import time; time.sleep(300)"]
    quiet = "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL"  # holds no pipe of its parent's
    sleeper = f"import subprocess; print(subprocess.Popen({sleep!r}, {quiet}).pid)"
    root_code = (
        "import subprocess, sys, time\n"
        f"middle = subprocess.run([{sys.executable!r}, '-c', {sleeper!r}], capture_output=True, text=True)\n"
        "print(middle.stdout.strip(), flush=True)\n"  # its child now belongs to no one in the tree
        "time.sleep(300)\n"
    )
    root = subprocess.Popen([sys.executable, "-c", root_code], env=env, stdout=subprocess.PIPE, text=True)
    orphan = int(root.stdout.readline())
    assert orphan not in [child.pid for child in psutil.Process(root.pid).children(recursive=True)]
    stop_process_tree(root.pid, grace_s=5.0)  # FLWR_HOME read from the root
    root.wait()
    assert gone(orphan)
    # with the root already gone, FLWR_HOME given
    root = subprocess.Popen([sys.executable, "-c", root_code], env=env, stdout=subprocess.PIPE, text=True)
    orphan = int(root.stdout.readline())
    root.kill()
    root.wait()
    stop_process_tree(None, grace_s=5.0, flwr_home=tmp_path / "flwr_home")
    assert gone(orphan)
