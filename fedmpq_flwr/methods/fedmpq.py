"""FedMPQ (Chen & Vikalo, CVPR 2024): bit-level mixed-precision clients and a bit-allocating server.

Client: turn the received float global model into bit planes at the per-layer bits the server
assigned (`bits` in the fit instructions), train them with `CE + lambda_b * group_lasso /
total_params`, prune sparse planes, upload integer codes and report the pruned assignment
(`bits`) and the bits removed per layer (`reductions`). Server: decode and average the uploads,
then re-allocate every client's per-layer bits to its budget (`fedmpq_flwr.quant.allocation`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flwr.common import NDArrays, Scalar
from torch import nn

from fedmpq_flwr.data.device_batches import ClientBatches
from fedmpq_flwr.methods.fedavg import FedAvgClient, FedAvgStrategy
from fedmpq_flwr.quant import (
    bit_regularizer,
    decode_update,
    encode_update,
    layer_bits,
    prune_model,
    quantizable_layers,
    quantize_model,
    quantized_param_count,
    rebinarize_model,
    set_scale_grad,
    upload_bits,
)
from fedmpq_flwr.quant.allocation import ClientBits, allocate, average_bitwidth, initial_bits
from fedmpq_flwr.rundir.results import BIT_ASSIGNMENTS_FILE, RunRecorder
from fedmpq_flwr.server.diagnostics import QuantizedEnd, median_client
from fedmpq_flwr.server.update import ClientUpdate
from fedmpq_flwr.training.loop import train_epochs
from fedmpq_flwr.training.weights import communicated_keys


@dataclass
class ObjectiveExtension:
    """What a subclass adds to a FedMPQ client's local training."""

    # (images, labels, student logits) -> named terms: "loss" is added to what is minimised, the others logged
    terms: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
    after_step: Callable[[], None] | None = None  # called after every optimizer step and re-binarization
    report: Callable[[dict[str, Any]], None] | None = None  # adds to (or corrects) the metrics after training


