"""The requests of `python serve.py`'s POST /predict: read and checked in the HTTP process, before a model process
sees them (RequestGuard, an ASGI middleware in front of LitServe). In a LitServe batch an error raised in a worker
fails every request of the batch: a bad request must never reach one.

A bad request is answered with a 4xx and {"error": "..."} saying what was expected: 400 for malformed ones, 413 over
a limit (conf/serve.yaml's limits), 422 for a single text predict.py cannot classify (empty, invalid UTF-8), with
predict.py's record for it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from spam_lightning.inference import Prediction, text_error, two_class_only

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

EXPECTED = 'expected a JSON object {"text": "..."} or {"texts": ["...", ...]}, optionally with "threshold": 0..1'


@dataclass(frozen=True)
class Limits:
    max_texts: int
    max_text_bytes: int
    max_request_bytes: int
    # The served model's classes (preprocessing record), known once it is loaded: a request's "threshold" applies to
    # two classes only, and a 422's record names the positive class as predict.py's does.
    classes: tuple[str, ...] = ()
    positive_class: str | None = None


@dataclass(frozen=True)
class Job:
    """One request as a model process sees it."""

    texts: list[str]
    threshold: float | None  # None: the server's
    single: bool  # {"text": ...}: answered with one prediction, not a list


class RequestError(Exception):
    """A bad request: answered with `status` and {"error": message} (plus `extra` fields)."""

    def __init__(self, status: int, message: str, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {**(extra or {}), "error": message}


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def parse_payload(payload: Any, limits: Limits) -> Job:
    """The texts and threshold of a decoded JSON body; RequestError (400, 413) saying what was expected."""
    if not isinstance(payload, dict):
        raise RequestError(400, f"got a JSON {_json_type(payload)}; {EXPECTED}")
    unknown = sorted(set(payload) - {"text", "texts", "threshold"})
    if unknown:
        raise RequestError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; {EXPECTED}")
    if ("text" in payload) == ("texts" in payload):
        raise RequestError(400, f'give exactly one of "text" and "texts"; {EXPECTED}')
    single = "text" in payload
    if single:
        if not isinstance(payload["text"], str):
            raise RequestError(400, f'"text" must be a string, got a JSON {_json_type(payload["text"])}')
        texts = [payload["text"]]
    else:
        texts = payload["texts"]
        if not isinstance(texts, list):
            raise RequestError(400, f'"texts" must be an array of strings, got a JSON {_json_type(texts)}')
        if not texts:
            raise RequestError(400, '"texts" is an empty array: send at least one text')
        if len(texts) > limits.max_texts:
            raise RequestError(
                413, f"{len(texts)} texts in one request: at most {limits.max_texts} (limits.max_texts); split it"
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise RequestError(400, f'"texts"[{i}] must be a string, got a JSON {_json_type(text)}')
    for i, text in enumerate(texts):
        # surrogatepass: a lone surrogate (a JSON "\ud800") is measured here; the predictor answers "invalid UTF-8"
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limits.max_text_bytes:
            where = "the text" if single else f'"texts"[{i}]'
            raise RequestError(
                413, f"{where} is {size} bytes: at most {limits.max_text_bytes} UTF-8 bytes (limits.max_text_bytes)"
            )
    threshold = payload.get("threshold")
    if threshold is not None and (
        not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0
    ):
        raise RequestError(400, f'"threshold" must be a number in [0, 1], got {json.dumps(threshold)}')
    if threshold is not None and len(limits.classes) > 2:
        raise RequestError(400, two_class_only('"threshold"', threshold, limits.classes))
    return Job(texts, None if threshold is None else float(threshold), single)


def parse_request(body: bytes, limits: Limits) -> Job:
    """A request body (bytes) -> Job, or RequestError: too large, not UTF-8, not JSON, not what parse_payload wants.
    A single text that cannot be classified (empty, invalid UTF-8) is a 422 with predict.py's answer for it."""
    if len(body) > limits.max_request_bytes:
        raise RequestError(413, f"the request body is over {limits.max_request_bytes} bytes (limits.max_request_bytes)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"the request body is not valid UTF-8 (byte {err.start}); {EXPECTED}") from None
    try:
        payload = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_object)
    except RecursionError:  # json's decoder recurses per level: [[[...]]] 200,000 deep
        raise RequestError(400, f"the request body is nested too deeply; {EXPECTED}") from None
    except ValueError as err:
        raise RequestError(400, f"the request body is not JSON ({err}); {EXPECTED}") from None
    job = parse_payload(payload, limits)
    error = text_error(job.texts[0]) if job.single else None
    if error is not None:
        record = Prediction(job.texts[0], None, None, limits.positive_class, None, False, error)
        raise RequestError(422, error, record.to_json())
    return job


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; one naming a key twice is refused (json.loads would keep the last value silently)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise RequestError(400, f"the request body has the key {json.dumps(key)} twice in one object; {EXPECTED}")
        obj[key] = value
    return obj


class RequestGuard:
    """ASGI middleware in front of POST /predict: reads the body (at most limits.max_request_bytes), checks it with
    parse_request and answers a bad one itself; a good one goes on to LitServe as application/json."""

    def __init__(self, app: Callable[..., Awaitable[None]], path: str, limits: Limits) -> None:
        self.app, self.path, self.limits = app, path, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        try:
            if declared > self.limits.max_request_bytes:  # refused before reading it
                raise RequestError(
                    413, f"the request body is over {self.limits.max_request_bytes} bytes (limits.max_request_bytes)"
                )
            body = await _read_body(receive, self.limits.max_request_bytes)
            if body is None:
                return  # the client went away: nobody to answer
            parse_request(body, self.limits)
        except RequestError as err:
            await json_response(err.body, err.status)(scope, receive, send)
            return
        # curl -d sends application/x-www-form-urlencoded, which LitServe would parse as a form: the body is JSON.
        kept = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        kept += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the disconnect, when it comes

        await self.app({**scope, "headers": kept}, replay, send)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, None if the client disconnected first; RequestError once it passes `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body is over {limit} bytes (limits.max_request_bytes)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def json_response(content: Any, status: int = 200) -> Response:
    """UTF-8 JSON; a text holding a lone surrogate (JSON "\\ud800", answered "invalid UTF-8") is sent back escaped,
    since it has no UTF-8 form (FastAPI's own encoding would fail with a 500)."""
    try:
        body = json.dumps(content, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        body = json.dumps(content, allow_nan=False).encode("ascii")
    return Response(body, status_code=status, media_type="application/json")


async def json_error(request: Request, exc: Exception) -> JSONResponse:
    """Every HTTP error as {"error": ...} (LitServe's and FastAPI's use {"detail": ...})."""
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)
