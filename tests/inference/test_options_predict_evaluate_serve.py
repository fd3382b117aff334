"""The options of predict.py (conf/predict.yaml), evaluate.py (conf/evaluate.yaml) and serve.py (conf/serve.yaml), and
the fields of a POST /predict request, each observed in its effect: the predictions and their labels, the texts
classified, the files written, the forward passes' batch sizes, the device and dtype the model runs in, the metrics
against their computation from the model's own probabilities. The table of every option is
tests/training/test_options_effect.py's OPTIONS.

Two models: a 3-step smoke run's checkpoint (ckpt_path), and a random tiny network exported by export.py (model_dir):
their probabilities differ, so each source is seen to be the one read. predict.py and evaluate.py run in-process
(`run(cfg)`); serve.py runs up to LitServer.run (`built_server`: the server and the arguments it would start with),
and its request path in-process as LitServe runs it: the request guard the server installs (its middlewares) and its
/predict route (the request models), then the LitAPI unpickled as in a model process, set up, and decode_request /
batch / predict / unbatch / encode_response."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
import pandas as pd
import pytest
import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from helpers.serving import free_port
from helpers.smoke import compose_cfg, make_nontrivial, train_smoke

import spam_lightning.inference.evaluate as evaluate
import spam_lightning.inference.predict as predict
import spam_lightning.inference.serve as serve
from spam_lightning.data.preprocess import TokenizerError, get_tokenizer
from spam_lightning.errors import CheckpointError
from spam_lightning.inference.checkpoint import TrainedModel, load_trained
from spam_lightning.inference.export import write_export
from spam_lightning.inference.predictor import Predictor
from spam_lightning.inference.serve import API_PATH, Job, SpamAPI
from spam_lightning.model.gpt import GPTModel, make_config
from spam_lightning.model.net import SpamNet

TEXTS = [
    "WINNER!! You have been selected to receive a £900 prize reward! Call 09061701461 now",
    "Are we still meeting for lunch tomorrow?",
    "URGENT! Your mobile number has won a 2000 bonus caller prize, call 09058094455",
    "ok lor, see you at home",
    "Free entry in 2 a wkly comp to win FA Cup final tkts, text FA to 87121",
    "I'll be late tonight, don't wait for me",
    "Congratulations, claim your free holiday voucher by texting YES to 80888",
]
TINY_ARCH = {"emb_dim": 64, "n_layers": 2, "n_heads": 2, "context_length": 128, "dropout": 0.0, "qkv_bias": True}


# ---------------------------------------------------------------------------------------------------------------
# The two models, and what their own predictors say (the oracle)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Models:
    ckpt: Path  # a copy of the smoke run's best checkpoint, outside the run (no training curves redrawn)
    model_dir: Path  # a random tiny network, exported
    tokenizer_file: str
    tmp: Path

    def predictor(self, source: str = "ckpt", precision: str = "32") -> Predictor:
        tokenizer = get_tokenizer(self.tokenizer_file)
        if source == "ckpt":
            return Predictor(load_trained(self.ckpt), tokenizer, "cpu", precision)
        return Predictor.from_dir(self.model_dir, self.tokenizer_file, "cpu", precision)

    def probabilities(self, texts: list[str], source: str = "ckpt", precision: str = "32") -> list[float]:
        return self.predictor(source, precision).positive_probabilities(texts)[0]  # type: ignore[return-value]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> Models:
    tmp = tmp_path_factory.mktemp("inference_options")
    short = ("trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1")
    best = Path(train_smoke(tmp, sms_zip, tokenizer_file, *short, "report=false")["best_checkpoint"])
    ckpt = tmp / "model" / "smoke.ckpt"
    ckpt.parent.mkdir()
    shutil.copyfile(best, ckpt)
    torch.manual_seed(3)
    net = make_nontrivial(SpamNet(GPTModel(make_config(TINY_ARCH)), 2, "last_token")).eval()
    model_dir = tmp / "random_export"
    pre = load_trained(ckpt).preprocessing
    write_export(TrainedModel(net, pre, {}), model_dir, get_tokenizer(tokenizer_file), format="spam_lightning")
    found = Models(ckpt, model_dir, tokenizer_file, tmp)
    ours, theirs = found.probabilities(TEXTS), found.probabilities(TEXTS, "model_dir")
    assert all(abs(a - b) > 1e-3 for a, b in zip(ours, theirs, strict=True))  # the two sources are told apart
    assert len(set(ours)) == len(TEXTS)  # each text its own probability: thresholds between them
    return found


def labels_at(probabilities: list[float], threshold: float) -> list[str]:
    return ["spam" if p > threshold else "ham" for p in probabilities]


def threshold_changing_a_label(probabilities: list[float]) -> float:
    """A threshold under which at least one text gets another label than at 0.5."""
    below = [p for p in probabilities if p <= 0.5]
    t = max(below) * 0.999 if below else min(probabilities)
    assert labels_at(probabilities, t) != labels_at(probabilities, 0.5)
    return t


@contextmanager
def forward_batches() -> Iterator[list[tuple[int, torch.device, torch.dtype]]]:
    """(rows, device, weight dtype) of every forward pass of a SpamNet meanwhile."""
    seen: list[tuple[int, torch.device, torch.dtype]] = []
    original = SpamNet.forward

    def forward(net: SpamNet, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        seen.append((input_ids.shape[0], input_ids.device, net.gpt.out_head.weight.dtype))
        return original(net, input_ids, lengths)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SpamNet, "forward", forward)
        yield seen


def bad_vocabulary(models: Models) -> Path:
    """A tokenizer file that is not GPT-2's vocabulary (its last line cut)."""
    bad = models.tmp / "bad.tiktoken"
    if not bad.exists():
        bad.write_bytes(Path(models.tokenizer_file).read_bytes()[:-10])
    return bad


