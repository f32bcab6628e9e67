"""The Gaussian study behind ``fdistill vocoder gaussian``: students trained by each method on the paper's teachers,
repeated over teachers and dimensions, and summarised (Figures 2 and 3 of the paper and a check of Proposition 1).

Repeats: each of the study's ``repeats`` draws its own R (its own teacher) and trains every method on it; the
table reports mean ± std (and the median) over the repeats, and the JSON keeps every repeat's numbers with its
teacher's covariance eigenvalues. At D ≥ 32 the final KL depends strongly on the drawn teacher's smallest
eigenvalue λ_min(RRᵀ) (a thin direction the student must shrink into), so one draw says little.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fdistill import checks
from fdistill.errors import InputError
from fdistill.runner import StepGuard

from .losses import METHOD_LABELS, METHODS, distillation_loss
from .models import (
    PARAMETERISATIONS,
    AffineGaussian,
    covariance_eigenvalues,
    gaussian_kl,
    make_teacher,
    relative_eigenvalues,
)
from .proposition1 import expansion_signal, proposition1_monte_carlo, proposition1_probability
from .report import write_study


@dataclass(frozen=True)
class GaussianStudySettings:
    """Every setting of `run_gaussian_study`, checked when made: one clear error for any that cannot work.

    Arguments:
        out_dir: output folder (created when the study has finished).
        dims: the dimensions D (paper: 4, 16, 32, 64).
        steps, batch, lr: Adam updates, minibatch size, learning rate per student (paper: 5000, 64, 0.005).
        repeats: teachers per dimension, each distilled by every method (paper: 8 reverse-KL runs for Figure 3).
        samples: expansion-signal probes per update of each reverse-KL run (paper: 128).
        seed: seeds everything (teachers, minibatches, probes, evaluation, Monte Carlo).
        eval_samples: teacher and student samples per histogram (paper: 1000).
        methods: a subset of METHODS containing ``"reverse_kl"``.
        distance: ``"l2"`` or ``"l1"`` for the reconstruction losses.
        mean_value: the teacher mean μ = mean_value·1 (paper: 2).
        prop1_samples: Monte Carlo draws for Proposition 1, per dimension and block.
        parameterisation: ``"triangular"`` (Cholesky teacher map, IAF student) or ``"paper"`` (teacher map
            R⁻¹(x − µ), full-matrix student); `fdistill.vocoder.gaussian.models` gives both. The teachers'
            distributions are the same for both.
    """

    out_dir: str
    dims: Sequence[int] = (4, 16, 32, 64)
    steps: int = 5000
    batch: int = 64
    lr: float = 0.005
    repeats: int = 8
    samples: int = 128
    seed: int = 0
    eval_samples: int = 1000
    methods: Sequence[str] = METHODS
    distance: str = "l2"
    mean_value: float = 2.0
    prop1_samples: int = 200_000
    parameterisation: str = "triangular"

    def __post_init__(self):
        checks.output_folder("out_dir", self.out_dir)
        dims = list(self.dims) if isinstance(self.dims, (list, tuple)) else self.dims
        checks.whole_numbers("dims", dims, example="[4, 16, 32, 64]")
        for name in ("steps", "batch", "repeats", "samples", "prop1_samples"):
            checks.whole_number(name, getattr(self, name))
        checks.whole_number("eval_samples", self.eval_samples, low=2)  # a standard deviation needs two samples
        checks.whole_number("seed", self.seed, low=0)
        checks.number("lr", self.lr)
        checks.number("mean_value", self.mean_value, low=-math.inf)
        checks.choice("distance", self.distance, ("l1", "l2"))
        checks.choice("parameterisation", self.parameterisation, PARAMETERISATIONS)
        methods = list(self.methods) if isinstance(self.methods, (list, tuple)) else self.methods
        checks.names("methods", methods, METHODS)
        if "reverse_kl" not in self.methods:
            raise InputError("the study needs 'reverse_kl' among the methods (Figure 3 probes its training)")

    def record(self) -> dict:
        """The settings as the summary's ``"settings"`` entry, with the dtype, torch version and thread count."""
        return {
            "dims": list(self.dims),
            "steps": self.steps,
            "batch": self.batch,
            "lr": self.lr,
            "repeats": self.repeats,
            "samples": self.samples,
            "seed": self.seed,
            "eval_samples": self.eval_samples,
            "methods": list(self.methods),
            "distance": self.distance,
            "mean_value": self.mean_value,
            "prop1_samples": self.prop1_samples,
            "parameterisation": self.parameterisation,
            "dtype": "float64",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }


