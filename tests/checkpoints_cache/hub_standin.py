"""A loopback stand-in for the Hugging Face Hub endpoints huggingface_hub 2.4.0 calls.

Served (for ``models`` and ``datasets``):
  GET  /api/{type}s/{repo}/revision/{rev}        repo info pinned to a commit (HfApi.repo_info)
  GET  /api/{type}s/{repo}/tree/{rev}[/{path}]   file listing with size, git oid and LFS sha256
  POST /api/{type}s/{repo}/paths-info/{rev}      the same for given paths
  GET  /api/{type}s/{repo}/refs                  branches (HfApi.list_repo_refs)
  HEAD/GET /[datasets/]{repo}/resolve/{rev}/{f}  ETag, X-Repo-Commit; LFS files answer 302 to a
                                                 storage URL on another host name, with
                                                 X-Linked-Etag (sha256) and X-Linked-Size, as the Hub does
  HEAD/GET /lfs-cdn/{sha256}                     the storage side, with Range / 206
Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) like the Hub.

Fault injection (``inject``): "500" answers one request with HTTP 500; "drop" sends the headers
and half of the body, then closes the connection; "corrupt" flips bytes of the body (same length);
"ignore-range" answers a Range request with the whole file (HTTP 200). Every request is logged
with its method, path, Range header, status and body bytes sent.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".idx", ".pt", ".jsonl")  # .jsonl: LLM360 data chunks are LFS


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> files
    fake_sizes: dict[str, int] = field(default_factory=dict)  # path -> size the listing claims (disk tests)

    def resolve(self, rev: str) -> str | None:
        if rev in self.commits:
            return rev
        return self.branches.get(rev)


@dataclass
class Fault:
    kind: str  # "500" | "drop" | "corrupt" | "ignore-range"
    path_contains: str
    method: str = "GET"
    times: int = 1


class HubStandin:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content (the "storage" side)
        self.log: list[dict] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.rate_bytes_per_s: float | None = None  # emulate a network link for benchmarks (None = loopback speed)

    # -- content -----------------------------------------------------------------------------
    def add_commit(self, repo_type: str, repo_id: str, branch: str, files: dict[str, bytes]) -> str:
        repo = self.repos.setdefault((repo_type, repo_id), Repo(repo_type, repo_id))
        h = hashlib.sha1(f"{repo_id}@{branch}".encode())
        for name in sorted(files):
            h.update(name.encode() + hashlib.sha256(files[name]).digest())
        commit = h.hexdigest()
        repo.commits[commit] = dict(files)
        repo.branches[branch] = commit
        for data in files.values():
            self.blobs[hashlib.sha256(data).hexdigest()] = data
        return commit

    def entry(self, repo: Repo, path: str, data: bytes) -> dict:
        size = repo.fake_sizes.get(path, len(data))
        e = {"type": "file", "oid": git_blob_sha1(data), "size": size, "path": path}
        if path.endswith(LFS_SUFFIXES):
            e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": size, "pointerSize": 134}
        return e

    def inject(self, kind: str, path_contains: str, method: str = "GET", times: int = 1) -> None:
        self.faults.append(Fault(kind, path_contains, method, times))

    def take_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            for f in self.faults:
                if f.times > 0 and f.method == method and f.path_contains in path:
                    f.times -= 1
                    return f.kind
        return None

    def requests(self, method: str | None = None, contains: str = "") -> list[dict]:
        return [r for r in self.log if (method is None or r["method"] == method) and contains in r["path"]]

    # -- server --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def storage_url(self) -> str:
        # Another host name for the same socket, so huggingface_hub treats it as a CDN (no auth, no follow on HEAD).
        assert self._server is not None
        return f"http://localhost:{self._server.server_address[1]}"

    def start(self) -> "HubStandin":
        standin = self

        class Handler(_Handler):
            hub = standin

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "HubStandin":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # A client hanging up mid-response (after a refused Range answer, say) is not a server bug.
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, BrokenPipeError)):
            super().handle_error(request, client_address)


_API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)/(revision|tree|paths-info|refs)(?:/([^/]+))?(?:/(.*))?$")
_RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN = re.compile(r"^/lfs-cdn/([0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandin
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing ------------------------------------------------------------------------------
    def _record(self, status: int, sent: int) -> None:
        self.hub.log.append({"method": self.command, "path": urlparse(self.path).path, "range": self.headers.get("Range"),
                             "status": status, "bytes": sent})

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self._write(body)
        self._record(status, 0 if head else len(body))

    def _write(self, body: bytes) -> None:
        rate = self.hub.rate_bytes_per_s
        if not rate:
            self.wfile.write(body)
            return
        import time

        step, t0 = 1 << 20, time.perf_counter()
        for i in range(0, len(body), step):
            ahead = i / rate - (time.perf_counter() - t0)  # pace before each chunk, none after the last
            if ahead > 0:
                time.sleep(ahead)
            self.wfile.write(body[i:i + step])

    def _json(self, obj, headers: dict | None = None) -> None:
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, msg: str, headers: dict | None = None) -> None:
        self._send(status, json.dumps({"error": msg}).encode(),
                   {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": msg, **(headers or {})},
                   head=self.command == "HEAD")

    def _fault(self) -> str | None:
        kind = self.hub.take_fault(self.command, urlparse(self.path).path)
        if kind == "500":
            self._send(500, b'{"error": "injected"}', {"Content-Type": "application/json"}, head=self.command == "HEAD")
        return kind

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        fault = self._fault()
        if fault == "500":
            return
        path = urlparse(self.path).path
        if m := _CDN.match(path):
            return self._file_body(self.hub.blobs.get(m.group(1)), fault, {})
        if m := _RESOLVE.match(path):
            return self._resolve("dataset" if m.group(1) else "model", m.group(2), unquote(m.group(3)), unquote(m.group(4)), fault)
        if m := _API.match(path):
            return self._api(m.group(1)[:-1], m.group(2), m.group(3), unquote(m.group(4) or ""), unquote(m.group(5) or ""))
        self._error(404, "NotFound", f"no route {path}")

    # -- API -----------------------------------------------------------------------------------
    def _api(self, repo_type: str, repo_id: str, what: str, rev: str, sub: str) -> None:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        if what == "refs":
            return self._json({"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                                            for b, c in sorted(repo.branches.items())],
                               "converts": [], "tags": [], "pullRequests": []})
        commit = repo.resolve(rev)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = repo.commits[commit]
        if what == "revision":
            return self._json({"id": repo_id, "sha": commit, "private": False,
                               "siblings": [{"rfilename": p} for p in sorted(files)]})
        if what == "tree":
            entries = [self.hub.entry(repo, p, d) for p, d in sorted(files.items()) if p.startswith(sub)]
            return self._json(entries)
        # paths-info: form-encoded body "paths=a&paths=b&expand=False"
        n = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(n).decode())
        wanted = form.get("paths", [])
        return self._json([self.hub.entry(repo, p, files[p]) for p in wanted if p in files])

    # -- files ---------------------------------------------------------------------------------
    def _resolve(self, repo_type: str, repo_id: str, rev: str, filename: str, fault: str | None) -> None:
        head = self.command == "HEAD"
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        commit = repo.resolve(rev)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        data = repo.commits[commit].get(filename)
        if data is None:
            return self._error(404, "EntryNotFound", f"{filename} does not exist at {rev}", {"X-Repo-Commit": commit})
        entry = self.hub.entry(repo, filename, data)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        if "lfs" in entry:
            sha = entry["lfs"]["oid"]
            headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": entry["size"],
                            "Location": f"{self.hub.storage_url}/lfs-cdn/{sha}"})
            return self._send(302, b"", headers, head=True)
        return self._file_body(data, fault, headers)

    def _file_body(self, data: bytes | None, fault: str | None, headers: dict) -> None:
        head = self.command == "HEAD"
        if data is None:
            return self._error(404, "EntryNotFound", "no such blob")
        total = len(data)
        start, end = 0, total  # end exclusive
        status = 200
        rng = self.headers.get("Range")
        if rng and fault != "ignore-range":
            m = _RANGE.match(rng.strip())
            if not m:
                return self._send(416, b"", {"Content-Range": f"bytes */{total}"})
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, total) if m.group(2) else total
            if start >= total:
                return self._send(416, b"", {"Content-Range": f"bytes */{total}"})
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{total}"}
        body = data[start:end]
        if fault == "corrupt" and body:
            body = bytes(b ^ 0xFF for b in body[:16]) + body[16:]
        if head:
            return self._head(status, len(body), headers)
        if fault == "drop":
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, str(v))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            half = body[: len(body) // 2]
            self.wfile.write(half)
            self.wfile.flush()
            self._record(status, len(half))
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._send(status, body, headers)

    def _head(self, status: int, length: int, headers: dict) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self._record(status, 0)
