"""A loopback stand-in for the Hugging Face Hub and NGC's model API, enough for `asr models pull`.

It answers what huggingface_hub asks the real Hub (``GET /api/models/ORG/REPO[/revision/REV]?blobs=true``,
``HEAD`` and ``GET /ORG/REPO/resolve/REV/FILE`` with ``X-Repo-Commit``, ``X-Linked-Etag`` and
``X-Linked-Size``, ``Range`` for resumed downloads, ``X-Error-Code`` on errors) and what NGC's
public download URLs do (``/v2/models/ORG/TEAM/MODEL/versions/V/files/FILE``, redirected to
storage, as NeMo's ``from_pretrained`` fetches them). Faults are switched on per path so that a
test can truncate, corrupt, refuse or lose a download.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class HubFile:
    data: bytes
    stated_sha256: str | None = None
    """What the Hub states (default: the real sha256); set it wrong to simulate corruption."""

    @property
    def sha256(self) -> str:
        return self.stated_sha256 or hashlib.sha256(self.data).hexdigest()


@dataclass
class Standin:
    hf: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    """ORG/REPO -> file name -> file."""
    ngc: dict[str, bytes] = field(default_factory=dict)
    """ORG/[TEAM/]MODEL/versions/V/files/FILE -> bytes."""
    plain: dict[str, bytes] = field(default_factory=dict)
    """/PATH -> bytes."""
    licenses: dict[str, str] = field(default_factory=dict)
    truncate_once: set[str] = field(default_factory=set)
    """Paths whose next GET stops halfway (a dropped connection the client can resume)."""
    truncate_always: set[str] = field(default_factory=set)
    deny: set[str] = field(default_factory=set)
    """Repos or paths answered 401."""
    requests: list[tuple[str, str]] = field(default_factory=list)
    ranges: list[tuple[str, str]] = field(default_factory=list)
    """(path, Range header) of every ranged request: a resumed download shows here."""
    commit: str = "0123456789abcdef0123456789abcdef01234567"

    def start(self) -> "Standin":
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                standin._answer(self, head=True)

            def do_GET(self):
                standin._answer(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- routing ---------------------------------------------------------------------------

    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        self.requests.append((h.command, path))
        if h.headers.get("Range"):
            self.ranges.append((path, h.headers["Range"]))
        if path.startswith("/api/models/"):
            return self._model_info(h, path[len("/api/models/"):])
        if path.startswith("/v2/models/"):
            return self._ngc(h, path[len("/v2/models/"):])
        if path.startswith("/storage/"):
            key = path[len("/storage/"):]
            return self._content(h, path, self.ngc.get(key), head)
        if "/resolve/" in path:
            return self._resolve(h, path, head)
        return self._content(h, path, self.plain.get(path), head)

    def _model_info(self, h, rest: str) -> None:
        repo, _, revision = rest.partition("/revision/")
        if repo in self.deny:
            return self._error(h, 401, "RepoNotFound", "Invalid credentials")
        if repo not in self.hf:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        if revision and revision not in ("main", self.commit):
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
        siblings = [{"rfilename": name, "size": len(f.data),
                     "lfs": {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}}
                    for name, f in self.hf[repo].items()]
        siblings.append({"rfilename": "README.md", "size": 10})
        license_ = self.licenses.get(repo)
        body = {"id": repo, "sha": self.commit, "siblings": siblings, "private": False,
                "tags": [f"license:{license_}"] if license_ else [],
                "cardData": {"license": license_} if license_ else None}
        import json

        self._send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _resolve(self, h, path: str, head: bool) -> None:
        repo, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, filename = rest.partition("/")
        if repo in self.deny:
            return self._error(h, 401, "RepoNotFound", "Invalid credentials", head)
        hub_file = self.hf.get(repo, {}).get(filename)
        if hub_file is None:
            return self._error(h, 404, "EntryNotFound", "Entry not found", head)
        headers = {"X-Repo-Commit": self.commit, "ETag": f'"{hub_file.sha256}"',
                   "X-Linked-Etag": f'"{hub_file.sha256}"', "X-Linked-Size": str(len(hub_file.data))}
        return self._content(h, path, hub_file.data, head, headers)

    def _ngc(self, h, rest: str) -> None:
        if any(rest.startswith(d) for d in self.deny):
            return self._send(h, 401, b'{"requestStatus":{"statusCode":"UNAUTHORIZED"}}', {})
        if rest not in self.ngc:
            return self._send(h, 404, b'{"requestStatus":{"statusCode":"NOT_FOUND"}}', {})
        return self._send(h, 302, b"", {"Location": f"/storage/{rest}"})

    # --- bodies ----------------------------------------------------------------------------

    def _content(self, h, path: str, data: bytes | None, head: bool, headers: dict | None = None) -> None:
        if data is None:
            return self._send(h, 404, b"not found", {})
        headers = dict(headers or {})
        start = 0
        ranged = h.headers.get("Range", "")
        if ranged.startswith("bytes=") and not head:
            start = int(ranged[len("bytes="):].split("-")[0] or 0)
            if start >= len(data):
                return self._send(h, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        status = 206 if start else 200
        if head:
            headers["Content-Length"] = str(len(data))
            return self._send(h, status, b"", headers, length_given=True)
        cut = path in self.truncate_always or path in self.truncate_once
        self.truncate_once.discard(path)
        if cut:  # state the full length, send half, drop the connection
            h.send_response(status)
            for key, value in headers.items():
                h.send_header(key, value)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[:len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        self._send(h, status, body, headers)

    def _error(self, h, status: int, code: str, message: str, head: bool = False) -> None:
        self._send(h, status, b"" if head else f'{{"error":"{message}"}}'.encode(),
                   {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"})

    @staticmethod
    def _send(h, status: int, body: bytes, headers: dict, length_given: bool = False) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        if not length_given:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if body:
            h.wfile.write(body)
