"""Checkpoint the server after every round; resume a stopped run from its last completed round.

`CheckpointingStrategy` wraps a method's strategy for Flower's legacy loop. Flower numbers the
rounds of `start_grid(..., ServerConfig(num_rounds=N - r))` from 1; a run resumed after round r
must run rounds r+1..N, so the wrapper adds r to every round number Flower passes: the method,
its records and its clients (whose seeds depend on the round) only ever see the true round. After
each round's evaluation (which writes the round's record to metrics.jsonl) it saves
`checkpoint/server.npz` (`fedmpq_flwr.rundir.checkpoint.ServerCheckpoint`): the global model, the
sampler's and torch's RNG states, the method's `server_state()`, the round. It also adds to every
client's fit instructions where and under which token nodes save what they keep between rounds
(`fedmpq_flwr.rundir.node_state`).

A method needs nothing for this beyond `server_state` / `load_server_state` on its strategy when
its server keeps something between rounds (FedAvg keeps nothing, FedMPQ its bit assignments).
"""

from __future__ import annotations

import time
import uuid
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common import FitIns, FitRes, Parameters, Scalar, log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fedmpq_flwr.rundir.checkpoint import (
    CLIENTS_DIR,
    ServerCheckpoint,
    checkpoint_dir,
    remove_checkpoint,
    remove_partial_files,
)
from fedmpq_flwr.rundir.node_state import DIR_KEY, TOKEN_KEY
from fedmpq_flwr.rundir.reuse import check_resumable  # the runner's rule: runner, launcher and server agree
from fedmpq_flwr.rundir.startup import mark
from fedmpq_flwr.training.weights import set_weights


def capture(
    strategy: Any, server_round: int, parameters: list[np.ndarray], token: str, started_at: str
) -> ServerCheckpoint:
    """The checkpoint of `strategy` (a `FedAvgStrategy`) after `server_round` with global model `parameters`."""
    method_arrays, method_meta = strategy.server_state()
    return ServerCheckpoint(
        round=server_round,
        num_rounds=strategy.config["train"]["num_rounds"],
        token=token,
        started_at=started_at,
        config=strategy.config,
        parameters=parameters,
        sampler=strategy.sampler.state(),
        torch_rng=torch.get_rng_state().numpy(),
        method_arrays=list(method_arrays),
        method_meta=method_meta,
    )


def open_checkpoint(config: dict[str, Any], run_dir: Path) -> ServerCheckpoint | None:
    """The checkpoint a run resumes from, or None when it starts from round 1 (then any old
    checkpoint folder goes). ConfigError when the checkpoint was made with another config."""
    if not check_resumable(config, run_dir):
        remove_checkpoint(run_dir)
        return None
    remove_partial_files(run_dir)  # no node writes before the first resumed round
    return ServerCheckpoint.load(run_dir)


def restore(strategy: Any, checkpoint: ServerCheckpoint) -> None:
    """Put a freshly built `strategy` in the state `capture` saved."""
    strategy.latest_parameters = [np.array(array, copy=True) for array in checkpoint.parameters]
    set_weights(strategy.model, strategy.latest_parameters)
    strategy.sampler.load_state(checkpoint.sampler)
    torch.set_rng_state(torch.from_numpy(np.array(checkpoint.torch_rng, dtype=np.uint8)))
    strategy.round_log.resume_after(checkpoint.round)
    strategy.load_server_state(checkpoint.method_arrays, checkpoint.method_meta)


class CheckpointingStrategy(Strategy):
    """Flower's rounds 1..N-r are the method's rounds r+1..N; a checkpoint after each of them."""

    def __init__(
        self, strategy: Any, run_dir: Path, started_at: str, checkpoint: ServerCheckpoint | None = None
    ) -> None:
        super().__init__()
        self.strategy = strategy
        self.run_dir = Path(run_dir)
        self.completed = checkpoint.round if checkpoint else 0
        self.token = checkpoint.token if checkpoint else uuid.uuid4().hex
        self.started_at = checkpoint.started_at if checkpoint else started_at
        self.clients_dir = checkpoint_dir(run_dir) / CLIENTS_DIR
        self.last_save: dict[str, float] = {}  # seconds and bytes of the latest checkpoint
        if checkpoint is not None:
            restore(strategy, checkpoint)

    @property
    def remaining(self) -> int:
        """Rounds still to run: what to give `ServerConfig(num_rounds=...)`."""
        return self.strategy.config["train"]["num_rounds"] - self.completed

    def true_round(self, flower_round: int) -> int:
        return flower_round + self.completed

    def save(self, server_round: int, parameters: list[np.ndarray]) -> None:
        started = time.perf_counter()
        size = capture(self.strategy, server_round, parameters, self.token, self.started_at).save(self.run_dir)
        self.last_save = {"seconds": time.perf_counter() - started, "bytes": size}

    # ---- Strategy interface: the wrapped method sees true rounds ------------------------

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        if self.completed:
            log(INFO, "resuming run %s after round %d", self.strategy.config["run_id"], self.completed)
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        mark("round_started")  # start-up marks (fedmpq_flwr.rundir.startup): this wrapper sees every round
        instructions = self.strategy.configure_fit(self.true_round(server_round), parameters, client_manager)
        extra: dict[str, Scalar] = {DIR_KEY: str(self.clients_dir), TOKEN_KEY: self.token}
        return [(proxy, FitIns(ins.parameters, {**ins.config, **extra})) for proxy, ins in instructions]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        return self.strategy.aggregate_fit(self.true_round(server_round), results, failures)

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        return self.strategy.configure_evaluate(self.true_round(server_round), parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[float | None, dict]:
        return self.strategy.aggregate_evaluate(self.true_round(server_round), results, failures)

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """The method's evaluation (round 0 is Flower's look at the initial model: passed as 0), then,
        after a real round, the checkpoint of that round."""
        if server_round == 0:
            return self.strategy.evaluate(0, parameters)
        true_round = self.true_round(server_round)
        result = self.strategy.evaluate(true_round, parameters)
        self.save(true_round, self.strategy.latest_parameters)  # what `parameters` serialises
        mark("round_finished")
        return result
