"""A stand-in for the internet on 127.0.0.1, so tests can run the project's real download code paths offline.

`LocalInternet` is an HTTP server (a daemon thread, an OS-chosen port) that serves

* static files at the URL paths they have on the real hosts, e.g. UCI's `/static/public/228/sms+spam+collection.zip`
  (`UCI_ZIP_PATH`) or tiktoken's `/encodings/r50k_base.tiktoken` (`TIKTOKEN_R50K_PATH`), GET and HEAD;
* a Hugging Face Hub stand-in for `huggingface_hub.hf_hub_download`: `/{repo_id}/resolve/{revision}/{filename}`
  answered the way the Hub answers an LFS file (`X-Repo-Commit`, `ETag`/`X-Linked-Etag` = sha256,
  `X-Linked-Size`, `Content-Length`), only at the registered commit: any other revision ("main" included) is a 404
  `X-Error-Code: RevisionNotFound`. No Xet headers are sent, so huggingface_hub downloads over plain HTTP even with
  hf_xet installed;

and records every request as `Request(method, path)`. Faults (`fail`, `truncate`, `corrupt`) make one path misbehave.

huggingface_hub reads HF_ENDPOINT and HF_HOME when it is imported (into `huggingface_hub.constants`), so setting the
environment variables in a process that already imported it changes nothing. Two ways to point it here:

* a subprocess: pass `internet.hub_env(hf_home)` as extra environment (HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, ...);
* in-process: `internet.patch_hub(monkeypatch, hf_home)` patches those constants (and sets the env vars too, for
  any subprocess the test starts).

The real hosts are https: point the project's own downloads here by passing `internet.url(UCI_ZIP_PATH)` (or
`TIKTOKEN_R50K_PATH`) where it takes download URLs, or by patching its URL constants. (tiktoken's own
`get_encoding("gpt2")` fetches `/gpt-2/encodings/main/vocab.bpe` and `encoder.json` from a hard-coded https host,
not r50k_base.tiktoken, and cannot be pointed here.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit

if TYPE_CHECKING:
    import pytest

    from spam_lightning.model.gpt import GPTConfig

UCI_ZIP_PATH = "/static/public/228/sms+spam+collection.zip"  # https://archive.ics.uci.edu + this
TIKTOKEN_R50K_PATH = "/encodings/r50k_base.tiktoken"  # https://openaipublic.blob.core.windows.net + this

_CHUNK = 1 << 20
# What huggingface_hub fetches once per process (telemetry on) to name the AI agent in its User-Agent.
_EMPTY_AGENT_REGISTRY = {"standardEnvVars": [], "harnesses": {}}


class Request(NamedTuple):
    """One request the server received: its method and its raw path (query string included, not unquoted)."""

    method: str
    path: str


@dataclass
class _Fault:
    status: int | None = None  # answer with this status (and no body)
    truncate_at: int | None = None  # send the full headers but only this many body bytes, then close
    corrupt: bool = False  # flip one byte in the middle of the body
    remaining: int | None = None  # how many more requests it applies to; None: all


@dataclass(frozen=True)
class _Resource:
    source: bytes | Path
    size: int
    headers: Mapping[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    internet: LocalInternet

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def hang_up(self) -> None:
        """End the kept-alive connections (a client's pool keeps them open), so their handler threads finish."""
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.internet._handle(self, head=False)

    def do_HEAD(self) -> None:
        self.server.internet._handle(self, head=True)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output clean; `LocalInternet.requests` has the log


class LocalInternet:
    """An HTTP server on 127.0.0.1 serving registered files and a minimal Hugging Face Hub; see the module doc.

    Use as a context manager (`with LocalInternet() as internet:`) or call `start()` and `stop()`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, _Resource] = {}  # unquoted URL path -> resource
        self._hub: dict[str, dict[str, dict[str, _Resource]]] = {}  # repo_id -> revision -> filename -> resource
        self._faults: dict[str, _Fault] = {}  # unquoted URL path -> fault
        self._requests: list[Request] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> LocalInternet:
        if self._server is not None:
            raise RuntimeError("LocalInternet is already running")
        server = _Server()
        server.internet = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="local-internet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.hang_up()
            server.server_close()
        if thread is not None:
            thread.join(timeout=10)

    def __enter__(self) -> LocalInternet:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LocalInternet is not running; call start() or use it as a context manager")
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """`http://127.0.0.1:PORT`, the value for HF_ENDPOINT."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """The full URL of `path` on this server (`path` is used as given: quote it yourself if it needs it)."""
        return self.endpoint + "/" + path.lstrip("/")

    # -- content ---------------------------------------------------------------------------------------------------

    def add_file(self, path: str, source: bytes | str | os.PathLike[str], content_type: str | None = None) -> str:
        """Serve `source` (bytes, or a file read at each request) at URL `path`; returns its full URL."""
        resource = _resource(source, {"Content-Type": content_type or "application/octet-stream"})
        with self._lock:
            self._files[_norm(path)] = resource
        return self.url(path)

    def add_hf_file(self, repo_id: str, filename: str, source: bytes | str | os.PathLike[str], revision: str) -> str:
        """Serve `source` as `filename` of Hub model repo `repo_id` at commit `revision` (40 hex digits) only.

        Answers like the Hub for an LFS file; the ETag is the sha256 of the bytes, so huggingface_hub caches it
        as `blobs/<sha256>`. Returns the URL path that hf_hub_download requests (`hf_resolve_path`).
        """
        if not re.fullmatch(r"[0-9a-f]{40}", revision):
            raise ValueError(f"revision must be a 40-hex commit id (the Hub resolves branches); got {revision!r}")
        sha256 = _sha256(source)
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename.rsplit('/', 1)[-1])};",
            "X-Repo-Commit": revision,
            "ETag": f'"{sha256}"',
            "X-Linked-Etag": f'"{sha256}"',
            "X-Linked-Size": str(size),
        }
        resource = _resource(source, headers)
        with self._lock:
            self._hub.setdefault(repo_id, {}).setdefault(revision, {})[filename] = resource
        return hf_resolve_path(repo_id, revision, filename)

    # -- faults ----------------------------------------------------------------------------------------------------

    def fail(self, path: str, status: int = 500, times: int | None = None) -> None:
        """Answer requests for `path` (any method) with `status` and no body; `times`: only the next N requests."""
        self._set_fault(path, _Fault(status=status, remaining=times))

    def truncate(self, path: str, n_bytes: int, times: int | None = None) -> None:
        """Announce the full Content-Length on GET `path` but send only `n_bytes` of the body, then hang up."""
        self._set_fault(path, _Fault(truncate_at=n_bytes, remaining=times))

    def corrupt(self, path: str, times: int | None = None) -> None:
        """Serve GET `path` with one byte flipped in the middle (same length, so only a hash check notices)."""
        self._set_fault(path, _Fault(corrupt=True, remaining=times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _set_fault(self, path: str, fault: _Fault) -> None:
        with self._lock:
            self._faults[_norm(path)] = fault

    def _take_fault(self, path: str, head: bool) -> _Fault | None:
        with self._lock:
            fault = self._faults.get(path)
            if fault is None or (head and fault.status is None):  # body faults leave HEAD alone
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[path]
            return fault

    # -- request log -----------------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        """A copy of every request received so far, in order."""
        with self._lock:
            return list(self._requests)

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests matched `method` (e.g. "GET") and `path` (compared unquoted, query ignored)."""
        want = None if path is None else _norm(path)
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method) and (want is None or _norm(r.path) == want)
        )

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- pointing huggingface_hub here -----------------------------------------------------------------------------

    def hub_env(self, hf_home: str | os.PathLike[str]) -> dict[str, str]:
        """Environment for a subprocess whose huggingface_hub should use this server and a cache under `hf_home`."""
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(Path(hf_home) / "hub"),  # an inherited HF_HUB_CACHE would win over HF_HOME
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }

    def patch_hub(self, monkeypatch: pytest.MonkeyPatch, hf_home: str | os.PathLike[str]) -> None:
        """Point this process's (already imported) huggingface_hub here, with its cache under `hf_home`.

        Sets `hub_env` in os.environ (for subprocesses) and patches the `huggingface_hub.constants` that were
        computed from it at import: ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE,
        HF_HUB_DISABLE_TELEMETRY (True: no agent-registry request in the log), and the token/registry file paths.
        """
        from huggingface_hub import constants

        env = self.hub_env(hf_home)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(constants, "ENDPOINT", self.endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HOME", env["HF_HOME"])
        monkeypatch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        home = Path(hf_home)
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))

    # -- serving ---------------------------------------------------------------------------------------------------

    def _handle(self, handler: _Handler, head: bool) -> None:
        raw = handler.path
        with self._lock:
            self._requests.append(Request(handler.command, raw))
        path = _norm(raw)
        fault = self._take_fault(path, head)
        if fault is not None and fault.status is not None:
            _send(handler, fault.status, {"Content-Type": "text/plain"}, f"fault injected: {fault.status}\n", head)
            return
        with self._lock:
            resource = self._files.get(path)
        if resource is None and path == "/api/agent-harnesses":  # huggingface_hub's user-agent telemetry
            _send(handler, 200, {"Content-Type": "application/json"}, json.dumps(_EMPTY_AGENT_REGISTRY), head)
            return
        if resource is None:
            found = self._hub_lookup(raw)
            if isinstance(found, tuple):
                status, headers, body = found
                _send(handler, status, headers, body, head)
                return
            resource = found
        if resource is None:
            _send(handler, 404, {"Content-Type": "text/plain"}, "not found\n", head)
            return
        _send_resource(handler, resource, head, fault)

    def _hub_lookup(self, raw: str) -> _Resource | tuple[int, dict[str, str], str] | None:
        """The registered Hub file for a `/{repo_id}/resolve/{revision}/{filename}` path, or the Hub's error."""
        path = urlsplit(raw).path
        match = re.fullmatch(r"/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
        if match is None:
            return None
        repo_id, revision, filename = unquote(match["repo"]), unquote(match["rev"]), unquote(match["file"])
        with self._lock:
            revisions = self._hub.get(repo_id)
            files = None if revisions is None else revisions.get(revision)
            resource = None if files is None else files.get(filename)
        if revisions is None:  # the Hub answers 401 for a repo that does not exist (or is private)
            return _hub_error(401, "RepoNotFound", "Repository not found")
        if files is None:
            return _hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if resource is None:
            return _hub_error(404, "EntryNotFound", f"Entry not found: {filename}", {"X-Repo-Commit": revision})
        return resource


def hf_resolve_path(repo_id: str, revision: str, filename: str) -> str:
    """The URL path hf_hub_download requests for a file: `/{repo_id}/resolve/{revision}/{filename}`."""
    return f"/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"


def _norm(path: str) -> str:
    return "/" + unquote(urlsplit(path).path).lstrip("/")


def _resource(source: bytes | str | os.PathLike[str], headers: Mapping[str, str]) -> _Resource:
    if isinstance(source, bytes):
        return _Resource(source, len(source), dict(headers))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(path)
    return _Resource(path, path.stat().st_size, dict(headers))


def _sha256(source: bytes | str | os.PathLike[str]) -> str:
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()
    digest = hashlib.sha256()
    for chunk in _chunks(Path(source)):
        digest.update(chunk)
    return digest.hexdigest()


def _hub_error(
    status: int, code: str, message: str, extra: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message, **(extra or {})}
    return status, headers, json.dumps({"error": message})


def _send(handler: _Handler, status: int, headers: Mapping[str, str], body: str, head: bool) -> None:
    data = body.encode()
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    if not head:
        handler.wfile.write(data)


def _send_resource(handler: _Handler, resource: _Resource, head: bool, fault: _Fault | None) -> None:
    handler.send_response(200)
    for name, value in resource.headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(resource.size))
    handler.end_headers()
    if head:
        return
    if fault is None and isinstance(resource.source, Path):  # the fast path: the kernel copies the file
        try:
            with open(resource.source, "rb") as f:
                handler.connection.sendfile(f)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        return
    limit = resource.size if fault is None or fault.truncate_at is None else min(fault.truncate_at, resource.size)
    flip_at = resource.size // 2 if fault is not None and fault.corrupt else -1
    sent = 0
    try:
        for chunk in _chunks(resource.source):
            if sent >= limit:
                break
            chunk = chunk[: limit - sent]
            if sent <= flip_at < sent + len(chunk):
                i = flip_at - sent
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
            handler.wfile.write(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up; nothing to answer
        handler.close_connection = True
        return
    if sent < resource.size:
        handler.close_connection = True  # a short body must end the connection, or the client waits for the rest


def _chunks(source: bytes | Path) -> Iterator[bytes]:
    if isinstance(source, bytes):
        for start in range(0, len(source), _CHUNK):
            yield source[start : start + _CHUNK]
        return
    with open(source, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def write_gpt2_safetensors(path: str | os.PathLike[str], preset: str | GPTConfig = "gpt2", seed: int = 0) -> Path:
    """Write a randomly initialised GPT-2 `model.safetensors` in the Hub's layout (openai-community/gpt2's keys,
    no `transformer.` prefix, Conv1D (in, out) weights) with exactly the shapes of `preset` (a name or a GPTConfig).

    float32; weights ~ normal(0, 0.02), LayerNorm weights 1, biases 0; deterministic for a `seed`. The safetensors
    file is written tensor by tensor, so memory peaks at the largest tensor (wte), not the whole model.
    """
    import torch

    from spam_lightning.model.gpt import PRESETS
    from spam_lightning.model.weights import hf_shapes

    if sys.byteorder != "little":
        raise RuntimeError("safetensors stores little-endian data; this writer copies native float32 bytes")
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    shapes = hf_shapes(cfg)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        n_bytes = 4 * _numel(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n_bytes]}
        offset += n_bytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors itself pads it
    generator = torch.Generator().manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for name, shape in shapes.items():
            if name.endswith(".bias"):
                tensor = torch.zeros(shape)
            elif re.search(r"(^|\.)ln_(1|2|f)\.weight$", name):
                tensor = torch.ones(shape)
            else:
                tensor = torch.empty(shape).normal_(0.0, 0.02, generator=generator)
            f.write(tensor.numpy().data)
    return path


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n
