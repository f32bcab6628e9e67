"""Training loop for teacher and student flows: Adam, gradient-norm clipping, best-on-validation selection, and
the SKD guards (warm-up, skipped non-finite steps, divergence reported, never hidden).

A teacher is trained with ``LossWeights(nll=1)``; a student with any mix of NLL/LKD/ILKD/SKD against a frozen
teacher (`fdistill.flows.losses.distillation_loss`). SKD compares the two inverses, which is only meaningful once the
student's latents roughly line up with the teacher's, so its weight is zero for ``skd_warmup_epochs``. Every step
goes through the shared runner's guard (`fdistill.runner.StepGuard`): a step whose loss or gradient is not finite is
skipped and counted; more than ``max_bad_steps`` of them end the run as diverged (``TrainResult.diverged``) and the
best validated weights are kept; a run with no usable epoch, or with more skipped steps than taken ones, is an
error, never a finished result.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import torch

from fdistill.errors import InputError
from fdistill.runner import History, StepGuard

from . import checks
from .data import FlowData
from .losses import LossWeights, distillation_loss
from .models import Flow


@dataclass
class FlowTrainingArguments:
    """How one flow is trained (same budget for every method of an experiment)."""

    epochs: int = 100
    batch_size: int = 128
    learning_rate: float = 1e-3
    max_grad_norm: float = 10.0  # clipping; flows see rare huge gradients from near-singular Jacobians
    skd_warmup_epochs: int = 10  # SKD weight is 0 before this epoch (the latents must roughly align first)
    max_bad_steps: int = 20  # non-finite steps skipped before the run is declared diverged
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_bad_steps"):
            checks.whole_number(name, getattr(self, name))
        checks.whole_number("skd_warmup_epochs", self.skd_warmup_epochs, low=0)
        checks.whole_number("seed", self.seed, low=0)
        checks.number("learning_rate", self.learning_rate)
        checks.number("max_grad_norm", self.max_grad_norm)


@dataclass
class TrainResult:
    """Per-epoch history (train terms, validation NLL per dimension; `fdistill.runner.History` rows, non-finite values
    as ``"nan"``/``"inf"``), the selected epoch and any divergence."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_nll: float = math.inf
    skipped_steps: int = 0
    steps_taken: int = 0
    diverged: bool = False
    diverged_at: str | None = None


@torch.no_grad()
def evaluate_nll(flow: Flow, data: FlowData, split: str = "test", batch_size: int = 512, seed: int = 0) -> float:
    """Mean NLL in nats per dimension on a split (digits: one fixed dequantisation draw from ``seed``)."""
    was_training = flow.training
    flow.eval()
    generator = torch.Generator().manual_seed(seed)
    values = getattr(data, split)
    total = 0.0
    for batch in values.split(batch_size):
        total += -flow.log_prob(data.model_inputs(batch, generator)).double().sum().item()
    flow.train(was_training)
    return total / (len(values) * data.num_features)


def train_flow(
    flow: Flow,
    data: FlowData,
    args: FlowTrainingArguments,
    weights: LossWeights | None = None,
    teacher: Flow | None = None,
    alignment: list[tuple[int, int]] | None = None,
    distance: str = "l1",
    skd_temperature: float = 0.7,
    log=None,
    name: str = "flow",
) -> TrainResult:
    """Train ``flow`` in place; on return it holds the weights of the epoch with the best validation NLL.

    Raises an `InputError` naming ``name`` when the run learned nothing usable (no epoch with a finite validation NLL,
    or more optimiser steps skipped as non-finite than taken), so an untrained model is never saved as a finished
    result.
    """
    weights = weights or LossWeights()
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(args.seed)  # batch order and dequantisation noise
    skd_generator = torch.Generator().manual_seed(args.seed + 7919)  # SKD's base draws: same data order as NLL
    optimizer = torch.optim.Adam(flow.parameters(), lr=args.learning_rate)
    guard = StepGuard(
        name,
        error=InputError,
        hint=f"learning_rate={args.learning_rate!r} too high (lower it), or "
        "non-finite values in the data or the teacher",
        message="training {stage} failed: {problem} ({skipped} of {total} optimiser steps skipped as "
        "non-finite{where}). Likely cause: {hint}. Nothing of this run was saved.",
    )
    result, best_state = TrainResult(), None
    history = History(result.history)
    for epoch in range(args.epochs):
        flow.train()
        warming_up = epoch < args.skd_warmup_epochs and weights.nll + weights.lkd + weights.ilkd > 0
        epoch_weights = replace(weights, skd=0.0) if warming_up else weights
        sums: dict[str, float] = {}
        taken = 0
        order = torch.randperm(len(data.train), generator=generator)
        batches = order.split(args.batch_size)
        for step, index in enumerate(batches):
            x = data.model_inputs(data.train[index], generator)
            terms = distillation_loss(
                flow, x, epoch_weights, teacher, alignment, distance, skd_temperature, skd_generator
            )
            if not guard.step(optimizer, terms["loss"], flow.parameters(), args.max_grad_norm):
                if guard.skipped > args.max_bad_steps:
                    result.diverged, result.diverged_at = True, f"epoch {epoch}, step {step}"
                    break
                continue
            taken += 1
            for term, value in terms.items():
                sums[term] = sums.get(term, 0.0) + value.item()
        result.skipped_steps, result.steps_taken = guard.skipped, guard.taken
        if result.diverged:
            if log:
                log(
                    f"diverged at {result.diverged_at}: {result.skipped_steps} non-finite steps; keeping epoch "
                    f"{result.best_epoch}"
                )
            break
        val_nll = evaluate_nll(flow, data, "validate", seed=args.seed)
        record = history.log(epoch=epoch, **{k: v / max(taken, 1) for k, v in sums.items()}, val_nll=val_nll)
        if math.isfinite(val_nll) and val_nll < result.best_val_nll:
            result.best_epoch, result.best_val_nll = epoch, val_nll
            best_state = copy.deepcopy(flow.state_dict())
        if log and (epoch % 10 == 0 or epoch == args.epochs - 1):
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    if best_state is not None:
        flow.load_state_dict(best_state)
    flow.eval()
    where = f", diverged at {result.diverged_at}" if result.diverged else ""
    if result.best_epoch < 0:
        raise guard.failure(problem="no epoch ended with a finite validation NLL", where=where)
    guard.finish(problem="most optimiser steps were non-finite", where=where)
    return result
