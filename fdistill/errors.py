"""One shape for every bad-input error fdistill raises: what was wrong, the value seen, how to fix it.

    steps=-5 is not valid: use a positive number of steps.
    prompts file 'data.jsonl' does not exist: give the path of a JSON/JSONL/CSV/Parquet file or a dataset folder.

`InputError` subclasses `ValueError`, so ``except ValueError`` (and the `fdistill` command, which turns it into
one line on stderr and exit status 2) catches it; raise it before any work is done or anything is written.
"""

from __future__ import annotations


class InputError(ValueError):
    """A setting, file or data item that fdistill cannot use; the message names it, the value seen and the fix."""


def invalid(name: str, value, fix: str, problem: str = "is not valid") -> InputError:
    """``InputError("{name}={value!r} {problem}: {fix}")`` — return it and ``raise`` it at the call site.

    Example:
        >>> raise invalid("batch_size", 0, "use 1 or more.")
        Traceback (most recent call last):
        fdistill.errors.InputError: batch_size=0 is not valid: use 1 or more.
    """
    return InputError(f"{name}={value!r} {problem}: {fix}")


class NonFiniteError(ArithmeticError):
    """Training met a NaN or infinity; the message names the step, the inputs and the model concerned, and the likely cause."""
