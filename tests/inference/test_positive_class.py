"""Which class a probability is for (issue 27): a two-class model's binary score, threshold and metrics belong to its
named positive class (`Preprocessing.positive_class`: spam for the SMS data, `data.positive_class` for a CSV), whatever
its class id; every answer carries `probabilities` per class name; summaries count the real class names; a threshold
given to a model of more than two classes is refused, saying why.

Stub networks whose probabilities depend only on a text's token count pin the rules for class names that sort either
way (predict, evaluate, serve's request path); smoke runs on CSV data (spam first in class-id order, and second) check
training's metrics against scikit-learn's with pos_label, and that predict, evaluate, serve and the exports agree.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tiktoken
import torch
from helpers.scripts import run_script
from helpers.serving import free_port, post, serving
from helpers.serving import request as http_request
from helpers.smoke import compose_cfg, train_smoke
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score
from torch import nn

import spam_lightning.inference.evaluate as evaluate
import spam_lightning.inference.predict as predict
import spam_lightning.inference.serve as serve
import spam_lightning.training.baseline as baseline
from spam_lightning.data.modules import CsvDataModule
from spam_lightning.data.preprocess import Preprocessing, PreprocessingError, get_tokenizer
from spam_lightning.data.sms_spam import parse_sms_collection
from spam_lightning.errors import ConfigError
from spam_lightning.inference.checkpoint import RECORD_KEY, TrainedModel
from spam_lightning.inference.export import export_checkpoint
from spam_lightning.inference.predictor import Predictor
from spam_lightning.inference.serve import RequestError, SpamAPI, parse_request, settings_of

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NEEDS_CHROMIUM = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("SPAM_LIGHTNING_REQUIRE_CHROMIUM"),
    reason="no chromium on PATH: `make install-ui` installs Debian's chromium for this test",
)

# 1, 2, 3 and 4 tokens, and an empty text
TEXTS = ["hello", "hello hello", "hello hello hello", "hello hello hello hello", ""]
THREE_CLASSES = ("ham", "other", "spam")
REFUSED = (
    "threshold=0.7 applies to two-class models (P(positive class) > threshold); this model has 3 classes "
    "['ham', 'other', 'spam']: the most probable class is predicted"
)


# --- stub networks: probabilities from a text's token count n -----------------------------------------------


class BinaryStub(nn.Module):
    """P(class `positive`) = softmax of logit n - 2 against 0: below 0.5 for 1 token, 0.5 for 2, above for 3 and 4."""

    num_classes = 2

    def __init__(self, positive: int) -> None:
        super().__init__()
        self.positive = positive

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(lengths), 2)
        logits[:, self.positive] = lengths.float() - 2
        return logits


class ThreeClassStub(nn.Module):
    """1 token: spam; 2 tokens: ham; 3 or more: other (logit 5 against 0)."""

    num_classes = 3

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return 5.0 * torch.stack([lengths == 2, lengths >= 3, lengths == 1], dim=1).float()


def stub_predictor(net: nn.Module, labels: tuple[str, ...], tokenizer: tiktoken.Encoding, **record: Any) -> Predictor:
    pre = Preprocessing(labels, max_length=64, pad_length=None, padding="batch", pool="last_token", **record)
    return Predictor(TrainedModel(net, pre, {}), tokenizer, "cpu")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file: str) -> tiktoken.Encoding:
    encoding = get_tokenizer(tokenizer_file)
    assert [len(encoding.encode_ordinary(t)) for t in TEXTS] == [1, 2, 3, 4, 0]
    return encoding


# spam sorts first (class id 0) and second (class id 1)
ORDERS = {"spam first": ("spam", "valid"), "spam second": ("ok", "spam")}


@pytest.fixture(params=list(ORDERS))
def binary_stub(request: pytest.FixtureRequest, tokenizer: tiktoken.Encoding) -> Predictor:
    labels = ORDERS[request.param]
    return stub_predictor(BinaryStub(labels.index("spam")), labels, tokenizer, positive_class="spam")


@pytest.fixture
def three_class_stub(tokenizer: tiktoken.Encoding) -> Predictor:
    return stub_predictor(ThreeClassStub(), THREE_CLASSES, tokenizer)


# --- the record ------------------------------------------------------------------------------------------


def test_the_record_names_the_positive_class() -> None:
    base = {"max_length": 64, "pad_length": None, "padding": "batch", "pool": "last_token"}
    pre = Preprocessing.from_dict({**base, "labels": ["spam", "valid"], "positive_class": "spam"}, "ckpt")
    assert (pre.positive_class, pre.positive_index) == ("spam", 0)
    assert pre.to_dict()["positive_class"] == "spam"
    # Written before positive_class existed: what it meant, class id 1 of two; none for more classes.
    assert Preprocessing.from_dict({**base, "labels": ["spam", "valid"]}, "ckpt").positive_class == "valid"
    assert Preprocessing.from_dict({**base, "labels": list(THREE_CLASSES)}, "ckpt").positive_class is None
    refused = {
        ("spam", "valid", None): "ckpt: preprocessing.positive_class must be one of the two classes",
        ("spam", "valid", "ham"): "ckpt: preprocessing.positive_class must be one of the two classes",
        (*THREE_CLASSES, "spam"): "a positive class applies to two-class data only",
    }
    for (*labels, positive), message in refused.items():
        with pytest.raises(PreprocessingError, match=message):
            Preprocessing.from_dict({**base, "labels": labels, "positive_class": positive}, "ckpt")


def test_data_positive_class_must_be_one_of_two_classes(tmp_path: Path, tokenizer_file: str) -> None:
    two, three = tmp_path / "two.csv", tmp_path / "three.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(60)], "label": ["spam", "valid"] * 30}).to_csv(two, index=False)
    pd.DataFrame({"text": [f"t{i}" for i in range(90)], "label": list(THREE_CLASSES) * 30}).to_csv(three, index=False)

    def module(path: Path, positive_class: Any) -> CsvDataModule:
        return CsvDataModule(path=str(path), tokenizer_file=tokenizer_file, positive_class=positive_class)

    assert module(two, None).positive_class == "valid"  # the default: class id 1
    assert module(two, "spam").positive_class == "spam"
    assert module(three, None).positive_class is None
    with pytest.raises(ConfigError, match=r"data.positive_class must be one of the two classes \['spam', 'valid'\]"):
        module(two, "ham").prepare_data()
    with pytest.raises(ConfigError, match=r"3 classes \['ham', 'other', 'spam'\], leave it null"):
        module(three, "spam").prepare_data()


# --- the rules, on stubs -----------------------------------------------------------------------------


def test_answers_name_the_positive_class_whichever_its_id(binary_stub: Predictor) -> None:
    labels = binary_stub.preprocessing.labels
    other = next(label for label in labels if label != "spam")
    for threshold, expected in ((None, [other, other, "spam", "spam"]), (0.8, [other, other, other, "spam"])):
        predictions = binary_stub.predict(TEXTS, threshold=threshold)
        assert [p.label for p in predictions[:4]] == expected
        for p in predictions[:4]:
            assert p.positive_class == "spam" and p.positive_probability == p.probabilities["spam"]  # type: ignore[index]
            assert list(p.probabilities) == list(labels) and sum(p.probabilities.values()) == pytest.approx(1)  # type: ignore[union-attr]
    assert binary_stub.positive_probabilities(TEXTS)[0] == [p.positive_probability for p in predictions]
    empty = predictions[4].to_json()
    assert empty == {
        "text": "", "label": None, "probabilities": None, "positive_class": "spam", "positive_probability": None,
        "truncated": False, "error": "empty text",
    }  # fmt: skip


def test_predict_evaluate_and_serve_apply_the_rule_to_the_positive_class(
    binary_stub: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    labels = binary_stub.preprocessing.labels
    other = next(label for label in labels if label != "spam")
    monkeypatch.setattr(predict, "load_predictor", lambda *args, **kwargs: binary_stub)
    monkeypatch.setattr(evaluate, "load_predictor", lambda *args, **kwargs: binary_stub)
    truth = ["spam", other, "spam", "spam", other]
    data = tmp_path / "labelled.csv"
    pd.DataFrame({"label": truth, "text": TEXTS}).to_csv(data, index=False)
    expected = [other, other, "spam", "spam", None]  # spam iff P(spam) > 0.5

    output = tmp_path / "predictions.jsonl"
    cfg = compose_cfg("predict", "model_dir=unused", f"input_file={data}", f"output={output}", "device=cpu")
    with caplog.at_level(logging.INFO, logger="spam_lightning.inference.predict"):
        predict.run(cfg)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["label"] for r in rows] == expected
    assert all(r["positive_class"] == "spam" for r in rows)
    first, second = labels
    assert f"5 text(s): {expected.count(first)} {first}, {expected.count(second)} {second}, 1 not classified" in (
        caplog.text
    )

    cfg = compose_cfg(
        "evaluate", "model_dir=unused", f"data_file={data}", f"out_dir={tmp_path / 'eval'}", "target_precision=null",
        "device=cpu",
    )  # fmt: skip
    result = evaluate.run(cfg)
    assert result["positive_class"] == "spam" and result["labels"] == list(labels)
    metrics = result["metrics"]
    # Class-id order, rows the true class: the spam text called `other` (1 token) is the only mistake.
    spam, not_spam = labels.index("spam"), labels.index(other)
    matrix = [[0, 0], [0, 0]]
    matrix[spam][spam], matrix[spam][not_spam], matrix[not_spam][not_spam] = 2, 1, 1
    assert metrics["confusion_matrix"] == matrix
    assert (metrics["tp"], metrics["fn"], metrics["tn"], metrics["fp"]) == (2, 1, 1, 0)
    assert (metrics["precision"], metrics["recall"]) == (1.0, pytest.approx(2 / 3))  # spam's, not the other class's
    (misclassified,) = map(json.loads, (tmp_path / "eval" / "misclassified.jsonl").read_text().splitlines())
    assert (misclassified["row"], misclassified["label"], misclassified["predicted"]) == (0, "spam", other)
    assert (
        misclassified["positive_probability"]
        == misclassified["probabilities"]["spam"]
        == rows[0]["probabilities"]["spam"]
    )

    settings, limits = serve.fit_to_model(*settings_of(compose_cfg("serve", "model_dir=unused")), binary_stub)
    assert settings["threshold"] == 0.5 and limits.positive_class == "spam"
    api = SpamAPI(settings, limits, max_batch_size=4, batch_timeout=0.0)
    api.predictor = binary_stub
    for threshold, want in ((None, expected), (0.0, ["spam"] * 4 + [None]), (1.0, [other] * 4 + [None])):
        body = {"texts": TEXTS} if threshold is None else {"texts": TEXTS, "threshold": threshold}
        answer = api.predict(parse_request(json.dumps(body).encode(), limits))
        assert [p["label"] for p in answer["predictions"]] == want  # type: ignore[call-overload]
    assert answer["predictions"][2] == {**rows[2], "label": other}  # type: ignore[call-overload]
    with pytest.raises(RequestError) as empty:
        parse_request(b'{"text": " "}', limits)
    assert empty.value.status == 422 and empty.value.body == {**rows[4], "text": " "}


def test_summary_counts_every_class(
    three_class_stub: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(predict, "load_predictor", lambda *args, **kwargs: three_class_stub)
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    cfg = compose_cfg("predict", "model_dir=unused", f"input_file={data}", f"output={tmp_path / 'out.jsonl'}")
    with caplog.at_level(logging.INFO, logger="spam_lightning.inference.predict"):
        predictions = predict.run(cfg)
    assert [p.label for p in predictions] == ["spam", "ham", "other", "other", None]
    assert "5 text(s): 1 ham, 2 other, 1 spam, 1 not classified; 0 truncated to 64 tokens" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert all(r["positive_class"] is None and r["positive_probability"] is None for r in rows)
    assert rows[2]["label"] == max(rows[2]["probabilities"], key=rows[2]["probabilities"].get) == "other"


def test_a_threshold_for_more_than_two_classes_is_refused(
    three_class_stub: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predict, "load_predictor", lambda *args, **kwargs: three_class_stub)
    monkeypatch.setattr(evaluate, "load_predictor", lambda *args, **kwargs: three_class_stub)
    data = tmp_path / "labelled.csv"
    pd.DataFrame({"label": ["spam", "ham", "other", "other"], "text": TEXTS[:4]}).to_csv(data, index=False)
    output, out_dir = tmp_path / "out.jsonl", tmp_path / "eval"
    predict_args = ("predict", "model_dir=unused", f"input_file={data}", f"output={output}", "column=text")
    evaluate_args = ("evaluate", "model_dir=unused", f"data_file={data}", f"out_dir={out_dir}")
    with pytest.raises(ConfigError, match=rf"^{re.escape(REFUSED)}$"):
        predict.run(compose_cfg(*predict_args, "threshold=0.7"))
    for override in ("threshold=0.7", "target_precision=0.7"):
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=re.escape(REFUSED.replace("threshold=0.7", f"{key}=0.7"))):
            evaluate.run(compose_cfg(*evaluate_args, override))
    assert not output.exists() and not out_dir.exists()  # refused before anything is written
    with pytest.raises(ConfigError, match=re.escape(REFUSED)):
        serve.fit_to_model(*settings_of(compose_cfg("serve", "model_dir=unused", "threshold=0.7")), three_class_stub)

    settings, limits = serve.fit_to_model(*settings_of(compose_cfg("serve", "model_dir=unused")), three_class_stub)
    assert settings["threshold"] is None and limits.classes == THREE_CLASSES
    with pytest.raises(RequestError) as refused:
        parse_request(b'{"texts": ["hello"], "threshold": 0.7}', limits)
    assert refused.value.status == 400 and refused.value.body == {
        "error": REFUSED.replace("threshold=", '"threshold"=')
    }
    # Without a threshold (null: the defaults), every entry point answers.
    api = SpamAPI(settings, limits, max_batch_size=4, batch_timeout=0.0)
    api.predictor = three_class_stub
    answer = api.predict(parse_request(b'{"texts": ["hello"]}', limits))
    assert answer["predictions"][0]["label"] == "spam"  # type: ignore[call-overload]
    assert [p.label for p in predict.run(compose_cfg(*predict_args))] == ["spam", "ham", "other", "other"]
    assert evaluate.run(compose_cfg(*evaluate_args))["metrics"]["accuracy"] == 1.0


def test_baseline_metrics_are_the_positive_class_s(tmp_path: Path, sms_tsv: Path, tokenizer_file: str) -> None:
    """baseline.py's binary metrics: scikit-learn's with pos_label = the positive class's id (here 0), and
    data.positive_class changes them."""
    torch.manual_seed(0)
    probs = torch.rand(200, 1, dtype=torch.float64)
    probs = torch.cat([probs, 1 - probs], dim=1)
    truth = (torch.rand(200) < 0.3).long()  # class 0 (spam) the rarer: its precision is not class 1's
    ours = baseline.split_metrics(probs, truth, ("spam", "valid"), positive=0)
    called = [0 if p > 0.5 else 1 for p in probs[:, 0].tolist()]
    assert ours["precision"] == pytest.approx(precision_score(truth, called, pos_label=0), abs=1e-6)
    assert ours["recall"] == pytest.approx(recall_score(truth, called, pos_label=0), abs=1e-6)
    assert ours["auroc"] == pytest.approx(roc_auc_score((truth == 0).long(), probs[:, 0]), abs=1e-6)
    assert ours["precision"] != pytest.approx(precision_score(truth, called, pos_label=1), abs=1e-3)

    data = tmp_path / "texts.csv"
    pd.DataFrame(_binary_rows(sms_tsv, "valid"), columns=["text", "label"]).to_csv(data, index=False)
    args = ("baseline", "data=csv", f"data.path={data}", f"data.tokenizer_file={tokenizer_file}")
    spam = baseline.run(compose_cfg(*args, "data.positive_class=spam"))
    valid = baseline.run(compose_cfg(*args))  # the default: class id 1
    assert (spam["positive_class"], valid["positive_class"]) == ("spam", "valid")
    assert spam["test"]["accuracy"] == valid["test"]["accuracy"]
    assert (spam["test"]["precision"], spam["test"]["recall"]) != (valid["test"]["precision"], valid["test"]["recall"])


# --- trained on CSV data: spam first (data.positive_class=spam) and spam second (the default) ----------------


def _binary_rows(sms_tsv: Path, other: str) -> list[tuple[str, str]]:
    """200 SMS spam texts and 100 ham ones labelled `other`: unbalanced, so that spam's precision and recall differ
    from the other class's."""
    df = parse_sms_collection(sms_tsv)
    spam = df[df.label == 1].text.sample(200, random_state=0).tolist()
    ham = df[df.label == 0].text.sample(100, random_state=0).tolist()
    rows = [(t, "spam") for t in spam] + [(t, other) for t in ham]
    random.Random(0).shuffle(rows)
    return rows


