"""How the tests compare floats that two code paths sum in different orders: tolerances from the dtype and the sum's size.

Floating-point addition is not associative. Two paths that compute the same quantity but add its terms in another
order — another batch composition or row order, another BLAS blocking, another thread count, another CPU instruction
set (AVX2 against AVX-512) — agree only up to rounding, and by how much depends on the machine. A test that asserts
bit-equality across such paths passes on the machine it was written on and fails on the next one (issue 22: a KL log
of 55.28153991699219 against 55.28153610229492 when two seeds ordered the rows of one batch differently).

The rule here: with unit roundoff ``eps`` of the dtype (``torch.finfo(dtype).eps``) and ``n`` terms in the longest
sum behind a value, the worst case is ``(n - 1) · eps · Σ|xᵢ|`` (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., §4.2), but rounding errors behave like a random walk, so the difference between two orders is
of order ``√n · eps`` relative to the magnitude of the terms (Higham §4.2, "statistical" bound; pairwise and blocked
kernels do better still). :func:`sum_rtol` returns ``SAFETY · √n · eps`` with a safety factor of 8 — far below any
real bug (a wrong sign, a missing term, a wrong mask is ≥ 1e-3 relative here) and far above the 1-ULP scatter
between machines.

Bit-equality stays only where the code path is truly the same (a resumed run against the uninterrupted one, a
reloaded model against the saved one, the same function called twice).
"""

from __future__ import annotations

import math

import pytest
import torch

SAFETY = 8.0


def sum_rtol(dtype: torch.dtype, terms: int) -> float:
    """Relative tolerance between two summation orders of ``terms`` values in ``dtype``: ``SAFETY · √terms · eps``."""
    return SAFETY * math.sqrt(max(terms, 1)) * torch.finfo(dtype).eps


def approx_sums(expected, dtype: torch.dtype, terms: int):
    """``pytest.approx`` for numbers, lists or dicts of them (or a list of dicts, as a Trainer's log history) that
    another summation order of ``terms`` values in ``dtype`` may have rounded differently."""
    rel = sum_rtol(dtype, terms)
    if isinstance(expected, list) and expected and isinstance(expected[0], dict):
        return [pytest.approx(e, rel=rel) for e in expected]
    return pytest.approx(expected, rel=rel)