class FedMPQClient(FedAvgClient):
    """Trains the quantized student at the per-layer bits the server assigned (`config["bits"]`).

    Subclasses extend the objective through `extension` (FedMPQ-KD adds distillation) and change
    what happens after local training through `prune` (FedPQ keeps every plane).
    """

    def extension(self, model: nn.Module, student: nn.Module, config: dict[str, Any]) -> ObjectiveExtension | None:
        """Extra loss terms, per-step action and metrics on top of FedMPQ's (none for FedMPQ)."""
        return None

    def prune(self, student: nn.Module) -> dict[str, int]:
        """Drop sparse bit planes after local training (`quant.thre`); the bits removed per layer."""
        return prune_model(student, self.config["quant"]["thre"])

    def train(
        self, model: nn.Module, loader: ClientBatches, config: dict[str, Any], seed: int
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        quant_cfg = self.config["quant"]
        student = quantize_model(model, json.loads(str(config["bits"])), quant_cfg["act_bits"]).to(self.device)
        set_scale_grad(student, quant_cfg["scale_grad"])  # how the scales learn (quant.scale_grad)
        total_params = quantized_param_count(student)
        lambda_b = quant_cfg["lambda_b"]
        extension = self.extension(model, student, config)

        def loss_fn(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = net(images)
            task_loss = F.cross_entropy(logits, labels)
            bit_loss = lambda_b * bit_regularizer(net) / total_params
            terms = {"loss": task_loss + bit_loss, "task_loss": task_loss, "bit_loss": bit_loss}
            if extension is not None:
                extra = extension.terms(images, labels, logits)
                loss = terms["loss"] + extra.pop("loss")
                terms.update(extra, loss=loss)
            return terms

        generator = None
        if quant_cfg["rounding"] == "stochastic":
            generator = torch.Generator(device=self.device).manual_seed(seed)

        def after_step() -> None:
            rebinarize_model(student, generator)
            if extension is not None and extension.after_step is not None:
                extension.after_step()

        metrics: dict[str, Any] = train_epochs(
            student,
            loader,
            self.optimizer(student.parameters()),
            self.config["train"]["local_epochs"],
            self.device,
            loss_fn=loss_fn,
            after_step=after_step,
        )
        reductions = self.prune(student)
        metrics.update(bits=json.dumps(layer_bits(student)), reductions=json.dumps(reductions))
        if extension is not None and extension.report is not None:
            extension.report(metrics)
        return encode_update(student, communicated_keys(model)), metrics


def client_budgets(config: dict[str, Any]) -> dict[int, float]:
    """Partition id -> average-bit budget, from `quant.budgets` or else `quant.avg_bits` for all.

    A list shorter than the federation is tiled as a whole: partition k gets `budgets[k % len(budgets)]`,
    so [2,2,3,3,4,4,5,5,6,6] gives partitions 0-9, 10-19, ... the budgets of the 10-client experiment
    (`config.validate` has checked that the length divides `federation.num_clients`)."""
    quant_cfg = config["quant"]
    budgets = quant_cfg["budgets"] or [quant_cfg["avg_bits"]]
    return {pid: float(budgets[pid % len(budgets)]) for pid in range(config["federation"]["num_clients"])}


class FedMPQStrategy(FedAvgStrategy):
    """Decode-and-average aggregation plus per-client bit re-allocation, keyed by partition id
    (`next_bits`: FedPQ keeps the assignment fixed). A client's `bits` (the per-layer bits it trained,
    pruned to and sent) and `reductions` (the bits pruned per layer) arrive as JSON, decoded once."""

    encoded_metrics = ("bits", "reductions")

    def __init__(self, config: dict[str, Any], recorder: RunRecorder) -> None:
        super().__init__(config, recorder)
        self.layer_sizes = quantizable_layers(self.model)
        self.float_keys = communicated_keys(self.model)
        self.budgets = client_budgets(config)
        self.bits = {pid: initial_bits(self.layer_sizes, budget) for pid, budget in self.budgets.items()}

    def fit_config(self, server_round: int, partition_id: int) -> dict[str, Scalar]:
        return {**super().fit_config(server_round, partition_id), "bits": json.dumps(self.bits[partition_id])}

    def upload_bits(self, update: ClientUpdate) -> int:
        return upload_bits(update.arrays, self.float_keys, update.decoded["bits"])

    def next_bits(self, updates: list[ClientUpdate]) -> dict[int, dict[str, int]]:
        """Every client's per-layer bits for the next round: re-allocated from this round's reports; a
        sampled client that sent no update (it dropped or failed) keeps its assignment."""
        reports = [
            ClientBits(
                num_examples=u.num_examples,
                budget=self.budgets[u.partition_id],
                bits=u.decoded["bits"],
                reductions=u.decoded["reductions"],
            )
            for u in updates
        ]
        reported = {u.partition_id for u in updates}
        failed = [pid for pid in (self.current.sampled if self.current else []) if pid not in reported]
        return allocate(self.layer_sizes, reports, self.budgets, keep={pid: self.bits[pid] for pid in failed})

    def aggregate(self, updates: list[ClientUpdate]) -> NDArrays:
        """Decode every upload to floats, average them, then set all clients' next bits (`next_bits`)."""
        decoded = [u.replace_arrays(decode_update(u.arrays, self.float_keys, u.decoded["bits"])) for u in updates]
        self.bits = self.next_bits(updates)
        return super().aggregate(decoded)

    def server_state(self) -> tuple[NDArrays, dict[str, Any]]:
        """Every client's per-layer bits for the next round."""
        return [], {"bits": {str(pid): bits for pid, bits in self.bits.items()}}

    def load_server_state(self, arrays: NDArrays, meta: dict[str, Any]) -> None:
        self.bits = {int(pid): {layer: int(b) for layer, b in bits.items()} for pid, bits in meta["bits"].items()}

    def client_record(self, update: ClientUpdate) -> dict[str, Any]:
        """Budget, the bits the server assigned, the bits the client trained, pruned to and sent."""
        bits = update.decoded["bits"]
        return {
            "budget": self.budgets[update.partition_id],
            "assigned_bits": self.bits[update.partition_id],
            "bits": bits,
            "avg_bits": average_bitwidth(bits, self.layer_sizes),
            "reductions": update.decoded["reductions"],
        }

    def evaluate_extra(self, server_round: int) -> dict[str, Any]:
        """Test accuracy (and per-class test accuracy) of the global model quantized to each client's
        next-round assignment (and the number of test images, when `eval.quant_test_images` picks a subset)."""
        metrics = self.evaluator.quantized_metrics(self.model, self.bits, self.config["quant"]["act_bits"])
        values = [accuracy for accuracy, _ in metrics.values()]
        return {
            "quant_test_accuracy_mean": float(np.mean(values)),
            "quant_test_accuracy_min": float(np.min(values)),
            "quant_test_accuracy": {str(pid): accuracy for pid, (accuracy, _) in metrics.items()},
            "quant_class_accuracy": {str(pid): classes for pid, (_, classes) in metrics.items()},
            **self.evaluator.subset_fields(),
        }

    def round_extra(self, server_round: int) -> dict[str, Any]:
        """Every client's average bits in the next round (re-allocated by `aggregate`, every round)."""
        return {
            "next_avg_bits": {str(pid): average_bitwidth(bits, self.layer_sizes) for pid, bits in self.bits.items()}
        }

    def progress_fields(self, record: dict[str, Any]) -> str:
        """The quantized models' mean and worst accuracy, in a round that evaluated them."""
        if "quant_test_accuracy_mean" not in record:
            return ""
        return f"  quant_acc mean={record['quant_test_accuracy_mean']:.4f} min={record['quant_test_accuracy_min']:.4f}"

    def quantized_end(self) -> QuantizedEnd:
        """The next-round assignment (the one `evaluate_extra` evaluates) of the client whose average
        bits is the median: the landscape's line runs from the global model quantized to it."""
        avg_bits = {pid: average_bitwidth(bits, self.layer_sizes) for pid, bits in self.bits.items()}
        partition = median_client(avg_bits)
        return QuantizedEnd(partition, self.bits[partition], avg_bits[partition], self.config["quant"]["act_bits"])

    def feature_models(self) -> tuple[dict[str, nn.Module], dict[str, int]]:
        """Also the final global model quantized to the assignment of the client with the smallest
        budget (the most compressed student), and that client's partition id."""
        models, numbers = super().feature_models()
        partition = min(self.budgets, key=lambda pid: (self.budgets[pid], pid))
        models["quant"] = quantize_model(self.model, self.bits[partition], self.config["quant"]["act_bits"])
        return models, {**numbers, "quant_partition": partition}

    def save_outputs(self) -> None:
        """The final model plus every client's final per-layer bits with the layer sizes."""
        super().save_outputs()
        assignments = {
            "layer_params": self.layer_sizes,
            "clients": {
                str(pid): {
                    "budget": self.budgets[pid],
                    "avg_bits": average_bitwidth(bits, self.layer_sizes),
                    "bits": bits,
                }
                for pid, bits in sorted(self.bits.items())
            },
        }
        (self.recorder.run_dir / BIT_ASSIGNMENTS_FILE).write_text(json.dumps(assignments, indent=2))
