"""The method catalog: what each federated method IS, declared, so nothing is guessed from its name.

Pure Python (no torch, no Flower): the config schema, the runner and the analyzer read it. Each
entry names the module holding the method's client and strategy; `fedmpq_flwr.methods.registry`
imports it only when a run needs it. Adding a method is one module in `methods/` plus one entry
here (with the config section it owns, if any).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from fedmpq_flwr.config.fields import ConfigError, Field, Section, choice, number
from fedmpq_flwr.models import MODELS

FULL_PRECISION = "full_precision"
QUANTIZED = "quantized"
# Config sections every method reads; a method's own sections are listed in its entry.
COMMON_SECTIONS = ("strategy", "model", "dataset", "train", "eval", "federation", "logging", "diagnostics")


@dataclass(frozen=True)
class Message:
    """One direction of a method's round messages, by name. Flower's legacy messages carry one list
    of arrays and a dict of scalars: `arrays` names the parts of the list in the order sent (a part
    may be empty in some rounds), `fields` the scalars the receiver acts on: the fit instructions
    down; up, the reply's sample count and the reports the server decodes, keys or aggregates with.
    Reports that only feed the run's record (losses, times, FLOPs, memory, distillation
    diagnostics) are measurements of the study, not protocol, and are not listed:
    `tests/test_method_payloads.py` checks that the server's next messages and global model do not
    depend on them, and that the declaration matches what each method sends."""

    arrays: tuple[str, ...]
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Payload:
    """A method's upload (client to server) and download (server to client) in one round."""

    upload: Message
    download: Message


@dataclass(frozen=True)
class MethodSpec:
    """One method's declared facts."""

    module: str  # fedmpq_flwr.methods.<module> holds the method's classes:
    client: str  # its NumPyClient subclass
    strategy: str  # its legacy Strategy subclass
    family: str  # FULL_PRECISION (float models on the devices) or QUANTIZED
    distils: bool  # its clients add a distillation term
    compresses_upload: bool  # clients send fewer than 32 bits per float
    cost_reference: str | None  # the method its bits, time and FLOPs are compared with (None: none)
    sections: tuple[str, ...]  # config sections it reads besides COMMON_SECTIONS
    summary: str  # one line for reports and the README
    payload: Callable[[dict[str, Any]], Payload]  # what its round messages carry, given a run's (nested) config
    # checks across keys of a validated run config (nested), raising a one-line ConfigError
    check: Callable[[dict[str, Any]], None] | None = None


def _parse_budgets(key: str, value: Any) -> list[float]:
    """Per-client bit budgets: a YAML list or a comma-separated string ("2,2,3"); "" means none."""
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError(f"key '{key}': value {value!r} must be a list of numbers in [1, 8] or a string like '2,2,3'")
    budgets = []
    for item in items:
        try:
            budget = float(item)
        except (TypeError, ValueError):
            budget = math.nan
        if isinstance(item, bool) or not 1 <= budget <= 8:
            raise ConfigError(
                f"key '{key}': value {value!r} has entry {item!r}; each budget must be a number in [1, 8]"
            )
        budgets.append(int(budget) if budget.is_integer() else budget)
    return budgets


# Sections owned by methods: the schema assembles them with the common ones (config/schema.py).
QUANT: Section = {
    "budgets": Field(list, [], parse=_parse_budgets),  # per client (tiled when shorter); [] = avg_bits for all
    "avg_bits": number(float, 4.0, 1, 8),
    "lambda_b": number(float, 0.01, 0),
    "thre": number(float, 2.0, 0, 100),
    "act_bits": number(int, 4, 1, 8),
    "rounding": choice("stochastic", "stochastic", "nearest"),
    "scale_grad": choice("plain", "plain", "lsq", "frozen"),  # how the bit-plane scales learn (quant/bitplanes.py)
}
KD: Section = {
    "alpha": number(float, 0.5, 0),
    "temperature": number(float, 2.0, 0, low_open=True),
    "teacher": choice("frozen", "frozen", "updating", "history"),
    "ema_decay": number(float, 0.99, 0, 1),
    "refresh_every": number(int, 1, 1),
    "history": number(int, 5, 1),  # teacher `history`: the average of the last this many global models
    # alpha_t per round, sent by the server: constant (kd.alpha), ramp (up from 0) or decay (down to 0)
    "schedule": choice("constant", "constant", "ramp", "decay"),
    # N, the rounds the ramp or decay takes: an int >= 1 for ramp and decay; 0 (unset) for constant
    "schedule_rounds": Field(int, 0, lambda v: v >= 0, "an int >= 1 for kd.schedule ramp or decay (0: unset)"),
    # per-sample weight on the KL term: 1, the teacher's top-1 correctness, or its probability of the label
    "gate": choice("none", "none", "correct", "confidence"),
}
PAQ: Section = {  # FedPAQ's QSGD quantizer of the upload (fedmpq_flwr.quant.qsgd)
    "bits": number(int, 4, 2, 8),  # per coordinate, sign included: s = 2^(bits-1) - 1 levels
    "bucket": number(int, 512, 1),  # coordinates per bucket; one float32 norm each
}
QFFL: Section = {
    "q": number(float, 1.0, 0),  # q-FFL's fairness exponent; q = 0 is uniform FedAvg
    "lipschitz_scale": number(float, 1.0, 0, low_open=True),  # L = lipschitz_scale / train.lr; 1 is the authors' rule
}


