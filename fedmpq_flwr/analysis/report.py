"""report.md: the comparison as markdown tables a person reads (accuracy in %, costs per round)."""

from __future__ import annotations

from typing import Any

from fedmpq_flwr.analysis import fairness, scalability
from fedmpq_flwr.analysis.criteria import verdict
from fedmpq_flwr.analysis.runs import axis_order

REPORT_FILE = "report.md"


def _num(value: Any, spec: str = ".2f", scale: float = 1.0) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value if scale == 1.0 else scale * value, spec)
    return str(value)


def _mean_std(stat: dict[str, float | None], scale: float = 100.0, spec: str = ".2f") -> str:
    if stat["mean"] is None:
        return "–"
    return _num(stat["mean"], spec, scale) + ("" if stat["std"] is None else f" ± {_num(stat['std'], spec, scale)}")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f} %"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]


def _rounds_text(rounds: list[int]) -> str:
    """`rounds 2, 4, 6` or, for many, `rounds 5, 10, 15, …, 50 (10 rounds)`."""
    if len(rounds) <= 6:
        return "rounds " + ", ".join(map(str, rounds))
    return f"rounds {', '.join(map(str, rounds[:3]))}, …, {rounds[-1]} ({len(rounds)} rounds)"


def _evaluated_rounds_note(variations: dict[str, dict[str, Any]]) -> list[str]:
    """A paragraph naming the variations evaluated in only some rounds (`eval.every`,
    `eval.quant_every`) and what that changes; nothing when every round was evaluated."""
    thinned = []
    for name, var in variations.items():
        parts = [
            f"{label} in {_rounds_text(var[key])} of {len(var['rounds'])}"
            for key, label in (("accuracy_rounds", "float"), ("quant_accuracy_rounds", "quantized"))
            if var[key] and var[key] != var["rounds"]
        ]
        if parts:
            thinned.append(f"{name} ({'; '.join(parts)})")
    if not thinned:
        return []
    return [
        f"Evaluated in only some rounds: {', '.join(thinned)}. Their AUC, best accuracy, accuracy curves and "
        "rounds to target are computed over the evaluated rounds only (the AUC by trapezoids between them; "
        "seeds that evaluated different rounds are compared over the rounds all of them evaluated); final "
        "accuracy is the last round's, which every run evaluates.",
        "",
    ]


def _quant_subset_note(variations: dict[str, dict[str, Any]]) -> list[str]:
    """A paragraph naming the variations whose quantized accuracies come from a subset of the test set
    (`eval.quant_test_images`); nothing when every one used the whole test set."""
    subsets = [
        f"{name} ({_num(var['final_quant_test_images']['mean'], ',.0f')} images)"
        for name, var in variations.items()
        if (var.get("final_quant_test_images") or {}).get("mean") is not None
    ]
    if not subsets:
        return []
    return [
        f"Quantized accuracies on a fixed class-balanced subset of the test set (`eval.quant_test_images`, "
        f"the same images every round): {', '.join(subsets)}. Their float accuracies, and every other "
        "variation's accuracies, are over the whole test set.",
        "",
    ]


def _accuracy_table(comparison: dict[str, Any]) -> list[str]:
    rows = []
    for name, var in comparison["variations"].items():
        m = comparison["methods"][name]
        rows.append(
            [
                name,
                var["strategy"] or "–",
                var["axis"] or "main",
                _num(var["axis_value"], "g"),
                str(var["n"]),
                _mean_std(var["final_accuracy"]),
                _mean_std(var["best_accuracy"]),
                _mean_std(var["auc_accuracy"]),
                _mean_std(var["final_quant_accuracy_mean"]),
                _num(m["rounds_to_target"], "d"),
                _num(m["gap_to_full_precision_points"]),
                _num(m["gap_closed_vs_fedmpq"], ".1%"),
            ]
        )
    return _table(
        [
            "variation",
            "strategy",
            "axis",
            "value",
            "n",
            "final acc. (%)",
            "best acc. (%)",
            "AUC (%)",
            "quantized final acc. (%)",
            "rounds to target",
            "gap to FP (points)",
            "FedMPQ gap closed",
        ],
        rows,
    )