def check_study_settings(*args, **kwargs) -> None:
    """One clear error for any setting of `run_gaussian_study` that cannot work, before anything is computed.

    Takes the fields of `GaussianStudySettings`, in its order or by name.
    """
    GaussianStudySettings(*args, **kwargs)


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator whose seed is a hash of ``keys`` (independent streams per seed/dimension/method/repeat)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def train_student(
    teacher: AffineGaussian,
    method: str,
    steps: int = 5000,
    batch: int = 64,
    lr: float = 0.005,
    distance: str = "l2",
    generator: torch.Generator | None = None,
    probe_generator: torch.Generator | None = None,
    probe_samples: int = 128,
    kl_every: int = 50,
) -> tuple[AffineGaussian, dict]:
    """Distil ``teacher`` into a student of its class (starting at N(0, I)) with Adam on ``method``.

    A `TriangularGaussian` teacher gets a triangular (IAF) student, a `FullGaussian` teacher a full-matrix one.

    Arguments:
        teacher: the frozen teacher.
        method: ``"reverse_kl"``, ``"z_rec"`` or ``"x_rec"``.
        steps, batch, lr: updates, minibatch size and Adam learning rate (paper: 5000, 64, 0.005).
        distance: ``"l2"`` or ``"l1"`` for the reconstruction losses.
        generator: draws the minibatches.
        probe_generator: if given, before every update and after the last one, ``probe_samples`` fresh student
            samples estimate P((x − μ)ᵀg_x > 0) (Figure 3); its own generator leaves the training draws unchanged.
        kl_every: record the closed-form KL(student‖teacher) every this many updates.

    Returns the student and ``{"loss": [...], "kl_steps": [...], "kl": [...], "expansion": [...] | None}``.
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {METHODS}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    student = type(teacher)(teacher.dim, dtype=teacher.shift.dtype)
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    record = {"loss": [], "kl_steps": [], "kl": [], "expansion": [] if probe_generator is not None else None}

    def observe(step: int) -> None:
        if record["expansion"] is not None:
            z = torch.randn(probe_samples, teacher.dim, generator=probe_generator, dtype=teacher.shift.dtype)
            record["expansion"].append(expansion_signal(student, teacher, z).double().mean().item())
        if step % kl_every == 0 or step == steps:
            with torch.no_grad():
                record["kl_steps"].append(step)
                record["kl"].append(gaussian_kl(student, teacher).item())

    # the shared runner's guard, strict: any non-finite update stops the run (no clipping: max_grad_norm=None)
    guard = StepGuard(
        f"{METHOD_LABELS[method]} student (D={teacher.dim})",
        max_skipped_fraction=0.0,
        planned=steps,
        error=InputError,
        hint=f"lr={lr!r} too high. Lower the learning rate (--lr) and run again; nothing was written.",
        message="{stage}: the loss is non-finite or has a non-finite gradient "
        "at update {taken} of {total}, so the run cannot finish; likely cause: {hint}",
    )
    for step in range(steps):
        observe(step)
        loss = distillation_loss(method, student, teacher, batch, generator, distance)
        guard.step(optimizer, loss, student.parameters())
        record["loss"].append(loss.item())
    observe(steps)
    return student.requires_grad_(False), record


def _stats(values: torch.Tensor) -> dict:
    values = values.double()
    return {
        "mean": values.mean().item(),
        "std": values.std().item(),
        "stderr": (values.std() / math.sqrt(values.numel())).item(),
    }


def _compare(student_ll: torch.Tensor, teacher_ll: torch.Tensor) -> dict:
    """Mean difference of teacher log-likelihoods (student − teacher samples), its standard error, and a KS test."""
    from scipy import stats

    diff = student_ll.mean().item() - teacher_ll.mean().item()
    stderr = math.sqrt(student_ll.var().item() / student_ll.numel() + teacher_ll.var().item() / teacher_ll.numel())
    ks = stats.ks_2samp(student_ll.numpy(), teacher_ll.numpy())
    return {
        "mean_difference": diff,
        "difference_stderr": stderr,
        "z_score": diff / stderr,
        "ks_statistic": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
    }


def _subsample(values: list, every: int) -> tuple[list, list]:
    steps = list(range(0, len(values), every))
    if steps[-1] != len(values) - 1:
        steps.append(len(values) - 1)
    return steps, [round(values[i], 5) for i in steps]


def run_gaussian_study(
    out_dir: str,
    dims=(4, 16, 32, 64),
    steps: int = 5000,
    batch: int = 64,
    lr: float = 0.005,
    repeats: int = 8,
    samples: int = 128,
    seed: int = 0,
    eval_samples: int = 1000,
    methods=METHODS,
    distance: str = "l2",
    mean_value: float = 2.0,
    prop1_samples: int = 200_000,
    parameterisation: str = "triangular",
    log=print,
) -> dict:
    """The paper's Gaussian study (§3.2 and §4.1.1); writes figures, ``table.md`` and ``summary.json`` to ``out_dir``.

    Per dimension D and repeat r < ``repeats``: a teacher with its own R (`make_teacher`) and one student per method
    trained on it from N(0, I), all methods on the same minibatch stream; the teacher log-likelihood of
    ``eval_samples`` teacher samples vs as many samples of each student (Figure 2 shows repeat 0); the closed-form
    KL both ways; the reverse-KL run probed with ``samples`` fresh student samples before every update and after the
    last (Figure 3: P((x − μ)ᵀg_x > 0), mean over repeats × samples); Proposition 1 analytic vs Monte Carlo
    (``prop1_samples / repeats`` draws per eigenvalue set) for each repeat's teacher seen from N(μ, I) (the
    proposition's setting) and from its trained reverse-KL student (what the proposition predicts were that student
    centred at μ). ``summary["dims"][D]["repeats"]`` holds every repeat's numbers (with its teacher's covariance
    eigenvalues), ``["over_repeats"]`` their mean, std (ddof 1), median, min and max — the numbers of the table.
    Deterministic given ``seed`` (on one machine and thread count); repeat 0 and the reverse-KL repeats are the
    runs the study made before it trained every method on every repeat. ``summary["trends"]`` checks the paper's
    claims on the numbers.

    Arguments: the fields of `GaussianStudySettings` (every one checked before any work; a non-finite training loss
    stops the study with an error, and ``out_dir`` is created only when the study has finished), and ``log``, a
    progress printer.

    Files: ``figure2_loglik_histograms.png``, ``figure3_expansion_signal.png``, ``proposition1.png``,
    ``kl_vs_teacher_min_eigenvalue.png``, ``table.md``, ``summary.json``. Returns the summary.

    Examples:
        >>> summary = run_gaussian_study("/tmp/gaussian_study", dims=(4,), steps=20, repeats=2, samples=8,
        ...                              eval_samples=50, prop1_samples=1000, log=lambda *_: None)
        >>> sorted(summary["dims"]["4"]["repeats"][1]["methods"])
        ['reverse_kl', 'x_rec', 'z_rec']
    """
    settings = GaussianStudySettings(
        out_dir=out_dir,
        dims=dims,
        steps=steps,
        batch=batch,
        lr=lr,
        repeats=repeats,
        samples=samples,
        seed=seed,
        eval_samples=eval_samples,
        methods=methods,
        distance=distance,
        mean_value=mean_value,
        prop1_samples=prop1_samples,
        parameterisation=parameterisation,
    )
    start = time.perf_counter()
    summary = {"settings": settings.record(), "dims": {}}
    curves, histograms = {}, {}
    for dim in settings.dims:
        summary["dims"][str(dim)], curves[dim], histograms[dim] = _study_dimension(dim, settings, log)
    summary["trends"] = _trends(summary)
    summary["wall_seconds"] = time.perf_counter() - start
    write_study(settings.out_dir, summary, histograms, curves)  # only now: a stopped run writes nothing
    return summary


def _study_dimension(dim: int, settings: GaussianStudySettings, log) -> tuple[dict, np.ndarray, dict]:
    """Every repeat of dimension ``dim``: its summary entry, the mean expansion curve (Figure 3) and repeat 0's
    log-likelihoods (Figure 2)."""
    teachers = [
        make_teacher(
            dim,
            seeded_generator(settings.seed, dim, 0, r),
            settings.mean_value,
            parameterisation=settings.parameterisation,
        )
        for r in range(settings.repeats)
    ]
    rows, runs, histogram = [], [], None
    for r, teacher in enumerate(teachers):
        row, run, loglik = _study_repeat(teacher, r, settings, log)
        rows.append(row)
        runs.append(run)
        if r == 0:
            histogram = loglik
    # Figure 3: the expansion probability averaged over the repeats' reverse-KL runs
    curve = np.mean([record["expansion"] for _, record in runs], axis=0)  # [steps + 1]
    entry = {"repeats": rows, "expansion": _expansion_entry(curve, settings)}
    entry["proposition1"] = _proposition1_entry(dim, teachers, runs, curve, settings)
    entry["over_repeats"] = _over_repeats_entry(entry, settings.methods)
    entry["kl_vs_teacher_min_eigenvalue_spearman"] = _eigenvalue_dependence(rows, settings.methods)
    _log_dimension(dim, entry, settings, log)
    return entry, curve, histogram


def _expansion_entry(curve: np.ndarray, settings: GaussianStudySettings) -> dict:
    """The mean expansion curve of one dimension: start, peak, end, the mean of its last 10%, and a subsample."""
    tail = max(1, settings.steps // 10)
    peak = int(np.argmax(curve))
    curve_steps, curve_values = _subsample(curve.tolist(), max(1, settings.steps // 500))
    return {
        "start": float(curve[0]),
        "peak": float(curve[peak]),
        "peak_step": peak,
        "end": float(curve[-1]),
        "end_mean_last_10pct": float(curve[-tail:].mean()),
        "probes_per_step": settings.repeats * settings.samples,
        "curve": {"steps": curve_steps, "probability": curve_values},
    }


def _proposition1_entry(
    dim: int, teachers: list, runs: list, curve: np.ndarray, settings: GaussianStudySettings
) -> dict:
    """Proposition 1, analytic vs Monte Carlo: each repeat's teacher seen from N(μ, I) (the proposition's own
    setting), and from its trained reverse-KL student (the prediction were that student centred at μ)."""
    prop = seeded_generator(settings.seed, dim, 4)
    each = max(1, settings.prop1_samples // settings.repeats)
    standard = _proposition1_block([relative_eigenvalues(type(t)(dim), t) for t in teachers], each, prop)
    trained = _proposition1_block([relative_eigenvalues(s, t) for (s, _), t in zip(runs, teachers)], each, prop)
    trained["measured_expansion_end"] = float(curve[-1])
    return {"teacher_vs_standard_student": standard, "trained_reverse_kl_students": trained}


def _log_dimension(dim: int, entry: dict, settings: GaussianStudySettings, log) -> None:
    """Two progress lines for a finished dimension: KL per method over the repeats, expansion and Proposition 1."""
    kl = entry["over_repeats"]["methods"]
    log(
        f"D={dim:3d} over {settings.repeats} repeats, KL(q‖p) mean ± std (median): "
        + "; ".join(
            f"{m} {kl[m]['kl_student_teacher']['mean']:.4g} ± {kl[m]['kl_student_teacher']['std']:.3g} "
            f"({kl[m]['kl_student_teacher']['median']:.4g})"
            for m in settings.methods
        )
    )
    expansion, standard = entry["expansion"], entry["proposition1"]["teacher_vs_standard_student"]
    log(
        f"D={dim:3d} expansion P (mean curve): start {expansion['start']:.3f} peak {expansion['peak']:.3f} (step "
        f"{expansion['peak_step']}) end {expansion['end_mean_last_10pct']:.3f}; Prop. 1 (standard student) analytic "
        f"{standard['analytic_mean']:.4f} MC {standard['monte_carlo_mean']:.4f} ± {standard['monte_carlo_stderr']:.4f}"
    )


def _study_repeat(
    teacher: AffineGaussian, repeat: int, settings: GaussianStudySettings, log
) -> tuple[dict, tuple, dict]:
    """Every method distilled from one teacher: the repeat's JSON record, the reverse-KL (student, training record),
    and the teacher log-likelihoods of the evaluation samples (for Figure 2)."""
    dim, seed, steps = teacher.dim, settings.seed, settings.steps
    eigenvalues = covariance_eigenvalues(teacher)
    evaluation = seeded_generator(seed, dim, 1, repeat)
    z = torch.randn(settings.eval_samples, dim, generator=evaluation, dtype=torch.float64)
    teacher_ll = teacher.log_prob(teacher.sample(z))
    row = {
        "teacher": {
            "covariance_min_eigenvalue": eigenvalues[0].item(),
            "covariance_max_eigenvalue": eigenvalues[-1].item(),
            "covariance_eigenvalues": eigenvalues.tolist(),
            "loglik_teacher_samples": _stats(teacher_ll),
        },
        "methods": {},
    }
    loglik, run = {"teacher": teacher_ll}, None
    for method in settings.methods:
        t0 = time.perf_counter()
        probe = seeded_generator(seed, dim, 3, repeat) if method == "reverse_kl" else None
        student, record = train_student(
            teacher,
            method,
            steps=steps,
            batch=settings.batch,
            lr=settings.lr,
            distance=settings.distance,
            generator=seeded_generator(seed, dim, 2, repeat),  # the same minibatch stream for every method
            probe_generator=probe,
            probe_samples=settings.samples,
        )
        z = torch.randn(settings.eval_samples, dim, generator=evaluation, dtype=torch.float64)
        student_ll = teacher.log_prob(student.sample(z))
        loglik[method] = student_ll
        row["methods"][method] = _method_record(student, teacher, record, student_ll, teacher_ll, steps, t0)
        if method == "reverse_kl":
            run = (student, record)
            row["expansion"] = _expansion_stats(np.asarray(record["expansion"]), steps)
        log(
            f"D={dim:3d} repeat {repeat} (λ_min {eigenvalues[0].item():.3g}) {method:10s} "
            f"KL(q‖p)={row['methods'][method]['kl_student_teacher']:.4f} "
            f"KL(p‖q)={row['methods'][method]['kl_teacher_student']:.4f} mean log p_T: student "
            f"{student_ll.mean().item():.2f} teacher {teacher_ll.mean().item():.2f} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    return row, run, loglik


def _method_record(student, teacher, record: dict, student_ll, teacher_ll, steps: int, t0: float) -> dict:
    """One trained student's numbers: its samples' teacher log-likelihood against the teacher's own, the KL both
    ways, and subsampled loss and KL histories."""
    kl_steps, kl_values = _subsample(record["kl"], max(1, len(record["kl"]) // 20))
    loss_steps, loss_values = _subsample(record["loss"], max(1, steps // 20))
    return {
        "loglik_student_samples": _stats(student_ll),
        "vs_teacher_samples": _compare(student_ll, teacher_ll),
        "kl_student_teacher": gaussian_kl(student, teacher).item(),
        "kl_teacher_student": gaussian_kl(teacher, student).item(),
        "final_loss_mean_last_10pct": float(np.mean(record["loss"][-max(1, steps // 10) :])),
        "kl_history": {"steps": [record["kl_steps"][i] for i in kl_steps], "kl_student_teacher": kl_values},
        "loss_history": {"steps": loss_steps, "loss": loss_values},
        "wall_seconds": time.perf_counter() - t0,
    }


def _expansion_stats(curve: np.ndarray, steps: int) -> dict:
    """One run's expansion probability: at the start, its peak and the mean over the last 10% of updates.

    The peak is the largest moving average over ``steps // 100`` updates: the maximum of single updates' estimates
    (``samples`` probes each) would mostly measure their noise.
    """
    width = max(1, steps // 100)
    smooth = np.convolve(curve, np.ones(width) / width, mode="valid")
    return {
        "start": float(curve[0]),
        "peak": float(smooth.max()),
        "peak_step": int(np.argmax(smooth)) + (width - 1) // 2,
        "end_mean_last_10pct": float(curve[-max(1, steps // 10) :].mean()),
    }


def over_repeats(values) -> dict:
    """Mean, standard deviation (ddof 1; 0 for one value), median, min and max of one number per repeat."""
    values = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _over_repeats_entry(entry: dict, methods) -> dict:
    """The table's numbers for one dimension: `over_repeats` of each per-repeat quantity."""
    rows = entry["repeats"]
    compare = {m: [r["methods"][m]["vs_teacher_samples"] for r in rows] for m in methods}
    return {
        "teacher": {
            "covariance_min_eigenvalue": over_repeats([r["teacher"]["covariance_min_eigenvalue"] for r in rows]),
            "loglik_teacher_samples_mean": over_repeats([r["teacher"]["loglik_teacher_samples"]["mean"] for r in rows]),
        },
        "methods": {
            m: {
                "loglik_difference": over_repeats([c["mean_difference"] for c in compare[m]]),
                "kl_student_teacher": over_repeats([r["methods"][m]["kl_student_teacher"] for r in rows]),
                "kl_teacher_student": over_repeats([r["methods"][m]["kl_teacher_student"] for r in rows]),
                # repeats whose student samples score above / below the teacher's by more than 3 standard errors
                "repeats_above_teacher": sum(c["z_score"] > 3 for c in compare[m]),
                "repeats_below_teacher": sum(c["z_score"] < -3 for c in compare[m]),
            }
            for m in methods
        },
        "expansion": {
            key: over_repeats([r["expansion"][key] for r in rows]) for key in ("start", "peak", "end_mean_last_10pct")
        },
        "proposition1": {
            block: over_repeats([x["analytic"] for x in entry["proposition1"][block]["per_repeat"]])
            for block in ("teacher_vs_standard_student", "trained_reverse_kl_students")
        },
    }


