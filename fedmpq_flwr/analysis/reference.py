"""Which variation each one is compared with: the full-precision reference, FedMPQ, the proposed
method, the best quantized baseline (devices run quantized models) and the best compressed
full-precision baseline, and like-with-like partners on the experimental axes.

Main-experiment variations have axis ""; an axis variation differs from the main experiment in
one config key (its `axis`), and the main variation of a method is that method's point on every
axis. When several main variations share a strategy (ablation folders), the one named like the
strategy wins, then one with "main" in its name, then the first by name. What a method is (its
family, whether it distils, the config sections it reads, its cost reference) comes from the
method catalog (`fedmpq_flwr.methods.catalog`), never from its name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fedmpq_flwr.config.schema import section_of
from fedmpq_flwr.methods import catalog
from fedmpq_flwr.methods.catalog import (
    FULL_PRECISION_REFERENCE,
    PROPOSED,
    QUANTIZED,
    QUANTIZED_REFERENCE,
    reads_section,
    spec_of,
)

FULL_PRECISION = FULL_PRECISION_REFERENCE
FEDMPQ = QUANTIZED_REFERENCE
CHOICE_RULE = (
    'main variation (axis "") of the strategy; among several, the one named like the '
    "strategy, then one with 'main' in its name, then the first by name"
)


def is_quantized(strategy: str | None) -> bool:
    """Whether the catalog puts a method in the quantized family (unknown methods are not)."""
    spec = spec_of(strategy)
    return spec is not None and spec.family == QUANTIZED


def axis_matters(axis: str, strategy: str | None) -> bool:
    """False for keys of a config section a method never reads (quant.* for full precision, kd.*
    without distillation: the catalog's `sections`), so its main variation is its like-with-like
    point at every value of such an axis."""
    return reads_section(strategy, section_of(axis))


def same_value(a: Any, b: Any) -> bool:
    """Config values equal (numbers within float tolerance, "inf" as infinity)."""
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return a == b
    return x == y or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


def main_variation(variations: dict[str, dict[str, Any]], strategy: str) -> str | None:
    """The main-experiment variation of a strategy (see the module docstring for ties)."""
    names = sorted(n for n, v in variations.items() if v["axis"] == "" and v["strategy"] == strategy)
    for pick in ([n for n in names if n == strategy], [n for n in names if "main" in n], names):
        if pick:
            return pick[0]
    return None


def is_quantized_baseline(strategy: str | None) -> bool:
    """A baseline the proposed method must beat on accuracy: per the catalog, a method whose devices
    run quantized models (family quantized), other than the proposed one (FedMPQ, FedPQ)."""
    return is_quantized(strategy) and strategy != PROPOSED


def is_compressed_baseline(strategy: str | None) -> bool:
    """A communication-compressed full-precision baseline, reported beside criterion (1) for context:
    per the catalog, a method whose devices run float models but which compresses its upload (FedPAQ,
    FedKD)."""
    spec = spec_of(strategy)
    return spec is not None and spec.family == catalog.FULL_PRECISION and spec.compresses_upload


def best_main_variation(variations: dict[str, dict[str, Any]], wanted: Callable[[str | None], bool]) -> str | None:
    """The main variation with the highest mean final accuracy among those whose strategy is `wanted`."""
    candidates = sorted(
        n
        for n, v in variations.items()
        if v["axis"] == "" and wanted(v["strategy"]) and v["final_accuracy"]["mean"] is not None
    )
    return max(candidates, key=lambda n: variations[n]["final_accuracy"]["mean"]) if candidates else None


def choose_references(variations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The named comparison points of the main experiment, with the rule used to pick them."""
    return {
        "full_precision": main_variation(variations, FULL_PRECISION),
        "fedmpq": main_variation(variations, FEDMPQ),
        "proposed": main_variation(variations, PROPOSED),
        "best_quantized_baseline": best_main_variation(variations, is_quantized_baseline),
        "best_compressed_baseline": best_main_variation(variations, is_compressed_baseline),
        "rule": CHOICE_RULE + "; best quantized baseline: the main variation with the highest mean final "
        "accuracy among the methods whose devices run quantized models (catalog family quantized), the "
        "proposed one excepted; best compressed baseline (context only): the same among the full-precision "
        "methods that compress their upload (catalog)",
    }


def partner(
    name: str, strategy: str, variations: dict[str, dict[str, Any]], axis_values: dict[str, dict[str, Any]]
) -> str | None:
    """The variation of `strategy` run in the same setting as variation `name`: itself when it is of
    that strategy; for a main variation the strategy's main variation; for an axis variation the one
    on the same axis at the same value, else the main variation when it sits at that value or the
    axis does not matter to the strategy. Either way the partner shares every other axis and setting
    key (`stats.setting_keys`, e.g. `quant.scale_grad`) that both methods read: fedmpq_kd_scale_frozen
    pairs with fedmpq_scale_frozen, never with the faithful fedmpq; None when no variation does."""
    var = variations[name]
    if var["strategy"] == strategy:
        return name
    axis = var["axis"]
    mine = axis_values[name]
    shared = [k for k in mine if k != axis and reads_section(strategy, section_of(k))]
    shared = [k for k in shared if reads_section(var["strategy"], section_of(k))]

    def agrees(other: str) -> bool:  # same value of every other axis and setting key both methods read
        return all(same_value(axis_values[other].get(k), mine.get(k)) for k in shared)

    mains = [n for n in sorted(variations) if variations[n]["axis"] == "" and variations[n]["strategy"] == strategy]
    main = main_variation(variations, strategy)
    main_pick = main if main is not None and agrees(main) else next((n for n in mains if agrees(n)), None)
    if not axis:
        return main_pick
    value = mine.get(axis)
    same_axis = sorted(
        n
        for n, v in variations.items()
        if v["strategy"] == strategy and v["axis"] == axis and same_value(axis_values[n].get(axis), value) and agrees(n)
    )
    if same_axis:
        return same_axis[0]
    if main_pick is not None and (
        not axis_matters(axis, strategy) or same_value(axis_values[main_pick].get(axis), value)
    ):
        return main_pick
    return None


def overhead_reference_strategy(strategy: str | None) -> str | None:
    """The method a strategy's costs are compared with: the catalog's `cost_reference`."""
    spec = spec_of(strategy)
    return spec.cost_reference if spec is not None else None
