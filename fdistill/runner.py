"""The shared experiment runner of the research modules (flows, vocoder, diffusion): guarded optimiser steps,
per-step/per-epoch history, and finished stages saved and resumed with their settings compared.

Three small pieces, each usable alone:

- `guarded_step(optimizer, loss, parameters, max_grad_norm) -> bool`: backward, clip, step — unless the loss or the
  gradient norm is not finite, in which case nothing is updated and False is returned (the caller counts it).
- `StepGuard(stage, ...)`: counts taken and skipped steps of one stage; `finish()` raises one
  `fdistill.errors.NonFiniteError` naming the stage, the count and the likely cause when most steps were skipped,
  so a diverged run is reported, never saved as a finished result. Given the ``planned`` number of steps it stops
  the stage as soon as it can no longer finish; ``error`` and ``message`` let a module keep its own error class and
  wording (e.g. an `InputError` for the `fdistill` command's one-line errors).
- `History`: rows of numbers (one per step or epoch) with a JSON-ready form; non-finite values are kept as the
  strings ``"nan"``/``"inf"`` so that a diverging loss is visible in the saved record, never turned into 0.
- `run_stage(folder, name, settings, work)`: returns a finished stage from ``{folder}/{name}.safetensors/.json``
  when one exists with the same settings (another settings dict is an error, never a silent reuse), else runs
  ``work()`` and saves its tensors and record (and any extra JSON entries ``work`` returns, e.g. a long history).
  Storage is `fdistill.stages.save_stage`/`load_stage` (safetensors + JSON, pickles refused): one
  definition, imported, not copied.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = torch.optim.SGD([w], lr=0.5)
    >>> guarded_step(opt, (w ** 2).sum(), [w], max_grad_norm=10.0), w.item()
    (True, 0.0)
    >>> guarded_step(opt, w.sum() * float("nan"), [w], max_grad_norm=10.0), w.item()
    (False, 0.0)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from fdistill.checks import number, output_folder, whole_number
from fdistill.errors import NonFiniteError
from fdistill.stages import load_stage, save_stage

__all__ = ["guarded_step", "StepGuard", "History", "StageResult", "run_stage", "json_number"]


def guarded_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    parameters: Iterable[torch.Tensor],
    max_grad_norm: float | None = None,
) -> bool:
    """One optimiser step on ``loss``, or none when the loss or the gradient norm is not finite.

    Zeroes the gradients, back-propagates, clips the global norm to ``max_grad_norm`` (None: no clipping, the norm is
    still checked) and steps. Returns True when a step was taken, False when it was skipped (the gradients are
    cleared then, so a NaN never reaches the weights or the optimiser's moments).
    """
    parameters = [p for p in parameters if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss.detach()).all():
        return False
    loss.backward()
    limit = float("inf") if max_grad_norm is None else max_grad_norm
    norm = torch.nn.utils.clip_grad_norm_(parameters, limit)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


@dataclass
class StepGuard:
    """Counts the steps of one stage and refuses to call a mostly-skipped stage finished.

    Arguments:
        stage: the stage's name, used in the error (e.g. ``"teacher"``, ``"pd round 3 (8 → 4 steps)"``).
        max_skipped_fraction: ``finish()`` raises when more than this fraction of steps were skipped (0: any
            skipped step is an error).
        hint: the likely cause and fix shown in the error (a default names learning rate and clipping).
        planned: the steps the stage will attempt, if known: ``step()`` then raises as soon as more than
            ``max_skipped_fraction`` of them were skipped (the stage can no longer finish), instead of at `finish`.
        error: the exception class raised (default `NonFiniteError`; e.g. `fdistill.errors.InputError`).
        message: the error's text, a `str.format` template of ``stage``, ``skipped``, ``taken``, ``total`` (the
            steps the count is out of: ``planned`` when stopped early, else those attempted), ``hint`` and any
            keywords given to `finish`/`failure`.
    """

    stage: str
    max_skipped_fraction: float = 0.5
    hint: str = "the learning rate is probably too high or max_grad_norm too loose; lower them and run again"
    taken: int = 0
    skipped: int = 0
    planned: int | None = None
    error: type[Exception] = NonFiniteError
    message: str = (
        "stage {stage!r} diverged: {skipped} of {total} optimiser steps had a non-finite loss or gradient "
        "and were skipped; {hint}."
    )

    def __post_init__(self):
        number("max_skipped_fraction", self.max_skipped_fraction, low=0.0, allow_low=True)
        if self.planned is not None:
            whole_number("planned", self.planned, low=0)

    def step(self, optimizer, loss, parameters, max_grad_norm: float | None = None) -> bool:
        """`guarded_step`, counted; with ``planned``, the stage's error once it can no longer finish."""
        ok = guarded_step(optimizer, loss, parameters, max_grad_norm)
        if ok:
            self.taken += 1
        else:
            self.skipped += 1
            if self.planned is not None and self.skipped > self.max_skipped_fraction * self.planned:
                raise self.failure(total=self.planned)
        return ok

    def failure(self, total: int | None = None, **context) -> Exception:
        """The stage's error (not raised): ``error(message)`` filled in; ``total`` defaults to the steps attempted."""
        total = self.taken + self.skipped if total is None else total
        return self.error(
            self.message.format(
                stage=self.stage, skipped=self.skipped, taken=self.taken, total=total, hint=self.hint, **context
            )
        )

    def finish(self, **context) -> dict:
        """``{"steps_taken", "steps_skipped"}``, or the error (`failure`) when most steps were skipped."""
        total = self.taken + self.skipped
        if total and self.skipped > self.max_skipped_fraction * total:
            raise self.failure(**context)
        return {"steps_taken": self.taken, "steps_skipped": self.skipped}


