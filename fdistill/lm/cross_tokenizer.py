"""Aligning two tokenizations of one completion at shared byte offsets, for distilling across tokenizers.

A teacher and a student with different tokenizers see the same completion as different token sequences. Their
sequence-level log-probabilities are both about one string, so they compare directly; their step-wise terms need steps
that both models take. This module finds those steps.

Definitions (issue 28; every cross-tokenizer module uses these words):

- **Completion text**: a completion is text. The text join is the sampling model's
  ``tokenizer.decode(ids_without_EOS, skip_special_tokens=True, clean_up_tokenization_spaces=False)``
  (:func:`completion_text`); the other model tokenizes that string on its own, never prompt and completion jointly
  (each model's prompt keeps its own special tokens, e.g. Gemma's BOS, and its own chat template).
- **Canonical tokenization** of a text: ``tokenizer(text, add_special_tokens=False)``, then the tokenizer's EOS when
  the completion ended, i.e. the sampler stopped at EOS (:func:`encode_completion`).
- **Token bytes / byte spans**: every vocabulary id stands for a byte string (:func:`token_bytes`): byte-level BPE
  (GPT-2, SmolLM2) writes bytes in GPT-2's printable alphabet; SentencePiece-style tokenizers (Gemma) write space as
  ``▁`` and rare bytes as ``<0xNN>`` (byte fallback). Special tokens (EOS, BOS, pad, chat markers) stand for ``b""``.
  A token's span is its ``(start, end)`` offset in the concatenation of its sequence's token bytes
  (:func:`token_byte_spans`), which is ``completion_text.encode("utf-8")``; spans come from the bytes, never from
  decoded prefixes (a prefix that ends inside a character decodes to U+FFFD, not to its bytes).
- **Chunks** (:func:`align_chunks`): cut the completion's bytes at every offset that ends a token in *both*
  tokenizations; a chunk is the run of tokens of each side between two consecutive cuts, so both sides' tokens of a
  chunk spell the same bytes. A zero-width (special) token joins the chunk of the next token of its side. EOS is its
  own last chunk when both sides ended. A chunk is **one-to-one** when it holds one token on each side (the two
  tokens then have equal bytes). A side's chunk log-probability, the sum of its token log-probs over the chunk, is
  exact: ``log p(chunk bytes | bytes before)`` under that model's tokenization of the text.

When the sides do not spell one string (a sample cut inside a UTF-8 character decodes to U+FFFD; a side cut shorter;
one side ended and the other did not), chunks are cut only inside the common byte prefix: tokens past the last common
cut, and an EOS without one on the other side, are in no chunk (index ``-1``, as padding), so no chunk compares two
different strings.

Why in-house: no well-kept library aligns two Hugging Face tokenizations at byte offsets.

- TRL's ``GOLDTrainer`` (experimental) builds its alignment groups inside the trainer by decoding every prefix of each
  sequence (quadratic) and greedily matching the decoded text, which mis-cuts where a character is split across
  tokens (U+FFFD pieces).
- tokenkit (Minixhofer, Vulić, Ponti, "Universal Cross-Tokenizer Distillation via Approximate Likelihood Matching",
  NeurIPS 2025, arXiv:2503.20083; github.com/bminixhofer/tokenkit) aligns chunks on token bytes as we do, but inside
  its JAX training stack, not packaged for import (the PyPI package of that name is an unrelated metrics tool).
- NeMo RL's X-Token aligner (arXiv:2605.21699) is a dynamic program over canonicalised token strings inside NeMo RL
  (Ray, Megatron).
- pytokenizations (last release 2021) and merge-tokenizers align token *strings* by edit distance / DTW,
  approximately, after the part that matters here (each token's exact bytes) is done.

The algorithm is short: each id's bytes from the vocabulary, cumulative offsets, the intersection of the two sides'
token ends.
"""

from __future__ import annotations

import functools
import json
import re
import weakref
from bisect import bisect_left
from dataclasses import dataclass

import torch

