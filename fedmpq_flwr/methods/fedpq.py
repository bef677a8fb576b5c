"""FedPQ: fixed-precision quantized FedAvg, the "AQFL" arm of the official FedMPQ code
(`client/client_aqfl.py`, `server/server_aqfl.py`; AQFL: Abdelmoniem & Canini, EuroMLSys'21).

Everything is FedMPQ's (bit-plane student, 4-bit activations, `CE + lambda_b * group_lasso /
total_params`, re-binarization with `quant.rounding`, the same optimizer; decode-and-average on the
server, weighted by `strategy.weighting`) except the bits: every quantized layer of client k (the
classifier's bias too) runs at k's integer budget (`quant.budgets`, or `quant.avg_bits` for all) in
every round, uniform inside a client and heterogeneous across clients. So the client does not prune
after local training (it reports zero reductions) and the server never re-allocates bits. A budget
that is not a whole number is a config error (the catalog's `check` for this method).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fedmpq_flwr.methods.fedmpq import FedMPQClient, FedMPQStrategy
from fedmpq_flwr.quant import layer_bits
from fedmpq_flwr.rundir.results import RunRecorder
from fedmpq_flwr.server.update import ClientUpdate


class FedPQClient(FedMPQClient):
    """A FedMPQ client that keeps the bits it was given: no pruning after local training."""

    def prune(self, student: nn.Module) -> dict[str, int]:
        return dict.fromkeys(layer_bits(student), 0)


class FedPQStrategy(FedMPQStrategy):
    """FedMPQ's decode-and-average server with a fixed assignment: every layer at the client's budget."""

    def __init__(self, config: dict[str, Any], recorder: RunRecorder) -> None:
        super().__init__(config, recorder)
        self.bits = {pid: self.uniform_bits(budget) for pid, budget in self.budgets.items()}

    def uniform_bits(self, budget: float) -> dict[str, int]:
        """Every quantized layer at `budget` bits (config validation has checked it is whole)."""
        if not float(budget).is_integer():
            raise ValueError(f"fedpq needs whole-number budgets, got {budget}")
        return dict.fromkeys(self.layer_sizes, int(budget))

    def next_bits(self, updates: list[ClientUpdate]) -> dict[int, dict[str, int]]:
        """No re-allocation: the same bits in every round."""
        return self.bits
