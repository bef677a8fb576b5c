"""FedGKD's buffer of recent global models and its teacher (Yao et al., arXiv 2107.00051), in numpy.

FedGKD is full-precision FedAvg whose clients add `gamma * T^2 * KL(teacher || student)` to their
loss, the teacher being the parameter average of the last M global models. The server keeps them:
after aggregating round r it pushes the new global model w_r, so in round t the buffer holds
w_{t-1}, ..., w_{t-M} (those with r >= 1), w_{t-1} being the model it broadcasts in round t: M
counts the current model. The initial model w_0 is never pushed (the reference code's master
pushes only aggregated models, `master_fedgkd.py` `aggregate` -> `ensemble_historical_models`), so
in round 1 the buffer is empty and there is no distillation (the reference's workers also skip
it: `worker_fedgkd.py`, `comm_round <= 1`); in round 2 the teacher is w_1, the received model
itself. Every entry of the model's communicated state is averaged (BatchNorm running statistics
included, as the reference averages whole state dicts).

The buffer is a list of float32 arrays per model and saves to a flat list of arrays plus a small
dict of integers (`state` / `from_state`), which is what a checkpoint or Flower's records hold.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class ModelHistory:
    """The last `length` global models (lists of float32 arrays of one architecture), oldest first."""

    def __init__(self, length: int) -> None:
        if int(length) != length or length < 1:
            raise ValueError(f"the history keeps at least one model, got length {length}")
        self.length = int(length)
        self._models: deque[tuple[int, list[np.ndarray]]] = deque(maxlen=self.length)

    def __len__(self) -> int:
        return len(self._models)

    @property
    def rounds(self) -> list[int]:
        """The rounds of the models held, oldest first."""
        return [server_round for server_round, _ in self._models]

    def push(self, weights: list[np.ndarray], server_round: int) -> None:
        """Keep a copy of the global model produced by `server_round`, dropping the oldest model
        once `length` are held. Rounds must increase and every model must have the same shapes."""
        if self._models:
            if server_round <= self._models[-1][0]:
                raise ValueError(f"round {server_round} pushed after round {self._models[-1][0]}")
            shapes = [a.shape for a in self._models[-1][1]]
            if [np.shape(a) for a in weights] != shapes:
                raise ValueError("a model of another architecture was pushed into the history")
        self._models.append((int(server_round), [np.array(a, dtype=np.float32, copy=True) for a in weights]))

    def teacher(self) -> list[np.ndarray]:
        """The parameter average of the models held (float64 sums, float32 result)."""
        if not self._models:
            raise ValueError("the history is empty: there is no teacher before the first aggregation")
        count = len(self._models)
        models = [weights for _, weights in self._models]
        return [
            (sum(model[i].astype(np.float64) for model in models) / count).astype(np.float32)
            for i in range(len(models[0]))
        ]

    def state(self) -> tuple[list[np.ndarray], dict[str, int | list[int]]]:
        """The buffer as arrays (every model's arrays in turn, oldest first) and a small dict."""
        arrays = [array.copy() for _, weights in self._models for array in weights]
        tensors = len(self._models[0][1]) if self._models else 0
        return arrays, {"length": self.length, "tensors": tensors, "rounds": self.rounds}

    @classmethod
    def from_state(cls, arrays: list[np.ndarray], meta: dict) -> ModelHistory:
        """The buffer `state` saved."""
        rounds = [int(r) for r in meta["rounds"]]
        tensors = int(meta["tensors"])
        if len(arrays) != tensors * len(rounds):
            raise ValueError(f"{len(arrays)} arrays for {len(rounds)} models of {tensors} tensors")
        history = cls(int(meta["length"]))
        if len(rounds) > history.length:
            raise ValueError(f"{len(rounds)} models saved in a history of length {history.length}")
        for index, server_round in enumerate(rounds):
            history.push(arrays[index * tensors : (index + 1) * tensors], server_round)
        return history


def distills(server_round: int, history: ModelHistory) -> bool:
    """Whether FedGKD's clients distil in `server_round`: never in round 1, and only once the
    server holds at least one aggregated global model."""
    return server_round > 1 and len(history) > 0
