"""On-policy steps/s of rkl, js and tvd by rollout backend: in-process generate, the vLLM student server, reused
rollouts (k = 2, 4), overlapped generation, bfloat16 arithmetic (rows "bf16...": the student under autocast, the
teacher cast), each step's samples trained on again (rows "mu=...": ``num_iterations``, the teacher's numbers kept),
and TRL's DistillationTrainer; and quality at equal steps (issue 24).

The demo's setting (:mod:`fdistill.studies.demo`): the packaged SmolLM2-135M-Instruct teacher (GGUF), chatterbot
prompts through the chat template, one offline teacher sample per training prompt, the 4-layer copied-layer student
pre-distilled once. These shared stages are :class:`fdistill.studies.paper_claims.Shared`, cached in ``--work``
(the first invocation spends a few minutes on them; later ones reuse them). They run on the CPU on every machine
(the study's path); a GPU run moves the teacher and student to the GPU for the speed rows only.

Speed (every row side by side in one process, one after another; warm-up steps untimed):

    python scripts/bench_rollouts.py --out /tmp/bench_rollouts_cpu.md

CPU (chosen without CUDA): float32, batch 8, 32-token completions, 2 warm-up + 8 timed steps per row. On a GPU
machine the same command picks the CUDA preset: bfloat16 models on the GPU, batch 16, 128-token completions,
3 warm-up + 10 timed steps, the fused divergence, and ``student_server="auto"`` launches vLLM on the GPU (the
launcher of :mod:`fdistill.lm.served.launch`); TRL's vLLM row runs in its colocate mode when ``vllm`` imports in
this interpreter. ``--student-server URL`` uses a server you run instead of "auto".

Quality at equal steps (every variant trained ``--quality-steps`` steps from the same pre-distilled student, for
each seed; held-out sequence-level divergences and R_llh / R_cvg; each variant paired per seed against
in-process generation by the paper-claims rule, :func:`fdistill.studies.paper_claims_report.compare`):

    python scripts/bench_rollouts.py --quality --objective tvd --seeds 0 1 2 --out /tmp/bench_rollouts_quality.md

Quality runs use the demo's training helper (:func:`fdistill.studies.demo._train`: CPU, the demo's schedule) on
every machine; each (variant, seed) is written to ``--work`` when done and skipped on a re-run (resumable).

Rows: a feature the installed fdistill lacks (an ``FDistillConfig`` field missing, no vLLM virtualenv for "auto")
is reported as "not available: <reason>", a row that fails as "failed: <error>"; none is dropped.
Timing: wall clock at every optimizer step's end (``bench_trainer.StepTimer``); s/step over the timed steps.
Completion tok/s counts the student completion tokens the timed steps trained on (the logged
``student_sample_length`` × batch; TRL: ``completions/mean_length``). Generation share: the time the trainer spent
inside its student sampler (fdistill: the ``_samplers()`` entry; TRL: the student's ``generate``) over the timed
steps' time; with overlap it is the time waited for the background draw if that goes through the sampler, else
n/a. Speed-ups: the in-process row's s/step (and TRL's, for rkl and js) over the row's, same objective, same run.
Completions end at EOS or after ``--completion`` tokens in every row, so all backends do the same kind of work (the
student server does not take ``min_new_tokens``); ``--exact-length`` forces full-length completions where the
backend takes ``min_new_tokens`` (in-process and TRL). The "len" column shows the mean length each row trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_trainer import CUDA, StepTimer, fdistill_trainer, peak_memory_gib, timed_train, trl_trainer  # noqa: E402

from fdistill.errors import InputError  # noqa: E402
from fdistill.lm.config import FDistillConfig  # noqa: E402

PRESETS = {
    "cuda": dict(batch=16, completion=128, steps=10, warmup=3, dtype="bfloat16"),
    "cpu": dict(batch=8, completion=32, steps=8, warmup=2, dtype="float32"),
}
OBJECTIVES = ("rkl", "js", "tvd")
SERVER = "<server>"  # stands for --student-server in the rows below
# name: (FDistillConfig fields that set the row apart, the issue-24 fields it needs)
ROWS: dict[str, dict] = {
    "in-process": {},
    "server": {"student_server": SERVER},
    "k=2": {"steps_per_generation": 2},
    "k=4": {"steps_per_generation": 4},
    "overlap": {"student_server": SERVER, "rollout_overlap": True},
    "server, k=4": {"student_server": SERVER, "steps_per_generation": 4},
    # bfloat16 arithmetic (the precision GPU runs use): the student under autocast, the teacher cast to bfloat16
    "bf16": {"bf16": True, "teacher_dtype": "bfloat16"},
    "bf16, k=2": {"bf16": True, "teacher_dtype": "bfloat16", "steps_per_generation": 2},
    "bf16, k=4": {"bf16": True, "teacher_dtype": "bfloat16", "steps_per_generation": 4},
    # each step's samples (and the teacher's numbers on them) trained on again at the next μ − 1 steps
    "mu=2": {"num_iterations": 2},
    "mu=3": {"num_iterations": 3},
    "mu=4": {"num_iterations": 4},
    "mu=6": {"num_iterations": 6},  # --steps 24 times whole cycles of 4, 6 and 8 alike
    "mu=8": {"num_iterations": 8},  # time it over >= 16 steps (two generations), as the smaller ones over 8
    "k=2, mu=2": {"steps_per_generation": 2, "num_iterations": 2},
    "bf16, mu=4": {"bf16": True, "teacher_dtype": "bfloat16", "num_iterations": 4},
}
QUALITY_VARIANTS = ("in-process", "server", "k=2", "k=4", "overlap")
QUALITY_KEYS = ("r_llh_token", "r_cvg_token", "kl", "rkl", "js", "tvd_bound")
LENGTHS = {True: "in-process and TRL forced to the full length", False: "every row's samples end at EOS"}
TRL_ROWS = {"rkl": 1.0, "js": 0.5}  # TRL's beta: 1 = reverse KL, 0.5 = its JSD; TRL has no TVD


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("batch", "completion", "steps", "warmup"):
        p.add_argument(f"--{name}", type=int, default=None, help="default: the GPU or CPU preset")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--fused", choices=["auto", "on", "off"], default="auto", help="fdistill fused_divergence")
    p.add_argument("--lr", type=float, default=2e-4, help="the demo's f-DISTILL learning rate")
    p.add_argument("--seed", type=int, default=0, help="speed rows' seed")
    p.add_argument("--objective", nargs="+", choices=OBJECTIVES, default=None, help="default: all (quality: tvd)")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=None, help="default: all")
    p.add_argument("--student-server", default="auto", help='"auto" (vLLM from its virtualenv) or a URL')
    p.add_argument("--no-trl", action="store_true", help="skip the TRL rows")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="speed: run every row this many times, the rows' order reversed every other repeat; report the median",
    )
    p.add_argument(
        "--exact-length",
        action="store_true",
        help="force --completion tokens (min_new_tokens) where the backend takes it: in-process and TRL only",
    )
    p.add_argument("--quality", action="store_true", help="quality at equal steps instead of speed")
    p.add_argument("--quality-steps", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--predistill-steps", type=int, default=100, help="the shared start's (the study's 100)")
    p.add_argument("--train-prompts", type=int, default=192, help="offline teacher samples (the study's 192)")
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts scored (the study's 32)")
    p.add_argument("--work", default="runs/bench_rollouts", help="cache of the shared stages and quality runs")
    p.add_argument("--cache-dir", default=None, help="converted-GGUF cache (default ~/.cache/fdistill/gguf)")
    p.add_argument("--out", default=None, help="write the table here (Markdown) and JSON beside it")
    o = p.parse_args(argv)
    for k, v in PRESETS["cuda" if CUDA else "cpu"].items():
        if getattr(o, k) is None:
            setattr(o, k, v)
    o.objective = o.objective or (["tvd"] if o.quality else list(OBJECTIVES))
    o.rows = o.rows or (list(QUALITY_VARIANTS) if o.quality else list(ROWS))
    if min(o.warmup, o.steps, o.quality_steps, o.predistill_steps, o.train_prompts, o.eval_prompts, o.repeats) < 1:
        p.error(
            "use positive --warmup, --steps, --quality-steps, --predistill-steps, --train-prompts, --eval-prompts, "
            "--repeats"
        )
    if o.quality and (len(o.seeds) < 2 or len(set(o.seeds)) != len(o.seeds)):
        p.error("--quality pairs seeds: give at least two distinct --seeds (three or more to resolve differences)")
    o.prompt = 256  # FDistillConfig's default max_prompt_length (chat-template prompts)
    return o


# ----------------------------------------------------------------------------- which rows can run


def vllm_python() -> str:
    """The vLLM virtualenv's interpreter that ``student_server="auto"`` starts (fdistill/testing_vllm.py's)."""
    return os.environ.get("FDISTILL_VLLM_PYTHON", str(Path.home() / ".cache/fdistill/vllm-venv/bin/python"))


def unavailable(settings: dict, server: str) -> str | None:
    """Why a row's settings cannot run with the installed fdistill, or None when they can."""
    fields = {f.name for f in dataclasses.fields(FDistillConfig)}
    missing = [k for k in settings if k not in fields]
    if missing:
        return f"FDistillConfig has no field {', '.join(missing)} in this fdistill (issue 24 not merged)"
    if settings.get("student_server") == "auto" and not os.path.exists(vllm_python()):
        return f"no vLLM virtualenv at {vllm_python()} (bash scripts/install_vllm.sh, or set FDISTILL_VLLM_PYTHON)"
    return None


