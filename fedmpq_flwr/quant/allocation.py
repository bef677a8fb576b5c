"""FedMPQ server-side bit allocation (Chen & Vikalo, CVPR 2024) as pure functions.

Kept free of torch and Flower so the greedy rules can be checked by hand: the server averages
what clients pruned, ranks layers by how much pruning they absorbed, and refits each client's
per-layer bit-widths to its own budget. Layers are named; dicts follow `layer_sizes` order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_BITS = 1
MAX_BITS = 8
_TOL = 1e-9


@dataclass(frozen=True)
class ClientBits:
    """What one client reported after local training."""

    num_examples: int
    budget: float
    bits: dict[str, int]  # per-layer bit-width after its pruning
    reductions: dict[str, int]  # per-layer number of bits its pruning removed this round


def average_bits(reports: list[ClientBits]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-layer average of the assignments and of the reductions, client k weighted by num_examples_k * budget_k."""
    if not reports:
        raise ValueError("no client reports to average")
    weights = [r.num_examples * r.budget for r in reports]
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"total client weight must be positive, got {total}")
    layers = list(reports[0].bits)
    if any(set(r.bits) != set(layers) or set(r.reductions) != set(layers) for r in reports):
        raise ValueError("all reports must cover the same layers in bits and reductions")
    bits = {layer: sum(w * r.bits[layer] for w, r in zip(weights, reports)) / total for layer in layers}
    reds = {layer: sum(w * r.reductions[layer] for w, r in zip(weights, reports)) / total for layer in layers}
    return bits, reds


def layer_priorities(layer_sizes: dict[str, int], avg_reductions: dict[str, float]) -> dict[str, float]:
    """priority_l = (layer's share of all quantized parameters) * (average reduction of that layer)."""
    total = sum(layer_sizes.values())
    return {layer: n / total * avg_reductions[layer] for layer, n in layer_sizes.items()}


def average_bitwidth(bits: dict[str, int], layer_sizes: dict[str, int]) -> float:
    """Parameter-weighted average bit-width sum(n_l*b_l)/sum(n_l)."""
    return sum(n * bits[layer] for layer, n in layer_sizes.items()) / sum(layer_sizes.values())


def fit_to_budget(
    start: dict[str, float], priorities: dict[str, float], layer_sizes: dict[str, int], budget: float
) -> dict[str, int]:
    """Round and clamp `start`, then greedily fit it to `budget` (average bit-width never above it).

    While over budget, one bit is taken from the highest-priority layer above MIN_BITS (ties: larger
    layer, then earlier). While under, one bit goes to the lowest-priority layer below MAX_BITS whose
    extra bit still fits the budget (ties: smaller layer, then earlier), until none fits.
    """
    if not MIN_BITS <= budget <= MAX_BITS:
        raise ValueError(f"budget must be in [{MIN_BITS}, {MAX_BITS}], got {budget}")
    if not layer_sizes:
        raise ValueError("layer_sizes is empty")
    if set(start) != set(layer_sizes) or set(priorities) != set(layer_sizes):
        raise ValueError("start and priorities must have exactly the layers of layer_sizes")
    bits = {layer: min(MAX_BITS, max(MIN_BITS, math.floor(start[layer] + 0.5))) for layer in layer_sizes}
    order = {layer: i for i, layer in enumerate(layer_sizes)}
    params = sum(layer_sizes.values())  # compare bit totals, not averages; tolerance is on the average
    high, low = (budget + _TOL) * params, (budget - _TOL) * params
    total = sum(n * bits[layer] for layer, n in layer_sizes.items())

    while total > high:
        cut = max(
            (layer for layer in layer_sizes if bits[layer] > MIN_BITS),
            key=lambda layer: (priorities[layer], layer_sizes[layer], -order[layer]),
        )
        bits[cut] -= 1
        total -= layer_sizes[cut]

    while total < low:
        fits = [layer for layer in layer_sizes if bits[layer] < MAX_BITS and total + layer_sizes[layer] <= high]
        if not fits:
            break
        grow = min(fits, key=lambda layer: (priorities[layer], layer_sizes[layer], order[layer]))
        bits[grow] += 1
        total += layer_sizes[grow]
    return bits


def allocate(
    layer_sizes: dict[str, int],
    reports: list[ClientBits],
    budgets: dict[int, float],
    keep: dict[int, dict[str, int]] | None = None,
) -> dict[int, dict[str, int]]:
    """New per-layer assignment for every client id in `budgets` (keys are partition ids), from this
    round's reports; the clients in `keep` keep the assignment given there (FedMPQ's server passes the
    sampled clients that failed or dropped, with their previous assignment)."""
    avg, reductions = average_bits(reports)
    priorities = layer_priorities(layer_sizes, reductions)
    keep = keep or {}
    return {
        cid: dict(keep[cid]) if cid in keep else fit_to_budget(avg, priorities, layer_sizes, budgets[cid])
        for cid in sorted(budgets)
    }


def initial_bits(layer_sizes: dict[str, int], budget: float) -> dict[str, int]:
    """Round-1 assignment: fit_to_budget starting from the budget in every layer with all priorities zero."""
    return fit_to_budget(
        {layer: budget for layer in layer_sizes}, {layer: 0.0 for layer in layer_sizes}, layer_sizes, budget
    )
