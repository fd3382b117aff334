"""`python serve.py` (Hydra, conf/serve.yaml): a trained model behind HTTP with LitServe, and a web page.

    POST /predict  {"text": "..."} -> one prediction; {"texts": [...]} -> {"predictions": [...]}
                   (predict.py's fields: text, label, probabilities, positive_class, positive_probability,
                   truncated, error; optional "threshold", two-class models only)
    GET /          the web page (static/index.html)
    GET /info      the model's provenance (name, metrics, preprocessing record, training) and the serving settings
    GET /health    "ok" once every model process is ready

Each model process (LitServe worker) loads the model with inference.load_predictor and scores the texts of up to
max_batch_size requests in one Predictor.class_probabilities call. A request is read and checked in the HTTP
process (RequestGuard) before it is queued: in a batch, an error raised in a worker would fail every request of
the batch, and a bad request must never reach one.

The requests of `python serve.py`'s POST /predict: read and checked in the HTTP process, before a model process
sees them (RequestGuard, an ASGI middleware in front of LitServe). In a LitServe batch an error raised in a worker
fails every request of the batch: a bad request must never reach one.

A bad request is answered with a 4xx and {"error": "..."} saying what was expected: 400 for malformed ones, 413 over
a limit (conf/serve.yaml's limits), 422 for a single text predict.py cannot classify (empty, invalid UTF-8), with
predict.py's record for it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import litserve as ls
import torch
import yaml
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from omegaconf import DictConfig
from starlette.exceptions import HTTPException as StarletteHTTPException

from spam_lightning.errors import ConfigError, check_int, check_number
from spam_lightning.inference.checkpoint import run_dir_of
from spam_lightning.inference.exported import portable, run_metrics
from spam_lightning.inference.hf import METRICS
from spam_lightning.inference.predictor import (
    Prediction,
    Predictor,
    check_options,
    load_predictor,
    text_error,
    two_class_only,
)

API_PATH = "/predict"
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServer.run accepts
DEVICES = ("auto", "cpu", "cuda", "mps")  # LitServer's accelerators


# -- the model process ----------------------------------------------------------------------------


class SpamAPI(ls.LitAPI):
    """LitServe's model side. Pickled into each worker process: it carries only settings until setup()."""

    def __init__(self, settings: dict[str, Any], limits: Limits, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=API_PATH)
        self.settings, self.limits = settings, limits
        self.predictor: Predictor | None = None

    def setup(self, device: str) -> None:
        s = self.settings
        if s["threads"] is not None and device == "cpu":
            torch.set_num_threads(s["threads"])
        self.predictor = load_predictor(
            s["ckpt_path"],
            s["model_dir"],
            s["tokenizer_file"],
            device if s["backend"] == "torch" else "cpu",
            s["precision"],
            s["backend"],
        )

    # No annotations on decode_request's argument and encode_response's result: LitServe reads them as the
    # endpoint's request and response types (none: a JSON body, and whatever the worker returns).
    def decode_request(self, request) -> Job:  # type: ignore[no-untyped-def]
        return parse_payload(request, self.limits)  # RequestGuard passed it: cannot fail

    def batch(self, inputs: list[Job]) -> list[Job]:
        return inputs

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def predict(self, x: Job | list[Job]) -> dict[str, Any] | list[dict[str, Any]]:
        """The texts of every request in the batch in one class_probabilities call (batch_size texts per pass)."""
        jobs = x if isinstance(x, list) else [x]
        assert self.predictor is not None
        texts = [t for job in jobs for t in job.texts]
        rows, encoded = self.predictor.class_probabilities(texts, self.settings["batch_size"])
        out, start = [], 0
        for job in jobs:
            end = start + len(job.texts)
            threshold = self.settings["threshold"] if job.threshold is None else job.threshold
            answers = self.predictor.predictions(job.texts, rows[start:end], encoded[start:end], threshold)
            out.append(answers[0].to_json() if job.single else {"predictions": [a.to_json() for a in answers]})
            start = end
        return out if isinstance(x, list) else out[0]

    def encode_response(self, output: dict[str, Any]):  # type: ignore[no-untyped-def]
        return json_response(output)


# -- the server -----------------------------------------------------------------------------------


