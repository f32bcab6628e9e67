"""The report of `fdistill paper-claims`: mean ± std over seeds, paired differences, the five claims, plots.

Every verdict follows one rule, :func:`compare`: two variants are compared on one metric by the per-seed paired
difference (same seed = same data order and sampling RNG, same start, same held-out samples of the teacher) and a
paired t-test over seeds (``scipy.stats.ttest_rel``); "better"/"worse" only at p < 0.05, otherwise "tie". With
three seeds that test has little power: a "tie" means "no difference this study can resolve", not "equal".
"""

from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from fdistill.studies.paper_claims import COLUMNS, TEXT_METRICS, VARIANTS, ClaimsSettings, _write_json

P_VALUE = 0.05
HIGHER_IS_BETTER = dict(COLUMNS)
DIVERGENCES = ["kl", "rkl", "js", "tvd"]  # the four f-divergence variants of claim 2 (js: the exact mixture)


@dataclass
class Comparison:
    """``a`` against ``b`` on one metric: mean and std of the paired differences a − b, the p-value, the verdict."""

    mean: float
    std: float
    p: float
    n: int
    verdict: str  # "better", "worse", "tie" (for a, in the metric's own direction) or "non-finite"

    def __str__(self) -> str:
        p = "n/a" if math.isnan(self.p) else f"{self.p:.2g}"
        return f"{self.mean:+.3g} ± {self.std:.2g} (p={p}, {self.verdict})"


def by_variant(runs: list[dict]) -> dict[str, dict[int, dict[str, float]]]:
    """``{variant: {seed: metrics}}``."""
    table: dict[str, dict[int, dict[str, float]]] = {}
    for run in runs:
        table.setdefault(run["variant"], {})[run["seed"]] = run["metrics"]
    return table


def compare(table, a: str, b: str, key: str, higher_is_better: bool | None = None) -> Comparison:
    """Variant ``a`` against ``b`` on ``key``, paired by seed (the rule in this module's docstring).

    ``higher_is_better``: the metric's direction (default: as in :data:`fdistill.studies.paper_claims.COLUMNS`)."""
    from scipy.stats import ttest_rel

    seeds = sorted(set(table.get(a, {})) & set(table.get(b, {})))
    xs = [table[a][s][key] for s in seeds]
    ys = [table[b][s][key] for s in seeds]
    diffs = [x - y for x, y in zip(xs, ys)]
    if not all(math.isfinite(d) for d in diffs):  # never a silent tie: the report lists the non-finite values
        return Comparison(math.nan, math.nan, math.nan, len(diffs), "non-finite")
    if len(diffs) < 2:
        return Comparison(diffs[0] if diffs else math.nan, math.nan, math.nan, len(diffs), "tie")
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    with warnings.catch_warnings():  # near-constant differences: scipy warns of precision loss, the p-value is ~0
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_rel(xs, ys).pvalue) if std > 0 else (1.0 if mean == 0 else 0.0)
    verdict = "tie"
    if p < P_VALUE:
        higher = HIGHER_IS_BETTER[key] if higher_is_better is None else higher_is_better
        verdict = "better" if (mean > 0) == higher else "worse"
    return Comparison(mean, std, p, len(diffs), verdict)


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.2g}"


def means(table, key: str) -> dict[str, float]:
    return {v: statistics.fmean(m[key] for m in seeds.values()) for v, seeds in table.items()}


# ----------------------------------------------------------------------------- the claims


def claim_text_metrics(table, text_metrics: list[str]) -> tuple[str, list[str]]:
    """Claim 1: JS and TVD do at least as well as KL and RKL on the text metrics (paper Tables 2–3)."""
    rows, verdicts = [], []
    for a in ("js", "tvd"):
        for b in ("kl", "rkl"):
            if a in table and b in table:
                cells = [compare(table, a, b, k) for k in text_metrics]
                verdicts += [c.verdict for c in cells]
                rows.append(f"| {a} − {b} | " + " | ".join(str(c) for c in cells) + " |")
    if not verdicts:
        return "not run", []
    if "worse" in verdicts:
        answer = "**no**"
    elif verdicts.count("better") > verdicts.count("tie"):
        answer = "**yes**"
    else:  # none worse, most unresolved: "at least as well" holds only in the weak sense
        answer = "**yes in the weak sense only** (none worse; most differences not resolved at this scale)"
    head = ["| paired difference | " + " | ".join(text_metrics) + " |", "|---" * (len(text_metrics) + 1) + "|"]
    summary = (
        f"{answer}: of {len(verdicts)} paired comparisons, {verdicts.count('better')} better, "
        f"{verdicts.count('worse')} worse, {verdicts.count('tie')} tie."
    )
    return summary, head + rows