def _cost_table(comparison: dict[str, Any]) -> list[str]:
    rows = []
    for name, var in comparison["variations"].items():
        m = comparison["methods"][name]
        rows.append(
            [
                name,
                _mean_std(var["mean_bits_up_per_round"], 1e-6, ".3g"),
                _mean_std(var["mean_bits_down_per_round"], 1e-6, ".3g"),
                _mean_std(var["mean_round_time_s"], 1.0, ".4g"),
                _mean_std(var["mean_client_compute_s"], 1.0, ".4g"),
                m["overhead_reference"] or "–",
                _pct(m["round_time_overhead"]),
                _pct(m["client_compute_overhead"]),
                _mean_std(var["mean_train_flops_per_round"], 1e-9, ".4g"),
                _mean_std(var["mean_teacher_flops_per_round"], 1e-9, ".4g"),
                _mean_std(var["mean_eval_flops_per_round"], 1e-9, ".4g"),
                _mean_std(var["mean_mentor_flops_per_round"], 1e-9, ".4g"),
                _mean_std(var["peak_client_rss_mb"], 1.0, ".0f"),
                _mean_std(var["peak_server_rss_mb"], 1.0, ".0f"),
                _mean_std(var["peak_client_gpu_mb"], 1.0, ".0f"),
                _mean_std(var["peak_server_gpu_mb"], 1.0, ".0f"),
            ]
        )
    return _table(
        [
            "variation",
            "bits up / round (Mbit)",
            "bits down / round (Mbit)",
            "s / round",
            "client compute s / round",
            "overhead vs",
            "wall-time overhead",
            "client-compute overhead",
            "train GFLOP / round",
            "teacher GFLOP / round",
            "client eval GFLOP / round",
            "mentor GFLOP / round",
            "client peak RSS (MB)",
            "server peak RSS (MB)",
            "client peak GPU (MB)",
            "server peak GPU (MB)",
        ],
        rows,
    )


def _client_accuracy_table(comparison: dict[str, Any]) -> list[str]:
    """Per variation and model: the clients' accuracy on their own label mix at the final round."""
    rows = []
    for name, var in comparison["variations"].items():
        device = comparison["methods"][name]["client_accuracy"]["model"]
        for model, prefix in fairness.MODELS.items():
            if var[f"{prefix}_mean"]["mean"] is None:
                continue
            label = fairness.MODEL_LABELS[model] + (" (the devices')" if model == device else "")
            stats = [_mean_std(var[f"{prefix}_{stat}"]) for stat in fairness.STATS]
            rows.append([name, var["strategy"] or "–", label, str(var["n"]), *stats])
    if not rows:
        return ["No run records per-class accuracy and its clients' label counts."]
    header = ["variation", "strategy", "model", "n", "mean (%)", "std over clients (points)", "worst (%)", "p10 (%)"]
    return _table(header, rows)


def _client_gflop(var: dict[str, Any]) -> dict[str, float | None]:
    """Mean client FLOPs per round in GFLOP: training plus the teacher's forwards, FedKD's mentors and
    client-side evaluation (a part a method does not record counts 0; None when it records no training
    FLOPs)."""
    train = var["mean_train_flops_per_round"]["mean"]
    if train is None:
        return {"mean": None, "std": None}
    parts = ("mean_teacher_flops_per_round", "mean_mentor_flops_per_round", "mean_eval_flops_per_round")
    extra = [var[k]["mean"] or 0.0 for k in parts]
    return {"mean": (train + sum(extra)) * 1e-9, "std": None}


def _distillation_table(comparison: dict[str, Any]) -> list[str]:
    """The main variations of every method the catalog says distils (FedMPQ-KD and the full-precision
    distillation baselines) side by side: accuracy, bits each way and client compute per round."""
    names = [
        n for n, var in comparison["variations"].items() if var["axis"] == "" and comparison["methods"][n]["distils"]
    ]
    if not names:
        return ["No main variation of a distilling method."]
    proposed = comparison["reference"]["proposed"]
    proposed_final = comparison["variations"][proposed]["final_accuracy"]["mean"] if proposed else None
    rows = []
    for name in names:
        var, method = comparison["variations"][name], comparison["methods"][name]
        final = var["final_accuracy"]["mean"]
        diff = None if final is None or proposed_final is None else 100 * (final - proposed_final)
        rows.append(
            [
                name,
                var["strategy"] or "–",
                method["family"] or "–",
                str(var["n"]),
                _mean_std(var["final_accuracy"]),
                _num(diff, "+.2f"),
                _mean_std(var["mean_bits_up_per_round"], 1e-6, ".3g"),
                _mean_std(var["mean_bits_down_per_round"], 1e-6, ".3g"),
                _mean_std(var["mean_client_compute_s"], 1.0, ".4g"),
                _num(_client_gflop(var)["mean"], ".4g"),
            ]
        )
    header = [
        "variation",
        "strategy",
        "family",
        "n",
        "final acc. (%)",
        f"− {proposed or 'proposed'} (points)",
        "bits up / round (Mbit)",
        "bits down / round (Mbit)",
        "client compute s / round",
        "client GFLOP / round (train + teacher + mentor + eval)",
    ]
    return _table(header, rows)


def _tests_table(tests: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            t["a"],
            t["b"],
            t["metric"],
            f"{t['n_a']} / {t['n_b']}",
            _num(t["mean_a"], ".2f", 100),
            _num(t["mean_b"], ".2f", 100),
            _num(t["diff_points"], "+.2f"),
            _num(t["t"], ".3f"),
            _num(t["p"], ".4g"),
            t["note"] or "",
        ]
        for t in tests
    ]
    return _table(["A", "B", "metric", "n A / B", "mean A (%)", "mean B (%)", "A − B (points)", "t", "p", "note"], rows)


