"""f-DISTILL step divergences straight from hidden states and LM heads, without the ``[N, V]`` logits.

At a 49k–128k vocabulary the loss head dominates distillation memory: materialising
teacher and student logits (and their float32 copies and gradients) for 8k tokens costs
tens of GiB. :func:`fused_divergence` computes the same per-position terms as
:func:`fdistill.divergences.step_divergence` — every kind, both ``on`` sides, a constant
or per-row (exact, Eq. 12) JS mixture weight, loss temperature — from

    z_s = head_s(h_s),  z_t = head_t(h_t)    (:class:`~fdistill.kernels.heads.LinearHead`)

one chunk of tokens at a time, and computes the student's gradients (hidden states,
LM-head weight and bias) inside the same pass, so neither logits tensor ever exists in
full. It returns the weighted sum ``Σ_n r_n · term_n`` (the only differentiable output)
and the per-position terms, log-normalisers and student entropies (detached).

Two backends compute a chunk's terms and logit gradients:

- ``"torch"`` (CPU, and the reference): :func:`~fdistill.divergences.step_divergence`
  itself on the chunk's logits, differentiated by autograd — the one definition.
- ``"triton"`` (CUDA): one program per row streams the vocabulary in blocks and writes
  the closed-form gradient over the logits buffer (:mod:`fdistill.kernels.triton_divergence`).

Memory: ``chunk_size × V`` float32 logits per model at a time (plus the student's float32
weight-gradient accumulator) instead of ``N × V``.

Why in-house: TRL's ``ChunkedDivergenceFunction`` and Liger's ``LigerFusedLinearJSD``
fuse the LM head with a generalised JSD only — no TVD, no reverse KL on student
samples, no exact per-prefix JS mixture (Wen et al. 2023, §7 note 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fdistill.divergences import (
    DIVERGENCES,
    IGNORE_INDEX,
    DivergenceLoss,
    MixtureLogit,
    assemble_loss,
    check_kind,
    check_mixture_weight,
    check_side,
    check_temperature,
    count_items,
    side_mixture_weight,
    step_divergence,
    to_compute_dtype,
    token_entropy,
)
from fdistill.errors import InputError
from fdistill.kernels.heads import LinearHead, apply_head_transform

__all__ = [
    "FusedDivergence",
    "HiddenSequences",
    "default_chunk_size",
    "fused_divergence",
    "fused_f_divergence_loss",
    "fused_token_logprobs",
]

BACKENDS = ("auto", "torch", "triton")


@dataclass
class FusedDivergence:
    """What :func:`fused_divergence` returns.

    Attributes:
        loss: scalar ``Σ_n r_n · term_n`` (float32); gradients reach the student's
            hidden states, LM-head weight and bias.
        terms: ``(N,)`` per-position terms (detached), exactly 0 at masked rows.
        student_lse, teacher_lse: ``(N,)`` ``logsumexp(z / T)`` of each model's logits (detached).
        student_entropy: ``(N,)`` entropy of ``softmax(z_s / T)`` (detached).
    """

    loss: Tensor
    terms: Tensor
    student_lse: Tensor
    teacher_lse: Tensor
    student_entropy: Tensor


def default_chunk_size(vocab_size: int, device: torch.device) -> int:
    """Rows per chunk: ~2²² logits per model on CPU (16 MiB float32), ~2²⁶ on CUDA (large matmuls); at least 64."""
    budget = 2**26 if device.type == "cuda" else 2**22
    return max(64, budget // vocab_size)  # at least 64 rows: each chunk re-reads both heads


def _mixture_logit(mixture_weight, n: int, dtype: torch.dtype, device) -> Tensor:
    """The JS mixture weight (``None`` = ½) as a per-row logit ``z`` (``w = σ(z)``), ``(n,)`` in ``dtype``."""
    if mixture_weight is None:
        mixture_weight = 0.5
    if isinstance(mixture_weight, MixtureLogit):
        z = mixture_weight.logit.detach().to(device=device, dtype=dtype)
    else:
        w = torch.as_tensor(mixture_weight, dtype=torch.float64, device=device).detach()
        check_mixture_weight(w)
        z = (torch.log(w) - torch.log1p(-w)).to(dtype)
    return z.expand(n).contiguous() if z.dim() == 0 else z.reshape(n)


def _torch_chunk(kind, on, lin_s: Tensor, lin_t: Tensor, s_head, t_head, z_mix, weights, temperature):
    """Terms, lse's, entropy and ``∂(Σ r·terms)/∂lin_s`` for one chunk via ``step_divergence`` + autograd."""
    lin_s, lin_t = to_compute_dtype(lin_s), to_compute_dtype(lin_t)
    with torch.enable_grad():
        lin_s = lin_s.detach().requires_grad_(True)
        z_s = apply_head_transform(lin_s, s_head)
        z_t = apply_head_transform(lin_t, t_head)
        terms = step_divergence(kind, z_s, z_t, on=on, mixture_weight=MixtureLogit(z_mix), temperature=temperature)
        (grad,) = torch.autograd.grad((terms * weights).sum(), lin_s)
    z_s = z_s.detach()
    s_lse = torch.logsumexp(z_s / temperature, -1)
    t_lse = torch.logsumexp(z_t / temperature, -1)
    return terms.detach(), s_lse, t_lse, token_entropy(z_s, temperature=temperature), grad


