"""What a node keeps between rounds (Flower's `context.state`), saved with the run's checkpoint.

A method keeps per-node state by putting `ArrayRecord`, `ConfigRecord` or `MetricRecord` entries in
the client's `self.state`; nothing else is needed for a resumed run to get them back. After a fit in
which the state changed, the client writes it to `checkpoint/clients/partition_<id>.round_<r>.npz`
(`fedmpq_flwr.rundir.checkpoint`); a node that starts with no state (a resumed run's fresh SuperNode)
restores the newest file written before the current round by the same run (the run's checkpoint
token, sent with the fit instructions). Without those instructions (a client driven directly, as
in unit tests) nothing is saved or restored.

In simulation the run folder is shared by the server and all nodes; under the Deployment Engine
each node writes the folder named by the server's path on its own disk (docs/resume.md).
"""

from __future__ import annotations

import base64
import copy
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.common import ArrayRecord, ConfigRecord, MetricRecord, RecordDict, log

from fedmpq_flwr.rundir.checkpoint import load_node_file, save_node_file

# Keys of the fit instructions that the checkpointing server adds (`fedmpq_flwr.server.resume`).
DIR_KEY = "checkpoint_clients_dir"
TOKEN_KEY = "checkpoint_token"
# A node's own note that it has looked for saved state in this run (not saved itself).
RESTORED_KEY = "fedmpq.checkpoint.restored"
KINDS = {ArrayRecord: "array", ConfigRecord: "config", MetricRecord: "metric"}


def _encode_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [_encode_value(item) for item in value]
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        return base64.b64decode(value["bytes"])
    if isinstance(value, list):
        return [_decode_value(item) for item in value]
    return value


def state_to_arrays(state: RecordDict) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A node's records as named arrays plus a JSON-able description (the node's own note left out)."""
    arrays: dict[str, np.ndarray] = {}
    records = []
    for index, (name, record) in enumerate(state.items()):
        if name == RESTORED_KEY:
            continue
        kind = KINDS.get(type(record))
        if kind is None:
            raise TypeError(f"context.state[{name!r}] is a {type(record).__name__}, which cannot be checkpointed")
        if kind == "array":
            keys = list(record.keys())
            for position, key in enumerate(keys):
                arrays[f"r{index}.{position}"] = record[key].numpy()
            records.append({"name": name, "kind": kind, "index": index, "keys": keys})
        else:
            records.append({"name": name, "kind": kind, "values": {k: _encode_value(v) for k, v in record.items()}})
    return arrays, {"records": records}


def arrays_to_state(arrays: dict[str, np.ndarray], meta: dict[str, Any], state: RecordDict) -> None:
    """Put the records `state_to_arrays` described back into `state`."""
    for entry in meta["records"]:
        if entry["kind"] == "array":
            state[entry["name"]] = ArrayRecord(
                array_dict={
                    key: Array(np.ascontiguousarray(arrays[f"r{entry['index']}.{position}"]))
                    for position, key in enumerate(entry["keys"])
                }
            )
        else:
            values = {key: _decode_value(value) for key, value in entry["values"].items()}
            state[entry["name"]] = ConfigRecord(values) if entry["kind"] == "config" else MetricRecord(values)


def snapshot(state: RecordDict) -> list[tuple[str, type, Any]]:
    """What `state` holds now, cheaply: array records by the identity of their `Array` objects and
    bytes (immutable: a method that changes an array record puts new ones in), the other records
    by value. Equal snapshots before and after a fit: nothing to write."""
    taken: list[tuple[str, type, Any]] = []
    for name, record in state.items():
        if name == RESTORED_KEY:
            continue
        if isinstance(record, ArrayRecord):
            taken.append((name, ArrayRecord, [(key, array, array.data) for key, array in record.items()]))
        else:
            taken.append((name, type(record), copy.deepcopy(dict(record))))
    return taken


def unchanged(before: list[tuple[str, type, Any]], state: RecordDict) -> bool:
    """Whether `state` holds what `snapshot` took."""
    now = snapshot(state)
    if [(name, kind) for name, kind, _ in before] != [(name, kind) for name, kind, _ in now]:
        return False
    for (_, kind, old), (_, _, new) in zip(before, now):
        if kind is ArrayRecord:
            if len(old) != len(new) or any(
                k1 != k2 or a1 is not a2 or d1 is not d2 for (k1, a1, d1), (k2, a2, d2) in zip(old, new)
            ):
                return False
        elif old != new:
            return False
    return True


class NodeStateCheckpoint:
    """Restores and saves one node's `context.state` around one fit."""

    def __init__(self, directory: Path, token: str, partition_id: int, server_round: int) -> None:
        self.directory = directory
        self.token = token
        self.partition_id = partition_id
        self.server_round = server_round
        self.before: list[tuple[str, type, Any]] = []

    @classmethod
    def from_fit_config(
        cls, config: dict[str, Any], partition_id: int, server_round: int
    ) -> NodeStateCheckpoint | None:
        """The checkpoint of this fit, or None when the server sent no checkpoint instructions."""
        if not config.get(DIR_KEY) or not config.get(TOKEN_KEY):
            return None
        return cls(Path(str(config[DIR_KEY])), str(config[TOKEN_KEY]), partition_id, server_round)

    def begin(self, state: RecordDict) -> None:
        """On the node's first fit of this run: restore the state it had when the run stopped."""
        if RESTORED_KEY not in state:
            saved = load_node_file(self.directory, self.partition_id, self.server_round, self.token)
            if saved is not None:
                arrays_to_state(*saved, state)
            state[RESTORED_KEY] = ConfigRecord({"from_round": int(saved[1]["round"]) if saved else 0})
        self.before = snapshot(state)

    def end(self, state: RecordDict) -> None:
        """After the fit: save the state if it changed."""
        if unchanged(self.before, state):
            return
        arrays, meta = state_to_arrays(state)
        try:
            save_node_file(self.directory, self.partition_id, self.server_round, self.token, arrays, meta)
        except OSError as err:  # e.g. a SuperNode that cannot write the server's path: train on, unsaved
            log(WARNING, "partition %d: node state not checkpointed in %s (%s)", self.partition_id, self.directory, err)
