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


# ----------------------------------------------------------------------------- chat data (issue 22, item 5)

_CHATS = [
    [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat on the mat"}],
    [
        {"role": "system", "content": "be very happy"},
        {"role": "user", "content": "a dog"},
        {"role": "assistant", "content": "ran"},
        {"role": "user", "content": "then"},
        {"role": "assistant", "content": "it was sad"},
    ],
]


def _rendered(messages) -> list[int]:
    ids = _TOK.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_a_conversation_ending_with_the_answer_becomes_prompt_and_reference():
    """Found: the assistant's last turn silently became part of the prompt. Now the turns before it are the prompt,
    rendered through the chat template with the generation prompt, and its content is the reference — from a
    `messages` column (TRL's conversational format) or a prompt column that holds conversations."""
    from datasets import Dataset

    from fdistill.lm.loading import prepare_prompts

    for data, column in [
        (Dataset.from_dict({"messages": _CHATS}), "prompt"),
        (Dataset.from_dict({"messages": _CHATS}), "messages"),
        (Dataset.from_dict({"prompt": _CHATS, "id": [0, 1]}), "prompt"),
    ]:
        prepared = prepare_prompts(data, prompt_column=column)
        assert prepared["reference"] == ["sat on the mat", "it was sad"]
        assert prepared[column] == [c[:-1] for c in _CHATS]
        collator = DistillCollator(_TOK, is_encoder_decoder=False, prompt_column=column, completions={"r": "reference"})
        batch = collator([prepared[i] for i in range(2)])
        for row, chat in enumerate(_CHATS):
            prompt = batch["prompt_ids"][row][batch["prompt_mask"][row]].tolist()
            assert prompt == _rendered(chat[:-1]) and prompt[-1] == _TOK.bos_token_id  # the generation prompt
            answer = _TOK(chat[-1]["content"], add_special_tokens=False)["input_ids"]
            assert batch["r_ids"][row][batch["r_mask"][row]].tolist() == answer + [_TOK.eos_token_id]
            assert _TOK.decode(prompt).count(chat[-1]["content"]) == 0  # the answer is not in the prompt
    untouched = Dataset.from_dict({"prompt": [c[:-1] for c in _CHATS]})  # prompts only: nothing to split
    assert prepare_prompts(untouched, prompt_column="prompt")["prompt"] == untouched["prompt"]


def test_unusable_chat_data_is_one_input_error_naming_the_rows():
    """Fault injection: every way chat data can be wrong is refused once, before any work, naming rows and fix —
    through the data preparation (the commands) and through the collator (the library API)."""
    import pytest
    from datasets import Dataset

    from fdistill.lm.loading import prepare_prompts

    user = {"role": "user", "content": "the cat"}
    answer = {"role": "assistant", "content": "sat"}
    cases = [
        (
            {"messages": [[user, answer], [user], [user, answer]]},
            "2 conversations end with the assistant's answer (the reference) and 1 do not (row 1)",
        ),
        ({"messages": [[user, answer], [answer]]}, "row 1: only the assistant's answer"),
        ({"prompt": [[user, answer]], "reference": ["x"]}, "the data has that column already"),
        ({"prompt": [[{"role": "user", "content": " \x00\t"}]]}, "chat messages with no text"),
        ({"prompt": [[{"role": "user", "content": "\u200b"}, answer]]}, "chat messages with no text"),
        ({"prompt": ["the cat", "\x00\x01", " \t\n", "\u200b\u2060"]}, "row 1: '\\\\x00\\\\x01' is blank text"),
    ]
    for columns, fragment in cases:
        with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            prepare_prompts(Dataset.from_dict(columns), prompt_column="prompt")
    collator = DistillCollator(_TOK, is_encoder_decoder=False)
    with pytest.raises(InputError, match="end with the assistant's answer, which would become part of the prompt"):
        collator([{"prompt": [user, answer]}])  # library callers that skip prepare_prompts
    no_template = tiny.tokenizer()
    no_template.chat_template = None
    with pytest.raises(InputError, match="has no chat template"):
        DistillCollator(no_template, is_encoder_decoder=False)([{"prompt": [user]}])


def test_prompts_of_control_characters_are_refused_with_every_row_named():
    import pytest

    from fdistill.lm.data import check_prompts

    values = ["the cat", "\x00\x01", " \t\n", "a dog", "\u200b", "\x1b\x7f"]
    with pytest.raises(InputError) as error:
        check_prompts(values, "prompt")
    assert "row 1:" in str(error.value) and "4 unusable prompts in all: rows 1, 2, 4, 5" in str(error.value)
    with pytest.raises(InputError, match="rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more"):
        check_prompts([""] * 12, "prompt")
    check_prompts(["the cat\x00", "\ta dog"], "prompt")  # text with something to read passes


class _EmptyAnswers:
    """A teacher for `sample_offline_with` that stops at once (EOS only) on inputs whose index is in ``empty``."""

    is_encoder_decoder, position_limit = False, None

    def __init__(self, empty):
        self.empty = set(empty)

    def prepare(self, settings, device):
        pass

    def draw(self, prompts, indices, settings, batch_id):
        rows = []
        for i in indices:
            ids, text = ([2], "") if i in self.empty else ([5, 6, 2], "the cat")
            rows.append(dict(input_index=i, sample_index=0, teacher_sample_ids=ids, teacher_sample=text))
        return [dict(r, teacher_stopped=True) for r in rows]


def test_empty_teacher_samples_are_counted_in_the_record_and_logged(tmp_path, caplog):
    import json
    import logging

    from fdistill.lm.sampling import PROVENANCE_FILE, OfflineSamplingSettings, sample_offline_with

    for empty in ([], [1, 4], list(range(6))):
        out = tmp_path / f"e{len(empty)}"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fdistill"):
            samples = sample_offline_with(
                _EmptyAnswers(empty),
                _TOK,
                tiny.dataset(6, seed=1),
                str(out),
                OfflineSamplingSettings(batch_size=4),
                teacher_id="fake",
                teacher_revision=None,
                fingerprint={"model": "m", "tokenizer": "t"},
                show_progress=False,
            )
        assert [i for i, t in enumerate(samples["teacher_sample"]) if not t] == empty  # kept, never dropped
        assert json.loads((out / PROVENANCE_FILE).read_text())["empty_samples"] == len(empty)
        warned = [r.getMessage() for r in caplog.records if "empty" in r.getMessage()]
        assert len(warned) == bool(empty) and all(
            w.startswith(f"{len(empty)} of 6 teacher samples are empty") for w in warned
        )