def _accumulate_product(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """``acc += a @ b`` into a float32/64 accumulator without rounding ``a @ b`` to half precision first.

    On CUDA, half inputs go through ``addmm``'s ``out_dtype=float32`` (tensor cores, float32
    output); elsewhere (or where that overload is missing) the inputs are upcast.
    """
    # Decided per call, nothing remembered: a failure for one device or dtype says nothing about
    # another, and a remembered failure would make later results depend on what ran before.
    # A refused overload raises before any work, so trying again costs microseconds per chunk.
    if acc.device.type == "cuda" and acc.dtype == torch.float32 and a.dtype in (torch.float16, torch.bfloat16):
        try:
            torch.addmm(acc, a, b.to(a.dtype), out_dtype=torch.float32, out=acc)
            return
        except (RuntimeError, TypeError):
            pass
    acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


class _FusedDivergenceFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, weights, z_mix, meta):
        kind, on, temperature, s_head, t_head, chunk, backend, grad_enabled = meta
        n = h_s.shape[0]
        dev = h_s.device
        acc = torch.float64 if h_s.dtype == torch.float64 else torch.float32  # accumulation dtype
        terms, s_lse, t_lse, ent = (torch.zeros(n, dtype=acc, device=dev) for _ in range(4))
        # needs_input_grad ignores no_grad(): ask the caller's grad mode too (evaluation computes no gradients)
        need_h, need_w = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        need_b = grad_enabled and b_s is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(h_s) if need_h else None
        grad_w = torch.zeros(w_s.shape, dtype=acc, device=dev) if need_w else None
        grad_b = torch.zeros(w_s.shape[0], dtype=acc, device=dev) if need_b else None
        if backend == "triton":
            from fdistill.kernels.triton_divergence import triton_chunk as chunk_fn
        else:
            chunk_fn = _torch_chunk
        for start in range(0, n, chunk):
            rows = slice(start, min(n, start + chunk))
            hs = h_s[rows]
            with torch.no_grad():
                lin_s = F.linear(hs, s_head.weight, s_head.bias)  # in the model's dtype, as the model computes it
                lin_t = F.linear(h_t[rows], t_head.weight, t_head.bias)
                out = chunk_fn(kind, on, lin_s, lin_t, s_head, t_head, z_mix[rows], weights[rows], temperature)
            terms[rows], s_lse[rows], t_lse[rows], ent[rows], g = out
            g = g.to(w_s.dtype)
            if need_h:
                grad_h[rows] = g @ w_s
            if need_w:
                _accumulate_product(grad_w, g.T, hs)
            if need_b:
                grad_b += g.to(acc).sum(0)
        # Plain attributes, not save_for_backward: backward scales them in place and lets them go.
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (h_s.dtype, w_s.dtype, None if b_s is None else b_s.dtype)
        ctx.mark_non_differentiable(terms, s_lse, t_lse, ent)
        loss = (terms * weights.to(acc)).sum()
        return loss, terms, s_lse, t_lse, ent

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if ctx.grads is None:
            raise RuntimeError(
                "fused_divergence's gradients were formed in its forward and already used; a second "
                "backward through the same loss needs a new fused_divergence call."
            )
        grads = []
        for g, dtype in zip(ctx.grads, ctx.dtypes):
            if g is not None:
                g = g.mul_(grad_loss.to(g.dtype)).to(dtype)  # in place: no second full-size copy
            grads.append(g)
        ctx.grads = None
        return (*grads, None, None, None, None, None, None)


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_available() and TRITON_SELF_CHECK(device) else "torch"
    if backend == "triton" and device.type != "cuda" and not _triton_interpreting():
        raise InputError(
            "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the interpreter); use 'torch'."
        )
    if backend == "triton" and not _triton_available():
        raise InputError("backend='triton' needs the triton package: pip install triton (or use backend='torch').")
    return backend