def _eigenvalue_dependence(rows: list, methods) -> dict:
    """Spearman rank correlation over the repeats between the teacher's λ_min and each method's final KL(q‖p)."""
    from scipy import stats

    if len(rows) < 3:
        return {m: None for m in methods}
    smallest = [r["teacher"]["covariance_min_eigenvalue"] for r in rows]
    return {
        m: float(stats.spearmanr(smallest, [r["methods"][m]["kl_student_teacher"] for r in rows]).statistic)
        for m in methods
    }


def _proposition1_block(eigenvalue_sets: list, samples: int, generator: torch.Generator) -> dict:
    """Proposition 1 analytic vs Monte Carlo for each eigenvalue set, and their means over the sets."""
    rows = []
    for eigenvalues in eigenvalue_sets:
        eigenvalues = eigenvalues.tolist()
        mc, se = proposition1_monte_carlo(eigenvalues, samples, generator)
        analytic = proposition1_probability(eigenvalues)
        rows.append(
            {
                "analytic": analytic,
                "monte_carlo": mc,
                "monte_carlo_stderr": se,
                "z_score": (mc - analytic) / se if se > 0 else 0.0,
                "min_eigenvalue": min(eigenvalues),
                "max_eigenvalue": max(eigenvalues),
            }
        )
    return {
        "analytic_mean": float(np.mean([r["analytic"] for r in rows])),
        "monte_carlo_mean": float(np.mean([r["monte_carlo"] for r in rows])),
        "monte_carlo_stderr": math.sqrt(sum(r["monte_carlo_stderr"] ** 2 for r in rows)) / len(rows),
        "max_abs_z_score": max(abs(r["z_score"]) for r in rows),
        "per_repeat": rows,
    }


