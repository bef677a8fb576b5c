"""The round record: what `configure_fit` hands to `aggregate_fit` and `evaluate`, and its logging.

Flower calls the three strategy callbacks of a round one after another; `RoundInProgress` is the
explicit hand-off between them. `fit_summary` counts the round's failures and `round_fields` lists
its participants; `RoundLog` writes the finished record to metrics.jsonl (and, with
`logging.tensorboard`, to TensorBoard: server/tensorboard_log.py) and prints the progress line with an ETA.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO
from typing import TYPE_CHECKING, Any

from flwr.common import log

from fedmpq_flwr.client.failures import DROPOUT, describe_failure
from fedmpq_flwr.rundir.progress import progress_text
from fedmpq_flwr.rundir.results import ROUND_FROM_CLIENTS, RunRecorder, round_from_clients
from fedmpq_flwr.server.update import ClientUpdate

if TYPE_CHECKING:
    from fedmpq_flwr.server.tensorboard_log import TensorBoardLog


@dataclass
class FitSummary:
    """What `aggregate_fit` learnt from the clients' replies."""

    num_failures: int
    bits_up: int
    client_time_s: float  # the slowest participant's seconds
    fields: dict[str, Any] = field(default_factory=dict)  # train_loss, clients and per-round client fields
    dropped_partitions: list[int] = field(default_factory=list)  # sampled clients that dropped before upload
    client_errors: list[dict[str, Any]] = field(default_factory=list)  # [{partition_id, error}] of failed clients


def fit_summary(updates: list[ClientUpdate], failures: list[Any], bits_up: dict[int, int]) -> FitSummary:
    """The round's replies and failures (Flower's `failures` of `aggregate_fit`: a dropout or an error
    per failed client, `fedmpq_flwr.client.failures`) summarised for its record."""
    reports = [describe_failure(failure) for failure in failures]
    return FitSummary(
        num_failures=len(failures),
        bits_up=sum(bits_up.values()),
        client_time_s=max((float(u.metrics["client_time_s"]) for u in updates), default=0.0),
        dropped_partitions=sorted(r.partition_id for r in reports if r.kind == DROPOUT),
        client_errors=sorted(
            (r.record() for r in reports if r.kind != DROPOUT),
            key=lambda e: (e["partition_id"] is None, e["partition_id"] or 0, e["error"]),
        ),
    )


def round_fields(
    updates: list[ClientUpdate], bits_up: dict[int, int], client_record: Callable[[ClientUpdate], dict[str, Any]]
) -> dict[str, Any]:
    """Per-round fields for metrics.jsonl (computed before aggregation): one entry per participant with
    every number it reported and its method's `client_record`, the sample-weighted training loss and
    the fields of `ROUND_FROM_CLIENTS`."""
    clients = [
        {
            "partition_id": u.partition_id,
            "num_examples": u.num_examples,
            "bits_up": bits_up[u.partition_id],
            **{k: v for k, v in u.metrics.items() if isinstance(v, (int, float)) and k != "partition_id"},
            **client_record(u),
        }
        for u in updates
    ]
    total = sum(c["num_examples"] for c in clients)
    loss = sum(c["train_loss"] * c["num_examples"] for c in clients)
    fields: dict[str, Any] = {"train_loss": loss / total if total else None, "clients": clients}
    for round_key in ROUND_FROM_CLIENTS:
        value = round_from_clients(round_key, clients)
        if value is not None:
            fields[round_key] = value
    return fields


@dataclass
class RoundInProgress:
    """One round from `configure_fit` to `evaluate`."""

    server_round: int
    sampled: list[int]
    bits_down: int
    started: float = field(default_factory=time.perf_counter)
    fit: FitSummary | None = None  # None until aggregate_fit ran (or when no client replied)


class RoundLog:
    """Appends each round's record to metrics.jsonl (and TensorBoard when `tensorboard`) and logs one
    progress line per round."""

    def __init__(self, recorder: RunRecorder, num_rounds: int, tensorboard: bool = False) -> None:
        self.recorder = recorder
        self.num_rounds = num_rounds
        self.started = time.perf_counter()
        self.completed_before = 0  # rounds a resumed run had done before this process started
        self.tensorboard = tensorboard
        self.board: TensorBoardLog | None = None  # opened at the first record (after `resume_after`)

    def resume_after(self, completed_rounds: int) -> None:
        """Count time (for the ETA) from now, over the rounds still to run."""
        self.completed_before = completed_rounds
        self.started = time.perf_counter()

    def write(self, record: dict[str, Any], progress_extra: str = "") -> None:
        """Record a finished round (`round`, `round_time_s`, `test_accuracy` when evaluated ...) and
        print its progress."""
        self.recorder.log_round(record)
        server_round = record["round"]
        self.write_tensorboard(record)
        last_evaluated = next(
            (r for r in reversed(self.recorder.history[:-1]) if "test_accuracy" in r), None
        )  # a resumed run's earlier rounds included
        elapsed = time.perf_counter() - self.started
        line = progress_text(
            self.recorder.run_id, record, self.num_rounds, elapsed, server_round - self.completed_before,
            last_evaluated, progress_extra,
        )  # fmt: skip
        log(INFO, "%s", line)

    def write_tensorboard(self, record: dict[str, Any]) -> None:
        """The record's scalars to RUN_DIR/tensorboard/ (tensorboard imported only here); closed after the
        last round."""
        if not self.tensorboard:
            return
        if self.board is None:
            from fedmpq_flwr.server.tensorboard_log import TensorBoardLog

            self.board = TensorBoardLog(self.recorder.run_dir, first_round=self.completed_before + 1)
        self.board.write(record)
        if record["round"] >= self.num_rounds:
            self.board.close()
            self.board = None
