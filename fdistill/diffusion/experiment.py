"""A whole diffusion-distillation experiment from one recipe: teacher → offline pairs → every student over every
seed → one evaluation of every sampler at its step counts → ``table.md``, ``results.json`` and plots.

Each stage is a `fdistill.runner.run_stage` (safetensors + JSON with its settings): a rerun resumes after the last
finished stage, and a stage made with other settings (e.g. a teacher trained with another learning rate) is an
error naming the settings, never reused. The teacher is shared by all student seeds (``teacher_seed``); students
and evaluation noise vary with the seed.

Samplers evaluated (NFE = network evaluations per sample):

- ``teacher`` — the conditional teacher (w = 0) with DDIM at each of ``eval_steps`` (NFE = K);
- ``guided teacher`` — two-call classifier-free guidance at ``guidance_weight`` (NFE = 2K);
- ``kd``, ``vsd``, ``dmd`` — one-step students (NFE = 1);
- ``pd`` — the student of each PD round at its K (NFE = K);
- ``guidance`` — the w-input student at ``guidance_weight`` (NFE = K), after guidance distillation at
  ``pd_start_steps`` and after each of its PD rounds.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from fdistill.errors import invalid
from fdistill.flows import checks
from fdistill.runner import run_stage

from .ddim import ddim_sample
from .methods import (
    Budget,
    distill_guidance,
    distill_kd,
    distill_pd_round,
    distill_vsd,
    guided_x0,
    predict_x0,
    train_teacher,
)
from .models import build_denoiser, num_parameters
from .schedule import NoiseSchedule

METHODS = ("kd", "pd", "vsd", "dmd", "guidance")
DATASETS = ("toy2d", "digits")


@dataclass
class DiffusionExperimentConfig:
    """Every setting of a diffusion experiment (recipe keys; ``key=value`` overrides)."""

    dataset: str = "toy2d"  # toy2d (ring of 8 Gaussians, closed-form density) or digits (sklearn 8×8)
    output_dir: str = "diffusion_output"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    student_classes: str = "conditional"  # or "unconditional": KD/PD/VSD/DMD students and their rows use "no class"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # student seeds (and evaluation noise)
    teacher_seed: int = 0  # one teacher shared by every student seed
    # noise schedule (diffusers DDPMScheduler)
    num_train_timesteps: int = 1024  # divisible by every power-of-two step count, so PD grids nest exactly
    beta_schedule: str = "squaredcos_cap_v2"
    zero_terminal_snr: bool = True
    # networks
    hidden: int = 128  # toy MLP width
    depth: int = 3  # toy MLP residual blocks
    channels: list[int] = field(default_factory=lambda: [32, 64])  # digits UNet2DModel block_out_channels
    layers_per_block: int = 1
    # teacher
    teacher_steps: int = 4000
    batch_size: int = 128
    learning_rate: float = 1e-3
    ema_decay: float = 0.999
    label_dropout: float = 0.1  # classifier-free guidance needs the unconditional model too
    max_grad_norm: float = 1.0
    toy_train_size: int = 4000  # toy: a fixed training set drawn from the true density
    # students (same batch size; each method its own number of optimiser steps)
    student_learning_rate: float = 1e-4
    kd_steps: int = 1000
    kd_teacher_steps: int = 64  # the DDIM rollout the KD/DMD pairs come from
    num_pairs: int = 4000
    pairs_shard_size: int = 1000
    pd_start_steps: int = 16  # the teacher's DDIM steps of the first PD round (a power of two)
    pd_steps_per_round: int = 500
    vsd_steps: int = 500
    fake_learning_rate: float = 1e-4
    fake_updates: int = 1
    dmd_regression_weight: float = 0.25
    guidance_steps: int = 500
    guidance_weight: float = 2.0  # w of the guided samplers evaluated
    guidance_w_max: float = 4.0  # the guidance student learns w ∈ [0, w_max]
    # evaluation
    eval_steps: list[int] = field(default_factory=lambda: [64, 16, 8, 4, 2, 1])
    num_eval_samples: int = 2000
    feature_epochs: int = 30  # digits classifier (fdistill.flows.metrics)
    split_seed: int = 0
    threads: int = 1  # torch CPU threads: these networks are tiny, one thread is nearly as fast and leaves cores free

    def __post_init__(self):
        checks.choice("dataset", self.dataset, DATASETS)
        checks.choice("student_classes", self.student_classes, ("conditional", "unconditional"))
        checks.output_folder("output_dir", self.output_dir)
        checks.names("methods", self.methods, METHODS)
        checks.whole_numbers("seeds", self.seeds, low=0, example="[0, 1, 2]")
        for name in ("teacher_seed", "split_seed"):
            checks.whole_number(name, getattr(self, name), low=0)
        for name in (
            "num_train_timesteps",
            "hidden",
            "depth",
            "layers_per_block",
            "teacher_steps",
            "batch_size",
            "toy_train_size",
            "kd_steps",
            "kd_teacher_steps",
            "num_pairs",
            "pairs_shard_size",
            "pd_start_steps",
            "pd_steps_per_round",
            "vsd_steps",
            "fake_updates",
            "guidance_steps",
            "num_eval_samples",
            "feature_epochs",
            "threads",
        ):
            checks.whole_number(name, getattr(self, name))
        checks.whole_numbers("channels", self.channels, example="[32, 64]", distinct=False)
        checks.whole_numbers("eval_steps", self.eval_steps, example="[64, 16, 8, 4, 2, 1]")
        for name in ("learning_rate", "student_learning_rate", "fake_learning_rate", "max_grad_norm", "guidance_w_max"):
            checks.number(name, getattr(self, name))
        for name in ("dmd_regression_weight", "guidance_weight"):
            checks.number(name, getattr(self, name), allow_low=True)
        checks.number("ema_decay", self.ema_decay, allow_low=True)
        checks.number("label_dropout", self.label_dropout, allow_low=True)
        if self.ema_decay >= 1 or self.label_dropout >= 1:
            raise invalid("ema_decay/label_dropout", (self.ema_decay, self.label_dropout), "each must be in [0, 1).")
        if "guidance" in self.methods and self.label_dropout == 0:
            raise invalid(
                "label_dropout", 0, "guidance needs an unconditional teacher: give a value in (0, 1), e.g. 0.1."
            )
        if self.pd_start_steps & (self.pd_start_steps - 1) or self.pd_start_steps < 2:
            raise invalid(
                "pd_start_steps",
                self.pd_start_steps,
                "progressive distillation halves the steps each round down to 1: give a power of two ≥ 2, e.g. 16.",
            )
        steps = [self.pd_start_steps, self.kd_teacher_steps, *self.eval_steps]
        if max(steps) > self.num_train_timesteps:
            raise invalid(
                "num_train_timesteps", self.num_train_timesteps, f"must be ≥ every step count ({max(steps)})."
            )
        if self.num_train_timesteps % self.pd_start_steps:
            raise invalid(
                "num_train_timesteps",
                self.num_train_timesteps,
                f"must be divisible by pd_start_steps="
                f"{self.pd_start_steps} so that the PD grids nest exactly (e.g. 1024).",
            )
        if self.guidance_weight > self.guidance_w_max:
            raise invalid("guidance_weight", self.guidance_weight, f"must be ≤ guidance_w_max={self.guidance_w_max}.")
        if self.num_eval_samples < 10:
            raise invalid("num_eval_samples", self.num_eval_samples, "give at least 10.")

    def teacher_settings(self) -> dict:
        keys = (
            "dataset",
            "teacher_seed",
            "num_train_timesteps",
            "beta_schedule",
            "zero_terminal_snr",
            "teacher_steps",
            "batch_size",
            "learning_rate",
            "ema_decay",
            "label_dropout",
            "max_grad_norm",
            "split_seed",
        )
        keys += ("hidden", "depth", "toy_train_size") if self.dataset == "toy2d" else ("channels", "layers_per_block")
        return {k: getattr(self, k) for k in keys}

    def pd_rounds(self) -> list[int]:
        """The student step counts of the PD rounds: pd_start_steps/2, …, 1."""
        return [self.pd_start_steps >> i for i in range(1, int(math.log2(self.pd_start_steps)) + 1)]


def load_experiment_config(path: str | None, overrides: list[str] | None = None) -> DiffusionExperimentConfig:
    from fdistill.yaml_config import load_dataclass_config

    return load_dataclass_config(DiffusionExperimentConfig, path, overrides)


class Problem:
    """What the methods need to know about a data set: the schedule, a training batch sampler and the shape."""

    def __init__(self, config: DiffusionExperimentConfig):
        self.config = config
        self.schedule = NoiseSchedule(config.num_train_timesteps, config.beta_schedule, config.zero_terminal_snr)
        if config.dataset == "toy2d":
            from .data import RingOfGaussians

            self.ring = RingOfGaussians()
            self.shape, self.num_classes = (2,), self.ring.modes
            self.train_x, self.train_labels = self.ring.sample(
                config.toy_train_size, torch.Generator().manual_seed(config.split_seed)
            )
            self.net_config = {
                "kind": "mlp",
                "dim": 2,
                "hidden": config.hidden,
                "depth": config.depth,
                "num_classes": self.num_classes,
            }
        else:
            from .data import load_digits_diffusion

            self.digits = load_digits_diffusion(config.split_seed)
            self.shape, self.num_classes = (1, 8, 8), 10
            self.net_config = {
                "kind": "unet",
                "sample_size": 8,
                "channels": list(config.channels),
                "layers_per_block": config.layers_per_block,
                "num_classes": 10,
                "in_channels": 1,
            }

    def sample(self, n: int, generator: torch.Generator):
        if self.config.dataset == "toy2d":
            index = torch.randint(0, len(self.train_x), (n,), generator=generator)
            return self.train_x[index], self.train_labels[index]
        return self.digits.sample(n, generator)

    def new_net(self):
        return build_denoiser(self.net_config)

    def net_from(self, tensors: dict):
        net = self.new_net()
        net.load_state_dict(tensors)
        return net.eval()


def _stage_net(problem, folder, name, settings, work, log):
    """run_stage for a network stage: ``work() -> (net, record)``; returns ``(net, record)``.

    ``work=None`` loads a finished stage only (``fdistill diffusion sample|evaluate``): a missing one is an
    InputError naming the command that makes it.
    """
    holder = {}
    if work is None:
        from fdistill.flows.checks import load_stage

        saved = load_stage(os.path.join(folder, name), settings)
        if saved is None:
            raise invalid(
                "model",
                os.path.join(folder, name),
                "it is not trained yet with this recipe and these "
                "overrides: run `fdistill diffusion teacher|distill` (or `experiment`) first.",
                problem="does not exist",
            )
        return problem.net_from(saved[0]), saved[1].get("record", {})

    def run():
        net, record = work()
        holder["net"] = net
        return net.state_dict(), record

    result = run_stage(folder, name, settings, run, log)
    return holder.get("net") or problem.net_from(result.tensors), result.record


def get_teacher(config, problem, log=print, train: bool = True):
    budget = Budget(config.teacher_steps, config.batch_size, config.learning_rate, config.max_grad_norm)

    def work():
        torch.manual_seed(config.teacher_seed)  # the initial weights too are a function of teacher_seed
        return train_teacher(
            problem.new_net(), problem, budget, config.teacher_seed, config.label_dropout, config.ema_decay, log
        )

    return _stage_net(problem, config.output_dir, "teacher", config.teacher_settings(), work if train else None, log)


def get_pairs(config, problem, teacher, log=print):
    """The offline KD/DMD pairs (a `datasets` dataset under ``output_dir/pairs``)."""
    from .pairs import build_pairs

    provenance = {
        "teacher": config.teacher_settings(),
        "sampler": f"DDIM, trailing, {config.kd_teacher_steps} steps",
        "kd_teacher_steps": config.kd_teacher_steps,
        "num_pairs": config.num_pairs,
        "shard_size": config.pairs_shard_size,
        "sample_shape": list(problem.shape),
        "noise_seed": 1000,
        "student_classes": config.student_classes,
    }

    @torch.no_grad()
    def make_shard(index, count):
        g = torch.Generator().manual_seed(1000 + index)
        noise = torch.randn((count, *problem.shape), generator=g)
        labels = torch.randint(0, problem.num_classes, (count,), generator=g)
        if config.student_classes == "unconditional":
            labels = torch.full_like(labels, problem.num_classes)
        target = ddim_sample(
            lambda x, t: predict_x0(teacher, problem.schedule, x, t, labels),
            noise,
            problem.schedule,
            config.kd_teacher_steps,
        )
        return {"noise": noise, "label": labels, "target": target}

    return build_pairs(
        os.path.join(config.output_dir, "pairs"), provenance, config.num_pairs, config.pairs_shard_size, make_shard, log
    )


def student_settings(config, method: str, seed: int) -> dict:
    common = {
        "teacher": config.teacher_settings(),
        "method": method,
        "seed": seed,
        "student_classes": config.student_classes if method != "guidance" else "conditional",
        "student_learning_rate": config.student_learning_rate,
    }
    extra = {
        "kd": ("kd_steps", "kd_teacher_steps", "num_pairs"),
        "pd": ("pd_start_steps", "pd_steps_per_round"),
        "vsd": ("vsd_steps", "fake_learning_rate", "fake_updates"),
        "dmd": (
            "vsd_steps",
            "fake_learning_rate",
            "fake_updates",
            "dmd_regression_weight",
            "kd_teacher_steps",
            "num_pairs",
        ),
        "guidance": ("guidance_steps", "guidance_w_max", "pd_start_steps", "pd_steps_per_round"),
    }[method]
    return {**common, **{k: getattr(config, k) for k in extra}}


def distill(config, problem, teacher, method: str, seed: int, pairs=None, log=print, train: bool = True) -> list[dict]:
    """Train (or resume) one method's student(s) for one seed; returns ``[{"name", "steps", "net", "w", "record"}]``
    — one sampler per step count (PD and guidance have one per round). ``train=False`` only loads finished ones."""
    if method not in METHODS:
        raise invalid("method", method, f"choose one of {list(METHODS)}.")
    folder = os.path.join(config.output_dir, "students")
    settings = student_settings(config, method, seed)

    def stage(name, stage_settings, work):
        return _stage_net(problem, folder, name, stage_settings, work if train else None, log)

    lr, bs, clip = config.student_learning_rate, config.batch_size, config.max_grad_norm
    tag = f"{method}_seed{seed}"
    if method == "kd":
        net, record = stage(
            tag, settings, lambda: distill_kd(teacher, problem, pairs, Budget(config.kd_steps, bs, lr, clip), seed, log)
        )
        return [{"name": "kd", "steps": 1, "net": net, "w": None, "record": record}]
    if method in ("vsd", "dmd"):
        weight = config.dmd_regression_weight if method == "dmd" else 0.0
        net, record = stage(
            tag,
            settings,
            lambda: distill_vsd(
                teacher,
                problem,
                Budget(config.vsd_steps, bs, lr, clip),
                seed,
                config.fake_learning_rate,
                config.fake_updates,
                regression_weight=weight,
                pairs=pairs,
                log=log,
                name=method,
                unconditional=config.student_classes == "unconditional",
            ),
        )
        return [{"name": method, "steps": 1, "net": net, "w": None, "record": record}]
    out, current, w_max = [], teacher, None
    if method == "guidance":
        w_max = config.guidance_w_max
        current, record = stage(
            tag + "_w",
            settings,
            lambda: distill_guidance(teacher, problem, Budget(config.guidance_steps, bs, lr, clip), seed, w_max, log),
        )
        out.append(
            {
                "name": "guidance",
                "steps": config.pd_start_steps,
                "net": current,
                "w": config.guidance_weight,
                "record": record,
            }
        )
    for steps in config.pd_rounds():
        budget = Budget(config.pd_steps_per_round, bs, lr, clip)
        current, record = stage(
            f"{tag}_{steps}steps",
            {**settings, "round_student_steps": steps},
            lambda teacher_now=current, steps=steps, budget=budget: distill_pd_round(
                teacher_now,
                problem,
                steps,
                budget,
                seed,
                w_max,
                log=log,
                name=f"{method} round →{steps}",
                unconditional=method == "pd" and config.student_classes == "unconditional",
            ),
        )
        out.append(
            {
                "name": method,
                "steps": steps,
                "net": current,
                "w": config.guidance_weight if method == "guidance" else None,
                "record": record,
            }
        )
    return out


def eval_inputs(config, problem, seed: int):
    """The evaluation noise and (balanced) classes of one seed, shared by every sampler."""
    g = torch.Generator().manual_seed(50_000 + seed)
    noise = torch.randn((config.num_eval_samples, *problem.shape), generator=g)
    labels = torch.arange(config.num_eval_samples) % problem.num_classes
    return noise, labels


@torch.no_grad()
def run_sampler(problem, net, steps: int, noise, labels, w=None, guided_teacher=False, batch=500):
    """Samples and seconds; ``guided_teacher`` uses two calls per step, a w-input student one."""
    start, chunks = time.perf_counter(), []
    for i in range(0, len(noise), batch):
        x, c = noise[i : i + batch], labels[i : i + batch]
        wv = None if w is None else torch.full((len(x),), float(w))

        def fn(x_, t_, c=c, wv=wv):
            if guided_teacher:
                return guided_x0(net, problem.schedule, x_, t_, c, w)
            return predict_x0(net, problem.schedule, x_, t_, c, wv)

        chunks.append(ddim_sample(fn, x, problem.schedule, steps))
    return torch.cat(chunks), time.perf_counter() - start


class Scorer:
    """One scoring function for every sampler of an experiment."""

    def __init__(self, config, problem, log=print):
        self.problem = problem
        if config.dataset == "toy2d":
            self.reference, _ = problem.ring.sample(config.num_eval_samples, torch.Generator().manual_seed(777))
            self.floor = None
        else:
            self.digits_scorer = self._digits(config, problem, log)
            real = problem.digits.to_model(problem.digits.train, torch.Generator().manual_seed(778))
            self.floor = self.digits_scorer(real, problem.digits.labels("train"))  # all training digits vs test

    @staticmethod
    def _digits(config, problem, log):
        from fdistill.flows.metrics import DigitsFeatureNet, train_digits_feature_net

        from .metrics import DigitsScorer

        data = problem.digits.flow_data

        def work():
            net, accuracy = train_digits_feature_net(data, config.feature_epochs)
            return net.state_dict(), {"accuracy": accuracy}

        result = run_stage(
            config.output_dir,
            "digits_feature_net",
            {"split_seed": config.split_seed, "feature_epochs": config.feature_epochs},
            work,
            log,
        )
        net = DigitsFeatureNet()
        net.load_state_dict(result.tensors)
        net.eval()
        if log:
            log(f"digits classifier (fdistill.flows.metrics): test accuracy {result.record['accuracy']:.3f}")
        test = problem.digits.to_model(data.test, torch.Generator().manual_seed(779))
        return DigitsScorer(net, test)

    def __call__(self, samples, labels) -> dict:
        from .metrics import toy_metrics

        if self.floor is None:
            return toy_metrics(samples, labels, self.problem.ring, self.reference)
        return self.digits_scorer(samples, labels)


def evaluate_samplers(config, problem, teacher, students: list[dict], seed: int, scorer, log=print) -> list[dict]:
    """Every sampler of one seed on the same noise and classes; MSE to the teacher's (guided teacher's for guided
    rows) ``max(eval_steps)``-step output from the same noise."""
    from .metrics import mse_to

    noise, labels = eval_inputs(config, problem, seed)
    plain = torch.full_like(labels, problem.num_classes) if config.student_classes == "unconditional" else labels
    top = max(config.eval_steps)
    reference = {False: run_sampler(problem, teacher, top, noise, plain)[0]}
    guided = "guidance" in config.methods
    if guided:
        reference[True] = run_sampler(problem, teacher, top, noise, labels, config.guidance_weight, True)[0]
    rows = []

    def add(model, steps, nfe, samples, seconds, is_guided, params):
        scores = scorer(samples, labels)
        if not is_guided and plain is not labels:
            scores["class_accuracy"] = None  # unconditional samples have no requested class
        row = {
            "model": model,
            "seed": seed,
            "steps": steps,
            "nfe": nfe,
            **scores,
            "mse_to_teacher": mse_to(samples, reference[is_guided]),
            "samples_per_s": len(samples) / seconds,
            "parameters": params,
        }
        rows.append(row)
        if log:
            log(
                f"[eval seed {seed}] "
                + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            )
        return samples

    samples_for_plot = {}
    params = num_parameters(teacher)
    for steps in config.eval_steps:
        samples_for_plot[("teacher", steps)] = add(
            "teacher", steps, steps, *run_sampler(problem, teacher, steps, noise, plain), False, params
        )
        if guided:
            samples_for_plot[("guided teacher", steps)] = add(
                "guided teacher",
                steps,
                2 * steps,
                *run_sampler(problem, teacher, steps, noise, labels, config.guidance_weight, True),
                True,
                params,
            )
    for student in students:
        given = labels if student["w"] is not None else plain
        samples, seconds = run_sampler(problem, student["net"], student["steps"], noise, given, student["w"])
        samples_for_plot[(student["name"], student["steps"])] = add(
            student["name"], student["steps"], student["steps"], samples, seconds, student["w"] is not None, params
        )
    return rows, samples_for_plot


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


def _plots(config, summary, key, samples_for_plot, problem, folder):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    paths = [os.path.join(folder, f"{key}_vs_nfe.png")]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    keys = list(samples_for_plot)
    path = os.path.join(folder, "samples.png")
    if config.dataset == "toy2d":
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
    else:
        from fdistill.flows.metrics import save_sample_grid

        save_sample_grid({f"{k[0]} K={k[1]}": (samples_for_plot[k][:20] / 2 + 0.5) for k in keys}, path, per_row=20)
    return paths + [path]


def run_experiment(config: DiffusionExperimentConfig, log=print) -> dict:
    """Teacher, pairs, every method × seed, evaluation, table.md / results.json / plots in ``output_dir``."""
    torch.set_num_threads(config.threads)
    started = time.process_time()
    os.makedirs(config.output_dir, exist_ok=True)
    problem = Problem(config)
    scorer = Scorer(config, problem, log)
    teacher, teacher_record = get_teacher(config, problem, log)
    pairs = get_pairs(config, problem, teacher, log) if {"kd", "dmd"} & set(config.methods) else None
    rows, first_samples = [], None
    for seed in config.seeds:
        students = []
        for method in config.methods:
            students += distill(config, problem, teacher, method, seed, pairs, log)
        seed_rows, samples = evaluate_samplers(config, problem, teacher, students, seed, scorer, log)
        rows += seed_rows
        first_samples = first_samples or samples
    metrics = (
        [
            "log_likelihood",
            "modes_covered",
            "on_mode",
            "energy_distance",
            "class_accuracy",
            "mse_to_teacher",
            "samples_per_s",
        ]
        if config.dataset == "toy2d"
        else ["digits_fd", "class_accuracy", "mse_to_teacher", "samples_per_s"]
    )
    key, lower = ("energy_distance", True) if config.dataset == "toy2d" else ("digits_fd", True)
    summary = summarise(rows, metrics)
    cpu = time.process_time() - started
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
    if scorer.floor is not None:
        lines += [
            (
                f"Real-vs-real floor (training digits vs test digits): digits-FD {scorer.floor['digits_fd']:.3g}, "
                f"class accuracy {scorer.floor['class_accuracy']:.3f}."
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
    with open(os.path.join(config.output_dir, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plots = _plots(config, summary, key, first_samples, problem, config.output_dir)
    result = {
        "config": asdict(config),
        "rows": rows,
        "summary": summary,
        "floor": scorer.floor,
        "teacher_record": {k: v for k, v in teacher_record.items() if k != "history"},
        "cpu_seconds": cpu,
        "plots": plots,
    }
    with open(os.path.join(config.output_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    if log:
        log("\n".join(lines))
    return result
