"""The design's success criteria, each {"name", "passed", "numbers", "why"}.

`passed` is True/False, or None when the criterion cannot be evaluated (a method or a number is
missing, or a p-value needs 2 seeds per side); `why` says which in one line. A criterion that needs
two conditions fails as soon as one fails, even when the other cannot be evaluated. Accuracy is the
float global model's test accuracy (as the FedMPQ paper reports); the quantized clients' mean
accuracy is reported beside it as extra numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedmpq_flwr.analysis.reference import FEDMPQ, PROPOSED, is_compressed_baseline, is_quantized_baseline, partner
from fedmpq_flwr.analysis.stats import compare, mean_of, points, ratio_minus_one
from fedmpq_flwr.config import deep_merge, defaults
from fedmpq_flwr.methods.catalog import CATALOG, Payload, spec_of

MIN_GAIN_POINTS = 2.0
MIN_GAP_REDUCTION = 0.25
MAX_P_VALUE = 0.05
MAX_BITS_RATIO = 1.01  # proposed / FedMPQ bits per round, each way: pruning makes them differ slightly
MAX_TIME_OVERHEAD = 0.10
MIN_NON_IID_GAIN_POINTS = 1.0
TOLERANCE = 1e-9  # float noise in differences of fractions must not flip a threshold


def _criterion(name: str, passed: bool | None, numbers: dict[str, Any], why: str) -> dict[str, Any]:
    return {"name": name, "passed": passed, "numbers": numbers, "why": why}


def _quant_extra(groups: dict[str, list[dict[str, Any]]], a: str, b: str) -> dict[str, Any]:
    """The same comparison on the quantized clients' mean accuracy, where both sides have it."""
    test = compare(groups, a, b, "final_quant_accuracy_mean")
    return {} if test is None else {"quant_accuracy_diff_points": test["diff_points"], "quant_accuracy_p": test["p"]}


def _names(wanted: Callable[[str | None], bool]) -> str:
    """The catalog's methods of a kind, for a criterion's text."""
    return ", ".join(name for name in CATALOG if wanted(name))


def _compressed_context(variations: dict[str, dict[str, Any]], references: dict[str, Any]) -> tuple[dict, str]:
    """The best communication-compressed full-precision baseline beside criterion (1): its numbers
    and a clause for the line. Context only: its devices run float models, so it decides nothing."""
    name = references["best_compressed_baseline"]
    numbers = {
        "compressed_baseline": name,
        "compressed_baseline_final": mean_of(variations, name, "final_accuracy"),
        "compressed_baseline_bits_up": mean_of(variations, name, "mean_bits_up_per_round"),
        "compressed_baseline_bits_down": mean_of(variations, name, "mean_bits_down_per_round"),
    }
    if name is None:
        return numbers, ""
    final, up, down = (numbers[f"compressed_baseline_{k}"] for k in ("final", "bits_up", "bits_down"))
    bits = "" if up is None or down is None else f", {up / 1e6:.3g} / {down / 1e6:.3g} Mbit up / down per round"
    return numbers, f"; context only: {name} (full precision, compressed upload) {100 * final:.2f} %{bits}"


