"""Flower ClientApp: builds the configured method's client for this node.

Everything a client needs comes from the run config (sent by the SuperLink) and its node config
(`flower-supernode --node-config`): `partition-id`, `num-partitions` and, optionally, `data-path`,
the node's own copy of the dataset, which replaces the run config's `dataset.path` on that node.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from flwr.client import Client, ClientApp
from flwr.common import Context

from fedmpq_flwr.config import from_flower_run_config
from fedmpq_flwr.methods.registry import load_method
from fedmpq_flwr.rundir.startup import mark

DATA_PATH_KEY = "data-path"  # node config key: this node's dataset directory


@lru_cache(maxsize=4)
def _run_config(items: tuple[tuple[str, Any], ...], num_partitions: int, data_path: str) -> dict[str, Any]:
    """The validated config of a run, parsed once per process (Flower calls `client_fn` per message)."""
    overrides = {"dataset": {"path": data_path}} if data_path else None
    return from_flower_run_config(dict(items), num_clients=num_partitions, overrides=overrides)


def run_config(raw: Mapping[str, Any], num_partitions: int, data_path: str = "") -> dict[str, Any]:
    """A private copy of the cached config: a client may not change what the next one reads."""
    return copy.deepcopy(_run_config(tuple(sorted(raw.items())), num_partitions, data_path))


def client_fn(context: Context) -> Client:
    mark("client_started")  # the first one tells when Ray and an actor were up (fedmpq_flwr.rundir.startup)
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    data_path = str(context.node_config.get(DATA_PATH_KEY, "") or "")
    config = run_config(context.run_config, num_partitions, data_path)
    method = load_method(config["strategy"]["name"])
    return method.build_client(config, partition_id, num_partitions, context.state).to_client()


app = ClientApp(client_fn=client_fn)