def on_another_device(run: Any) -> list[tuple[int, torch.device, torch.dtype]]:
    """run("cuda"): on a CUDA machine, the forward passes (on the GPU); elsewhere torch's refusal to move the model
    there (what an ignored device= would never raise)."""
    if not torch.cuda.is_available():
        with pytest.raises((AssertionError, RuntimeError), match=r"CUDA|NVIDIA|cuda"):
            run("cuda")
        return []
    with forward_batches() as seen:
        run("cuda")
    assert seen and all(device.type == "cuda" for _, device, _ in seen)
    return seen


# ---------------------------------------------------------------------------------------------------------------
# predict.py
# ---------------------------------------------------------------------------------------------------------------


def predict_cfg(models: Models, *overrides: str, source: str = "ckpt") -> Any:
    model = f"ckpt_path={models.ckpt}" if source == "ckpt" else f"model_dir={models.model_dir}"
    return compose_cfg("predict", model, "device=cpu", f"tokenizer_file={models.tokenizer_file}", *overrides)


def quoted(text: str) -> str:
    """A text as a quoted Hydra override value."""
    return json.dumps(text, ensure_ascii=False)


def texts_file(tmp_path: Path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return path


def probabilities_of(predictions: list[Any]) -> list[float]:
    return [p.positive_probability for p in predictions]


@pytest.mark.parametrize("source", ["ckpt", "model_dir"])
def test_predict_ckpt_path_and_model_dir_are_the_model_read(source: str, models: Models, tmp_path: Path) -> None:
    other = "model_dir" if source == "ckpt" else "ckpt"
    got = probabilities_of(predict.run(predict_cfg(models, f"input_file={texts_file(tmp_path)}", source=source)))
    assert got == models.probabilities(TEXTS, source)
    assert got != models.probabilities(TEXTS, other)


def test_predict_text_one_or_a_list(models: Models) -> None:
    one = predict.run(predict_cfg(models, f"text={quoted(TEXTS[0])}"))
    assert [p.text for p in one] == TEXTS[:1]
    listed = predict.run(predict_cfg(models, f"text=[{quoted(TEXTS[1])},{quoted(TEXTS[2])}]"))
    assert [p.text for p in listed] == TEXTS[1:3]
    assert probabilities_of(listed) == models.probabilities(TEXTS[1:3])


def test_predict_input_file_and_column(models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [p.text for p in predict.run(predict_cfg(models, f"input_file={texts_file(tmp_path)}"))] == TEXTS
    table = tmp_path / "messages.csv"
    pd.DataFrame({"text": [f"other {i}" for i in range(len(TEXTS))], "body": TEXTS}).to_csv(table, index=False)
    assert [p.text for p in predict.run(predict_cfg(models, f"input_file={table}"))][:2] == ["other 0", "other 1"]
    assert [p.text for p in predict.run(predict_cfg(models, f"input_file={table}", "column=body"))] == TEXTS
    # column with stdin: stdin is read as a CSV table (else one text per line)
    for column, expected in (("column=body", TEXTS), ("column=null", table.read_text().splitlines())):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(table.read_bytes()), encoding="utf-8"))
        assert [p.text for p in predict.run(predict_cfg(models, column))] == expected, column