def _backends_agree(device: torch.device) -> bool:
    """The Triton kernel compiles and agrees with the torch backend on a small random problem (warns if not)."""
    import warnings

    g = torch.Generator(device=device).manual_seed(0)
    h_s, h_t = (torch.randn(16, d, device=device, generator=g) for d in (32, 48))
    heads = [LinearHead(0.3 * torch.randn(1000, d, device=device, generator=g)) for d in (32, 48)]
    try:
        for kind in DIVERGENCES:
            outs = []
            for backend in ("torch", "triton"):
                w = heads[0].weight.clone().requires_grad_()
                out = fused_divergence(kind, h_s, LinearHead(w), h_t, heads[1], on="student", backend=backend)
                outs.append((out.terms, torch.autograd.grad(out.loss, [w])[0]))
            for a, b in zip(*outs):
                if not torch.allclose(a, b, rtol=1e-3, atol=1e-4):
                    raise RuntimeError(f"{kind}: Triton and torch backends differ by {(a - b).abs().max().item():.3g}")
    except Exception as error:  # noqa: BLE001 - any failure means: do not use the kernel here
        warnings.warn(
            f"fdistill: the Triton divergence kernel failed its self-check on {device} ({error}); "
            "using the chunked PyTorch backend.",
            stacklevel=4,
        )
        return False
    return True


class TritonSelfCheck:
    """Whether ``backend="auto"`` may use the Triton kernel on a device: checked once per device, then remembered.

    ``backend="auto"`` falls back to the torch backend (with a warning naming the reason)
    rather than train with a kernel that fails on this GPU or Triton version. The check
    compiles the kernel, so each device's verdict is kept — in this object (the module's
    ``TRITON_SELF_CHECK``), the one cache of this module, explicit and resettable:
    :meth:`clear` forgets every verdict (tests; a long-lived process after a Triton upgrade).

    Arguments:
        check: ``device -> bool``, run once per device (default: the Triton kernel compiles
            and matches the torch backend on a small random problem).

    Example:
        >>> checks = TritonSelfCheck(lambda device: True)
        >>> checks(torch.device("cuda")), checks.verdicts()
        (True, {'cuda': True})
        >>> checks.clear()
    """

    def __init__(self, check=_backends_agree) -> None:
        self._check = check
        self._verdicts: dict[str, bool] = {}  # str(device) -> passed

    def __call__(self, device: torch.device) -> bool:
        key = str(device)
        if key not in self._verdicts:
            self._verdicts[key] = bool(self._check(device))
        return self._verdicts[key]

    def verdicts(self) -> dict[str, bool]:
        """A copy of the verdicts so far, by device."""
        return dict(self._verdicts)

    def clear(self) -> None:
        """Forget every device's verdict: the next call checks again."""
        self._verdicts.clear()


TRITON_SELF_CHECK = TritonSelfCheck()


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_heads_and_hidden(student_hidden: Tensor, student_head, teacher_hidden: Tensor, teacher_head) -> None:
    """Both models' hidden states are ``(N, H)`` over the same N rows, each fits its head, and the heads share a
    vocabulary."""
    if student_hidden.dim() != 2 or teacher_hidden.dim() != 2 or student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise InputError(
            f"hidden states must be (N, H) with the same N for both models; got student {tuple(student_hidden.shape)}, "
            f"teacher {tuple(teacher_hidden.shape)} (flatten the selected positions first)."
        )
    for name, hidden, head in (("student", student_hidden, student_head), ("teacher", teacher_hidden, teacher_head)):
        if hidden.shape[1] != head.weight.shape[1]:
            raise InputError(
                f"{name} hidden size {hidden.shape[1]} does not match its LM head {tuple(head.weight.shape)}."
            )
    if student_head.weight.shape[0] != teacher_head.weight.shape[0]:
        raise InputError(
            f"student vocabulary ({student_head.weight.shape[0]}) and teacher vocabulary ({teacher_head.weight.shape[0]}) "
            "differ; the student must share the teacher's tokenizer (slice padded LM heads to the tokenizer's size)."
        )


