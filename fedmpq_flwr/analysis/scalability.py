"""The scalability hypothesis (d) of the design, fitted and judged: "the method scales linearly in
compute and logarithmically in communication with the number of clients".

Per method present at 3 or more values of `federation.num_clients` (its variations along that axis and
its main variation, as in the robustness table), each per-round cost is fitted against the number of
participants per round n (`num_sampled`, mean over rounds and seeds) with y = a + b n and
y = a + b ln n (least squares, `scipy.stats.linregress`). Which model a quantity follows, and the
reading of "logarithmic in communication" the verdict tests, are in docs/scalability.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import linregress

from fedmpq_flwr.analysis.criteria import verdict
from fedmpq_flwr.analysis.runs import round_value

AXIS = "federation.num_clients"
MIN_COUNTS = 3  # client counts, and distinct participant counts, that a fit needs
FLAT_SHARE = 0.05  # a quantity whose fitted change over the range is within 5 % of its mean is constant
R2_MARGIN = 0.02  # a model wins when its R^2 beats the other's by at least this much
MIN_R2 = 0.8  # ... and explains at least this share of the variance
# Quantity -> (variation scalar, label). `bits_per_participant` is derived: (bits up + down) / n.
QUANTITIES = {
    "client_compute_s": ("mean_client_compute_s", "Client compute per round,\nsummed over participants (s)"),
    "round_time_s": ("mean_round_time_s", "Server round time (s)"),
    "bits_up": ("mean_bits_up_per_round", "Bits up per round, all clients"),
    "bits_down": ("mean_bits_down_per_round", "Bits down per round, all clients"),
    "bits_per_participant": ("", "Bits up + down per round\nper participant"),
    "server_peak_rss_mb": ("peak_server_rss_mb", "Server peak memory (RSS, MB)"),
}
CLAIMS = {"compute_linear": "client_compute_s", "communication_logarithmic": "bits_per_participant"}
READING = (
    "communication is logarithmic when the bits a round costs each participant (up + down) grow at most "
    "like ln n: constant, logarithmic or falling; the round's total bits are n times that by construction"
)
RULE = (
    f"a quantity is constant when its linear fit changes it by at most {FLAT_SHARE:.0%} of its mean over the "
    f"measured n; else linear (logarithmic) when that model's R^2 is >= {MIN_R2} and beats the other's by "
    f">= {R2_MARGIN}; else undecided. compute_linear: yes when client compute is linear with a positive "
    "slope; communication_logarithmic: yes when bits per participant are constant, logarithmic or falling"
)


def fit(n: list[float], y: list[float]) -> dict[str, dict[str, float | None]]:
    """Least-squares fits y = a + b n (`linear`) and y = a + b ln n (`logarithmic`): slope, intercept
    and R^2 (None when y does not vary)."""
    result = {}
    for model, x in (("linear", np.asarray(n, float)), ("logarithmic", np.log(np.asarray(n, float)))):
        line = linregress(x, np.asarray(y, float))
        r2 = float(line.rvalue) ** 2
        result[model] = {
            "slope": float(line.slope),
            "intercept": float(line.intercept),
            "r2": r2 if math.isfinite(r2) else None,
        }
    return result


def shape(n: list[float], y: list[float], fits: dict[str, dict[str, float | None]]) -> str:
    """constant, linear, logarithmic or undecided (the rule in `RULE`)."""
    change = abs(fits["linear"]["slope"]) * (max(n) - min(n))
    if change <= FLAT_SHARE * abs(float(np.mean(y))):
        return "constant"
    lin, log = fits["linear"]["r2"] or 0.0, fits["logarithmic"]["r2"] or 0.0
    if lin >= MIN_R2 and lin - log >= R2_MARGIN:
        return "linear"
    if log >= MIN_R2 and log - lin >= R2_MARGIN:
        return "logarithmic"
    return "undecided"


def mean_participants(runs: list[dict[str, Any]]) -> float | None:
    """Participants per round (`num_sampled`), mean over rounds, then over seeds (None when a run lacks it)."""
    per_run = []
    for run in runs:
        values = [round_value(record, "num_sampled") for record in run["history"]]
        if not values or any(v is None for v in values):
            return None
        per_run.append(float(np.mean(values)))
    return float(np.mean(per_run))


def _point(value: Any, name: str, variations: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> dict:
    var, n = variations[name], mean_participants(runs)
    point: dict[str, Any] = {"num_clients": value, "variation": name, "n": var["n"], "num_sampled": n}
    point.update({q: var[key]["mean"] for q, (key, _) in QUANTITIES.items() if key})
    up, down = point["bits_up"], point["bits_down"]
    point["bits_per_participant"] = None if None in (up, down) or not n else (up + down) / n
    return point


def _claim(passed: bool | None, why: str, numbers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"verdict": verdict(passed), "why": why, "numbers": numbers or {}}


def _claims(points: list[dict[str, Any]], fits: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """compute_linear and communication_logarithmic, each yes / no / n/a with its numbers."""
    claims = {}
    for claim, quantity in CLAIMS.items():
        found = fits.get(quantity)
        if found is None:
            claims[claim] = _claim(None, f"{quantity} is missing at some client count")
            continue
        kind, slope = found["shape"], found["linear"]["slope"]
        numbers = {"quantity": quantity, "shape": kind, **{m: found[m] for m in ("linear", "logarithmic")}}
        r2 = f"R^2 linear {_r2(found['linear'])}, logarithmic {_r2(found['logarithmic'])}"
        if claim == "compute_linear":
            passed = kind == "linear" and slope > 0
        else:
            passed = kind in ("constant", "logarithmic") or slope <= 0
        claims[claim] = _claim(passed, f"{quantity} is {kind} in n (slope {slope:.4g} per participant; {r2})", numbers)
    return claims


def _r2(model: dict[str, float | None]) -> str:
    return "–" if model["r2"] is None else f"{model['r2']:.3f}"


def method_scalability(rows: list[dict[str, Any]], variations: dict, groups: dict) -> dict[str, Any]:
    """Points, fits and claims of one method from its robustness rows along `AXIS`."""
    points = [_point(r["value"], r["variation"], variations, groups[r["variation"]]) for r in rows]
    counts = sorted({p["num_clients"] for p in points})
    participants = sorted({p["num_sampled"] for p in points if p["num_sampled"] is not None})
    result: dict[str, Any] = {"points": points, "fits": {}}
    if len(counts) < MIN_COUNTS:
        why = f"{len(counts)} client count(s) ({', '.join(f'{c:g}' for c in counts)}); {MIN_COUNTS} needed"
    elif any(p["num_sampled"] is None for p in points):
        why = "num_sampled is missing from some run's rounds"
    elif len(participants) < MIN_COUNTS:
        why = (
            f"participants per round take {len(participants)} distinct value(s) "
            f"({', '.join(f'{c:g}' for c in participants)}); {MIN_COUNTS} needed to tell the models apart"
        )
    else:
        n = [p["num_sampled"] for p in points]
        for quantity in QUANTITIES:
            y = [p[quantity] for p in points]
            if any(v is None for v in y):
                continue
            fits = fit(n, y)
            result["fits"][quantity] = {**fits, "shape": shape(n, y, fits)}
        result["claims"] = _claims(points, result["fits"])
        return result
    result["claims"] = {claim: _claim(None, why) for claim in CLAIMS}
    return result


def scalability(variations: dict, groups: dict, robustness: dict[str, Any]) -> dict[str, Any]:
    """The `scalability` section of comparison.json: per method on the `AXIS` axis, its points, both fits of
    every quantity in `QUANTITIES` and the two claims; `methods` is empty when no run varies the axis."""
    rows = robustness.get(AXIS, {}).get("methods", {})
    return {
        "axis": AXIS,
        "x": "num_sampled: participants per round, mean over rounds and seeds",
        "reading": READING,
        "rule": RULE,
        "methods": {strategy: method_scalability(r, variations, groups) for strategy, r in rows.items()},
    }


def report_lines(section: dict[str, Any]) -> list[str]:
    """report.md's scalability section: per method, the claims and a table of both fits per quantity."""
    if not section["methods"]:
        return [f"No run varies `{AXIS}`.", ""]
    lines = [f"Reading: {section['reading']}. Rule: {section['rule']}.", ""]
    for strategy, entry in section["methods"].items():
        counts = ", ".join(f"{p['num_clients']:g} ({_num(p['num_sampled'])} per round)" for p in entry["points"])
        lines += [f"### {strategy}: clients {counts}", ""]
        for claim, found in entry["claims"].items():
            lines.append(f"- {claim}: **{found['verdict']}**, {found['why']}")
        rows = [
            f"| {q} | {_num(f['linear']['slope'])} | {_num(f['linear']['intercept'])} | {_r2(f['linear'])} "
            f"| {_num(f['logarithmic']['slope'])} | {_num(f['logarithmic']['intercept'])} | {_r2(f['logarithmic'])} "
            f"| {f['shape']} |"
            for q, f in entry["fits"].items()
        ]
        if rows:
            header = ["quantity", "linear slope", "linear intercept", "linear R^2", "log slope", "log intercept"]
            header += ["log R^2", "shape"]
            lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows]
        lines.append("")
    return lines


def text_lines(section: dict[str, Any]) -> list[str]:
    """The claims as plain text, one line each (printed after the success criteria)."""
    return [
        f"  scalability {strategy} {claim}: {found['verdict']}  {found['why']}"
        for strategy, entry in section["methods"].items()
        for claim, found in entry["claims"].items()
    ]


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"