from fdistill.errors import InputError
from fdistill.lm.data import pad_right

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SUPPORTED = (
    "supported are fast (tokenizers-backed) byte-level BPE tokenizers (a ByteLevel decoder, e.g. GPT-2, SmolLM2) and "
    "SentencePiece-style ones that add no dummy-prefix space ('▁' for space, <0xNN> byte fallback, e.g. Gemma 3)"
)
# Texts whose canonical tokens must spell exactly their UTF-8 bytes; one a tokenizer cannot round-trip is skipped.
_PROBES = ("Hello world", "  two  spaces \n\n new line\t", "trailing space ", "héllo 日本 🎉 ok")


@functools.cache
def byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character → byte: printable bytes as themselves, the others shifted past 255.

    The inverse of ``bytes_to_unicode`` in OpenAI's GPT-2 encoder (Radford et al. 2019), which every byte-level BPE
    tokenizer (``tokenizers.pre_tokenizers.ByteLevel``) uses to write bytes as characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + i): b for i, b in enumerate(shifted)})
    return table


@dataclass(frozen=True)
class _TokenizerBytes:
    """What the alignment needs of one tokenizer, computed once: its style, every id's bytes, a fingerprint."""

    style: str  # "byte_level" | "sentencepiece"
    table: tuple[bytes, ...]
    size: int  # len(tokenizer) when computed: a tokenizer given new tokens is read again
    fingerprint: int  # hash of the whole backend definition (vocabulary, merges, normalizer, decoder)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _backend(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError(
            f"tokenizer {_name(tokenizer)!r} ({type(tokenizer).__name__}) has no fast (tokenizers) backend, so its "
            f"token bytes cannot be read: {_SUPPORTED}. Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    return backend


def _decoder_parts(backend) -> list[dict]:
    """The backend's decoder as a list of JSON steps (a Sequence's parts, else the one decoder; [] for none)."""
    if backend.decoder is None:
        return []
    decoder = json.loads(backend.decoder.__getstate__())
    return decoder["decoders"] if decoder.get("type") == "Sequence" else [decoder]


def _style(parts: list[dict], tokenizer) -> str:
    """ "byte_level" (a ByteLevel decoder) or "sentencepiece" (Metaspace, or Replace '▁' → ' '); else InputError."""
    kinds = [p.get("type") for p in parts]
    if "ByteLevel" in kinds:
        return "byte_level"
    if "Metaspace" in kinds or any(
        p.get("type") == "Replace" and p.get("pattern", {}).get("String") == "▁" and p.get("content") == " "
        for p in parts
    ):
        return "sentencepiece"
    raise InputError(
        f"tokenizer {_name(tokenizer)!r} ({type(tokenizer).__name__}, decoder {kinds or 'none'}, model "
        f"{type(_backend(tokenizer).model).__name__}) is not supported for cross-tokenizer alignment: {_SUPPORTED}."
    )


def _piece_bytes(piece: str, style: str, byte_fallback: bool) -> bytes:
    if style == "byte_level":
        table = byte_level_decoder()
        if all(c in table for c in piece):
            return bytes(table[c] for c in piece)
        return piece.encode("utf-8")
    if byte_fallback and (m := _BYTE_FALLBACK.fullmatch(piece)):
        return bytes([int(m.group(1), 16)])
    return piece.replace("▁", " ").encode("utf-8")


def _read(tokenizer) -> _TokenizerBytes:
    backend = _backend(tokenizer)
    parts = _decoder_parts(backend)
    style = _style(parts, tokenizer)
    byte_fallback = bool(getattr(backend.model, "byte_fallback", False)) or any(
        p.get("type") == "ByteFallback" for p in parts
    )
    vocab = backend.get_vocab(with_added_tokens=True)
    size = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    added = tokenizer.added_tokens_decoder
    specials = set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
    table = [b""] * size
    for piece, i in vocab.items():
        if i in specials:
            continue
        table[i] = added[i].content.encode("utf-8") if i in added else _piece_bytes(piece, style, byte_fallback)
    info = _TokenizerBytes(style, tuple(table), len(tokenizer), hash(backend.to_str()))
    _check_round_trip(tokenizer, info)
    return info