def json_number(value):
    """A float for JSON: finite numbers as they are, NaN/±inf as the strings ``"nan"``, ``"inf"``, ``"-inf"``."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


@dataclass
class History:
    """Rows of logged numbers, e.g. ``history.log(step=10, loss=0.3)``; ``rows`` is JSON-ready."""

    rows: list[dict] = field(default_factory=list)

    def log(self, **values) -> dict:
        """Append one row of ``values`` (numbers made JSON-safe by :func:`json_number`) and return it."""
        row = {k: json_number(v) for k, v in values.items()}
        self.rows.append(row)
        return row

    def column(self, name: str) -> list:
        """The values of ``name`` in the rows that hold it, in order."""
        return [row[name] for row in self.rows if name in row]

    def last(self, name: str, default=None):
        """The last value of ``name``, or ``default`` when no row holds it."""
        values = self.column(name)
        return values[-1] if values else default


@dataclass
class StageResult:
    """A finished stage: its tensors, its JSON record, whether it was loaded rather than run, and the extra JSON
    entries saved beside the record (see `run_stage`)."""

    tensors: dict
    record: dict
    resumed: bool
    extra: dict = field(default_factory=dict)


def run_stage(
    folder: str, name: str, settings: dict, work: Callable[[], tuple], log: Callable[[str], None] | None = print
) -> StageResult:
    """A finished stage from ``folder`` (same ``settings``), or ``work()`` run now and saved.

    ``work`` returns ``(tensors, record)``: a dict of tensors (weights, samples) and a JSON-able dict (metrics,
    history); or ``(tensors, record, extra)``, ``extra`` a JSON-able dict of entries saved at the top level of the
    JSON beside ``settings`` and ``record`` (e.g. a per-step history kept out of the record), returned as
    `StageResult.extra` (on resume: every top-level entry other than those two). The stage is written only after
    ``work`` returns, the JSON last, so an interrupted stage is redone on the next run and a finished one is never
    redone. A saved stage with other settings raises an InputError naming
    the settings that differ.
    """
    output_folder("folder", folder)
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, name)
    saved = load_stage(base, settings)
    if saved is not None:
        if log:
            log(f"[{name}] finished earlier with the same settings: loaded {base}.json")
        extra = {k: v for k, v in saved[1].items() if k not in ("settings", "record")}
        return StageResult(saved[0], saved[1].get("record", {}), resumed=True, extra=extra)
    tensors, record, *rest = work()
    extra = rest[0] if rest else {}
    if {"settings", "record"} & set(extra):
        raise ValueError(f"run_stage {name!r}: the extra entries {sorted(extra)} may not be named settings or record")
    save_stage(base, tensors, {"settings": settings, "record": record, **extra})
    return StageResult(tensors, record, resumed=False, extra=extra)
