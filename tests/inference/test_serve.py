"""serve.py: the HTTP API (predict.py's answers, batching, bad requests, misbehaving clients), its config errors, and
the web page in headless Chromium. One smoke model is trained, exported and served for the whole module."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import openapi_spec_validator
import pytest
from helpers.serving import REPO, healthy, post, request, serving, start_serve_py, wait_until_healthy
from helpers.smoke import compose_cfg, copy_smoke, random_124m

import spam_lightning
import spam_lightning.inference.serve as serve_module
from spam_lightning.data.preprocess import Preprocessing, get_tokenizer
from spam_lightning.errors import ConfigError
from spam_lightning.inference.checkpoint import TrainedModel
from spam_lightning.inference.export import export_checkpoint, write_export
from spam_lightning.inference.predict import run as predict_run
from spam_lightning.inference.serve import Limits, RequestError, find_metrics, parse_request
from spam_lightning.inference.serve import run as serve_run

SPAM = "WINNER!! As a valued network customer you have been selected to receive a £900 prize reward! Call 09061701461"
HAM = "Are we still meeting for lunch tomorrow? I'll be at the cafe around noon"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, smoke_source: Path, tokenizer_file: str) -> dict[str, Any]:
    """A smoke run exported by export.py (its model card carries the test metrics)."""
    tmp = tmp_path_factory.mktemp("serve")
    metrics = copy_smoke(smoke_source, tmp)
    export_checkpoint(metrics["best_checkpoint"], tmp / "export", tokenizer_file)
    return {"dir": tmp / "export", "metrics": metrics, "tmp": tmp}


@pytest.fixture(scope="module")
def port(model: dict[str, Any]) -> Any:
    """The served smoke model: batching on (8 requests, 20 ms), one torch thread (the tests share 2 cores)."""
    log = model["tmp"] / "server.log"
    with serving(f"model_dir={model['dir']}", "max_batch_size=8", "batch_timeout=0.02", "threads=1", log=log) as p:
        yield p


@pytest.fixture(scope="module")
def texts(sms_tsv: Path) -> list[str]:
    lines = sms_tsv.read_text(encoding="utf-8").splitlines()[:60]
    return [line.split("\t", 1)[1] for line in lines] + [SPAM, HAM]


def predict_py(model_dir: Path, texts: list[str], tmp: Path) -> list[dict[str, Any]]:
    """predict.py's JSON lines for the texts (in-process: run() of conf/predict.yaml)."""
    (tmp / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    cfg = compose_cfg(
        "predict", f"model_dir={model_dir}", f"input_file={tmp / 'in.txt'}", f"output={tmp / 'out.jsonl'}",
        "format=jsonl", "device=cpu",
    )  # fmt: skip
    predict_run(cfg)
    return [json.loads(line) for line in (tmp / "out.jsonl").read_text(encoding="utf-8").splitlines()]


# -- answers ---------------------------------------------------------------------------------------


def test_same_answers_as_predict_py(port: int, model: dict[str, Any], texts: list[str], tmp_path: Path) -> None:
    """One request with predict.py's texts: the same records, P(spam) bit for bit (the same texts in the same
    forward passes). Sent concurrently one text per request, the server batches them with other requests: each
    batch is padded to its own longest text, which may move a float by rounding, so there within 1e-6."""
    expected = predict_py(model["dir"], texts, tmp_path)
    status, answer = post(port, {"texts": texts})
    assert status == 200 and answer["predictions"] == expected
    assert {p["label"] for p in expected} == {"ham", "spam"}

    with ThreadPoolExecutor(16) as pool:
        singles = list(pool.map(lambda t: post(port, {"text": t}), texts))
    assert all(status == 200 for status, _ in singles)
    for (_, got), want in zip(singles, expected, strict=True):
        assert got["text"] == want["text"] and got["label"] == want["label"]
        assert got["truncated"] == want["truncated"] and got["error"] is None
        assert abs(got["positive_probability"] - want["positive_probability"]) <= 1e-6


@pytest.mark.slow  # ~1 min: a 124M export, its server, predict.py on it
def test_serves_the_124m_architecture(texts: list[str], tokenizer_file: str, tmp_path: Path) -> None:
    """What users serve: GPT-2 124M's shapes (random weights), exported as export.py does, answers as predict.py."""
    net = random_124m()
    pre = Preprocessing(labels=("ham", "spam"), max_length=120, pad_length=None, padding="batch", pool="last_token")
    write_export(TrainedModel(net, pre, {}), tmp_path / "export", get_tokenizer(tokenizer_file), format="hf")
    some = texts[:16]
    expected = predict_py(tmp_path / "export", some, tmp_path)
    with serving(f"model_dir={tmp_path / 'export'}", "threads=1", log=tmp_path / "server.log") as port:
        status, answer = post(port, {"texts": some})
        with ThreadPoolExecutor(4) as pool:
            singles = list(pool.map(lambda t: post(port, {"text": t}), some))
        assert healthy(port)
    assert status == 200 and answer["predictions"] == expected
    for (status, got), want in zip(singles, expected, strict=True):
        assert status == 200 and got["label"] == want["label"]
        assert abs(got["positive_probability"] - want["positive_probability"]) <= 1e-6


def test_threshold_and_per_text_errors(port: int) -> None:
    status, low = post(port, {"texts": [SPAM, HAM], "threshold": 0.0})
    assert status == 200 and [p["label"] for p in low["predictions"]] == ["spam", "spam"]
    status, high = post(port, {"texts": [SPAM, HAM], "threshold": 1})
    assert status == 200 and [p["label"] for p in high["predictions"]] == ["ham", "ham"]
    # one text ({"text": ...}) with its own threshold: the same rule
    labels = [post(port, {"text": text, "threshold": t})[1]["label"] for text, t in ((SPAM, 1), (HAM, 0))]
    assert labels == ["ham", "spam"]
    # In a list, a text that cannot be classified gets predict.py's record and the others their predictions.
    status, mixed = post(port, {"texts": [HAM, "", "   ", "\ud800"]})
    assert status == 200
    assert [p["error"] for p in mixed["predictions"]] == [None, "empty text", "empty text", "invalid UTF-8"]
    assert mixed["predictions"][1] == {
        "text": "", "label": None, "probabilities": None, "positive_class": "spam", "positive_probability": None,
        "truncated": False, "error": "empty text",
    }  # fmt: skip


def test_one_megabyte_text_is_truncated_and_flagged(port: int) -> None:
    status, answer = post(port, {"text": "Free prize! Call now. " * 47_000})  # 1,034,000 bytes < limits.max_text_bytes
    assert status == 200 and answer["truncated"] is True and answer["label"] in ("ham", "spam")


def test_concurrent_clients_each_get_their_own_answer(port: int) -> None:
    """64 requests from 16 threads: every one answered once, with its own text (no mix-up across a batch)."""
    payloads = [{"texts": [f"message {i} {HAM}", f"{i} {SPAM}"][: 1 + i % 2]} for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: post(port, p), payloads))
    for payload, (status, answer) in zip(payloads, answers, strict=True):
        assert status == 200 and [p["text"] for p in answer["predictions"]] == payload["texts"]