def fused_divergence(
    kind: Literal["kl", "rkl", "js", "tvd"],
    student_hidden: Tensor,
    student_head: LinearHead,
    teacher_hidden: Tensor,
    teacher_head: LinearHead,
    *,
    on: Literal["teacher", "student"],
    row_weights: Tensor | float = 1.0,
    mask: Tensor | None = None,
    mixture_weight: Tensor | float | MixtureLogit | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    backend: Literal["auto", "torch", "triton"] = "auto",
) -> FusedDivergence:
    """``Σ_n r_n · step_divergence(kind, z_s[n], z_t[n], on=on)`` without materialising ``z_s`` or ``z_t``.

    Arguments:
        kind, on, mixture_weight, temperature: as in :func:`fdistill.divergences.step_divergence`
            (``mixture_weight``: a float, an ``(N,)`` tensor of weights, or a
            :class:`~fdistill.divergences.MixtureLogit` with ``(N,)`` logits; ``None`` = ½).
        student_hidden: ``(N, H_s)`` hidden states entering the student's LM head (any float dtype).
        student_head: the student's :class:`LinearHead` (gradients reach ``weight`` and ``bias``).
        teacher_hidden: ``(N, H_t)``; ``H_t`` may differ from ``H_s`` (same vocabulary). No gradient.
        teacher_head: the teacher's :class:`LinearHead`.
        row_weights: ``r_n``, a float or ``(N,)`` (e.g. ``coefficient / count`` of a reduction).
        mask: ``(N,)`` bool; rows where it is False are never read and give exactly 0.
        chunk_size: rows per chunk (default :func:`default_chunk_size`).
        backend: ``"torch"``, ``"triton"`` (CUDA) or ``"auto"`` (Triton on CUDA when installed).

    Returns:
        :class:`FusedDivergence`.
    """
    check_kind(kind)
    check_side(on)
    check_temperature(temperature)
    _check_heads_and_hidden(student_hidden, student_head, teacher_hidden, teacher_head)
    n, device = student_hidden.shape[0], student_hidden.device
    backend = _resolve_backend(backend, device)
    vocab = student_head.weight.shape[0]
    chunk = chunk_size or default_chunk_size(vocab, device)
    if chunk < 1:
        raise InputError(f"chunk_size must be positive, got {chunk_size!r}.")
    acc = torch.float64 if student_hidden.dtype == torch.float64 else torch.float32
    weights = torch.as_tensor(row_weights, dtype=acc, device=device).detach()
    weights = weights.expand(n).contiguous() if weights.dim() == 0 else weights.reshape(n).to(acc)
    z_mix = _mixture_logit(mixture_weight, n, acc, device)
    if mask is not None:
        if mask.shape != (n,):
            raise InputError(f"mask must be (N,) = ({n},), got {tuple(mask.shape)}.")
        rows = mask.bool().nonzero(as_tuple=True)[0]
        student_hidden, teacher_hidden, weights, z_mix = (
            student_hidden[rows],
            teacher_hidden[rows],
            weights[rows],
            z_mix[rows],
        )
    meta = (kind, on, float(temperature), student_head, teacher_head, chunk, backend, torch.is_grad_enabled())
    loss, terms, s_lse, t_lse, ent = _FusedDivergenceFunction.apply(
        student_hidden,
        student_head.weight,
        student_head.bias,
        teacher_hidden.detach(),
        teacher_head.weight.detach(),
        None if teacher_head.bias is None else teacher_head.bias.detach(),
        weights,
        z_mix,
        meta,
    )
    if mask is None:
        return FusedDivergence(loss, terms, s_lse, t_lse, ent)

    def full(x: Tensor) -> Tensor:
        return torch.zeros(n, dtype=x.dtype, device=device).index_put((rows,), x)

    return FusedDivergence(loss, full(terms), full(s_lse), full(t_lse), full(ent))


