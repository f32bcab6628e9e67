"""Reading a teacher server's answers: each checked (:func:`check_top`) and typed (:class:`ServedScores`,
:class:`ServedSample`) before use.

Every answer is checked before use (:func:`check_top`: positions, K entries, finite log-probabilities ≤ 0, ids in
the vocabulary, their mass ≤ 1); a bad one is a :class:`~fdistill.lm.served.http.TeacherServerError` naming what
was wrong and which request, never stored or trained on. The shapes read are vLLM's (see
:mod:`fdistill.lm.served.client`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from fdistill.lm.served.http import TeacherServerError, _first_line

# How far a served log-probability may lie above 0, and the top-k probabilities' sum above 1, from float32 rounding:
# vLLM's log_softmax is float32, and its log-normaliser over V logits carries about log2(V) + ln(V) roundings of
# eps = 1.2e-7 (≤ 34 for V ≤ 10^6); 64 eps (7.6e-6) leaves twice that, far below any real fault (≥ 1e-3).
ANSWER_TOLERANCE = 64 * torch.finfo(torch.float32).eps


class ServedScores(NamedTuple):
    """The teacher's scores of one completion (:meth:`TeacherServer.score`), one entry per completion position
    ``t`` (the distribution of ``completion[t]`` given ``prompt + completion[:t]``): its top-k token ids ``[C][k]``
    and their log-probabilities ``[C][k]`` (ordered by rank), and the actual token's log-probability ``[C]``."""

    topk_ids: list[list[int]]
    topk_logprobs: list[list[float]]
    token_logprobs: list[float]


@dataclass(frozen=True)
class ServedSample:
    """One completion the server sampled (:meth:`TeacherServer.sample`): its token ids (EOS kept), whether the
    teacher stopped (EOS, not the length limit), and, when asked for, the teacher's untempered top-k ids and
    log-probabilities ``[len(ids)][k]`` at each sampled position (None otherwise)."""

    ids: list[int]
    stopped: bool
    topk_ids: list[list[int]] | None = None
    topk_logprobs: list[list[float]] | None = None
    token_logprobs: list[float] | None = None  # the sampled tokens' own, when asked for


def _topk_entries(entries: list[tuple[int, float, int]], k: int) -> tuple[list[int], list[float]]:
    """The top ``k`` of ``[(id, logprob, rank)]`` (rank first, then log-probability): drops the actual token's
    extra entry when it is not among them."""
    top = sorted(entries, key=lambda e: (e[2], -e[1]))[:k]
    return [e[0] for e in top], [e[1] for e in top]