def claim_modes(table) -> tuple[str, list[str]]:
    """Claim 2 (§4.5, Figure 2): KL lowest R_cvg and higher R_llh; RKL lowest R_llh and higher R_cvg; JS, TVD between."""
    present = [v for v in DIVERGENCES if v in table]
    if len(present) < 4:
        return "not run", []
    llh, cvg = means(table, "r_llh_token"), means(table, "r_cvg_token")
    llh4 = {v: llh[v] for v in present}
    cvg4 = {v: cvg[v] for v in present}

    def between(values, v):
        return min(values["kl"], values["rkl"]) <= values[v] <= max(values["kl"], values["rkl"])

    checks = [
        ("KL has the lowest R_cvg of the four", min(cvg4, key=cvg4.get) == "kl"),
        ("RKL has the lowest R_llh of the four", min(llh4, key=llh4.get) == "rkl"),
        (f"R_llh: KL above RKL ({compare(table, 'kl', 'rkl', 'r_llh_token')})", llh["kl"] > llh["rkl"]),
        (f"R_cvg: RKL above KL ({compare(table, 'rkl', 'kl', 'r_cvg_token')})", cvg["rkl"] > cvg["kl"]),
        ("JS and TVD between KL and RKL on R_llh", all(between(llh, v) for v in ("js", "tvd"))),
        ("JS and TVD between KL and RKL on R_cvg", all(between(cvg, v) for v in ("js", "tvd"))),
    ]
    ok = [c for _, c in checks]
    resolved = compare(table, "kl", "rkl", "r_llh_token").verdict != "tie" or (
        compare(table, "kl", "rkl", "r_cvg_token").verdict != "tie"
    )
    answer = "**yes**" if all(ok) and resolved else "**no**" if resolved else "**not at this scale**"
    lines = [f"- {'✔' if c else '✘'} {what}" for what, c in checks]
    lines.append("- means (R_llh, R_cvg per token): " + ", ".join(f"{v} ({llh[v]:.3f}, {cvg[v]:.3f})" for v in present))
    return f"{answer}: {sum(ok)} of {len(ok)} orderings hold in the means.", lines


def claim_engine(table) -> tuple[str, list[str]]:
    """Claim 3: ENGINE collapses (lowest R_llh, highest R_cvg, lowest distinct-n)."""
    if "engine" not in table:
        return "not run", []
    checks = []
    for key, lowest in (("r_llh_token", True), ("r_cvg_token", False), ("teacher/distinct2", True)):
        values = means(table, key)
        pick = (min if lowest else max)(values, key=values.get)
        checks.append(
            (f"{'lowest' if lowest else 'highest'} {key} of all variants ({values['engine']:.3f})", pick == "engine")
        )
    lines = [f"- {'✔' if c else '✘'} {what}" for what, c in checks]
    for other in ("kl", "rkl"):
        if other in table:
            lines.append(
                f"- engine − {other}: R_llh {compare(table, 'engine', other, 'r_llh_token')}, "
                f"R_cvg {compare(table, 'engine', other, 'r_cvg_token')}, "
                f"distinct-2 {compare(table, 'engine', other, 'teacher/distinct2')}"
            )
    answer = "**yes**" if all(c for _, c in checks) else "**no**" if not any(c for _, c in checks) else "**partly**"
    return f"{answer}: {sum(c for _, c in checks)} of 3 signs of collapse.", lines


def claim_js_mixture(table, text_metrics: list[str]) -> tuple[str, list[str]]:
    """Claim 4: does the exact JS mixture (§7 note 1) change the sequence-level JS or the text metrics?"""
    if "js" not in table or "js_stepwise" not in table:
        return "not run", []
    cells = {k: compare(table, "js", "js_stepwise", k) for k in ["js", "kl", "rkl", "tvd_bound", *text_metrics]}
    changed = [k for k, c in cells.items() if c.verdict != "tie"]
    answer = f"**yes**, on {', '.join(changed)}" if changed else "**no** difference resolved"
    return answer + " (exact − step-wise, paired by seed).", [f"- {k}: {c}" for k, c in cells.items()]


def claim_online(runs, table, steps: int, text_metrics: list[str]) -> tuple[str, list[str]]:
    """Claim 5 (Table 4): offline teacher samples vs the teacher re-sampled every step — time and quality."""
    if "tvd" not in table or "tvd_online" not in table:
        return "not run", []
    per_step = {
        v: statistics.fmean(r["train_seconds"] / steps for r in runs if r["variant"] == v)
        for v in ("tvd", "tvd_online")
    }
    ratio = per_step["tvd_online"] / per_step["tvd"]
    cells = {k: compare(table, "tvd_online", "tvd", k) for k in ["js", "kl", "rkl", "tvd_bound", *text_metrics]}
    changed = [k for k, c in cells.items() if c.verdict != "tie"]
    lines = [
        f"- seconds per training step: offline {per_step['tvd']:.2f}, online {per_step['tvd_online']:.2f} "
        f"(offline is {ratio:.2f}× faster; paper Table 4: 2.25–2.31× on a GPU)",
        *[f"- online − offline {k}: {c}" for k, c in cells.items()],
    ]
    quality = f"quality differs on {', '.join(changed)}" if changed else "no quality difference resolved"
    return f"offline is **{ratio:.2f}×** faster per step; {quality}.", lines


