"""What the benchmarks share: timing, training steps on random CIFAR-shaped batches, the quantized-against-float
step comparison, and a federated round called in-process.

Each benchmark imports this module, never another benchmark, so any of them can change alone.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from flwr.common import Code, FitRes, RecordDict, Status, ndarrays_to_parameters
from torch import nn

from fedmpq_flwr.methods.registry import Method
from fedmpq_flwr.models import MODELS, build_model
from fedmpq_flwr.quant import (
    bit_regularizer,
    quant_rules,
    quantizable_layers,
    quantize_model,
    quantized_param_count,
    rebinarize_model,
)

BATCH = 64
NUM_CLASSES = 10
LAMBDA_BIT = 0.01

Batches = list[tuple[torch.Tensor, torch.Tensor]]


# ---- timing ---------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timing covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds of one call of `fn`, bracketed by `sync`."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls of `action`."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# ---- training steps -------------------------------------------------------------------------


class Stepper:
    """One model, its optimizer and its step split in phases (each phase a callable); a quantized model's loss
    is what a FedMPQ client optimises (CE + LAMBDA_BIT * bit regularizer / quantized parameters), and its step
    ends with the stochastic re-binarization."""

    def __init__(self, model: nn.Module, device: torch.device, quantized: bool, seed: int) -> None:
        self.model = model.to(device).train()
        self.device = device
        self.quantized = quantized
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.count = quantized_param_count(self.model) if quantized else 0
        self.generator = torch.Generator(device=device).manual_seed(seed) if quantized else None
        self.loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        if self.quantized:
            loss = loss + LAMBDA_BIT * bit_regularizer(self.model) / self.count
        self.loss = loss

    def backward(self) -> None:
        assert self.loss is not None
        self.loss.backward()

    def optimizer(self) -> None:
        self.opt.step()

    def rebinarize(self) -> None:
        if self.quantized:
            rebinarize_model(self.model, self.generator)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.forward(x, y)
        self.backward()
        self.optimizer()
        self.rebinarize()


def make_batches(n: int, batch: int, device: torch.device, seed: int) -> Batches:
    """`n` seeded batches of random 3x32x32 images and labels of NUM_CLASSES classes."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, 3, 32, 32, generator=gen).to(device),
            torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device),
        )
        for _ in range(n)
    ]


def interleaved(
    steppers: dict[str, Stepper], batches: Batches, steps: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Median-ready step times of each stepper; the order alternates every iteration, so slow drift of the
    machine hits all alike."""
    names = list(steppers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + steps):
        x, y = batches[i % len(batches)]
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            t = timed(lambda s=steppers[name], x=x, y=y: s.step(x, y), device)
            if i >= warmup:
                times[name].append(t)
    return times


def quant_step_ratio(
    name: str,
    device: torch.device,
    *,
    tiny: bool = False,
    bits: int = 4,
    act_bits: int = 4,
    batch: int = BATCH,
    steps: int = 20,
    warmup: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Interleaved float and quantized (`bits` per layer, `act_bits` activations) steps of one registry model
    (`tiny`: at its small test size); prints a table, returns the medians and their ratio."""
    size = dict(MODELS[name].tiny) if tiny else {}
    label = f"{name}{' (tiny)' if tiny else ''}"
    torch.manual_seed(seed)
    float_model = build_model(name, NUM_CLASSES, **size)
    assignment = {layer: bits for layer in quantizable_layers(float_model)}
    qmodel = quantize_model(float_model, assignment, act_bits)
    steppers = {
        "float": Stepper(float_model, device, quantized=False, seed=seed),
        "quant": Stepper(qmodel, device, quantized=True, seed=seed),
    }
    times = interleaved(steppers, make_batches(8, batch, device, seed), steps, warmup, device)
    fp_s, q_s = statistics.median(times["float"]), statistics.median(times["quant"])
    for stepper in steppers.values():
        assert stepper.loss is not None and torch.isfinite(stepper.loss), "training diverged: timings not meaningful"

    acts = f"{act_bits}-bit activations" if quant_rules(float_model).activations else "float activations"
    print(
        f"{label}, batch {batch}, {bits}-bit weights / {acts}, "
        f"device {device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"
    )
    print(f"{'model':<8}{'median s':>10}{'min s':>10}{'max s':>10}")
    for variant, values in times.items():
        print(f"{variant:<8}{statistics.median(values):>10.4f}{min(values):>10.4f}{max(values):>10.4f}")
    print(f"ratio quant/float: {q_s / fp_s:.3f}")
    return {
        "model": name,
        "tiny": tiny,
        "fp_step_s": round(fp_s, 6),
        "quant_step_s": round(q_s, 6),
        "ratio": round(q_s / fp_s, 4),
        "device": device.type,
        "threads": torch.get_num_threads(),
        "bits": bits,
        "act_bits": act_bits,
        "quantized_activations": bool(quant_rules(float_model).activations),
        "batch": batch,
        "steps": steps,
    }


# ---- federated rounds -----------------------------------------------------------------------


def inprocess_round(
    method: Method,
    strategy: Any,
    config: dict[str, Any],
    server_round: int,
    sampled: list[int],
    states: dict[int, RecordDict],
) -> None:
    """One round of a method's strategy and clients called directly, as Flower would (minus the transport and
    the runtime): what the benchmarks set against the Flower path. `states`: each node's `context.state`, kept
    between rounds."""
    num_clients = config["federation"]["num_clients"]
    sent = strategy.fit_arrays(server_round, strategy.latest_parameters)
    strategy.start_round(server_round, sampled, sent)
    results = []
    for pid in sampled:
        client = method.build_client(config, pid, num_clients, states[pid])
        weights, n, metrics = client.fit(sent, strategy.fit_config(server_round, pid))
        results.append((None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), n, metrics)))
    strategy.aggregate_fit(server_round, results, [])
    strategy.evaluate(server_round, ndarrays_to_parameters(strategy.latest_parameters))