def _check_round_trip(tokenizer, info: _TokenizerBytes) -> None:
    """Refuse a tokenizer whose canonical tokens do not spell the text's bytes (e.g. one that adds a dummy-prefix
    space, as Llama 2's does): byte spans would then be off. Probes: fixed texts and texts built from its vocabulary;
    a probe the tokenizer itself cannot round-trip (characters it lacks) is skipped."""
    words = []
    for piece in info.table:
        if piece and len(words) < 24:
            try:
                words.append(piece.decode("utf-8"))
            except UnicodeDecodeError:
                pass
    stripped = [w.strip() for w in words if w.strip()]
    probes = [*_PROBES, "".join(words), " ".join(stripped), " " + " ".join(reversed(words)) + " "]
    checked = 0
    for text in probes:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) != text:
            continue
        spelled = b"".join(info.table[i] for i in ids)
        if spelled != text.encode("utf-8"):
            raise InputError(
                f"tokenizer {_name(tokenizer)!r}: its tokens of {text!r} "
                f"spell {spelled!r}, not the text's bytes {text.encode('utf-8')!r} (a dummy-prefix space or a "
                f"normalizer that changes the text?), so byte offsets cannot be read from its tokens; {_SUPPORTED}, "
                f"tokenizing text without adding or dropping characters."
            )
        checked += 1
    if not checked:
        raise InputError(
            f"tokenizer {_name(tokenizer)!r} decodes none of the probe "
            f"texts {probes[:2]!r}... back to themselves, so its token bytes cannot be checked: {_SUPPORTED}."
        )


