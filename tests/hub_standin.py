"""An in-process stand-in for the Hugging Face Hub (stdlib ``http.server`` in a thread), so the real
``huggingface_hub`` client runs end to end over HTTP in the tests, as :mod:`fake_vllm` does for vLLM.

Pinned against huggingface_hub 2.4.0 (httpx2 transport). It answers the requests that client sends for what fdistill
does with the Hub — the shapes below are read from that version's ``hf_api.py``, ``_commit_api.py``, ``lfs.py``,
``file_download.py`` and ``_snapshot_download.py``:

- ``POST /api/validate-yaml`` ``{"content", "repoType"}`` → ``{"errors": [], "warnings": []}`` (400 with
  ``errors`` when a README's front matter is not a YAML mapping): ``upload_folder`` checks a README first;
- ``GET /api/whoami-v2`` → ``{"name", "orgs", "auth": {"accessToken": {"role": "write"}}}`` (fdistill's pre-flight
  check, :func:`fdistill.lm.hub.check_hub_push`);
- ``POST /api/repos/create`` ``{"name", "organization", "type"?, "visibility"?}`` → ``{"url", "name"}``; 409 when the
  repo exists (the client's ``exist_ok``);
- ``GET /api/{models,datasets}/{repo}[/revision/{rev}]`` → ``{"id", "sha", "siblings": [{"rfilename"}], ...}``;
- ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive=`` → ``[{"type": "file", "path", "size", "oid", "lfs"?:
  {"oid", "size", "pointerSize"}} | {"type": "directory", "path", "oid"}]`` (one page: no ``Link`` header);
- ``POST /api/{type}s/{repo}/preupload/{rev}`` ``{"files": [{"path", "sample", "size"}]}`` →
  ``{"files": [{"path", "uploadMode": "lfs"|"regular", "shouldIgnore": false}]}``: weights (``.safetensors``,
  ``.bin``, ``.pt``, ``.pth``, ``.npy``, ``.arrow``, ``.parquet``) and files over 10 MiB go by LFS;
- ``POST /[datasets/]{repo}.git/info/lfs/objects/batch`` ``{"operation": "upload", "transfers", "objects": [{"oid",
  "size"}], "hash_algo": "sha256"}`` → ``{"transfer": "basic", "objects": [{"oid", "size", "actions"?: {"upload":
  {"href"}}}]}`` (no actions: the object is stored already), then ``PUT {href}`` with the bytes (their sha256 checked);
- ``POST /api/{type}s/{repo}/commit/{rev}``, NDJSON: ``{"key": "header", "value": {"summary", "description"}}`` then
  ``file`` (``{"path", "content" (base64), "encoding"}``), ``lfsFile`` (``{"path", "algo", "oid", "size"}``, the object
  uploaded before), ``deletedFile`` / ``deletedFolder`` (``{"path"}``) → ``{"commitUrl", "commitOid",
  "pullRequestUrl": null}``; every commit is a snapshot, addressable by its sha;
- ``HEAD``/``GET /[datasets/]{repo}/resolve/{rev}/{path}`` → the bytes, with ``X-Repo-Commit``, ``ETag`` (git blob
  sha1; for LFS ``X-Linked-Etag``: the sha256) and ``X-Linked-Size``; 404 with ``X-Error-Code: EntryNotFound`` /
  ``RepoNotFound`` / ``RevisionNotFound``;
- anything else: 404 (the client also asks ``GET /api/agent-harnesses`` once, for its user agent, and goes on).

Xet storage is not spoken: the client is pointed at LFS with ``HF_HUB_DISABLE_XET`` (with ``hf_xet`` installed it
would upload weights through a Xet CAS server instead). How the client is pointed here, in-process: huggingface_hub
reads ``HF_ENDPOINT`` once, at import, into ``constants.ENDPOINT`` and ``constants.HUGGINGFACE_CO_URL_TEMPLATE``, and
each ``HfApi`` keeps the endpoint it was made with; :func:`serve` patches those two constants, ``HF_HUB_OFFLINE``,
``HF_HUB_DISABLE_XET`` and the token (``HF_TOKEN``, no token file), drops transformers' cached ``hf_api()`` so the
Trainer makes a new one here, and patches ``datasets.config.HF_ENDPOINT`` (datasets' own copy, for its push_to_hub).

Faults: ``fail_next`` (HTTP codes for the next requests, any path), ``fail_path`` (``{part of a path: code}``: the
first request whose path holds it, once), ``stop()`` (the server goes away: new connections
are refused, kept-alive ones dropped unanswered), ``stop_when_faults_spent`` (stop once ``fail_next`` is answered).
``requests`` logs ``(method, path)``; ``received`` keeps every request body, so a test can check that a secret never
left the process.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npy", ".arrow", ".parquet")
LFS_ABOVE = 10 * 1024 * 1024
USER = "me"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class Repo:
    """A repo: its commits (each a full snapshot ``{path: (bytes, is_lfs)}``), newest last, ``main`` the newest."""

    def __init__(self, repo_id: str, repo_type: str):
        self.repo_id, self.repo_type = repo_id, repo_type
        self.commits: list[tuple[str, str, dict[str, tuple[bytes, bool]]]] = [
            (hashlib.sha1(repo_id.encode()).hexdigest(), "initial commit", {})
        ]

    @property
    def files(self) -> dict[str, tuple[bytes, bool]]:
        return self.commits[-1][2]

    @property
    def messages(self) -> list[str]:
        return [m for _, m, _ in self.commits[1:]]

    def snapshot(self, revision: str) -> tuple[str, dict] | None:
        if revision in ("main", "HEAD"):
            return self.commits[-1][0], self.commits[-1][2]
        for sha, _, files in self.commits:
            if sha == revision:
                return sha, files
        return None


class HubStandin:
    """A Hub stand-in on 127.0.0.1 (a free port); ``url`` is its address, ``repos`` what was pushed."""

    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.fail_next: list[int] = []
        self.fail_path: dict[str, int] = {}  # a request whose path holds the key: answered with its code, once
        self.stop_when_faults_spent = False  # the Hub goes away once the last of fail_next is answered
        self.requests: list[tuple[str, str]] = []
        self.received: list[bytes] = []
        self.stopped = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """The Hub goes away: later requests find nothing listening."""
        if not self.stopped:
            self.stopped = True
            self._server.shutdown()
            self._server.server_close()

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def read(self, repo_id: str, path: str, repo_type: str = "model") -> bytes:
        return self.repo(repo_id, repo_type).files[path][0]


def _handler(hub: HubStandin):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        # ------------------------------------------------------------------ plumbing

        def _body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or ""):  # an LFS PUT streams the file
                data = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    data += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
            else:
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n) if n else b""
            hub.received.append(data)
            return data

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(status)
            for k, v in (headers or {"Content-Type": "application/json"}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head and self.command != "HEAD":  # a HEAD answer has no body, errors included
                self.wfile.write(body)

        def _json(self, status: int, value, headers: dict | None = None):
            self._send(status, json.dumps(value).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, message: str, code: str | None = None):
            self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message} if code else None)

        def _route(self, method: str):
            body = self._body() if method in ("POST", "PUT") else b""
            path = urlsplit(self.path)
            route = unquote(path.path)
            query = {k: v[-1] for k, v in parse_qs(path.query).items()}
            with hub._lock:
                hub.requests.append((method, path.path))
                fault = hub.fail_next.pop(0) if hub.fail_next else None
                hit = next((k for k in hub.fail_path if k in route), None)
                fault = hub.fail_path.pop(hit) if hit is not None and fault is None else fault
            if hub.stopped:  # a kept-alive connection of a stopped Hub: dropped unanswered
                self.close_connection = True
                return
            if fault is not None:
                self._error(fault, f"injected fault {fault}")
                if hub.stop_when_faults_spent and not hub.fail_next:
                    threading.Thread(target=hub.stop, daemon=True).start()
                return
            signed = route.startswith("/_lfs/")  # an LFS upload URL is its own credential, as the Hub's signed URLs
            if (
                method in ("POST", "PUT")
                and not signed
                and not self.headers.get("Authorization", "").startswith("Bearer ")
            ):
                return self._error(401, "Invalid credentials in Authorization header")
            try:
                with hub._lock:
                    self._dispatch(method, route, query, body)
            except (ValueError, KeyError, json.JSONDecodeError) as error:
                self._error(400, f"bad request: {error}")

        def do_GET(self):
            self._route("GET")

        def do_HEAD(self):
            self._route("HEAD")

        def do_POST(self):
            self._route("POST")

        def do_PUT(self):
            self._route("PUT")

        # ------------------------------------------------------------------ the API

        def _dispatch(self, method, route, query, body):
            if route == "/api/whoami-v2":
                return self._json(
                    200, {"name": USER, "type": "user", "orgs": [], "auth": {"accessToken": {"role": "write"}}}
                )
            if route == "/api/validate-yaml" and method == "POST":
                return self._validate_yaml(json.loads(body)["content"])
            if route == "/api/repos/create" and method == "POST":
                return self._create(json.loads(body))
            if m := re.fullmatch(r"/api/(model|dataset)s/([^/]+/[^/]+)(?:/revision/(.+))?", route):
                return self._info(m[1], m[2], m[3] or "main")
            if m := re.fullmatch(r"/api/(model|dataset)s/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", route):
                return self._tree(m[1], m[2], m[3], m[4] or "", query.get("recursive") in ("true", "True", "1"))
            if m := re.fullmatch(r"/api/(model|dataset)s/([^/]+/[^/]+)/preupload/(.+)", route):
                return self._preupload(m[1], m[2], json.loads(body))
            if m := re.fullmatch(r"/api/(model|dataset)s/([^/]+/[^/]+)/commit/(.+)", route):
                return self._commit(m[1], m[2], m[3], body)
            if m := re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", route):
                return self._batch(json.loads(body))
            if (m := re.fullmatch(r"/_lfs/([0-9a-f]{64})", route)) and method == "PUT":
                if hashlib.sha256(body).hexdigest() != m[1]:
                    return self._error(400, "the object's sha256 is not its oid")
                hub.lfs[m[1]] = body
                return self._send(200)
            if m := re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", route):
                return self._resolve("dataset" if m[1] else "model", m[2], m[3], m[4], head=method == "HEAD")
            return self._error(404, f"no route {method} {route}")

        def _repo(self, repo_type, repo_id):
            repo = hub.repos.get((repo_type, repo_id))
            if repo is None:
                self._error(404, f"Repository Not Found for url: {repo_id}", "RepoNotFound")
            return repo

        def _validate_yaml(self, content):
            """A README's front matter must be a YAML mapping (what the client checks before uploading a card)."""
            import yaml

            match = re.match(r"---\n(.*?)\n---\n", content, re.S)
            try:
                meta = yaml.safe_load(match[1]) if match else {}
                if not isinstance(meta, dict):
                    raise ValueError(f"the metadata is a {type(meta).__name__}, not a mapping")
            except (yaml.YAMLError, ValueError) as error:
                return self._json(400, {"errors": [{"message": str(error)}]})
            return self._json(200, {"errors": [], "warnings": []})

        def _create(self, payload):
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            key = (payload.get("type") or "model", repo_id)
            if key in hub.repos:
                return self._json(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
            hub.repos[key] = Repo(repo_id, key[0])
            prefix = "datasets/" if key[0] == "dataset" else ""
            return self._json(200, {"url": f"{hub.url}/{prefix}{repo_id}", "name": repo_id})

        def _snapshot(self, repo_type, repo_id, revision):
            """``(sha, files)`` of the repo at ``revision``; None once the 404 is sent."""
            repo = self._repo(repo_type, repo_id)
            snap = repo.snapshot(revision) if repo is not None else None
            if repo is not None and snap is None:
                self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return snap

        def _info(self, repo_type, repo_id, revision):
            if (snap := self._snapshot(repo_type, repo_id, revision)) is None:
                return
            sha, files = snap
            return self._json(
                200,
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": sha,
                    "private": False,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                },
            )

        def _entry(self, path, data, is_lfs):
            entry = {"type": "file", "path": path, "size": len(data)}
            if is_lfs:
                sha = hashlib.sha256(data).hexdigest()
                pointer = lfs_pointer(sha, len(data))
                entry.update(
                    oid=git_blob_sha1(pointer), lfs={"oid": sha, "size": len(data), "pointerSize": len(pointer)}
                )
            else:
                entry["oid"] = git_blob_sha1(data)
            return entry

        def _tree(self, repo_type, repo_id, revision, folder, recursive):
            if (snap := self._snapshot(repo_type, repo_id, revision)) is None:
                return
            files = snap[1]
            prefix = folder.strip("/") + "/" if folder.strip("/") else ""
            inside = {p: v for p, v in files.items() if p.startswith(prefix)}
            if prefix and not inside:
                return self._error(404, f"{folder} does not exist on {revision}", "EntryNotFound")
            out, folders = [], set()
            for path, (data, is_lfs) in sorted(inside.items()):
                rest = path[len(prefix) :].split("/")
                for depth in range(1, len(rest)):
                    if recursive or depth == 1:
                        folders.add(prefix + "/".join(rest[:depth]))
                if recursive or len(rest) == 1:
                    out.append(self._entry(path, data, is_lfs))
            out += [{"type": "directory", "path": f, "oid": git_blob_sha1(f.encode())} for f in sorted(folders)]
            return self._json(200, out)

        def _preupload(self, repo_type, repo_id, payload):
            if self._repo(repo_type, repo_id) is None:
                return
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) or f["size"] > LFS_ABOVE else "regular",
                    "shouldIgnore": False,
                }
                for f in payload["files"]
            ]
            return self._json(200, {"files": files})

        def _batch(self, payload):
            objects = []
            for o in payload["objects"]:
                entry = {"oid": o["oid"], "size": o["size"], "authenticated": True}
                if o["oid"] not in hub.lfs:
                    entry["actions"] = {"upload": {"href": f"{hub.url}/_lfs/{o['oid']}", "expires_in": 3600}}
                objects.append(entry)
            return self._json(200, {"transfer": "basic", "objects": objects})

        def _commit(self, repo_type, repo_id, revision, body):
            repo = self._repo(repo_type, repo_id)
            if repo is None:
                return
            if revision != "main":
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            if not lines or lines[0]["key"] != "header":
                return self._error(400, "the commit starts with its header")
            files = dict(repo.files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value["path"]
                if key == "file":
                    files[path] = (base64.b64decode(value["content"]), False)
                elif key == "lfsFile":
                    if value["oid"] not in hub.lfs:
                        return self._error(422, f"LFS object {value['oid']} of {path} was never uploaded")
                    files[path] = (hub.lfs[value["oid"]], True)
                elif key == "deletedFile":
                    files.pop(path, None)
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    files = {p: v for p, v in files.items() if not p.startswith(prefix)}
                else:
                    return self._error(400, f"unknown commit operation {key!r}")
            sha = hashlib.sha1(f"{repo.commits[-1][0]}{len(repo.commits)}{body[:4096]!r}".encode()).hexdigest()
            repo.commits.append((sha, lines[0]["value"]["summary"], files))
            prefix = "datasets/" if repo_type == "dataset" else ""
            url = f"{hub.url}/{prefix}{repo_id}/commit/{sha}"
            return self._json(200, {"commitUrl": url, "commitOid": sha, "pullRequestUrl": None})

        def _resolve(self, repo_type, repo_id, revision, path, head):
            if (snap := self._snapshot(repo_type, repo_id, revision)) is None:
                return
            sha, files = snap
            if path not in files:
                return self._error(404, f"Entry not found: {path}", "EntryNotFound")
            data, is_lfs = files[path]
            headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha}
            if is_lfs:
                digest = hashlib.sha256(data).hexdigest()
                headers.update({"X-Linked-Etag": f'"{digest}"', "ETag": f'"{digest}"', "X-Linked-Size": str(len(data))})
            else:
                headers["ETag"] = f'"{git_blob_sha1(data)}"'
            return self._send(200, data, headers, head=head)

    return Handler


@contextlib.contextmanager
def serve(monkeypatch, tmp_path, token: str = "hf_standin_token"):
    """Run a `HubStandin` and point huggingface_hub (and transformers' cached ``hf_api()``) at it; yields it.

    Patches, undone at the end: ``constants.ENDPOINT`` and ``HUGGINGFACE_CO_URL_TEMPLATE`` (read from HF_ENDPOINT at
    import), ``HF_HUB_OFFLINE`` off, ``HF_HUB_DISABLE_XET`` on (weights go by LFS), ``HF_TOKEN`` set and no token file,
    no proxies, and ``transformers.utils.hub._hf_api`` reset so the Trainer's ``HfApi`` is made with this endpoint.
    """
    import transformers.utils.hub
    from huggingface_hub import constants

    hub = HubStandin()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # for child processes
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_TOKEN", token)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    import datasets.config  # datasets keeps its own copy of HF_ENDPOINT, read at import

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub.url)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    try:
        yield hub
    finally:
        hub.stop()
