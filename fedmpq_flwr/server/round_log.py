"""The round record: what `configure_fit` hands to `aggregate_fit` and `evaluate`, and its logging.

Flower calls the three strategy callbacks of a round one after another; `RoundInProgress` is the
explicit hand-off between them. `RoundLog` writes the finished record to metrics.jsonl and prints
the progress line with an ETA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO
from typing import Any

from flwr.common import log

from fedmpq_flwr.rundir.results import RunRecorder


def format_seconds(seconds: float) -> str:
    """1h02m03s / 2m03s: for progress lines."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class FitSummary:
    """What `aggregate_fit` learnt from the clients' replies."""

    num_failures: int
    bits_up: int
    client_time_s: float  # the slowest participant's seconds
    fields: dict[str, Any] = field(default_factory=dict)  # train_loss, clients and per-round client fields
    dropped_partitions: list[int] = field(default_factory=list)  # sampled clients that dropped before upload
    client_errors: list[dict[str, Any]] = field(default_factory=list)  # [{partition_id, error}] of failed clients


@dataclass
class RoundInProgress:
    """One round from `configure_fit` to `evaluate`."""

    server_round: int
    sampled: list[int]
    bits_down: int
    started: float = field(default_factory=time.perf_counter)
    fit: FitSummary | None = None  # None until aggregate_fit ran (or when no client replied)


class RoundLog:
    """Appends each round's record to metrics.jsonl and logs one progress line per round."""

    def __init__(self, recorder: RunRecorder, num_rounds: int) -> None:
        self.recorder = recorder
        self.num_rounds = num_rounds
        self.started = time.perf_counter()
        self.completed_before = 0  # rounds a resumed run had done before this process started

    def resume_after(self, completed_rounds: int) -> None:
        """Count time (for the ETA) from now, over the rounds still to run."""
        self.completed_before = completed_rounds
        self.started = time.perf_counter()

    def accuracy_text(self, server_round: int) -> str:
        """`  test_acc=0.8123` for a round that evaluated the global model; after a round without
        evaluation (`eval.every`) the latest evaluated accuracy and its round, `  test_acc=0.8123
        (round 6)`; nothing before the first evaluation."""
        for record in reversed(self.recorder.history):  # a resumed run's earlier rounds included
            if "test_accuracy" in record:
                earlier = "" if record["round"] == server_round else f" (round {record['round']})"
                return f"  test_acc={record['test_accuracy']:.4f}{earlier}"
        return ""

    def write(self, record: dict[str, Any], progress_extra: str = "") -> None:
        """Record a finished round (`round`, `round_time_s`, `test_accuracy` when evaluated ...) and
        print its progress."""
        self.recorder.log_round(record)
        server_round = record["round"]
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(1, server_round - self.completed_before) * (self.num_rounds - server_round)
        log(
            INFO,
            "[%s] round %d/%d%s%s  %.1f s/round  elapsed %s  ETA %s",
            self.recorder.run_id, server_round, self.num_rounds, self.accuracy_text(server_round), progress_extra,
            record["round_time_s"], format_seconds(elapsed), format_seconds(eta),
        )  # fmt: skip
