"""Throughput benchmark: each result is a ratio of two things measured side by side, written as JSON.

P1  framework overhead: seconds per federated FedAvg round through the real Flower path (the runner's
    launcher: SuperLink, `flwr run`, Ray actors) against the same clients' local training, aggregation
    and server evaluation called directly in this process (the package's own client and strategy,
    no Flower runtime). Both exclude round 1, which pays Ray's start and the actors' imports.
P2  FedMPQ-KD against FedMPQ: mean seconds per round and summed client compute per round, from two
    runs made one after the other through the runner with the same data, seed and rounds.
P3  a quantized training step against a float step, per registry model (experiments/bench/quant_step_cost.py,
    both steps interleaved in one process).
P4  GPU throughput: seconds per round of FedMPQ-KD (ResNet-20, all --images, 10 clients, each client
    actor holding --client-gpus of the card) and the projected 50-round run; then --p4-runs short
    FedMPQ runs through the runner with --jobs 1 and with --jobs --p4-jobs, as runs per hour. The
    ratio is jobs N over jobs 1 on the same card in one invocation. Meant for a GPU; `--device cpu`
    runs the same measurements on a CPU (with --client-gpus 0) to check the script itself.
    `--gpu-settings on` trains with train.channels_last and (on CUDA) train.amp bf16.
P7  the client data path: milliseconds per batch of 64 of the per-sample path (torchvision v2 crop, flip
    and normalisation per image in a DataLoader, as before client batches were made on the device)
    and of `data.device_batches` (one partition of --images staged on --device), each against a
    ResNet-20 training step on a batch already in memory; one torch thread, interleaved. Then, with
    real CIFAR-10, the check from outside: a FedAvg client (one client holding the first --images
    images, --p7-epochs local epochs, augmentation on, called in this process after the data is
    cached), its `client_time_s / steps` against that plain step.
P8  a quantized evaluation pass (ResNet-20 at 4-bit weights and activations) against a float pass,
    over --p8-images test images in batches of 128 with --plain-threads threads, interleaved.

    .venv/bin/python experiments/bench/throughput.py --out /tmp/bench [--parts P1,P2,P3] [--rounds 3] [--images 10000]

Real CIFAR-10 is read from --data-dir (train.npz/test.npz) when it is there, else synthetic data stands in
(and the JSON says so). Timings depend on the machine and its load: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from common import inprocess_round, quant_step_ratio, timed
from flwr.common import RecordDict
from torchvision.transforms import v2

from fedmpq_flwr.config import validate
from fedmpq_flwr.data.device_batches import ClientBatches
from fedmpq_flwr.data.load import FederatedData, load_data
from fedmpq_flwr.data.loaders import eval_batches, to_float
from fedmpq_flwr.methods.registry import load_method
from fedmpq_flwr.models import build_model
from fedmpq_flwr.quant import quantizable_layers, quantize_model
from fedmpq_flwr.rundir.results import RunRecorder, read_metrics
from fedmpq_flwr.training.loop import loss_and_accuracy

REPO = Path(__file__).resolve().parents[2]


def setting(
    args: argparse.Namespace, method: str, run_id: str, results_dir: Path, rounds: int | None = None
) -> dict[str, Any]:
    """The benchmark's run config: ResNet-20, 10 clients, Dirichlet 0.5, budgets averaging 4 bits, on
    --device with --client-gpus per client actor (0 on a CPU)."""
    real = (args.data_dir / "train.npz").is_file()
    dataset = (
        {"name": "cifar10", "source": "npz", "path": str(args.data_dir.resolve()), "train_subset": args.images}
        if real
        else {"name": "synthetic", "synthetic_train_size": args.images, "synthetic_test_size": 2000}
    )
    gpus = args.client_gpus if args.device == "cuda" else 0.0
    return validate(
        {
            "run_id": run_id,
            "description": f"bench: {method}",
            "results_dir": str(results_dir),
            "seed": 0,
            "strategy": {"name": method},
            "model": {"name": args.model},
            "dataset": dataset,
            "train": {"num_rounds": rounds or args.rounds, **gpu_settings(args)},
            "quant": {"budgets": [2, 2, 3, 3, 4, 4, 5, 5, 6, 6]},
            "federation": {"num_clients": 10, "client_cpus": 1, "device": args.device, "client_gpus": gpus},
        }
    )


def gpu_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The train keys of `--gpu-settings on`: channels-last batches and model, bf16 autocast on CUDA."""
    if args.gpu_settings == "off":
        return {}
    return {"channels_last": True, **({"amp": "bf16"} if args.device == "cuda" else {})}