@pytest.fixture(scope="module", params=list(ORDERS))
def trained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sms_tsv: Path, tokenizer_file: str
) -> dict[str, Any]:
    """A smoke run on two-class CSV data whose positive class, spam, is class id 0 (data.positive_class=spam) or 1
    (the default), and a predictor of its best checkpoint."""
    labels = ORDERS[request.param]
    other = next(label for label in labels if label != "spam")
    tmp = tmp_path_factory.mktemp(request.param.replace(" ", "_"))
    data = tmp / "texts.csv"
    pd.DataFrame(_binary_rows(sms_tsv, other), columns=["text", "label"]).to_csv(data, index=False)
    positive = ["data.positive_class=spam"] if labels[0] == "spam" else []
    overrides = ["data=csv", f"data.path={data}", *positive, "report=false"]
    metrics = train_smoke(tmp, sms_tsv, tokenizer_file, *overrides)
    predictor = Predictor.from_checkpoint(metrics["best_checkpoint"], device="cpu")
    return {"labels": labels, "other": other, "tmp": tmp, "metrics": metrics, "predictor": predictor}


def test_training_metrics_are_the_positive_class_s(trained: dict[str, Any]) -> None:
    """metrics.json's binary metrics equal scikit-learn's with pos_label = spam's class id, from the best checkpoint's
    probabilities on the test split; the confusion matrix is in class-id order."""
    metrics, labels, predictor = trained["metrics"], trained["labels"], trained["predictor"]
    spam = labels.index("spam")
    assert metrics["labels"] == list(labels) and metrics["positive_class"] == "spam"
    assert predictor.preprocessing.positive_class == "spam"
    texts, truth = evaluate.load_split(predictor, "test")
    rows, _ = predictor.class_probabilities(texts)
    p_spam = [row[spam] for row in rows]  # type: ignore[index]
    predicted = [spam if p > 0.5 else 1 - spam for p in p_spam]
    test = metrics["test"]
    ours = {name: test[name] for name in ("precision", "recall", "f1", "auroc")}
    sklearn = {
        "precision": precision_score(truth, predicted, pos_label=spam, zero_division=0),
        "recall": recall_score(truth, predicted, pos_label=spam),
        "f1": f1_score(truth, predicted, pos_label=spam, zero_division=0),
        "auroc": roc_auc_score([int(t == spam) for t in truth], p_spam),
    }
    assert ours == pytest.approx(sklearn, abs=2e-6)
    other_class = precision_score(truth, predicted, pos_label=1 - spam, zero_division=0)
    assert abs(other_class - sklearn["precision"]) > 1e-3, "the data should tell the two classes' precision apart"
    matrix = confusion_matrix(truth, predicted, labels=[0, 1]).tolist()
    assert test["confusion_matrix"] == matrix
    assert (test["tp"], test["fn"]) == (matrix[spam][spam], matrix[spam][1 - spam])


