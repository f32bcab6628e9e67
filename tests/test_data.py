"""Batches: completion masks with pad == eos, prompt forms (text, chat messages, ids), padding sides."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fdistill import testing as tiny
from fdistill.errors import InputError
from fdistill.lm.data import DistillCollator, cat_completions, completion_mask

_TOK = tiny.tokenizer()


def test_completion_mask_keeps_the_first_eos_when_pad_is_eos():
    eos = 2
    rows = torch.tensor([[5, 6, eos, eos, eos], [5, 6, 7, 8, 9], [eos, eos, eos, eos, eos]])
    mask = completion_mask(rows, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert completion_mask(rows, [7, eos]).tolist()[1] == [1, 1, 1, 0, 0]  # several EOS ids


def test_prompts_as_text_messages_or_ids_and_padding_sides():
    tok = tiny.tokenizer()
    chat = DistillCollator(tok, is_encoder_decoder=False, use_chat_template=True, completions={"teacher": "t"})
    batch = chat(
        [
            {"prompt": "the cat", "t": [5, 6, 2]},
            {"prompt": [{"role": "user", "content": "a big red dog"}], "t": "sat on the mat"},
            {"prompt": [4, 5], "t": [7]},
        ]
    )
    text_ids = tok.apply_chat_template(
        [{"role": "user", "content": "the cat"}], add_generation_prompt=True, tokenize=True
    )
    text_ids = text_ids["input_ids"] if hasattr(text_ids, "keys") else text_ids
    assert batch["prompt_ids"][0][batch["prompt_mask"][0]].tolist() == list(text_ids)
    assert batch["prompt_mask"][:, -1].all()  # decoder-only prompts are left-padded
    assert batch["prompt_ids"][2][batch["prompt_mask"][2]].tolist() == [4, 5]
    assert batch["teacher_ids"][1][batch["teacher_mask"][1]].tolist() == tok(
        "sat on the mat", add_special_tokens=False
    )["input_ids"] + [2]
    assert batch["teacher_mask"].sum(-1).tolist() == [3, 5, 1]
    enc = DistillCollator(tok, is_encoder_decoder=True)([{"prompt": "the cat"}, {"prompt": "a big red dog sat"}])
    assert enc["prompt_mask"][:, 0].all()  # encoder inputs are right-padded


def test_cat_completions_pads_to_a_common_length():
    a = (torch.tensor([[1, 2]]), torch.tensor([[True, True]]))
    b = (torch.tensor([[3, 4, 5]]), torch.tensor([[True, True, False]]))
    ids, mask = cat_completions([a, b], pad_id=0)
    assert ids.tolist() == [[1, 2, 0], [3, 4, 5]] and mask.tolist() == [[True, True, False], [True, True, False]]


def test_the_collator_names_the_row_and_column_of_an_unusable_prompt_or_target():
    import pytest

    from fdistill.errors import InputError

    collator = DistillCollator(tiny.tokenizer(), is_encoder_decoder=False, completions={"teacher": "t"})
    good = {"prompt": "the cat", "t": [5, 2]}
    cases = [
        ({"prompt": None, "t": [5]}, "prompt column 'prompt', row 1: None is missing"),
        ({"prompt": 7, "t": [5]}, "row 1: 7 is a number, not text"),
        ({"prompt": "", "t": [5]}, "row 1: '' is blank text"),
        ({"prompt": [{"text": "hi"}], "t": [5]}, "chat messages without 'role' and 'content'"),
        ({"prompt": [4, "x"], "t": [5]}, "neither token ids"),
        ({"prompt": "the dog", "t": "[5, 6, 2]"}, "column 't', row 1: '\\[5, 6, 2\\]' is token ids stored as text"),
        ({"prompt": "the dog", "t": None}, "column 't', row 1: None is neither text nor a list of token ids"),
        ({"prompt": "the dog", "t": [5, 2.0]}, "neither text nor a list of token ids"),
    ]
    for bad, fragment in cases:
        with pytest.raises(InputError, match=fragment):
            collator([good, bad])
    assert (
        collator([good, {"prompt": [4, 5], "t": "sat on the mat"}])["teacher_mask"].sum().item() == 2 + 5
    )  # text targets get EOS


# A value a data file can put in a column: text, numbers, None, token ids, chat messages, nested junk.
_CELL = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True), st.text(max_size=12)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["role", "content", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.fixed_dictionaries({"prompt": _CELL, "t": _CELL}), min_size=1, max_size=3), enc_dec=st.booleans()
)
def test_any_cells_give_a_batch_or_one_input_error(rows, enc_dec):
    """Property: whatever the cells hold, the collator returns padded tensors or raises one InputError naming the
    column — never a TypeError, IndexError or tokenizer exception from deep inside."""
    collator = DistillCollator(
        _TOK, is_encoder_decoder=enc_dec, completions={"teacher": "t"}, max_target_length=8, vocab_size=len(_TOK)
    )
    try:
        batch = collator(rows)
    except InputError as error:
        assert "'prompt'" in str(error) or "'t'" in str(error), error
        return
    assert batch["prompt_ids"].shape[0] == len(rows) and batch["teacher_mask"].dtype == torch.bool
    assert batch["prompt_ids"].max() < len(_TOK) and batch["teacher_ids"].max() < len(_TOK)  # embeddable ids only
