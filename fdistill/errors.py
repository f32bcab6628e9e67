"""One shape for every bad-input error fdistill raises: what was wrong, the value seen, how to fix it.

    steps=-5 is not valid: use a positive number of steps.
    prompts file 'data.jsonl' does not exist: give the path of a JSON/JSONL/CSV/Parquet file or a dataset folder.

`InputError` subclasses `ValueError`, so ``except ValueError`` (and the `fdistill` command, which turns it into
one line on stderr and exit status 2) catches it; raise it before any work is done or anything is written.
"""

from __future__ import annotations

import contextlib


class InputError(ValueError):
    """A setting, file or data item that fdistill cannot use; the message names it, the value seen and the fix."""


# The documentation's folder in the repository; `see` names its pages in refusals (the site: `mkdocs serve`).
DOCS = "docs"


def see(page: str, anchor: str | None = None) -> str:
    """`` (see docs/PAGE.md#ANCHOR)``: the documentation page that explains a refusal and its fix, appended to the
    message. tests/core/test_docs.py checks that every page and anchor the code names exists.

    Example:
        >>> see("guides/troubleshooting", "locks")
        ' (see docs/guides/troubleshooting.md#locks)'
    """
    return f" (see {DOCS}/{page}.md{'#' + anchor if anchor else ''})"


def invalid(name: str, value, fix: str, problem: str = "is not valid") -> InputError:
    """``InputError("{name}={value!r} {problem}: {fix}")`` — return it and ``raise`` it at the call site.

    Example:
        >>> raise invalid("batch_size", 0, "use 1 or more.")
        Traceback (most recent call last):
        fdistill.errors.InputError: batch_size=0 is not valid: use 1 or more.
    """
    return InputError(f"{name}={value!r} {problem}: {fix}")


class RolloutError(RuntimeError):
    """Samples drawn in the background (``rollout_overlap``) could not be had; the message names the step."""


class NonFiniteError(ArithmeticError):
    """Training met a NaN or infinity; the message names the step, the inputs and the model concerned, and the likely cause."""


# Why a model's numbers are NaN/inf, as said by every NonFiniteError about the teacher, the student or another model.
NONFINITE_CAUSES = {
    "teacher": "the teacher's weights or dtype (check that it generates sensible text; load it in float32 or bfloat16 "
    "(teacher_dtype), float16 overflows easily)",
    "student": "the student diverged or was loaded broken (lower learning_rate, keep max_grad_norm, prefer bf16 to "
    "fp16; check the model before training)",
}
_OTHER_CAUSE = (
    "the model's weights or dtype (does it generate sensible text? float16 overflows easily: use float32 or bfloat16)"
)


def nonfinite_cause(which: str) -> str:
    """The likely cause of NaN/inf in the numbers of model ``which`` ('teacher', 'student' or another name)."""
    return NONFINITE_CAUSES.get(which, _OTHER_CAUSE) + see("guides/troubleshooting", "nonfinite")


@contextlib.contextmanager
def nonfinite_sampling(which: str, where: str):
    """torch.multinomial's RuntimeError on NaN/inf next-token probabilities, as a `NonFiniteError` naming
    ``where`` (e.g. "training step 3"), the model ``which`` and the likely cause."""
    try:
        yield
    except RuntimeError as error:
        if "probability tensor contains" not in str(error):
            raise
        raise NonFiniteError(
            f"{where}: the {which}'s next-token probabilities hold NaN or inf while drawing {which} "
            f"samples; likely cause: {nonfinite_cause(which)}"
        ) from None


def require_extra(extra: str, *modules: str) -> None:
    """Raise one `ModuleNotFoundError` naming ``pip install 'fdistill[extra]'`` when a research module's packages
    (``modules``, import names) are missing; called first thing by ``fdistill.flows``, ``.vocoder``, ``.diffusion``."""
    import importlib.util
    import sys

    for module in modules:
        missing = (
            sys.modules.get(module, ...) is None if module in sys.modules else importlib.util.find_spec(module) is None
        )
        if missing:
            raise ModuleNotFoundError(
                f"fdistill.{extra} needs the package {module!r}, which is not installed: "
                f"pip install 'fdistill[{extra}]'.{see('guides/' + extra)}",
                name=module,
            )
