"""The report of a diffusion experiment: rows summarised over seeds, ``table.md`` (table and the lecture's claims),
``results.json`` and the plots (the key metric against NFE, and samples of every sampler)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import torch

from ..models import num_parameters

TOY_METRICS = [
    "log_likelihood",
    "modes_covered",
    "on_mode",
    "energy_distance",
    "class_accuracy",
    "mse_to_teacher",
    "samples_per_s",
]
DIGITS_METRICS = ["digits_fd", "class_accuracy", "mse_to_teacher", "samples_per_s"]


@dataclass
class Measured:
    """What an experiment hands its report: every evaluation row, the first seed's samples by (sampler, steps),
    the teacher and its training record, and the real-vs-real floor (digits; None on the toy)."""

    rows: list[dict]
    samples: dict
    teacher: torch.nn.Module
    teacher_record: dict
    floor: dict | None


def summarise(rows: list[dict], metrics: list[str]) -> list[dict]:
    """Mean ± std over seeds per (model, steps); NaN stays NaN."""
    import numpy as np

    groups = {}
    for row in rows:
        groups.setdefault((row["model"], row["steps"], row["nfe"]), []).append(row)
    out = []
    for (model, steps, nfe), group in groups.items():
        entry = {"model": model, "steps": steps, "nfe": nfe, "seeds": len(group)}
        for m in metrics:
            if any(r[m] is None for r in group):  # not applicable (e.g. class accuracy of unconditional samples)
                entry[m], entry[m + "_std"] = None, None
                continue
            values = np.array([float(r[m]) for r in group])
            entry[m] = float(values.mean())
            entry[m + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        out.append(entry)
    return out


def _fmt(value, std=None, digits=3):
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # nan / inf stay visible
    text = f"{value:.{digits}g}" if isinstance(value, float) else str(value)
    if std is not None and isinstance(std, float) and math.isfinite(std):
        text += f" ± {std:.2g}"
    return text


def table_markdown(summary: list[dict], metrics: list[str]) -> str:
    header = "| sampler | steps | NFE | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (3 + len(metrics))]
    for e in summary:
        cells = [_fmt(e[m], e.get(m + "_std")) for m in metrics]
        lines.append(f"| {e['model']} | {e['steps']} | {e['nfe']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims(summary: list[dict], key: str, lower_is_better: bool) -> list[str]:
    """The lecture's claims, answered from the summary (mean over seeds; ± std shown)."""

    def get(model, steps):
        return next((e for e in summary if e["model"] == model and e["steps"] == steps), None)

    def better(a, b):
        if a is None or b is None:
            return None
        if not (math.isfinite(a[key]) and math.isfinite(b[key])):
            return "cannot be compared (a non-finite value)"
        spread = max(v for v in (a[key + "_std"], b[key + "_std"], 0.0) if math.isfinite(v))
        if abs(a[key] - b[key]) <= spread:
            return "ties with (difference within one std of)"
        return "beats" if (a[key] < b[key] if lower_is_better else a[key] > b[key]) else "does NOT beat"

    out = []
    for steps in (8, 4, 2, 1):
        pd, teacher = get("pd", steps), get("teacher", steps)
        verdict = better(pd, teacher)
        if verdict is not None:
            out.append(
                f"- PD student at {steps} steps {verdict} the teacher's DDIM at "
                f"{steps} steps on {key}: {_fmt(pd[key], pd[key + '_std'])} vs "
                f"{_fmt(teacher[key], teacher[key + '_std'])}."
            )
    for model in ("kd", "vsd", "dmd"):
        verdict = better(get(model, 1), get("teacher", 1))
        if verdict is not None:
            s, t = get(model, 1), get("teacher", 1)
            out.append(
                f"- one-step {model.upper()} student {verdict} the teacher's "
                f"one-step DDIM on {key}: {_fmt(s[key], s[key + '_std'])} vs {_fmt(t[key], t[key + '_std'])}."
            )
    for e in summary:
        if e["model"] == "guidance":
            g = get("guided teacher", e["steps"])
            top = max((x for x in summary if x["model"] == "guided teacher"), key=lambda x: x["steps"], default=None)
            if g and top:
                out.append(
                    f"- guidance student at {e['steps']} steps (1 call/step): class accuracy "
                    f"{_fmt(e['class_accuracy'], e['class_accuracy_std'])} vs guided teacher (2 calls/step) "
                    f"{_fmt(g['class_accuracy'], g['class_accuracy_std'])} at the same steps, "
                    f"{_fmt(top['class_accuracy'], top['class_accuracy_std'])} at {top['steps']} steps."
                )
    return out