@pytest.mark.slow
def test_two_model_processes(port: int, model: dict[str, Any], texts: list[str]) -> None:
    """workers=2 api_servers=2 (two model processes, two HTTP processes), no batching: the answers of the
    one-worker server (within 1e-6, as batching may round differently)."""
    _, expected = post(port, {"texts": texts})
    log = model["tmp"] / "server-2-workers.log"
    overrides = ("workers=2", "api_servers=2", "threads=1", "max_batch_size=1")
    with serving(f"model_dir={model['dir']}", *overrides, log=log) as port2:
        assert request(port2, "GET", "/info")[1]["server"]["workers_per_device"] == 2
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda t: post(port2, {"text": t}), texts))
    for (status, got), want in zip(answers, expected["predictions"], strict=True):
        assert status == 200 and got["label"] == want["label"]
        assert abs(got["positive_probability"] - want["positive_probability"]) <= 1e-6


# -- bad requests: a 4xx with {"error": ...}, and the server still healthy -----------------------------

BAD = {
    "not JSON": (b"text=hello", 400, "not JSON"),
    "JSON constant": (b'{"text": NaN}', 400, "not JSON"),
    "invalid UTF-8": (b'{"text": "caf\xe9"}', 400, "not valid UTF-8"),
    "an array": (b'["hello"]', 400, "got a JSON array"),
    "no text": (b'{"message": "hello"}', 400, "unknown field"),
    "both": (b'{"text": "a", "texts": ["b"]}', 400, "exactly one of"),
    "text a number": (b'{"text": 5}', 400, '"text" must be a string, got a JSON number'),
    "texts a string": (b'{"texts": "hello"}', 400, '"texts" must be an array of strings, got a JSON string'),
    "texts holds null": (b'{"texts": ["a", null]}', 400, '"texts"[1] must be a string, got a JSON null'),
    "empty list": (b'{"texts": []}', 400, "empty array"),
    "bad threshold": (b'{"text": "a", "threshold": 2}', 400, '"threshold" must be a number in [0, 1]'),
    "10,000 texts": (json.dumps({"texts": ["hello"] * 10_000}).encode(), 413, "10000 texts in one request: at most"),
    "a 2 MB text": (json.dumps({"text": "a" * 2_000_000}).encode(), 413, "at most 1048576 UTF-8 bytes"),
    "a 9 MB body": (json.dumps({"texts": ["a" * 900_000] * 10}).encode(), 413, "over 8388608 bytes"),
    "empty text": (b'{"text": ""}', 422, "empty text"),
    "whitespace text": (b'{"text": " \\n "}', 422, "empty text"),
    "lone surrogate": (b'{"text": "\\ud800"}', 422, "invalid UTF-8"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_request(port: int, case: str) -> None:
    body, expected_status, message = BAD[case]
    status, answer = request(port, "POST", "/predict", body, {"Content-Type": "application/json"})
    assert status == expected_status and isinstance(answer, dict) and message in answer["error"], answer
    if status == 422:  # a single text predict.py cannot classify: predict.py's record for it
        assert answer["label"] is None and answer["positive_probability"] is None and answer["truncated"] is False
    assert healthy(port)


MALFORMED_ON_THE_SERVER = {
    "nested 200,000 deep": (b'{"texts": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested too deeply"),
    "a key twice": (b'{"text": "hello", "text": "WIN a prize"}', 'has the key "text" twice'),
    "a 5,000-digit number": (b'{"text": "a", "threshold": ' + b"9" * 5000 + b"}", "not JSON"),
    "a byte order mark": (b'\xef\xbb\xbf{"text": "hello"}', "not JSON"),
}


@pytest.mark.parametrize("case", MALFORMED_ON_THE_SERVER)
def test_malformed_bodies_are_a_json_400_and_no_server_error(port: int, model: dict[str, Any], case: str) -> None:
    body, message = MALFORMED_ON_THE_SERVER[case]
    status, answer = request(port, "POST", "/predict", body, {"Content-Type": "application/json"})
    assert status == 400 and isinstance(answer, dict) and message in answer["error"], answer
    assert healthy(port)
    assert "Traceback" not in (model["tmp"] / "server.log").read_text()  # a bad request is no error of the server


MALFORMED = [
    b"",
    b"  ",
    b'{"text": "a"',
    b'{"text": "a"} x',
    b"\xff",
    b"\xef\xbb\xbf{}",
    b'{"text": NaN}',
    b'{"text": "a", "threshold": Infinity}',
    b'{"text": "a", "threshold": -Infinity}',
    b'{"text": "a", "threshold": 1e999}',
    b'{"text": "a", "threshold": ' + b"1" * 5000 + b"}",
    b"[" * 200_000,
    b'{"texts": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    b'{"a": ' * 200_000 + b"1" + b"}" * 200_000,
    b'{"texts": ["a"], "texts": ["b"]}',
    b'{"text": "a", "threshold": {"x": 1, "x": 2}}',
    b'["a"]',
    b'"a"',
    b"1",
    b"null",
    b"true",
]


@pytest.mark.parametrize("body", MALFORMED, ids=lambda body: repr(body[:30]))
def test_every_malformed_body_is_a_json_400(body: bytes) -> None:
    """Whatever the body (not JSON, not UTF-8, nested beyond the decoder's recursion, a key twice, a number no float or
    int holds, not an object), the guard answers 400 with {"error": ...}: no other exception reaches the server."""
    with pytest.raises(RequestError) as refused:
        parse_request(body, Limits(max_texts=64, max_text_bytes=1 << 20, max_request_bytes=8 << 20))
    assert refused.value.status == 400 and set(refused.value.body) == {"error"}


def test_other_errors_are_json_too(port: int) -> None:
    assert request(port, "GET", "/nowhere") == (404, {"error": "Not Found"})
    assert request(port, "GET", "/predict") == (405, {"error": "Method Not Allowed"})
    status, answer = request(port, "POST", "/predict", b'{"text": "form-encoded, as curl -d sends it"}')
    assert status == 200 and answer["label"] in ("ham", "spam")


# -- misbehaving clients -----------------------------------------------------------------------------


def _raw(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head)
    return sock


def test_clients_that_disconnect_mid_request(port: int) -> None:
    body = json.dumps({"texts": [HAM] * 200}).encode()
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    _raw(port, head.encode() + body[:100]).close()  # mid-body
    _raw(port, head.encode() + body).close()  # before the answer
    _raw(port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-").close()  # mid-headers
    time.sleep(0.5)
    assert healthy(port) and post(port, {"text": HAM})[0] == 200


def test_a_slow_client_does_not_block_others(port: int) -> None:
    """A body trickled over ~2 s: meanwhile other requests are answered, and then the slow one too."""
    body = json.dumps({"text": HAM}).encode()
    sock = _raw(port, f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    fast: list[float] = []

    def others() -> None:
        for _ in range(5):
            start = time.monotonic()
            assert post(port, {"text": SPAM})[0] == 200
            fast.append(time.monotonic() - start)

    thread = threading.Thread(target=others)
    thread.start()
    for i in range(0, len(body), 8):
        sock.sendall(body[i : i + 8])
        time.sleep(2 / (len(body) / 8))
    thread.join()
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        reply += chunk
    sock.close()
    assert reply.startswith(b"HTTP/1.1 200") and b'"label"' in reply
    assert len(fast) == 5 and max(fast) < 2


# -- the rest of the API -----------------------------------------------------------------------------


def test_info_health_and_page(port: int, model: dict[str, Any]) -> None:
    assert request(port, "GET", "/health") == (200, "ok")
    status, info = request(port, "GET", "/info")
    assert status == 200
    described = info["model"]
    record = json.loads((model["dir"] / "config.json").read_text())["spam_lightning"]
    assert described["name"] == "export" and described["preprocessing"] == record["preprocessing"]
    assert described["metrics"]["test"]["accuracy"] == round(model["metrics"]["test"]["accuracy"], 6)
    assert described["serving"]["max_batch_size"] == 8 and described["serving"]["limits"]["max_texts"] == 1000
    status, html = request(port, "GET", "/")
    assert status == 200 and "<title>SMS spam classifier</title>" in html


def test_metrics_of_a_checkpoint(model: dict[str, Any]) -> None:
    """ckpt_path=: the run's metrics.json (the best checkpoint's); metrics_file= wins over what is found."""
    best = model["metrics"]["best_checkpoint"]
    found = find_metrics(compose_cfg("serve", f"ckpt_path={best}"))
    assert found is not None and found["test"]["accuracy"] == model["metrics"]["test"]["accuracy"]
    assert found["validation"]["f1"] == model["metrics"]["validation"]["f1"]
    metrics_file = model["tmp"] / "run" / "metrics.json"
    chosen = find_metrics(compose_cfg("serve", f"model_dir={model['dir']}", f"metrics_file={metrics_file}"))
    assert chosen == found


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
def test_readme_curl_commands(port: int) -> None:
    """The curl lines of README.md's Serving section, against this module's server (port 8000 replaced)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Serving\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("  #")[0].strip() for line in section.splitlines() if line.startswith("curl ")]
    assert len(lines) >= 4
    for line in lines:
        command = line.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and done.stdout, (line, done.stderr)
        if not line.endswith("/health"):
            json.loads(done.stdout)


# -- the schema: /openapi.json, a client checked against it, /docs offline ------------------------------------


@pytest.fixture(scope="module")
def openapi(port: int) -> dict[str, Any]:
    status, spec = request(port, "GET", "/openapi.json")
    assert status == 200
    return spec


def schema_validator(spec: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A JSON Schema validator of `schema`, whose $refs (#/components/schemas/...) resolve in the OpenAPI document
    (OpenAPI 3.1's schemas are JSON Schema 2020-12)."""
    return jsonschema.Draft202012Validator({**schema, "components": spec["components"]})


def test_openapi_is_a_valid_document_naming_the_api(openapi: dict[str, Any]) -> None:
    """openapi-spec-validator passes /openapi.json; it names and versions the API and describes POST /predict's body,
    its answers and its errors with their models."""
    openapi_spec_validator.validate(openapi)
    assert openapi["info"]["title"] == "spam_lightning" and openapi["info"]["version"] == spam_lightning.__version__
    post_predict = openapi["paths"]["/predict"]["post"]
    body = post_predict["requestBody"]["content"]["application/json"]["schema"]
    refs = {"#/components/schemas/OneText", "#/components/schemas/SeveralTexts"}
    assert post_predict["requestBody"]["required"] and {ref["$ref"] for ref in body["oneOf"]} == refs
    errors = {
        code: answer["content"]["application/json"]["schema"] for code, answer in post_predict["responses"].items()
    }
    assert errors["400"] == errors["413"] == errors["504"] == {"$ref": "#/components/schemas/Refusal"}
    assert errors["422"] == {"$ref": "#/components/schemas/Unclassifiable"}
    answers = {ref["$ref"] for ref in errors["200"]["anyOf"]}
    assert answers == {"#/components/schemas/Answer", "#/components/schemas/Answers"}
    several = openapi["components"]["schemas"]["SeveralTexts"]
    assert several["properties"]["texts"]["maxItems"] == 1000 and several["additionalProperties"] is False


def test_openapi_examples_validate_against_it(openapi: dict[str, Any]) -> None:
    """Every example in /openapi.json (the request bodies, and those of each component schema) is valid for its
    schema."""
    content = openapi["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    examples = [(content["schema"], example["value"]) for example in content["examples"].values()]
    examples += [
        (schema, value) for schema in openapi["components"]["schemas"].values() for value in schema.get("examples", [])
    ]
    assert len(content["examples"]) == 2 and len(examples) == 6
    for schema, value in examples:
        schema_validator(openapi, schema).validate(value)


def test_a_client_checked_against_the_schema_round_trips(port: int, openapi: dict[str, Any]) -> None:
    """The schema's request examples, sent to the server, are answered 200 with a body its response schema takes
    (jsonschema, as a client generated from the schema checks it); each refusal matches its documented model. The
    schema refuses what the server refuses with 400 or 413, but for the body size (limits.max_request_bytes)."""
    post_predict = openapi["paths"]["/predict"]["post"]
    request_schema = schema_validator(openapi, post_predict["requestBody"]["content"]["application/json"]["schema"])
    answer = {
        code: schema_validator(openapi, response["content"]["application/json"]["schema"])
        for code, response in post_predict["responses"].items()
    }
    for example in post_predict["requestBody"]["content"]["application/json"]["examples"].values():
        request_schema.validate(example["value"])
        status, got = post(port, example["value"])
        assert status == 200
        answer["200"].validate(got)
        texts = [p["text"] for p in got["predictions"]] if "texts" in example["value"] else [got["text"]]
        assert texts == example["value"].get("texts", [example["value"].get("text")])
    for case, (body, expected_status, _) in BAD.items():
        status, got = request(port, "POST", "/predict", body, {"Content-Type": "application/json"})
        assert status == expected_status
        answer[str(status)].validate(got)
        try:
            payload = json.loads(body)
        except ValueError:
            continue
        if status in (400, 413) and case != "a 9 MB body":
            assert not request_schema.is_valid(payload), case


def test_redoc_and_the_docs_assets_are_served_locally(port: int) -> None:
    status, html = request(port, "GET", "/redoc")
    assert status == 200 and 'src="/static-offline-docs/redoc.standalone.js"' in html and "https://" not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        status, text = request(port, "GET", f"/static-offline-docs/{asset}")
        assert status == 200 and len(text) > 10_000, asset


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("SPAM_LIGHTNING_REQUIRE_CHROMIUM"),  # CI sets it: there it must run
    reason="no chromium on PATH: `make install-ui` installs Debian's chromium for this test",
)
def test_docs_render_in_headless_chromium_offline(port: int, tmp_path: Path) -> None:
    """/docs with every request to a host other than 127.0.0.1 refused (no CDN reachable): Swagger UI shows the API's
    title and version and POST /predict, and its "Try it out" sends the one-text example and shows a 200."""
    assert CHROMIUM is not None, "SPAM_LIGHTNING_REQUIRE_CHROMIUM is set but there is no chromium on PATH"
    from playwright import sync_api

    blocked: list[str] = []

    def local_only(route: sync_api.Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 900})
            context.route("**/*", local_only)
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/docs")
            operation = page.locator("#operations-default-predict_predict_post")
            operation.wait_for(timeout=30_000)
            assert "spam_lightning" in page.locator(".info .title").inner_text()
            assert spam_lightning.__version__ in page.locator(".info .title").inner_text()
            assert operation.locator(".opblock-summary-method").inner_text() == "POST"
            assert operation.locator(".opblock-summary-path").inner_text() == "/predict"
            operation.locator(".opblock-summary").click()
            page.get_by_role("button", name="Try it out").click()
            page.get_by_role("button", name="Execute").click()
            status = operation.locator(".live-responses-table tbody .response-col_status")
            status.wait_for(timeout=30_000)
            assert status.inner_text().strip() == "200"
            page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
        finally:
            browser.close()
    assert blocked == []  # nothing was even asked of another host
    assert (tmp_path / "docs.png").stat().st_size > 10_000


# -- stopping ------------------------------------------------------------------------------------------


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    ("signum", "to_group"), [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["SIGTERM", "Ctrl-C"]
)
def test_a_stop_is_quiet(model: dict[str, Any], tmp_path: Path, signum: int, to_group: bool) -> None:
    """SIGTERM to serve.py (a service manager's stop) or Ctrl-C in its terminal (SIGINT to the whole process group):
    the server, its HTTP process and both model processes stop, exit status 0, and nothing is printed but the line
    serve.py starts with (no traceback from any process, no "worker died")."""
    log = tmp_path / "server.log"
    proc, port = start_serve_py(f"model_dir={model['dir']}", "workers=2", "threads=1", log=log)
    try:
        wait_until_healthy(proc, port, log)
        assert post(port, {"text": HAM})[0] == 200
        os.killpg(proc.pid, signum) if to_group else proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0, log.read_text()
        deadline = time.monotonic() + 20
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(proc.pid)  # no model or HTTP process left behind
        lines = log.read_text().strip().splitlines()
        assert len(lines) == 1 and lines[0] == f"serving export at http://127.0.0.1:{port}/ (Ctrl-C stops)", lines
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_the_monitors_crash_on_the_closed_manager_is_not_printed_after_a_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """LitServe's worker monitor checks its stop event every 2 s: woken after the shutdown closed the manager that
    holds the event, it logs "Monitoring worker crashed" with a traceback (seen under load on Ctrl-C). Once a stop
    began that message is dropped; LitServe's other messages still show."""
    litserve_log = logging.getLogger("litserve.server")
    try:
        with pytest.raises(KeyboardInterrupt):
            serve_module._stop(object(), os.getpid(), signal.SIGINT, None)
        with caplog.at_level(logging.INFO, logger="litserve.server"):
            try:
                raise EOFError  # what a proxy of a closed manager raises
            except EOFError:
                litserve_log.exception("Monitoring worker crashed")
            litserve_log.warning("a worker died")
        assert [r.getMessage() for r in caplog.records] == ["a worker died"]
    finally:
        litserve_log.removeFilter(serve_module._quiet_monitor_crash)


# -- configuration errors ------------------------------------------------------------------------------


def test_config_errors_are_one_line(port: int, model: dict[str, Any], tmp_path: Path) -> None:
    """No model, a bad path, a bad port, a port in use, a host LitServe cannot bind: ConfigError or a user error,
    before anything starts; from the command line, one `error:` line and exit status 1."""
    cases = {
        (): "give the model to serve",
        (f"model_dir={tmp_path / 'missing'}",): "missing",
        (f"model_dir={model['dir']}", "port=80"): "port=80: expected an integer in [1024, 65535]",
        (f"model_dir={model['dir']}", f"port={port}"): f"port={port}: cannot listen on 127.0.0.1:{port}",
        (f"model_dir={model['dir']}", "host=localhost"): "host=localhost: expected one of",
        (f"model_dir={model['dir']}", "limits.max_texts=0"): "limits.max_texts=0",
    }
    for overrides, message in cases.items():
        with pytest.raises((ConfigError, OSError, ValueError), match=re.escape(message)):
            serve_run(compose_cfg("serve", *overrides))
    cli = subprocess.run(
        [sys.executable, "serve.py", f"model_dir={model['dir']}", f"port={port}"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert cli.returncode == 1 and cli.stderr.strip().splitlines() == [
        f"error: port={port}: cannot listen on 127.0.0.1:{port} (Address already in use); choose another port="
    ]


# -- the page in a real browser --------------------------------------------------------------------------


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("SPAM_LIGHTNING_REQUIRE_CHROMIUM"),  # CI sets it: there it must run
    reason="no chromium on PATH: `make install-ui` installs Debian's chromium for this test",
)
def test_page_in_headless_chromium(port: int, tmp_path: Path) -> None:
    """Keyboard only: type a spam and a ham message, Ctrl+Enter, read the labels; move the threshold with the arrow
    keys and see them change; a phone-width screen has no sideways scrolling. Screenshots into tmp_path (and to
    $SPAM_LIGHTNING_SCREENSHOT, e.g. docs/serve.png, when set; the phone-width one beside it)."""
    assert CHROMIUM is not None, "SPAM_LIGHTNING_REQUIRE_CHROMIUM is set but there is no chromium on PATH"
    from playwright import sync_api

    _, expected = post(port, {"texts": [SPAM, HAM]})
    p_spam, p_ham = (p["positive_probability"] for p in expected["predictions"])
    assert p_spam > 0.5 > p_ham, expected  # the smoke model gets these two right
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.querySelector('#metrics').textContent.includes('%')")  # /info read
            page.keyboard.press("Tab")  # the first focusable element is the message box
            assert page.evaluate("document.activeElement.id") == "messages"
            page.keyboard.type(f"{SPAM}\n{HAM}")
            page.keyboard.press("Control+Enter")
            page.wait_for_selector("#results tbody tr >> nth=1")
            labels = page.locator("#results td.label").all_inner_texts()
            assert labels == ["spam", "ham"]
            probs = [float(t.split()[0]) for t in page.locator("#results td.prob").all_inner_texts()]
            assert probs == pytest.approx([p_spam, p_ham], abs=5e-4)  # shown with 3 decimals
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)

            page.keyboard.press("Tab")  # from the message box: the threshold slider
            assert page.evaluate("document.activeElement.id") == "threshold"
            page.keyboard.press("End")  # threshold 1: nothing is spam
            assert page.locator("#threshold-value").inner_text() == "1.00"
            assert page.locator("#results td.label").all_inner_texts() == ["ham", "ham"]
            page.keyboard.press("Home")  # threshold 0: everything is spam
            assert page.locator("#results td.label").all_inner_texts() == ["spam", "spam"]
            assert "2 spam, 0 ham" in page.locator("#status").inner_text()

            page.set_viewport_size({"width": 375, "height": 800})
            assert page.evaluate("document.documentElement.scrollWidth") <= 375
            page.screenshot(path=str(tmp_path / "serve-phone.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    if os.environ.get("SPAM_LIGHTNING_SCREENSHOT"):  # the phone's beside it: docs/serve.png, docs/serve-phone.png
        dest = Path(os.environ["SPAM_LIGHTNING_SCREENSHOT"])
        shutil.copyfile(tmp_path / "serve.png", dest)
        shutil.copyfile(tmp_path / "serve-phone.png", dest.with_name(f"{dest.stem}-phone{dest.suffix}"))
