"""Benchmark: cost of one FedMPQ (bit-plane quantized) training step against a float step.

What it measures, in ONE process, on the same random CIFAR-shaped data (batch 64, 3x32x32,
10 classes), with SGD (momentum 0.9, lr 0.1):

* float step:     zero_grad, forward of a full-precision registry model (`--models`, default
                  ResNet-20), cross-entropy, backward, step;
* quantized step: the same for `quantize_model(model, {every layer: --bits}, act_bits)`, with
                  loss = CE + 0.01 * bit_regularizer / quantized_param_count (what a FedMPQ
                  client optimises), then `rebinarize_model` with a seeded generator (stochastic
                  rounding back to the N-bit grid, as after every client step).

The two steps are interleaved (alternating which goes first) after a warm-up, so slow drift of
the machine (thermal, other processes) hits both alike; the median of `--steps` timings of each
is reported, with their ratio. On CUDA every timing is bracketed by `torch.cuda.synchronize()`.
Default `--threads 1`: what one Flower client actor gets in the simulation here.

With `--profile` it also shows where the quantized step's extra time goes: median time of the
phases (forward / backward / optimizer step / rebinarize) of both models, ablations (quantized
weights with float activations; float weights with the model's declared activation quantizers;
both only for models that quantize activations) and torch.profiler's top operators by self CPU
time for one quantized step.

`--models` takes several registry names (comma-separated), measured one after the other;
`--tiny` builds each at its small test size (`MODELS[name].tiny`) instead of the documented one.

Run:
    .venv/bin/python experiments/bench/quant_step_cost.py                    # CPU, 1 thread, 4 bits
    .venv/bin/python experiments/bench/quant_step_cost.py --threads 2 --steps 30 --bits 8
    .venv/bin/python experiments/bench/quant_step_cost.py --device cuda --profile
    .venv/bin/python experiments/bench/quant_step_cost.py --models resnet20,mobilenet_v2,vit_small --tiny --steps 3
The output ends with one JSON line per model: {"model", "fp_step_s", "quant_step_s", "ratio", "device",
"threads", "quantized_activations" (false for a weight-only model such as vit_small), ...}.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Callable

import torch
from common import BATCH, NUM_CLASSES, Batches, Stepper, interleaved, make_batches, quant_step_ratio, sync, timed
from torch import nn

from fedmpq_flwr.models import MODELS, build_model
from fedmpq_flwr.quant import ACTIVATION_QUANTIZERS, quant_rules, quantizable_layers, quantize_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet20", help=f"comma-separated, of: {', '.join(MODELS)}")
    parser.add_argument("--tiny", action="store_true", help="build each model at its small test size")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each model (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each model first (default 3)")
    parser.add_argument("--bits", type=int, default=4, help="weight bits of every quantized layer (default 4)")
    parser.add_argument("--act-bits", type=int, default=4, help="activation bits (default 4)")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="also break the quantized step's time down")
    return parser.parse_args()


def phase_times(stepper: Stepper, batches: Batches, steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    phases: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "rebinarize": []}
    for i in range(warmup + steps):
        x, y = batches[i % len(batches)]
        measured = {
            "forward": timed(lambda x=x, y=y: stepper.forward(x, y), device),
            "backward": timed(stepper.backward, device),
            "optimizer": timed(stepper.optimizer, device),
            "rebinarize": timed(stepper.rebinarize, device),
        }
        if i >= warmup:
            for key, value in measured.items():
                phases[key].append(value)
    return {key: statistics.median(values) for key, values in phases.items()}


def swap_activations(model: nn.Module, declared: nn.Module, make: Callable[[str, str], nn.Module]) -> nn.Module:
    """Replace (in place) each activation that `declared`'s quantization rules name by
    `make(name, kind)`; `model` is `declared` or its quantized copy (same module names)."""
    for name, kind in quant_rules(declared).activations.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, make(name, kind))
    return model


def profile(args: argparse.Namespace, device: torch.device, name: str) -> None:
    """Where the quantized step's extra time goes: phases, ablations and torch.profiler's top operators."""
    size = dict(MODELS[name].tiny) if args.tiny else {}
    label = f"{name}{' (tiny)' if args.tiny else ''}"
    batches = make_batches(8, args.batch, device, args.seed)
    torch.manual_seed(args.seed)
    float_model = build_model(name, NUM_CLASSES, **size)
    bits = {layer: args.bits for layer in quantizable_layers(float_model)}
    fp = Stepper(build_model(name, NUM_CLASSES, **size), device, quantized=False, seed=args.seed)
    fp.model.load_state_dict(float_model.state_dict())
    quant = Stepper(quantize_model(float_model, bits, args.act_bits), device, quantized=True, seed=args.seed)

    print(f"\n== {label}: phases (median seconds) ==")
    fp_phases = phase_times(fp, batches, args.steps, args.warmup, device)
    q_phases = phase_times(quant, batches, args.steps, args.warmup, device)
    print(f"{'phase':<12}{'float':>10}{'quant':>10}{'extra':>10}")
    for key in fp_phases:
        print(f"{key:<12}{fp_phases[key]:>10.4f}{q_phases[key]:>10.4f}{q_phases[key] - fp_phases[key]:>+10.4f}")
    print(
        f"{'total':<12}{sum(fp_phases.values()):>10.4f}{sum(q_phases.values()):>10.4f}"
        f"{sum(q_phases.values()) - sum(fp_phases.values()):>+10.4f}"
    )

    variants = {"float": fp, "quant (weights + acts)": quant}
    if quant_rules(float_model).activations:  # weight-only models have no activation ablation
        variants["quant weights, float acts"] = Stepper(
            swap_activations(
                quantize_model(float_model, bits, args.act_bits),
                float_model,
                lambda layer, kind: copy.deepcopy(float_model.get_submodule(layer)),
            ),
            device,
            quantized=True,
            seed=args.seed,
        )
        variants["float weights, quant acts"] = Stepper(
            swap_activations(
                copy.deepcopy(float_model), float_model, lambda layer, kind: ACTIVATION_QUANTIZERS[kind](args.act_bits)
            ),
            device,
            quantized=False,
            seed=args.seed,
        )
    print(f"\n== {label}: ablations (interleaved, median step seconds) ==")
    times = interleaved(variants, batches, args.steps, args.warmup, device)
    base = statistics.median(times["float"])
    for variant, values in times.items():
        med = statistics.median(values)
        print(f"{variant:<28}{med:>10.4f}  x{med / base:.3f}")

    print(f"\n== {label}: torch.profiler, one quantized step, top ops by self CPU time ==")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    x, y = batches[0]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            quant.step(x, y)
        sync(device)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    if device.type == "cuda":
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12))


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise SystemExit(f"--models {args.models!r}: unknown {unknown} (options: {', '.join(MODELS)})")
    results = []
    for name in names:
        sizes = {"tiny": args.tiny, "bits": args.bits, "act_bits": args.act_bits, "batch": args.batch}
        results.append(quant_step_ratio(name, device, **sizes, steps=args.steps, warmup=args.warmup, seed=args.seed))
        if args.profile:
            profile(args, device, name)
        print()
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
