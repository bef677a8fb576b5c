"""A child process's output copied to its log files and to the console, whole lines at a time.

Under `--jobs N` several runs share the console: `say` keeps lines whole, and a quiet run shows
one progress line per round, read from the run's metrics.jsonl (`fedmpq_flwr.rundir.progress`). A
stop signal is passed on to the child, which is waited for so that it can stop what it started.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fedmpq_flwr.rundir.progress import MetricsFollower
from fedmpq_flwr.runner.signals import Stopped, stop_received

CONSOLE = threading.Lock()  # whole lines on the console while runs share it (--jobs)


def say(text: str, file: IO[str] | None = None) -> None:
    """Print one line (or block) to the console (stdout by default) without interleaving."""
    with CONSOLE:
        print(text, file=file or sys.stdout, flush=True)


def _pump(source: IO[str], log: IO[str], echo: Callable[[str], None] | None) -> None:
    for line in iter(source.readline, ""):
        log.write(line)
        log.flush()
        if echo is not None:
            echo(line)


def _raw(stream: IO[str]) -> Callable[[str], None]:
    def echo(line: str) -> None:
        stream.write(line)
        stream.flush()

    return echo


def _follow(progress: MetricsFollower, done: threading.Event) -> None:
    """Say each new round's progress line until `done`, then the last ones."""
    while not done.wait(FOLLOW_S):
        for line in progress.poll():
            say(line)
    for line in progress.poll():
        say(line)


CHILD_STOP_S = 60.0  # how long the runner waits for a stopped launcher to shut Flower down


POLL_S = 0.2  # how often a --jobs worker looks for a stop signal while its run is in flight
FOLLOW_S = 1.0  # how often a quiet run's metrics.jsonl is read for new rounds


def wait_child(process: subprocess.Popen) -> int:
    """The child's exit status. In the main thread a stop signal interrupts the wait (Stopped); a
    worker thread (--jobs) cannot be interrupted, so it polls, and raises Stopped itself."""
    if threading.current_thread() is threading.main_thread():
        return process.wait()
    while True:
        try:
            return process.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            if signum := stop_received():
                raise Stopped(signum) from None


def run_teed(
    cmd: list[str],
    stdout_log: Path,
    stderr_log: Path,
    header: str,
    append: bool = False,
    progress: MetricsFollower | None = None,
) -> int:
    """Run `cmd`, copying its stdout/stderr to the log files (appended to with `append`) and to this
    process's console; with `progress` (under --jobs) the console gets only the progress line of each
    round the run records. On a stop signal the child gets it too (it may have had it already: the launcher
    ignores a repeat) and is waited for, so that it stops what it started."""
    mode = "a" if append else "w"
    with open(stdout_log, mode) as out_file, open(stderr_log, mode) as err_file:
        out_file.write(header)
        out_file.flush()
        if signum := stop_received():  # a --jobs worker about to start a run while the runner stops
            raise Stopped(signum)
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        quiet = progress is not None
        done = threading.Event()
        pumps = [
            threading.Thread(target=_pump, args=(process.stdout, out_file, None if quiet else _raw(sys.stdout))),
            threading.Thread(target=_pump, args=(process.stderr, err_file, None if quiet else _raw(sys.stderr))),
        ]
        if quiet:
            pumps.append(threading.Thread(target=_follow, args=(progress, done)))
        for pump in pumps:
            pump.daemon = True
        for pump in pumps:
            pump.start()
        try:
            returncode = wait_child(process)
        except Stopped as stop:
            stop_child(process, stop.signum)
            done.set()
            for pump in pumps:
                pump.join(timeout=5.0)
            raise
        done.set()
        for pump in pumps:
            pump.join()
    return returncode


def stop_child(process: subprocess.Popen, signum: int) -> None:
    """Pass a stop signal on to the launcher and wait until it has stopped Flower (killed after
    `CHILD_STOP_S`)."""
    try:
        process.send_signal(signum)
        process.wait(timeout=CHILD_STOP_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    except ProcessLookupError:
        pass
