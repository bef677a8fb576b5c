"""Centralized QAT check: how well FedMPQ's bit-plane student learns alone, per `quant.scale_grad`.

No federation: one ResNet-20 trained centrally on the first `--images` CIFAR-10 training images
with the package's own pieces (`data.load_data` / `client_batches` / `eval_loader` with the
crop+flip augmentation, `training.loop.train_epochs`, `quant.quantize_model` at `initial_bits` of the
ResNet-20 layer sizes, `set_scale_grad`, the loss of `FedMPQClient.train`:
`CE + lambda_b * bit_regularizer / quantized_param_count`, stochastic re-binarization after every
step with a seeded generator). Test accuracy after every epoch on `--test-images` test images,
the same number from each class (test.npz is sorted by class: its first rows are all airplanes).

Rows:
- `float`: the full-precision model;
- the bit-plane student at each of `--bits` average bits, for each of `--scale-grad`;
- `--teacher`: a float teacher trained for `--teacher-epochs`, then the `--kd-bits` student for
  `--kd-epochs` with and without `alpha * T^2 * KL(teacher || student)` (FedMPQ-KD's
  `distillation_loss` against its `inference_teacher`), over `--kd-seeds`, the student either
  freshly initialised (`random`) or the quantized copy of the teacher (`teacher`, FedMPQ-KD's
  regime: the student is the received global model quantized).
After each row: the float test accuracy of the trained model (for a student: its dequantized
weights, what the FedMPQ server averages) with plain ReLU and with hardtanh(0, 6) clipping.

Run (one thread per process; two processes at most side by side on a 2-core machine):
    .venv/bin/python experiments/studies/central_qat.py --bits 4 --out results/central_qat --name bits4
    .venv/bin/python experiments/studies/central_qat.py --no-float --bits --teacher --out results/central_qat --name kd
    .venv/bin/python experiments/studies/central_qat.py --merge results/central_qat/{bits4,kd}.json \\
        --out results/central_qat --name all
A check of the script in seconds: `--images 64 --test-images 20 --epochs 1 --bits 2 --scale-grad plain`.
Writes `<out>/<name>.json` (every number, the settings, the command) and PDF figures under
`<out>/images/`; the last line printed is the JSON path.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fedmpq_flwr.analysis.plotting import pyplot, save, spread, style
from fedmpq_flwr.config import defaults
from fedmpq_flwr.data.device_batches import ClientBatches, client_batches
from fedmpq_flwr.data.load import FederatedData, load_data
from fedmpq_flwr.data.loaders import eval_loader
from fedmpq_flwr.models import build_model
from fedmpq_flwr.quant import (
    SCALE_GRAD_MODES,
    BitTensor,
    bit_regularizer,
    dequantized_state,
    quantizable_layers,
    quantize_model,
    quantized_param_count,
    rebinarize_model,
    set_scale_grad,
)
from fedmpq_flwr.quant.allocation import average_bitwidth, initial_bits
from fedmpq_flwr.training.distillation import distillation_loss, inference_teacher
from fedmpq_flwr.training.loop import loss_and_accuracy, train_epochs
from fedmpq_flwr.training.weights import communicated_keys, set_weights

REPO = Path(__file__).resolve().parents[2]
DEVICE = torch.device("cpu")
MODEL = "resnet20"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--images", type=int, default=10_000, help="first N training images (default 10000)")
    parser.add_argument("--test-images", type=int, default=2_000, help="test images, N/10 per class (default 2000)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--float", action=argparse.BooleanOptionalAction, default=True, help="the float row")
    parser.add_argument("--bits", type=int, nargs="*", default=[2, 4, 8], help="average bits of the students")
    parser.add_argument("--scale-grad", nargs="+", default=list(SCALE_GRAD_MODES), choices=SCALE_GRAD_MODES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--lambda-b", type=float, default=0.01)
    parser.add_argument("--act-bits", type=int, default=4)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--teacher", action="store_true", help="run the distillation rows")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--teacher-seed", type=int, default=0)
    parser.add_argument("--teacher-checkpoint", default="", help="load the teacher from here, or train and save it")
    parser.add_argument("--kd-bits", type=int, default=4)
    parser.add_argument("--kd-epochs", type=int, default=1)
    parser.add_argument("--kd-seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--kd-alpha", type=float, nargs="+", default=[0.5])
    parser.add_argument("--kd-temperature", type=float, nargs="+", default=[2.0])
    parser.add_argument("--kd-init", nargs="+", default=["random", "teacher"], choices=["random", "teacher"])
    parser.add_argument(
        "--kd-clients",
        type=int,
        default=1,
        help="> 1: the distillation students train on one client's Dirichlet partition of the images (FedMPQ-KD's "
        "local data), evaluated on the balanced test set (default 1: all images)",
    )
    parser.add_argument("--kd-partitions", type=int, nargs="+", default=[0], help="which clients (with --kd-clients)")
    parser.add_argument("--kd-dirichlet", type=float, default=0.5, help="Dirichlet alpha of the partition")
    parser.add_argument(
        "--kd-scale-grad",
        default=defaults()["quant"]["scale_grad"],
        choices=SCALE_GRAD_MODES,
        help="scale_grad of the distillation students (default: the package default)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--merge", nargs="+", default=[], help="combine these result files (no training)")
    parser.add_argument("--out", default=str(REPO / "results" / "central_qat"))
    parser.add_argument("--name", default="central_qat")
    return parser.parse_args(argv)


# ---- data ---------------------------------------------------------------------------------


def balanced_indices(labels: np.ndarray, count: int) -> np.ndarray:
    """The first `count / classes` images of every class, in file order."""
    classes = np.unique(labels)
    per_class = count // len(classes)
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in classes]))


def loaders(args: argparse.Namespace) -> tuple[FederatedData, dict[str, Any], DataLoader, DataLoader]:
    """The data, the dataset config, the balanced test loader and the file-order test loader."""
    dataset_cfg = {
        **defaults()["dataset"],
        "name": "cifar10",
        "source": "npz",
        "path": args.data_dir,
        "train_subset": args.images,
        "val_fraction": 0.0,
        "seed": 42,
        "alpha": float("inf"),  # one IID "client" holding every image
        "augment": True,
    }
    data = load_data(dataset_cfg)
    idx = balanced_indices(data.y_test, args.test_images)
    norm = {"mean": data.mean, "std": data.std}
    test = eval_loader(data.x_test[idx], data.y_test[idx], args.eval_batch_size, **norm)
    first = eval_loader(data.x_test[: args.test_images], data.y_test[: args.test_images], args.eval_batch_size, **norm)
    return data, dataset_cfg, test, first


def train_loader(
    data: FederatedData, dataset_cfg: dict[str, Any], args: argparse.Namespace, seed: int
) -> ClientBatches:
    return client_batches(data, 0, 1, dataset_cfg, args.batch_size, seed, label_noise=0.0, device=DEVICE)


# ---- models and losses --------------------------------------------------------------------


def student_of(model: nn.Module, bits: float, args: argparse.Namespace, mode: str) -> tuple[nn.Module, dict[str, int]]:
    """FedMPQ's round-1 student: `model` in bit planes at `initial_bits` of its layer sizes."""
    assignment = initial_bits(quantizable_layers(model), bits)
    return set_scale_grad(quantize_model(model, assignment, args.act_bits), mode), assignment


