"""The options of export.py (conf/export.yaml) and baseline.py (conf/baseline.yaml), each observed in its effect: the
files an export writes and the weights in them; the baseline's metrics against scikit-learn fitted independently on
the training split with the same settings (and unequal to the fit with any one setting at its default, or on
another split). The table of every option is tests/training/test_options_effect.py's OPTIONS."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.records import resave_checkpoint
from helpers.smoke import compose_cfg, train_smoke
from safetensors.torch import load_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

from spam_lightning.data.preprocess import TokenizerError
from spam_lightning.inference.checkpoint import load_trained
from spam_lightning.inference.export import run as export_run
from spam_lightning.training.baseline import run as baseline_run

# ---------------------------------------------------------------------------------------------------------------
# export.py
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> Path:
    """A 3-step smoke run's best checkpoint."""
    tmp = tmp_path_factory.mktemp("export")
    short = (
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "report=false",
    )
    return Path(train_smoke(tmp, sms_zip, tokenizer_file, *short)["best_checkpoint"])


def export(ckpt: Path, *overrides: str) -> list[Path]:
    return export_run(compose_cfg("export", f"ckpt_path={ckpt}", *overrides))


def test_export_ckpt_path_out_dir_and_format(ckpt: Path, tokenizer_file: str, tmp_path: Path) -> None:
    """The weights exported are the checkpoint's, into out_dir, in the layout format names."""
    other = tmp_path / "other.ckpt"  # the same checkpoint with another head: the export must hold ckpt_path's
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["state_dict"]["net.gpt.out_head.bias"] += 1.0
    resave_checkpoint(state, other)
    out = tmp_path / "ours"
    paths = export(other, f"out_dir={out}", "format=spam_lightning", f"tokenizer_file={tokenizer_file}")
    assert {p.parent for p in paths} == {out}
    assert (out / "spam_lightning.json").is_file() and not (out / "config.json").exists()
    exported = load_file(out / "spam_lightning.safetensors")
    expected = load_trained(other).net.state_dict()
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[k], expected[k]) for k in expected)
    assert not torch.equal(exported["gpt.out_head.bias"], load_trained(ckpt).net.state_dict()["gpt.out_head.bias"])
    export(ckpt, f"out_dir={tmp_path / 'auto'}", f"tokenizer_file={tokenizer_file}")
    assert (tmp_path / "auto" / "config.json").is_file()  # format=auto: transformers' layout for pool=last_token
    assert not (tmp_path / "auto" / "spam_lightning.json").exists()


def test_export_overwrite_replaces_only_our_files(ckpt: Path, tokenizer_file: str, tmp_path: Path) -> None:
    out = tmp_path / "export"
    common = (f"out_dir={out}", f"tokenizer_file={tokenizer_file}")
    export(ckpt, *common, "format=spam_lightning")
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        export(ckpt, *common)
    assert (out / "spam_lightning.json").is_file() and not (out / "config.json").exists()
    export(ckpt, *common, "overwrite=true")  # format=auto: transformers' layout replaces ours
    assert (out / "config.json").is_file() and not (out / "spam_lightning.json").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"


def test_export_tokenizer_file_is_the_vocabulary_read(ckpt: Path, tokenizer_file: str, tmp_path: Path) -> None:
    """A tokenizer_file that is not GPT-2's vocabulary is refused (the cached one would be fine)."""
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(Path(tokenizer_file).read_bytes()[:-10])
    with pytest.raises(TokenizerError, match=r"bad\.tiktoken"):
        export(ckpt, f"out_dir={tmp_path / 'x'}", f"tokenizer_file={bad}")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------------------
# baseline.py
# ---------------------------------------------------------------------------------------------------------------

DEFAULTS = {"max_features": 50000, "C": 10.0, "max_iter": 1000}
CHOSEN = {"max_features": 300, "C": 0.5, "max_iter": 3}
SPLITS = ("train", "validation", "test")


def sklearn_baseline(frames: dict[str, pd.DataFrame], fit_on: str = "train", **settings: Any) -> dict[str, dict]:
    """TF-IDF of word unigrams and bigrams (sublinear tf) and logistic regression, fitted on one split; metrics of
    each split by scikit-learn (spam iff P(spam) > 0.5)."""
    vectorizer = TfidfVectorizer(max_features=settings["max_features"], ngram_range=(1, 2), sublinear_tf=True)
    classifier = LogisticRegression(C=settings["C"], max_iter=settings["max_iter"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(vectorizer.fit_transform(frames[fit_on]["text"]), frames[fit_on]["label"])
    results = {}
    for split, frame in frames.items():
        spam = classifier.predict_proba(vectorizer.transform(frame["text"]))[:, 1]
        labels, predicted = frame["label"].to_numpy(), (spam > 0.5).astype(int)
        precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average="binary", zero_division=0)
        results[split] = {
            "accuracy": accuracy_score(labels, predicted),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "auroc": roc_auc_score(labels, spam),
        }
    return results


def same(ours: dict[str, dict], theirs: dict[str, dict]) -> bool:
    return all(np.isclose(ours[s][m], theirs[s][m], atol=2e-6, rtol=0) for s in SPLITS for m in theirs[s])


def test_baseline_options_against_sklearn(tmp_path: Path, sms_zip: Path, tokenizer_file: str) -> None:
    """seed (the split's), max_features, C, max_iter, out_dir and root_dir: baseline.json holds the metrics of
    scikit-learn fitted on seed 7's training split with those settings, and not those with any one of them at its
    default, nor those of a fit on another split."""
    root = tmp_path / "root"
    cfg = compose_cfg(
        "baseline", f"root_dir={root}", f"data.source={sms_zip}", f"data.tokenizer_file={tokenizer_file}", "seed=7",
        f"out_dir={tmp_path / 'out'}", *(f"{k}={v}" for k, v in CHOSEN.items()),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=3
        results = baseline_run(cfg)
    assert json.loads((tmp_path / "out" / "baseline.json").read_text()) == results  # out_dir
    splits = root / "data" / "sms_spam" / "seed-7"  # root_dir holds the data; seed is data.seed
    frames = {s: pd.read_csv(splits / f"{s}.csv", dtype={"label": int, "text": str}, keep_default_na=False)
              for s in SPLITS}  # fmt: skip
    assert same(results, sklearn_baseline(frames, **CHOSEN))
    for key, default in DEFAULTS.items():
        assert not same(results, sklearn_baseline(frames, **{**CHOSEN, key: default})), key
    for other in ("validation", "test"):
        assert not same(results, sklearn_baseline(frames, fit_on=other, **CHOSEN)), other