@torch.no_grad()
def fused_token_logprobs(
    hidden: Tensor, head: LinearHead, labels: Tensor, *, temperature: float = 1.0, chunk_size: int | None = None
) -> Tensor:
    """``log softmax(z / T)[labels]`` per row from hidden states, ``(N, H), (N,) → (N,)`` (no gradient).

    One chunked pass for the log-normaliser; the label's logit is a row-wise dot
    product. Used for the exact JS mixture weight (Eq. 12) and sample metrics.
    """
    n = hidden.shape[0]
    chunk = chunk_size or default_chunk_size(head.weight.shape[0], hidden.device)
    out = torch.empty(n, dtype=torch.float64 if hidden.dtype == torch.float64 else torch.float32, device=hidden.device)
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        z = apply_head_transform(to_compute_dtype(F.linear(hidden[rows], head.weight, head.bias)), head) / temperature
        out[rows] = z.gather(-1, labels[rows, None]).squeeze(-1) - torch.logsumexp(z, -1)
    return out


@dataclass
class HiddenSequences:
    """Both models' LM-head inputs on one batch of sampled sequences (the fused twin of ``SampledSequences``).

    Attributes:
        student_hidden: ``(B, T, H_s)`` hidden states that would give the student's logits at each position.
        teacher_hidden: ``(B, T, H_t)`` the teacher's, same positions.
        labels: ``(B, T)`` sampled tokens aligned with the positions, ``ignore_index`` elsewhere.
        num_items_in_batch: optional global denominator, as in ``SampledSequences``.
    """

    student_hidden: Tensor
    teacher_hidden: Tensor
    labels: Tensor
    num_items_in_batch: int | Tensor | None = None


def fused_f_divergence_loss(
    kind: Literal["kl", "rkl", "js", "tvd"],
    student_head: LinearHead,
    teacher_head: LinearHead,
    *,
    teacher_samples: HiddenSequences | None = None,
    student_samples: HiddenSequences | None = None,
    js_mixture: Literal["stepwise", "exact"] = "stepwise",
    js_beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Literal["sequence", "token"] = "sequence",
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
    backend: Literal["auto", "torch", "triton"] = "auto",
) -> tuple[DivergenceLoss, dict[str, FusedDivergence]]:
    """:func:`fdistill.divergences.f_divergence_loss` computed from hidden states (same arguments and result).

    Each side's reduced term is ``Σ_{b,t} mask·term / count`` as there; the exact JS
    mixture (Eq. 12) takes one extra no-gradient pass per model for the sampled
    tokens' log-probabilities. Also returns each used side's :class:`FusedDivergence`
    (per-position terms, log-normalisers and student entropies for logging).
    """
    details: dict[str, FusedDivergence] = {}

    def side_term(side: str, batch: HiddenSequences) -> Tensor:
        if (
            batch.labels.shape != batch.student_hidden.shape[:-1]
            or batch.labels.shape != batch.teacher_hidden.shape[:-1]
        ):
            raise InputError(
                f"labels {tuple(batch.labels.shape)} do not match hidden states {tuple(batch.student_hidden.shape)} / "
                f"{tuple(batch.teacher_hidden.shape)}; all must cover the same (B, T) positions."
            )
        mask = batch.labels != ignore_index
        hs, ht = batch.student_hidden.flatten(0, 1), batch.teacher_hidden.flatten(0, 1)

        def sampled_logprobs() -> tuple[Tensor, Tensor]:  # (B, T), one no-gradient pass per model
            labels = batch.labels.clamp_min(0).reshape(-1)
            lp_p = fused_token_logprobs(ht, teacher_head, labels, temperature=temperature, chunk_size=chunk_size)
            lp_q = fused_token_logprobs(hs, student_head, labels, temperature=temperature, chunk_size=chunk_size)
            return lp_p.view_as(mask), lp_q.view_as(mask)

        mixture = side_mixture_weight(kind, js_mixture, js_beta, mask, sampled_logprobs, lambda z: z.reshape(-1))
        count = batch.num_items_in_batch
        if count is None:
            count = count_items(mask, reduction).clamp_min(1)
        count = torch.as_tensor(count, device=hs.device).to(
            torch.float64 if hs.dtype == torch.float64 else torch.float32
        )
        details[side] = fused_divergence(
            kind,
            hs,
            student_head,
            ht,
            teacher_head,
            on=side,
            row_weights=1.0 / count,
            mask=mask.reshape(-1),
            mixture_weight=mixture,
            temperature=temperature,
            chunk_size=chunk_size,
            backend=backend,
        )
        return details[side].loss

    out = assemble_loss(
        kind,
        {"teacher": teacher_samples, "student": student_samples},
        side_term,
        js_mixture=js_mixture,
        js_beta=js_beta,
        temperature=temperature,
        needs="hidden states on the {side}'s samples",
    )
    return out, details
