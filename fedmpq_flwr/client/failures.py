"""Client failures that a round survives: dropouts and client errors, raised by a client and read back
by the server.

A client that fails raises `ClientFailure` (a real error: an exception, a non-finite training loss or
upload) or `ClientDropout` (`federation.dropout`: a seeded draw after local training, before upload)
from its `fit`. Flower turns the exception into a failure of that client and hands it to the
strategy's `aggregate_fit` in `failures`; in a simulation the failure is a ValueError whose text
embeds the client's message inside Ray's traceback, so nothing of the original object survives but
its text. The message therefore carries a one-line JSON record after `MARKER` (partition id, kind,
first line of the error), which `describe_failure` finds again in whatever wraps it.

Pure Python and numpy: the client and the server both import it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

MARKER = "fedmpq-client-failure"
DROPOUT = "dropout"
ERROR = "error"
DROPOUT_STREAM = 0x64726F70  # keeps the dropout draws apart from the other uses of the run seed
MAX_ERROR_CHARS = 300


def first_line(text: str) -> str:
    """The first non-empty line of `text`, at most MAX_ERROR_CHARS characters."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


def error_line(err: BaseException) -> str:
    """`ValueError: first line of its message` (the type alone for an empty message)."""
    message = first_line(str(err))
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


class ClientFailure(RuntimeError):
    """A client's round failed: raised from `fit`, so Flower reports it to `aggregate_fit`.

    Its message starts with a readable line and ends with `MARKER` and a JSON record:
    `partition 3 failed: ValueError: bad input [fedmpq-client-failure {"partition_id": 3, ...}]`.
    """

    kind = ERROR
    verb = "failed"

    def __init__(self, partition_id: int, error: str) -> None:
        self.partition_id = int(partition_id)
        self.error = first_line(error)
        record = json.dumps({"partition_id": self.partition_id, "kind": self.kind, "error": self.error})
        super().__init__(f"partition {self.partition_id} {self.verb}: {self.error} [{MARKER} {record}]")


class ClientDropout(ClientFailure):
    """A sampled client that dropped after local training, before its upload (`federation.dropout`)."""

    kind = DROPOUT
    verb = "dropped"

    def __init__(self, partition_id: int, server_round: int) -> None:
        super().__init__(partition_id, f"dropped out after local training in round {server_round}")


def drops_out(seed: int, server_round: int, partition_id: int, probability: float) -> bool:
    """Whether a sampled client drops in a round: a draw seeded by (run seed, round, partition) only,
    so it does not depend on which other clients were sampled or on the order they ran in."""
    if probability <= 0:
        return False
    rng = np.random.default_rng([int(seed), int(server_round), int(partition_id), DROPOUT_STREAM])
    return bool(rng.random() < probability)


def non_finite_count(arrays: Iterable[np.ndarray]) -> int:
    """How many NaN or infinite values the floating-point arrays hold (integer arrays have none)."""
    floats = (np.asarray(a) for a in arrays)
    return sum(int(a.size - np.count_nonzero(np.isfinite(a))) for a in floats if np.issubdtype(a.dtype, np.floating))


def non_finite_problem(train_loss: Any, arrays: Iterable[np.ndarray]) -> str | None:
    """Why a client's result must not be used (a NaN or infinite training loss, or non-finite values in
    what it would upload), or None when it is fine."""
    try:
        loss = float(train_loss)
    except (TypeError, ValueError):
        loss = math.nan
    if not math.isfinite(loss):
        return f"non-finite training loss {loss}"
    bad = non_finite_count(arrays)
    return f"{bad} non-finite values in the update" if bad else None


@dataclass(frozen=True)
class FailureReport:
    """One entry of Flower's `failures`, as far as it can be read: which partition, what happened."""

    partition_id: int | None  # None when the failure does not name one (e.g. a Ray worker that died)
    kind: str  # DROPOUT or ERROR
    error: str  # the first line of the error

    def record(self) -> dict[str, Any]:
        return {"partition_id": self.partition_id, "error": self.error}


def _from_text(text: str) -> FailureReport | None:
    """The record after the last MARKER in `text` (ignoring whatever wraps it), if there is one."""
    at = text.rfind(MARKER)
    if at < 0:
        return None
    start = text.find("{", at)
    try:
        record, _ = json.JSONDecoder().raw_decode(text, start) if start >= 0 else (None, 0)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, Mapping):
        return None
    pid = record.get("partition_id")
    pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
    return FailureReport(
        partition_id=pid,
        kind=DROPOUT if record.get("kind") == DROPOUT and pid is not None else ERROR,
        error=first_line(str(record.get("error", ""))),
    )


def describe_failure(failure: Any) -> FailureReport:
    """Read one entry of `aggregate_fit`'s `failures`: an exception (what a client raised, as Flower
    delivers it) or a `(proxy, FitRes)` whose status is not OK."""
    if isinstance(failure, BaseException):
        text = str(failure)
        return _from_text(text) or FailureReport(None, ERROR, error_line(failure))
    res = failure[1] if isinstance(failure, tuple) and len(failure) == 2 else failure
    status = getattr(res, "status", None)
    message = str(getattr(status, "message", "") or "")
    found = _from_text(message)
    if found is not None:
        return found
    pid = (getattr(res, "metrics", None) or {}).get("partition_id")
    code = getattr(status, "code", None)
    error = first_line(message) or f"status {getattr(code, 'name', code)}"
    return FailureReport(int(pid) if isinstance(pid, int) else None, ERROR, error)
