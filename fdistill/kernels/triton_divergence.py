"""Triton kernel: one row of f-DISTILL step-divergence terms and its logit gradient, streaming the vocabulary.

For a chunk of rows the caller has the pre-activations ``lin = h Wᵀ + b`` of both models
(cuBLAS matmuls, in the model's dtype). One program per row makes three passes over
the vocabulary in blocks of ``BLOCK_V``, everything in float32:

1. online log-sum-exp of ``z_s/T`` and ``z_t/T`` (``z = softcap·tanh(scale·lin/softcap)``),
   and ``Σ e^{z_s/T − max}·z_s/T`` for the student entropy;
2. the term and ``C = Σ_v c_v`` (below), with ``a = log q``, ``b = log p``;
3. the gradient ``∂(r·term)/∂z_v = r·(c_v − q_v·C)`` times ``∂z/∂lin``, written over the
   student's ``lin`` buffer (in its dtype), which the caller then multiplies by ``W_s`` and ``h_s``.

The closed forms (every gradient has the shape ``c − q·Σc`` because ``∂q_u/∂z_v = q_u(δ_uv − q_v)``):

=============  =============================  ===================================
term           value                          ``c_v``
=============  =============================  ===================================
kl             ``Σ p (b − a)``                ``−p``
rkl            ``Σ q (a − b)``                ``q (a − b)``
tvd            ``½ Σ |q − p|``                ``½ q sign(q − p)``
js, teacher    ``Σ p (b − log m)``            ``−p u``
js, student    ``Σ q (a − log m)``            ``q (a − log m − u)``
=============  =============================  ===================================

with ``m = w p + (1 − w) q`` formed in log space from the row's mixture logit and
``u = (1 − w) q / m`` (the student's share of the mixture). Terms with a zero weight
(``p = 0`` or ``q = 0``, i.e. ``-inf`` logits) are 0 exactly, as in
:func:`fdistill.divergences.step_divergence`, which the tests compare against.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

KINDS = {"kl": 0, "rkl": 1, "tvd": 2, "js": 3}


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _logits(lin_ptr, offs, in_vocab, scale, softcap, inv_t, SOFTCAP: tl.constexpr):
    """Tempered logits z/T of one block (float32, -inf outside the vocabulary) and tanh' factor."""
    x = tl.load(lin_ptr + offs, mask=in_vocab, other=float("-inf")).to(tl.float32) * scale
    if SOFTCAP:
        th = _tanh(x / softcap)
        x = tl.where(in_vocab, softcap * th, float("-inf"))  # tanh(−∞) = −1: keep padding lanes at −∞
        dz = scale * (1.0 - th * th) * inv_t
    else:
        dz = tl.zeros_like(x) + scale * inv_t
    return x * inv_t, dz


@triton.jit
def _block_logits(
    s_row,
    t_row,
    start,
    cols,
    V,
    s_scale,
    s_softcap,
    t_scale,
    t_softcap,
    inv_t,
    S_SOFTCAP: tl.constexpr,
    T_SOFTCAP: tl.constexpr,
):
    """One vocabulary block of both rows: student z/T and ∂z/∂lin, teacher z/T, and the in-vocabulary mask."""
    offs = start + cols
    in_vocab = offs < V
    zs, dz = _logits(s_row, offs, in_vocab, s_scale, s_softcap, inv_t, S_SOFTCAP)
    zt, _ = _logits(t_row, offs, in_vocab, t_scale, t_softcap, inv_t, T_SOFTCAP)
    return zs, dz, zt, offs, in_vocab


@triton.jit
def _row_block(zs, zt, s_lse, t_lse, log_w, log_1mw, KIND: tl.constexpr, ON_STUDENT: tl.constexpr):
    """Per-vocabulary-entry term contributions, c_v and q of one block."""
    a = zs - s_lse  # log q
    b = zt - t_lse  # log p
    q = tl.exp(a)
    p = tl.exp(b)
    zero = tl.zeros_like(q)
    if KIND == 0:  # kl
        term = tl.where(p > 0, p * (b - a), zero)
        c = -p
    elif KIND == 1:  # rkl
        term = tl.where(q > 0, q * (a - b), zero)
        c = term
    elif KIND == 2:  # tvd
        diff = q - p
        term = 0.5 * tl.abs(diff)
        sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
        c = 0.5 * q * sign
    else:  # js
        u1 = log_w + b
        u2 = log_1mw + a
        hi = tl.maximum(u1, u2)
        hi_safe = tl.where(hi == float("-inf"), 0.0, hi)
        log_m = hi_safe + tl.log(tl.exp(u1 - hi_safe) + tl.exp(u2 - hi_safe))
        m_pos = log_m > float("-inf")
        share = tl.where(m_pos, tl.exp(u2 - tl.where(m_pos, log_m, 0.0)), zero)  # u = (1-w) q / m
        if ON_STUDENT:
            ratio = tl.where(q > 0, a - log_m, zero)
            term = q * ratio
            c = tl.where(q > 0, q * (ratio - share), zero)
        else:
            term = tl.where(p > 0, p * (b - log_m), zero)
            c = -p * share
    return term, c, q


