"""`logging.tensorboard`: every numeric top-level field of a round's record as a TensorBoard scalar of
the same name at step = round, in RUN_DIR/tensorboard/, flushed as each round ends, so that
`tensorboard --logdir results/` shows a run's curves while it runs.

Optional output beside the results contract: the analyzer never reads it. Imported only when the key
is on (it loads tensorboard).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

TENSORBOARD_DIR = "tensorboard"


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numeric top-level fields (booleans, lists, dicts and the round itself left out)."""
    return {
        key: float(value)
        for key, value in record.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "round"
    }


class TensorBoardLog:
    """One writer per process. Its first event purges every step from `first_round` on that an earlier
    attempt wrote: a resumed run replaces the rounds it runs again, a run started over replaces all."""

    def __init__(self, run_dir: Path, first_round: int) -> None:
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=first_round)

    def write(self, record: dict[str, Any]) -> None:
        """The round's scalars at step = round, on disk when this returns."""
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=record["round"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
