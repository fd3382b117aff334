"""`python serve.py` (Hydra, conf/serve.yaml): a trained model behind HTTP with LitServe, and a web page.

    POST /predict  {"text": "..."} -> one prediction; {"texts": [...]} -> {"predictions": [...]}
                   (predict.py's fields: text, label, probabilities, positive_class, positive_probability,
                   truncated, error; optional "threshold", two-class models only)
    GET /          the web page (static/index.html)
    GET /info      the model's provenance (name, metrics, preprocessing record, training) and the serving settings
    GET /health    "ok" once every model process is ready
    GET /docs      the API in Swagger UI (/redoc: in ReDoc), from /openapi.json; no CDN: fastapi-offline's copies

The request, the answer and the error bodies are Pydantic models (OneText, SeveralTexts, Answer, Answers, Refusal,
Unclassifiable): FastAPI validates each request with them and /openapi.json describes them. A request is checked in
the HTTP process before it is queued: in a LitServe batch an error raised in a worker would fail every request of the
batch, and a bad request must never reach one. RequestGuard, an ASGI middleware, first reads the body (at most
limits.max_request_bytes) and refuses what is not strict JSON (json.loads would take NaN, a key twice, ...); then
FastAPI validates it with request_type(limits), whose models carry the other limits.

A bad request is answered with a 4xx and {"error": "..."} saying what was expected: 400 for malformed ones, 413 over
a limit (conf/serve.yaml's limits), 422 for a single text predict.py cannot classify (empty, invalid UTF-8), with
predict.py's record for it.
"""

# No `from __future__ import annotations`: LitServe reads SpamAPI.decode_request's annotation, FastAPI the /predict
# endpoint's and Pydantic the models', as types.

import functools
import json
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import torch
import yaml
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from omegaconf import DictConfig
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from spam_lightning import __version__
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
TITLE = "spam_lightning"  # the API's name in /openapi.json and /docs; its version is the package's


# -- a request and its limits ------------------------------------------------------------------------

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


# -- the API's schema: the models FastAPI validates with and /openapi.json shows --------------------------------

SPAM_EXAMPLE = "WINNER!! Claim your £900 prize, call 09061701461 now"
HAM_EXAMPLE = "See you at 6"
REQUEST_EXAMPLES = {
    "one text": {"summary": "one text: one prediction", "value": {"text": SPAM_EXAMPLE}},
    "several texts": {
        "summary": "several texts, with a threshold: a list of predictions",
        "value": {"texts": [HAM_EXAMPLE, SPAM_EXAMPLE], "threshold": 0.8},
    },
}
ANSWER_EXAMPLE = {
    "text": SPAM_EXAMPLE,
    "label": "spam",
    "probabilities": {"ham": 0.0213, "spam": 0.9787},
    "positive_class": "spam",
    "positive_probability": 0.9787,
    "truncated": False,
    "error": None,
}


def _threshold() -> Any:
    return (
        float | None,
        Field(
            None,
            ge=0.0,
            le=1.0,
            description="this request's threshold: the positive class iff P(positive class) > threshold (two-class "
            "models only); absent or null: the server's threshold=",
        ),
    )


def _fits_in(max_bytes: int, text: str) -> str:
    # surrogatepass: a lone surrogate (a JSON "\ud800") is measured here; the predictor answers "invalid UTF-8"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise PydanticCustomError(
            "too_many_bytes",
            "{size} bytes: at most {limit} UTF-8 bytes (limits.max_text_bytes)",
            {"size": size, "limit": max_bytes},
        )
    return text


