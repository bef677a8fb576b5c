"""Process trees of a Flower run: find them by their private FLWR_HOME, stop them, leave nothing behind.

A launcher killed with SIGKILL cannot clean up: its private FLWR_HOME and Ray temp folders (and any
Flower process still using them) stay. Each folder names its owner (`claim`), and the next launcher
removes those whose owner is gone (`remove_abandoned`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
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


# ---- private temp folders of a launcher that was killed (SIGKILL leaves them behind) ----

HOME_PREFIX = "fedmpq-flwr-home-"  # a run's private FLWR_HOME
RAY_PREFIX = "fedmpq-ray-"  # a run's private Ray temp folder (short: Ray's socket paths must fit 107 bytes)
OWNER_FILE = "owner.json"


def claim(folder: Path) -> None:
    """Mark `folder` as this process's: `remove_abandoned` leaves it alone while this process lives."""
    me = psutil.Process()
    (Path(folder) / OWNER_FILE).write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))


def _owner_alive(folder: Path) -> bool:
    """Whether the process that claimed `folder` still runs (an unclaimed or unreadable folder counts
    as owned: it may be another program's, or a launcher's that is just starting)."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
        return abs(psutil.Process(int(owner["pid"])).create_time() - float(owner["create_time"])) < 1.0
    except psutil.NoSuchProcess:
        return False
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return True


def remove_abandoned(temp_dir: Path | None = None) -> list[Path]:
    """Remove the private FLWR_HOME and Ray folders whose launcher is gone, after stopping any Flower
    or Ray process still using them; the folders removed."""
    removed = []
    base = Path(temp_dir or tempfile.gettempdir())
    for folder in sorted([*base.glob(HOME_PREFIX + "*"), *base.glob(RAY_PREFIX + "*")]):
        if not folder.is_dir() or _owner_alive(folder):
            continue
        if folder.name.startswith(HOME_PREFIX):
            terminate_then_kill(flower_processes(folder), grace_s=5.0)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
