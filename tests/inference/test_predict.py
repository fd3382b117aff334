"""Using a trained model: predict, evaluate, report, export (one smoke run trained per module)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.records import resave_checkpoint
from helpers.scripts import run_script
from helpers.smoke import compose_cfg, copy_smoke

from spam_lightning.data.modules import SmsSpamDataModule
from spam_lightning.errors import CheckpointError, DataError, UnsafeCheckpointError
from spam_lightning.inference.checkpoint import RECORD_KEY
from spam_lightning.inference.evaluate import choose_threshold, load_split, precision_recall_at, read_labelled
from spam_lightning.inference.evaluate import run as evaluate_run
from spam_lightning.inference.export import export_checkpoint
from spam_lightning.inference.predict import read_texts
from spam_lightning.inference.predictor import Predictor
from spam_lightning.inference.report import write_training_report
from spam_lightning.training.module import SpamClassifier

TINY = {"emb_dim": 32, "n_layers": 2, "n_heads": 2, "context_length": 64, "dropout": 0.0, "qkv_bias": True}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matmuls are too small to gain from threads, and OpenMP threads that wait on a busy
    machine slow them tenfold: this module runs with one (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, smoke_source: Path) -> dict:
    """A smoke run (tiny model, 1 short epoch, batch padding, pool last_token): run dir, best ckpt, metrics."""
    tmp = tmp_path_factory.mktemp("smoke")
    metrics = copy_smoke(smoke_source, tmp)
    return {"run_dir": tmp / "run", "ckpt": Path(metrics["best_checkpoint"]), "metrics": metrics, "tmp": tmp}


@pytest.fixture(scope="module")
def predictor(smoke: dict) -> Predictor:
    return Predictor.from_checkpoint(smoke["ckpt"], device="cpu")


# -- predict reproduces training ------------------------------------------------------------------


def test_evaluate_test_split_reproduces_metrics_json(smoke: dict, tmp_path: Path) -> None:
    saved = json.loads((smoke["run_dir"] / "metrics.json").read_text())
    assert Path(saved["best_checkpoint"]).name == smoke["ckpt"].name  # the copy of the worker's smoke run
    cfg = compose_cfg("evaluate", f"ckpt_path={smoke['ckpt']}", f"out_dir={tmp_path}", "device=cpu")
    result = evaluate_run(cfg)
    ours, theirs = result["metrics"], saved["test"]
    assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    assert ours["accuracy"] == theirs["accuracy"]  # both rounded to 6 digits
    for key in ("precision", "recall", "f1", "auroc"):
        assert ours[key] == pytest.approx(theirs[key], abs=2e-6)
    selection = result["threshold_selection"]
    assert selection["target_precision"] == 0.99
    if selection["threshold"] is not None:
        assert selection["validation"]["precision"] >= 0.99
        assert selection["evaluated"]["data"] == "test"
        assert set(selection["evaluated"]) == {"data", "precision", "recall", "confusion_matrix"}
    lines = (tmp_path / "misclassified.jsonl").read_text().splitlines()
    assert len(lines) == result["n_misclassified"] == ours["fp"] + ours["fn"]
    assert all(json.loads(line)["label"] != json.loads(line)["predicted"] for line in lines)
    for name in ("confusion_matrix.png", "pr_curve.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
    assert json.loads((tmp_path / "evaluation.json").read_text())["metrics"] == ours


def test_fixed_padding_and_pool_last_match_the_datamodule(smoke: dict, tokenizer_file: str, tmp_path: Path) -> None:
    """Book-style preprocessing (every text padded/truncated to one length, logits at the last position)."""
    pad = 40  # shorter than some texts: truncation matters too
    ckpt = torch.load(smoke["ckpt"], map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["pool"] = "last"
    record = ckpt[RECORD_KEY]
    record["net"]["pool"] = "last"
    record["preprocessing"] |= {"pad_length": pad, "padding": pad, "pool": "last"}  # prediction reads only this
    resave_checkpoint(ckpt, tmp_path / "book.ckpt")

    predictor = Predictor.from_checkpoint(tmp_path / "book.ckpt", device="cpu")
    pre = predictor.preprocessing
    assert (pre.pad_length, pre.pool, pre.token_limit, predictor.net.pool) == (pad, "last", pad, "last")
    texts, _ = load_split(predictor, "test")
    encoded = predictor.encode(texts)
    ours = predictor.probabilities([e.ids for e in encoded], batch_size=37)

    dm = SmsSpamDataModule(
        data_dir=record["data"]["data_dir"], tokenizer_file=tokenizer_file, padding=pad, context_length=128
    )
    dm.setup("test")
    model = SpamClassifier.from_options(**{**ckpt["hyper_parameters"], "pretrained": None}).eval()
    model.load_state_dict(ckpt["state_dict"])
    with torch.no_grad():
        batches = list(dm.test_dataloader())
        theirs = torch.cat([model(b["input_ids"], b["lengths"]).softmax(-1) for b in batches])
    assert [e.ids for e in encoded] == dm.datasets["test"].ids
    assert any(e.truncated for e in encoded)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


# -- export -----------------------------------------------------------------------------------------


def test_export_gives_the_checkpoint_probabilities(smoke: dict, predictor: Predictor, tmp_path: Path) -> None:
    out = tmp_path / "model"
    paths = export_checkpoint(smoke["ckpt"], out)  # pool=last_token: transformers' layout (test_export_hf.py)
    assert {p.name for p in paths} >= {"model.safetensors", "config.json", "gpt2.tiktoken", "tokenizer.json"}
    config = json.loads((out / "config.json").read_text())[RECORD_KEY]
    assert (config["net"]["num_classes"], config["net"]["pool"]) == (2, "last_token")
    assert config["preprocessing"]["labels"] == ["ham", "spam"] and config["preprocessing"]["pool"] == "last_token"
    assert config["preprocessing"]["pad_length"] is None and config["preprocessing"]["max_length"] == 128

    exported = Predictor.from_dir(out, device="cpu")
    texts, _ = load_split(predictor, "test")
    a, _ = predictor.positive_probabilities(texts)
    b, _ = exported.positive_probabilities(texts)
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))  # type: ignore[operator]
    print(f"max |P(spam) export - checkpoint| over {len(texts)} test texts: {diff:.3g}")
    assert diff <= 1e-6
    with pytest.raises(FileExistsError):
        export_checkpoint(smoke["ckpt"], out)

    # Loading and predicting from the folder imports no Lightning (and unpickles nothing: safetensors + JSON).
    code = (
        "import sys; from spam_lightning.inference.predictor import Predictor; "
        f"p = Predictor.from_dir({str(out)!r}, device='cpu'); print(p.predict(['Win cash now!!'])[0].label); "
        "assert not [m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning'))]"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("ham", "spam")

    (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="sha256"):
        Predictor.from_dir(out)


# -- security ---------------------------------------------------------------------------------------


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    zipped, legacy = tmp_path / "evil.ckpt", tmp_path / "evil_legacy.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"arch": Payload(marker)}}, zipped)
    legacy.write_bytes(pickle.dumps({"state_dict": Payload(marker)}, protocol=2))
    for path in (zipped, legacy):
        with pytest.raises(UnsafeCheckpointError, match="refusing"):
            Predictor.from_checkpoint(path)
    done = run_script("predict.py", f"ckpt_path={zipped}", "text=hello")
    assert done.returncode != 0 and "refusing checkpoint" in done.stderr and "system" in done.stderr
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(smoke: dict, tmp_path: Path) -> None:
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(smoke["ckpt"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot be read"):
        Predictor.from_checkpoint(cut)


# -- inputs ---------------------------------------------------------------------------------------


def test_bad_texts_have_clear_rules(predictor: Predictor) -> None:
    long = "win a free prize now " * 100  # far more than the 128 training tokens
    texts = ["", "  \t\n ", "see you at six", "caf\udce9", long]
    preds = predictor.predict(texts)
    assert [p.error for p in preds] == ["empty text", "empty text", None, "invalid UTF-8", None]
    assert [p.label is None for p in preds] == [True, True, False, True, False]
    assert [p.positive_probability is None for p in preds] == [True, True, False, True, False]
    assert [p.truncated for p in preds] == [False, False, False, False, True]
    # Truncated as in training: the same as predicting the first 128 tokens.
    head = predictor.tokenizer.decode(predictor.tokenizer.encode_ordinary(long)[:128])
    assert predictor.predict([head])[0].positive_probability == pytest.approx(preds[4].positive_probability, abs=1e-6)
    assert predictor.predict([]) == []


def test_input_files(tmp_path: Path) -> None:
    lines = tmp_path / "texts.txt"
    lines.write_bytes(b"first\r\nsecond\n\nfourth\n")
    assert read_texts(str(lines)) == ["first", "second", "", "fourth"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\nbroken \xff here\n")
    with pytest.raises(DataError, match=r"bad\.txt, line 3: invalid UTF-8"):
        read_texts(str(bad))
    table = tmp_path / "t.csv"
    table.write_text('id,message\n1,"hello, world"\n2,NA\n')
    assert read_texts(str(table), "message") == ["hello, world", "NA"]
    with pytest.raises(DataError, match="no column 'text'"):
        read_texts(str(table))
    with pytest.raises(DataError, match="does not exist"):
        read_texts(str(tmp_path / "missing.txt"))


def test_predict_cli_jsonl_from_stdin_and_table(smoke: dict) -> None:
    stdin = "Hi mum, home at 6\n\nURGENT! You have won a 2000 prize. Call 09061790121 now\n"
    done = run_script("predict.py", f"ckpt_path={smoke['ckpt']}", "device=cpu", stdin=stdin)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in rows] == stdin.splitlines()
    assert rows[1] == {
        "text": "", "label": None, "probabilities": None, "positive_class": "spam", "positive_probability": None,
        "truncated": False, "error": "empty text",
    }  # fmt: skip
    assert all(r["label"] in ("ham", "spam") and 0 <= r["positive_probability"] <= 1 for r in (rows[0], rows[2]))
    done = run_script("predict.py", f"ckpt_path={smoke['ckpt']}", 'text="Win, win: a prize!"', "format=table")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("label") and "Win, win: a prize!" in done.stdout


def test_bf16_precision_agrees_with_float32(smoke: dict, predictor: Predictor, sms_tsv: Path) -> None:
    texts = [line.split("\t", 1)[1] for line in sms_tsv.read_text(encoding="utf-8").splitlines()[:64]]
    fp32, _ = predictor.positive_probabilities(texts, batch_size=16)
    bf16 = Predictor.from_checkpoint(smoke["ckpt"], device="cpu", precision="bf16")
    assert next(bf16.net.parameters()).dtype == torch.bfloat16  # converted once, not autocast per batch
    low, _ = bf16.positive_probabilities(texts, batch_size=16)
    assert max(abs(a - b) for a, b in zip(fp32, low, strict=True)) < 0.05
    confident = [i for i, p in enumerate(fp32) if abs(p - 0.5) > 0.05]
    assert [fp32[i] > 0.5 for i in confident] == [low[i] > 0.5 for i in confident]
    done = run_script("predict.py", f"ckpt_path={smoke['ckpt']}", "device=cpu", "precision=16", "text=hello")
    assert done.returncode != 0
    assert "error: precision=16: expected one of 32, bf16" in done.stderr
    assert "Traceback" not in done.stderr


# -- evaluate -------------------------------------------------------------------------------------


def test_choose_threshold() -> None:
    scores = [0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.2]
    labels = [1, 1, 0, 1, 1, 0, 0]
    t = choose_threshold(scores, labels, 1.0)
    assert t == pytest.approx(0.85) and precision_recall_at(scores, labels, t) == (1.0, 0.5)
    t = choose_threshold(scores, labels, 0.8)  # top 5: 4 spam of 5
    assert t == pytest.approx(0.5) and precision_recall_at(scores, labels, t) == (0.8, 1.0)
    assert choose_threshold([0.9, 0.8], [0, 1], 1.0) is None  # the top score is ham: precision never reaches 1
    assert choose_threshold([0.5, 0.5], [1, 0], 0.9) is None  # equal scores cannot be separated


def test_read_labelled_files(sms_tsv: Path, tmp_path: Path) -> None:
    texts, labels = read_labelled(sms_tsv, ("ham", "spam"))  # the UCI file itself: label<TAB>text, no header
    assert len(texts) == 5574 and sum(labels) == 747
    csv = tmp_path / "mine.csv"
    csv.write_text("label,text\nspam,WIN NOW\nham,see you\n1,prize\n")
    assert read_labelled(csv, ("ham", "spam")) == (["WIN NOW", "see you", "prize"], [1, 0, 1])
    csv.write_text("label,text\nspam,WIN NOW\nmaybe,hmm\n")
    with pytest.raises(ValueError, match=r"mine\.csv, row 3: unknown label 'maybe' \(not a class of the model"):
        read_labelled(csv, ("ham", "spam"))
    csv.write_text("label,text\nHam,see you\n")  # the rule of data=csv: one spelling per class, no silent merge
    with pytest.raises(ValueError, match=r"row 2: unknown label 'Ham' .*the class 'ham' and it differ only in case"):
        read_labelled(csv, ("ham", "spam"))
    # One reader for any number of classes: names, or ids where no class is named by a number.
    csv.write_text("text,label\na,other\nb,2\nc,ham\n")
    assert read_labelled(csv, ("ham", "other", "spam")) == (["a", "b", "c"], [1, 2, 0])


def test_evaluate_a_labelled_file(smoke: dict, tmp_path: Path) -> None:
    data = tmp_path / "mine.tsv"
    data.write_text("text\tlabel\nWINNER! Claim your free prize now, call 0800\tspam\nsee you at home\tham\n\tham\n")
    out = tmp_path / "out"
    cfg = compose_cfg("evaluate", f"ckpt_path={smoke['ckpt']}", f"data_file={data}", f"out_dir={out}", "device=cpu")
    result = evaluate_run(cfg)
    assert (result["n"], result["n_skipped"]) == (3, 1)
    assert sum(map(sum, result["metrics"]["confusion_matrix"])) == 2
    selection = result["threshold_selection"]
    assert selection["threshold"] is None or selection["evaluated"]["data"] == "mine"
    assert (out / "pr_curve.png").is_file()


# -- report ---------------------------------------------------------------------------------------


def test_training_report(smoke: dict) -> None:
    paths = write_training_report(smoke["run_dir"])
    assert {p.name for p in paths} == {"loss.png", "accuracy.png", "confusion_matrix.png", "pr_curve.png"}
    for p in paths:
        assert p.parent == smoke["run_dir"] and p.read_bytes().startswith(PNG_MAGIC)
