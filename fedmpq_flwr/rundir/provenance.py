"""Which code a run ran: the git commit of the checkout the runner was started from.

Under `flwr run` the ServerApp imports the package from Flower's copy of the app (FLWR_HOME/apps/...),
which is not a git checkout; so the launcher records its own checkout's commit in the Flower
processes' environment (`COMMIT_ENV`) and the ServerApp reads it from there.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

COMMIT_ENV = "FEDMPQ_GIT_COMMIT"


def checkout_commit() -> str:
    """Commit of the checkout this package is imported from ('-dirty' with local changes to tracked
    files), or 'unknown' outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty.strip() else "")


def git_commit() -> str:
    """The commit the launcher passed down (`COMMIT_ENV`), else this package's own checkout's."""
    return os.environ.get(COMMIT_ENV) or checkout_commit()