def settings_of(cfg: DictConfig) -> tuple[dict[str, Any], Limits]:
    """The checked settings (ConfigError naming the key otherwise) and the request limits."""
    check_options(cfg)
    if (cfg.get("ckpt_path") is None) == (cfg.get("model_dir") is None):
        raise ConfigError(
            "give the model to serve: python serve.py model_dir=EXPORTED_FOLDER (or ckpt_path=PATH.ckpt), not both"
        )
    if cfg.host not in HOSTS:
        raise ConfigError(f"host={cfg.host}: expected one of {', '.join(HOSTS)} (0.0.0.0 or :: listen everywhere)")
    check_int("port", cfg.port, 1024, 65535)
    check_int("max_batch_size", cfg.max_batch_size, 1)
    check_number("batch_timeout", cfg.batch_timeout, 0.0, 60.0)
    check_int("workers", cfg.workers, 1)
    check_int("api_servers", cfg.api_servers, 1)
    check_number("request_timeout", cfg.request_timeout, 0.0, 3600.0, low_open=True)
    if cfg.threads is not None:
        check_int("threads", cfg.threads, 1)
    if not isinstance(cfg.fast_queue, bool):
        raise ConfigError(f"fast_queue={cfg.fast_queue}: expected true or false")
    if str(cfg.device) not in DEVICES:
        raise ConfigError(f"device={cfg.device}: expected one of {', '.join(DEVICES)}")
    if cfg.devices != "auto":
        check_int("devices", cfg.devices, 1)
    limits = Limits(
        *(check_int(f"limits.{k}", cfg.limits[k], 1) for k in ("max_texts", "max_text_bytes", "max_request_bytes"))
    )
    # null: the cores but one (the HTTP and queue processes need one) shared among the model processes
    threads = cfg.threads if cfg.threads is not None else max(1, ((os.cpu_count() or 1) - 1) // cfg.workers)
    settings = {
        "ckpt_path": _absolute(cfg.get("ckpt_path")),
        "model_dir": _absolute(cfg.get("model_dir")),
        "tokenizer_file": _absolute(cfg.get("tokenizer_file")),
        "threshold": None if cfg.threshold is None else float(cfg.threshold),  # fit_to_model resolves null
        "batch_size": int(cfg.batch_size),
        "threads": int(threads),
        "precision": str(cfg.precision),
        "backend": str(cfg.backend),
    }
    return settings, limits


def fit_to_model(settings: dict[str, Any], limits: Limits, predictor: Predictor) -> tuple[dict[str, Any], Limits]:
    """The settings with the threshold the model takes (null: 0.5 for two classes; refused for more, with a
    ConfigError saying why), and limits that know its classes (a request's "threshold" is checked against them)."""
    pre = predictor.preprocessing
    settings = {**settings, "threshold": predictor.decision_threshold(settings["threshold"])}
    return settings, replace(limits, classes=pre.labels, positive_class=pre.positive_class)


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().absolute())


