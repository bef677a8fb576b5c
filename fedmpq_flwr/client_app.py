"""Flower ClientApp: builds the configured method's client for this node."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from flwr.client import Client, ClientApp
from flwr.common import Context

from fedmpq_flwr.config import from_flower_run_config
from fedmpq_flwr.methods.registry import load_method


@lru_cache(maxsize=4)
def _run_config(items: tuple[tuple[str, Any], ...], num_partitions: int) -> dict[str, Any]:
    """The validated config of a run, parsed once per process (Flower calls `client_fn` per message)."""
    return from_flower_run_config(dict(items), num_clients=num_partitions)


def run_config(raw: Mapping[str, Any], num_partitions: int) -> dict[str, Any]:
    """A private copy of the cached config: a client may not change what the next one reads."""
    return copy.deepcopy(_run_config(tuple(sorted(raw.items())), num_partitions))


def client_fn(context: Context) -> Client:
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    config = run_config(context.run_config, num_partitions)
    client_cls = load_method(config["strategy"]["name"]).client
    return client_cls(config, partition_id, num_partitions, context.state).to_client()


app = ClientApp(client_fn=client_fn)
