"""How a run ends when the federation cannot go on: the strategy raises `RunFailed`, and the run is
recorded as `failed` with the reason instead of crashing the ServerApp.

The strategy raises `RunFailed` when a round brought no update at all (every sampled client dropped
or failed) or when the aggregated global model holds NaN or infinite values; single client failures
never end a run (they are recorded in the round, see `fedmpq_flwr.client.failures`).

The ServerApp runs Flower's round loop through `run_rounds`; on `RunFailed` that marks the run's
recorder as failed, so the ServerApp's closing `strategy.save_outputs()` writes nothing and
`recorder.finish(...)` writes results.json with status `failed`, the reason and the rounds recorded
so far (`RunRecorder.fail`).
"""

from __future__ import annotations

from collections.abc import Callable
from logging import ERROR
from typing import Any

from flwr.common import log

from fedmpq_flwr.rundir.results import RunRecorder


class RunFailed(RuntimeError):
    """The run cannot continue; the message is the one-line reason stored in results.json."""


def run_rounds(start: Callable[..., Any], recorder: RunRecorder, **arguments: Any) -> bool:
    """`start(**arguments)` (Flower's `start_grid(grid=..., strategy=..., config=...)`); when the
    strategy raises RunFailed, mark the run's `recorder` failed with the reason, log it and return
    False. True when the rounds ran to the end."""
    try:
        start(**arguments)
    except RunFailed as err:
        recorder.failure = str(err)
        log(ERROR, "[%s] run failed: %s", recorder.run_id, recorder.failure)
        return False
    return True
