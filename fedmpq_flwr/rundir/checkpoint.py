"""Checkpoint files of an unfinished run: what a rerun of the same command resumes from.

Layout, `<results_dir>/<run_id>/checkpoint/` (removed when the run finishes):
  server.npz                          the server after its latest completed round (`ServerCheckpoint`)
  clients/partition_<id>.round_<r>.npz  what the node of one partition kept in Flower's `context.state`
                                      after round r (only for methods that keep something there)

Every file is one `.npz` written through a temporary file, flushed to disk and renamed over the old
one, so a run killed at any moment leaves either the previous or the new file, never half of one.
Each holds float arrays plus `meta`, a JSON document stored as bytes (no pickle).

Pure numpy: the runner reads a checkpoint's round and config without importing torch or Flower.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmpq_flwr.rundir.results import CHECKPOINT_DIR

FORMAT = 1
SERVER_FILE = "server.npz"
CLIENTS_DIR = "clients"
META_KEY = "meta"
NODE_FILE = re.compile(r"^partition_(\d+)\.round_(\d+)\.npz$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unreadable, or not matching the run's other files)."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def save_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> int:
    """Write `arrays` and `meta` to `path` atomically (temporary file, fsync, rename); return its size."""
    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY!r} is reserved for the metadata")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(tmp, "wb") as handle:
        np.savez(handle, **{META_KEY: payload}, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    size = tmp.stat().st_size
    tmp.replace(path)
    return size


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata of a file `save_npz` wrote (reads only that entry)."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(data[META_KEY].tobytes().decode())


def load_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of a file `save_npz` wrote."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if name != META_KEY}
        meta = json.loads(data[META_KEY].tobytes().decode())
    return arrays, meta


def _indexed(prefix: str, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}.{index:04d}": np.asarray(array) for index, array in enumerate(arrays)}


def _unindexed(prefix: str, arrays: dict[str, np.ndarray], count: int) -> list[np.ndarray]:
    return [arrays[f"{prefix}.{index:04d}"] for index in range(count)]


@dataclass
class ServerCheckpoint:
    """The server after round `round`: everything a resumed run needs to continue identically."""

    round: int  # the last completed round (1-based, the TRUE round number)
    num_rounds: int  # the run's total
    token: str  # identifies the run across its attempts (the clients' state files carry it)
    started_at: str  # start time of the run's first attempt (results.json metadata)
    config: dict[str, Any]  # the resolved config of the run
    parameters: list[np.ndarray]  # the global model after `round`
    sampler: dict[str, Any]  # the client sampler's RNG state (numpy bit_generator.state)
    torch_rng: np.ndarray  # the server process's torch RNG state
    method_arrays: list[np.ndarray] = field(default_factory=list)  # the method's `server_state` arrays
    method_meta: dict[str, Any] = field(default_factory=dict)  # and its JSON-able part

    def save(self, run_dir: str | Path) -> int:
        """Write `checkpoint/server.npz` atomically; return its size in bytes."""
        meta = {
            "format": FORMAT,
            "round": self.round,
            "num_rounds": self.num_rounds,
            "token": self.token,
            "started_at": self.started_at,
            "config": self.config,
            "sampler": self.sampler,
            "method": self.method_meta,
            "num_parameters": len(self.parameters),
            "num_method_arrays": len(self.method_arrays),
        }
        arrays = {
            **_indexed("global", self.parameters),
            **_indexed("method", self.method_arrays),
            "torch_rng": np.asarray(self.torch_rng, dtype=np.uint8),
        }
        return save_npz(checkpoint_dir(run_dir) / SERVER_FILE, arrays, meta)

    @classmethod
    def load(cls, run_dir: str | Path) -> ServerCheckpoint | None:
        """The run's server checkpoint, None when there is none; CheckpointError when unreadable."""
        path = checkpoint_dir(run_dir) / SERVER_FILE
        if not path.is_file():
            return None
        try:
            arrays, meta = load_npz(path)
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r}, expected {FORMAT}")
            return cls(
                round=int(meta["round"]),
                num_rounds=int(meta["num_rounds"]),
                token=str(meta["token"]),
                started_at=str(meta["started_at"]),
                config=meta["config"],
                parameters=_unindexed("global", arrays, int(meta["num_parameters"])),
                sampler=meta["sampler"],
                torch_rng=arrays["torch_rng"],
                method_arrays=_unindexed("method", arrays, int(meta["num_method_arrays"])),
                method_meta=meta["method"],
            )
        except (OSError, ValueError, KeyError) as err:  # zipfile.BadZipFile and JSON errors are ValueErrors
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(f"{path}: unreadable checkpoint ({err}); use --overwrite to start again") from None


def checkpoint_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """`round`, `num_rounds` and `config` of the run's server checkpoint (None without one), read
    without loading its arrays; CheckpointError when unreadable."""
    path = checkpoint_dir(run_dir) / SERVER_FILE
    if not path.is_file():
        return None
    try:
        meta = read_meta(path)
        return {"round": int(meta["round"]), "num_rounds": int(meta["num_rounds"]), "config": meta["config"]}
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err}); use --overwrite to start again") from None


def remove_partial_files(run_dir: str | Path) -> None:
    """Delete temporary files a killed writer left in the checkpoint folder (never read)."""
    for path in checkpoint_dir(run_dir).rglob(".*.tmp"):
        path.unlink(missing_ok=True)


def remove_checkpoint(run_dir: str | Path) -> None:
    """Delete the run's checkpoint folder (a finished run, or a run started afresh)."""
    shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)


# ---- the state a node keeps between rounds ------------------------------------------------


def node_files(directory: Path, partition_id: int) -> dict[int, Path]:
    """Round -> state file of one partition's node in `directory`."""
    found = {}
    if directory.is_dir():
        for path in directory.iterdir():
            match = NODE_FILE.match(path.name)
            if match and int(match.group(1)) == partition_id:
                found[int(match.group(2))] = path
    return found


def save_node_file(
    directory: Path, partition_id: int, server_round: int, token: str, arrays: dict[str, np.ndarray], meta: dict
) -> int:
    """Write the state one node holds after `server_round`; return the file's size.

    Kept per partition: this file and the newest older one. The server's checkpoint is at most one
    round behind the round in which a node writes (it is saved before the next round starts), so a
    resumed run always finds the state as of its checkpoint's round among these two.
    """
    older = [r for r in node_files(directory, partition_id) if r < server_round]
    keep = max(older, default=None)
    for saved_round, path in node_files(directory, partition_id).items():
        if saved_round not in (keep, server_round):
            path.unlink(missing_ok=True)
    meta = {"format": FORMAT, "token": token, "partition_id": partition_id, "round": server_round, **meta}
    return save_npz(directory / f"partition_{partition_id}.round_{server_round}.npz", arrays, meta)


def load_node_file(
    directory: Path, partition_id: int, before_round: int, token: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The newest state of one partition's node saved before `before_round` by this run (same
    token), or None when there is none."""
    for saved_round in sorted(node_files(directory, partition_id), reverse=True):
        if saved_round >= before_round:
            continue
        path = directory / f"partition_{partition_id}.round_{saved_round}.npz"
        try:
            arrays, meta = load_npz(path)
        except (OSError, ValueError):
            continue  # removed meanwhile, or unreadable: an older one may serve
        if meta.get("token") == token:
            return arrays, meta
    return None
