"""Which connected node holds which data partition, and this round's participants (seeded).

Sampling is by partition id, not by Flower node id (random per run), so the same seed samples the
same clients in every run.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from flwr.common import GetPropertiesIns
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy


class ClientSampler:
    """Seeded choice of `fraction` of the connected partitions each round."""

    def __init__(self, seed: int, fraction: float) -> None:
        self.fraction = fraction
        self.rng = np.random.default_rng([seed, 1])
        self.partition_of_node: dict[str, int] = {}

    def connected(self, client_manager: ClientManager) -> dict[int, ClientProxy]:
        """Partition id -> connected client, asking each new node for its partition once."""
        proxies = client_manager.all()
        unknown = [cid for cid in proxies if cid not in self.partition_of_node]
        if unknown:
            ins = GetPropertiesIns(config={})
            with ThreadPoolExecutor(max_workers=min(16, len(unknown))) as pool:
                replies = pool.map(lambda cid: proxies[cid].get_properties(ins, timeout=None, group_id=None), unknown)
                for cid, reply in zip(unknown, replies):
                    self.partition_of_node[cid] = int(reply.properties["partition_id"])
        return {self.partition_of_node[cid]: proxy for cid, proxy in proxies.items()}

    def state(self) -> dict:
        """The RNG's state (JSON-able): a sampler given it with `load_state` draws what this one would."""
        return self.rng.bit_generator.state

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def sample(self, available: list[int]) -> list[int]:
        """This round's participants, sorted (same seed and rounds, same participants)."""
        count = max(1, int(round(self.fraction * len(available))))
        return sorted(int(p) for p in self.rng.choice(sorted(available), size=count, replace=False))