def _info(tokenizer) -> _TokenizerBytes:
    info = _CACHE.get(tokenizer)
    if info is None or info.size != len(tokenizer):
        info = _read(tokenizer)
        _CACHE[tokenizer] = info
    return info


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes every vocabulary id stands for (``b""`` for special tokens), computed once per tokenizer.

    Byte-level BPE pieces are read through GPT-2's byte table (:func:`byte_level_decoder`); SentencePiece pieces with
    ``▁`` → space and ``<0xNN>`` → that byte. Raises `InputError` for any other kind of tokenizer, or one whose
    canonical tokens of a probe text do not spell its bytes.

    Example:
        >>> from fdistill import testing
        >>> tok_a, tok_b = testing.cross_tokenizers()
        >>> token_bytes(tok_a)[5], token_bytes(tok_b)[5], token_bytes(tok_b)[6]
        (b'ab', b' a', b'')
    """
    return list(_info(tokenizer).table)


def _table(tokenizer, ids: list[int]) -> tuple[bytes, ...]:
    table = _info(tokenizer).table
    bad = [i for i in ids if not 0 <= i < len(table)]
    if bad:
        raise InputError(
            f"token ids {bad[:5]} are outside tokenizer {_name(tokenizer)!r}'s "
            f"{len(table)} ids: give ids of that tokenizer (padding masked out)."
        )
    return table


def token_byte_spans(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """Each token's ``(start, end)`` offset in the bytes its sequence spells; special tokens get ``(o, o)`` at the
    offset ``o`` where they stand.

    Example:
        >>> from fdistill import testing
        >>> tok_a, _ = testing.cross_tokenizers()
        >>> token_byte_spans(tok_a, [5, 6, 1])  # "ab", " b", </s>
        [(0, 2), (2, 4), (4, 4)]
    """
    return _spans(_table(tokenizer, ids), ids)


def _spans(table: tuple[bytes, ...], ids: list[int]) -> list[tuple[int, int]]:
    spans, offset = [], 0
    for i in ids:
        spans.append((offset, offset + len(table[i])))
        offset += len(table[i])
    return spans


def completion_text(tokenizer, ids: list[int]) -> tuple[str, bool]:
    """``(text, ended)``: the completion's text join and whether it ended with the tokenizer's EOS.

    ``text = tokenizer.decode(ids before the first EOS, skip_special_tokens=True, clean_up_tokenization_spaces=False)``;
    ``ids`` hold the completion only (no prompt, no padding); anything after the first EOS is ignored. Only
    ``tokenizer.eos_token_id`` ends a completion: another stop token the sampler was given (a second EOS id of its
    generation config) is a special token like any other, in no chunk when it ends one side only.
    """
    _table(tokenizer, ids)
    eos = tokenizer.eos_token_id
    ended = eos is not None and eos in ids
    body = ids[: ids.index(eos)] if ended else ids
    return tokenizer.decode(body, skip_special_tokens=True, clean_up_tokenization_spaces=False), ended


def encode_completion(tokenizer, text: str, ended: bool) -> list[int]:
    """The canonical tokens of a completion: ``tokenizer(text, add_special_tokens=False)`` then EOS if ``ended``.

    Text that spells a special token (a student that wrote the characters ``</s>``) stays text
    (``split_special_tokens=True``): only ``ended`` puts the EOS token in."""
    ids = list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    if ended:
        if tokenizer.eos_token_id is None:
            raise InputError(
                f"tokenizer {_name(tokenizer)!r} has no eos_token, so an ended completion "
                "cannot be written in its tokens: set tokenizer.eos_token."
            )
        ids.append(tokenizer.eos_token_id)
    return ids


def align_chunks(
    a_spans: list[tuple[int, int]], b_spans: list[tuple[int, int]], common_bytes: int | None = None
) -> tuple[list[int], list[int], int]:
    """Chunk index of every token of side a and of side b, and the number of chunks.

    Cuts are the byte offsets ``c > 0`` that end a non-empty token on both sides, up to ``common_bytes`` (the length of
    the byte prefix the two sides share; default: the shorter side's length, i.e. the sides spell one string). Chunk
    ``k`` spans ``(cut[k-1], cut[k]]``: a token ending at ``e`` is in chunk ``bisect_left(cuts, e)``; a zero-width
    token joins the next non-empty token of its side. Zero-width tokens at the very end of both sides (EOS) form one
    last chunk when both sides spell their whole, equal bytes; tokens in no chunk get ``-1``.

    Example ("ab b" as ``ab|' b'|</s>`` and ``a|b|' '|b|<eos>``):
        >>> align_chunks([(0, 2), (2, 4), (4, 4)], [(0, 1), (1, 2), (2, 3), (3, 4), (4, 4)])
        ([0, 1, 2], [0, 0, 1, 1, 2], 3)
    """
    a_total = a_spans[-1][1] if a_spans else 0
    b_total = b_spans[-1][1] if b_spans else 0
    limit = min(a_total, b_total) if common_bytes is None else min(a_total, b_total, common_bytes)
    ends_a = {e for s, e in a_spans if s < e <= limit}
    cuts = sorted(ends_a.intersection(e for s, e in b_spans if s < e <= limit))
    last = cuts[-1] if cuts else 0
    whole = a_total == b_total == limit == last
    tail_a, tail_b = _trailing_zero_width(a_spans), _trailing_zero_width(b_spans)
    final = len(cuts) if whole and tail_a and tail_b else -1
    count = len(cuts) + (final >= 0)
    return _assign(a_spans, cuts, last, final), _assign(b_spans, cuts, last, final), count


def _trailing_zero_width(spans: list[tuple[int, int]]) -> int:
    n = 0
    for s, e in reversed(spans):
        if s != e:
            break
        n += 1
    return n


def _assign(spans: list[tuple[int, int]], cuts: list[int], last: int, final: int) -> list[int]:
    out, pending = [-1] * len(spans), []
    for i, (s, e) in enumerate(spans):
        if s == e:
            pending.append(i)
            continue
        chunk = bisect_left(cuts, e) if e <= last else -1
        for j in (*pending, i):
            out[j] = chunk
        pending = []
    for j in pending:
        out[j] = final
    return out


@dataclass(frozen=True)
class VocabMap:
    """Pairs of student and teacher ids that stand for the same non-empty bytes, plus EOS ↔ EOS.

    ``student_ids[k]`` and ``teacher_ids[k]`` (LongTensors of equal length, sorted by student id) are the k-th pair;
    each id appears at most once (where a vocabulary holds several ids for one byte string, e.g. Gemma's ``<0x41>``
    beside ``A``, the id its own canonical tokenization of those bytes gives is kept, else the lowest).
    """

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.student_ids)


_MAPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocab_map(student_tok, teacher_tok) -> VocabMap:
    """The shared-bytes :class:`VocabMap` of two tokenizers, computed once per pair (a dict on bytes: linear time).

    Example:
        >>> from fdistill import testing
        >>> tok_a, tok_b = testing.cross_tokenizers()
        >>> m = vocab_map(tok_a, tok_b)
        >>> m.student_ids.tolist(), m.teacher_ids.tolist()
        ([1, 2, 3, 4], [6, 1, 2, 0])
    """
    per_student = _MAPS.setdefault(student_tok, weakref.WeakKeyDictionary())
    key = (_info(student_tok).fingerprint, _info(teacher_tok).fingerprint, len(student_tok), len(teacher_tok))
    cached = per_student.get(teacher_tok)
    if cached is not None and cached[0] == key:
        return cached[1]
    s_ids = _unique_by_bytes(student_tok)
    t_ids = _unique_by_bytes(teacher_tok)
    pairs = [(s, t_ids[b]) for b, s in s_ids.items() if b in t_ids]
    if student_tok.eos_token_id is not None and teacher_tok.eos_token_id is not None:
        pairs.append((student_tok.eos_token_id, teacher_tok.eos_token_id))
    pairs.sort()
    result = VocabMap(
        torch.tensor([s for s, _ in pairs], dtype=torch.long), torch.tensor([t for _, t in pairs], dtype=torch.long)
    )
    per_student[teacher_tok] = (key, result)
    return result


def _unique_by_bytes(tokenizer) -> dict[bytes, int]:
    """bytes → the one id kept for them: the lowest, or for a byte string several ids spell, the canonical one."""
    first: dict[bytes, int] = {}
    duplicated: set[bytes] = set()
    for i, b in enumerate(_info(tokenizer).table):
        if not b:
            continue
        if b in first:
            duplicated.add(b)
        else:
            first[b] = i
    for b in duplicated:
        try:
            ids = tokenizer(b.decode("utf-8"), add_special_tokens=False)["input_ids"]
        except UnicodeDecodeError:
            continue
        if len(ids) == 1 and _info(tokenizer).table[ids[0]] == b:
            first[b] = ids[0]
    return first


@dataclass(frozen=True)
class CrossAlignment:
    """The chunks of a batch of completions in two tokenizations (see the module docstring).

    ``student_chunks (B, Cs)`` and ``teacher_chunks (B, Ct)``: the chunk index of each completion token, ``-1`` at
    padding and at tokens in no chunk; ``num_chunks (B,)``: the number of chunks of each row.
    """

    student_chunks: torch.Tensor
    teacher_chunks: torch.Tensor
    num_chunks: torch.Tensor


def _rows(tokenizer, ids: torch.Tensor, mask: torch.Tensor, name: str) -> list[list[int]]:
    """The completions of a right-padded batch as id lists, each checked against ``tokenizer``'s vocabulary."""
    if ids.dim() != 2 or ids.shape != mask.shape:
        raise InputError(
            f"{name} ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must be (batch, length) of one shape: give "
            "right-padded completion ids and their mask (1 at tokens)."
        )
    keep = mask.bool().cpu()
    rows = [row[m].tolist() for row, m in zip(ids.cpu(), keep)]
    _table(tokenizer, [i for row in rows for i in row])
    return rows


def same_tokenization(a, b) -> bool:
    """Whether two tokenizers are one (same object, or the same backend definition and EOS)."""
    return a is b or (_info(a).fingerprint == _info(b).fingerprint and a.eos_token_id == b.eos_token_id)


def retokenize(source_tok, target_tok, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same completions in the target tokenizer: ``(target_ids, target_mask)`` (long, bool), right-padded, on
    ``ids.device``.

    Each row's text join (:func:`completion_text` under ``source_tok``) is encoded canonically by ``target_tok``
    (:func:`encode_completion`, EOS kept when the source ended). When the two tokenizers are the same
    (:func:`same_tokenization`), the source tokens pass through unchanged (cut after EOS): the other model then scores
    exactly the sampled tokens, as in same-tokenizer distillation. Padding holds the target's pad id (else EOS, else
    0) and mask 0; the width is the longest row (at least 1).
    """
    rows = _rows(source_tok, ids, mask, "source")
    same = same_tokenization(source_tok, target_tok)
    out = []
    for row in rows:
        text, ended = completion_text(source_tok, row)
        if same:
            out.append(row[: row.index(source_tok.eos_token_id) + 1] if ended else row)
        else:
            out.append(encode_completion(target_tok, text, ended))
    fill = next((i for i in (target_tok.pad_token_id, target_tok.eos_token_id) if i is not None), 0)
    target_ids, target_mask = pad_right(out, fill)
    return target_ids.to(ids.device), target_mask.to(ids.device)


def _row_alignment(
    s_side: tuple[tuple[bytes, ...], int | None], t_side: tuple[tuple[bytes, ...], int | None], s_row, t_row
) -> tuple[list[int], list[int], int]:
    """Chunks of one completion, each side given as (token bytes table, EOS id); tokens after a side's first EOS
    belong to no chunk."""
    (s_table, s_eos), (t_table, t_eos) = s_side, t_side
    cut_s, cut_t = _through_eos(s_row, s_eos), _through_eos(t_row, t_eos)
    s_spans, t_spans = _spans(s_table, s_row[:cut_s]), _spans(t_table, t_row[:cut_t])
    s_bytes = b"".join(s_table[i] for i in s_row[:cut_s])
    t_bytes = b"".join(t_table[i] for i in t_row[:cut_t])
    common = min(len(s_bytes), len(t_bytes))
    if s_bytes[:common] != t_bytes[:common]:
        common = next(k for k, (x, y) in enumerate(zip(s_bytes, t_bytes)) if x != y)
    s_chunks, t_chunks, n = align_chunks(s_spans, t_spans, common_bytes=common)
    return s_chunks + [-1] * (len(s_row) - cut_s), t_chunks + [-1] * (len(t_row) - cut_t), n


def _through_eos(row: list[int], eos: int | None) -> int:
    return row.index(eos) + 1 if eos is not None and eos in row else len(row)


def align_batch(
    student_tok,
    teacher_tok,
    student_ids: torch.Tensor,
    student_mask: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_mask: torch.Tensor,
) -> CrossAlignment:
    """The :class:`CrossAlignment` of a batch of completions given in both tokenizations (right-padded, mask 1 at
    tokens; usually one side from :func:`retokenize` of the other), on ``student_ids.device``.

    Example:
        >>> from fdistill import testing
        >>> tok_a, tok_b = testing.cross_tokenizers()
        >>> ids = torch.tensor([[5, 6, 1]]); mask = torch.ones_like(ids)  # "ab b" + </s>
        >>> t_ids, t_mask = retokenize(tok_a, tok_b, ids, mask)
        >>> t_ids.tolist()  # a|b|' '|b|<eos>
        [[1, 2, 0, 2, 6]]
        >>> al = align_batch(tok_a, tok_b, ids, mask, t_ids, t_mask)
        >>> al.student_chunks.tolist(), al.teacher_chunks.tolist(), al.num_chunks.tolist()
        ([[0, 1, 2]], [[0, 0, 1, 1, 2]], [3])
    """
    s_rows = _rows(student_tok, student_ids, student_mask, "student")
    t_rows = _rows(teacher_tok, teacher_ids, teacher_mask, "teacher")
    if len(s_rows) != len(t_rows):
        raise InputError(
            f"student batch of {len(s_rows)} rows and teacher batch of {len(t_rows)} rows: give the same completions "
            "in both tokenizations (retokenize one side)."
        )
    s_out = torch.full(student_ids.shape, -1, dtype=torch.long)
    t_out = torch.full(teacher_ids.shape, -1, dtype=torch.long)
    counts = torch.zeros(len(s_rows), dtype=torch.long)
    s_keep, t_keep = student_mask.bool().cpu(), teacher_mask.bool().cpu()
    s_side = (_info(student_tok).table, student_tok.eos_token_id)
    t_side = (_info(teacher_tok).table, teacher_tok.eos_token_id)
    for k, (s_row, t_row) in enumerate(zip(s_rows, t_rows)):
        s_chunks, t_chunks, counts[k] = _row_alignment(s_side, t_side, s_row, t_row)
        s_out[k, s_keep[k]] = torch.tensor(s_chunks, dtype=torch.long)
        t_out[k, t_keep[k]] = torch.tensor(t_chunks, dtype=torch.long)
    device = student_ids.device
    return CrossAlignment(s_out.to(device), t_out.to(device), counts.to(device))
