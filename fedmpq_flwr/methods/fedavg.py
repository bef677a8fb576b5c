"""FedAvg (McMahan et al., 2017): full-precision clients, sample-weighted averaging. The base of every method.

Client: train the received global model with SGD (momentum) for `train.local_epochs` epochs on its
partition and send the float32 weights back. Server: average them (by sample count, or unweighted
with `strategy.weighting: uniform`).

Failures (every method): a client whose training raises, whose loss or upload is not finite, or which
drops (`federation.dropout`) raises a `fedmpq_flwr.methods.failures.ClientFailure` from `fit`; the round
aggregates the others and records `num_failures`, `dropped_partitions` and `client_errors`. A round
without any update, or a non-finite global model, ends the run as `failed` (`server/outcome.py`).

Hooks for other methods. Client: `train` (what is trained and sent). Strategy: `fit_config`
(instructions sent with the weights), `fit_arrays` (the arrays sent: the global model, plus what a
method sends with it), `download_bits`, `upload_bits`, `aggregate`, `client_record`
(method fields of a participant's entry), `evaluate_extra` (more evaluation of the new global
model, in the rounds `eval.quant_every` selects), `round_extra` (method fields of every round's
record), `progress_fields`, `feature_models`, `save_outputs`, and for resuming a stopped run
`server_state` / `load_server_state` (what the server keeps between rounds besides the global model
and the sampler; see `fedmpq_flwr.server.resume`). State a client keeps between rounds goes in
`self.state` (Flower's `context.state`): it is saved with the run's checkpoint and restored for
free, see `fedmpq_flwr.rundir.node_state`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient
from flwr.common import (
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    RecordDict,
    Scalar,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.server.strategy.aggregate import aggregate
from torch import nn

from fedmpq_flwr.data.device_batches import ClientBatches, client_batches
from fedmpq_flwr.data.load import FederatedData, load_data
from fedmpq_flwr.data.partition import flipped_label_counts
from fedmpq_flwr.methods.failures import (
    DROPOUT,
    ClientDropout,
    ClientFailure,
    describe_failure,
    drops_out,
    error_line,
    non_finite_count,
    non_finite_problem,
)
from fedmpq_flwr.models import build_model, save_final_model
from fedmpq_flwr.rundir.node_state import NodeStateCheckpoint
from fedmpq_flwr.rundir.results import (
    FEATURES_FILE,
    MODEL_FILE,
    ROUND_FROM_CLIENTS,
    RunRecorder,
    round_from_clients,
    write_partitions,
)
from fedmpq_flwr.server.evaluation import EvalSchedule, ServerEvaluator, client_label_counts
from fedmpq_flwr.server.outcome import RunFailed
from fedmpq_flwr.server.round_log import FitSummary, RoundInProgress, RoundLog
from fedmpq_flwr.server.sampling import ClientSampler
from fedmpq_flwr.training.costs import peak_gpu_mb, peak_rss_mb, reset_peak_gpu
from fedmpq_flwr.training.loop import build_optimizer, resolve_device, round_lr, train_device_settings, train_epochs
from fedmpq_flwr.training.weights import get_weights, set_weights

FLOAT_BITS = 32
Update = tuple[int, NDArrays, FitRes]  # (partition id, uploaded arrays, the client's reply)


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed of one client's local training in one round: reproducible, distinct per (round, client)."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


class FedAvgClient(NumPyClient):
    """Full-precision client: SGD with momentum (or AdamW, `train.optimizer`) for `train.local_epochs` epochs."""

    server_round = 0  # the round being trained (set by `fit`): the learning-rate schedule reads it

    def __init__(
        self, config: dict[str, Any], partition_id: int, num_partitions: int, state: RecordDict | None = None
    ) -> None:
        self.config = config
        self.partition_id = partition_id
        self.num_partitions = num_partitions
        # What the node keeps between rounds (Flower's `context.state`: client objects are rebuilt every round).
        self.state = state if state is not None else RecordDict()
        self.device = resolve_device(config["federation"]["device"])

    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        """Tell the server which data partition this node holds (it samples by partition id)."""
        return {"partition_id": self.partition_id}

    def optimizer(self, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """`train.optimizer` at this round's learning rate (`train.lr` after `train.warmup_rounds` and
        `train.lr_schedule`; plain `train.lr` by default)."""
        train_cfg = self.config["train"]
        lr = train_cfg["lr"]
        if self.server_round > 0:
            lr = round_lr(
                lr, self.server_round, train_cfg["num_rounds"], train_cfg["warmup_rounds"], train_cfg["lr_schedule"]
            )
        return build_optimizer(train_cfg["optimizer"], parameters, lr, train_cfg["momentum"], train_cfg["weight_decay"])

    def train(
        self, model: nn.Module, loader: ClientBatches, config: dict[str, Any], seed: int
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Train the received global model; return what to upload and the metrics to report."""
        epochs = self.config["train"]["local_epochs"]
        stats = train_epochs(model, loader, self.optimizer(model.parameters()), epochs, self.device)
        return get_weights(model), stats

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """`local_round` with the failure checks around it: an exception, a NaN or infinite training
        loss or upload, and a seeded dropout after training (`federation.dropout`, drawn from the run
        seed, the round and the partition) raise a ClientFailure naming this partition, which Flower
        hands to the strategy's `aggregate_fit` as this client's failure."""
        self.server_round = int(config["server_round"])
        try:
            weights, num_examples, metrics = self.local_round(parameters, config)
        except ClientFailure:
            raise
        except Exception as err:
            raise ClientFailure(self.partition_id, error_line(err)) from err
        problem = non_finite_problem(metrics.get("train_loss"), weights)
        if problem is not None:
            raise ClientFailure(self.partition_id, problem)
        if drops_out(self.config["seed"], self.server_round, self.partition_id, self.config["federation"]["dropout"]):
            raise ClientDropout(self.partition_id, self.server_round)
        return weights, num_examples, metrics

    def local_round(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """One round of local work: load the partition, train the received model, report."""
        started = time.perf_counter()
        reset_peak_gpu(self.device)
        server_round = int(config["server_round"])
        node_checkpoint = NodeStateCheckpoint.from_fit_config(config, self.partition_id, server_round)
        if node_checkpoint is not None:
            node_checkpoint.begin(self.state)  # a resumed run's fresh node gets back what it kept
        seed = client_seed(self.config["seed"], server_round, self.partition_id)
        torch.manual_seed(seed)
        dataset_cfg = self.config["dataset"]
        data = load_data(dataset_cfg)
        batch_size = self.config["train"]["batch_size"]
        loader = client_batches(
            data, self.partition_id, self.num_partitions, dataset_cfg, batch_size, seed,
            label_noise=dataset_cfg["label_noise"], device=self.device,
            **train_device_settings(self.config["train"], self.device),
        )  # fmt: skip
        model = build_model(self.config["model"]["name"], data.num_classes).to(self.device)
        set_weights(model, parameters)
        weights, metrics = self.train(model, loader, config, seed)
        if node_checkpoint is not None:
            node_checkpoint.end(self.state)
        metrics.update(
            partition_id=self.partition_id,
            client_time_s=time.perf_counter() - started,
            peak_rss_mb=peak_rss_mb(),
            **peak_gpu_mb(self.device),
        )
        return weights, loader.num_examples, metrics


class FedAvgStrategy(Strategy):
    """Sample-weighted FedAvg over clients sampled by partition id with a seeded RNG; the server logs
    every round and evaluates the global model after the rounds `eval.every` selects."""

    def __init__(self, config: dict[str, Any], recorder: RunRecorder) -> None:
        super().__init__()
        self.config = config
        self.recorder = recorder
        self.device = resolve_device(config["federation"]["device"])
        self.data: FederatedData = load_data(config["dataset"])
        train_device_settings(config["train"], self.device)  # train.amp's device checked before round 1
        self.evaluator = ServerEvaluator.from_config(self.data, config, self.device)
        eval_cfg = config["eval"]
        self.schedule = EvalSchedule(config["train"]["num_rounds"], eval_cfg["every"], eval_cfg["quant_every"])
        num_clients = config["federation"]["num_clients"]
        write_partitions(recorder.run_dir, client_label_counts(self.data, config["dataset"], num_clients))
        torch.manual_seed(config["seed"])
        self.model = build_model(config["model"]["name"], self.data.num_classes).to(self.device)
        self.sampler = ClientSampler(config["seed"], config["strategy"]["fraction_fit"])
        self.round_log = RoundLog(recorder, config["train"]["num_rounds"])
        self.latest_parameters: NDArrays = get_weights(self.model)
        self.current: RoundInProgress | None = None
        recorder.info["flipped_labels"] = self.flipped_labels()

    def flipped_labels(self) -> list[int]:
        """Training labels that `dataset.label_noise` flipped, per partition id: the flips the clients
        train on, computed once on the server (results.json `flipped_labels`)."""
        dataset_cfg, num_clients = self.config["dataset"], self.config["federation"]["num_clients"]
        if dataset_cfg["label_noise"] == 0:
            return [0] * num_clients
        return flipped_label_counts(
            self.data, num_clients, dataset_cfg["alpha"], dataset_cfg["seed"], dataset_cfg["label_noise"]
        )

    # ---- hooks for subclasses ---------------------------------------------------------

    def fit_config(self, server_round: int, partition_id: int) -> dict[str, Scalar]:
        """Per-client instructions sent with the global weights."""
        return {"server_round": server_round}

    def fit_arrays(self, server_round: int, parameters: NDArrays) -> NDArrays:
        """The arrays every sampled client receives with its instructions: the global model (a method
        may append more, e.g. FedGKD's teacher, and say so in `fit_config`)."""
        return parameters

    def download_bits(self, parameters: NDArrays, partition_id: int) -> int:
        """Bits the server sends one client (`parameters`: what `fit_arrays` sends): 32 per float."""
        return FLOAT_BITS * sum(int(array.size) for array in parameters)

    def upload_bits(self, weights: NDArrays, fit_res: FitRes) -> int:
        """Bits one client sends back: its float32 weights."""
        return FLOAT_BITS * sum(int(array.size) for array in weights)

    def aggregate(self, updates: list[Update]) -> NDArrays:
        """Average of the clients' weights: by sample count (FedAvg, default) or unweighted
        (`strategy.weighting: uniform`, as the official FedMPQ code)."""
        uniform = self.config["strategy"]["weighting"] == "uniform"
        return aggregate([(weights, 1 if uniform else fit_res.num_examples) for _, weights, fit_res in updates])

    def client_record(self, partition_id: int, fit_res: FitRes) -> dict[str, Any]:
        """Method-specific fields of one participant's entry in the round's `clients` list."""
        return {}

    def evaluate_extra(self, server_round: int) -> dict[str, Any]:
        """More evaluation fields for the round, with `self.model` holding the new global model: called
        in the rounds `eval.quant_every` selects (for the quantized evaluations of quantized methods)."""
        return {}

    def round_extra(self, server_round: int) -> dict[str, Any]:
        """Method fields of every round's record that are no evaluation (written after aggregation)."""
        return {}

    def progress_fields(self, record: dict[str, Any]) -> str:
        """Extra text for the per-round progress line."""
        return ""

    def feature_models(self) -> tuple[dict[str, nn.Module], dict[str, int]]:
        """Models whose penultimate features are saved at the end (name -> model), and numbers to
        store with them: here the final global model."""
        return {"float": self.model}, {}

    def server_state(self) -> tuple[NDArrays, dict[str, Any]]:
        """What this method's server keeps from one round to the next besides the global model, the
        sampler and torch's RNG (which the checkpoint holds anyway): arrays and a JSON-able dict,
        saved after every round. FedAvg keeps nothing; FedMPQ its per-client bit assignments."""
        return [], {}

    def load_server_state(self, arrays: NDArrays, meta: dict[str, Any]) -> None:
        """Take back what `server_state` returned, in a freshly built strategy of a resumed run
        (called after the global model is restored, before the first resumed round)."""

    def save_outputs(self) -> None:
        """Files written after the last round: the final global model and its features (none when
        the run failed: its model may not be finite)."""
        if self.recorder.failure is not None:
            return
        set_weights(self.model, self.latest_parameters)
        model_name, num_classes = self.config["model"]["name"], self.data.num_classes
        save_final_model(self.recorder.run_dir / MODEL_FILE, self.model, model_name, num_classes)
        models, numbers = self.feature_models()
        self.evaluator.save_features(
            self.recorder.run_dir / FEATURES_FILE, models, numbers, seed=self.config["dataset"]["seed"]
        )

    # ---- the round's record -----------------------------------------------------------

    def round_fields(self, updates: list[Update], bits_up: dict[int, int]) -> dict[str, Any]:
        """Per-round fields for metrics.jsonl (computed before `aggregate`): one entry per participant
        with every number it reported, the sample-weighted training loss and the fields of
        `ROUND_FROM_CLIENTS`."""
        clients = [
            {
                "partition_id": pid,
                "num_examples": res.num_examples,
                "bits_up": bits_up[pid],
                **{k: v for k, v in res.metrics.items() if isinstance(v, (int, float)) and k != "partition_id"},
                **self.client_record(pid, res),
            }
            for pid, _, res in updates
        ]
        total = sum(c["num_examples"] for c in clients)
        loss = sum(c["train_loss"] * c["num_examples"] for c in clients)
        fields: dict[str, Any] = {"train_loss": loss / total if total else None, "clients": clients}
        for round_key in ROUND_FROM_CLIENTS:
            value = round_from_clients(round_key, clients)
            if value is not None:
                fields[round_key] = value
        return fields

    def start_round(self, server_round: int, sampled: list[int], parameters: NDArrays) -> RoundInProgress:
        """Open the record of a round whose participants are `sampled` and which sends `parameters`."""
        reset_peak_gpu(self.device)
        bits_down = sum(self.download_bits(parameters, pid) for pid in sampled)
        self.current = RoundInProgress(server_round=server_round, sampled=sampled, bits_down=bits_down)
        return self.current

    # ---- Strategy interface -------------------------------------------------------------

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Every client starts from the same seeded global model."""
        return ndarrays_to_parameters(self.latest_parameters)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        clients = self.sampler.connected(client_manager)
        sampled = self.sampler.sample(list(clients))
        sent = self.fit_arrays(server_round, parameters_to_ndarrays(parameters))
        self.start_round(server_round, sampled, sent)
        payload = ndarrays_to_parameters(sent)
        return [(clients[pid], FitIns(payload, self.fit_config(server_round, pid))) for pid in sampled]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        # Sorting by partition makes the float summation order, hence the result, reproducible.
        updates = sorted(
            ((int(res.metrics["partition_id"]), parameters_to_ndarrays(res.parameters), res) for _, res in results),
            key=lambda update: update[0],
        )
        bits_up = {pid: self.upload_bits(weights, res) for pid, weights, res in updates}
        reports = [describe_failure(failure) for failure in failures]
        self.current.fit = FitSummary(
            num_failures=len(failures),
            bits_up=sum(bits_up.values()),
            client_time_s=max((float(res.metrics["client_time_s"]) for _, _, res in updates), default=0.0),
            dropped_partitions=sorted(r.partition_id for r in reports if r.kind == DROPOUT),
            client_errors=sorted(
                (r.record() for r in reports if r.kind != DROPOUT),
                key=lambda e: (e["partition_id"] is None, e["partition_id"] or 0, e["error"]),
            ),
        )
        if failures:
            log(
                WARNING,
                "round %d: %d of %d sampled clients failed; dropped %s; errors %s",
                server_round, len(failures), len(self.current.sampled), self.current.fit.dropped_partitions,
                self.current.fit.client_errors,
            )  # fmt: skip
        if not updates:
            raise RunFailed(
                f"round {server_round}: no client update ({len(failures)} failures: "
                f"dropped {self.current.fit.dropped_partitions}, errors {self.current.fit.client_errors})"
            )
        self.current.fit.fields = self.round_fields(updates, bits_up)
        self.latest_parameters = self.aggregate(updates)
        bad = non_finite_count(self.latest_parameters)
        if bad:
            raise RunFailed(f"round {server_round}: the aggregated global model has {bad} NaN or infinite values")
        return ndarrays_to_parameters(self.latest_parameters), {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        return []  # evaluation happens on the server, in `evaluate`

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[float | None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """Log the round (training, bits, time) to metrics.jsonl, with the test (and validation)
        accuracy of the global model in the rounds `eval.every` selects and `evaluate_extra`'s in those
        `eval.quant_every` selects; a round without evaluation has no accuracy keys (and Flower gets None)."""
        if server_round == 0:
            return None
        set_weights(self.model, parameters_to_ndarrays(parameters))
        record: dict[str, Any] = {"round": server_round}
        if self.schedule.evaluates(server_round):
            record.update(self.evaluator.float_metrics(self.model))
        if self.schedule.evaluates_quantized(server_round):
            record.update(self.evaluate_extra(server_round))
        record.update(self.round_extra(server_round))
        current, fit = self.current, self.current.fit
        record.update(
            bits_up=fit.bits_up if fit else 0,
            bits_down=current.bits_down,
            round_time_s=time.perf_counter() - current.started,
            server_peak_rss_mb=peak_rss_mb(),
            **{f"server_{key}": value for key, value in peak_gpu_mb(self.device).items()},
            num_sampled=len(current.sampled),
            num_failures=fit.num_failures if fit else 0,
            sampled_partitions=current.sampled,
            dropped_partitions=fit.dropped_partitions if fit else [],
            client_errors=fit.client_errors if fit else [],
        )
        if fit is not None:
            record.update(client_time_s=fit.client_time_s, **fit.fields)
        self.round_log.write(record, self.progress_fields(record))
        if "test_accuracy" not in record:
            return None
        return record["test_loss"], {"test_accuracy": record["test_accuracy"]}
