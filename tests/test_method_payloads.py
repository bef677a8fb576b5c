"""The catalog's declared payloads (`MethodSpec.payload`) against what each method's real client and
strategy send in two rounds without Flower's runtime: every declared array part and instruction is
sent, nothing undeclared is, and the server's next messages, bits and global model do not depend on
any report left out of the declaration (those only feed the run's record)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common import Code, FitRes, RecordDict, Status, ndarrays_to_parameters

from fedmpq_flwr.config import deep_merge, validate
from fedmpq_flwr.methods.catalog import CATALOG, Payload
from fedmpq_flwr.methods.registry import load_method
from fedmpq_flwr.quant.qsgd import num_buckets
from fedmpq_flwr.quant.svd import svd_decode

CLIENTS = 2


@dataclass
class Sent:
    """One message being read part by part: its arrays, the round's global model and what came with it."""

    arrays: list[np.ndarray] = field(repr=False)
    global_model: list[np.ndarray] = field(repr=False)
    scalars: dict[str, Any] = field(repr=False)  # the fit instructions (download) or the client's reports (upload)
    instructions: dict[str, Any] = field(repr=False)
    config: dict[str, Any] = field(repr=False)
    position: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # what an earlier part says a later one holds

    def take(self, count: int) -> list[np.ndarray]:
        taken = self.arrays[self.position : self.position + count]
        assert len(taken) == count, f"{count} arrays expected at position {self.position}, {len(taken)} left"
        self.position += count
        return taken


def model_shaped(sent: Sent, dtypes: tuple[str, ...]) -> list[np.ndarray]:
    """One array per global-model entry, in its shape, of one of `dtypes`."""
    arrays = sent.take(len(sent.global_model))
    assert [a.shape for a in arrays] == [g.shape for g in sent.global_model]
    assert {str(a.dtype) for a in arrays} <= set(dtypes)
    return arrays


def global_model(sent: Sent) -> int:
    arrays = model_shaped(sent, ("float32",))
    assert all(np.array_equal(a, g) for a, g in zip(arrays, sent.global_model))
    return len(arrays)


def history_teacher(sent: Sent) -> int:
    count = int(sent.instructions["teacher_arrays"])  # 0 in round 1: no aggregated model yet
    if count:
        model_shaped(sent, ("float32",))
    return count


def float_model(sent: Sent) -> int:
    return len(model_shaped(sent, ("float32",)))


def codes(sent: Sent) -> int:
    arrays = model_shaped(sent, ("int16", "float32"))  # codes of quantized entries, float32 for the others
    sent.counts["scales"] = sum(a.dtype == np.int16 for a in arrays)
    assert sent.counts["scales"] > 0
    return len(arrays)


def one_vector(sent: Sent, part: str) -> int:
    (vector,) = sent.take(1)
    assert vector.dtype == np.float32 and vector.ndim == 1 and vector.size == sent.counts[part]
    return 1


def qsgd_levels(sent: Sent) -> int:
    arrays = model_shaped(sent, ("int8", "float32"))  # levels of trained entries, raw BatchNorm statistics
    bucket = sent.config["paq"]["bucket"]
    sent.counts["bucket_norms"] = sum(num_buckets(a.size, bucket) for a in arrays if a.dtype == np.int8)
    assert sent.counts["bucket_norms"] > 0
    return len(arrays)


def svd_factors(sent: Sent) -> int:
    layout = json.loads(sent.scalars["svd_layout"])
    arrays = sent.take(sum(1 if rank == 0 else 3 for rank in layout))
    decoded = svd_decode(arrays, layout, [g.shape for g in sent.global_model])
    assert [d.shape for d in decoded] == [g.shape for g in sent.global_model]
    return len(arrays)


# How to read each part a payload may name; returns how many arrays it held in this message.
PARTS: dict[str, Callable[[Sent], int]] = {
    "global_model": global_model,
    "history_teacher": history_teacher,
    "float_weights": float_model,
    "scaled_delta": float_model,
    "codes": codes,
    "scales": lambda sent: one_vector(sent, "scales"),
    "qsgd_levels": qsgd_levels,
    "bucket_norms": lambda sent: one_vector(sent, "bucket_norms"),
    "svd_factors": svd_factors,
}


def read_parts(sent: Sent, parts: tuple[str, ...], seen: set[str]) -> None:
    """Read the declared parts in order: nothing may be left over; `seen` collects the non-empty ones."""
    for part in parts:
        if PARTS[part](sent):
            seen.add(part)
    assert sent.position == len(sent.arrays), f"{len(sent.arrays) - sent.position} undeclared arrays"