def run_through_flower(configs: list[dict[str, Any]], results_dir: Path, jobs: int = 1) -> float:
    """Run configs through the experiment runner (`jobs` at a time); return the wall seconds."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "bench_runs.yaml"
    runs = [{k: v for k, v in c.items() if k not in ("results_dir", "variation")} for c in configs]
    path.write_text(yaml.safe_dump({"runs": runs}))
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "fedmpq_flwr.main", "--config", str(path), "--results-dir", str(results_dir)]
    cmd += ["--jobs", str(jobs)]
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def round_seconds(run_dir: Path, key: str = "round_time_s") -> list[float]:
    """Per-round values of `key` after round 1."""
    records, _ = read_metrics(run_dir)
    return [float(r[key]) for r in records if r["round"] > 1 and r.get(key) is not None]


def plain_rounds(config: dict[str, Any], threads: int) -> list[float]:
    """Seconds per round of the same clients and server evaluation called directly (no Flower)."""
    torch.set_num_threads(threads)
    method = load_method(config["strategy"]["name"])
    run_dir = Path(config["results_dir"]) / config["run_id"]
    strategy = method.strategy(config, RunRecorder(run_dir, config["run_id"]))
    clients = list(range(config["federation"]["num_clients"]))
    states = {pid: RecordDict() for pid in clients}
    times = []
    for server_round in range(1, config["train"]["num_rounds"] + 1):
        started = time.perf_counter()
        inprocess_round(method, strategy, config, server_round, clients, states)
        times.append(time.perf_counter() - started)
    return times[1:]


def p1(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    flower_dir, plain_dir = out / "p1_flower", out / "p1_plain"
    config = setting(args, "fedavg", "p1_fedavg", flower_dir)
    run_through_flower([config], flower_dir)
    flower = round_seconds(flower_dir / "p1_fedavg")
    plain = plain_rounds(setting(args, "fedavg", "p1_fedavg", plain_dir), threads=args.plain_threads)
    return {
        "flower_round_s": flower,
        "plain_round_s": plain,
        "ratio": statistics.mean(flower) / statistics.mean(plain),
        "note": f"Flower: {config['federation']['client_cpus']} CPU per client actor; plain loop: sequential "
        f"clients, {args.plain_threads} torch threads",
    }


def p2(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    results_dir = out / "p2"
    configs = [setting(args, method, f"p2_{method}", results_dir) for method in ("fedmpq", "fedmpq_kd")]
    run_through_flower(configs, results_dir)
    numbers: dict[str, Any] = {}
    for key in ("round_time_s", "client_compute_s"):
        fedmpq, kd = (round_seconds(results_dir / f"p2_{m}", key) for m in ("fedmpq", "fedmpq_kd"))
        numbers[key] = {"fedmpq": fedmpq, "fedmpq_kd": kd, "ratio": statistics.mean(kd) / statistics.mean(fedmpq)}
    return numbers


def p3(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    return {name: quant_step_ratio(name, torch.device("cpu"), steps=args.steps) for name in args.models.split(",")}


def p4(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    kd_dir = out / "p4_round"
    kd = setting(args, "fedmpq_kd", "p4_fedmpq_kd", kd_dir)
    wall = run_through_flower([kd], kd_dir)
    rounds = round_seconds(kd_dir / "p4_fedmpq_kd")  # after round 1
    planned = kd["train"]["num_rounds"]
    per_hour = {}
    for jobs in (1, args.p4_jobs):
        jobs_dir = out / f"p4_jobs{jobs}"
        configs = [setting(args, "fedmpq", f"p4_jobs{jobs}_run{i}", jobs_dir, rounds=2) for i in range(args.p4_runs)]
        for i, config in enumerate(configs):
            config["seed"] = i
        per_hour[jobs] = 3600 * args.p4_runs / run_through_flower(configs, jobs_dir, jobs=jobs)
    return {
        "fedmpq_kd_round_s": rounds,
        "fedmpq_kd_round_s_mean": statistics.mean(rounds),
        "run_wall_s": wall,
        "projected_50_round_run_s": wall + (50 - planned) * statistics.mean(rounds),
        "runs_per_hour": {f"jobs{k}": v for k, v in per_hour.items()},
        "ratio_jobs": per_hour[args.p4_jobs] / per_hour[1],
        "note": f"{args.p4_runs} FedMPQ runs of 2 rounds per --jobs setting; client_gpus {args.client_gpus} "
        f"on {args.device}; the 50-round projection adds the mean steady round to this run's wall time",
    }


class PerSampleImages(torch.utils.data.Dataset):
    """The data path before client batches were made on the device: torchvision v2 transforms per image."""

    def __init__(self, data: FederatedData, count: int) -> None:
        self.images = torch.from_numpy(data.x_train[:count].transpose(0, 3, 1, 2).copy())
        self.labels = torch.tensor(data.y_train[:count])
        crop = v2.RandomCrop(data.image_shape[:2], padding=data.spec.crop_padding)
        self.transform = v2.Compose([crop, v2.RandomHorizontalFlip(), to_float(data.mean, data.std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


def bench_data(args: argparse.Namespace) -> FederatedData:
    """The first --images CIFAR-10 training images (synthetic ones where the files are missing)."""
    real = (args.data_dir / "train.npz").is_file()
    dataset = {
        "name": "cifar10" if real else "synthetic",
        "source": "npz",
        "path": str(args.data_dir.resolve()),
        "train_subset": args.images if real else 0,
        "val_fraction": 0.0,
        "seed": 0,
        "synthetic_train_size": args.images,
        "synthetic_test_size": max(args.p8_images, 10),
    }
    return load_data(dataset)


def p7(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    device = torch.device(args.device)
    data = bench_data(args)
    count = min(args.images, len(data.y_train))
    per_sample = torch.utils.data.DataLoader(
        PerSampleImages(data, count), 64, shuffle=True, generator=torch.Generator().manual_seed(0), num_workers=0
    )
    staged = ClientBatches(
        data.x_train[:count], data.y_train[:count], 64, mean=data.mean, std=data.std,
        padding=data.spec.crop_padding, seed=0, device=device,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model("resnet20", data.num_classes).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = next(iter(staged))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    def next_batch(iterators: dict[str, Any], name: str, source: Any) -> None:
        try:
            x, y = next(iterators[name])
        except (KeyError, StopIteration):
            iterators[name] = iter(source)
            x, y = next(iterators[name])
        x.to(device), y.to(device)

    iterators: dict[str, Any] = {}
    times: dict[str, list[float]] = {"per_sample": [], "device_batches": [], "step": []}
    for i in range(args.p7_batches + 3):  # the first 3 of each warm up
        got = {
            "per_sample": timed(lambda: next_batch(iterators, "old", per_sample), device),
            "device_batches": timed(lambda: next_batch(iterators, "new", staged), device),
            "step": timed(step, device),
        }
        for name, seconds in got.items():
            if i >= 3:
                times[name].append(seconds)
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    client = client_step(args, out) if data.name == "cifar10" else {}
    return {
        "client_round": client or "needs real CIFAR-10 (--data-dir)",
        "ms_per_batch64": ms,
        "per_sample_over_step": ms["per_sample"] / ms["step"],
        "device_batches_over_step": ms["device_batches"] / ms["step"],
        "per_sample_over_device_batches": ms["per_sample"] / ms["device_batches"],
        "note": f"medians of {args.p7_batches} interleaved batches; {count} training images staged on "
        f"{device}; 1 torch thread; the step is ResNet-20 on a batch already on the device",
    }


def client_step(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """A FedAvg client's seconds per step over a whole local round (its `client_time_s / steps`)."""
    torch.set_num_threads(1)
    config = validate(
        {
            "run_id": "p7_client",
            "results_dir": str(out),
            "model": {"name": "resnet20"},
            "dataset": {"name": "cifar10", "source": "npz", "path": str(args.data_dir.resolve())}
            | {"train_subset": args.images, "alpha": "inf"},
            "train": {"num_rounds": 1, "local_epochs": args.p7_epochs, "batch_size": 64},
            "federation": {"num_clients": 1, "device": args.device},
        }
    )
    method = load_method("fedavg")
    strategy = method.strategy(config, RunRecorder(out / "p7_client", "p7_client"))  # loads and caches the data
    _, _, metrics = method.build_client(config, 0, 1).fit(strategy.latest_parameters, strategy.fit_config(1, 0))
    steps = int(metrics["steps"])
    torch.manual_seed(0)
    model = build_model("resnet20", 10).to(args.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(64, 3, 32, 32, device=args.device)
    labels = torch.randint(0, 10, (64,), device=args.device)

    def plain_steps() -> None:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()

    plain_s = timed(plain_steps, torch.device(args.device)) / steps
    client_s = metrics["client_time_s"] / steps
    return {
        "client_time_s": metrics["client_time_s"],
        "steps": steps,
        "client_s_per_step": client_s,
        "plain_s_per_step": plain_s,
        "ratio": client_s / plain_s,
        "note": "plain: the same number of ResNet-20 steps on one in-memory batch, right after the client round",
    }


def p8(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.plain_threads)
    device = torch.device(args.device)
    data = bench_data(args)
    count = min(args.p8_images, len(data.y_test))
    batches = eval_batches(data.x_test[:count], data.y_test[:count], 128, mean=data.mean, std=data.std, device=device)
    torch.manual_seed(0)
    model = build_model("resnet20", data.num_classes).to(device)
    qmodel = quantize_model(model, {layer: 4 for layer in quantizable_layers(model)}, 4).to(device)
    times: dict[str, list[float]] = {"float": [], "quant": []}
    for i in range(args.p8_passes + 1):  # the first pass of each warms up
        for name, net in (("float", model), ("quant", qmodel)):
            seconds = timed(lambda net=net: loss_and_accuracy(net, batches, device), device)
            if i:
                times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "pass_s": times,
        "median_s": medians,
        "ratio": medians["quant"] / medians["float"],
        "note": f"{count} test images, batches of 128, {args.plain_threads} torch threads, {args.p8_passes} "
        "interleaved passes each after one warm-up; 4-bit weights and activations",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs and bench.json")
    parser.add_argument("--parts", default="P1,P2,P3")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per federated run (round 1 is not timed)")
    parser.add_argument("--images", type=int, default=10000, help="training images (first N of CIFAR-10)")
    parser.add_argument("--model", default="resnet20", help="model of the federated runs (P1, P2)")
    parser.add_argument("--models", default="resnet20,mobilenet_v2,vit_small", help="models of P3")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per model (P3)")
    parser.add_argument("--plain-threads", type=int, default=2, help="torch threads of P1's plain loop")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "cifar10")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where clients train (P1, P2, P4)")
    parser.add_argument("--client-gpus", type=float, default=0.25, help="GPU share per client actor with cuda")
    parser.add_argument("--p4-jobs", type=int, default=3, help="concurrent runs P4 compares with one")
    parser.add_argument("--p4-runs", type=int, default=6, help="short runs per --jobs setting in P4")
    parser.add_argument("--gpu-settings", choices=("off", "on"), default="off", help="train.channels_last/amp")
    parser.add_argument("--p7-batches", type=int, default=30, help="timed batches of each data path (P7)")
    parser.add_argument("--p7-epochs", type=int, default=2, help="local epochs of P7's client round")
    parser.add_argument("--p8-images", type=int, default=2000, help="test images of each evaluation pass (P8)")
    parser.add_argument("--p8-passes", type=int, default=3, help="timed passes of each model (P8)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: round 1 is not timed")
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {p.strip().upper() for p in args.parts.split(",")}
    report: dict[str, Any] = {
        "setting": {k: str(v) for k, v in vars(args).items()},
        "data": "cifar10 npz" if (args.data_dir / "train.npz").is_file() else "synthetic",
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
    }
    if "P1" in parts:
        report["P1_framework_overhead"] = p1(args, args.out)
    if "P2" in parts:
        report["P2_kd_over_fedmpq"] = p2(args, args.out)
    if "P3" in parts:
        report["P3_quant_over_float_step"] = p3(args)
    if "P4" in parts:
        if args.device == "cuda":
            report["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
        report["P4_gpu_throughput"] = p4(args, args.out)
    if "P7" in parts:
        report["P7_data_path"] = p7(args, args.out)
    if "P8" in parts:
        report["P8_quant_over_float_eval"] = p8(args)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
