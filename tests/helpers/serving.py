"""`python serve.py ...` in a subprocess for the serving tests, and a small HTTP client (the standard library's)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, the JSON body, else the text) of one request to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data.decode("utf-8", "replace")


def post(port: int, payload: Any) -> tuple[int, Any]:
    return request(port, "POST", "/predict", json.dumps(payload).encode(), {"Content-Type": "application/json"})


def healthy(port: int) -> bool:
    try:
        return request(port, "GET", "/health") == (200, "ok")
    except OSError:
        return False


def start_serve_py(*overrides: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`python serve.py OVERRIDES port=FREE` in its own process group (the model and HTTP processes with it), its
    output into `log`; returns the process and the port."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "serve.py", *overrides, f"port={port}"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, port


def wait_until_healthy(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"serve.py did not start (exit {proc.poll()}):\n{log.read_text()}")
        time.sleep(0.3)


@contextmanager
def serving(*overrides: str, log: Path, timeout: float = 120) -> Iterator[int]:
    """`python serve.py OVERRIDES port=FREE` until /health answers; yields the port; stopped (SIGTERM, then its
    whole process group SIGKILLed) afterwards."""
    proc, port = start_serve_py(*overrides, log=log)
    try:
        wait_until_healthy(proc, port, log, timeout)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
        proc.wait()