def without_undeclared(metrics: dict[str, Any], payload: Payload) -> dict[str, Any]:
    """The reports with every value the declaration leaves out set to 0 (all of them numbers)."""
    undeclared = {k: v for k, v in metrics.items() if k not in payload.upload.fields}
    assert all(isinstance(v, (int, float)) for v in undeclared.values()), f"undeclared non-numbers: {undeclared}"
    return {**metrics, **dict.fromkeys(undeclared, 0)}


CASES = {
    "fedavg": {},
    "fedmpq": {},
    "fedmpq_kd": {},
    # the history teacher travels once the buffer holds two models: round 3
    "fedmpq_kd_history": {"strategy": {"name": "fedmpq_kd"}, "kd": {"teacher": "history"}, "train": {"num_rounds": 3}},
    "fedpq": {},
    "fedpaq": {},
    "qffl": {},
    "fedgkd": {"train": {"num_rounds": 3}},
    "fedkd": {"model": {"name": "resnet20"}},  # the mentor needs the mentee's stages
}


def case_config(case: str, results_dir: Path, run_id: str) -> dict[str, Any]:
    base = {
        "run_id": run_id,
        "seed": 1,
        "results_dir": str(results_dir),
        "model": {"name": "tiny_cnn"},
        "strategy": {"name": case},
        "dataset": {"name": "synthetic", "synthetic_train_size": 48, "synthetic_test_size": 20, "alpha": "inf"},
        "train": {"num_rounds": 2, "batch_size": 16},
        "quant": {"budgets": [2, 3]},
        "federation": {"num_clients": CLIENTS, "device": "cpu"},
    }
    return validate(deep_merge(base, CASES[case]))


def test_every_method_of_the_catalog_is_checked() -> None:
    assert {(CASES[case].get("strategy") or {}).get("name", case) for case in CASES} == set(CATALOG)


@pytest.mark.parametrize("case", list(CASES))
def test_the_declared_payload_is_what_the_method_sends(case: str, tmp_path: Path, fl) -> None:
    config = case_config(case, tmp_path, "sent")
    name = config["strategy"]["name"]
    payload = CATALOG[name].payload(config)
    method = load_method(name)
    strategy = fl.strategy(config)
    twin = fl.strategy(case_config(case, tmp_path, "twin"))  # gets the replies with undeclared reports zeroed
    states = {pid: RecordDict() for pid in range(CLIENTS)}
    seen_down: set[str] = set()
    seen_up: set[str] = set()
    for server_round in range(1, config["train"]["num_rounds"] + 1):
        sent = strategy.fit_arrays(server_round, strategy.latest_parameters)
        assert all(np.array_equal(a, b) for a, b in zip(sent, twin.fit_arrays(server_round, twin.latest_parameters)))
        for server in (strategy, twin):
            server.start_round(server_round, sorted(states), sent)
        replies, twin_replies = [], []
        for pid, state in states.items():
            instructions = strategy.fit_config(server_round, pid)
            assert twin.fit_config(server_round, pid) == instructions
            assert set(instructions) == set(payload.download.fields)
            down = Sent(sent, strategy.latest_parameters, instructions, instructions, config)
            read_parts(down, payload.download.arrays, seen_down)
            client = method.build_client(config, pid, CLIENTS, state)
            weights, num_examples, metrics = client.fit(sent, instructions)
            assert set(payload.upload.fields) <= {"num_examples", *metrics}
            up = Sent(weights, strategy.latest_parameters, metrics, instructions, config)
            read_parts(up, payload.upload.arrays, seen_up)
            parameters = ndarrays_to_parameters(weights)
            replies.append((None, FitRes(Status(Code.OK, ""), parameters, num_examples, metrics)))
            twin_metrics = without_undeclared(metrics, payload)
            twin_replies.append((None, FitRes(Status(Code.OK, ""), parameters, num_examples, twin_metrics)))
        strategy.aggregate_fit(server_round, replies, [])
        twin.aggregate_fit(server_round, twin_replies, [])
        assert twin.current.fit.bits_up == strategy.current.fit.bits_up
        assert all(np.array_equal(a, b) for a, b in zip(strategy.latest_parameters, twin.latest_parameters))
    # every declared part was sent in some round (the history teacher from round 3 on)
    assert (seen_down, seen_up) == (set(payload.download.arrays), set(payload.upload.arrays))


def test_fedmpq_kd_sends_fedmpq_s_payload_unless_the_server_sends_the_history_teacher() -> None:
    teachers = ("frozen", "updating", "history")
    payloads = {
        t: CATALOG["fedmpq_kd"].payload(validate({"strategy": {"name": "fedmpq_kd"}, "kd": {"teacher": t}}))
        for t in teachers
    }
    fedmpq = CATALOG["fedmpq"].payload(validate({"strategy": {"name": "fedmpq"}}))
    assert payloads["frozen"] == payloads["updating"] == fedmpq
    assert payloads["history"].upload == fedmpq.upload and payloads["history"].download != fedmpq.download
