"""Where a run's time goes before its first round and after its last: RUN_DIR/startup.json.

A run started by the launcher pays tens of seconds of Flower and Ray start and stop around its
rounds. To see where, the launcher, the ServerApp and the ClientApps append marks (a name and the
wall-clock time) to one file that the launcher names in the environment (`FEDMPQ_STARTUP_MARKS`;
every Flower and Ray process it starts inherits it). Without that variable (a bare `flwr run .`, a
deployment) nothing is written. After the run the launcher turns the marks into seconds per phase.

Torch-free: the ServerApp, the ClientApp and the launcher import it.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

MARKS_ENV = "FEDMPQ_STARTUP_MARKS"
STARTUP_FILE = "startup.json"

# The points of a run, in order, each the end of the phase named after it (docs/results.md says
# what each phase holds). A mark's first time counts; `last_round_finished` is the last round's.
POINTS = (
    "launcher_started",  # the launcher's process was created: the origin of every time
    "superlink_started",  # launcher: imports, config validated, run folder, app staged, SuperLink spawned
    "superlink_ready",  # the SuperLink answered its health check on its port
    "run_submitted",  # `flwr run`: CLI start, app packaged and sent, run created
    "server_app_started",  # SuperExec took the run, flwr-simulation started and imported the ServerApp
    "strategy_ready",  # ServerApp: config, data, partitions, initial model, strategy
    "first_round_started",  # Flower's round loop reached the first configure_fit
    "first_client_started",  # Ray and a first actor are up: a ClientApp got its first message
    "first_round_finished",  # the rest of the first round (training, aggregation, evaluation, checkpoint)
    "last_round_finished",  # the rounds after the first
    "server_app_finished",  # final model, features, results.json
    "flwr_run_finished",  # Flower's teardown: simulation and Ray stopped, logs streamed out, `flwr run` returned
    "shutdown_done",  # the launcher stopped the SuperLink and everything it started
)
# points read from marks written every round or by every client: the first of them
FIRST_OF = {
    "first_round_started": "round_started",
    "first_client_started": "client_started",
    "first_round_finished": "round_finished",
}


def mark(name: str, path: str | Path | None = None, when: float | None = None) -> None:
    """Append `name` and a time (default: now) to the marks file (`path`, or the one named by the
    environment; nothing when there is none). A mark never fails a run: a file that cannot be
    written (its launcher is gone) is passed over."""
    path = path or os.environ.get(MARKS_ENV)
    if not path:
        return
    try:
        with open(path, "a") as handle:
            handle.write(json.dumps([name, time.time() if when is None else when]) + "\n")
    except OSError:
        pass


def read_marks(path: Path) -> list[tuple[str, float]]:
    """The marks in the file, in the order written; a line cut short by a killed process is skipped."""
    marks = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            name, when = json.loads(line)
        except ValueError:
            continue
        marks.append((str(name), float(when)))
    return marks


def breakdown(marks: list[tuple[str, float]]) -> dict[str, Any]:
    """Seconds since the launcher started at each point (`points_s`), per phase between consecutive
    points (`phases_s`: a phase whose start or end is missing, as in a stopped run, is left out),
    per round of this attempt (`rounds_s`), before the first round and after the last, and how much
    longer the first round took than the mean of the others (`first_round_extra_s`: Ray and actor
    start-up that Flower overlaps with round 1)."""
    times: dict[str, float] = {}
    for name, when in marks:
        times.setdefault(name, when)
    finished = [when for name, when in marks if name == "round_finished"]
    points = {point: times.get(FIRST_OF.get(point, point)) for point in POINTS}
    points["last_round_finished"] = finished[-1] if finished else None
    origin = points["launcher_started"]
    if origin is None:
        return {}
    at = {point: round(when - origin, 3) for point, when in points.items() if when is not None}
    phases = {
        point: round(points[point] - points[before], 3)
        for before, point in zip(POINTS, POINTS[1:])
        if points[before] is not None and points[point] is not None
    }
    started = [when for name, when in marks if name == "round_started"]
    rounds = [round(end - start, 3) for start, end in zip(started, finished)]
    result: dict[str, Any] = {"points_s": at, "phases_s": phases, "rounds_s": rounds}
    if "first_round_started" in at:
        result["before_first_round_s"] = at["first_round_started"]
    if "last_round_finished" in at and "shutdown_done" in at:
        result["after_last_round_s"] = round(at["shutdown_done"] - at["last_round_finished"], 3)
    if len(rounds) > 1:
        result["first_round_extra_s"] = round(rounds[0] - statistics.mean(rounds[1:]), 3)
    return result


def write_startup(run_dir: Path, marks_file: Path) -> None:
    """RUN_DIR/startup.json from the marks file (the latest attempt of the run)."""
    (run_dir / STARTUP_FILE).write_text(json.dumps(breakdown(read_marks(marks_file)), indent=2) + "\n")