@triton.jit
def _divergence_rows_kernel(
    lin_s_ptr,
    lin_t_ptr,
    stride_s,
    stride_t,
    V,
    mix_ptr,
    weight_ptr,
    terms_ptr,
    s_lse_ptr,
    t_lse_ptr,
    ent_ptr,
    s_scale,
    s_softcap,
    t_scale,
    t_softcap,
    inv_t,
    KIND: tl.constexpr,
    ON_STUDENT: tl.constexpr,
    S_SOFTCAP: tl.constexpr,
    T_SOFTCAP: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = lin_s_ptr + row * stride_s
    t_row = lin_t_ptr + row * stride_t
    cols = tl.arange(0, BLOCK_V)
    neg_inf = float("-inf")

    # pass 1: online log-sum-exp of both models, and Σ e^{z−max}·z for the student entropy
    s_max = neg_inf
    t_max = neg_inf
    s_sum = 0.0
    t_sum = 0.0
    s_dot = 0.0
    for start in range(0, V, BLOCK_V):
        zs, _, zt, _, _ = _block_logits(
            s_row, t_row, start, cols, V, s_scale, s_softcap, t_scale, t_softcap, inv_t, S_SOFTCAP, T_SOFTCAP
        )
        s_new = tl.maximum(s_max, tl.max(zs, 0))
        t_new = tl.maximum(t_max, tl.max(zt, 0))
        s_ref = tl.where(s_new == neg_inf, 0.0, s_new)
        t_ref = tl.where(t_new == neg_inf, 0.0, t_new)
        s_rescale = tl.exp(tl.where(s_max == neg_inf, neg_inf, s_max - s_ref))
        t_rescale = tl.exp(tl.where(t_max == neg_inf, neg_inf, t_max - t_ref))
        es = tl.exp(zs - s_ref)
        s_sum = s_sum * s_rescale + tl.sum(es, 0)
        s_dot = s_dot * s_rescale + tl.sum(tl.where(es > 0, es * zs, 0.0), 0)
        t_sum = t_sum * t_rescale + tl.sum(tl.exp(zt - t_ref), 0)
        s_max = s_new
        t_max = t_new
    s_lse = s_max + tl.log(s_sum)
    t_lse = t_max + tl.log(t_sum)

    z_mix = tl.load(mix_ptr + row).to(tl.float32)
    log_w = tl.minimum(z_mix, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(z_mix)))  # log σ(z)
    log_1mw = tl.minimum(-z_mix, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(z_mix)))  # log σ(−z)
    r = tl.load(weight_ptr + row).to(tl.float32)

    # pass 2: the term and C = Σ c
    term_acc = tl.zeros((BLOCK_V,), tl.float32)
    c_acc = tl.zeros((BLOCK_V,), tl.float32)
    for start in range(0, V, BLOCK_V):
        zs, _, zt, _, in_vocab = _block_logits(
            s_row, t_row, start, cols, V, s_scale, s_softcap, t_scale, t_softcap, inv_t, S_SOFTCAP, T_SOFTCAP
        )
        term, c, _ = _row_block(zs, zt, s_lse, t_lse, log_w, log_1mw, KIND, ON_STUDENT)
        term_acc += tl.where(in_vocab, term, 0.0)
        c_acc += tl.where(in_vocab, c, 0.0)
    total = tl.sum(term_acc, 0)
    c_total = tl.sum(c_acc, 0)

    # pass 3: r·(c − q·C)·∂z/∂lin over the student's buffer
    for start in range(0, V, BLOCK_V):
        zs, dz, zt, offs, in_vocab = _block_logits(
            s_row, t_row, start, cols, V, s_scale, s_softcap, t_scale, t_softcap, inv_t, S_SOFTCAP, T_SOFTCAP
        )
        _, c, q = _row_block(zs, zt, s_lse, t_lse, log_w, log_1mw, KIND, ON_STUDENT)
        grad = r * (c - q * c_total) * dz
        tl.store(s_row + offs, grad.to(lin_s_ptr.dtype.element_ty), mask=in_vocab)

    tl.store(terms_ptr + row, total)
    tl.store(s_lse_ptr + row, s_lse)
    tl.store(t_lse_ptr + row, t_lse)
    tl.store(ent_ptr + row, s_lse - s_dot / s_sum)


def triton_chunk(kind, on, lin_s, lin_t, s_head, t_head, z_mix, weights, temperature, block_v: int = 2048):
    """The Triton counterpart of ``fdistill.kernels.fused._torch_chunk`` (same arguments and outputs).

    ``lin_s`` is overwritten with the gradient and returned as it.
    """
    lin_s = lin_s.contiguous()
    lin_t = lin_t.contiguous()
    rows, vocab = lin_s.shape
    out = [torch.empty(rows, dtype=torch.float32, device=lin_s.device) for _ in range(4)]
    block = min(block_v, triton.next_power_of_2(vocab))
    if rows:
        _divergence_rows_kernel[(rows,)](
            lin_s,
            lin_t,
            lin_s.stride(0),
            lin_t.stride(0),
            vocab,
            z_mix.float().contiguous(),
            weights.float().contiguous(),
            *out,
            float(s_head.scale),
            float(s_head.softcap or 1.0),
            float(t_head.scale),
            float(t_head.softcap or 1.0),
            1.0 / temperature,
            KIND=KINDS[kind],
            ON_STUDENT=on == "student",
            S_SOFTCAP=s_head.softcap is not None,
            T_SOFTCAP=t_head.softcap is not None,
            BLOCK_V=block,
            num_warps=8 if block >= 2048 else 4,
        )
    terms, s_lse, t_lse, ent = out
    return terms, s_lse, t_lse, ent, lin_s
