"""`MethodStrategy`: the server plumbing every method shares, below the method's own hooks.

A method's strategy (`FedAvgStrategy` and its subclasses in `fedmpq_flwr.methods`) overrides hooks;
this class answers Flower's legacy `Strategy` calls with them and keeps the rest apart from the
method: seeded sampling by partition id (`server/sampling.py`), each client's reply parsed once
(`server/update.py`), failures counted and the round recorded (`server/round_log.py`), memory
peaks, server-side evaluation on the schedule of `eval.every` / `eval.quant_every`
(`server/evaluation.py`). Checkpointing wraps it from outside (`server/resume.py`).

Hooks. `fit_config` (instructions sent with the weights), `fit_arrays` (the arrays sent: the global
model, plus what a method sends with it), `download_bits`, `upload_bits`, `aggregate` (the method),
`client_record` (method fields of a participant's entry), `evaluate_extra` (more evaluation of the new
global model, in the rounds `eval.quant_every` selects), `round_extra` (method fields of every round's
record), `progress_fields`, `feature_models`, `quantized_end` (the quantized end of a loss-landscape
snapshot's line, `server/diagnostics.py`), `save_outputs`, and for resuming a stopped run
`server_state` / `load_server_state` (what the server keeps between rounds besides the global model
and the sampler). `encoded_metrics` names the JSON fields of a client's metrics that the method reads
(decoded once per reply into `ClientUpdate.decoded`).
"""

from __future__ import annotations

import time
from logging import WARNING
from typing import Any

import torch
from flwr.common import FitIns, FitRes, NDArrays, Parameters, Scalar, log, ndarrays_to_parameters
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from torch import nn

from fedmpq_flwr.client.failures import non_finite_count
from fedmpq_flwr.data.load import FederatedData, load_data
from fedmpq_flwr.data.partition import flipped_label_counts
from fedmpq_flwr.models import build_model, save_final_model
from fedmpq_flwr.rundir.results import FEATURES_FILE, MODEL_FILE, RunRecorder, write_partitions
from fedmpq_flwr.server.diagnostics import LandscapeSnapshots, QuantizedEnd
from fedmpq_flwr.server.evaluation import EvalSchedule, ServerEvaluator, client_label_counts
from fedmpq_flwr.server.outcome import RunFailed
from fedmpq_flwr.server.round_log import RoundInProgress, RoundLog, fit_summary, round_fields
from fedmpq_flwr.server.sampling import ClientSampler
from fedmpq_flwr.server.update import ClientUpdate, parse_updates
from fedmpq_flwr.training.costs import peak_gpu_mb, peak_rss_mb, reset_peak_gpu
from fedmpq_flwr.training.loop import resolve_device, train_device_settings
from fedmpq_flwr.training.weights import get_weights, set_weights

FLOAT_BITS = 32


class MethodStrategy(Strategy):
    """Sampling, the round record, failures, memory and evaluation around a method's `aggregate`."""

    encoded_metrics: tuple[str, ...] = ()

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
        self.round_log = RoundLog(recorder, config["train"]["num_rounds"], config["logging"]["tensorboard"])
        self.latest_parameters: NDArrays = get_weights(self.model)
        self.current: RoundInProgress | None = None
        self.landscape = LandscapeSnapshots(config, self.evaluator, recorder.run_dir, len(recorder.history))
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

    # ---- hooks ---------------------------------------------------------------------------

    def aggregate(self, updates: list[ClientUpdate]) -> NDArrays:
        """The new global model from the round's updates (sorted by partition id): the method."""
        raise NotImplementedError

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

    def upload_bits(self, update: ClientUpdate) -> int:
        """Bits one client sends back: its float32 weights."""
        return FLOAT_BITS * sum(int(array.size) for array in update.arrays)

    def client_record(self, update: ClientUpdate) -> dict[str, Any]:
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

    def quantized_end(self) -> QuantizedEnd | None:
        """The quantized model at the start of a loss-landscape snapshot's line (`diagnostics.landscape`):
        none for a method whose clients run float models."""
        return None

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

    # ---- the round ----------------------------------------------------------------------

    def start_round(self, server_round: int, sampled: list[int], parameters: NDArrays) -> RoundInProgress:
        """Open the record of a round whose participants are `sampled` and which sends `parameters`."""
        reset_peak_gpu(self.device)
        bits_down = sum(self.download_bits(parameters, pid) for pid in sampled)
        self.current = RoundInProgress(server_round=server_round, sampled=sampled, bits_down=bits_down)
        return self.current

    # ---- Strategy interface: the global model is `self.latest_parameters`, deserialised once ----

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Every client starts from the same seeded global model."""
        return ndarrays_to_parameters(self.latest_parameters)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """`parameters` is what `aggregate_fit` returned (or `initialize_parameters`): the arrays are
        `self.latest_parameters` already."""
        clients = self.sampler.connected(client_manager)
        sampled = self.sampler.sample(list(clients))
        sent = self.fit_arrays(server_round, self.latest_parameters)
        self.start_round(server_round, sampled, sent)
        payload = ndarrays_to_parameters(sent)
        return [(clients[pid], FitIns(payload, self.fit_config(server_round, pid))) for pid in sampled]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        updates = parse_updates((res for _, res in results), self.encoded_metrics)
        bits_up = {update.partition_id: self.upload_bits(update) for update in updates}
        fit = self.current.fit = fit_summary(updates, failures, bits_up)
        if failures:
            log(
                WARNING,
                "round %d: %d of %d sampled clients failed; dropped %s; errors %s",
                server_round, len(failures), len(self.current.sampled), fit.dropped_partitions, fit.client_errors,
            )  # fmt: skip
        if not updates:
            raise RunFailed(
                f"round {server_round}: no client update ({len(failures)} failures: "
                f"dropped {fit.dropped_partitions}, errors {fit.client_errors})"
            )
        fit.fields = round_fields(updates, bits_up, self.client_record)
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
        accuracy of the global model (`self.latest_parameters`, which `parameters` serialises) in the
        rounds `eval.every` selects and `evaluate_extra`'s in those `eval.quant_every` selects; a round
        without evaluation has no accuracy keys (and Flower gets None). After the rounds of
        `diagnostics.landscape_rounds` it takes a loss-landscape snapshot (landscape.npz)."""
        if server_round == 0:
            return None
        set_weights(self.model, self.latest_parameters)
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
        # a diagnostic, after the round's time and memory are taken: its seconds are `landscape_time_s`
        if self.landscape.due(server_round):
            record.update(self.landscape.take(server_round, self.model, self.quantized_end()))
        self.round_log.write(record, self.progress_fields(record))
        if "test_accuracy" not in record:
            return None
        return record["test_loss"], {"test_accuracy": record["test_accuracy"]}