# ----------------------------------------------------------------------------- plots and the report


def plot_risks(table, baseline: dict, path: Path) -> None:
    """R_llh vs R_cvg per variant: every seed a dot, the mean a cross; the shared start a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (variant, seeds) in enumerate(table.items()):
        color = f"C{i % 10}"
        xs = [m["r_llh_token"] for m in seeds.values()]
        ys = [m["r_cvg_token"] for m in seeds.values()]
        ax.scatter(xs, ys, color=color, alpha=0.5, s=18)
        ax.scatter([statistics.fmean(xs)], [statistics.fmean(ys)], color=color, marker="x", s=70, label=variant)
    b = baseline["metrics"]
    ax.scatter([b["r_llh_token"]], [b["r_cvg_token"]], color="k", marker="*", s=120, label="start (pre-distilled)")
    ax.set_xlabel("R_llh: teacher NLL of student samples per token (high = mode averaging)", fontsize=9)
    ax.set_ylabel("R_cvg: student NLL of teacher samples per token (high = mode collapse)", fontsize=9)
    ax.set_title("held-out risks, every seed (dots) and the mean (×)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


CURVE_KEYS = ("r_llh_token", "r_cvg_token", "kl", "tvd_bound")


def curve_means(runs, baseline) -> dict[str, dict[int, dict[str, float]]]:
    """``{variant: {step: mean over seeds of the held-out curve scores}}``, the shared start at step 0."""
    points: dict[str, dict[int, list[dict]]] = {}
    for run in runs:
        for point in [baseline["curve"], *run["curve"]]:
            points.setdefault(run["variant"], {}).setdefault(point["step"], []).append(point)
    return {
        v: {step: {k: statistics.fmean(p[k] for p in ps) for k in CURVE_KEYS} for step, ps in sorted(steps.items())}
        for v, steps in points.items()
    }


def plot_curves(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_KEYS), figsize=(4 * len(CURVE_KEYS), 3.6))
    for ax, key in zip(axes, CURVE_KEYS):
        for i, (variant, steps) in enumerate(curves.items()):
            ax.plot(list(steps), [s[key] for s in steps.values()], marker="o", ms=3, color=f"C{i % 10}", label=variant)
        ax.set_title(f"held-out {key} (mean over seeds)", fontsize=9)
        ax.set_xlabel("step", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, settings: ClaimsSettings, runs: list[dict], baseline: dict, timings: dict) -> None:
    """``report.md``, ``results.json``, ``risks.png`` and ``curves.png`` in ``out``."""
    table = by_variant(runs)
    curves = curve_means(runs, baseline)
    plot_risks(table, baseline, out / "risks.png")
    plot_curves(curves, out / "curves.png")
    keys = [k for k, _ in COLUMNS if k in baseline["metrics"]]
    text_metrics = [k for k in TEXT_METRICS if k in keys]  # BERTScore only where it was computed
    lines = [
        *_results_section(settings, runs, table, baseline, keys),
        *_paired_section(table, keys),
        *_claims_section(runs, table, settings.distill_steps, text_metrics),
        *_curves_section(settings, curves),
        *_wall_time_section(runs, timings),
    ]
    (out / "report.md").write_text("\n".join(lines))
    _write_json(out / "results.json", {"settings": settings.fixed(), "baseline": baseline, "runs": runs})


def _results_section(settings: ClaimsSettings, runs: list[dict], table, baseline: dict, keys: list[str]) -> list[str]:
    """The title, the study's sizes, and the table of every variant's mean ± std over seeds."""
    from fdistill.evaluation.report import non_finite

    steps = settings.distill_steps
    arrows = {k: "↑" if up else "↓" for k, up in COLUMNS}
    lines = [
        "# The f-DISTILL paper's claims on SmolLM2-135M-Instruct → 4-layer student",
        "",
        f"Produced by `fdistill paper-claims` on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPU cores, torch "
        f"{torch.__version__}). {settings.train_prompts} training prompts with one offline teacher sample each, "
        f"{settings.eval_prompts} held-out prompts, replies ≤ {settings.max_new_tokens} tokens, pre-distillation "
        f"{settings.predistill_steps} steps (shared start), then {steps} steps of each variant at lr "
        f"{settings.distill_lr}, batch {settings.batch_size}; seeds {settings.seeds} (data order and sampling RNG; "
        "the teacher, its samples and the start are shared)."
        + (
            f" Each generation of student samples trains μ = {settings.num_iterations} steps, reweighted by "
            "truncated prefix importance weights, in every variant that scores student samples (all but kl "
            "and seqkd; `FDistillConfig.num_iterations`)."
            if settings.num_iterations > 1
            else ""
        ),
        "",
        "## Results (mean ± std over seeds)",
        "",
        "| variant | " + " | ".join(f"{k} {arrows[k]}" for k in keys) + " | s/step |",
        "|---" * (len(keys) + 2) + "|",
        "| start (pre-distilled) | " + " | ".join(f"{baseline['metrics'][k]:.4g}" for k in keys) + " | — |",
    ]
    for variant, seeds in table.items():
        per_step = [r["train_seconds"] / steps for r in runs if r["variant"] == variant]
        cells = [mean_std([m[k] for m in seeds.values()]) for k in keys]
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {mean_std(per_step)} |")
    bad = non_finite({f"{r['variant']} seed {r['seed']}": r["metrics"] for r in runs} | {"start": baseline["metrics"]})
    if bad:
        lines += ["", f"**{len(bad)} non-finite values** (their comparisons say non-finite): " + "; ".join(bad)]
    return lines + [
        "",
        "Divergences: Monte Carlo estimates of the sequence-level divergences to the teacher on the held-out prompts "
        "(one sample per prompt and side; the teacher's held-out samples are shared by every row). R_llh: teacher "
        "NLL of student samples; R_cvg: student NLL of teacher samples (per token). `teacher/`: against the "
        "teacher's greedy replies; `corpus/`: against the chatterbot references. s/step: training wall time per "
        "step without the learning-curve scoring.",
        "",
        "Variants: " + "; ".join(f"**{v}** — {VARIANTS[v].meaning}" for v in table) + ".",
        "",
    ]


def _paired_section(table, keys: list[str]) -> list[str]:
    """Every variant against KL, paired by seed (nothing when KL was not run)."""
    if "kl" not in table:
        return []
    lines = [
        "## Paired differences against KL (variant − kl, mean ± std over seeds, paired t-test)",
        "",
        "| variant | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for variant in table:
        if variant != "kl":
            lines.append(f"| {variant} | " + " | ".join(str(compare(table, variant, "kl", k)) for k in keys) + " |")
    return lines + [""]


def _claims_section(runs: list[dict], table, steps: int, text_metrics: list[str]) -> list[str]:
    """The five claims, each answered by the rule of this module's docstring, with its detail."""
    claims = [
        (
            "1. JS and TVD do at least as well as KL and RKL on the text metrics (Tables 2–3)",
            claim_text_metrics(table, text_metrics),
        ),
        ("2. Mode averaging (KL) vs mode collapse (RKL), JS and TVD in between (§4.5, Figure 2)", claim_modes(table)),
        ("3. ENGINE collapses", claim_engine(table)),
        ("4. The exact JS mixture vs the step-wise one (§7 note 1)", claim_js_mixture(table, text_metrics)),
        ("5. Offline vs online teacher samples (Table 4)", claim_online(runs, table, steps, text_metrics)),
    ]
    lines = ["## The claims", "", "Rule: " + " ".join(__doc__.split("\n\n")[1].split()), ""]
    for title, (answer, detail) in claims:
        lines += [f"### {title}", "", answer, "", *detail, ""]
    return lines