def student_loss(
    student: nn.Module, lambda_b: float, teacher: nn.Module | None = None, alpha: float = 0.0, temperature: float = 1.0
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """FedMPQClient.train's objective, plus FedMPQ-KD's distillation term when a teacher is given."""
    total_params = quantized_param_count(student)

    def loss_fn(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = net(images)
        task_loss = F.cross_entropy(logits, labels)
        bit_loss = lambda_b * bit_regularizer(net) / total_params
        terms = {"loss": task_loss + bit_loss, "task_loss": task_loss, "bit_loss": bit_loss}
        if teacher is not None:
            with torch.inference_mode():
                teacher_logits = teacher(images.contiguous(memory_format=torch.channels_last))
            teacher_logits = teacher_logits.clone()
            kd_loss = distillation_loss(logits, teacher_logits, temperature)
            terms["loss"] = terms["loss"] + alpha * kd_loss
            terms["kd_loss"] = kd_loss
            terms["agreement"] = (logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float().mean()
        return terms

    return loss_fn


def with_hardtanh(model: nn.Module) -> nn.Module:
    """A copy of a float model whose every ReLU clips at 6 (hardtanh(0, 6)), as the students train."""
    clipped = copy.deepcopy(model)
    for name, module in list(clipped.named_modules()):
        if isinstance(module, nn.ReLU):
            parent, _, child = name.rpartition(".")
            setattr(clipped.get_submodule(parent) if parent else clipped, child, nn.Hardtanh(0.0, 6.0))
    return clipped


def dequantized_model(student: nn.Module, template: nn.Module) -> nn.Module:
    """The float model a student stands for: dequantized weights, its BatchNorm state (what the server averages)."""
    net = copy.deepcopy(template)
    keys = communicated_keys(net)
    state = dequantized_state(student, keys)
    set_weights(net, [state[key].numpy() for key in keys])
    return net


def scale_stats(student: nn.Module, start: dict[str, float]) -> dict[str, Any]:
    """How far the scales moved from their values at conversion (S / S_0: min, median, max and per
    tensor) and the share of zero codes per tensor (a layer whose codes or scale reach 0 is dead)."""
    tensors = {name: m for name, m in student.named_modules() if isinstance(m, BitTensor)}
    ratios = {name: float(m.scale.detach()) / start[name] for name, m in tensors.items()}
    return {
        "scale_ratio_min": min(ratios.values()),
        "scale_ratio_median": statistics.median(ratios.values()),
        "scale_ratio_max": max(ratios.values()),
        "scale_ratios": ratios,
        "zero_codes": {name: float((m.signed_codes() == 0).float().mean()) for name, m in tensors.items()},
    }


def initial_scales(student: nn.Module) -> dict[str, float]:
    return {name: float(m.scale.detach()) for name, m in student.named_modules() if isinstance(m, BitTensor)}


# ---- training rows ------------------------------------------------------------------------


def accuracy_record(net: nn.Module, test: DataLoader, first: DataLoader) -> dict[str, float]:
    loss, accuracy = loss_and_accuracy(net, test, DEVICE)
    return {
        "test_accuracy": accuracy,
        "test_loss": loss,
        "test_accuracy_first_rows": loss_and_accuracy(net, first, DEVICE)[1],
    }


def train_row(
    net: nn.Module,
    epochs: int,
    loader: ClientBatches,
    test: DataLoader,
    first: DataLoader,
    args: argparse.Namespace,
    loss_fn: Callable | None = None,
    seed: int = 0,
    label: str = "",
) -> list[dict[str, Any]]:
    """Train `net` for `epochs` (SGD with momentum, the package's loop), evaluating after each."""
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    quantized = loss_fn is not None
    generator = torch.Generator(device=DEVICE).manual_seed(seed) if quantized else None
    after_step = (lambda: rebinarize_model(net, generator)) if quantized else None
    start = initial_scales(net) if quantized else {}
    history = [{"epoch": 0, **accuracy_record(net, test, first)}]
    if quantized:
        history[0].update(scale_stats(net, start))
    for epoch in range(1, epochs + 1):
        began = time.perf_counter()
        kwargs = {"loss_fn": loss_fn, "after_step": after_step} if quantized else {}
        metrics = train_epochs(net, loader, optimizer, 1, DEVICE, **kwargs)
        seconds = time.perf_counter() - began
        record = {"epoch": epoch, "train_seconds": seconds, **accuracy_record(net, test, first)}
        record.update({k: v for k, v in metrics.items() if k != "train_flops"})
        if quantized:
            record.update(scale_stats(net, start))
        history.append(record)
        print(
            f"[{label}] epoch {epoch}: test acc {record['test_accuracy']:.4f} "
            f"(first rows {record['test_accuracy_first_rows']:.4f}), loss {record['train_loss']:.3f}, {seconds:.0f} s",
            flush=True,
        )
    return history


def activation_check(net: nn.Module, test: DataLoader) -> dict[str, float]:
    """Float test accuracy of a float model with plain ReLU and with hardtanh(0, 6) clipping, and
    the share of ReLU outputs above 6 on the test images (what clipping changes)."""
    counts = {"above": 0, "positive": 0, "all": 0}

    def count(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        counts["above"] += int((output > 6.0).sum())
        counts["positive"] += int((output > 0).sum())
        counts["all"] += output.numel()

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.ReLU)]
    try:
        relu = loss_and_accuracy(net, test, DEVICE)[1]
    finally:
        for hook in hooks:
            hook.remove()
    return {
        "relu": relu,
        "hardtanh6": loss_and_accuracy(with_hardtanh(net), test, DEVICE)[1],
        "share_above_6": counts["above"] / max(counts["all"], 1),
        "share_of_positive_above_6": counts["above"] / max(counts["positive"], 1),
    }


def float_row(args, data, dataset_cfg, test, first, seed: int, epochs: int, label: str) -> tuple[dict, nn.Module]:
    torch.manual_seed(seed)
    model = build_model(MODEL)
    history = train_row(model, epochs, train_loader(data, dataset_cfg, args, seed), test, first, args, label=label)
    row = {"model": "float", "bits": None, "scale_grad": None, "seed": seed, "history": history}
    row["activation_eval"] = activation_check(model, test)
    return row, model


def student_row(args, data, dataset_cfg, test, first, seed: int, bits: int, mode: str) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = build_model(MODEL)
    student, assignment = student_of(model, bits, args, mode)
    loader = train_loader(data, dataset_cfg, args, seed)
    loss_fn = student_loss(student, args.lambda_b)
    history = train_row(student, args.epochs, loader, test, first, args, loss_fn, seed, f"{bits}-bit {mode} s{seed}")
    dequantized = dequantized_model(student, model)
    return {
        "model": f"{bits}bit",
        "bits": bits,
        "avg_bits": average_bitwidth(assignment, quantizable_layers(model)),
        "assignment": assignment,
        "scale_grad": mode,
        "seed": seed,
        "history": history,
        "activation_eval": {"student": history[-1]["test_accuracy"], **activation_check(dequantized, test)},
    }


def teacher_model(args, data, dataset_cfg, test, first) -> tuple[nn.Module, dict[str, Any]]:
    """Train the float teacher (or load it from `--teacher-checkpoint` when its settings match)."""
    settings = {"images": args.images, "epochs": args.teacher_epochs, "seed": args.teacher_seed, "lr": args.lr}
    path = Path(args.teacher_checkpoint) if args.teacher_checkpoint else None
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=False)
        if saved["settings"] == settings:
            model = build_model(MODEL)
            model.load_state_dict(saved["state_dict"])
            print(f"teacher loaded from {path}", flush=True)
            return model, {**saved["row"], "loaded_from": str(path)}
        print(f"teacher checkpoint {path} has other settings {saved['settings']}: training anew", flush=True)
    row, model = float_row(args, data, dataset_cfg, test, first, args.teacher_seed, args.teacher_epochs, "teacher")
    row["model"] = "teacher"
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"settings": settings, "state_dict": model.state_dict(), "row": row}, path)
    return model, row


