"""The per-round progress line, made from a round's record: one format for the ServerApp's log and the runner.

`[run_id] round k/N  test_acc=0.8123  4.0 s/round  elapsed 1m02s  ETA 3m10s`. A round that did not
evaluate the global model (`eval.every`) shows the latest evaluated accuracy and its round. The
runner (`--jobs N`) makes the same line from the run's metrics.jsonl as it grows (`MetricsFollower`),
so it reads what the run writes rather than the run's console. Torch-free.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def format_seconds(seconds: float) -> str:
    """1h02m03s / 2m03s: for progress lines."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def accuracy_text(record: dict[str, Any], last_evaluated: dict[str, Any] | None) -> str:
    """`  test_acc=0.8123` for a round that evaluated the global model, `  test_acc=0.8123 (round 6)`
    after one that did not (the latest evaluated record), nothing before the first evaluation."""
    if "test_accuracy" in record:
        return f"  test_acc={record['test_accuracy']:.4f}"
    if last_evaluated is not None:
        return f"  test_acc={last_evaluated['test_accuracy']:.4f} (round {last_evaluated['round']})"
    return ""


def progress_text(
    run_id: str,
    record: dict[str, Any],
    num_rounds: int,
    elapsed_s: float,
    rounds_done: int,
    last_evaluated: dict[str, Any] | None = None,
    extra: str = "",
) -> str:
    """The line for `record`; `rounds_done` rounds took `elapsed_s` (the ETA assumes the same pace)."""
    server_round = record["round"]
    eta = elapsed_s / max(1, rounds_done) * (num_rounds - server_round)
    return (
        f"[{run_id}] round {server_round}/{num_rounds}{accuracy_text(record, last_evaluated)}{extra}"
        f"  {record['round_time_s']:.1f} s/round  elapsed {format_seconds(elapsed_s)}  ETA {format_seconds(eta)}"
    )


class MetricsFollower:
    """Reads the records a run appends to its metrics.jsonl and turns each new one into its progress line.

    Rounds already in the file when following starts (a resumed run's earlier rounds) are not shown
    again; they only supply the latest evaluated accuracy. Time counts from the start of following.
    """

    def __init__(self, run_id: str, metrics_path: Path, num_rounds: int) -> None:
        self.run_id = run_id
        self.path = Path(metrics_path)
        self.num_rounds = num_rounds
        self.started = time.perf_counter()
        self.offset = 0
        self.rounds_done = 0
        self.last_evaluated: dict[str, Any] | None = None
        for record in self._new_records():  # what the run had written before
            self._note(record)

    def _new_records(self) -> list[dict[str, Any]]:
        """Whole lines appended since the last read (a line still being written waits for the next)."""
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [json.loads(line) for line in complete.decode().splitlines() if line.strip()]

    def _note(self, record: dict[str, Any]) -> None:
        if "test_accuracy" in record:
            self.last_evaluated = record

    def poll(self) -> list[str]:
        """Progress lines of the rounds recorded since the last poll."""
        lines = []
        for record in self._new_records():
            self.rounds_done += 1
            elapsed = time.perf_counter() - self.started
            lines.append(
                progress_text(self.run_id, record, self.num_rounds, elapsed, self.rounds_done, self.last_evaluated)
            )
            self._note(record)
        return lines
