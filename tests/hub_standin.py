"""A small stand-in for the Hugging Face Hub on 127.0.0.1, for tests: the endpoints huggingface_hub calls.

It serves repositories held in memory (model and dataset snapshots) as
huggingface_hub 2.x asks for them, and takes uploads:

- ``GET /api/{models|datasets}/{org}/{name}[/revision/{rev}]``: the repo's info (``sha``, ``siblings``)
- ``GET /api/{kind}s/{org}/{name}/tree/{rev}``: the file listing (path, size, oid)
- ``HEAD|GET /{org}/{name}/resolve/{rev}/{file}`` (``/datasets/...`` for datasets): the file, with
  ``X-Repo-Commit``, ``ETag``, ``Content-Length`` and ``Range`` (206) for a resumed download
- a gated repo answers 401/403 with ``X-Error-Code: GatedRepo`` unless the request carries its token;
  an unknown repo answers 401 ``RepoNotFound``, as the Hub does to an anonymous caller
- ``POST /api/repos/create``, ``/api/validate-yaml`` (a model card's front matter), ``/api/{kind}s/{repo}/
  preupload/{rev}`` (every file ``regular``) and ``/api/{kind}s/{repo}/commit/{rev}`` (ndjson, base64
  contents): the pushed files land in ``repos``

Every request is recorded (``requests``), so a test can say that a second run
asked for nothing; ``cut_once`` makes the next full download of a file stop
half-way by closing the connection, as a dropped network does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml


@dataclass
class Repo:
    files: dict[str, bytes]
    gated_token: str | None = None
    """a gated repo: only requests with ``Authorization: Bearer <gated_token>`` get past the gate"""
    private: bool = False

    @property
    def sha(self) -> str:
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + self.files[name])
        return digest.hexdigest()


@dataclass
class Request:
    method: str
    path: str
    headers: dict = field(default_factory=dict)
    """by lower-case name"""


class HubStandin:
    """``with HubStandin() as hub: hub.add("model", "org/name", {...})``; ``hub.url`` is its HF_ENDPOINT."""

    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[Request] = []
        self.cut_once: set[str] = set()
        self._lock = threading.Lock()
        standin = self

        class Handler(_Handler):
            hub = standin

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, kind: str, repo_id: str, files: dict[str, bytes], **options) -> Repo:
        repo = Repo(dict(files), **options)
        self.repos[(kind, repo_id)] = repo
        return repo

    def add_folder(self, kind: str, repo_id: str, folder: Path, **options) -> Repo:
        """A repo holding every file of ``folder`` (a model saved by transformers, say)."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.add(kind, repo_id, files, **options)

    def downloads(self, name: str | None = None) -> list[Request]:
        """The GET requests for file contents (``resolve``), of file ``name`` when given."""
        return [r for r in self.requests if r.method == "GET" and "/resolve/" in r.path
                and (name is None or r.path.endswith("/" + name))]


_RESOLVE = re.compile(r"^/(?:(datasets|models)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+?)(?:/(revision|tree|preupload|commit)/([^/]+)(/.*)?)?$")