def read_choices(answer: dict, n: int, request: str) -> list[dict]:
    """The ``n`` choices of a completions answer, in prompt order; one line when they are not ``n``."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise TeacherServerError(f"{request}: the answer has no list of choices; is it vLLM's completions API?")
    indices = sorted(c.get("index", -1) if isinstance(c.get("index"), int) else -1 for c in choices)
    if indices != list(range(n)):
        raise TeacherServerError(
            f"{request}: the server answered {len(choices)} choices (indices {indices[:8]}) for {n} prompt(s)."
        )
    return sorted(choices, key=lambda c: c["index"])


def _token_id(token: str) -> int:
    """``"token_id:123"`` (``return_tokens_as_token_ids``) → 123."""
    return int(str(token).rsplit(":", 1)[1])


def check_top(ids: list[int], logprobs: list[float], k: int, vocab_size: int, where: str) -> None:
    """Refuse, in one :class:`TeacherServerError` naming ``where``, the entries a server returned for one position
    (its top ``k``, plus the actual or sampled token when that is not among them) when they are not that:
    not ``min(k, vocab_size)`` entries (or one more), repeated ids, ids outside ``[0, vocab_size)``,
    log-probabilities that are not finite or lie above 0, or probabilities summing above 1 — both beyond float32
    rounding (:data:`ANSWER_TOLERANCE`)."""
    expected = min(k, vocab_size)
    problem = None
    if not expected <= len(ids) <= expected + 1:
        problem = (
            f"{len(ids)} log-probabilities, expected {expected} (teacher_server_topk={k}, vocabulary {vocab_size}; "
            "one more when the actual token is not among them)"
        )
    elif len(set(ids)) != len(ids):
        problem = "a token id twice"
    elif any(not 0 <= i < vocab_size for i in ids):
        problem = f"token id {next(i for i in ids if not 0 <= i < vocab_size)} outside the vocabulary [0, {vocab_size})"
    elif not all(math.isfinite(v) for v in logprobs):
        problem = f"a log-probability that is not finite ({next(v for v in logprobs if not math.isfinite(v))})"
    elif max(logprobs) > ANSWER_TOLERANCE:
        problem = f"a positive log-probability ({max(logprobs):.6g}): a probability above 1"
    else:
        mass = math.fsum(math.exp(v) for v in logprobs)
        if mass > 1 + ANSWER_TOLERANCE:
            problem = f"probabilities summing to {mass:.6g}, above 1"
    if problem:
        raise TeacherServerError(
            f"{where}: the answer holds {problem}; it is not used. Is the server vLLM, unmodified?"
        )


def _shape_error(where: str, error: Exception) -> TeacherServerError:
    return TeacherServerError(
        f"{where}: the answer is not in vLLM's shape ({type(error).__name__}: {_first_line(error)[:120]}); it is not used."
    )


def _read_prompt_logprobs(
    choice: dict, prompt: list[int], completion: list[int], k: int, vocab: int, where: str
) -> ServedScores:
    """The :class:`ServedScores` ``(ids [C][k'], logprobs [C][k'], token_logprobs [C])`` of the completion positions
    from one choice (``k'`` = ``min(k, vocab)``), each position checked (:func:`check_top`, and the actual token's
    log-probability)."""
    positions = choice.get("prompt_logprobs")
    n = len(prompt) + len(completion)
    if not isinstance(positions, list) or len(positions) != n:
        got = len(positions) if isinstance(positions, list) else 0
        raise TeacherServerError(
            f"{where}: the server sent prompt log-probabilities for {got} of {n} positions; is it vLLM "
            "(prompt_logprobs)?"
        )
    ids, lps, tok = [], [], []
    for t, actual in enumerate(completion):
        at = f"{where}, position {len(prompt) + t}"
        try:
            entries = positions[len(prompt) + t]
            parsed = [(int(key), float(v["logprob"]), int(v.get("rank") or 0)) for key, v in entries.items()]
            actual_lp = float(entries[str(actual)]["logprob"])
        except KeyError:
            raise TeacherServerError(f"{at}: the answer lacks the actual token {actual}; it is not used.") from None
        except (TypeError, ValueError, AttributeError) as error:
            raise _shape_error(at, error) from None
        check_top([e[0] for e in parsed], [e[1] for e in parsed], k, vocab, at)
        top_ids, top_lps = _topk_entries(parsed, k)
        ids.append(top_ids)
        lps.append(top_lps)
        tok.append(actual_lp)
    return ServedScores(ids, lps, tok)


def _read_sample(
    choice: dict, max_new_tokens: int, k: int, vocab: int, where: str, token_logprobs: bool = False
) -> ServedSample:
    """The :class:`ServedSample` of one sampling choice, checked: at most
    ``max_new_tokens`` ids in the vocabulary and, with ``k``, a checked top ``k`` at each of them; with
    ``token_logprobs`` each sampled token's log-probability (finite, at most 0)."""
    try:
        ids = [int(t) for t in choice["token_ids"]]
        tops = choice["logprobs"]["top_logprobs"] if k else []
        own = None
        if token_logprobs:  # each position's entry of the sampled token itself (logprobs=0: its only one)
            entries_of = choice["logprobs"]["top_logprobs"]
            own = [float(entries_of[t][f"token_id:{i}"]) for t, i in enumerate(ids) if t < len(entries_of)]
        entries = [[(_token_id(t), float(v), 0) for t, v in top.items()] for top in tops]  # no ranks here
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise _shape_error(where, error) from None
    if len(ids) > max_new_tokens or any(not 0 <= i < vocab for i in ids):
        raise TeacherServerError(
            f"{where}: the answer holds {len(ids)} token ids (at most max_new_tokens={max_new_tokens}, each in "
            f"[0, {vocab})); it is not used."
        )
    stopped = choice.get("finish_reason") == "stop" and choice.get("stop_reason") is None
    if own is not None and (len(own) != len(ids) or not all(math.isfinite(v) and v <= ANSWER_TOLERANCE for v in own)):
        raise TeacherServerError(
            f"{where}: the answer holds {len(own)} sampled tokens' log-probabilities for {len(ids)} tokens, each "
            "to be finite and at most 0; it is not used."
        )
    if not k:
        return ServedSample(ids, stopped, token_logprobs=own)
    if len(entries) != len(ids):
        raise TeacherServerError(
            f"{where}: the server sent log-probabilities for {len(entries)} of {len(ids)} tokens; it is not used."
        )
    for t, position in enumerate(entries):
        check_top([e[0] for e in position], [e[1] for e in position], k, vocab, f"{where}, token {t}")
    pairs = [_topk_entries(position, k) for position in entries]  # ordered by log-probability
    return ServedSample(ids, stopped, [p[0] for p in pairs], [p[1] for p in pairs], own)