def test_predict_evaluate_serve_and_exports_agree_on_the_positive_class(
    trained: dict[str, Any], tmp_path: Path, tokenizer_file: str
) -> None:
    ckpt, predictor, other = trained["metrics"]["best_checkpoint"], trained["predictor"], trained["other"]
    texts = ["WINNER!! You have won a £1000 prize. Call 09061701461 to claim", "Are we still on for lunch?"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    cfg = compose_cfg(
        "predict", f"ckpt_path={ckpt}", f"input_file={tmp_path / 'in.txt'}", f"output={tmp_path / 'out.jsonl'}",
        "device=cpu",
    )  # fmt: skip
    predict.run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["positive_class"] == "spam" and row["positive_probability"] == row["probabilities"]["spam"]
        assert row["label"] == ("spam" if row["positive_probability"] > 0.5 else other)

    settings, limits = serve.fit_to_model(*settings_of(compose_cfg("serve", f"ckpt_path={ckpt}")), predictor)
    api = SpamAPI(settings, limits, max_batch_size=4, batch_timeout=0.0)
    api.predictor = predictor
    assert api.predict(parse_request(json.dumps({"texts": texts}).encode(), limits)) == {"predictions": rows}

    result = evaluate.run(compose_cfg("evaluate", f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'eval'}", "device=cpu"))
    test = trained["metrics"]["test"]
    assert result["positive_class"] == "spam" and result["metrics"]["confusion_matrix"] == test["confusion_matrix"]
    assert result["metrics"]["precision"] == pytest.approx(test["precision"], abs=2e-6)
    selection = result["threshold_selection"]  # chosen for spam's precision on the validation split
    if selection["threshold"] is not None:
        texts_v, truth_v = evaluate.load_split(predictor, "validation")
        p_spam, _ = predictor.positive_probabilities(texts_v)
        spam = trained["labels"].index("spam")
        called = [spam if p > selection["threshold"] else 1 - spam for p in p_spam]  # type: ignore[operator]
        precision = precision_score(truth_v, called, pos_label=spam)
        assert precision == pytest.approx(selection["validation"]["precision"], abs=2e-6) and precision >= 0.99
    for line in (tmp_path / "eval" / "misclassified.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert record["predicted"] == ("spam" if record["positive_probability"] > 0.5 else other)

    labelled = tmp_path / "mine.csv"  # labelled with the model's class names
    pd.DataFrame({"text": texts, "label": ["spam", other]}).to_csv(labelled, index=False)
    mine = evaluate.run(
        compose_cfg("evaluate", f"ckpt_path={ckpt}", f"data_file={labelled}", f"out_dir={tmp_path / 'e2'}")
    )
    assert mine["n"] == 2 and mine["metrics"]["tp"] + mine["metrics"]["fn"] == 1  # one spam text

    export_checkpoint(ckpt, tmp_path / "hf", tokenizer_file, format="hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config[RECORD_KEY]["preprocessing"]["positive_class"] == "spam"
    assert config["id2label"] == {str(i): label for i, label in enumerate(trained["labels"])}
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "the positive class `spam` (the binary score is P(spam))" in card
    assert f"A text is `spam` when P(spam) > 0.5, the threshold the metrics above use, else `{other}`" in card
    exported = Predictor.from_dir(tmp_path / "hf", device="cpu").predict(texts)
    assert [p.label for p in exported] == [r["label"] for r in rows]
    assert [p.positive_class for p in exported] == ["spam", "spam"]


def test_resuming_with_another_positive_class_is_refused(
    trained: dict[str, Any], sms_tsv: Path, tokenizer_file: str
) -> None:
    other, data = trained["other"], trained["tmp"] / "texts.csv"
    with pytest.raises(ConfigError, match=rf"data.positive_class='spam' \(this run: '{other}'\)"):
        train_smoke(
            trained["tmp"], sms_tsv, tokenizer_file, "data=csv", f"data.path={data}", f"data.positive_class={other}",
            "resume=true",
        )  # fmt: skip


# --- served: the HTTP API and the page --------------------------------------------------------------------

SPAM_TEXT = "WINNER!! As a valued network customer you have been selected to receive a £900 prize reward! Call 0906170"
HAM_TEXT = "Are we still meeting for lunch tomorrow? I'll be at the cafe around noon"


def test_served_answers_and_page_slider_are_on_the_positive_class(trained: dict[str, Any], tmp_path: Path) -> None:
    ckpt, other = trained["metrics"]["best_checkpoint"], trained["other"]
    with serving(f"ckpt_path={ckpt}", "threads=1", log=tmp_path / "server.log") as port:
        status, info = http_request(port, "GET", "/info")
        assert status == 200 and info["model"]["preprocessing"]["positive_class"] == "spam"
        assert info["model"]["serving"]["threshold"] == 0.5  # threshold=null: 0.5 for two classes
        status, answer = post(port, {"texts": [SPAM_TEXT, HAM_TEXT]})
        assert status == 200 and all(p["positive_class"] == "spam" for p in answer["predictions"])
        served = [p["label"] for p in answer["predictions"]]
        assert served == ["spam" if p["positive_probability"] > 0.5 else other for p in answer["predictions"]]
        for threshold, expected in ((0, ["spam", "spam"]), (1, [other, other])):
            status, answer = post(port, {"texts": [SPAM_TEXT, HAM_TEXT], "threshold": threshold})
            assert status == 200 and [p["label"] for p in answer["predictions"]] == expected
        if CHROMIUM is not None or os.environ.get("SPAM_LIGHTNING_REQUIRE_CHROMIUM"):
            page_labels = _page(port, [SPAM_TEXT, HAM_TEXT], slider=True)
            assert page_labels["classified"] == served
            assert page_labels["threshold 1"] == [other, other] and page_labels["threshold 0"] == ["spam", "spam"]
            assert page_labels["slider"] == "Threshold on P(spam)" and page_labels["header"] == "P(spam)"
            assert f"2 spam, 0 {other}" in page_labels["status at 0"]


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory: pytest.TempPathFactory, sms_tsv: Path, tokenizer_file: str) -> dict[str, Any]:
    """A smoke run on ham, other (generated weather reports) and spam."""
    df = parse_sms_collection(sms_tsv)
    rng = random.Random(0)
    rows = [(t, "ham") for t in df[df.label == 0].text.sample(100, random_state=0)]
    rows += [(t, "spam") for t in df[df.label == 1].text.sample(100, random_state=0)]
    rows += [(f"Weather for day {i}: {rng.choice(['sunny', 'rainy'])}, {rng.randint(0, 30)} degrees.", "other")
             for i in range(100)]  # fmt: skip
    tmp = tmp_path_factory.mktemp("three")
    data = tmp / "three.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(data, index=False)
    return train_smoke(tmp, sms_tsv, tokenizer_file, "data=csv", f"data.path={data}", "report=false")


@pytest.mark.slow  # three command lines, a server and a browser: ~55 s
def test_a_threshold_for_three_classes_is_refused_from_the_command_line_and_over_http(
    three_class_run: dict[str, Any], tmp_path: Path
) -> None:
    ckpt = three_class_run["best_checkpoint"]
    assert three_class_run["labels"] == list(THREE_CLASSES) and three_class_run["positive_class"] is None
    commands = {
        "predict.py": "text=hello",
        "evaluate.py": f"out_dir={tmp_path / 'eval'}",
        "serve.py": f"port={free_port()}",
    }
    for script, argument in commands.items():
        done = run_script(script, f"ckpt_path={ckpt}", argument, "threshold=0.7")
        assert done.returncode == 1 and done.stderr.strip().splitlines() == [f"error: {REFUSED}"], done.stderr
    assert not (tmp_path / "eval").exists()
    with serving(f"ckpt_path={ckpt}", "threads=1", log=tmp_path / "server.log") as port:
        status, refused = post(port, {"texts": [HAM_TEXT], "threshold": 0.7})
        assert status == 400 and refused == {"error": REFUSED.replace("threshold=", '"threshold"=')}
        status, answer = post(port, {"texts": [SPAM_TEXT, HAM_TEXT]})
        assert status == 200 and all(p["positive_class"] is None for p in answer["predictions"])
        assert http_request(port, "GET", "/info")[1]["model"]["serving"]["threshold"] is None
        if CHROMIUM is not None or os.environ.get("SPAM_LIGHTNING_REQUIRE_CHROMIUM"):
            page_labels = _page(port, [SPAM_TEXT, HAM_TEXT], slider=False)
            assert page_labels["classified"] == [p["label"] for p in answer["predictions"]]
            assert page_labels["header"] == "P(label)"


def _page(port: int, texts: list[str], slider: bool) -> dict[str, Any]:
    """What the page shows in headless Chromium after classifying `texts` (and, with the slider, at threshold 1 and
    0): the labels, the slider's name and the probability column's header."""
    assert CHROMIUM is not None, "SPAM_LIGHTNING_REQUIRE_CHROMIUM is set but there is no chromium on PATH"
    from playwright import sync_api

    seen: dict[str, Any] = {}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.querySelector('#model').textContent.startsWith('Model ')")  # /info read
            assert page.locator("#threshold").is_visible() == slider
            seen["header"] = page.locator("#prob-header").inner_text()
            page.locator("#messages").fill("\n".join(texts))
            page.locator("#messages").press("Control+Enter")
            page.wait_for_selector(f"#results tbody tr >> nth={len(texts) - 1}")
            seen["classified"] = page.locator("#results td.label").all_inner_texts()
            if slider:
                seen["slider"] = page.locator("#threshold-label").inner_text()
                page.locator("#threshold").press("End")
                seen["threshold 1"] = page.locator("#results td.label").all_inner_texts()
                page.locator("#threshold").press("Home")
                seen["threshold 0"] = page.locator("#results td.label").all_inner_texts()
                seen["status at 0"] = page.locator("#status").inner_text()
        finally:
            browser.close()
    return seen