def row_settings(name: str, server: str) -> dict:
    return {k: (server if v == SERVER else v) for k, v in ROWS[name].items()}


def shown(server: str) -> str:
    """--student-server as written to a table or record: a URL may carry credentials, so it is never written."""
    return server if server == "auto" else "URL"


def trl_vllm_unavailable() -> str:
    """Why TRL's vLLM generation cannot run here ('' when it can: CUDA and vllm importable in this interpreter)."""
    reasons = []
    if not CUDA:
        reasons.append(
            "TRL's vLLM modes need CUDA: colocate runs vLLM's GPU engine in the trainer, and server mode syncs "
            "weights over NCCL (trl/generation/vllm_client.py init_communicator refuses a non-CUDA device)"
        )
    if importlib.util.find_spec("vllm") is None:
        reasons.append(
            "vllm is not importable in the trainer's environment (here it lives in its own virtualenv, which pins "
            "its own transformers)"
        )
    return "; ".join(reasons)


# ----------------------------------------------------------------------------- timing the sampler


class SamplerClock:
    """Wall-clock intervals spent inside a callable (a student sampler, or ``generate``)."""

    def __init__(self):
        self.intervals: list[tuple[float, float]] = []

    def wrap(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.intervals.append((start, time.perf_counter()))

        return timed

    def seconds_after(self, t0: float) -> float:
        return sum(end - start for start, end in self.intervals if start >= t0)


def clock_fdistill(trainer) -> SamplerClock:
    """Time the student sampler the trainer draws with, whatever its backend (``_samplers()``'s "student")."""
    clock, samplers = SamplerClock(), trainer._samplers

    def timed_samplers():
        out = dict(samplers())
        if "student" in out:
            out["student"] = clock.wrap(out["student"])
        return out

    trainer._samplers = timed_samplers
    return clock


def clock_generate(model) -> SamplerClock:
    """Time ``model.generate`` (TRL's default generation calls it on the student)."""
    clock = SamplerClock()
    model.generate = clock.wrap(model.generate)
    return clock


def measure_row(trainer, o, clock: SamplerClock, length_key: str) -> dict:
    """Train the row; s/step, completion tok/s and the generation share over the timed steps."""
    timer, logs = timed_train(trainer, o.warmup)
    seconds = timer.seconds
    lengths = [h.get(length_key, math.nan) for h in logs[-o.steps :]]  # one log per step (logging_steps=1)
    tokens = o.batch * sum(lengths)
    gen = clock.seconds_after(timer.warm) if clock.intervals else math.nan
    return {
        "s_per_step": seconds / o.steps,
        "tok_per_s": tokens / seconds,
        "mean_length": sum(lengths) / len(lengths),
        "generation_share": gen / seconds,
        "peak_gib": peak_memory_gib(),
        "loss": logs[-1]["loss"],
    }


# ----------------------------------------------------------------------------- the shared stages


def claims_settings(o):
    """The paper-claims study's sizes with this benchmark's completion length, steps and seeds (no BERTScore)."""
    from fdistill.studies.paper_claims import ClaimsSettings

    return ClaimsSettings(
        train_prompts=o.train_prompts,
        eval_prompts=o.eval_prompts,
        curve_prompts=16 if o.eval_prompts >= 16 else o.eval_prompts,
        sample_batch_size=16 if o.eval_prompts >= 16 else o.eval_prompts,
        max_new_tokens=o.completion,
        predistill_steps=o.predistill_steps,
        distill_steps=o.quality_steps,
        seeds=o.seeds,
        bertscore=False,
    )


def load_shared(o, settings=None):
    """Teacher, data with offline teacher samples, pre-distilled student, held-out teacher samples (cached in --work).

    A --work folder made with other sizes is refused before any work (its caches would not match)."""
    from fdistill.checks import output_folder
    from fdistill.studies.paper_claims import Shared, _write_json

    settings = settings or claims_settings(o)
    settings.check()
    work = Path(output_folder("work", o.work))
    work.mkdir(parents=True, exist_ok=True)
    fixed = {
        k: v
        for k, v in settings.fixed().items()
        if k not in ("distill_steps", "distill_lr", "curve_every", "num_iterations")
    }
    record = work / "settings.json"
    if record.exists() and json.loads(record.read_text()) != fixed:
        raise InputError(
            f"{work} caches the shared stages of other sizes ({record}): use another --work, or the same --completion."
        )
    _write_json(record, fixed)
    transformers.set_seed(settings.data_seed)
    return Shared(work, settings, o.cache_dir)


def check_out(o) -> None:
    if o.out and not Path(o.out).resolve().parent.is_dir():
        raise InputError(f"--out {o.out!r}: its folder does not exist; create it or choose another path.")


# ----------------------------------------------------------------------------- speed rows


@contextmanager
def teacher_kept(shared):
    """The shared teacher as it was after the row: the trainer casts a teacher it is given to ``teacher_dtype`` in
    place (as the Trainer moves a model), and the next row must start from the same teacher."""
    dtype = next(shared.teacher.parameters()).dtype
    try:
        yield
    finally:
        shared.teacher.to(dtype=dtype)


def run_fdistill_row(o, shared, objective: str, name: str) -> dict:
    """One fdistill row: the shared start, the row's settings; "unavailable" when the installed fdistill lacks them."""
    settings = row_settings(name, o.student_server)
    why = unavailable(settings, o.student_server)
    if why:
        return {"unavailable": why}
    shared.student.load_state_dict(shared.start_state)
    torch.manual_seed(o.seed)
    with tempfile.TemporaryDirectory() as tmp, teacher_kept(shared):
        try:
            trainer = fdistill_trainer(
                o,
                shared.student,
                shared.teacher,
                shared.tokenizer,
                shared.train_data,
                objective,
                tmp,
                exact=o.exact_length,
                use_chat_template=True,
                max_prompt_length=o.prompt,
                **settings,
            )
        except InputError as e:  # the installed fdistill refuses the row's settings (e.g. a combination)
            if not settings:
                raise
            return {"unavailable": _error(e, o)}
        try:
            return measure_row(trainer, o, clock_fdistill(trainer), "student_sample_length")
        except Exception as e:  # noqa: BLE001 — a failing feature row must not lose the others; it is reported
            if not settings:
                raise
            return {"error": _error(e, o).splitlines()[0][:300]}


def _error(e: Exception, o) -> str:
    """An exception as a table cell, --student-server's URL (it may carry credentials) replaced by "URL"."""
    text = f"{type(e).__name__}: {e}"
    return text if o.student_server == "auto" else text.replace(o.student_server, shown(o.student_server))


def run_trl_row(o, shared, beta: float, vllm: bool = False) -> dict:
    """TRL's DistillationTrainer on the same prompts (as chat turns: TRL applies the chat template), start, settings."""
    from datasets import Dataset

    why = ["trl is not installed (pip install trl)"] if importlib.util.find_spec("trl") is None else []
    why += [trl_vllm_unavailable()] if vllm and trl_vllm_unavailable() else []
    if why:
        return {"unavailable": "; ".join(why)}
    extra = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3) if vllm else {}
    prompts = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in shared.train_data["prompt"]]})
    student = shared.student
    student.load_state_dict(shared.start_state)
    torch.manual_seed(o.seed)
    clock = clock_generate(student)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = trl_trainer(
                o, student, shared.teacher, shared.tokenizer, prompts, beta, tmp, o.exact_length, **extra
            )
            return measure_row(trainer, o, clock, "completions/mean_length")
    except Exception as e:  # noqa: BLE001 — TRL failing must not lose the other rows; it is reported
        return {"error": _error(e, o).splitlines()[0][:200]}
    finally:
        del student.generate  # the instance attribute clock_generate put there