def _whole_budgets(config: dict[str, Any]) -> None:
    """FedPQ runs every layer of a client at its budget: each budget must be a whole number of bits."""
    budgets, avg_bits = config["quant"]["budgets"], config["quant"]["avg_bits"]
    if budgets:
        odd = next((b for b in budgets if not float(b).is_integer()), None)
        if odd is not None:
            raise ConfigError(
                f"key 'quant.budgets': value {budgets} has entry {odd!r}; fedpq runs every layer of a client "
                "at its budget, so each budget must be a whole number of bits"
            )
    elif not float(avg_bits).is_integer():
        raise ConfigError(
            f"key 'quant.avg_bits': value {avg_bits:g} is not a whole number; fedpq runs every "
            "layer at the budget: set whole-number quant.budgets or an integer quant.avg_bits"
        )


GKD: Section = {  # FedGKD (code README defaults)
    "gamma": number(float, 0.1, 0),
    "temperature": number(float, 1.0, 0, low_open=True),
    "buffer": number(int, 5, 1),  # global models averaged into the teacher, the current one included
    "gate": choice("none", "none", "correct", "confidence"),  # per-sample weight on the KL term, as kd.gate
}
FEDKD: Section = {  # FedKD (code defaults)
    "mentor": Field(str, "resnet32", choices=tuple(MODELS)),  # the private model; needs the mentee's stages
    "energy_start": number(float, 0.95, 0, 1, low_open=True),  # SVD energy share kept in round 1
    "energy_end": number(float, 0.98, 0, 1, low_open=True),  # ... and in the last round
}
METHOD_SECTIONS: dict[str, Section] = {"quant": QUANT, "kd": KD, "paq": PAQ, "qffl": QFFL, "gkd": GKD, "fedkd": FEDKD}


def _check_kd(config: dict[str, Any]) -> None:
    """The history teacher is rebuilt by the server every round: `kd.refresh_every` does not apply.
    `kd.schedule_rounds` is set exactly when the schedule ramps or decays."""
    kd = config["kd"]
    if kd["teacher"] == "history" and kd["refresh_every"] != 1:
        raise ConfigError(
            f"key 'kd.refresh_every': value {kd['refresh_every']} needs kd.teacher frozen or updating; "
            "the history teacher (kd.teacher: history) is rebuilt by the server every round"
        )
    if kd["schedule"] != "constant" and kd["schedule_rounds"] < 1:
        raise ConfigError(
            f"key 'kd.schedule_rounds': value {kd['schedule_rounds']} is unset; kd.schedule {kd['schedule']} "
            "needs an int >= 1, the rounds over which alpha changes"
        )
    if kd["schedule"] == "constant" and kd["schedule_rounds"] != 0:
        raise ConfigError(
            f"key 'kd.schedule_rounds': value {kd['schedule_rounds']} needs kd.schedule ramp or decay; "
            "kd.schedule constant uses kd.alpha in every round"
        )


