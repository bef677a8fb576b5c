"""Flower ClientApp: builds the registered client of the configured method for this node."""

from __future__ import annotations

from flwr.client import Client, ClientApp
from flwr.common import Context

from fedmpq_flwr.config import from_flower_run_config
from fedmpq_flwr.methods import METHODS


def client_fn(context: Context) -> Client:
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    config = from_flower_run_config(context.run_config, num_clients=num_partitions)
    client_cls = METHODS[config["strategy"]["name"]].client
    return client_cls(config, partition_id, num_partitions, context.state).to_client()


app = ClientApp(client_fn=client_fn)