def go_online(server: HubStandin, monkeypatch, tmp_path: Path) -> None:
    """Point huggingface_hub at ``server``, online, with an empty cache under ``tmp_path`` and no token.

    huggingface_hub read conftest's ``HF_HUB_OFFLINE=1`` into its constants at import: set there too."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandin
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: a test reads ``requests`` instead
        pass

    # -- answers ---------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, length: int | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, value, status: int = 200) -> None:
        self._send(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(),
                   {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message})

    def _repo(self, kind: str, repo_id: str) -> Repo | None:
        """The repo, or None after answering as the Hub does (not found, or gated without the right token)."""
        repo = self.hub.repos.get((kind, repo_id))
        if repo is None or repo.private:
            self._error(401, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            return None
        if repo.gated_token is not None:
            auth = self.headers.get("Authorization", "")
            if auth != f"Bearer {repo.gated_token}":
                status = 403 if auth else 401
                self._error(status, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access "
                            "to it and be authenticated to access it. Please log in.")
                return None
        return repo

    # -- requests --------------------------------------------------------------------------------

    def _record(self) -> None:
        with self.hub._lock:
            headers = {key.lower(): value for key, value in self.headers.items()}
            self.hub.requests.append(Request(self.command, self.path, headers))

    def do_HEAD(self) -> None:
        self._record()
        self._route()

    def do_GET(self) -> None:
        self._record()
        self._route()

    def do_POST(self) -> None:
        self._record()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path
        if path == "/api/repos/create":
            data = json.loads(body or b"{}")
            kind = (data.get("type") or "model")
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            if (kind, repo_id) in self.hub.repos:
                self._error(409, "RepoExists", "You already created this model repo")
                return
            self.hub.add(kind, repo_id, {}, private=data.get("visibility") == "private" or bool(data.get("private")))
            self._json({"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})
            return
        if path == "/api/validate-yaml":  # a pushed model card's front matter must be YAML, as on the Hub
            content = json.loads(body or b"{}").get("content", "")
            front = content.split("---", 2)[1] if content.startswith("---") and content.count("---") >= 2 else ""
            try:
                yaml.safe_load(front)
            except yaml.YAMLError as exc:
                self._json({"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []}, status=400)
                return
            self._json({"errors": [], "warnings": []})
            return
        match = _API.match(unquote(path))
        if not match or match.group(3) not in ("preupload", "commit"):
            self._error(404, "EntryNotFound", f"no such endpoint: {path}")
            return
        kind, repo_id, action = match.group(1)[:-1], match.group(2), match.group(3)
        repo = self.hub.repos.get((kind, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            return
        if action == "preupload":
            files = json.loads(body)["files"]
            self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                  for f in files]})
            return
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item.get("key") == "file":
                value = item["value"]
                content = value["content"]
                repo.files[value["path"]] = (base64.b64decode(content) if value.get("encoding") == "base64"
                                             else content.encode())
            elif item.get("key") == "deletedFile":
                repo.files.pop(item["value"]["path"], None)
        self._json({"commitUrl": f"{self.hub.url}/{repo_id}/commit/{repo.sha}", "commitOid": repo.sha,
                    "pullRequestUrl": None})

    def _route(self) -> None:
        path = unquote(urlsplit(self.path).path)
        match = _API.match(path)
        if match:
            kind, repo_id, action, revision = match.group(1)[:-1], match.group(2), match.group(3), match.group(4)
            repo = self._repo(kind, repo_id)
            if repo is None:
                return
            if revision not in (None, "main", repo.sha):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return
            if action == "tree":
                self._json([{"type": "file", "path": name, "size": len(data),
                             "oid": hashlib.sha1(data).hexdigest()} for name, data in sorted(repo.files.items())])
                return
            self._json({"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": repo.private,
                        "gated": repo.gated_token is not None and "manual",
                        "siblings": [{"rfilename": name} for name in sorted(repo.files)]})
            return
        match = _RESOLVE.match(path)
        if match:
            kind = "dataset" if match.group(1) == "datasets" else "model"
            repo = self._repo(kind, match.group(2))
            if repo is None:
                return
            revision, name = match.group(3), match.group(4)
            if revision not in ("main", repo.sha):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return
            if name not in repo.files:
                self._error(404, "EntryNotFound", f"{name} does not exist at {revision}")
                return
            self._file(repo, name)
            return
        self._error(404, "EntryNotFound", f"no such endpoint: {path}")

    def _file(self, repo: Repo, name: str) -> None:
        data = repo.files[name]
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if self.command == "GET" and ranged:
            start = int(ranged.group(1))
            end = int(ranged.group(2)) if ranged.group(2) else len(data) - 1
            part = data[start:end + 1]
            self._send(206, part, {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"})
            return
        if self.command == "GET" and name in self.hub.cut_once:
            self.hub.cut_once.discard(name)
            half = len(data) // 2
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:half])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the network drops half-way through the file
            return
        self._send(200, data, headers, length=len(data))
