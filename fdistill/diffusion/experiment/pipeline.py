"""The stages of a diffusion experiment and their order: data set (`Problem`) → shared teacher → offline pairs →
every registered method's students over every seed (`distill`) → evaluation of every sampler → report.

Each stage is a `fdistill.runner.run_stage` (safetensors + JSON with its settings): a rerun resumes after the last
finished stage, and a stage made with other settings (e.g. a teacher trained with another learning rate) is an
error naming the settings, never reused. The teacher is shared by all student seeds (``teacher_seed``); students
and evaluation noise vary with the seed.
"""

from __future__ import annotations

import os
import time

import torch

from fdistill.errors import invalid
from fdistill.runner import run_stage

from .. import methods
from ..ddim import ddim_sample
from ..methods import Budget, predict_x0
from ..models import build_denoiser
from ..schedule import NoiseSchedule
from .config import DiffusionExperimentConfig
from .distillers import Sampler, StudentJob, get_distiller
from .evaluation import Scorer, evaluate_samplers
from .report import Measured, write_report


class Problem:
    """What the methods need to know about a data set: the schedule, a training batch sampler and the shape."""

    def __init__(self, config: DiffusionExperimentConfig):
        self.config = config
        self.schedule = NoiseSchedule(config.num_train_timesteps, config.beta_schedule, config.zero_terminal_snr)
        if config.dataset == "toy2d":
            from ..data import RingOfGaussians

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
            from ..data import load_digits_diffusion

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
        from fdistill.stages import load_stage

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
    """The shared teacher (trained, resumed, or with ``train=False`` only loaded) and its training record."""
    budget = Budget(config.teacher_steps, config.batch_size, config.learning_rate, config.max_grad_norm)

    def work():
        torch.manual_seed(config.teacher_seed)  # the initial weights too are a function of teacher_seed
        return methods.train_teacher(
            problem.new_net(), problem, budget, config.teacher_seed, config.label_dropout, config.ema_decay, log
        )

    return _stage_net(problem, config.output_dir, "teacher", config.teacher_settings(), work if train else None, log)


def get_pairs(config, problem, teacher, log=print):
    """The offline KD/DMD pairs (a `datasets` dataset under ``output_dir/pairs``)."""
    from ..pairs import build_pairs

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
    """The settings a student stage of ``method`` depends on: the teacher's, the seed and the method's own."""
    distiller = get_distiller(method)
    common = {
        "teacher": config.teacher_settings(),
        "method": method,
        "seed": seed,
        "student_classes": "conditional" if distiller.conditional_only else config.student_classes,
        "student_learning_rate": config.student_learning_rate,
    }
    return {**common, **{k: getattr(config, k) for k in distiller.settings}}


def distill(
    config, problem, teacher, method: str, seed: int, pairs=None, log=print, train: bool = True
) -> list[Sampler]:
    """Train (or resume) one method's student(s) for one seed; returns one `Sampler` per step count (PD and
    guidance have one per round). ``train=False`` only loads finished ones."""
    distiller = get_distiller(method)
    folder = os.path.join(config.output_dir, "students")

    def stage(name, stage_settings, work):
        return _stage_net(problem, folder, name, stage_settings, work if train else None, log)

    settings = student_settings(config, method, seed)
    job = StudentJob(config, problem, teacher, seed, f"{method}_seed{seed}", settings, stage, pairs, log)
    return distiller.distill(job)


def needs_pairs(names: list[str]) -> bool:
    """Whether any of these methods reads the offline pairs."""
    return any(get_distiller(m).needs_pairs for m in names)


def run_experiment(config: DiffusionExperimentConfig, log=print) -> dict:
    """Teacher, pairs, every method × seed, evaluation, table.md / results.json / plots in ``output_dir``."""
    torch.set_num_threads(config.threads)
    started = time.process_time()
    os.makedirs(config.output_dir, exist_ok=True)
    problem = Problem(config)
    scorer = Scorer(config, problem, log)
    teacher, teacher_record = get_teacher(config, problem, log)
    pairs = get_pairs(config, problem, teacher, log) if needs_pairs(config.methods) else None
    rows, first_samples = [], None
    for seed in config.seeds:
        students = []
        for method in config.methods:
            students += distill(config, problem, teacher, method, seed, pairs, log)
        seed_rows, samples = evaluate_samplers(config, problem, teacher, students, seed, scorer, log)
        rows += seed_rows
        first_samples = first_samples or samples
    measured = Measured(rows, first_samples, teacher, teacher_record, scorer.floor)
    return write_report(config, measured, started, log)