def _curves_section(settings: ClaimsSettings, curves) -> list[str]:
    """The learning curves: the plot and the mean R_cvg at every scored step."""
    steps = next(iter(curves.values()))
    return [
        "## Learning curves",
        "",
        f"Held-out scores on the first {settings.curve_prompts} held-out prompts every {settings.curve_every} steps "
        "(mean over seeds; step 0 is the shared start):",
        "",
        "![curves](curves.png)",
        "",
        "| variant | " + " | ".join(f"R_cvg@{s}" for s in steps) + " |",
        "|---" * (len(steps) + 1) + "|",
        *[
            f"| {v} | " + " | ".join(f"{p['r_cvg_token']:.3f}" for p in steps_.values()) + " |"
            for v, steps_ in curves.items()
        ],
        "",
        "![risks](risks.png)",
        "",
    ]


def _wall_time_section(runs: list[dict], timings: dict) -> list[str]:
    """The shared stages' wall times and the runs' training, curve-scoring and evaluation totals."""
    return [
        "## Wall time",
        "",
        *[f"- {k}: {v:.0f} s" for k, v in timings.items()],
        f"- training, all runs: {sum(r['train_seconds'] for r in runs):.0f} s; learning-curve scoring: "
        f"{sum(p['seconds'] for r in runs for p in r['curve']):.0f} s; evaluation: "
        f"{sum(r['eval_seconds'] for r in runs):.0f} s",
        "",
    ]
