"""Numbers derived from the variations: target accuracy and rounds to reach it, gaps to full
precision, cost overheads, Welch t-tests over seeds and robustness along each axis.

Accuracies stay fractions; differences and gaps are in percentage points ("_points").
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np

from fedmpq_flwr.analysis import fairness
from fedmpq_flwr.analysis.reference import (
    FEDMPQ,
    FULL_PRECISION,
    PROPOSED,
    is_quantized,
    main_variation,
    overhead_reference_strategy,
    partner,
)
from fedmpq_flwr.analysis.runs import axis_order, axis_point, config_value, json_number
from fedmpq_flwr.config import defaults, flatten
from fedmpq_flwr.config.schema import section_of
from fedmpq_flwr.methods.catalog import spec_of

DEFAULT_TARGET_SHARE = 0.9
TESTED_METRICS = ("final_accuracy", "auc_accuracy", "final_quant_accuracy_mean")
# Per-round costs compared with the overhead reference: output name -> variation scalar.
OVERHEADS = {
    "round_time_overhead": "mean_round_time_s",
    "client_compute_overhead": "mean_client_compute_s",
    "client_time_overhead": "mean_client_time_s",
    "bits_up_overhead": "mean_bits_up_per_round",
    "bits_down_overhead": "mean_bits_down_per_round",
    "train_flops_overhead": "mean_train_flops_per_round",
}


def mean_of(variations: dict[str, dict[str, Any]], name: str | None, key: str) -> float | None:
    """A variation's across-seed mean of a scalar (None for a missing variation or value)."""
    return None if name is None else variations[name][key]["mean"]


def points(a: float | None, b: float | None) -> float | None:
    """a - b in percentage points (accuracies are fractions)."""
    return None if a is None or b is None else 100.0 * (a - b)


def ratio_minus_one(a: float | None, b: float | None) -> float | None:
    """Relative overhead a / b - 1 (None when undefined)."""
    return None if a is None or b is None or b == 0 else a / b - 1.0


RUN_LEVEL_KEYS = frozenset({"run_id", "variation", "description", "axis", "seed", "results_dir"})
# How often the server evaluates, and its diagnostics, change what is recorded, not what is trained: no setting key.
RECORDING_SECTIONS = ("eval", "diagnostics")


@cache
def flatten_defaults() -> dict[str, Any]:
    """Every config key's default, dotted."""
    return flatten(defaults())


