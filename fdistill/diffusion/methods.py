"""Training of the teacher and of every student (lecture 09): the loops only orchestrate — sample, call one loss of
`fdistill.diffusion.losses`, take a guarded step (`fdistill.runner`) — and return ``(state_dict, record)``.

Every network predicts v (`losses`); ``x̂₀`` comes from `predict_x0`. Classes are always given; the index
``num_classes`` is "no class" (label dropout while training the teacher, the unconditional call of guidance).

- `train_teacher`: denoising loss (v-MSE), uniform t, label dropout, diffusers' `EMAModel` weights returned.
- `distill_kd`: one-step student ``G(x_1) = x̂₀(x_1, T−1)`` regressed on the offline (noise → teacher DDIM rollout)
  pairs (`kd_loss`), initialised from the teacher.
- `distill_pd_round`: one PD round, K-step student from a 2K-step teacher (`pd_loss`, truncated-SNR weight).
- `distill_vsd`: one-step generator + "fake" network, both from the teacher; per iteration ``fake_updates``
  denoising steps of the fake network on generator samples, then one generator step along DMD's normalised
  ``ω(t)·α_t·(s_fake − s_teacher)`` (`dmd_direction`, `vsd_generator_loss`); with ``regression_weight > 0`` it is
  DMD (plus `kd_loss` on the offline pairs).
- `distill_guidance`: a student with a w input matching the two-call guided teacher in one call (`guidance_loss`,
  in v); its PD rounds use `distill_pd_round` with the student as teacher.
Students keep no EMA (short runs; the last weights are used).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from fdistill.errors import InputError
from fdistill.runner import History, StepGuard

from .ddim import ddim_step
from .losses import (
    denoising_loss,
    dmd_direction,
    guidance_loss,
    guided_prediction,
    kd_loss,
    pd_loss,
    pd_weight,
    v_target,
    vsd_generator_loss,
    x0_from_v,
)
from .schedule import CLEAN


@dataclass
class Budget:
    """How one network is trained."""

    steps: int
    batch_size: int
    learning_rate: float
    max_grad_norm: float = 1.0


def predict_x0(net, schedule, x, t, labels, w=None):
    """``x̂₀ = α_t·x_t − σ_t·v̂(x_t, t, c, w)``."""
    alpha, sigma = schedule.alpha_sigma(t, like=x)
    return x0_from_v(x, net(x, t, labels, w), alpha, sigma)


def guided_x0(net, schedule, x, t, labels, w):
    """The two-call classifier-free-guided teacher: ``(1 + w)·x̂₀(x, c) − w·x̂₀(x, ∅)``."""
    null = torch.full_like(labels, net.num_classes)
    return guided_prediction(
        predict_x0(net, schedule, x, t, labels),
        predict_x0(net, schedule, x, t, null),
        torch.as_tensor(w, dtype=x.dtype).reshape((-1,) + (1,) * (x.dim() - 1)),
    )


def _full(value, batch):
    return torch.full((batch,), value, dtype=torch.long)


def _progress(history, guard, step, total, every, log, name, started, **values):
    if step % every == 0 or step == total:
        row = history.log(
            step=step, **{k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in values.items()}
        )
        if log:
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            log(f"[{name}] {shown} skipped={guard.skipped} ({time.perf_counter() - started:.0f}s)")


def train_teacher(net, problem, budget: Budget, seed: int, label_dropout: float, ema_decay: float, log=print):
    from diffusers.training_utils import EMAModel

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    schedule, T = problem.schedule, problem.schedule.num_train_timesteps
    optimizer = torch.optim.Adam(net.parameters(), lr=budget.learning_rate)
    ema = EMAModel(net.parameters(), decay=ema_decay)
    guard, history, started = StepGuard("teacher"), History(), time.perf_counter()
    for step in range(1, budget.steps + 1):
        x0, labels = problem.sample(budget.batch_size, generator)
        drop = torch.rand(len(labels), generator=generator) < label_dropout
        labels = torch.where(drop, torch.full_like(labels, net.num_classes), labels)
        t = torch.randint(0, T, (len(x0),), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        alpha, sigma = schedule.alpha_sigma(t, like=x0)
        loss = denoising_loss(net(alpha * x0 + sigma * eps, t, labels), x0, eps, alpha, sigma)
        if guard.step(optimizer, loss, net.parameters(), budget.max_grad_norm):
            ema.step(net.parameters())
        _progress(history, guard, step, budget.steps, max(1, budget.steps // 10), log, "teacher", started, loss=loss)
    ema.copy_to(net.parameters())
    net.eval()
    return net, {"history": history.rows, **guard.finish()}


def distill_kd(teacher, problem, pairs, budget: Budget, seed: int, log=print):
    """``pairs``: dict of tensors ``noise [N, ...]``, ``label [N]``, ``target [N, ...]``."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student = copy.deepcopy(teacher).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=budget.learning_rate)
    guard, history, started = StepGuard("kd"), History(), time.perf_counter()
    last = problem.schedule.num_train_timesteps - 1
    for step in range(1, budget.steps + 1):
        index = torch.randint(0, len(pairs["noise"]), (budget.batch_size,), generator=generator)
        noise, labels, target = pairs["noise"][index], pairs["label"][index], pairs["target"][index]
        loss = kd_loss(predict_x0(student, problem.schedule, noise, _full(last, len(index)), labels), target)
        guard.step(optimizer, loss, student.parameters(), budget.max_grad_norm)
        _progress(history, guard, step, budget.steps, max(1, budget.steps // 10), log, "kd", started, loss=loss)
    return student.eval(), {"history": history.rows, **guard.finish()}


def distill_pd_round(
    teacher,
    problem,
    student_steps: int,
    budget: Budget,
    seed: int,
    w_max: float | None = None,
    init=None,
    log=print,
    name="pd",
    unconditional: bool = False,
):
    """A K-step student (K = ``student_steps``) from a 2K-step teacher: for s = t_k, u = the 2K grid's point
    between, t = t_{k+1}, regress ``x̂₀_student(x_s)`` on ``progressive_target(x_s, DDIM_{u→t}(DDIM_{s→u}(x_s)))``.

    ``w_max``: teacher and student take a guidance weight ``w ~ U[0, w_max]`` (guidance distillation's PD stage).
    ``init``: the student's starting network (default: a copy of the teacher, as in Salimans & Ho).
    ``unconditional``: teacher and student see the "no class" label (a distilled unconditional sampler).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    schedule = problem.schedule
    coarse = schedule.trailing_timesteps(student_steps) + [CLEAN]
    fine = schedule.trailing_timesteps(2 * student_steps) + [CLEAN]
    if fine[::2] != coarse:
        raise InputError(
            f"the {student_steps}-step grid is not every other point of the {2 * student_steps}-step "
            "grid; choose num_train_timesteps divisible by the step counts"
        )
    student = copy.deepcopy(init if init is not None else teacher).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=budget.learning_rate)
    guard, history, started = StepGuard(name), History(), time.perf_counter()
    grid_s, grid_u, grid_t = (torch.tensor(g) for g in (coarse[:-1], fine[1::2], coarse[1:]))
    for step in range(1, budget.steps + 1):
        x0, labels = problem.sample(budget.batch_size, generator)
        if unconditional:
            labels = torch.full_like(labels, teacher.num_classes)
        k = torch.randint(0, student_steps, (len(x0),), generator=generator)
        s, u, t = grid_s[k], grid_u[k], grid_t[k]
        (a_s, s_s), (a_u, s_u), (a_t, s_t) = (schedule.alpha_sigma(v, like=x0) for v in (s, u, t))
        x_s = a_s * x0 + s_s * torch.randn(x0.shape, generator=generator)
        w = None if w_max is None else torch.rand(len(x0), generator=generator) * w_max
        with torch.no_grad():
            x_u = ddim_step(x_s, predict_x0(teacher, schedule, x_s, s, labels, w), a_s, s_s, a_u, s_u)
            x_t = ddim_step(x_u, predict_x0(teacher, schedule, x_u, u, labels, w), a_u, s_u, a_t, s_t)
        loss = pd_loss(
            predict_x0(student, schedule, x_s, s, labels, w), x_s, x_t, a_s, s_s, a_t, s_t, pd_weight(a_s, s_s)
        )
        guard.step(optimizer, loss, student.parameters(), budget.max_grad_norm)
        _progress(history, guard, step, budget.steps, max(1, budget.steps // 5), log, name, started, loss=loss)
    return student.eval(), {"history": history.rows, **guard.finish()}


def distill_vsd(
    teacher,
    problem,
    budget: Budget,
    seed: int,
    fake_learning_rate: float,
    fake_updates: int = 1,
    t_range: tuple[float, float] = (0.02, 0.98),
    regression_weight: float = 0.0,
    pairs=None,
    log=print,
    name="vsd",
    unconditional: bool = False,
):
    """VSD/DMD one-step generator; see the module docstring. Returns ``(generator, record)``."""
    generator_rng = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    schedule, T, C = problem.schedule, problem.schedule.num_train_timesteps, teacher.num_classes
    gen, fake = copy.deepcopy(teacher).train(), copy.deepcopy(teacher).train()
    opt_gen = torch.optim.Adam(gen.parameters(), lr=budget.learning_rate)
    fake_step = _FakeScore(fake, fake_learning_rate, StepGuard(name + " fake score"), budget.max_grad_norm)
    guard, history, started = StepGuard(name + " generator"), History(), time.perf_counter()
    t_bounds = (int(t_range[0] * T), int(t_range[1] * T))
    for step in range(1, budget.steps + 1):
        batch = budget.batch_size
        z = torch.randn((batch, *problem.shape), generator=generator_rng)
        labels = torch.randint(0, C, (batch,), generator=generator_rng)
        if unconditional:  # the generator, the fake and the teacher all see "no class"
            labels = torch.full_like(labels, C)
        x0_gen = predict_x0(gen, schedule, z, _full(T - 1, batch), labels)
        for _ in range(fake_updates):  # 1. the fake score follows the generator (DSM on its samples)
            fake_loss = fake_step(schedule, x0_gen, labels, t_bounds, generator_rng)
        loss, regression = _generator_loss(  # 2. the generator step
            gen, fake, teacher, schedule, x0_gen, labels, t_bounds, generator_rng, regression_weight, pairs
        )
        guard.step(opt_gen, loss, gen.parameters(), budget.max_grad_norm)
        every = max(1, budget.steps // 10)
        values = {"generator_loss": loss, "fake_loss": fake_loss, "regression": regression}
        _progress(history, guard, step, budget.steps, every, log, name, started, **values)
    return gen.eval(), {
        "history": history.rows,
        **guard.finish(),
        **{f"fake_{k}": v for k, v in fake_step.guard.finish().items()},
    }


class _FakeScore:
    """VSD's fake score network and its optimiser: one denoising step on the generator's (detached) samples."""

    def __init__(self, net, learning_rate: float, guard: StepGuard, max_grad_norm: float):
        self.net, self.guard, self.max_grad_norm = net, guard, max_grad_norm
        self.optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)

    def __call__(self, schedule, x0_gen, labels, t_bounds, rng):
        t = torch.randint(*t_bounds, (len(x0_gen),), generator=rng)
        eps = torch.randn(x0_gen.shape, generator=rng)
        alpha, sigma = schedule.alpha_sigma(t, like=x0_gen)
        x_t = alpha * x0_gen.detach() + sigma * eps
        loss = denoising_loss(self.net(x_t, t, labels), x0_gen.detach(), eps, alpha, sigma)
        self.guard.step(self.optimizer, loss, self.net.parameters(), self.max_grad_norm)
        return loss


def _generator_loss(gen, fake, teacher, schedule, x0_gen, labels, t_bounds, rng, regression_weight, pairs):
    """The generator's loss along DMD's direction (plus ``regression_weight`` × KD on the pairs) and the KD term."""
    batch, T = len(x0_gen), schedule.num_train_timesteps
    t = torch.randint(*t_bounds, (batch,), generator=rng)
    alpha, sigma = schedule.alpha_sigma(t, like=x0_gen)
    x_t = (alpha * x0_gen + sigma * torch.randn(x0_gen.shape, generator=rng)).detach()
    with torch.no_grad():
        direction = dmd_direction(
            predict_x0(fake, schedule, x_t, t, labels), predict_x0(teacher, schedule, x_t, t, labels), x0_gen
        )
    loss = vsd_generator_loss(x0_gen, direction)
    regression = torch.zeros(())
    if regression_weight > 0:
        index = torch.randint(0, len(pairs["noise"]), (batch,), generator=rng)
        regression = kd_loss(
            predict_x0(gen, schedule, pairs["noise"][index], _full(T - 1, batch), pairs["label"][index]),
            pairs["target"][index],
        )
        loss = loss + regression_weight * regression
    return loss, regression


def distill_guidance(teacher, problem, budget: Budget, seed: int, w_max: float, log=print):
    """One-call student ``v̂_S(x_t, t, c, w)`` matching ``(1 + w)·v̂_T(x_t, c) − w·v̂_T(x_t, ∅)``, w ~ U[0, w_max]."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    schedule, T = problem.schedule, problem.schedule.num_train_timesteps
    student = copy.deepcopy(teacher).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=budget.learning_rate)
    guard, history, started = StepGuard("guidance"), History(), time.perf_counter()
    for step in range(1, budget.steps + 1):
        x0, labels = problem.sample(budget.batch_size, generator)
        t = torch.randint(0, T, (len(x0),), generator=generator)
        alpha, sigma = schedule.alpha_sigma(t, like=x0)
        x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=generator)
        w = torch.rand(len(x0), generator=generator) * w_max
        with torch.no_grad():
            cond, uncond = teacher(x_t, t, labels), teacher(x_t, t, torch.full_like(labels, teacher.num_classes))
        loss = guidance_loss(student(x_t, t, labels, w), cond, uncond, w.reshape(alpha.shape))
        guard.step(optimizer, loss, student.parameters(), budget.max_grad_norm)
        _progress(history, guard, step, budget.steps, max(1, budget.steps // 10), log, "guidance", started, loss=loss)
    return student.eval(), {"history": history.rows, **guard.finish()}


__all__ = [
    "Budget",
    "distill_guidance",
    "distill_kd",
    "distill_pd_round",
    "distill_vsd",
    "guided_x0",
    "predict_x0",
    "train_teacher",
    "v_target",
]