def test_predict_output_and_format(models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts = f"input_file={texts_file(tmp_path)}"
    capsys.readouterr()
    predict.run(predict_cfg(models, texts, f"output={tmp_path / 'out.jsonl'}"))
    assert capsys.readouterr().out == ""
    lines = (tmp_path / "out.jsonl").read_text().splitlines()  # format=auto: JSON lines into a file
    assert [json.loads(line)["text"] for line in lines] == TEXTS
    predict.run(predict_cfg(models, texts, f"output={tmp_path / 'out.txt'}", "format=table"))
    table = (tmp_path / "out.txt").read_text().splitlines()
    assert table[0].split()[:2] == ["label", "P(spam)"] and len(table) == len(TEXTS) + 1
    predict.run(predict_cfg(models, texts))  # no output: stdout
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == TEXTS


def test_predict_batch_size_is_the_texts_per_forward_pass(models: Models, tmp_path: Path) -> None:
    with forward_batches() as seen:
        predict.run(predict_cfg(models, f"input_file={texts_file(tmp_path)}", "batch_size=3"))
    assert [rows for rows, _, _ in seen] == [3, 3, 1]
    with forward_batches() as seen:
        predict.run(predict_cfg(models, f"input_file={texts_file(tmp_path)}"))
    assert [rows for rows, _, _ in seen] == [7]  # 64 by default


def test_predict_threshold_gives_the_labels(models: Models, tmp_path: Path) -> None:
    probabilities = models.probabilities(TEXTS)
    t = threshold_changing_a_label(probabilities)
    predictions = predict.run(predict_cfg(models, f"input_file={texts_file(tmp_path)}", f"threshold={t!r}"))
    assert [p.label for p in predictions] == labels_at(probabilities, t)


def test_predict_precision_bf16_runs_in_bfloat16(models: Models, tmp_path: Path) -> None:
    with forward_batches() as seen:
        got = predict.run(predict_cfg(models, f"input_file={texts_file(tmp_path)}", "precision=bf16"))
    assert {dtype for _, _, dtype in seen} == {torch.bfloat16}
    assert probabilities_of(got) == models.probabilities(TEXTS, precision="bf16") != models.probabilities(TEXTS)


def test_predict_device(models: Models) -> None:
    on_another_device(lambda device: predict.run(predict_cfg(models, "text=hello", f"device={device}")))


@pytest.mark.parametrize("source", ["ckpt", "model_dir"])
def test_predict_tokenizer_file_is_the_vocabulary_read(source: str, models: Models) -> None:
    """Even where the export bundles GPT-2's vocabulary, tokenizer_file is the one read (and this one is refused)."""
    bad = bad_vocabulary(models)
    with pytest.raises(TokenizerError, match=r"bad\.tiktoken"):
        predict.run(predict_cfg(models, "text=hello", f"tokenizer_file={bad}", source=source))


# ---------------------------------------------------------------------------------------------------------------
# evaluate.py
# ---------------------------------------------------------------------------------------------------------------


def evaluate_cfg(models: Models, tmp_path: Path, *overrides: str, source: str = "ckpt") -> Any:
    model = f"ckpt_path={models.ckpt}" if source == "ckpt" else f"model_dir={models.model_dir}"
    return compose_cfg(
        "evaluate", model, "device=cpu", f"tokenizer_file={models.tokenizer_file}", f"out_dir={tmp_path / 'eval'}",
        "target_precision=null", *overrides,
    )  # fmt: skip


def confusion(probabilities: list[float], labels: list[int], threshold: float = 0.5) -> list[list[int]]:
    """Rows the true class (ham 0, spam 1), columns the predicted one."""
    matrix = [[0, 0], [0, 0]]
    for p, label in zip(probabilities, labels, strict=True):
        matrix[label][int(p > threshold)] += 1
    return matrix


@pytest.fixture(scope="module")
def splits(models: Models) -> dict[str, tuple[list[str], list[int]]]:
    predictor = models.predictor()
    return {split: evaluate.load_split(predictor, split) for split in ("validation", "test")}


@pytest.fixture(scope="module")
def labelled(models: Models, splits: dict[str, tuple[list[str], list[int]]]) -> Path:
    """The first 40 test texts in a CSV whose text and label columns are not called text and label."""
    texts, labels = splits["test"]
    path = models.tmp / "labelled.csv"
    pd.DataFrame({"kind": [["ham", "spam"][y] for y in labels[:40]], "body": texts[:40]}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("split", ["validation", "test"])
def test_evaluate_ckpt_path_and_split(
    split: str, models: Models, splits: dict[str, tuple[list[str], list[int]]], tmp_path: Path
) -> None:
    texts, labels = splits[split]
    result = evaluate.run(evaluate_cfg(models, tmp_path, f"split={split}"))
    assert (result["model"], result["data"], result["n"]) == (str(models.ckpt), split, len(texts))
    assert result["metrics"]["confusion_matrix"] == confusion(models.probabilities(texts), labels)
    assert len(splits["validation"][0]) != len(splits["test"][0])


def test_evaluate_model_dir_data_file_column_and_label_column(
    models: Models, splits: dict[str, tuple[list[str], list[int]]], labelled: Path, tmp_path: Path
) -> None:
    texts, labels = splits["test"][0][:40], splits["test"][1][:40]
    columns = ("column=body", "label_column=kind")
    result = evaluate.run(evaluate_cfg(models, tmp_path, f"data_file={labelled}", *columns, source="model_dir"))
    assert (result["model"], result["data"], result["n"]) == (str(models.model_dir), str(labelled), 40)
    expected = confusion(models.probabilities(texts, "model_dir"), labels)
    assert result["metrics"]["confusion_matrix"] == expected != confusion(models.probabilities(texts), labels)
    with pytest.raises(Exception, match="columns 'text' and 'label'"):  # the defaults: no such columns
        evaluate.run(evaluate_cfg(models, tmp_path / "default", f"data_file={labelled}", source="model_dir"))


def test_evaluate_data_dir_is_where_the_splits_are_read(models: Models, tmp_path: Path) -> None:
    """An empty data_dir: the recorded splits are made there again (from the recorded source and seed) and read."""
    folder = tmp_path / "data"
    result = evaluate.run(evaluate_cfg(models, tmp_path, f"data_dir={folder}"))
    assert (folder / "seed-123" / "test.csv").is_file() and result["n"] > 0


def test_evaluate_threshold_is_the_metrics(
    models: Models, splits: dict[str, tuple[list[str], list[int]]], tmp_path: Path
) -> None:
    texts, labels = splits["test"]
    probabilities = models.probabilities(texts)
    t = threshold_changing_a_label(probabilities)
    result = evaluate.run(evaluate_cfg(models, tmp_path, f"threshold={t!r}"))
    assert result["threshold"] == t
    assert (
        result["metrics"]["confusion_matrix"] == confusion(probabilities, labels, t) != confusion(probabilities, labels)
    )


def test_evaluate_target_precision_chooses_the_threshold_on_validation(
    models: Models, splits: dict[str, tuple[list[str], list[int]]], tmp_path: Path
) -> None:
    texts, labels = splits["validation"]
    scores = models.probabilities(texts)
    chosen = {target: evaluate.choose_threshold(scores, labels, target) for target in (0.5, 0.99)}
    assert chosen[0.5] is not None and chosen[0.5] != chosen[0.99]  # the auto target (0.99) chooses otherwise
    selection = evaluate.run(evaluate_cfg(models, tmp_path, "target_precision=0.5"))["threshold_selection"]
    assert (selection["target_precision"], selection["threshold"]) == (0.5, chosen[0.5])
    auto = evaluate.run(evaluate_cfg(models, tmp_path / "auto", "target_precision=auto"))["threshold_selection"]
    assert (auto["target_precision"], auto["threshold"]) == (0.99, chosen[0.99])


def test_evaluate_batch_size(models: Models, labelled: Path, tmp_path: Path) -> None:
    data = (f"data_file={labelled}", "column=body", "label_column=kind")
    with forward_batches() as seen:
        evaluate.run(evaluate_cfg(models, tmp_path, *data, "batch_size=16"))
    assert sorted(rows for rows, _, _ in seen) == [8, 16, 16]
    with forward_batches() as seen:
        evaluate.run(evaluate_cfg(models, tmp_path / "default", *data))
    assert [rows for rows, _, _ in seen] == [40]


def test_evaluate_device(models: Models, labelled: Path, tmp_path: Path) -> None:
    data = (f"data_file={labelled}", "column=body", "label_column=kind")
    on_another_device(lambda device: evaluate.run(evaluate_cfg(models, tmp_path / device, *data, f"device={device}")))


def test_evaluate_tokenizer_file(models: Models, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"bad\.tiktoken"):
        evaluate.run(evaluate_cfg(models, tmp_path, f"tokenizer_file={bad_vocabulary(models)}"))


def test_evaluate_out_dir_and_show_misclassified(
    models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def shown(*overrides: str) -> list[str]:
        capsys.readouterr()
        evaluate.run(evaluate_cfg(models, tmp_path, *overrides))
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ") and " -> " in line]

    assert len(shown("show_misclassified=2")) == 2
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["n_misclassified"] > 10 and len(shown()) == 10  # the default
    assert {p.name for p in (tmp_path / "eval").iterdir()} == set(evaluate.EVALUATION_FILES)


# ---------------------------------------------------------------------------------------------------------------
# serve.py and the fields of a request
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Served:
    server: ls.LitServer
    run: dict[str, Any]  # the arguments of LitServer.run

    @property
    def info(self) -> dict[str, Any]:
        return self.server.model_metadata

    def worker(self, device: str = "cpu") -> SpamAPI:
        """The LitAPI as a model process gets it (pickled), set up on `device`."""
        api = pickle.loads(pickle.dumps(self.server.lit_api))
        api.setup(device)
        return api

    def guard(self, body: bytes) -> tuple[int, Any]:
        """A POST /predict through the middlewares the server installs and its /predict route (the request models
        of its limits), in front of a hand-off to the model processes that accepts all."""

        async def accepted(job: Job) -> JSONResponse:
            return JSONResponse({"accepted": True})

        app = FastAPI()
        for cls, kwargs in self.server.middlewares:
            app.add_middleware(cls, **kwargs)
        serve.add_predict_route(app, self.server.lit_api.limits, accepted)
        response = TestClient(app).post(API_PATH, content=body, headers={"Content-Type": "application/json"})
        return response.status_code, response.json()


def built_server(*overrides: str) -> Served:
    """serve.run(cfg) up to LitServer.run: the server it built and the arguments it would run with."""
    if not any(o.startswith("port=") for o in overrides):
        overrides = (*overrides, f"port={free_port()}")
    got: dict[str, Any] = {}

    def run(server: ls.LitServer, **kwargs: Any) -> None:
        got.update(server=server, run=kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ls.LitServer, "run", run)
        mp.setattr(signal, "signal", lambda *args: None)  # serve.run's stop handlers: not in the test process
        serve.run(compose_cfg("serve", *overrides))
    return Served(**got)


def answers(api: SpamAPI, *payloads: dict[str, Any]) -> list[dict[str, Any]]:
    """The answers to requests that LitServe handed to `api` together (one batch when api.max_batch_size > 1)."""
    jobs = [api.decode_request(serve.parse_request(json.dumps(payload).encode(), api.limits)) for payload in payloads]
    if api.max_batch_size > 1:
        outputs = api.unbatch(api.predict(api.batch(jobs)))
    else:
        outputs = [api.predict(job) for job in jobs]
    return [json.loads(api.encode_response(output).body) for output in outputs]


@pytest.fixture(scope="module")
def served(models: Models) -> Served:
    """The checkpoint served with the defaults."""
    return built_server(f"ckpt_path={models.ckpt}")


@pytest.mark.parametrize("source", ["ckpt", "model_dir"])
def test_serve_ckpt_path_and_model_dir_are_the_model_served(source: str, models: Models) -> None:
    model = f"ckpt_path={models.ckpt}" if source == "ckpt" else f"model_dir={models.model_dir}"
    built = built_server(model)
    (answer,) = answers(built.worker(), {"texts": TEXTS})
    got = [p["positive_probability"] for p in answer["predictions"]]
    assert (
        got
        == models.probabilities(TEXTS, source)
        != models.probabilities(TEXTS, "model_dir" if source == "ckpt" else "ckpt")
    )
    assert built.info["source"] == ("ckpt_path" if source == "ckpt" else "model_dir")


def test_serve_metrics_file_is_what_info_shows(models: Models, served: Served, tmp_path: Path) -> None:
    metrics = {"test": {"accuracy": 0.123, "f1": 0.456}, "validation": {"accuracy": 0.789}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    built = built_server(f"ckpt_path={models.ckpt}", f"metrics_file={tmp_path / 'metrics.json'}")
    assert built.info["metrics"] == metrics and served.info["metrics"] != metrics


def test_serve_tokenizer_file_is_read_by_the_server_and_each_model_process(models: Models, served: Served) -> None:
    bad = bad_vocabulary(models)
    with pytest.raises(TokenizerError, match=r"bad\.tiktoken"):
        built_server(f"model_dir={models.model_dir}", f"tokenizer_file={bad}")
    api = pickle.loads(pickle.dumps(served.server.lit_api))
    api.settings = {**api.settings, "tokenizer_file": str(bad)}  # a model process given the same setting
    with pytest.raises(TokenizerError, match=r"bad\.tiktoken"):
        api.setup("cpu")


def test_serve_host_port_api_servers_and_log_level_are_how_it_runs(models: Models, served: Served) -> None:
    port = free_port()
    built = built_server(f"ckpt_path={models.ckpt}", "host=0.0.0.0", f"port={port}", "api_servers=3", "log_level=info")
    assert {key: built.run[key] for key in ("host", "port", "num_api_servers", "log_level")} == {
        "host": "0.0.0.0", "port": port, "num_api_servers": 3, "log_level": "info",
    }  # fmt: skip
    assert (served.run["host"], served.run["num_api_servers"], served.run["log_level"]) == ("127.0.0.1", 1, "warning")


def test_serve_threshold_is_the_default_of_every_request(models: Models) -> None:
    probabilities = models.probabilities(TEXTS)
    t = threshold_changing_a_label(probabilities)
    api = built_server(f"ckpt_path={models.ckpt}", f"threshold={t!r}").worker()
    (answer,) = answers(api, {"texts": TEXTS})
    assert [p["label"] for p in answer["predictions"]] == labels_at(probabilities, t)
    assert [a["label"] for a in answers(api, *({"text": text} for text in TEXTS))] == labels_at(probabilities, t)


def test_serve_batch_size_is_the_texts_per_forward_pass(models: Models, served: Served) -> None:
    api = built_server(f"ckpt_path={models.ckpt}", "batch_size=4").worker()
    with forward_batches() as seen:
        answers(api, {"texts": TEXTS[:3]}, {"texts": TEXTS[3:]})  # one LitServe batch of two requests
    assert sorted(rows for rows, _, _ in seen) == [3, 4]
    api = served.worker()
    with forward_batches() as seen:
        answers(api, {"texts": TEXTS[:3]}, {"texts": TEXTS[3:]})
    assert [rows for rows, _, _ in seen] == [7]


def test_serve_litserve_settings_reach_the_server(models: Models, served: Served) -> None:
    """max_batch_size, batch_timeout (the LitAPI's batching), workers, fast_queue, request_timeout: LitServe's own
    settings, checked on the LitServer serve.py builds (what LitServe does with them is LitServe's to test)."""
    built = built_server(
        f"ckpt_path={models.ckpt}", "max_batch_size=3", "batch_timeout=0.25", "workers=2", "fast_queue=false",
        "request_timeout=7",
    )  # fmt: skip
    chosen = (built.server.lit_api.max_batch_size, built.server.lit_api.batch_timeout, built.server.workers_per_device,
              built.server.use_zmq, built.server.timeout)  # fmt: skip
    default = (served.server.lit_api.max_batch_size, served.server.lit_api.batch_timeout,
               served.server.workers_per_device, served.server.use_zmq, served.server.timeout)  # fmt: skip
    assert chosen == (3, 0.25, 2, False, 7.0) and default == (8, 0.005, 1, True, 30.0)
    assert built.info["serving"]["max_batch_size"] == 3 and built.info["serving"]["batch_timeout"] == 0.25
    api = built.worker()
    assert [len(a["predictions"]) for a in answers(api, {"texts": TEXTS[:2]}, {"texts": TEXTS[2:]})] == [2, 5]


def test_serve_device_and_devices_choose_the_model_processes_devices(models: Models, served: Served) -> None:
    assert served.server.devices == ["cpu"] or torch.cuda.is_available() or torch.backends.mps.is_available()
    assert built_server(f"ckpt_path={models.ckpt}", "device=cpu").server.devices == ["cpu"]
    cuda = built_server(f"ckpt_path={models.ckpt}", "device=cuda", "devices=2").server
    assert cuda.devices == [["cuda:0"], ["cuda:1"]]  # one model process per device listed
    assert built_server(f"ckpt_path={models.ckpt}", "device=cuda", "devices=1").server.devices == [["cuda:0"]]
    assert built_server(f"ckpt_path={models.ckpt}", "device=mps").server.devices == [["mps:0"]]


def test_serve_threads_are_each_model_process_s_torch_threads(models: Models, served: Served) -> None:
    before = torch.get_num_threads()
    try:
        built_server(f"ckpt_path={models.ckpt}", "threads=3").worker()
        assert torch.get_num_threads() == 3
        served.worker()  # threads=null: the cores but one, shared among the workers (at least 1)
        assert torch.get_num_threads() == served.server.lit_api.settings["threads"]
    finally:
        torch.set_num_threads(before)
    for workers in (1, 2):
        settings = built_server(f"ckpt_path={models.ckpt}", f"workers={workers}").server.lit_api.settings
        assert settings["threads"] == max(1, ((os.cpu_count() or 1) - 1) // workers)


def test_serve_precision_bf16(models: Models) -> None:
    api = built_server(f"ckpt_path={models.ckpt}", "precision=bf16").worker()
    with forward_batches() as seen:
        (answer,) = answers(api, {"texts": TEXTS})
    assert {dtype for _, _, dtype in seen} == {torch.bfloat16}
    assert [p["positive_probability"] for p in answer["predictions"]] == models.probabilities(TEXTS, precision="bf16")


def test_serve_backend_onnxruntime_runs_model_onnx(models: Models) -> None:
    """The export without format=onnx has no model.onnx: backend=onnxruntime is refused by the server, and by a model
    process given it, where backend=torch serves it (predict.py's own backend test runs a model.onnx)."""
    with pytest.raises(CheckpointError, match=r"has no model\.onnx"):
        built_server(f"model_dir={models.model_dir}", "backend=onnxruntime")
    api = pickle.loads(pickle.dumps(built_server(f"model_dir={models.model_dir}").server.lit_api))
    api.setup("cpu")
    api.settings = {**api.settings, "backend": "onnxruntime"}
    with pytest.raises(CheckpointError, match=r"has no model\.onnx"):
        api.setup("cpu")


def test_serve_limits_refuse_larger_requests(models: Models, served: Served) -> None:
    built = built_server(
        f"ckpt_path={models.ckpt}", "limits.max_texts=3", "limits.max_text_bytes=10", "limits.max_request_bytes=100"
    )

    def body(payload: Any, size: int | None = None) -> bytes:
        data = json.dumps(payload).encode()
        return data if size is None else data[:-1] + b" " * (size - len(data)) + b"}"

    cases = {
        "max_texts": ({"texts": ["a"] * 3}, {"texts": ["a"] * 4}),
        "max_text_bytes": ({"text": "é" * 5}, {"text": "é" * 5 + "a"}),
    }
    for limit, (within, over) in cases.items():
        assert built.guard(body(within)) == (200, {"accepted": True}), limit
        status, error = built.guard(body(over))
        assert status == 413 and f"limits.{limit}" in error["error"], limit
        assert served.guard(body(over))[0] == 200, limit  # the default limits let it through
    assert built.guard(body({"text": "a"}, 100))[0] == 200
    status, error = built.guard(body({"text": "a"}, 101))
    assert status == 413 and "limits.max_request_bytes" in error["error"]
    assert served.guard(body({"text": "a"}, 101))[0] == 200
    schemas = built.server.app.openapi()["components"]["schemas"]  # what /openapi.json tells clients
    assert schemas["SeveralTexts"]["properties"]["texts"]["maxItems"] == 3
    assert schemas["OneText"]["properties"]["text"]["maxLength"] == 10


@pytest.mark.parametrize("form", ["text", "texts"])
def test_request_text_texts_and_threshold(form: str, models: Models, served: Served) -> None:
    """{"text": ...} is answered with one prediction of that text, {"texts": [...]} with one per text; a request's own
    "threshold" gives its labels (and no other request's), in either form."""
    api = served.worker()
    probabilities = models.probabilities(TEXTS)
    t = threshold_changing_a_label(probabilities)
    if form == "text":
        plain = answers(api, *({"text": text} for text in TEXTS))
        own = answers(api, *({"text": text, "threshold": t} for text in TEXTS), {"text": TEXTS[0]})
        assert [a["text"] for a in plain] == TEXTS
        labels, own_labels, other = [a["label"] for a in plain], [a["label"] for a in own[:-1]], own[-1]["label"]
    else:
        plain = answers(api, {"texts": TEXTS})[0]["predictions"]
        both = answers(api, {"texts": TEXTS, "threshold": t}, {"texts": TEXTS[:1]})
        assert [a["text"] for a in plain] == TEXTS
        labels, own_labels = [a["label"] for a in plain], [a["label"] for a in both[0]["predictions"]]
        other = both[1]["predictions"][0]["label"]
    assert [a["positive_probability"] for a in plain] == probabilities
    assert labels == labels_at(probabilities, 0.5)
    assert own_labels == labels_at(probabilities, t) != labels
    assert other == labels[0]  # batched with a request that sent a threshold: the server's


def test_request_fields_pass_the_guard(served: Served) -> None:
    for payload in ({"text": "a"}, {"texts": ["a", "b"]}, {"text": "a", "threshold": 0.3}):
        assert served.guard(json.dumps(payload).encode()) == (200, {"accepted": True}), payload
