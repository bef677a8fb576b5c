"""Benchmark: what the FedMPQ-KD teacher adds to a client's local training, and where it goes.

Two measurements, in ONE process, one torch thread by default (what one Flower client actor gets):

1. **Client round** (`--rounds` > 0): `FedMPQClient.fit` against `FedMPQKDClient.fit` on the
   same partition, the same global model and bit assignment: data loading, conversion, local
   training, pruning and encoding, i.e. a client's whole compute in a round. The two alternate,
   the median of each is reported with the ratio KD/FedMPQ.
2. **Teacher forward** on one batch, in four variants, against one quantized student step
   (forward, CE + bit loss, backward, SGD, re-binarization): plain `no_grad` forward of the
   float model in eval mode; `inference_mode`; plus channels-last memory; plus BatchNorm folded
   into the convolutions (`distillation.inference_teacher`, what the client runs). The student step
   and the variants are interleaved; each share is teacher time / student step time.

Run:
    .venv/bin/python experiments/bench/kd_teacher_cost.py                              # synthetic data
    .venv/bin/python experiments/bench/kd_teacher_cost.py --data ../shared/data/cifar10 --rounds 5
    .venv/bin/python experiments/bench/kd_teacher_cost.py --steps 1 --rounds 1 --images 200  # a check of the script
The last line printed is JSON with every median and ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from common import Stepper, make_batches, timed
from flwr.common import RecordDict

from fedmpq_flwr.config import validate
from fedmpq_flwr.methods.fedmpq import FedMPQClient, FedMPQStrategy
from fedmpq_flwr.methods.fedmpq_kd import FedMPQKDClient
from fedmpq_flwr.models import build_model
from fedmpq_flwr.quant import quantizable_layers, quantize_model
from fedmpq_flwr.rundir.results import RunRecorder
from fedmpq_flwr.training.distillation import inference_teacher


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed batches per teacher variant (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="timed client rounds per method (default 3; 0 skips)")
    parser.add_argument("--data", default="", help="directory with CIFAR-10 train.npz/test.npz (default: synthetic)")
    parser.add_argument(
        "--images", type=int, default=10000, help="training images split over the 10 clients (default 10000)"
    )
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--results", default="/tmp/bench_kd", help="scratch folder for the strategy's recorder")
    return parser.parse_args()


def client_rounds(args: argparse.Namespace) -> dict[str, float]:
    """Median seconds of one client's fit for FedMPQ and FedMPQ-KD, alternating."""
    dataset = (
        {"name": "cifar10", "source": "npz", "path": args.data, "train_subset": args.images}
        if args.data
        else {"name": "synthetic", "synthetic_train_size": args.images, "synthetic_test_size": 200}
    )
    config = validate(
        {
            "run_id": "bench",
            "results_dir": args.results,
            "model": {"name": "resnet20"},
            "dataset": dataset,
            "strategy": {"name": "fedmpq_kd"},
            "quant": {"avg_bits": args.bits},
            "federation": {"device": "cpu"},
        }
    )
    strategy = FedMPQStrategy(config, RunRecorder(f"{args.results}/bench", "bench"))
    fit_config = strategy.fit_config(1, 0)
    clients = {"fedmpq": FedMPQClient(config, 0, 10), "fedmpq_kd": FedMPQKDClient(config, 0, 10, RecordDict())}
    times: dict[str, list[float]] = {name: [] for name in clients}
    for i in range(args.rounds + 1):  # the first round of each is a warm-up
        for name in list(clients) if i % 2 == 0 else list(clients)[::-1]:
            start = time.perf_counter()
            clients[name].fit(strategy.latest_parameters, fit_config)
            if i > 0:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def teacher_variants(args: argparse.Namespace) -> dict[str, float]:
    """Median seconds of a quantized student step and of each teacher-forward variant."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    student = Stepper(quantize_model(model, {n: args.bits for n in quantizable_layers(model)}), device, True, 0)
    channels_last = inference_teacher(model, fold_batchnorm=False)
    folded = inference_teacher(model)

    def forward(net: torch.nn.Module, mode: Callable, memory: torch.memory_format) -> Callable[[torch.Tensor], None]:
        def run(x: torch.Tensor) -> None:
            with mode():
                net(x.contiguous(memory_format=memory))

        return run

    variants = {
        "no_grad": forward(model, torch.no_grad, torch.contiguous_format),
        "inference_mode": forward(model, torch.inference_mode, torch.contiguous_format),
        "inference_mode+channels_last": forward(channels_last, torch.inference_mode, torch.channels_last),
        "inference_mode+channels_last+bn_folded": forward(folded, torch.inference_mode, torch.channels_last),
    }
    batches = make_batches(8, 64, device, 0)
    times: dict[str, list[float]] = {name: [] for name in ["student_step", *variants]}
    for i in range(3 + args.steps):
        x, y = batches[i % len(batches)]
        measured = {"student_step": timed(lambda x=x, y=y: student.step(x, y), device)}
        for name, run in variants.items():
            measured[name] = timed(lambda run=run, x=x: run(x), device)
        if i >= 3:
            for name, value in measured.items():
                times[name].append(value)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, object] = {"threads": args.threads, "bits": args.bits, "torch": torch.__version__}
    steps = teacher_variants(args)
    print(f"ResNet-20, batch 64, {args.bits}-bit student, CPU, {args.threads} thread(s): median seconds")
    for name, value in steps.items():
        share = "" if name == "student_step" else f"  {100 * value / steps['student_step']:5.1f} % of a student step"
        print(f"  {name:<42}{value:8.4f}{share}")
    report["step_s"] = steps
    if args.rounds:
        rounds = client_rounds(args)
        ratio = rounds["fedmpq_kd"] / rounds["fedmpq"]
        print(
            f"client round ({'CIFAR-10 ' + args.data if args.data else 'synthetic'}, partition 0 of 10): "
            f"fedmpq {rounds['fedmpq']:.2f} s, fedmpq_kd {rounds['fedmpq_kd']:.2f} s, ratio {ratio:.3f}"
        )
        report.update(client_round_s=rounds, client_round_ratio=ratio)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