def kd_rows(
    args, data, dataset_cfg, test, first, teacher_float: nn.Module, rows: list[dict[str, Any]], saved: Callable
) -> list[dict[str, Any]]:
    """The `--kd-bits` student with and without distillation, per init regime, partition, (alpha, T) and seed."""
    teacher = inference_teacher(teacher_float)
    settings = [(0.0, None)] + [(a, t) for a in args.kd_alpha for t in args.kd_temperature]
    partitions = args.kd_partitions if args.kd_clients > 1 else [None]
    client_cfg = {**dataset_cfg, "alpha": args.kd_dirichlet}
    for init in args.kd_init:
        for partition in partitions:
            for seed in args.kd_seeds:
                for alpha, temperature in settings:
                    torch.manual_seed(seed)
                    base = build_model(MODEL) if init == "random" else teacher_float
                    student, _ = student_of(base, args.kd_bits, args, args.kd_scale_grad)
                    loss_fn = student_loss(
                        student, args.lambda_b, teacher if alpha else None, alpha, temperature or 1.0
                    )
                    if partition is None:
                        loader = train_loader(data, dataset_cfg, args, seed)
                    else:
                        loader = client_batches(
                            data, partition, args.kd_clients, client_cfg, args.batch_size, seed, label_noise=0.0,
                            device=DEVICE,
                        )  # fmt: skip
                    where = "" if partition is None else f" client {partition}/{args.kd_clients}"
                    label = f"kd init={init}{where} alpha={alpha} T={temperature} s{seed}"
                    history = train_row(student, args.kd_epochs, loader, test, first, args, loss_fn, seed, label)
                    labels = loader.labels.cpu().numpy()
                    rows.append(
                        {
                            "init": init,
                            "kd": bool(alpha),
                            "alpha": alpha,
                            "temperature": temperature,
                            "seed": seed,
                            "clients": args.kd_clients,
                            "partition": partition,
                            "label_counts": np.bincount(labels, minlength=10).tolist(),
                            "epochs": args.kd_epochs,
                            "bits": args.kd_bits,
                            "scale_grad": args.kd_scale_grad,
                            "history": history,
                            "activation_eval": {
                                "student": history[-1]["test_accuracy"],
                                **activation_check(dequantized_model(student, base), test),
                            },
                        }
                    )
                    saved()
    return rows