def accuracy_criterion(
    variations: dict[str, dict[str, Any]], groups: dict[str, list[dict[str, Any]]], references: dict[str, Any]
) -> dict[str, Any]:
    """(1) proposed >= +2 points over the best baseline whose devices run quantized models, or >= 25 %
    smaller gap to full precision, and p < 0.05 over seeds (Welch, final accuracy). The best
    compressed full-precision baseline is reported beside it and decides nothing."""
    name = (
        f"accuracy: proposed >= +{MIN_GAIN_POINTS:g} points over the best baseline whose devices run quantized "
        f"models ({_names(is_quantized_baseline)}) or >= {MIN_GAP_REDUCTION:.0%} smaller gap to full precision, "
        f"p < {MAX_P_VALUE:g}; compressed full-precision baselines ({_names(is_compressed_baseline)}) are context only"
    )
    proposed, baseline, fp = references["proposed"], references["best_quantized_baseline"], references["full_precision"]
    context, context_line = _compressed_context(variations, references)
    if proposed is None or baseline is None:
        missing = "proposed (fedmpq_kd)" if proposed is None else "quantized-device baseline"
        return _criterion(name, None, context, f"cannot evaluate: no completed main {missing} variation{context_line}")
    final = {k: mean_of(variations, k, "final_accuracy") for k in (proposed, baseline, fp) if k}
    gain = points(final[proposed], final[baseline])
    gap_baseline = points(final[fp], final[baseline]) if fp else None
    gap_proposed = points(final[fp], final[proposed]) if fp else None
    gap_reduction = 1 - gap_proposed / gap_baseline if gap_baseline and gap_baseline > 0 else None
    test = compare(groups, proposed, baseline, "final_accuracy")
    numbers = {
        "proposed": proposed,
        "baseline": baseline,
        "full_precision": fp,
        "proposed_final": final[proposed],
        "baseline_final": final[baseline],
        "full_precision_final": final.get(fp),
        "gain_points": gain,
        "gap_baseline_points": gap_baseline,
        "gap_proposed_points": gap_proposed,
        "gap_reduction": gap_reduction,
        "t": test["t"],
        "p": test["p"],
        "n_proposed": test["n_a"],
        "n_baseline": test["n_b"],
        **_quant_extra(groups, proposed, baseline),
        **context,
    }
    gain_ok = gain >= MIN_GAIN_POINTS - TOLERANCE
    gap_ok = None if gap_reduction is None else gap_reduction >= MIN_GAP_REDUCTION - TOLERANCE
    big_enough = True if gain_ok or gap_ok else (None if gap_ok is None else False)
    significant = None if test["p"] is None else test["p"] < MAX_P_VALUE
    size = f"{gain:+.2f} points over {baseline}"
    size += (
        ""
        if gap_reduction is None
        else (
            f", gap to full precision {gap_proposed:.2f} vs {gap_baseline:.2f} points "
            f"({100 * gap_reduction:+.1f} % reduction)"
        )
    )
    if big_enough is False or significant is False:
        failed = [] if big_enough is not False else ["below both thresholds"]
        failed += [] if significant is not False else [f"p = {test['p']:.3g} >= {MAX_P_VALUE:g}"]
        return _criterion(name, False, numbers, f"{size}: " + "; ".join(failed) + context_line)
    if big_enough is None:
        no_gap = (
            "no full-precision reference"
            if fp is None
            else f"{baseline} has no gap to full precision to close ({100 * final[baseline]:.2f} % vs "
            f"{fp} {100 * final[fp]:.2f} %)"
        )
        why = f"{size}: gain below {MIN_GAIN_POINTS:g} points and {no_gap}"
        return _criterion(name, None, numbers, why + context_line)
    if significant is None:
        return _criterion(name, None, numbers, f"{size}: significance not testable ({test['note']}){context_line}")
    return _criterion(name, True, numbers, f"{size}, p = {test['p']:.3g} < {MAX_P_VALUE:g}{context_line}")


def payload_differences(a: Payload, b: Payload) -> list[str]:
    """What `a` carries that `b` does not and the reverse, per direction and part (`download arrays:
    +history_teacher`); empty when both carry the same fields."""
    differences = []
    for direction in ("upload", "download"):
        for part in ("arrays", "fields"):
            mine, theirs = (getattr(getattr(p, direction), part) for p in (a, b))
            changes = [f"+{x}" for x in mine if x not in theirs] + [f"-{x}" for x in theirs if x not in mine]
            if changes:
                differences.append(f"{direction} {part}: {' '.join(changes)}")
    return differences


def declared_payload(groups: dict[str, list[dict[str, Any]]], variation: str) -> Payload | None:
    """What a variation's messages carry, from the catalog and its first run's config (keys an older
    config lacks take their defaults); None for a method the catalog does not know."""
    run = groups[variation][0]
    spec = spec_of(run["strategy"])
    return None if spec is None else spec.payload(deep_merge(defaults(), run["config"]))