def setting_keys(variations: dict[str, dict[str, Any]], groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Config keys on which two main variations of one strategy differ (`quant.scale_grad` for
    fedmpq against fedmpq_scale_frozen): settings a partner must share besides the axes. A key
    missing from an older saved config counts as its default."""
    defaults = flatten_defaults()
    keys: set[str] = set()
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for name, var in variations.items():
        if var["axis"] == "":
            by_strategy.setdefault(var["strategy"], []).append(flatten(groups[name][0]["config"]))
    for configs in by_strategy.values():
        for key in set().union(*configs) - RUN_LEVEL_KEYS:
            if section_of(key) in RECORDING_SECTIONS:
                continue
            if len({repr(c.get(key, defaults.get(key))) for c in configs}) > 1:
                keys.add(key)
    return sorted(keys)


def axis_values(
    variations: dict[str, dict[str, Any]], groups: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Each variation's value of every axis key present and of every setting key (`setting_keys`),
    from its first run's config (inf stays a float; a missing setting key counts as its default)."""
    axes = sorted({v["axis"] for v in variations.values() if v["axis"]})
    settings = [k for k in setting_keys(variations, groups) if k not in axes]
    defaults = flatten_defaults()
    values = {}
    for name in variations:
        config = groups[name][0]["config"]
        values[name] = {axis: config_value(config, axis) for axis in axes}
        values[name].update({key: flatten(config).get(key, defaults.get(key)) for key in settings})
    return values


def choose_target(
    variations: dict[str, dict[str, Any]], references: dict[str, Any], override: float | None
) -> dict[str, Any]:
    """The accuracy 'rounds to target' counts up to, and where it comes from."""
    if override is not None:
        return {"value": override, "source": "--target-accuracy"}
    base = references["full_precision"]
    finals = {n: v["final_accuracy"]["mean"] for n, v in variations.items() if v["final_accuracy"]["mean"] is not None}
    if base is None and finals:
        base = max(sorted(finals), key=finals.get)
    if base is None or base not in finals:
        return {"value": None, "source": "no completed variation"}
    kind = (
        "the full-precision reference"
        if base == references["full_precision"]
        else "the best variation (no full-precision run)"
    )
    return {
        "value": DEFAULT_TARGET_SHARE * finals[base],
        "source": f"{DEFAULT_TARGET_SHARE:.0%} of the mean final accuracy of {kind} {base} ({finals[base]:.4f})",
    }


def rounds_to_target(rounds: list[int], mean_curve: list[float] | None, target: float | None) -> int | None:
    """The first round whose mean accuracy over seeds reaches the target (None if never); `rounds` are
    the evaluated ones, so with `eval.every` k the answer is known to within k rounds."""
    if target is None or not mean_curve:
        return None
    return next((rnd for rnd, acc in zip(rounds, mean_curve) if acc >= target), None)


def welch(a: list[float], b: list[float]) -> dict[str, Any]:
    """Welch's t-test (unequal variances) of two samples of seeds, or why it cannot be run."""
    if len(a) < 2 or len(b) < 2:
        return {"t": None, "p": None, "note": f"n/a: fewer than 2 seeds ({len(a)} vs {len(b)})"}
    if np.var(a) == 0 and np.var(b) == 0:
        return {"t": None, "p": None, "note": "n/a: zero variance on both sides"}
    from scipy import stats as scipy_stats  # imported here: slow to import, needed only with 2+ seeds a side

    result = scipy_stats.ttest_ind(a, b, equal_var=False)
    return {"t": float(result.statistic), "p": float(result.pvalue), "note": None}


def compare(groups: dict[str, list[dict[str, Any]]], a: str, b: str, metric: str) -> dict[str, Any] | None:
    """Means, difference (points) and Welch test of a per-run metric between two variations
    (None when either lacks it)."""
    values_a, values_b = ([r[metric] for r in groups[n]] for n in (a, b))
    if any(v is None for v in values_a + values_b):
        return None
    mean_a, mean_b = float(np.mean(values_a)), float(np.mean(values_b))
    return {
        "a": a,
        "b": b,
        "metric": metric,
        "n_a": len(values_a),
        "n_b": len(values_b),
        "mean_a": mean_a,
        "mean_b": mean_b,
        "diff_points": points(mean_a, mean_b),
        **welch(values_a, values_b),
    }


def derive_methods(
    variations: dict[str, dict[str, Any]], axis_vals: dict[str, dict[str, Any]], target: float | None
) -> dict[str, dict[str, Any]]:
    """Per variation: rounds to target, gap to full precision, share of FedMPQ's gap closed (None
    when FedMPQ has no gap: it is not below full precision), cost overheads against its
    like-with-like reference method, and the per-client accuracy of the model its devices run."""
    methods = {}
    for name, var in variations.items():
        final = var["final_accuracy"]["mean"]
        fp, fm = (partner(name, s, variations, axis_vals) for s in (FULL_PRECISION, FEDMPQ))
        fp_final, fm_final = mean_of(variations, fp, "final_accuracy"), mean_of(variations, fm, "final_accuracy")
        closes_gap = (
            is_quantized(var["strategy"])
            and var["strategy"] != FEDMPQ
            and None not in (final, fp_final, fm_final)
            and fp_final > fm_final
        )
        gap_closed = (final - fm_final) / (fp_final - fm_final) if closes_gap else None
        ref_strategy = overhead_reference_strategy(var["strategy"])
        ref = partner(name, ref_strategy, variations, axis_vals) if ref_strategy else None
        spec = spec_of(var["strategy"])
        methods[name] = {
            "family": spec.family if spec else None,  # declared in the method catalog
            "distils": spec.distils if spec else None,
            "rounds_to_target": rounds_to_target(var["accuracy_rounds"], var["accuracy_per_round_mean"], target),
            "full_precision": fp,
            "gap_to_full_precision_points": points(fp_final, final),
            "fedmpq": fm,
            "gap_closed_vs_fedmpq": gap_closed,
            "overhead_reference": ref,
            "final_accuracy_diff_points": points(final, mean_of(variations, ref, "final_accuracy")),
            **{out: ratio_minus_one(var[key]["mean"], mean_of(variations, ref, key)) for out, key in OVERHEADS.items()},
            "client_accuracy": fairness.method_fields(var),
        }
    return methods


def welch_tests(
    variations: dict[str, dict[str, Any]],
    groups: dict[str, list[dict[str, Any]]],
    methods: dict[str, dict[str, Any]],
    references: dict[str, Any],
) -> list[dict[str, Any]]:
    """Tests of each variation against its reference method, and of the proposed method against the
    best quantized baseline, the best compressed full-precision baseline and full precision, on every
    metric both sides have."""
    pairs = [(n, m["overhead_reference"]) for n, m in methods.items() if m["overhead_reference"] not in (None, n)]
    proposed = references["proposed"]
    pairs += [
        (proposed, references[k])
        for k in ("best_quantized_baseline", "best_compressed_baseline", "full_precision")
        if proposed and references[k]
    ]
    tests = []
    for a, b in dict.fromkeys(pairs):  # ordered, without duplicates
        tests += [t for t in (compare(groups, a, b, metric) for metric in TESTED_METRICS) if t is not None]
    return tests


def robustness(variations: dict[str, dict[str, Any]], axis_vals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per axis and method: final accuracy at each axis value (the main variation is every axis's main
    point), degradation from the method's best value on the axis, and proposed minus FedMPQ per value."""
    result = {}
    for axis in sorted({v["axis"] for v in variations.values() if v["axis"]}):
        strategies = sorted({v["strategy"] for v in variations.values() if v["axis"] == axis and v["strategy"]})
        per_method: dict[str, list[dict[str, Any]]] = {}
        for strategy in strategies:
            members = sorted(n for n, v in variations.items() if v["axis"] == axis and v["strategy"] == strategy)
            members += [m for m in [main_variation(variations, strategy)] if m]
            at_value: dict[float | str, str] = {}  # numbers, or names for a categorical axis (model.name)
            for name in members:
                value = axis_point(axis_vals[name].get(axis))
                if value is not None:
                    at_value.setdefault(value, name)
            finals = {value: variations[n]["final_accuracy"] for value, n in at_value.items()}
            best = max((f["mean"] for f in finals.values() if f["mean"] is not None), default=None)
            per_method[strategy] = [
                {
                    "value": json_number(value),
                    "variation": at_value[value],
                    "n": variations[at_value[value]]["n"],
                    "final_accuracy_mean": finals[value]["mean"],
                    "final_accuracy_std": finals[value]["std"],
                    "degradation_points": points(best, finals[value]["mean"]),
                }
                for value in sorted(at_value, key=axis_order)
            ]
        diffs = []
        by_value = {s: {row["value"]: row["final_accuracy_mean"] for row in rows} for s, rows in per_method.items()}
        for value in sorted({axis_point(v) for rows in by_value.values() for v in rows}, key=axis_order):
            key = json_number(value)
            if key in by_value.get(PROPOSED, {}) and key in by_value.get(FEDMPQ, {}):
                diffs.append({"value": key, "points": points(by_value[PROPOSED][key], by_value[FEDMPQ][key])})
        result[axis] = {"methods": per_method, "proposed_minus_fedmpq_points": diffs}
    return result


def finite_or_none(value: Any) -> Any:
    """NaN/inf numbers as None (JSON without NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value
