"""Registry of federated methods: name -> the client and strategy classes that implement it.

Adding a method is one new module with a client and a strategy subclass plus one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.client import NumPyClient

from fedmpq_flwr.client import FedAvgClient
from fedmpq_flwr.fedmpq import FedMPQClient, FedMPQStrategy
from fedmpq_flwr.fedmpq_kd import FedMPQKDClient
from fedmpq_flwr.strategy import FedAvgStrategy


@dataclass(frozen=True)
class Method:
    client: type[NumPyClient]
    strategy: type[FedAvgStrategy]


METHODS: dict[str, Method] = {
    "fedavg": Method(client=FedAvgClient, strategy=FedAvgStrategy),
    "fedmpq": Method(client=FedMPQClient, strategy=FedMPQStrategy),
    "fedmpq_kd": Method(client=FedMPQKDClient, strategy=FedMPQStrategy),  # the teacher stays on the client
}