@functools.cache
def request_models(limits: Limits) -> tuple[type[BaseModel], type[BaseModel]]:
    """The two forms of a POST /predict body under these limits: OneText {"text": ...} and SeveralTexts
    {"texts": [...]}, each with an optional "threshold" and no other field."""
    size = f"at most {limits.max_text_bytes} UTF-8 bytes (limits.max_text_bytes); over the training length: truncated"
    # maxLength: a JSON Schema length counts characters, each at least one byte
    text = Annotated[
        str,
        AfterValidator(functools.partial(_fits_in, limits.max_text_bytes)),
        Field(description=size, json_schema_extra={"maxLength": limits.max_text_bytes}),
    ]
    count = Field(min_length=1, max_length=limits.max_texts, description=f"1 to {limits.max_texts} (limits.max_texts)")
    config = ConfigDict(extra="forbid", strict=True)
    one = create_model(
        "OneText", __config__=config, __doc__="One text: one prediction.", text=(text, ...), threshold=_threshold()
    )
    several = create_model(
        "SeveralTexts",
        __config__=config,
        __doc__="Several texts: their predictions, in order.",
        texts=(list[text], count),
        threshold=_threshold(),
    )
    return one, several


def _form(body: Any) -> str | None:
    """The form a body is validated as: "texts" when it has that key, else "text" (which then reports what is
    missing or extra); None, an error, when it has both."""
    if not isinstance(body, dict):
        return "texts" if hasattr(body, "texts") else "text"
    if "text" in body and "texts" in body:
        return None
    return "texts" if "texts" in body else "text"


def _classifiable(limits: Limits, request: BaseModel) -> BaseModel:
    """What the fields alone cannot say: a threshold for a model of more than two classes (400), and a single text
    predict.py cannot classify (422, answered with its record)."""
    threshold = getattr(request, "threshold", None)
    if threshold is not None and len(limits.classes) > 2:
        raise PydanticCustomError(
            "two_class_only", "{why}", {"why": two_class_only('"threshold"', threshold, limits.classes)}
        )
    error = text_error(request.text) if hasattr(request, "text") else None
    if error is not None:
        raise PydanticCustomError("unclassifiable", "{why}", {"why": error})
    return request


@functools.cache
def request_type(limits: Limits) -> Any:
    """The type of a POST /predict body: OneText or SeveralTexts, by its keys."""
    one, several = request_models(limits)
    return Annotated[
        Annotated[one, Tag("text")] | Annotated[several, Tag("texts")],
        Discriminator(_form, custom_error_type="text_and_texts", custom_error_message="both"),
        AfterValidator(functools.partial(_classifiable, limits)),
    ]


class Answer(BaseModel):
    """One text's prediction: predict.py's record."""

    model_config = ConfigDict(json_schema_extra={"examples": [ANSWER_EXAMPLE]})
    text: str = Field(description="the text, as sent")
    label: str | None = Field(description="the predicted class; null when the text could not be classified")
    probabilities: dict[str, float] | None = Field(description="P(class) per class name; null with an error")
    positive_class: str | None = Field(description="two classes: the class the threshold applies to; null for more")
    positive_probability: float | None = Field(description="P(positive class); null for more classes or an error")
    truncated: bool = Field(description="longer than the training length: truncated as in training")
    error: str | None = Field(description='why the text could not be classified: "empty text" or "invalid UTF-8"')


class Answers(BaseModel):
    """The predictions of several texts, in their order."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"predictions": [ANSWER_EXAMPLE]}]})
    predictions: list[Answer]


class Refusal(BaseModel):
    """A refused request: the one cause, saying what was expected."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": '"texts" is an empty array: send at least one text'}]}
    )
    error: str = Field(description="one line: which field, what was expected")


