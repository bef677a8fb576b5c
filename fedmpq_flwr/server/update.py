"""`ClientUpdate`: one client's reply, parsed once per round and handed to every strategy hook."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.common import FitRes, NDArrays, Scalar, parameters_to_ndarrays


@dataclass(frozen=True)
class ClientUpdate:
    """What one client sent: its arrays, sample count and metrics, and the JSON fields its method
    declares (`encoded_metrics`, e.g. FedMPQ's per-layer `bits`) already decoded."""

    partition_id: int
    arrays: NDArrays
    num_examples: int
    metrics: dict[str, Scalar]
    decoded: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_fit_res(cls, fit_res: FitRes, encoded_metrics: Iterable[str] = ()) -> ClientUpdate:
        metrics = dict(fit_res.metrics)
        return cls(
            partition_id=int(metrics["partition_id"]),
            arrays=parameters_to_ndarrays(fit_res.parameters),
            num_examples=int(fit_res.num_examples),
            metrics=metrics,
            decoded={key: json.loads(str(metrics[key])) for key in encoded_metrics},
        )

    def replace_arrays(self, arrays: NDArrays) -> ClientUpdate:
        """The same reply with other arrays (a method's decoded upload)."""
        return ClientUpdate(self.partition_id, arrays, self.num_examples, self.metrics, self.decoded)


def parse_updates(fit_results: Iterable[FitRes], encoded_metrics: Iterable[str] = ()) -> list[ClientUpdate]:
    """The replies as updates sorted by partition id: a reproducible float summation order."""
    keys = tuple(encoded_metrics)
    return sorted((ClientUpdate.from_fit_res(res, keys) for res in fit_results), key=lambda u: u.partition_id)
