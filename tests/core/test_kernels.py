"""fdistill.kernels: fused divergences from hidden states equal step_divergence on materialised logits.

The torch backend is checked against the float64 brute force (the logits built in
full and fed to ``fdistill.divergences.step_divergence``), values and gradients; the
Triton kernel is checked against the torch backend — on CPU through Triton's
interpreter (``TRITON_INTERPRET=1``), on CUDA natively (``-m gpu``).
"""

from __future__ import annotations

import os

import pytest
import torch

from fdistill.divergences import DIVERGENCES, SIDES, MixtureLogit, SampledSequences, f_divergence_loss, step_divergence
from fdistill.kernels import (
    HiddenSequences,
    LinearHead,
    capture_head_inputs,
    check_head,
    fused_divergence,
    fused_f_divergence_loss,
    fused_token_logprobs,
    head_logits,
    output_head,
)

N, H_S, H_T, V = 23, 6, 10, 97


def make_problem(dtype=torch.float64, *, softcap=None, scale=1.0, banned=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(N, H_S, generator=g, dtype=dtype).requires_grad_()
    ht = torch.randn(N, H_T, generator=g, dtype=dtype)
    ws = (torch.randn(V, H_S, generator=g, dtype=dtype) * 0.7).requires_grad_()
    bs = torch.randn(V, generator=g, dtype=dtype)
    bt = torch.randn(V, generator=g, dtype=dtype)
    for b in (bs, bt):
        b[list(banned)] = -torch.inf
    bs.requires_grad_()
    wt = torch.randn(V, H_T, generator=g, dtype=dtype)
    student = LinearHead(ws, bs, scale=scale, softcap=softcap)
    teacher = LinearHead(wt, bt, scale=scale, softcap=softcap)
    return hs, ht, student, teacher


def mixtures(kind):
    g = torch.Generator().manual_seed(1)
    if kind != "js":
        return [None]
    return [None, 0.3, torch.rand(N, generator=g, dtype=torch.float64), MixtureLogit(torch.randn(N, generator=g) * 30)]


def reference(kind, on, hs, ht, student, teacher, *, mixture, temperature, weights, mask):
    """Σ r·terms from the full logits (the naive path), and the per-row terms."""
    terms = step_divergence(
        kind, head_logits(student, hs), head_logits(teacher, ht), on=on, mixture_weight=mixture, temperature=temperature
    )
    terms = torch.where(mask, terms, torch.zeros_like(terms))
    return (terms * weights).sum(), terms


CASES = [(k, on, m) for k in DIVERGENCES for on in SIDES for m in range(len(mixtures(k)))]


@pytest.mark.parametrize("kind,on,mix", CASES)
@pytest.mark.parametrize("head", ["plain", "scaled-softcapped"])
def test_torch_backend_matches_float64_reference(kind, on, mix, head):
    softcap, scale = (None, 1.0) if head == "plain" else (3.0, 1.7)
    hs, ht, student, teacher = make_problem(softcap=softcap, scale=scale)
    mixture = mixtures(kind)[mix]
    weights = torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mask = torch.rand(N, generator=torch.Generator().manual_seed(3)) > 0.25
    out = fused_divergence(
        kind,
        hs,
        student,
        ht,
        teacher,
        on=on,
        row_weights=weights,
        mask=mask,
        mixture_weight=mixture,
        temperature=1.6,
        chunk_size=4,
        backend="torch",
    )
    loss, terms = reference(
        kind, on, hs, ht, student, teacher, mixture=mixture, temperature=1.6, weights=weights, mask=mask
    )
    assert out.terms.dtype == torch.float64
    torch.testing.assert_close(out.terms, terms, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.loss, loss, rtol=1e-10, atol=1e-12)
    params = [hs, student.weight, student.bias]
    got = torch.autograd.grad(out.loss, params)
    want = torch.autograd.grad(loss, params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    assert (out.terms[mask] > -1e-12).all() and out.terms[mask].sum() > 0  # divergences: non-negative, not all 0


@pytest.mark.parametrize(
    "kind,js_mixture",
    [("kl", "stepwise"), ("rkl", "stepwise"), ("tvd", "stepwise"), ("js", "stepwise"), ("js", "exact")],
)
@pytest.mark.parametrize("reduction", ["sequence", "token"])
def test_fused_objective_equals_f_divergence_loss(kind, js_mixture, reduction):
    """The whole objective (both sides, reductions, exact JS mixture over prefixes) = the logits version."""
    hs, ht, student, teacher = make_problem(softcap=6.0)
    g = torch.Generator().manual_seed(8)
    sides = {}
    for i, side in enumerate(SIDES):
        labels = torch.randint(0, V, (N,), generator=g).reshape(1, N).repeat(2, 1)[:, : N - 1]  # (2, 22)
        labels[0, 15:] = -100  # a shorter first sequence
        labels[1, :2] = -100
        h_s = hs[1:].reshape(1, N - 1, H_S).repeat(2, 1, 1) * (1 + i)
        h_t = ht[1:].reshape(1, N - 1, H_T).repeat(2, 1, 1) - i
        sides[side] = (h_s, h_t, labels)
    kwargs = dict(js_mixture=js_mixture, js_beta=0.3, temperature=1.3, reduction=reduction)
    fused, details = fused_f_divergence_loss(
        kind,
        student,
        teacher,
        chunk_size=5,
        **{f"{s}_samples": HiddenSequences(*sides[s], num_items_in_batch=None) for s in SIDES},
        **kwargs,
    )
    naive = f_divergence_loss(
        kind,
        **{
            f"{s}_samples": SampledSequences(
                head_logits(student, sides[s][0]), head_logits(teacher, sides[s][1]), sides[s][2]
            )
            for s in SIDES
        },
        **kwargs,
    )
    torch.testing.assert_close(fused.loss, naive.loss, rtol=1e-10, atol=1e-12)
    for a, b in ((fused.teacher_term, naive.teacher_term), (fused.student_term, naive.student_term)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    got = torch.autograd.grad(fused.loss, [hs, student.weight, student.bias], retain_graph=True)
    want = torch.autograd.grad(naive.loss, [hs, student.weight, student.bias])
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
    assert set(details) == {s for s in SIDES if getattr(naive, f"{s}_term") is not None}


def test_side_outputs_lse_entropy_and_token_logprobs():
    hs, ht, student, teacher = make_problem(softcap=4.0)
    out = fused_divergence("tvd", hs, student, ht, teacher, on="teacher", temperature=2.0, chunk_size=5)
    zs, zt = head_logits(student, hs) / 2.0, head_logits(teacher, ht) / 2.0
    torch.testing.assert_close(out.student_lse, torch.logsumexp(zs, -1))
    torch.testing.assert_close(out.teacher_lse, torch.logsumexp(zt, -1))
    log_q = torch.log_softmax(zs, -1)
    torch.testing.assert_close(out.student_entropy, -(log_q.exp() * log_q).sum(-1))
    labels = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(0))
    lp = fused_token_logprobs(ht, teacher, labels, temperature=2.0, chunk_size=7)
    torch.testing.assert_close(lp, torch.log_softmax(zt, -1).gather(-1, labels[:, None]).squeeze(-1))


def test_masked_rows_are_never_read_and_get_zero_gradient():
    hs, ht, student, teacher = make_problem()
    mask = torch.ones(N, dtype=torch.bool)
    mask[[0, 5, 6, 22]] = False
    poisoned = hs.detach().clone()
    poisoned[~mask] = torch.nan
    poisoned.requires_grad_()
    for kind in DIVERGENCES:
        out = fused_divergence(kind, poisoned, student, ht, teacher, on="student", mask=mask, chunk_size=3)
        assert (out.terms[~mask] == 0).all() and torch.isfinite(out.terms).all()
        (grad,) = torch.autograd.grad(out.loss, [poisoned])
        assert (grad[~mask] == 0).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_minus_inf_logits_give_no_nan(kind):
    hs, ht, student, teacher = make_problem(banned=(0, 3, 50, 96))
    for on in SIDES:
        out = fused_divergence(kind, hs, student, ht, teacher, on=on, chunk_size=6)
        grads = torch.autograd.grad(out.loss, [hs, student.weight, student.bias])
        assert torch.isfinite(out.terms).all() and all(torch.isfinite(g).all() for g in grads)
        assert (grads[2][[0, 3, 50, 96]] == 0).all()  # banned tokens get no bias gradient
        loss, _ = reference(
            kind,
            on,
            hs,
            ht,
            student,
            teacher,
            mixture=None,
            temperature=1.0,
            weights=torch.ones(N, dtype=torch.float64),
            mask=torch.ones(N, dtype=torch.bool),
        )
        torch.testing.assert_close(out.loss, loss, rtol=1e-10, atol=1e-12)


def test_bfloat16_inputs_within_tolerance_of_float32():
    hs, ht, student, teacher = make_problem(torch.float32)
    lowp = [t.detach().bfloat16().requires_grad_(t.requires_grad) for t in (hs, ht, student.weight, teacher.weight)]
    s16 = LinearHead(lowp[2], None)
    t16 = LinearHead(lowp[3], None)
    s32 = LinearHead(lowp[2].detach().float().requires_grad_(), None)
    t32 = LinearHead(lowp[3].detach().float(), None)
    h32 = lowp[0].detach().float().requires_grad_()
    for kind in DIVERGENCES:
        a = fused_divergence(kind, lowp[0], s16, lowp[1], t16, on="student", chunk_size=8)
        b = fused_divergence(kind, h32, s32, lowp[1].float(), t32, on="student", chunk_size=8)
        assert a.terms.dtype == torch.float32  # accumulation in float32
        torch.testing.assert_close(a.terms, b.terms, rtol=3e-2, atol=3e-3)
        ga = torch.autograd.grad(a.loss, [lowp[0], lowp[2]])
        gb = torch.autograd.grad(b.loss, [h32, s32.weight])
        assert ga[0].dtype == torch.bfloat16 and ga[1].dtype == torch.bfloat16
        for x, y in zip(ga, gb):
            assert (x.float() - y).norm() / y.norm() < 2e-2


def test_errors_name_the_problem():
    hs, ht, student, teacher = make_problem()
    with pytest.raises(ValueError, match="unknown divergence"):
        fused_divergence("hellinger", hs, student, ht, teacher, on="teacher")
    with pytest.raises(ValueError, match="vocabulary"):
        fused_divergence("kl", hs, student, ht, LinearHead(teacher.weight[:-1]), on="teacher")
    with pytest.raises(ValueError, match="hidden size"):
        fused_divergence("kl", hs, student, ht[:, :4], teacher, on="teacher")
    with pytest.raises(ValueError, match="mixture_weight"):
        fused_divergence("js", hs, student, ht, teacher, on="teacher", mixture_weight=1.5)
    with pytest.raises(ValueError, match="CUDA"):
        if os.environ.get("TRITON_INTERPRET") == "1":
            os.environ["TRITON_INTERPRET"] = "0"
            try:
                fused_divergence("kl", hs, student, ht, teacher, on="teacher", backend="triton")
            finally:
                os.environ["TRITON_INTERPRET"] = "1"
        else:
            fused_divergence("kl", hs, student, ht, teacher, on="teacher", backend="triton")


# ----------------------------------------------------------------------------- heads of real models


def tiny_llama(tied: bool, seed: int, hidden=32, softcap=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=hidden,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("tied", [True, False])
def test_model_gradients_equal_the_naive_loss(tied):
    """Through a real model (tied embeddings or not): fused loss and every parameter's gradient = naive ones."""
    student, teacher = tiny_llama(tied, 0), tiny_llama(False, 1, hidden=48)
    student.double(), teacher.double()
    ids = torch.randint(0, V, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.rand(3, 9, generator=torch.Generator().manual_seed(1)) > 0.2
    naive = step_divergence("js", student(ids).logits, teacher(ids).logits, on="student", mixture_weight=0.4)
    naive_loss = naive[mask].sum() / 3
    want = torch.autograd.grad(naive_loss, list(student.parameters()))
    with capture_head_inputs(student) as hs_list:
        out_logits = student(ids).logits
    with capture_head_inputs(teacher) as ht_list, torch.no_grad():
        teacher(ids)
    assert out_logits.stride()[-1] == 0  # the placeholder returned no storage
    out = fused_divergence(
        "js",
        hs_list[0].flatten(0, 1),
        output_head(student),
        ht_list[0].flatten(0, 1),
        output_head(teacher),
        on="student",
        mixture_weight=0.4,
        row_weights=1 / 3,
        mask=mask.flatten(),
        chunk_size=5,
    )
    got = torch.autograd.grad(out.loss, list(student.parameters()))
    torch.testing.assert_close(out.loss, naive_loss, rtol=1e-10, atol=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)
    assert student.get_output_embeddings().weight.shape == (V, 32)  # restored after the block


def test_peft_student_and_check_head():
    peft = pytest.importorskip("peft")
    student = peft.get_peft_model(tiny_llama(True, 0), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(0))
    check_head(student, {"input_ids": ids})  # passes: plain linear head
    head = output_head(student)
    assert head.weight is student.get_base_model().model.embed_tokens.weight  # tied
    teacher = tiny_llama(False, 1)
    with capture_head_inputs(student) as hs:
        student(input_ids=ids)
    with capture_head_inputs(teacher) as ht, torch.no_grad():
        teacher(input_ids=ids)
    out = fused_divergence("rkl", hs[0].flatten(0, 1), head, ht[0].flatten(0, 1), output_head(teacher), on="student")
    out.loss.backward()
    lora = [p for n, p in student.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora) and any(p.grad.abs().sum() > 0 for p in lora)
    assert head.weight.grad is None  # frozen by PEFT: no weight gradient computed

    class Odd(torch.nn.Module):  # an architecture that post-processes logits differently
        def __init__(self, model):
            super().__init__()
            self.inner = model
            self.config = model.config

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def set_output_embeddings(self, m):
            self.inner.set_output_embeddings(m)

        def forward(self, **kw):
            out = self.inner(**kw)
            out.logits = out.logits * 2 + 1
            return out

    with pytest.raises(ValueError, match="fused_divergence=False"):
        check_head(Odd(teacher), {"input_ids": ids})

    from transformers import LlamaConfig, LlamaForCausalLM

    dropout = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            attention_dropout=0.5,
        )
    )
    dropout.train()
    state = torch.random.get_rng_state()
    check_head(dropout, {"input_ids": ids})  # a training model with dropout: checked without randomness
    assert dropout.training and torch.equal(torch.random.get_rng_state(), state)


# ----------------------------------------------------------------------------- the Triton kernel


def _triton_kernel_module():
    pytest.importorskip("triton")
    from fdistill.kernels import triton_divergence

    return triton_divergence


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_triton_kernel_matches_torch_backend(kind):
    """Interpreted on CPU (CI), compiled on CUDA: values, side outputs and gradients equal the torch backend's."""
    _triton_kernel_module()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for softcap, banned in ((None, (2, 40)), (3.0, ())):
        hs, ht, student, teacher = make_problem(torch.float32, softcap=softcap, scale=1.3, banned=banned, seed=4)
        hs = hs.detach().to(device).requires_grad_()
        ht = ht.to(device)
        student = LinearHead(
            student.weight.detach().to(device).requires_grad_(),
            student.bias.detach().to(device).requires_grad_(),
            student.scale,
            student.softcap,
        )
        teacher = LinearHead(teacher.weight.to(device), teacher.bias.to(device), teacher.scale, teacher.softcap)
        mask = torch.rand(N, generator=torch.Generator().manual_seed(5)).to(device) > 0.2
        weights = torch.rand(N, generator=torch.Generator().manual_seed(6)).to(device)
        for on in SIDES:
            mixture = MixtureLogit(torch.randn(N, generator=torch.Generator().manual_seed(7)).to(device) * 3)
            results = []
            for backend in ("torch", "triton"):
                out = fused_divergence(
                    kind,
                    hs,
                    student,
                    ht,
                    teacher,
                    on=on,
                    row_weights=weights,
                    mask=mask,
                    mixture_weight=mixture,
                    temperature=1.4,
                    chunk_size=7,
                    backend=backend,
                )
                results.append((out, torch.autograd.grad(out.loss, [hs, student.weight, student.bias])))
            (a, ga), (b, gb) = results
            for x, y in (
                (a.terms, b.terms),
                (a.student_lse, b.student_lse),
                (a.teacher_lse, b.teacher_lse),
                (a.student_entropy, b.student_entropy),
            ):
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)
            for x, y in zip(ga, gb):
                assert torch.isfinite(y).all()
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", DIVERGENCES)
def test_triton_bfloat16_on_gpu_matches_float32_reference(kind):
    g = torch.Generator(device="cuda").manual_seed(0)
    n, hs_dim, ht_dim, vocab = 512, 256, 384, 32_000
    hs = (torch.randn(n, hs_dim, device="cuda", generator=g)).bfloat16().requires_grad_()
    ht = torch.randn(n, ht_dim, device="cuda", generator=g).bfloat16()
    ws = (torch.randn(vocab, hs_dim, device="cuda", generator=g) * 0.05).bfloat16().requires_grad_()
    wt = (torch.randn(vocab, ht_dim, device="cuda", generator=g) * 0.05).bfloat16()
    for on in SIDES:
        out = fused_divergence(kind, hs, LinearHead(ws), ht, LinearHead(wt), on=on, backend="triton")
        got = torch.autograd.grad(out.loss, [hs, ws])
        h32, w32 = hs.detach().float().requires_grad_(), ws.detach().float().requires_grad_()
        ref = step_divergence(kind, h32 @ w32.T, ht.float() @ wt.float().T, on=on)
        want = torch.autograd.grad(ref.sum(), [h32, w32])
        assert (out.terms - ref.detach()).norm() / ref.norm() < 1e-2
        for x, y in zip(got, want):
            assert (x.float() - y).norm() / y.norm() < 2e-2


def test_auto_backend_self_check_falls_back_with_a_warning(monkeypatch):
    """backend='auto' uses the Triton kernel on CUDA only after it compiled and matched the torch backend once."""
    tri = _triton_kernel_module()
    from fdistill.kernels.fused import TRITON_SELF_CHECK

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    TRITON_SELF_CHECK.clear()
    try:
        assert TRITON_SELF_CHECK(device) is True  # interpreted on CPU, compiled on CUDA

        def broken(*args, **kwargs):
            raise RuntimeError("no kernel for this GPU")

        TRITON_SELF_CHECK.clear()
        monkeypatch.setattr(tri, "triton_chunk", broken)
        with pytest.warns(UserWarning, match="no kernel for this GPU"):
            assert TRITON_SELF_CHECK(device) is False
        assert TRITON_SELF_CHECK(device) is False  # decided once per device
    finally:
        TRITON_SELF_CHECK.clear()  # no verdict of this test's broken kernel outlives it


def test_self_check_verdicts_are_kept_per_device_and_cleared():
    """The module's one cache is an explicit object: one check per device, forgotten by clear() (no monkeypatching)."""
    from fdistill.kernels.fused import TRITON_SELF_CHECK, TritonSelfCheck

    checked = []
    checks = TritonSelfCheck(lambda device: checked.append(str(device)) or device.index != 1)
    assert checks(torch.device("cuda:0")) is True and checks(torch.device("cuda:1")) is False
    assert checks(torch.device("cuda:0")) is True and checks(torch.device("cuda:1")) is False
    assert checked == ["cuda:0", "cuda:1"] and checks.verdicts() == {"cuda:0": True, "cuda:1": False}
    checks.clear()
    assert checks.verdicts() == {} and checks(torch.device("cuda:1")) is False
    assert checked == ["cuda:0", "cuda:1", "cuda:1"]
    assert isinstance(TRITON_SELF_CHECK, TritonSelfCheck)  # what backend="auto" consults


@pytest.mark.gpu
def test_half_accumulation_is_decided_per_call_and_remembers_no_failure(monkeypatch):
    from fdistill.kernels import fused

    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(64, 128, device="cuda", generator=g).bfloat16()
    b = torch.randn(128, 32, device="cuda", generator=g).bfloat16()
    want = a.float() @ b.float()
    addmm, tried = torch.addmm, []

    def fails_once(*args, **kwargs):
        tried.append(kwargs.get("out_dtype"))
        if len(tried) == 1:
            raise RuntimeError("no float32-output overload here")
        return addmm(*args, **kwargs)

    monkeypatch.setattr(torch, "addmm", fails_once)
    for _ in range(2):
        acc = torch.zeros(64, 32, device="cuda")
        fused._accumulate_product(acc, a, b)  # the first call falls back to upcasting
        torch.testing.assert_close(acc, want, rtol=1e-3, atol=1e-3)
    assert tried == [torch.float32, torch.float32]  # the second call tried the float32-output path again


def test_no_gradient_work_under_no_grad_and_one_backward_only(monkeypatch):
    from fdistill.kernels import fused

    hs, ht, student, teacher = make_problem()
    calls = []
    original = fused._accumulate_product
    monkeypatch.setattr(fused, "_accumulate_product", lambda *a: (calls.append(1), original(*a)))
    with torch.no_grad():  # evaluation: values only, no weight-gradient accumulation
        out = fused_divergence("tvd", hs, student, ht, teacher, on="teacher", chunk_size=5)
    assert calls == [] and out.loss.grad_fn is None and out.terms.sum() > 0
    out = fused_divergence("tvd", hs, student, ht, teacher, on="teacher", chunk_size=5)
    assert len(calls) == 5  # one weight-gradient product per chunk (23 rows / 5)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        out.loss.backward()
