"""The history teacher of FedGKD and of FedMPQ-KD's `kd.teacher: history`, server and client side.

Server (`HistoryTeacherStrategy`): after aggregating round r it pushes the new global model w_r into
a `fedmpq_flwr.methods.model_history.ModelHistory` of length M, so in round t the buffer holds w_{t-1}, ..., w_{t-M}
(w_0, the initial model, never: there is no teacher in round 1) and counts the model broadcast in
round t. The teacher is their parameter average (`ModelHistory.teacher`), computed once per round.

How it travels (Flower's legacy NumPyClient API has one list of arrays per message): the fit
parameters are the global model's arrays followed by the teacher's (the same architecture, so as
many arrays), and the instructions say how many of them are the teacher's (`teacher_arrays`, 0 when
none is sent) and which global rounds it averages (`teacher_rounds`, JSON; empty: no teacher). While
the buffer holds one model, that model is the global model the client receives anyway, so nothing
more is sent and the client uses its copy of the global model (as the authors' code does). Every
sampled client gets the same teacher, so a node that was not sampled in earlier rounds needs nothing
it never received. `download_bits` counts every array sent: the teacher's 32 bits per float are in
`bits_down`.

Client (`HistoryTeacherClient`): splits the teacher off the received arrays before the usual fit.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
from flwr.common import NDArrays, Parameters, Scalar
from torch import nn

from fedmpq_flwr.methods.model_history import ModelHistory, distills
from fedmpq_flwr.training.weights import set_weights

TEACHER_ARRAYS = "teacher_arrays"  # fit instruction: how many of the received arrays (the last ones) are the teacher
TEACHER_ROUNDS = "teacher_rounds"  # fit instruction: the global rounds the teacher averages (JSON list)


class HistoryTeacherStrategy:
    """Mixin, listed before a `FedAvgStrategy` subclass in the bases. The subclass sets `self.history`
    in its `__init__`: a `ModelHistory`, or None when the run has no history teacher (then the mixin
    changes nothing)."""

    history: ModelHistory | None = None
    _teacher: tuple[tuple[int, ...], NDArrays] | None = None  # (rounds averaged, teacher): computed once

    def averaged_rounds(self, server_round: int) -> tuple[int, ...]:
        """The global rounds the teacher of `server_round` averages (none in round 1 or before any aggregation)."""
        if self.history is None or not distills(server_round, self.history):
            return ()
        return tuple(self.history.rounds)

    def teacher_arrays(self, server_round: int) -> NDArrays:
        """The teacher sent in `server_round`: none without a teacher, and none while the buffer holds
        only the model broadcast with it (the client's copy of the global model is the teacher)."""
        if len(self.averaged_rounds(server_round)) <= 1:
            return []
        rounds = tuple(self.history.rounds)
        if self._teacher is None or self._teacher[0] != rounds:
            self._teacher = (rounds, self.history.teacher())
        return self._teacher[1]

    def fit_arrays(self, server_round: int, parameters: NDArrays) -> NDArrays:
        sent = super().fit_arrays(server_round, parameters)
        teacher = self.teacher_arrays(server_round)
        return [*sent, *teacher] if teacher else sent

    def fit_config(self, server_round: int, partition_id: int) -> dict[str, Scalar]:
        config = super().fit_config(server_round, partition_id)
        if self.history is None:
            return config
        rounds = self.averaged_rounds(server_round)
        teacher = self.teacher_arrays(server_round)
        return {**config, TEACHER_ARRAYS: len(teacher), TEACHER_ROUNDS: json.dumps(list(rounds))}

    def aggregate_fit(
        self, server_round: int, results: list, failures: list
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """FedAvg's (or the method's) aggregation, then the new global model joins the history."""
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if self.history is not None and parameters is not None:
            self.history.push(self.latest_parameters, server_round)
        return parameters, metrics

    def server_state(self) -> tuple[NDArrays, dict[str, Any]]:
        """The method's own state, then the buffer of global models (a resumed run rebuilds the same
        teachers); `history_offset` says where the buffer's arrays start."""
        arrays, meta = super().server_state()
        if self.history is None:
            return arrays, meta
        history_arrays, history_meta = self.history.state()
        return [*arrays, *history_arrays], {**meta, "history": history_meta, "history_offset": len(arrays)}

    def load_server_state(self, arrays: NDArrays, meta: dict[str, Any]) -> None:
        if "history" not in meta:
            super().load_server_state(arrays, meta)
            return
        offset = int(meta["history_offset"])
        super().load_server_state(arrays[:offset], meta)
        self.history = ModelHistory.from_state(list(arrays[offset:]), meta["history"])
        self._teacher = None


class HistoryTeacherClient:
    """Mixin, listed before a `FedAvgClient` subclass in the bases: `fit` splits the teacher off the
    received arrays (`received_teacher`: the received global model itself when the teacher averages
    that one model only, None when there is no teacher; `teacher_rounds`, the global rounds it
    averages) and hands the global model to the usual fit."""

    received_teacher: list[np.ndarray] | None = None
    teacher_rounds: list[int] = []

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        count = int(config.get(TEACHER_ARRAYS, 0))
        if not 0 <= count < len(parameters):
            raise ValueError(f"{count} teacher arrays announced among {len(parameters)} received arrays")
        self.teacher_rounds = [int(r) for r in json.loads(str(config.get(TEACHER_ROUNDS, "[]")))]
        self.received_teacher = None
        if count:
            self.received_teacher = list(parameters[len(parameters) - count :])
        elif self.teacher_rounds:  # one model in the buffer: the global model received
            self.received_teacher = [np.array(array, copy=True) for array in parameters]
        return super().fit(list(parameters[: len(parameters) - count]), config)

    def teacher_model(self, model: nn.Module) -> nn.Module | None:
        """A float copy of `model` holding the received teacher (None when no teacher came)."""
        if self.received_teacher is None:
            return None
        teacher = copy.deepcopy(model)
        set_weights(teacher, self.received_teacher)
        return teacher