def bits_criterion(
    variations: dict[str, dict[str, Any]], groups: dict[str, list[dict[str, Any]]], references: dict[str, Any]
) -> dict[str, Any]:
    """(2) no extra communication: the proposed method's uploads and downloads carry the fields FedMPQ's
    do (declared in the catalog), and its bits per round, up and down, are within 1 % of FedMPQ's
    (pruning follows training, so the two keep slightly different numbers of bit planes)."""
    name = (
        "communication: proposed's uploads and downloads carry FedMPQ's fields (declared payload) and its "
        f"bits per round, up and down, are at most {MAX_BITS_RATIO:g} x FedMPQ's"
    )
    proposed, fedmpq = references["proposed"], references["fedmpq"]
    if proposed is None or fedmpq is None:
        return _criterion(name, None, {}, "cannot evaluate: needs completed main fedmpq_kd and fedmpq variations")
    payloads = [declared_payload(groups, proposed), declared_payload(groups, fedmpq)]
    differences = None if None in payloads else payload_differences(*payloads)
    numbers: dict[str, Any] = {
        "proposed": proposed,
        "fedmpq": fedmpq,
        "same_payload": None if differences is None else not differences,
        "payload_differences": differences,
    }
    checks = {"payload": numbers["same_payload"]}
    for direction in ("up", "down"):
        key = f"mean_bits_{direction}_per_round"
        mine, theirs = mean_of(variations, proposed, key), mean_of(variations, fedmpq, key)
        excess = ratio_minus_one(mine, theirs)
        ratio = None if excess is None else 1 + excess
        numbers.update(
            {f"proposed_bits_{direction}": mine, f"fedmpq_bits_{direction}": theirs, f"bits_{direction}_ratio": ratio}
        )
        checks[direction] = None if ratio is None else ratio <= MAX_BITS_RATIO + TOLERANCE
    if differences is None:
        line = "payload not declared by both methods"
    else:
        line = "payload differs (" + "; ".join(differences) + ")" if differences else "same payload fields"
    if checks["up"] is None or checks["down"] is None:
        line += "; bits per round not recorded by both methods"
    else:
        line += (
            f"; bits per round {numbers['bits_up_ratio']:.5f} x FedMPQ's up, {numbers['bits_down_ratio']:.5f} x down "
            f"({numbers['proposed_bits_up']:.4g} vs {numbers['fedmpq_bits_up']:.4g} up, "
            f"{numbers['proposed_bits_down']:.4g} vs {numbers['fedmpq_bits_down']:.4g} down)"
        )
    if False in checks.values():
        above = [d for d in ("up", "down") if checks[d] is False]
        return _criterion(
            name, False, numbers, line + (f": {' and '.join(above)} above {MAX_BITS_RATIO:g} x" if above else "")
        )
    if None in checks.values():
        return _criterion(name, None, numbers, f"cannot evaluate: {line}")
    return _criterion(name, True, numbers, line)


def time_criterion(variations: dict[str, dict[str, Any]], references: dict[str, Any]) -> dict[str, Any]:
    """(3) added wall-time per round <= 10 % (mean round_time_s of proposed / FedMPQ - 1)."""
    name = f"wall time: proposed adds <= {MAX_TIME_OVERHEAD:.0%} wall time per round over FedMPQ"
    proposed, fedmpq = references["proposed"], references["fedmpq"]
    if proposed is None or fedmpq is None:
        return _criterion(name, None, {}, "cannot evaluate: needs completed main fedmpq_kd and fedmpq variations")
    per_round = {
        f"{who}_{key}": mean_of(variations, variation, f"mean_{key}")
        for who, variation in (("proposed", proposed), ("fedmpq", fedmpq))
        for key in ("round_time_s", "client_compute_s", "client_time_s")
    }
    overhead = ratio_minus_one(per_round["proposed_round_time_s"], per_round["fedmpq_round_time_s"])
    numbers = {
        "proposed": proposed,
        "fedmpq": fedmpq,
        **per_round,
        "round_time_overhead": overhead,
        "client_compute_overhead": ratio_minus_one(
            per_round["proposed_client_compute_s"], per_round["fedmpq_client_compute_s"]
        ),
        "client_time_overhead": ratio_minus_one(per_round["proposed_client_time_s"], per_round["fedmpq_client_time_s"]),
    }
    if overhead is None:
        return _criterion(name, None, numbers, "cannot evaluate: round_time_s not recorded by both methods")
    passed = overhead <= MAX_TIME_OVERHEAD + TOLERANCE
    compute = numbers["client_compute_overhead"]
    line = (
        f"{100 * overhead:+.1f} % per round ({numbers['proposed_round_time_s']:.3g} s vs "
        f"{numbers['fedmpq_round_time_s']:.3g} s)"
    )
    line += "" if compute is None else f"; client compute {100 * compute:+.1f} %"
    return _criterion(name, passed, numbers, line + ("" if passed else f": above {MAX_TIME_OVERHEAD:.0%}"))