def _criteria_block(criteria: list[dict[str, Any]]) -> list[str]:
    lines = []
    for i, c in enumerate(criteria, 1):
        lines.append(f"{i}. **{verdict(c['passed'])}** — {c['name']}: {c['why']}")
        if c["numbers"]:
            numbers = ", ".join(
                f"{k} = {'[' + '; '.join(map(str, v)) + ']' if isinstance(v, list) else _num(v, '.4g')}"
                for k, v in c["numbers"].items()
            )
            lines.append(f"   - numbers: {numbers}")
    return lines


def _robustness_tables(robustness: dict[str, Any]) -> list[str]:
    lines = []
    for axis, entry in robustness.items():
        methods = entry["methods"]
        values = sorted({r["value"] for rows in methods.values() for r in rows}, key=axis_order)
        diffs = {d["value"]: d["points"] for d in entry["proposed_minus_fedmpq_points"]}
        header = ["value"] + [h for s in methods for h in (f"{s} final (%)", f"{s} degradation (points)")]
        header.append("fedmpq_kd − fedmpq (points)")
        rows = []
        for value in values:
            row = [_num(value, "g")]
            for rows_of_method in methods.values():
                hit = next((r for r in rows_of_method if r["value"] == value), None)
                if hit is None:
                    row += ["–", "–"]
                    continue
                final = _mean_std({"mean": hit["final_accuracy_mean"], "std": hit["final_accuracy_std"]})
                row += [f"{final} ({hit['variation']})", _num(hit["degradation_points"])]
            rows.append(row + [_num(diffs.get(value), "+.2f")])
        lines += [f"### Axis `{axis}`", "", *_table(header, rows), ""]
    return lines or ["No run varies an axis.", ""]


def render(comparison: dict[str, Any], title: str, figures: list[dict[str, str]]) -> str:
    """The whole report as markdown (figures: the written ones, with path and caption)."""
    ref, target = comparison["reference"], comparison["target_accuracy"]
    lines = [
        f"# Results: {title}",
        "",
        f"Accuracies in % (mean ± sample std over seeds); differences in percentage points. "
        f"Full-precision reference: {ref['full_precision'] or '–'}; FedMPQ: {ref['fedmpq'] or '–'}; "
        f"proposed: {ref['proposed'] or '–'}; best quantized baseline: {ref['best_quantized_baseline'] or '–'}; "
        f"best compressed full-precision baseline (context only): {ref['best_compressed_baseline'] or '–'} "
        f"({ref['rule']}).",
        "",
        f"Target accuracy: {_num(target['value'], '.2f', 100)} % ({target['source']}).",
        "",
        *_evaluated_rounds_note(comparison["variations"]),
        *_quant_subset_note(comparison["variations"]),
        "## Success criteria",
        "",
        *_criteria_block(comparison["success_criteria"]),
        "",
        "## Accuracy",
        "",
        *_accuracy_table(comparison),
        "",
        "## Per-client accuracy (final round)",
        "",
        "Client k's accuracy is sum over classes of k's training label share times the model's per-class "
        "test accuracy; over the clients of a run: mean, std (population), worst client and 10th "
        "percentile; then mean ± std over seeds.",
        "",
        *_client_accuracy_table(comparison),
        "",
        "## Costs per round",
        "",
        *_cost_table(comparison),
        "",
        "## Distillation methods",
        "",
        "FedMPQ-KD against the full-precision distillation baselines (main variations of the methods "
        "the catalog marks as distilling); client compute is summed over the round's clients.",
        "",
        *_distillation_table(comparison),
        "",
        "## Welch t-tests over seeds",
        "",
        *(_tests_table(comparison["tests"]) if comparison["tests"] else ["No pair of methods to test."]),
        "",
        "## Robustness along the axes",
        "",
        *_robustness_tables(comparison["robustness"]),
        "## Scalability in the number of clients (hypothesis (d))",
        "",
        *scalability.report_lines(comparison["scalability"]),
        "## Incomplete runs (left out of the statistics)",
        "",
    ]
    incomplete = comparison["incomplete_runs"]
    rows = [
        [r["run_id"], r["status"], f"{r['rounds_completed']} / {_num(r['num_rounds_planned'], 'd')}", r["reason"]]
        for r in incomplete
    ]
    lines += _table(["run", "status", "rounds recorded / planned", "reason"], rows) if rows else ["None."]
    lines += ["", "## Figures", ""]
    lines += [f"- `{f['path']}`: {f['caption']}" for f in figures] or ["None written."]
    lines += [f"- skipped `{s['name']}`: {s['why']}" for s in comparison["figures_skipped"]]
    return "\n".join(lines) + "\n"