def _trends(summary: dict) -> dict:
    """The paper's claims checked on the numbers (thresholds stated in the keys' values); counts are over repeats."""
    dims = sorted(int(d) for d in summary["dims"])
    ends = [summary["dims"][str(d)]["expansion"]["end_mean_last_10pct"] for d in dims]
    trends = {
        "expansion_end_by_dim": dict(zip(map(str, dims), ends)),
        "expansion_end_decreases_with_dim": all(a > b for a, b in itertools.pairwise(ends)),
    }
    top = summary["dims"][str(dims[-1])]["over_repeats"]["methods"]
    repeats = summary["settings"]["repeats"]
    if "reverse_kl" in top:  # student mean log p_T higher by > 3 s.e. in more than half of the repeats
        trends["reverse_kl_above_teacher_at_max_dim_repeats"] = top["reverse_kl"]["repeats_above_teacher"]
        trends["reverse_kl_above_teacher_at_max_dim"] = 2 * top["reverse_kl"]["repeats_above_teacher"] > repeats
    if "x_rec" in top:  # |z| < 3 and KS p > 0.01 in more than half of the repeats
        rows = summary["dims"][str(dims[-1])]["repeats"]
        matches = sum(
            abs(r["methods"]["x_rec"]["vs_teacher_samples"]["z_score"]) < 3
            and r["methods"]["x_rec"]["vs_teacher_samples"]["ks_pvalue"] > 0.01
            for r in rows
        )
        trends["x_rec_matches_teacher_at_max_dim_repeats"] = matches
        trends["x_rec_matches_teacher_at_max_dim"] = 2 * matches > repeats
    for statistic in ("median", "mean"):
        trends[f"lowest_{statistic}_kl_by_dim"] = {
            str(d): min(
                summary["dims"][str(d)]["over_repeats"]["methods"],
                key=lambda m, d=d: summary["dims"][str(d)]["over_repeats"]["methods"][m]["kl_student_teacher"][
                    statistic
                ],
            )
            for d in dims
        }
    # paired over the repeats (each pair of methods distilled the same teacher): who ends with the lower KL(q‖p)
    trends["kl_paired_by_dim"] = {str(d): _paired_kl(summary["dims"][str(d)]["repeats"]) for d in dims}
    trends["proposition1_max_abs_z_score"] = max(
        e["proposition1"][k]["max_abs_z_score"]
        for e in summary["dims"].values()
        for k in ("teacher_vs_standard_student", "trained_reverse_kl_students")
    )
    trends["proposition1_analytic_matches_monte_carlo"] = trends["proposition1_max_abs_z_score"] < 4
    return trends


def _paired_kl(rows: list) -> dict:
    """For each pair of methods a, b: in how many repeats KL_a < KL_b, KL_b < KL_a, or a tie (within 1e-10)."""
    methods = list(rows[0]["methods"])
    pairs = {}
    for a, b in itertools.combinations(methods, 2):
        gaps = [r["methods"][a]["kl_student_teacher"] - r["methods"][b]["kl_student_teacher"] for r in rows]
        pairs[f"{a} vs {b}"] = {
            f"{a} lower": sum(g < -1e-10 for g in gaps),
            f"{b} lower": sum(g > 1e-10 for g in gaps),
            "ties": sum(abs(g) <= 1e-10 for g in gaps),
        }
    return pairs
