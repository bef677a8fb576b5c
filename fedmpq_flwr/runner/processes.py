"""Process trees of a Flower run: find them by their private FLWR_HOME, stop them, leave nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import psutil


def stop_process_tree(pid: int | None, grace_s: float = 10.0, flwr_home: Path | None = None) -> None:
    """Terminate process `pid`, all its descendants (SuperExec, simulation, Ray) and every process
    carrying the same private FLWR_HOME, then kill stragglers.

    The tree is collected before anything is signalled: Flower starts SuperExec in its own
    session, so killing a process group would miss it. Ray's daemons and workers are reparented
    when their parent dies first, and so leave the tree; they keep the FLWR_HOME of the SuperLink
    that started everything, by which they are found. `flwr_home` is that value when `pid` is
    unknown or gone; by default it is read from `pid` (unless it is this process's own FLWR_HOME,
    which other Flower processes of the user may share).
    """
    procs: dict[int, psutil.Process] = {}
    if pid is not None:
        try:
            root = psutil.Process(pid)
            procs.update((proc.pid, proc) for proc in [root, *root.children(recursive=True)])
            flwr_home = flwr_home or private_flwr_home(root)
        except psutil.NoSuchProcess:
            pass
    if flwr_home is not None:
        procs.update((proc.pid, proc) for proc in flower_processes(flwr_home))
    terminate_then_kill(list(procs.values()), grace_s)
    if flwr_home is not None:  # any started while the others were stopping
        terminate_then_kill(flower_processes(flwr_home), grace_s=5.0)


def terminate_then_kill(procs: list[psutil.Process], grace_s: float) -> None:
    """SIGTERM to all, SIGKILL to those alive after `grace_s`."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5.0)


def private_flwr_home(proc: psutil.Process) -> Path | None:
    """The FLWR_HOME in `proc`'s environment when it is set and differs from this process's own."""
    try:
        value = proc.environ().get("FLWR_HOME")
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return Path(value) if value and value != os.environ.get("FLWR_HOME") else None


def flower_processes(flwr_home: Path) -> list[psutil.Process]:
    """This user's processes whose environment holds FLWR_HOME=`flwr_home` (this one excluded)."""
    marker = str(flwr_home)
    found = []
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.pid == os.getpid() or (proc.info["uids"] and proc.info["uids"].real != os.getuid()):
                continue
            if proc.environ().get("FLWR_HOME") == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
