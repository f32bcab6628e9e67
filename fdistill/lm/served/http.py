"""The HTTP transport of a vLLM server's client (teacher or student): JSON requests retried within one deadline, secrets kept out.

Requests that get no answer (connection errors, timeouts, 429, 5xx) are retried with exponential backoff
(``retries`` times), all within one total deadline per request (``timeout``: attempts, waits and backoff together);
any other 4xx is the server refusing the input, reported with its message at once (401/403: the API key). Redirects
are never followed (the prompts and the key go only to the address given). A server that stays away raises
:class:`TeacherServerError`.

Secrets: the URL's ``user:password@`` (sent as HTTP basic auth), its query string (sent as parameters) and the API
key (``api_key``, else the environment variable ``FDISTILL_TEACHER_API_KEY``; sent as ``Authorization: Bearer``,
what vLLM's ``--api-key`` checks) stay in the client: its ``url``, every message and every record carry the address
without them (:func:`redact_url`).
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
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import requests

from fdistill.errors import InputError, invalid

logger = logging.getLogger(__name__)

# The environment variable read for the server's API key when none is given (vLLM's server reads VLLM_API_KEY for
# its own --api-key; the client's has its own name, so a key meant for one server is never sent to another).
API_KEY_ENV = "FDISTILL_TEACHER_API_KEY"
DEFAULT_TIMEOUT = 300.0  # seconds per request, every attempt, wait and backoff included
DEFAULT_RETRIES = 5


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


def parse_server_url(
    url: str, setting: str = "teacher_server"
) -> tuple[str, tuple[str, str] | None, list[tuple[str, str]]]:
    """``(base, basic_auth, query)`` of a teacher server URL: ``http[s]://host[:port][/path]`` without a trailing
    ``/v1``, the ``user:password@`` (or None) and the query parameters; one `InputError` (the URL redacted, naming
    the ``setting`` it was given as) for anything else."""
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
            f"{setting}={redact_url(url)!r} is not valid ({problem}): give http://host:port, vLLM's address."
        )
    path = parts.path.rstrip("/")
    path = path[: -len("/v1")] if path.endswith("/v1") else path
    base = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], path, "", ""))
    auth = None
    if parts.username is not None or parts.password is not None:
        auth = (unquote(parts.username or ""), unquote(parts.password or ""))
    return base, auth, parse_qsl(parts.query, keep_blank_values=True)


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
        """Count one request's bytes, scored positions and retries (thread-safe)."""
        with self._lock:
            self.bytes_sent += sent
            self.bytes_received += received
            self.requests += 1
            self.positions += positions
            self.retries += retries


class HttpClient:
    """The transport of :class:`~fdistill.lm.served.client.TeacherServer`: JSON requests to ``url`` (see
    :func:`parse_server_url`), each retried within ``timeout`` seconds in all, ``concurrency`` at a time
    (:meth:`_map`), counted in :attr:`traffic`; the arguments are :class:`TeacherServer`'s.

    ``role`` names the server in every message and its settings (``{role}_server_timeout``, ...), ``api_key_env``
    is the environment variable read for its key, ``error`` the error type of a server that stays away: the
    teacher's here, the student's in :class:`fdistill.lm.served.student.StudentServer`."""

    role = "teacher"
    api_key_env = API_KEY_ENV
    error: type[InputError] = TeacherServerError

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.5,
        concurrency: int = 8,
    ):
        self.url, self._auth, self._params = parse_server_url(url, f"{self.role}_server")
        self._api_key = api_key if api_key is not None else os.environ.get(self.api_key_env) or None
        if self._auth is not None and self._api_key:
            raise InputError(
                f"the {self.role} server URL {self.url} carries a user:password@ and an API key is given "
                f"({self.role}_server_api_key or {self.api_key_env}): both would be the one Authorization header; give one."
            )
        secrets = [self._api_key, *(self._auth or ()), *(v for _, v in self._params)]
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        if not (timeout > 0 and math.isfinite(timeout)):
            raise invalid(f"{self.role}_server_timeout", timeout, "use a positive number of seconds.")
        if retries < 0:
            raise invalid(f"{self.role}_server_retries", retries, "use 0 or more retries.")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.concurrency = max(1, concurrency)
        self.traffic = Traffic()
        self._local = threading.local()  # one requests.Session per thread
        self._pool: ThreadPoolExecutor | None = None

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
        within = f" within {self.role}_server_timeout={self.timeout:g} s" if time.monotonic() >= deadline else ""
        raise self.error(
            f"the {self.role} server {self.url} did not answer {target}{within}: {last or 'no time left'} "
            f"({attempts} attempt{'s' * (attempts != 1)} in {elapsed:.1f} s)"
        )

    def _back_off(self, attempt: int, deadline: float, target: str, last: str) -> None:
        """Wait before retry ``attempt`` (``backoff · 2^(attempt-1)`` s, capped at 30 s and the time left), saying
        so: a struggling server is never silent."""
        pause = max(0.0, min(self.backoff * 2 ** (attempt - 1), 30.0, deadline - time.monotonic()))
        logger.warning(
            "the %s server %s did not answer %s: %s; attempt %d of %d in %.1f s (%.0f s left of "
            "%s_server_timeout=%g s)",
            self.role,
            self.url,
            target,
            last,
            attempt + 1,
            self.retries + 1,
            pause,
            max(0.0, deadline - time.monotonic()),
            self.role,
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
            raise self.error(
                f"the {self.role} server {self.url} answered {target} with a redirect (HTTP {status}) to "
                f"{redact_url(response.headers.get('Location', '?'))}; redirects are not followed, so the prompts "
                f"and the key go only to the address given: give that address as the {self.role} server if you trust it."
            )
        if status in (401, 403):
            fix = (
                "the credentials given (API key or user:password@) are not the server's"
                if self._api_key or self._auth
                else f"give its API key (vLLM's --api-key) with {self.role}_server_api_key or {self.api_key_env}"
            )
            raise self.error(
                f"the {self.role} server {self.url} refused {target} (HTTP {status}: "
                f"{self._redact(_server_message(content, response.reason))}): {fix}."
            )
        if status >= 400:
            raise InputError(
                f"the {self.role} server {self.url} refused {target} (HTTP {status}): "
                f"{self._redact(_server_message(content, response.reason))}"
            )

    def _decode(self, content: bytes, path: str) -> dict:
        """The JSON object of a 200 answer; one line for anything else (not JSON, not an object, an error)."""
        try:
            answer = json.loads(content)
        except ValueError:
            text = self._redact(content[:80].decode("utf-8", "replace"))
            raise self.error(
                f"the {self.role} server {self.url} answered {path} with something that is not JSON: {text!r}; is it "
                "vLLM's OpenAI-compatible server?"
            ) from None
        if not isinstance(answer, dict):
            raise self.error(
                f"the {self.role} server {self.url} answered {path} with a JSON {type(answer).__name__}, not an object; "
                "is it vLLM's OpenAI-compatible server?"
            )
        if answer.get("object") == "error" or "error" in answer:  # vLLM's ErrorResponse, old and new shapes
            raise self.error(
                f"the {self.role} server {self.url} answered {path} with an error: "
                f"{self._redact(_server_message(content, 'no message'))}"
            )
        return answer

    def _map(self, fn, items: list) -> list:
        """``[fn(x) for x in items]``, ``concurrency`` at a time, in order."""
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(x) for x in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"fdistill-{self.role}")
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


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
