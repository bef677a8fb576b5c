"""The schema: the sections every run has (declared here and, for `dataset`, in data/options.py) plus
the sections methods own (the catalog); `diagnostics` is declared in config/diagnostics.py.

Keys are dotted (`train.lr`); run-level keys have no section. Pure Python: importing it does not
pull in torch (the model registry does not either), so a launcher checks a file in a fraction of a second.
"""

from __future__ import annotations

from functools import cache

from fedmpq_flwr.config.diagnostics import DIAGNOSTICS
from fedmpq_flwr.config.fields import Field, Section, choice, flag, number, text
from fedmpq_flwr.models import MODELS


def _method_names() -> tuple[str, ...]:
    from fedmpq_flwr.methods.catalog import method_names  # the catalog imports config.fields: import late

    return method_names()


RUN: Section = {
    "run_id": text("flwr-run"),
    "variation": text(),  # the name shared by the seeds of one setting ("" = run_id)
    "axis": text(),  # the config key this run varies against the main experiment ("" = none)
    "description": text(),
    "seed": number(int, 0, 0),
    "results_dir": text("results"),
}
STRATEGY: Section = {
    "name": Field(str, "fedavg", choices=_method_names),
    "fraction_fit": number(float, 1.0, 0, 1, low_open=True),
    "weighting": choice("samples", "samples", "uniform"),
}
MODEL: Section = {"name": Field(str, "resnet20", choices=tuple(MODELS))}
TRAIN: Section = {
    "num_rounds": number(int, 50, 1),
    "local_epochs": number(int, 1, 1),
    "batch_size": number(int, 64, 1),
    "lr": number(float, 0.1, 0, low_open=True),
    "momentum": number(float, 0.9, 0, 1, high_open=True),
    "weight_decay": number(float, 0.0, 0),
    "eval_batch_size": number(int, 128, 1),  # faster per image than 256 on CPU
    "optimizer": choice("sgd", "sgd", "adamw"),  # adamw: betas (momentum, 0.999), decoupled weight decay
    "warmup_rounds": number(int, 0, 0),  # linear learning-rate warm-up over the first rounds (0 = none)
    "lr_schedule": choice("constant", "constant", "cosine"),  # after the warm-up, per round
    "channels_last": flag(False),  # client batches and model laid out NHWC while training (faster convs on GPUs)
    "amp": choice("off", "off", "bf16"),  # bf16: forward passes under CUDA autocast (no loss scaling needed)
}
FEDERATION: Section = {
    "num_clients": number(int, 10, 1),
    "client_cpus": number(int, 1, 1),
    "client_gpus": Field(float, -1.0, lambda v: v == -1 or 0 <= v <= 1, "-1 (auto) or a number in [0, 1]"),
    "device": choice("auto", "auto", "cpu", "cuda"),
    # share of sampled clients that drop after local training, before upload (seeded per round and client)
    "dropout": number(float, 0.0, 0, 1, high_open=True),
}
# How often the server evaluates the global model (the last round always): evaluation of a large test
# set, and of the model quantized to every client's assignment, can cost as much as a round's training.
EVAL: Section = {
    "every": number(int, 1, 1),  # the float global model every this many rounds
    "quant_every": number(int, 1, 1),  # the global model quantized to each client's assignment (quantized methods)
    # test images of the quantized passes: a fixed class-balanced subset (0 = all); the float model sees all
    "quant_test_images": number(int, 0, 0),
}
# What a run writes besides the results contract (docs/results.md), for watching it live.
LOGGING: Section = {
    "tensorboard": flag(False),  # RUN_DIR/tensorboard/: every numeric round field as a scalar at step = round
}
COMMON: dict[str, Section] = {
    "strategy": STRATEGY,
    "model": MODEL,
    "train": TRAIN,
    "eval": EVAL,
    "federation": FEDERATION,
    "logging": LOGGING,
    "diagnostics": DIAGNOSTICS,  # config/diagnostics.py
}


def sections() -> dict[str, Section]:
    """Every section by name: the common ones, the data's (data/options.py), the methods' (catalog)."""
    from fedmpq_flwr.data.options import DATASET  # both import config.fields: import late
    from fedmpq_flwr.methods.catalog import METHOD_SECTIONS

    return {**COMMON, "dataset": DATASET, **METHOD_SECTIONS}


@cache
def schema() -> dict[str, Field]:
    """Every key of a run config: the run keys, then every section's."""
    flat = dict(RUN)
    for name, section in sections().items():
        flat.update({f"{name}.{key}": field for key, field in section.items()})
    return flat


def section_of(key: str) -> str:
    """`train.lr` -> `train`; run-level keys -> ''."""
    return key.rsplit(".", 1)[0] if "." in key else ""