def _plots(config, summary, key, samples_for_plot, folder) -> list[str]:
    """``{key}_vs_nfe.png`` and ``samples.png`` in ``folder``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [_metric_plot(plt, config, summary, key, os.path.join(folder, f"{key}_vs_nfe.png"))]
    path = os.path.join(folder, "samples.png")
    if config.dataset == "toy2d":
        _toy_samples_plot(plt, samples_for_plot, path)
    else:
        from fdistill.flows.metrics import save_sample_grid

        keys = list(samples_for_plot)
        save_sample_grid({f"{k[0]} K={k[1]}": (samples_for_plot[k][:20] / 2 + 0.5) for k in keys}, path, per_row=20)
    return paths + [path]


def _metric_plot(plt, config, summary, key, path) -> str:
    """``key`` (mean ± std over seeds) against NFE, one line a sampler."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(e["model"] for e in summary):
        pts = sorted((e["nfe"], e[key], e[key + "_std"]) for e in summary if e["model"] == model)
        if any(p[1] is None for p in pts):
            continue
        xs, ys, es = zip(*pts)
        es = [0 if not math.isfinite(v) else v for v in es]  # error bar only; the mean is plotted as measured
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=model)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel(key)
    ax.legend(fontsize=8)
    ax.set_title(f"{config.dataset}: {key} against NFE (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _toy_samples_plot(plt, samples_for_plot, path) -> None:
    """A scatter of (up to) 1000 samples of every sampler, six a row."""
    keys = list(samples_for_plot)
    cols = min(6, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        x = samples_for_plot[k][:1000]
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
        ax.set_xlim(-1.6, 1.6)
        ax.set_ylim(-1.6, 1.6)
        ax.set_title(f"{k[0]} K={k[1]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table_lines(config, measured: Measured, summary, metrics, key, lower, cpu) -> list[str]:
    """The lines of ``table.md``: the set-up, the floor (digits), the table, the claims and the CPU time."""
    teacher = measured.teacher
    lines = [
        f"# {config.dataset}: few-step diffusion distillation",
        "",
        (
            f"Teacher: {teacher.config['kind']} v-prediction, {num_parameters(teacher):,} parameters, shared by every "
            f"student seed (teacher_seed={config.teacher_seed}); {len(config.seeds)} student seeds {config.seeds} "
            f"(each also draws its own evaluation noise); {config.num_eval_samples} samples per row. "
            f"Mean ± std over seeds."
        ),
        "",
    ]
    if measured.floor is not None:
        lines += [
            (
                f"Real-vs-real floor (training digits vs test digits): digits-FD {measured.floor['digits_fd']:.3g}, "
                f"class accuracy {measured.floor['class_accuracy']:.3f}."
            ),
            "",
        ]
    lines += [
        table_markdown(summary, metrics),
        "",
        "## The lecture's claims at this scale",
        "",
        *claims(summary, key, lower),
        "",
        (f"CPU time of this run (process time, stages resumed from disk are not re-counted): {cpu / 60:.1f} min."),
    ]
    return lines


def write_report(config, measured: Measured, started: float, log=print) -> dict:
    """``table.md``, the plots and ``results.json`` in ``output_dir``; returns what results.json holds.

    ``started``: the run's `time.process_time` at its start (the CPU time reported).
    """
    metrics = TOY_METRICS if config.dataset == "toy2d" else DIGITS_METRICS
    key, lower = ("energy_distance", True) if config.dataset == "toy2d" else ("digits_fd", True)
    summary = summarise(measured.rows, metrics)
    cpu = time.process_time() - started
    lines = table_lines(config, measured, summary, metrics, key, lower, cpu)
    with open(os.path.join(config.output_dir, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plots = _plots(config, summary, key, measured.samples, config.output_dir)
    result = {
        "config": asdict(config),
        "rows": measured.rows,
        "summary": summary,
        "floor": measured.floor,
        "teacher_record": {k: v for k, v in measured.teacher_record.items() if k != "history"},
        "cpu_seconds": cpu,
        "plots": plots,
    }
    with open(os.path.join(config.output_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    if log:
        log("\n".join(lines))
    return result