@cache
def _stage_problem(mentee: str, mentor: str, image_chw: tuple[int, int, int]) -> tuple[str, str] | None:
    """(key, message) when FedKD's mentor cannot be compared stage by stage with the mentee, else None."""
    import torch  # only when a FedKD run is checked

    from fedmpq_flwr.models import build_model
    from fedmpq_flwr.training.mutual_distillation import STAGES, stage_shapes

    with torch.random.fork_rng(devices=[]):  # building models must not move the caller's random stream
        shapes = {name: stage_shapes(build_model(name), image_chw) for name in (mentee, mentor)}
    stages = ", ".join(STAGES)
    if shapes[mentee] is None:
        return "model.name", (
            f"value {mentee!r} has no stages {stages}, which FedKD's hidden-state loss compares; "
            "use a CIFAR ResNet (resnet20, resnet32) as the mentee"
        )
    if shapes[mentor] != shapes[mentee]:
        found = "no stages " + stages if shapes[mentor] is None else f"stage outputs {shapes[mentor]}"
        return "fedkd.mentor", (
            f"value {mentor!r} has {found} but model.name {mentee!r} has stage outputs {shapes[mentee]}; "
            "the mentor needs the mentee's stage output shapes (resnet32 for resnet20)"
        )
    return None


def _check_fedkd(config: dict[str, Any]) -> None:
    """The mentor's stage outputs have the mentee's shapes on this dataset's images."""
    from fedmpq_flwr.data.registry import DATASETS

    height, width, channels = DATASETS[config["dataset"]["name"]].image_shape
    problem = _stage_problem(config["model"]["name"], config["fedkd"]["mentor"], (channels, height, width))
    if problem is not None:
        key, message = problem
        raise ConfigError(f"key '{key}': {message}")


# What the methods' round messages carry (`Message`); the names are those the methods' modules send.
COMMON_UP = ("num_examples", "partition_id")  # every reply: its sample count, and the partition it is keyed by
COMMON_DOWN = ("server_round",)
GLOBAL_MODEL = ("global_model",)  # the float32 global model, one array per state entry
FLOAT_PAYLOAD = Payload(
    upload=Message(arrays=("float_weights",), fields=COMMON_UP),
    download=Message(arrays=GLOBAL_MODEL, fields=COMMON_DOWN),
)
BITPLANE_PAYLOAD = Payload(  # int16 codes (float32 for unquantized entries), then one scale per quantized tensor
    upload=Message(arrays=("codes", "scales"), fields=(*COMMON_UP, "bits", "reductions")),
    download=Message(arrays=GLOBAL_MODEL, fields=(*COMMON_DOWN, "bits")),
)


def _always(payload: Payload) -> Callable[[dict[str, Any]], Payload]:
    """The payload of a method whose messages no config key changes."""
    return lambda config: payload


def _with_history_teacher(payload: Payload) -> Payload:
    """The download also carries the history teacher and says how many arrays and which rounds it holds."""
    down = payload.download
    teacher = Message(
        arrays=(*down.arrays, "history_teacher"), fields=(*down.fields, "teacher_arrays", "teacher_rounds")
    )
    return replace(payload, download=teacher)


def _fedmpq_kd_payload(config: dict[str, Any]) -> Payload:
    """FedMPQ's messages (the teacher stays on the client), except that the server sends the history
    teacher (`kd.teacher: history`) and, under a `ramp` or `decay` schedule, the round's alpha."""
    payload = _with_history_teacher(BITPLANE_PAYLOAD) if config["kd"]["teacher"] == "history" else BITPLANE_PAYLOAD
    if config["kd"]["schedule"] == "constant":
        return payload
    down = payload.download
    return replace(payload, download=Message(arrays=down.arrays, fields=(*down.fields, "kd_alpha")))