# ---- summaries and figures ----------------------------------------------------------------


def row_label(row: dict[str, Any]) -> str:
    return "float" if row["model"] == "float" else f"{row['bits']}-bit {row['scale_grad']}"


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Mean and std over seeds of each row kind's accuracy per epoch, and of each distillation setting."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in result["rows"]:
        groups.setdefault(row_label(row), []).append(row)
    main = {}
    for label, rows in groups.items():
        epochs = len(rows[0]["history"])
        per_epoch = [[r["history"][e]["test_accuracy"] for r in rows] for e in range(epochs)]
        main[label] = {
            "seeds": [r["seed"] for r in rows],
            "mean": [float(np.mean(v)) for v in per_epoch],
            "std": [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in per_epoch],
        }
    kd: dict[str, Any] = {}
    for row in result.get("kd_rows", []):
        objective = f"kd alpha={row['alpha']} T={row['temperature']}" if row["kd"] else "no kd"
        partitioned = row.get("clients", 1) > 1
        where = f"client-of-{row['clients']},{row['epochs']}ep " if partitioned else ""
        key = f"init={row['init']} {where}{objective}"
        kd.setdefault(key, {"seeds": [], "accuracy": []})
        kd[key]["seeds"].append(f"p{row['partition']}s{row['seed']}" if partitioned else row["seed"])
        kd[key]["accuracy"].append(row["history"][-1]["test_accuracy"])
    for entry in kd.values():
        values = entry["accuracy"]
        entry["mean"] = float(np.mean(values))
        entry["std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"main": main, "kd": kd}


def plot_main(summary: dict[str, Any], path: Path) -> None:
    """Test accuracy against epoch: one panel per bit-width, float in every panel."""
    main = summary["main"]
    bit_labels = sorted({label.split("-bit")[0] for label in main if label != "float"}, key=int)
    panels = bit_labels or ["float"]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False, sharey=True)
    for ax, bits in zip(axes[0], panels):
        labels = (["float"] if "float" in main else []) + [label for label in main if label.startswith(f"{bits}-bit ")]
        means = [np.asarray(main[label]["mean"]) * 100 for label in labels]
        for i, (label, mean) in enumerate(zip(labels, means)):
            x = np.arange(len(mean))
            ax.plot(x, mean, label=f"{label} (n={len(main[label]['seeds'])})", color="black", **style(i))
        gap = max(0.05 * float(np.ptp(np.concatenate(means))), 0.5)
        for epoch in range(1, len(means[0])):  # every value written to the right of its point, labels kept apart
            values = [mean[epoch] for mean in means]
            for value, height in zip(values, spread(values, min_gap=gap)):
                ax.annotate(f"{value:.1f}", (epoch, value), xytext=(epoch + 0.05, height), fontsize=7, va="center")
        mean = means[0]
        ax.set_title(f"{bits}-bit student" if bits != "float" else "float")
        ax.set_xlabel("epoch")
        ax.set_xticks(np.arange(len(mean)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("test accuracy (%)")
    save(fig, path)


def plot_kd(summary: dict[str, Any], path: Path) -> None:
    """Distillation rows: mean accuracy with std bars, every seed as a dot, the mean written above."""
    kd = summary["kd"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(kd), 3.8))
    for i, (key, entry) in enumerate(kd.items()):
        mean, std = entry["mean"] * 100, entry["std"] * 100
        ax.bar(i, mean, yerr=std, color="0.8" if "no kd" in key else "0.5", edgecolor="black", capsize=3)
        ax.scatter([i] * len(entry["accuracy"]), np.asarray(entry["accuracy"]) * 100, color="black", s=8, zorder=3)
        ax.text(i, mean + std + 0.5, f"{mean:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(kd)))
    ax.set_xticklabels([key.replace(" ", "\n", 2 if " client-of-" in key else 1) for key in kd], fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, axis="y")
    save(fig, path)


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown_tables(result: dict[str, Any]) -> str:
    """The rows as Markdown tables (accuracies in %, the balanced test subset unless said otherwise)."""
    lines = [
        "| model | scale_grad | seed | acc. per epoch (0, 1, ...) | first-rows acc. per epoch "
        "| S/S0 min / median / max | float ReLU | float hardtanh(0,6) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        hist, last = row["history"], row["history"][-1]
        scales = (
            f"{last['scale_ratio_min']:.2f} / {last['scale_ratio_median']:.2f} / {last['scale_ratio_max']:.2f}"
            if "scale_ratio_min" in last
            else ""
        )
        name = "float" if row["model"] == "float" else f"{row['bits']}-bit (avg {row['avg_bits']:.2f})"
        lines.append(
            f"| {name} | {row['scale_grad'] or ''} | {row['seed']} "
            f"| {', '.join(pct(h['test_accuracy']) for h in hist)} "
            f"| {', '.join(pct(h['test_accuracy_first_rows']) for h in hist)} | {scales} "
            f"| {pct(row['activation_eval']['relu'])} | {pct(row['activation_eval']['hardtanh6'])} |"
        )
    teachers = result.get("teacher") or []
    for teacher in teachers if isinstance(teachers, list) else [teachers]:
        hist, act = teacher["history"], teacher["activation_eval"]
        lines += [
            "",
            f"Teacher (float, seed {teacher['seed']}): accuracy per epoch "
            f"{', '.join(pct(h['test_accuracy']) for h in hist)}; "
            f"ReLU {pct(act['relu'])}, hardtanh(0,6) {pct(act['hardtanh6'])}",
        ]
    if result.get("kd_rows"):
        lines += ["", "| student init | objective | seeds | mean | std | per seed |", "|---|---|---|---|---|---|"]
        for key, entry in result["summary"]["kd"].items():
            init, _, objective = key.partition(" ")
            lines.append(
                f"| {init.removeprefix('init=')} | {objective} | {', '.join(map(str, entry['seeds']))} "
                f"| {pct(entry['mean'])} | {pct(entry['std'])} | {', '.join(pct(a) for a in entry['accuracy'])} |"
            )
        lines += ["", "| student init | objective | seed | start acc. | final acc. | dequant. ReLU | hardtanh(0,6) |"]
        lines.append("|---|---|---|---|---|---|---|")
        for row in result["kd_rows"]:
            objective = f"kd alpha={row['alpha']} T={row['temperature']}" if row["kd"] else "no kd"
            seed = row["seed"] if row.get("clients", 1) == 1 else f"client {row['partition']}, seed {row['seed']}"
            lines.append(
                f"| {row['init']} | {objective} | {seed} | {pct(row['history'][0]['test_accuracy'])} "
                f"| {pct(row['history'][-1]['test_accuracy'])} | {pct(row['activation_eval']['relu'])} "
                f"| {pct(row['activation_eval']['hardtanh6'])} |"
            )
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], args: argparse.Namespace) -> Path:
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    result["summary"] = summarize(result)
    figures = []
    if result["summary"]["main"]:
        figures.append(out / "images" / f"qat_accuracy_vs_epoch_{args.name}.pdf")
        plot_main(result["summary"], figures[-1])
    if result["summary"]["kd"]:
        figures.append(out / "images" / f"qat_distillation_{args.name}.pdf")
        plot_kd(result["summary"], figures[-1])
    result["figures"] = [str(f) for f in figures]
    path = out / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=1))
    print(markdown_tables(result))
    return path