def non_iid_criterion(
    variations: dict[str, dict[str, Any]],
    groups: dict[str, list[dict[str, Any]]],
    references: dict[str, Any],
    axis_vals: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """(4) at the smallest Dirichlet alpha where both methods ran, proposed >= FedMPQ + 1 point."""
    name = f"non-IID: proposed >= FedMPQ + {MIN_NON_IID_GAIN_POINTS:g} point under the most non-IID setting present"
    pairs = []
    for kd in sorted(n for n, v in variations.items() if v["strategy"] == PROPOSED):
        fedmpq = partner(kd, FEDMPQ, variations, axis_vals)
        alpha = variations[kd]["dataset_alpha"]
        if fedmpq is not None and alpha is not None and alpha == variations[fedmpq]["dataset_alpha"]:
            pairs.append(
                (float(alpha), kd != references["proposed"], variations[kd]["axis"] != "dataset.alpha", kd, fedmpq)
            )
    if not pairs:
        return _criterion(
            name, None, {}, "cannot evaluate: no fedmpq_kd variation with a fedmpq partner at the same alpha"
        )
    alpha, _, _, kd, fedmpq = min(pairs)  # smallest alpha; then the main proposed, then the alpha axis, then by name
    gain = points(mean_of(variations, kd, "final_accuracy"), mean_of(variations, fedmpq, "final_accuracy"))
    test = compare(groups, kd, fedmpq, "final_accuracy")
    numbers = {
        "alpha": variations[kd]["dataset_alpha"],
        "proposed": kd,
        "fedmpq": fedmpq,
        "proposed_final": mean_of(variations, kd, "final_accuracy"),
        "fedmpq_final": mean_of(variations, fedmpq, "final_accuracy"),
        "gain_points": gain,
        "t": test["t"],
        "p": test["p"],
        **_quant_extra(groups, kd, fedmpq),
    }
    passed = gain >= MIN_NON_IID_GAIN_POINTS - TOLERANCE
    line = f"alpha {numbers['alpha']}: {kd} {gain:+.2f} points over {fedmpq}"
    return _criterion(name, passed, numbers, line + ("" if passed else f": below +{MIN_NON_IID_GAIN_POINTS:g}"))


def success_criteria(
    variations: dict[str, dict[str, Any]],
    groups: dict[str, list[dict[str, Any]]],
    references: dict[str, Any],
    axis_vals: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """The four criteria of the experimental design, in its order."""
    return [
        accuracy_criterion(variations, groups, references),
        bits_criterion(variations, groups, references),
        time_criterion(variations, references),
        non_iid_criterion(variations, groups, references, axis_vals),
    ]


def verdict(passed: bool | None) -> str:
    return {True: "yes", False: "no", None: "n/a"}[passed]


def criteria_lines(criteria: list[dict[str, Any]]) -> list[str]:
    """The criteria as plain text, one line each (printed after the JSON)."""
    lines = ["success criteria:"]
    for i, c in enumerate(criteria, 1):
        lines.append(f"  ({i}) {verdict(c['passed']):>3}  {c['name']}: {c['why']}")
    return lines