CATALOG: dict[str, MethodSpec] = {
    "fedavg": MethodSpec(
        module="fedavg",
        client="FedAvgClient",
        strategy="FedAvgStrategy",
        family=FULL_PRECISION,
        distils=False,
        compresses_upload=False,
        cost_reference=None,
        sections=(),
        summary="FedAvg (McMahan et al., 2017): full-precision clients, weighted averaging",
        payload=_always(FLOAT_PAYLOAD),
    ),
    "fedmpq": MethodSpec(
        module="fedmpq",
        client="FedMPQClient",
        strategy="FedMPQStrategy",
        family=QUANTIZED,
        distils=False,
        compresses_upload=True,
        cost_reference="fedavg",
        sections=("quant",),
        summary="FedMPQ (Chen & Vikalo, CVPR 2024): bit-plane clients, pruning, server bit re-allocation",
        payload=_always(BITPLANE_PAYLOAD),
    ),
    "fedmpq_kd": MethodSpec(
        module="fedmpq_kd",
        client="FedMPQKDClient",
        strategy="FedMPQKDStrategy",  # FedMPQ's server, plus the history teacher (kd.teacher: history)
        family=QUANTIZED,
        distils=True,
        compresses_upload=True,
        cost_reference="fedmpq",
        sections=("quant", "kd"),
        summary="FedMPQ-KD: FedMPQ whose clients distil from a frozen full-precision copy of the global model "
        "(optionally with a per-round alpha schedule and a per-sample gate)",
        payload=_fedmpq_kd_payload,
        check=_check_kd,
    ),
    "fedgkd": MethodSpec(
        module="fedgkd",
        client="FedGKDClient",
        strategy="FedGKDStrategy",
        family=FULL_PRECISION,
        distils=True,
        compresses_upload=False,
        cost_reference="fedavg",
        sections=("gkd",),
        summary="FedGKD (Yao et al., 2021): FedAvg whose clients distil from the average of the last M global models",
        payload=_always(_with_history_teacher(FLOAT_PAYLOAD)),
    ),
    "fedkd": MethodSpec(
        module="fedkd",
        client="FedKDClient",
        strategy="FedKDStrategy",
        family=FULL_PRECISION,
        distils=True,
        compresses_upload=True,
        cost_reference="fedavg",
        sections=("fedkd",),
        summary="FedKD (Wu et al., 2022): a shared mentee and a private mentor in mutual distillation, "
        "SVD-compressed mentee updates",
        payload=_always(
            Payload(
                upload=Message(arrays=("svd_factors",), fields=(*COMMON_UP, "svd_layout")),
                download=Message(arrays=GLOBAL_MODEL, fields=(*COMMON_DOWN, "svd_energy")),
            )
        ),
        check=_check_fedkd,
    ),
    "fedpq": MethodSpec(
        module="fedpq",
        client="FedPQClient",
        strategy="FedPQStrategy",
        family=QUANTIZED,
        distils=False,
        compresses_upload=True,
        cost_reference="fedavg",
        sections=("quant",),
        summary="FedPQ (AQFL arm of the FedMPQ code): bit-plane clients, every layer at the client's "
        "integer budget, no pruning, no re-allocation",
        payload=_always(BITPLANE_PAYLOAD),
        check=_whole_budgets,
    ),
    "fedpaq": MethodSpec(
        module="fedpaq",
        client="FedPAQClient",
        strategy="FedPAQStrategy",
        family=FULL_PRECISION,
        distils=False,
        compresses_upload=True,
        cost_reference="fedavg",
        sections=("paq",),
        summary="FedPAQ (Reisizadeh et al., AISTATS 2020): full-precision clients upload the QSGD "
        "quantization of their model update",
        payload=_always(
            replace(FLOAT_PAYLOAD, upload=Message(arrays=("qsgd_levels", "bucket_norms"), fields=COMMON_UP))
        ),
    ),
    "qffl": MethodSpec(
        module="qffl",
        client="QFFLClient",
        strategy="QFFLStrategy",
        family=FULL_PRECISION,
        distils=False,
        compresses_upload=False,
        cost_reference="fedavg",
        sections=("qffl",),
        summary="q-FFL / q-FedAvg (Li et al., ICLR 2020): full-precision clients, steps reweighted by "
        "the clients' losses to the power q",
        payload=_always(
            replace(FLOAT_PAYLOAD, upload=Message(arrays=("scaled_delta",), fields=(*COMMON_UP, "qffl_h")))
        ),
    ),
}

# The named comparison points of the design (the analyzer's references and success criteria).
FULL_PRECISION_REFERENCE = "fedavg"
QUANTIZED_REFERENCE = "fedmpq"
PROPOSED = "fedmpq_kd"


def method_names() -> tuple[str, ...]:
    return tuple(CATALOG)


def spec_of(name: str | None) -> MethodSpec | None:
    """The catalog entry of a method, or None for a name the catalog does not know."""
    return CATALOG.get(name) if name else None


def reads_section(name: str | None, section: str) -> bool:
    """Whether a method reads a config section (unknown methods are assumed to read everything)."""
    spec = spec_of(name)
    return spec is None or section in COMMON_SECTIONS or section in spec.sections
