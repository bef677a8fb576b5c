"""Several runs at once (the runner's `--jobs N`): whether N fit this machine, the CPUs each run's
Ray gets, the scheduler, and the one console line per round that replaces a run's raw output.

Every run keeps its own launcher, and so its own SuperLink, port, FLWR_HOME and Ray temp folder;
what the runs share is the machine. With N > 1 each run's Ray is given its share of the CPUs (and
on a GPU few enough actors that their `federation.client_gpus` fit its share of the GPUs), so the
runs do not all start an actor per core. How many actors a run has never changes what it computes:
clients are seeded by (seed, round, partition) and their updates summed in partition order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fedmpq_flwr.config import ConfigError
from fedmpq_flwr.runner.signals import Stopped, stop_received

EPS = 1e-9  # GPU shares are floats: 4 x 0.25 fits one GPU
WAIT_S = 0.1  # how often the main thread looks whether the workers have ended


def check_jobs(jobs: int, client_cpus: int, client_gpus: float, cpus: int, gpus: int) -> None:
    """ConfigError (one line naming --jobs) unless `jobs` runs fit this machine at once: each needs
    `client_cpus` CPUs for one client actor and, when it trains on a GPU, `client_gpus` of one (the
    largest values among the runs). One run is always allowed: it has the machine, as before."""
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be at least 1 (the number of runs in flight at once)")
    if jobs == 1:
        return
    if jobs * client_cpus > cpus:
        raise ConfigError(
            f"--jobs {jobs}: {jobs} runs at once with federation.client_cpus {client_cpus} need "
            f"{jobs * client_cpus} CPUs, this machine has {cpus}; allowed: --jobs 1 to {max(1, cpus // client_cpus)}"
        )
    if client_gpus > 0 and jobs * client_gpus > gpus + EPS:
        allowed = max(1, int(gpus / client_gpus + EPS))
        raise ConfigError(
            f"--jobs {jobs}: {jobs} runs at once with federation.client_gpus {client_gpus:g} need "
            f"{jobs * client_gpus:g} GPUs, this machine has {gpus}; allowed: --jobs 1 to {allowed}"
            " (or a smaller federation.client_gpus)"
        )


def ray_cpus(in_flight: int, cpus: int, client_cpus: int, gpus: int, client_gpus: float) -> int | None:
    """The CPUs a run gives its Ray when `in_flight` runs share the machine (None for one run: Ray
    counts the machine itself). Its share of the CPUs and, on a GPU, no more than keeps its actors
    within its share of the GPUs: Flower hands Ray whole GPUs only, so runs share a GPU through the
    number of actors each starts (`check_jobs` made sure that is at least one)."""
    if in_flight == 1:
        return None
    share = cpus // in_flight
    if client_gpus > 0:
        share = min(share, client_cpus * int(gpus / (in_flight * client_gpus) + EPS))
    return share


class JobsStopped(Stopped):
    """A stop signal arrived: the runs it stopped (indices) and the first run that never started."""

    def __init__(self, signum: int, stopped: list[int], first_unstarted: int) -> None:
        super().__init__(signum)
        self.stopped = stopped
        self.first_unstarted = first_unstarted


def run_jobs(count: int, jobs: int, run_one: Callable[[int], str]) -> list[str]:
    """`run_one(i)` for i = 0 .. count-1, started in order, at most `jobs` at once; their statuses by i.

    With one job every run runs in this (the main) thread, as the runner always did. With more, each
    of `jobs` worker threads takes the next run until none is left; a worker stops its own run when
    a stop signal arrives (`stop_received`) and takes no other. The main thread only waits, and on a
    stop signal waits for the workers and raises JobsStopped. Workers record what they did
    themselves, and the main thread counts the workers that ended instead of joining them (in Python
    3.11 a join cut short by a signal marks the thread finished), so a signal loses no run.
    """
    if jobs == 1:
        statuses = []
        for index in range(count):
            try:
                statuses.append(run_one(index))
            except Stopped as stop:
                raise JobsStopped(stop.signum, [index], index + 1) from None
        return statuses
    indices = iter(range(count))
    taking = threading.Lock()
    outcomes: dict[int, str | BaseException] = {}
    ended: list[bool] = []  # one entry per worker that returned

    def work() -> None:
        try:
            while not stop_received():
                with taking:
                    index = next(indices, None)
                if index is None:
                    return
                try:
                    outcomes[index] = run_one(index)
                except BaseException as err:  # Stopped, or a bug that the main thread raises again
                    outcomes[index] = err
                    return
        finally:
            ended.append(True)

    def busy() -> bool:  # a worker not yet running when the signal came sees it and takes no run
        return sum(worker.ident is not None for worker in workers) > len(ended)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(min(jobs, count))]
    try:
        for worker in workers:
            worker.start()
        while busy():
            time.sleep(WAIT_S)
    except Stopped as stop:
        while busy():
            time.sleep(WAIT_S)
        stopped = sorted(index for index, outcome in outcomes.items() if isinstance(outcome, Stopped))
        raise JobsStopped(stop.signum, stopped, len(outcomes)) from None
    errors = [outcome for _, outcome in sorted(outcomes.items()) if isinstance(outcome, BaseException)]
    if errors:
        raise errors[0]
    return [str(outcomes[index]) for index in range(count)]