def speed_rows(o, shared) -> dict[str, dict]:
    """Every requested row, objective by objective, side by side in this process: ``{"objective / row": result}``.

    ``--repeats N``: each objective's rows run N times, in reversed order every other repeat, so that load from
    other processes hits every row alike; a row's result is its median repeat's, with every repeat's s/step in
    ``s_per_step_repeats`` (the ratios of the table are then medians of per-repeat ratios, :func:`_speedup`)."""
    results = {}
    for objective in o.objective:
        jobs = [(name, run_fdistill_row, (o, shared, objective, name)) for name in o.rows]
        if not o.no_trl:
            beta = TRL_ROWS.get(objective)
            for label, vllm in (("TRL", False), ("TRL + vLLM", True)):
                if beta is None:
                    jobs.append((label, dict, ({"unavailable": "TRL's DistillationTrainer has no TVD objective"},)))
                else:
                    jobs.append((label, run_trl_row, (o, shared, beta, vllm)))
        runs = {name: [] for name, _, _ in jobs}
        for repeat in range(o.repeats):
            for name, job, job_args in jobs if repeat % 2 == 0 else jobs[::-1]:
                runs[name].append(r := job(*job_args))
                which = f" (repeat {repeat + 1})" if o.repeats > 1 else ""
                print(f"{objective} / {name}{which}", json.dumps({k: _round(v) for k, v in r.items()}), flush=True)
        for name, _, _ in jobs:
            results[f"{objective} / {name}"] = _median_run(runs[name])
    return results