class Unclassifiable(BaseModel):
    """A single text predict.py cannot classify: its record, with the reason in "error"."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "text": "", "label": None, "probabilities": None, "positive_class": "spam", "positive_probability": None,
        "truncated": False, "error": "empty text",
    }]})  # fmt: skip
    text: str
    label: None
    probabilities: None
    positive_class: str | None
    positive_probability: None
    truncated: bool
    error: str = Field(description='"empty text" or "invalid UTF-8"')


REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": Refusal, "description": "a malformed request: not JSON, a wrong or unknown field"},
    413: {"model": Refusal, "description": "over a limit: limits.max_texts, max_text_bytes, max_request_bytes"},
    422: {"model": Unclassifiable, "description": 'a single text that cannot be classified ("empty text", ...)'},
    504: {"model": Refusal, "description": "no model process answered within request_timeout seconds"},
}


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def refusal(errors: Sequence[Mapping[str, Any]], body: Any, limits: Limits) -> RequestError:
    """The RequestError for a body the request models refused (Pydantic's errors, as FastAPI or a TypeAdapter gives
    them): its first cause in our words, with its status."""
    if not isinstance(body, dict):
        return RequestError(400, f"got a JSON {_json_type(body)}; {EXPECTED}")
    unknown = sorted({str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden"})
    if unknown:
        return RequestError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; {EXPECTED}")
    error = errors[0]
    kind, value = error["type"], error.get("input")
    loc = tuple(error["loc"])
    loc = loc[2:] if loc[:1] == ("body",) else loc[1:]  # without FastAPI's "body" and the form ("text", "texts")
    field = loc[0] if loc else None
    where = f'"{field}"' + "".join(f"[{i}]" for i in loc[1:])
    if kind in ("missing", "text_and_texts"):
        return RequestError(400, f'give exactly one of "text" and "texts"; {EXPECTED}')
    if field == "threshold":
        return RequestError(400, f'"threshold" must be a number in [0, 1], got {json.dumps(value)}')
    if kind == "string_type":
        return RequestError(400, f"{where} must be a string, got a JSON {_json_type(value)}")
    if kind == "list_type":
        return RequestError(400, f'"texts" must be an array of strings, got a JSON {_json_type(value)}')
    if kind == "too_short":
        return RequestError(400, '"texts" is an empty array: send at least one text')
    if kind == "too_long":
        return RequestError(
            413, f"{len(value)} texts in one request: at most {limits.max_texts} (limits.max_texts); split it"
        )
    if kind == "too_many_bytes":
        return RequestError(413, f"{'the text' if field == 'text' else where} is {error['msg']}")
    if kind == "two_class_only":
        return RequestError(400, error["msg"])
    if kind == "unclassifiable":
        record = Prediction(body["text"], None, None, limits.positive_class, None, False, error["msg"])
        return RequestError(422, error["msg"], record.to_json())
    return RequestError(400, f"{where if loc else 'the request'}: {error['msg']}")


@functools.cache
def _validator(limits: Limits) -> TypeAdapter[Any]:
    return TypeAdapter(request_type(limits))


def job_of(request: Any) -> Job:
    if hasattr(request, "text"):
        return Job([request.text], request.threshold, True)
    return Job(list(request.texts), request.threshold, False)


def parse_payload(payload: Any, limits: Limits) -> Job:
    """A decoded JSON body -> Job, validated with request_type(limits) as FastAPI does; RequestError otherwise."""
    try:
        return job_of(_validator(limits).validate_python(payload))
    except ValidationError as err:
        raise refusal(err.errors(), payload, limits) from None


def parse_json(body: bytes, limits: Limits) -> Any:
    """A request body (bytes) -> its JSON value, or RequestError: too large, not UTF-8, not strict JSON (NaN,
    a key twice in one object, nested beyond the decoder's recursion)."""
    if len(body) > limits.max_request_bytes:
        raise RequestError(413, f"the request body is over {limits.max_request_bytes} bytes (limits.max_request_bytes)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"the request body is not valid UTF-8 (byte {err.start}); {EXPECTED}") from None
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_object)
    except RecursionError:  # json's decoder recurses per level: [[[...]]] 200,000 deep
        raise RequestError(400, f"the request body is nested too deeply; {EXPECTED}") from None
    except ValueError as err:
        raise RequestError(400, f"the request body is not JSON ({err}); {EXPECTED}") from None


def parse_request(body: bytes, limits: Limits) -> Job:
    """A request body -> Job, checked as the server does (parse_json, then the request models), or RequestError.
    A single text that cannot be classified (empty, invalid UTF-8) is a 422 with predict.py's answer for it."""
    return parse_payload(parse_json(body, limits), limits)


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

    # LitServe reads decode_request's argument annotation as the type its endpoint hands to the queue (Job: made and
    # checked in the HTTP process by add_predict_route's endpoint), and encode_response's result annotation as the
    # response type (none: whatever the worker returns).
    def decode_request(self, request: Job) -> Job:
        return request

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
    app = server.app
    app.title, app.version = TITLE, __version__
    app.description = "An SMS spam classifier (GPT-2 fine-tuned with spam_lightning): predict.py's answers over HTTP."
    # LitServe's POST /predict takes the Job its decode_request is annotated with: ours validates the body and makes it.
    (litserve_predict,) = (r for r in app.router.routes if isinstance(r, APIRoute) and r.path == API_PATH)
    add_predict_route(app, limits, litserve_predict.endpoint, litserve_predict.dependencies)
    offline_docs(app)
    html = page()
    # LitServe answers GET / with "litserve running": the page replaces it.
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/"]
    app.add_api_route("/", lambda: HTMLResponse(html), methods=["GET"], include_in_schema=False)
    app.add_exception_handler(StarletteHTTPException, json_error)
    return server


def add_predict_route(
    app: FastAPI, limits: Limits, submit: Callable[[Job], Awaitable[Any]], dependencies: Sequence[Any] = ()
) -> None:
    """POST /predict (replacing any): FastAPI validates the body with request_type(limits) and hands its Job to
    `submit` (LitServe's queue); a refused body is answered by refusal()'s RequestError."""

    async def predict(body: Annotated[request_type(limits), Body(openapi_examples=REQUEST_EXAMPLES)]) -> Any:  # type: ignore[valid-type]
        return await submit(job_of(body))

    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != API_PATH]
    app.add_api_route(
        API_PATH,
        predict,
        methods=["POST"],
        response_model=Answer | Answers,
        responses=REFUSALS,
        dependencies=list(dependencies),
        summary="Classify one text or several",
        description='predict.py\'s answer: one prediction for {"text": ...}, {"predictions": [...]} for '
        '{"texts": [...]}. A bad request is answered with one line saying what was expected.',
    )

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        err = refusal(exc.errors(), exc.body, limits)
        return json_response(err.body, err.status)

    app.add_exception_handler(RequestValidationError, refused)

    # FastAPI writes /openapi.json without its null values (exclude_none; FastAPI issue 5559), which leaves the
    # examples of the answer models without their null fields, invalid: they are put back from the models.
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = generate()["components"]["schemas"]
            for model in (Answer, Answers, Refusal, Unclassifiable):
                schemas[model.__name__]["examples"] = model.model_json_schema()["examples"]
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with fastapi-offline's packaged scripts and styles, in place of FastAPI's pages,
    which load them from a CDN (blank without the internet)."""
    offline = FastAPIOffline(title=app.title, openapi_url=app.openapi_url)
    replaced = {app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in replaced]
    app.router.routes.extend(r for r in offline.router.routes if getattr(r, "path", None) != offline.openapi_url)


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
    # The monitor checks the event every 2 s: one that wakes after the shutdown has closed LitServe's manager fails
    # to reach it and logs the failure with a traceback ("Monitoring worker crashed"), nothing but that race.
    logging.getLogger("litserve.server").addFilter(_quiet_monitor_crash)
    raise KeyboardInterrupt


def _quiet_monitor_crash(record: logging.LogRecord) -> bool:
    return record.getMessage() != "Monitoring worker crashed"


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


class RequestGuard:
    """ASGI middleware in front of POST /predict: reads the body (at most limits.max_request_bytes), checks that it is
    strict JSON (parse_json) and answers a bad one itself; a good one goes on to FastAPI as application/json."""

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
            parse_json(body, self.limits)  # the rest is FastAPI's, with the request models
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
