"""`GuardedClient`: what every method's client runs inside, so that a method's `fit` is only its training.

Like Flower's client mods around a ClientApp, the guard wraps a method's `NumPyClient` and adds, to
every `fit`:
- the node's state between rounds: a resumed run's fresh node gets back what it kept
  (`fedmpq_flwr.rundir.node_state`), saved again once the round's training is done;
- the cost of the round: `client_time_s`, peak host and GPU memory, and the `partition_id` the server
  sorts the updates by;
- failures: an exception, a NaN or infinite training loss or upload, and a seeded dropout after
  training (`federation.dropout`, drawn from the run seed, the round and the partition) raise a
  `ClientFailure` naming the partition, which Flower hands to the strategy as this client's failure.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flwr.client import NumPyClient

from fedmpq_flwr.client.failures import (
    ClientDropout,
    ClientFailure,
    drops_out,
    error_line,
    non_finite_problem,
)
from fedmpq_flwr.rundir.node_state import NodeStateCheckpoint
from fedmpq_flwr.training.costs import peak_gpu_mb, peak_rss_mb, reset_peak_gpu


class GuardedClient(NumPyClient):
    """A method's client (`inner`, a `FedAvgClient`) with node state, costs and failures around its `fit`."""

    def __init__(self, inner: NumPyClient) -> None:
        self.inner = inner

    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        return self.inner.get_properties(config)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        inner = self.inner
        server_round = int(config["server_round"])
        started = time.perf_counter()
        reset_peak_gpu(inner.device)
        node_state = NodeStateCheckpoint.from_fit_config(config, inner.partition_id, server_round)
        try:
            if node_state is not None:
                node_state.begin(inner.state)
            weights, num_examples, metrics = inner.fit(parameters, config)
            if node_state is not None:
                node_state.end(inner.state)
        except ClientFailure:
            raise
        except Exception as err:
            raise ClientFailure(inner.partition_id, error_line(err)) from err
        metrics.update(
            partition_id=inner.partition_id,
            client_time_s=time.perf_counter() - started,
            peak_rss_mb=peak_rss_mb(),
            **peak_gpu_mb(inner.device),
        )
        problem = non_finite_problem(metrics.get("train_loss"), weights)
        if problem is not None:
            raise ClientFailure(inner.partition_id, problem)
        if drops_out(inner.config["seed"], server_round, inner.partition_id, inner.config["federation"]["dropout"]):
            raise ClientDropout(inner.partition_id, server_round)
        return weights, num_examples, metrics
