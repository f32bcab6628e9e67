"""Each prompt read once for every completion set (``fdistill.lm.data.score_shared_prompts``): the same logits,
hidden states and gradients as the forward that repeats the prompt per set, on tiny Llama, GPT-2, BART and T5 models
with left-padded prompts and right-padded completion sets of different lengths; and the models it leaves to that
forward."""

import pytest
import torch
from torch import nn

from fdistill import testing as tiny
from fdistill.lm.data import cat_completions, pad_left, pad_right, score_completions, score_shared_prompts
from fdistill.lm.scoring import score_sets
from tests.tolerances import sum_rtol

ARCHS = ("llama", "gpt2", "bart", "t5")


def batch(sets: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    """Three prompts of 5, 2 and 7 tokens (left-padded) and ``sets`` completion sets of other lengths, one of them
    a single token (right-padded to lengths that differ between sets)."""
    g = torch.Generator().manual_seed(seed)

    def rows(*lengths):
        return [torch.randint(3, tiny.VOCAB, (n,), generator=g).tolist() for n in lengths]

    out = dict(zip(("prompt_ids", "prompt_mask"), pad_left(rows(5, 2, 7), 0)))
    for i, lengths in enumerate([(4, 1, 6), (3, 8, 2), (2, 2, 5)][:sets]):
        out[f"set{i}_ids"], out[f"set{i}_mask"] = pad_right(rows(*lengths), 0)
    return out


def both(model, inputs, sets: int, hidden: bool = False):
    """(repeated-prompt scoring, shared-prompt scoring) of the stacked sets: ``(logits, labels, outputs)`` each."""
    ids, mask = cat_completions([(inputs[f"set{i}_ids"], inputs[f"set{i}_mask"]) for i in range(sets)], 0)
    p_ids, p_mask = inputs["prompt_ids"], inputs["prompt_mask"]
    old = score_completions(
        model, p_ids.repeat(sets, 1), p_mask.repeat(sets, 1), ids, mask, pad_token_id=0, output_hidden_states=hidden
    )
    new = score_shared_prompts(model, p_ids, p_mask, ids, mask, pad_token_id=0, output_hidden_states=hidden)
    return old, new


def close(actual, expected, terms: int, scale: float | None = None):
    """Equal up to another summation order of ``terms`` values of their dtype, relative to ``scale`` (default: the
    largest magnitude in ``expected``)."""
    rtol = sum_rtol(expected.dtype, terms)
    scale = expected.abs().max().item() if scale is None else scale
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sets", [2, 3])
def test_logits_and_hidden_states_equal_the_repeated_prompt_forward(arch, sets):
    model = getattr(tiny, arch)(2, seed=0, init=0.3).eval()
    inputs = batch(sets)
    with torch.no_grad():
        (old_logits, old_labels, old_out), (new_logits, new_labels, new_out) = both(model, inputs, sets, hidden=True)
    assert new_logits.shape == old_logits.shape and torch.equal(new_labels, old_labels)
    close(new_logits, old_logits, terms=32 * 4)
    key = "hidden_states" if arch in ("llama", "gpt2") else "decoder_hidden_states"
    old_hidden, new_hidden = getattr(old_out, key), getattr(new_out, key)
    assert len(new_hidden) == len(old_hidden) == 3
    for old_h, new_h in zip(old_hidden, new_hidden):  # the whole sequence's, as predistill reads them
        assert new_h.shape == old_h.shape
        close(new_h, old_h, terms=32 * 4)
    assert new_out.logits.shape == old_out.logits.shape  # what compute_loss(return_outputs=True) hands on


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_equal_autograd_of_the_repeated_prompt_forward(arch):
    """The loss differentiates through the prompt positions (the cache or encoder output carries the graph)."""
    inputs, weights = batch(2), torch.randn(6, 8, tiny.VOCAB, generator=torch.Generator().manual_seed(3))
    grads = []
    for use in (0, 1):
        model = getattr(tiny, arch)(2, seed=0, init=0.3)
        logits, labels, _ = both(model, inputs, 2)[use]
        loss = (logits.log_softmax(-1) * weights * (labels != -100)[..., None]).sum()
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    old, new = grads
    assert new.keys() == old.keys()
    embedding = next(n for n in old if "emb" in n or "shared" in n or "wte" in n)
    assert old[embedding].abs().sum() > 0  # the prompt tokens' rows get gradient
    scale = max(g.abs().max().item() for g in old.values())  # some are 0 but for rounding (a key's bias)
    for name in old:
        close(new[name], old[name], terms=6 * 16 * tiny.VOCAB, scale=scale)


class Wrapped(nn.Module):
    """A distributed wrapper's shape (DDP, DeepSpeed: the model under ``.module``)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, **kwargs):
        return self.module(**kwargs)


@pytest.mark.parametrize("leave", ["wrapped", "checkpointing", "one set"])
def test_what_cannot_share_the_prompt_is_scored_by_the_repeated_forward(leave):
    """Distributed wrappers expect one forward per backward, gradient checkpointing turns the cache off, and one set
    has nothing to share: the shared path declines (None) before any forward, and score_sets scores as before (one
    set: bit-identical to the forward over ``[prompt | completion]``)."""
    model = tiny.llama(2, seed=0, init=0.3)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    if leave == "checkpointing":
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    elif leave == "wrapped":
        model = Wrapped(model)
    inputs = batch(2)
    names = ["set0"] if leave == "one set" else ["set0", "set1"]
    ids, mask = cat_completions([(inputs[f"{n}_ids"], inputs[f"{n}_mask"]) for n in names], 0)
    assert score_shared_prompts(model, inputs["prompt_ids"], inputs["prompt_mask"], ids, mask, pad_token_id=0) is None
    assert calls == []
    scored, outputs = score_sets(model, inputs, names, pad_token_id=0, is_encoder_decoder=False, shared_vocab_size=None)
    sets = len(names)
    assert calls == [1] and outputs.logits.shape == (3 * sets, ids.shape[1] + 1, tiny.VOCAB)  # the prompts repeated
    if leave == "one set":
        expected, _, _ = score_completions(
            model, inputs["prompt_ids"], inputs["prompt_mask"], ids, mask, pad_token_id=0
        )
        assert torch.equal(scored["set0"].values, expected)


def test_score_sets_reads_each_prompt_once():
    """Two forwards per model whatever the number of sets: the (B, P) prompts, then the (n·B, C) completions."""
    model = tiny.llama(2, seed=0, init=0.3)
    shapes = []
    model.register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    scored, _ = score_sets(
        model, batch(3), ["set0", "set1", "set2"], pad_token_id=0, is_encoder_decoder=False, shared_vocab_size=None
    )
    assert shapes == [(3, 7), (9, 8)]
    assert [s.values.shape for s in scored.values()] == [(3, 8, tiny.VOCAB)] * 3


@pytest.mark.parametrize("arch", ARCHS)
def test_the_fused_divergence_reads_each_prompt_once_with_the_same_head_inputs(arch, monkeypatch):
    """With the fused divergence the LM head only records its inputs: the shared path joins the prompt's last one and
    the completions' as the logits would be joined (the same ``(n·B, C, H)`` predictors as the repeated forward, to
    float rounding), never makes the ``(n·B, C, V)`` logits, and gradients flow through the prompt positions."""
    from fdistill.kernels import head_logits, output_head
    from fdistill.lm import scoring

    inputs, names = batch(2), ["set0", "set1"]
    weights = torch.randn(3, 8, tiny.VOCAB, generator=torch.Generator().manual_seed(5))
    how = dict(pad_token_id=0, is_encoder_decoder=arch in ("bart", "t5"), shared_vocab_size=None, fused=True)
    runs = []
    for shared in (False, True):
        model = getattr(tiny, arch)(2, seed=0, init=0.3)
        forwards = []
        model.register_forward_hook(lambda *_, calls=forwards: calls.append(1))
        with monkeypatch.context() as m:
            if not shared:
                m.setattr(scoring, "score_shared_prompts", lambda *a, **k: None)
            scored, outputs = score_sets(model, inputs, names, **how)
        head = output_head(model)
        logits = [head_logits(head, scored[n].values) for n in names]
        loss = sum(
            (lg.log_softmax(-1) * weights * (scored[n].labels != -100)[..., None]).sum() for lg, n in zip(logits, names)
        )
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        runs.append((scored, logits, grads, forwards, outputs))
    (old, old_logits, old_grads, old_forwards, _), (new, new_logits, new_grads, new_forwards, new_out) = runs
    decoder_only = arch in ("llama", "gpt2")
    assert len(old_forwards) == 1 and len(new_forwards) == (2 if decoder_only else 1)
    if decoder_only:
        assert new_out.logits.stride()[-1] == 0  # the placeholder's zeros: no (n·B, C, V) tensor was made
    for n, a, b in zip(names, old_logits, new_logits):
        assert new[n].values.shape == old[n].values.shape and torch.equal(new[n].labels, old[n].labels)
        close(new[n].values, old[n].values, terms=32 * 4)
        close(b, a, terms=32 * 4)
    assert new_grads.keys() == old_grads.keys()
    scale = max(g.abs().max().item() for g in old_grads.values())
    for name in old_grads:
        close(new_grads[name], old_grads[name], terms=6 * 16 * tiny.VOCAB, scale=scale)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("vocab", [None, tiny.VOCAB - 3])
def test_a_checked_head_gives_each_set_its_own_logits(arch, vocab):
    """With the model's checked LM head (``split_head``) the sets' logits are one head product split per set:
    contiguous chunks whose backward is one split (a cat of the sets' gradients), not slices of the model's joined
    ``(n·B, C + 1, V)`` logits (whose backward zero-fills a full-size gradient per slice); equal to the joined
    path's logits and gradients to float rounding; with ``shared_vocab_size`` the head's first rows only."""
    from fdistill.lm.scoring import split_head

    inputs, names = batch(2), ["set0", "set1"]
    weights = torch.randn(3, 8, vocab or tiny.VOCAB, generator=torch.Generator().manual_seed(5))
    how = dict(pad_token_id=0, is_encoder_decoder=arch in ("bart", "t5"), shared_vocab_size=vocab)
    runs = []
    for split in (False, True):
        model = getattr(tiny, arch)(2, seed=0, init=0.3)
        head = split_head(model, inputs, "set0", 0, how["is_encoder_decoder"]) if split else None
        assert split is (head is not None)
        scored, _ = score_sets(model, inputs, names, **how, head=head)
        loss = sum((scored[n].values.log_softmax(-1) * weights[:, : scored[n].values.shape[1]]).sum() for n in names)
        loss.backward()
        runs.append((scored, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (old, old_grads), (new, new_grads) = runs
    for n in names:
        values = new[n].values
        assert values.shape == old[n].values.shape == (3, values.shape[1], vocab or tiny.VOCAB)
        assert values.is_contiguous() and values.grad_fn.name() == "SplitBackward0"  # a chunk, not a slice
        assert old[n].values.grad_fn.name() != "SplitBackward0"
        assert torch.equal(new[n].labels, old[n].labels)
        close(values, old[n].values, terms=32 * 4)
    assert new_grads.keys() == old_grads.keys()
    scale = max(g.abs().max().item() for g in old_grads.values())
    for name in old_grads:
        close(new_grads[name], old_grads[name], terms=6 * 16 * tiny.VOCAB, scale=scale)


def test_a_head_that_does_not_rebuild_the_logits_is_not_split():
    """A model that post-processes its logits in a way the head does not know keeps the joined path (None)."""
    from fdistill.lm.scoring import split_head

    model = tiny.llama(2, seed=0, init=0.3)
    forward = model.forward

    def doubled(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = out.logits * 2.0
        return out

    model.forward = doubled
    assert split_head(model, batch(2), "set0", 0, False) is None
    assert split_head(tiny.llama(2, seed=0, init=0.3), batch(2), "set0", 0, False) is not None