def check_port(host: str, port: int) -> None:
    """Fail with one line now if the port is taken, rather than after the model processes started."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ConfigError(
                f"port={port}: cannot listen on {host}:{port} ({err.strerror}); choose another port="
            ) from None


def find_metrics(cfg: DictConfig) -> dict[str, Any] | None:
    """{"test": {...}, "validation": {...}} of the served model: metrics_file, else the run's metrics.json when
    ckpt_path is its best checkpoint, else the test metrics of an export's model card (README.md)."""
    if cfg.get("metrics_file"):
        try:
            metrics = json.loads(Path(cfg.metrics_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"metrics_file={cfg.metrics_file}: not a readable metrics.json ({err})") from err
    elif cfg.get("ckpt_path"):
        metrics = run_metrics(Path(cfg.ckpt_path))
    else:
        metrics = _card_metrics(Path(cfg.model_dir) / "README.md")
    if not isinstance(metrics, dict):
        return None
    return {
        split: {k: v for k, v in metrics[split].items() if isinstance(v, int | float) and math.isfinite(v)}
        for split in ("validation", "test")
        if isinstance(metrics.get(split), dict)
    } or None


def _card_metrics(card: Path) -> dict[str, Any] | None:
    """The test metrics in a model card's front matter (model_card.metadata wrote them under model-index)."""
    try:
        front = card.read_text(encoding="utf-8").split("---")[1]
        results = yaml.safe_load(front)["model-index"][0]["results"][0]["metrics"]
        ours = {hub: name for name, hub in METRICS.items()}
        return {"test": {ours[r["type"]]: r["value"] for r in results if r.get("type") in ours}}
    except (OSError, IndexError, KeyError, TypeError, yaml.YAMLError):
        return None


def describe(cfg: DictConfig, predictor: Predictor, settings: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """What GET /info shows as "model" (and the page reads): provenance, metrics and the serving settings."""
    if cfg.get("ckpt_path"):
        run_dir = run_dir_of(cfg.ckpt_path)
        name = f"{run_dir.name}/{Path(cfg.ckpt_path).name}" if run_dir is not None else Path(cfg.ckpt_path).name
    else:
        name = Path(cfg.model_dir).absolute().name
    return {
        "name": name,
        "source": "ckpt_path" if cfg.get("ckpt_path") else "model_dir",
        "metrics": find_metrics(cfg),
        "preprocessing": predictor.preprocessing.to_dict(),
        "training": portable(predictor.training),
        "serving": {
            "threshold": settings["threshold"],
            "backend": settings["backend"],
            "precision": settings["precision"],
            "batch_size": settings["batch_size"],
            "max_batch_size": int(cfg.max_batch_size),
            "batch_timeout": float(cfg.batch_timeout),
            "limits": {
                "max_texts": limits.max_texts,
                "max_text_bytes": limits.max_text_bytes,
                "max_request_bytes": limits.max_request_bytes,
            },
        },
    }


def page() -> str:
    return files("spam_lightning.inference").joinpath("static/index.html").read_text(encoding="utf-8")


def build_server(cfg: DictConfig, settings: dict[str, Any], limits: Limits, info: dict[str, Any]) -> ls.LitServer:
    api = SpamAPI(settings, limits, int(cfg.max_batch_size), float(cfg.batch_timeout))
    accelerator = "cpu" if settings["backend"] == "onnxruntime" else str(cfg.device)
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=cfg.devices,
        workers_per_device=int(cfg.workers),
        timeout=float(cfg.request_timeout),
        model_metadata=info,
        fast_queue=bool(cfg.fast_queue),
        middlewares=[(RequestGuard, {"path": API_PATH, "limits": limits})],
        callbacks=[_CtrlCToTheMainProcess()],
    )
    html = page()
    # LitServe answers GET / with "litserve running": the page replaces it.
    server.app.router.routes = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]
    server.app.add_api_route("/", lambda: HTMLResponse(html), methods=["GET"], include_in_schema=False)
    server.app.add_exception_handler(StarletteHTTPException, json_error)
    return server


def _stop(server: ls.LitServer, main_pid: int, signum: int, frame: Any) -> None:
    """SIGTERM or Ctrl-C in the main process: LitServe's graceful shutdown (its Ctrl-C path), which stops the HTTP and
    model processes. The HTTP processes are forked with this handler, and uvicorn raises the signal again once it has
    shut down: there nothing is left to do (a KeyboardInterrupt would print a traceback)."""
    if os.getpid() != main_pid:
        return
    # LitServe's stop event (its /shutdown endpoint sets it) also ends its worker monitor, which otherwise goes on
    # during this shutdown and reports each model process that stopped ("Worker died"), as after a SIGTERM to the
    # whole process group. Set from a thread: the main thread may be waiting on the same manager connection.
    event = getattr(server, "_shutdown_event", None)
    if event is not None:
        threading.Thread(target=event.set, daemon=True).start()
    raise KeyboardInterrupt


class _CtrlCToTheMainProcess(ls.Callback):
    """In each model process (spawned, so without the main process's handlers): Ctrl-C, which a terminal sends to every
    process of the group, is ignored; the main process stops the model processes itself (SIGTERM), without the
    traceback a KeyboardInterrupt would print in each."""

    def on_before_setup(self, *args: Any, **kwargs: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run(cfg: DictConfig) -> None:
    """Check the config and the model here (one `error:` line), then serve until Ctrl-C or SIGTERM."""
    settings, limits = settings_of(cfg)
    check_port(cfg.host, cfg.port)
    # Loaded once here, on the CPU, so a bad model is an error before any process starts; the workers load their own.
    predictor = load_predictor(
        settings["ckpt_path"], settings["model_dir"], settings["tokenizer_file"], "cpu", "32", settings["backend"]
    )
    settings, limits = fit_to_model(settings, limits, predictor)
    info = describe(cfg, predictor, settings, limits)
    del predictor
    server = build_server(cfg, settings, limits, info)
    stop = functools.partial(_stop, server, os.getpid())
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"serving {info['name']} at http://{cfg.host}:{cfg.port}/ (Ctrl-C stops)", flush=True)
    server.run(
        host=str(cfg.host),
        port=int(cfg.port),
        num_api_servers=int(cfg.api_servers),
        log_level=str(cfg.log_level),
        generate_client_file=False,
    )


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
