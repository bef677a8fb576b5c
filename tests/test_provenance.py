"""The commit a run records: the launcher's checkout, passed to Flower's processes by environment."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fedmpq_flwr.rundir.provenance import COMMIT_ENV, checkout_commit, git_commit
from fedmpq_flwr.runner.launcher import flower_env

REPO = Path(__file__).resolve().parent.parent


def test_checkout_commit_is_git_head_of_this_checkout() -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        assert checkout_commit() == "unknown"
    else:
        assert checkout_commit().removesuffix("-dirty") == head.stdout.strip()


def test_launcher_passes_its_commit_and_the_server_side_reads_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    assert flower_env(tmp_path, 9999)[COMMIT_ENV] == checkout_commit()
    monkeypatch.setenv(COMMIT_ENV, "abc123")  # what a ServerApp under the launcher sees
    assert git_commit() == "abc123"
    assert flower_env(tmp_path, 9999)[COMMIT_ENV] == "abc123"  # a nested launch keeps the outer commit