def _median_run(runs: list[dict]) -> dict:
    """One row's repeats as one result: the repeat of median s/step (the lower one of an even count), with every
    repeat's s/step; a repeat that did not run (unavailable, failed) makes the row that result."""
    failed = [r for r in runs if "s_per_step" not in r]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r["s_per_step"])
    result = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        result["s_per_step_repeats"] = [r["s_per_step"] for r in runs]
    return result


def _round(v):
    return round(v, 4) if isinstance(v, float) else v


def speed_table(o, results: dict[str, dict]) -> str:
    mem = "peak GPU GiB" if CUDA else "peak RSS GiB"
    lines = [
        f"| objective | rollouts | s/step | steps/s | × in-process | × TRL | completion tok/s | len | "
        f"generation share | {mem} | final loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        objective, name = key.split(" / ", 1)
        label = _row_label(objective, name, o.student_server)
        if "unavailable" in r or "error" in r:
            what = f"not available: {r['unavailable']}" if "unavailable" in r else f"failed: {r['error']}"
            lines.append(f"| {objective} | {label} | {what} | | | | | | | | |")
            continue
        ratios = [_speedup(results.get(f"{objective} / {base}", {}), r) for base in ("in-process", "TRL")]
        share = "n/a" if math.isnan(r["generation_share"]) else f"{100 * r['generation_share']:.0f} %"
        lines.append(
            f"| {objective} | {label} | {r['s_per_step']:.3f} | {1 / r['s_per_step']:.2f} | {' | '.join(ratios)} | "
            f"{r['tok_per_s']:.1f} | {r['mean_length']:.1f} | {share} | {r['peak_gib']:.2f} | {r['loss']:.4g} |"
        )
    lines += [
        "",
        "× in-process, × TRL: that row's s/step ÷ this row's, same objective, same run"
        + (
            f" (s/step: the median of {o.repeats} repeats, rows in alternating order; ×: the median of the per-repeat "
            "ratios)"
            if o.repeats > 1
            else ""
        )
        + ". Generation share: time inside the "
        "student sampler over the timed steps' time (overlap: the time waited for the background draw). "
        f"len: mean student completion length trained on ({LENGTHS[o.exact_length]}). "
        "Loss: fdistill sums over positions, averaged over sequences; "
        "TRL averages over tokens. TRL beta=1.0 is its reverse KL (rkl rows), beta=0.5 its JSD (js rows).",
    ]
    return "\n".join(lines)


def _speedup(base: dict, row: dict) -> str:
    """``base``'s s/step over ``row``'s: with repeats the median of the per-repeat ratios (same repeat, rows run
    next to each other), else the one ratio."""
    if "s_per_step" not in base:
        return "n/a"
    if "s_per_step_repeats" in base and "s_per_step_repeats" in row:
        return f"{statistics.median(b / r for b, r in zip(base['s_per_step_repeats'], row['s_per_step_repeats'])):.2f}"
    return f"{base['s_per_step'] / row['s_per_step']:.2f}"


def _row_label(objective: str, name: str, server: str) -> str:
    if name.startswith("TRL"):
        beta = TRL_ROWS.get(objective)
        return f"{name} DistillationTrainer" + (f" (beta={beta})" if beta is not None else "")
    settings = row_settings(name, shown(server))
    return name if not settings else f"{name} (`{', '.join(f'{k}={v}' for k, v in settings.items())}`)"


# ----------------------------------------------------------------------------- quality at equal steps


def quality_run(o, shared, objective: str, variant: str, seed: int) -> dict:
    """Train ``variant`` for --quality-steps from the shared start with ``seed``; its held-out scores."""
    settings = row_settings(variant, o.student_server)
    shared.student.load_state_dict(shared.start_state)
    timer = StepTimer(warmup=1)  # the steps after the first: no set-up (a server's start-up) in s/step
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, teacher_kept(shared):
        shared.train_fn(
            shared.student,
            shared.teacher,
            shared.tokenizer,
            shared.train_data,
            tmp,
            shared.demo,
            objective=objective,
            steps=o.quality_steps,
            lr=o.lr,
            seed=seed,
            callbacks=[timer],
            **settings,
        )
    seconds = time.perf_counter() - start
    return {
        "variant": variant,
        "seed": seed,
        "objective": objective,
        "settings": row_settings(variant, shown(o.student_server)),
        "metrics": shared.held_out_scores(shared.student),
        "train_seconds": seconds,
        "s_per_step": timer.seconds / (o.quality_steps - 1) if o.quality_steps > 1 else math.nan,
    }


def quality_runs(o, shared, objective: str) -> tuple[list[dict], dict[str, str]]:
    """Every (variant, seed) for ``objective``, seed by seed, each cached in --work when done; and the variants that
    cannot run here with the reason."""
    from fdistill.studies.paper_claims import _write_json

    folder = Path(o.work) / "quality" / f"{objective}_{o.quality_steps}steps_lr{o.lr:g}"
    skipped = {v: why for v in o.rows if (why := unavailable(row_settings(v, o.student_server), o.student_server))}
    runs = []
    for seed in o.seeds:
        for variant in [v for v in o.rows if v not in skipped]:
            path = folder / variant.replace(", ", "_").replace("=", "") / f"seed{seed}.json"
            if not path.exists():
                print(f"quality: {objective}, {variant}, seed {seed}", flush=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                _write_json(path, quality_run(o, shared, objective, variant, seed))
            runs.append(json.loads(path.read_text()))
    return runs, skipped


def quality_table(o, objective: str, runs: list[dict], skipped: dict[str, str]) -> str:
    from fdistill.studies.paper_claims_report import by_variant, compare, mean_std

    table = by_variant(runs)
    seconds = {}
    for run in runs:
        seconds.setdefault(run["variant"], []).append(run.get("s_per_step", math.nan))
    head = " | ".join(QUALITY_KEYS)
    lines = [
        f"Held-out scores after {o.quality_steps} steps of {objective} (mean ± std over seeds {o.seeds}):",
        "",
        f"| variant | s/step after step 1 | {head} |",
        "|---" * (len(QUALITY_KEYS) + 2) + "|",
    ]
    for variant in o.rows:
        if variant in skipped:
            lines.append(f"| {variant} | not available: {skipped[variant]} |" + " |" * len(QUALITY_KEYS))
            continue
        cells = [mean_std([m[k] for m in table[variant].values()]) for k in QUALITY_KEYS]
        lines.append(f"| {variant} | {mean_std(seconds[variant])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired per seed against in-process (difference variant − in-process ± std, paired t-test p, verdict at "
        "p < 0.05 in the metric's direction; all lower is better):",
        "",
        f"| variant | {head} |",
        "|---" * (len(QUALITY_KEYS) + 1) + "|",
    ]
    paired = [v for v in o.rows if v != "in-process" and v in table] if "in-process" in table else []
    for variant in paired:
        cells = [str(compare(table, variant, "in-process", k)) for k in QUALITY_KEYS]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    if not paired:
        lines.append("| (no variant ran beside in-process) |" + " |" * len(QUALITY_KEYS))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None):
    o = parse_args(argv)
    check_out(o)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renamed-argument notices
    settings = {k: v for k, v in vars(o).items() if k not in ("out", "cache_dir")}
    settings["student_server"] = shown(o.student_server)
    device = torch.cuda.get_device_name() if CUDA else f"CPU, {torch.get_num_threads()} threads"
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    print(f"settings: {json.dumps(settings)}\ndevice: {device}; {versions}", flush=True)
    started = time.perf_counter()
    shared = load_shared(o)
    print(f"shared stages ready after {time.perf_counter() - started:.0f} s", flush=True)
    if o.quality:
        sections, results = [], {}
        for objective in o.objective:
            runs, skipped = quality_runs(o, shared, objective)
            results[objective] = {"runs": runs, "not_available": skipped}
            sections.append(quality_table(o, objective, runs, skipped))
        report = "\n\n".join(sections)
    else:
        if CUDA:
            dtype = getattr(torch, o.dtype)
            shared.teacher.to(device="cuda", dtype=dtype)
            shared.student.to(device="cuda", dtype=dtype)
        results = speed_rows(o, shared)
        report = speed_table(o, results)
    wall = time.perf_counter() - started
    print("\n" + report + f"\n\nwall time {wall:.0f} s", flush=True)
    if o.out:
        command = " ".join(["python", "scripts/bench_rollouts.py", *(argv if argv is not None else sys.argv[1:])])
        head = f"Command: `{command}`\n\nSettings: `{json.dumps(settings)}`; {device}; {versions}; wall time {wall:.0f} s\n\n"
        write_atomic(Path(o.out), head + report + "\n")
        record = {"settings": settings, "device": device, "versions": versions, "wall_s": wall, "results": results}
        write_atomic(Path(o.out).with_suffix(".json"), json.dumps(record, indent=1))
    return results


if __name__ == "__main__":
    main()