def merge(args: argparse.Namespace) -> dict[str, Any]:
    parts = [json.loads(Path(p).read_text()) for p in args.merge]
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "merged_from": args.merge,
        "parts": [{k: p.get(k) for k in ("command", "settings", "date", "machine", "seconds")} for p in parts],
        "rows": [row for p in parts for row in p["rows"]],
        "teacher": list(
            {json.dumps(p["teacher"]["history"]): p["teacher"] for p in parts if p.get("teacher")}.values()
        ),  # one entry per distinct teacher (the parts that loaded a checkpoint repeat it)
        "kd_rows": [row for p in parts for row in p.get("kd_rows", [])],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.merge:
        print(write_outputs(merge(args), args))
        return
    began = time.perf_counter()
    data, dataset_cfg, test, first = loaders(args)
    result: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings": vars(args),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "test_images_per_class": np.bincount(test.dataset.tensors[1].numpy()).tolist(),
        "rows": [],
    }
    partial = Path(args.out) / f"{args.name}.partial.json"
    partial.parent.mkdir(parents=True, exist_ok=True)

    def saved() -> None:
        """Every finished row on disk at once (a killed run keeps what it measured)."""
        partial.write_text(json.dumps(result, indent=1))

    for seed in args.seeds:
        if args.float:
            result["rows"].append(
                float_row(args, data, dataset_cfg, test, first, seed, args.epochs, f"float s{seed}")[0]
            )
            saved()
        for bits in args.bits:
            for mode in args.scale_grad:
                result["rows"].append(student_row(args, data, dataset_cfg, test, first, seed, bits, mode))
                saved()
    if args.teacher:
        teacher, result["teacher"] = teacher_model(args, data, dataset_cfg, test, first)
        result["kd_rows"] = []
        kd_rows(args, data, dataset_cfg, test, first, teacher, result["kd_rows"], saved)
    result["seconds"] = time.perf_counter() - began
    print(write_outputs(result, args))
    partial.unlink()


if __name__ == "__main__":
    main()
