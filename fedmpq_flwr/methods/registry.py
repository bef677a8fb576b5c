"""Catalog name -> the client and strategy classes of the method (imports torch and Flower)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache

from flwr.client import NumPyClient
from flwr.common import RecordDict
from flwr.server.strategy import Strategy

from fedmpq_flwr.client.guard import GuardedClient
from fedmpq_flwr.methods.catalog import CATALOG


@dataclass(frozen=True)
class Method:
    client: type[NumPyClient]
    strategy: type[Strategy]

    def build_client(
        self, config: dict, partition_id: int, num_partitions: int, state: RecordDict | None = None
    ) -> GuardedClient:
        """The method's client for one node, inside the guard every client runs in (`fedmpq_flwr.client.guard`)."""
        return GuardedClient(self.client(config, partition_id, num_partitions, state))


@cache
def load_method(name: str) -> Method:
    """The client and strategy classes that the catalog entry names."""
    if name not in CATALOG:
        raise ValueError(f"strategy.name {name!r} is unknown (options: {', '.join(CATALOG)})")
    spec = CATALOG[name]
    module = importlib.import_module(f"fedmpq_flwr.methods.{spec.module}")
    return Method(client=getattr(module, spec.client), strategy=getattr(module, spec.strategy))
