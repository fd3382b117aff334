"""data=csv: any CSV/TSV text-classification data, any number of classes (spam_lightning.data.modules)."""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import pandas as pd
import pytest
from helpers.scripts import run_script
from helpers.smoke import compose_cfg, train_smoke

from spam_lightning.data.modules import CsvDataModule
from spam_lightning.data.sms_spam import parse_sms_collection
from spam_lightning.errors import ConfigError, DataError
from spam_lightning.inference.evaluate import run as evaluate_run
from spam_lightning.inference.export import export_checkpoint
from spam_lightning.inference.predictor import Predictor
from spam_lightning.inference.serve import Job, SpamAPI


def _write(path: Path, rows: list[tuple[str, str]], sep: str = ",") -> Path:
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, sep=sep, index=False)
    return path


def _module(tokenizer_file: str, **kw: object) -> CsvDataModule:
    return CsvDataModule(tokenizer_file=tokenizer_file, padding="batch", pool="last_token", **kw)


def _three_class_rows(sms_tsv: Path, per_class: int = 120, seed: int = 0) -> list[tuple[str, str]]:
    """SMS ham and spam texts plus a generated third class (weather reports): a 3-class data set."""
    df = parse_sms_collection(sms_tsv)
    rng = random.Random(seed)
    ham = df[df.label == 0].text.sample(per_class, random_state=seed).tolist()
    spam = df[df.label == 1].text.sample(per_class, random_state=seed).tolist()
    cities = ["Oslo", "Lima", "Cairo", "Perth", "Quito", "Hanoi", "Dakar", "Riga", "Tunis", "Lyon"]
    skies = ["sunny", "cloudy", "rainy", "foggy", "windy", "snowy"]
    weather = [
        f"Weather for {rng.choice(cities)} on day {i}: {rng.choice(skies)}, {rng.randint(-10, 38)} degrees, "
        f"wind {rng.randint(0, 60)} km/h."
        for i in range(per_class)
    ]
    rows = [(t, "ham") for t in ham] + [(t, "spam") for t in spam] + [(t, "weather") for t in weather]
    rng.shuffle(rows)
    return rows


# -- reading, labels, splitting ----------------------------------------------------------------------


def test_one_file_is_split_stratified_with_labels_in_a_stable_order(tmp_path: Path, tokenizer_file: str) -> None:
    rows = [(f"text {i}", ["b", "a", "c"][i % 3]) for i in range(300)]
    file = _write(tmp_path / "d.tsv", rows, sep="\t")
    dm = _module(tokenizer_file, path=str(file), seed=7)
    dm.prepare_data()
    assert dm.labels == ("a", "b", "c") and dm.num_classes == 3
    splits = {name: dm.read_split(name) for name in ("train", "validation", "test")}
    assert [len(s) for s in splits.values()] == [210, 30, 60]
    for split in splits.values():
        assert sorted(split.label.value_counts().tolist()) == [len(split) // 3] * 3  # every class, in proportion
    assert set().union(*(set(s.text) for s in splits.values())) == {t for t, _ in rows}
    again = _module(tokenizer_file, path=str(file), seed=7)
    assert again.read_split("test").equals(splits["test"])  # same seed, same split
    assert not _module(tokenizer_file, path=str(file), seed=8).read_split("test").equals(splits["test"])
    record = dm.record()
    assert record["classes"] == ["a", "b", "c"] and set(record["splits_sha256"]) == {"all"}
    assert CsvDataModule.from_record(record, tokenizer_file=tokenizer_file).read_split("test").equals(splits["test"])


def test_integer_labels_sort_numerically_and_named_classes_accept_ids(tmp_path: Path, tokenizer_file: str) -> None:
    rows = [(f"t{i}", str([2, 10, 1][i % 3])) for i in range(90)]
    dm = _module(tokenizer_file, path=str(_write(tmp_path / "d.csv", rows)))
    assert dm.labels == ("1", "2", "10")
    named_rows = [(f"t{i}", ["0", "y", "2"][i % 3]) for i in range(90)]
    named = _module(tokenizer_file, path=str(_write(tmp_path / "f.csv", named_rows)), classes=["x", "y", "z"])
    assert named.labels == ("x", "y", "z")
    assert sorted(named.read_split("train").label.unique().tolist()) == [0, 1, 2]


def test_undersample_balances_every_class(tmp_path: Path, tokenizer_file: str) -> None:
    rows = [(f"t{i}", "big") for i in range(200)] + [(f"s{i}", "small") for i in range(50)]
    dm = _module(tokenizer_file, path=str(_write(tmp_path / "d.csv", rows)), balance="undersample")
    counts = pd.concat(dm.read_split(s) for s in ("train", "validation", "test")).label.value_counts()
    assert counts.tolist() == [50, 50]


def test_a_folder_of_three_files_is_used_as_it_is(tmp_path: Path, tokenizer_file: str) -> None:
    for name, n in (("train", 30), ("validation", 6), ("test", 9)):
        _write(tmp_path / f"{name}.csv", [(f"{name} {i}", "pos" if i % 2 else "neg") for i in range(n)])
    dm = _module(tokenizer_file, path=str(tmp_path))
    assert dm.read_split("validation").text.tolist() == [f"validation {i}" for i in range(6)]  # file order
    assert set(dm.record()["splits_sha256"]) == {"train", "validation", "test"}


def test_truncated_texts_are_counted_and_recorded(tmp_path: Path, tokenizer_file: str) -> None:
    rows = [("one two three four five six", "long"), ("short", "brief")] * 20
    dm = _module(tokenizer_file, path=str(_write(tmp_path / "d.csv", rows)), max_length=4)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.truncated == {"train": 14, "validation": 2}  # every "long" text of the splits read so far
    assert dm.record()["truncated"] == {"train": 14, "validation": 2}
    assert max(len(ids) for ids in dm.datasets["train"].ids) == 4


# -- bad data: one message naming file and row --------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"text,label\nhello,a\n,b\n", r"d\.csv, row 3: missing text"),
        (b"text,label\nhello,a\nworld,\n", r"d\.csv, row 3: missing label"),
        (b"text,label\nhello,a\nw\xe9rld,b\n", r"d\.csv, line 3: invalid UTF-8 \(byte 0xe9 at column 2\)"),
        (b"message,label\nhello,a\n", r"d\.csv: no column 'text' \(columns: \['message', 'label'\]\)"),
        (b"", r"d\.csv: empty file"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path: Path, tokenizer_file: str, content: bytes, message: str) -> None:
    (tmp_path / "d.csv").write_bytes(content)
    with pytest.raises(DataError, match=message):
        _module(tokenizer_file, path=str(tmp_path / "d.csv")).prepare_data()


def test_unknown_label_in_test_and_too_few_examples_are_refused(tmp_path: Path, tokenizer_file: str) -> None:
    _write(tmp_path / "train.csv", [(f"a{i}", "x" if i % 2 else "y") for i in range(20)])
    _write(tmp_path / "validation.csv", [("v", "x"), ("w", "y")])
    _write(tmp_path / "test.csv", [("t", "x"), ("u", "z")])
    with pytest.raises(DataError, match=r"test\.csv, row 3: unknown label 'z' \(the training split never has it"):
        _module(tokenizer_file, path=str(tmp_path)).prepare_data()
    rows = [(f"t{i}", "many") for i in range(100)] + [("r1", "rare"), ("r2", "rare"), ("r3", "rare")]
    with pytest.raises(DataError, match=r"class 'rare' has 3 rows, too few for a 0\.7/0\.1/rest split"):
        _module(tokenizer_file, path=str(_write(tmp_path / "one.csv", rows))).prepare_data()
    with pytest.raises(ConfigError, match=r"data=csv needs data\.path"):
        _module(tokenizer_file, train_file=str(tmp_path / "train.csv"))


# -- labels: one rule, whatever the layout ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [("ham", "Ham"), ("spam", "SPAM"), ("ham", "ｈａｍ"), ("café", "cafe\u0301"), ("1", "01"), ("2", "²")],
    ids=["case", "upper case", "full-width", "Unicode form", "leading zero", "superscript digit"],
)
def test_two_spellings_of_one_label_are_refused_naming_both(
    tmp_path: Path, tokenizer_file: str, first: str, second: str
) -> None:
    rows = [(f"t{i}", [first, "other", second][i % 3]) for i in range(90)]
    file = _write(tmp_path / "d.csv", rows)
    message = rf"d\.csv: the labels {re.escape(repr(first))} \(row 2\) and {re.escape(repr(second))} \(row 4\) differ"
    with pytest.raises(DataError, match=message):
        _module(tokenizer_file, path=str(file)).prepare_data()
    # In three files, the other file's spelling is an unknown label, and the message says which class it resembles.
    _write(tmp_path / "train.csv", [(f"a{i}", [first, "other"][i % 2]) for i in range(20)])
    _write(tmp_path / "validation.csv", [("v", first), ("w", "other")])
    _write(tmp_path / "test.csv", [("t", "other"), ("u", second)])
    unknown = rf"test\.csv, row 3: unknown label {re.escape(repr(second))} .*the class {re.escape(repr(first))} and it"
    with pytest.raises(DataError, match=unknown):
        _module(tokenizer_file, path=str(tmp_path)).prepare_data()
    with pytest.raises(DataError, match=r"data\.classes must list at least 2 distinct names"):
        _module(tokenizer_file, path=str(tmp_path), classes=[first, second]).prepare_data()


def test_labels_no_int_can_read_are_names(tmp_path: Path, tokenizer_file: str) -> None:
    """'²' passes str.isdigit but not int(): a class name like any other, never a traceback."""
    rows = [(f"t{i}", ["1", "²", "3"][i % 3]) for i in range(90)]
    dm = _module(tokenizer_file, path=str(_write(tmp_path / "d.csv", rows)))
    assert dm.labels == ("1", "3", "²")  # not all integers: sorted as text
    named = [(f"t{i}", ["a", "b", "²"][i % 3]) for i in range(90)]
    with pytest.raises(DataError, match=r"d2\.csv, row 4: unknown label '²' \(not in data.classes"):
        _module(tokenizer_file, path=str(_write(tmp_path / "d2.csv", named)), classes=["a", "b", "c"]).prepare_data()


def _one_and_three_files(tmp_path: Path, rows: dict[str, list[tuple[str, str]]]) -> tuple[Path, Path]:
    """The same rows as one file and as a folder of three (train, validation, test)."""
    (tmp_path / "three").mkdir(parents=True)
    for split, split_rows in rows.items():
        _write(tmp_path / "three" / f"{split}.csv", split_rows)
    return _write(tmp_path / "one.csv", [row for split_rows in rows.values() for row in split_rows]), tmp_path / "three"


def test_a_number_among_named_labels_is_a_class_id_only_with_data_classes(tmp_path: Path, tokenizer_file: str) -> None:
    """One rule for one file and three: without data.classes every label is a name ("1" among ham and spam is its own
    class, and one the training file lacks is refused); with data.classes=[ham, spam] "1" is class id 1 (spam)."""
    split = {"train": 60, "validation": 15, "test": 15}
    with_ones = {s: [(f"{s}{i}", ["ham", "spam", "1"][i % 3]) for i in range(n)] for s, n in split.items()}
    one, three = _one_and_three_files(tmp_path / "a", with_ones)
    for layout in (one, three):
        assert _module(tokenizer_file, path=str(layout)).labels == ("1", "ham", "spam"), layout
        named = _module(tokenizer_file, path=str(layout), classes=["ham", "spam"])
        assert named.labels == ("ham", "spam")
        every = pd.concat(named.read_split(s) for s in split)
        written = dict(row for rows in with_ones.values() for row in rows)
        assert every.label.tolist() == [{"ham": 0, "spam": 1, "1": 1}[written[t]] for t in every.text]
    ones_in_test_only = {s: [(f"{s}{i}", ["ham", "spam"][i % 2]) for i in range(n)] for s, n in split.items()}
    ones_in_test_only["test"].append(("one", "1"))
    _, three = _one_and_three_files(tmp_path / "b", ones_in_test_only)
    with pytest.raises(DataError, match=r"test\.csv, row 17: unknown label '1' \(the training split never has it"):
        _module(tokenizer_file, path=str(three)).prepare_data()
    named = _module(tokenizer_file, path=str(three), classes=["ham", "spam"])
    assert named.read_split("test").label.tolist()[-1] == 1


@pytest.mark.parametrize("column", ["text", "label"])
def test_a_repeated_header_column_is_refused(tmp_path: Path, tokenizer_file: str, column: str) -> None:
    header = ["text", "label", column]
    lines = [",".join(header)] + [f"t{i},{['a', 'b'][i % 2]},{['b', 'a'][i % 2]}" for i in range(30)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"d\.csv, row 1: the header has 2 columns named {column!r}"):
        _module(tokenizer_file, path=str(tmp_path / "d.csv")).prepare_data()


def test_texts_in_two_splits_are_counted_in_a_warning(
    tmp_path: Path, tokenizer_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path / "train.csv", [(f"a{i}", "x" if i % 2 else "y") for i in range(20)])
    _write(tmp_path / "validation.csv", [("a1", "x"), ("a2", "y"), ("new", "x")])
    _write(tmp_path / "test.csv", [("a3", "x"), ("new", "y")])
    dm = _module(tokenizer_file, path=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    assert dm.duplicates == {"train/validation": 2, "train/test": 1, "validation/test": 1}
    assert "train/validation: 2" in caplog.text


# -- training ---------------------------------------------------------------------------------------


def test_sms_splits_through_data_csv_give_identical_metrics(tmp_path: Path, sms_zip: Path, tokenizer_file: str) -> None:
    sms = train_smoke(tmp_path / "sms", sms_zip, tokenizer_file, "report=false")
    splits = tmp_path / "sms" / "data" / "seed-123"
    csv = train_smoke(
        tmp_path / "csv",
        sms_zip,
        tokenizer_file,
        "report=false",
        "data=csv",
        f"data.train_file={splits / 'train.csv'}",
        f"data.validation_file={splits / 'validation.csv'}",
        f"data.test_file={splits / 'test.csv'}",
        "data.classes=[ham,spam]",
    )
    for split in ("train", "validation", "test"):
        assert csv[split] == sms[split], split  # every metric and the confusion matrix, exactly
    saved = json.loads((tmp_path / "csv" / "run" / "metrics.json").read_text())
    assert saved["test"] == sms["test"]
    assert compose_cfg("train", "data=csv").model.num_classes is None


def test_three_classes_train_predict_evaluate_and_export(tmp_path: Path, sms_tsv: Path, tokenizer_file: str) -> None:
    file = _write(tmp_path / "three.csv", _three_class_rows(sms_tsv))
    metrics = train_smoke(tmp_path, sms_tsv, tokenizer_file, "data=csv", f"data.path={file}", "trainer.max_epochs=2")
    labels = ("ham", "spam", "weather")
    test = metrics["test"]
    assert len(test["confusion_matrix"]) == 3 and sum(map(sum, test["confusion_matrix"])) == 72
    for name in ("precision", "recall", "f1"):
        per_class = [test[f"{name}_{label}"] for label in labels]
        assert test[name] == pytest.approx(sum(per_class) / 3, abs=1e-5)  # macro: the mean of the per-class values
    assert 0 <= test["auroc"] <= 1
    assert test["recall_weather"] > 0.9  # the generated class is easy
    ckpt = metrics["best_checkpoint"]

    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    assert predictor.preprocessing.labels == labels
    texts = ["Weather for Oslo on day 3: sunny, 20 degrees, wind 5 km/h.", "see you at 8 then", ""]
    predictions = predictor.predict(texts)
    assert predictions[0].label == "weather" and predictions[2].error == "empty text"
    out = predictions[0].to_json()
    assert set(out["probabilities"]) == set(labels) and sum(out["probabilities"].values()) == pytest.approx(1)
    assert out["label"] == max(out["probabilities"], key=out["probabilities"].get)

    api = SpamAPI({"batch_size": 8, "threshold": None}, None, max_batch_size=4, batch_timeout=0.0)  # type: ignore[arg-type]
    api.predictor = predictor
    served = api.predict([Job(texts, None, False), Job(texts[:1], None, True)])
    # One forward pass for both requests: a batch of another shape may round a probability differently (test_serve.py)
    for got, want in zip(
        [*served[0]["predictions"], served[1]], [*(p.to_json() for p in predictions), out], strict=True
    ):
        assert {**got, "probabilities": None} == {**want, "probabilities": None}
        expected = want["probabilities"]
        assert got["probabilities"] == (None if expected is None else pytest.approx(expected, abs=1e-6))

    result = evaluate_run(compose_cfg("evaluate", f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'eval'}", "device=cpu"))
    assert result["metrics"]["confusion_matrix"] == test["confusion_matrix"]
    assert result["metrics"]["accuracy"] == pytest.approx(test["accuracy"], abs=2e-6)
    assert result["metrics"]["f1_weather"] == pytest.approx(test["f1_weather"], abs=2e-6)

    labelled = _write(tmp_path / "mine.csv", [(texts[0], "weather"), (texts[1], "ham"), ("WIN a prize! txt 8", "spam")])
    mine = evaluate_run(
        compose_cfg(
            "evaluate", f"ckpt_path={ckpt}", f"data_file={labelled}", f"out_dir={tmp_path / 'e2'}", "device=cpu"
        )
    )
    assert mine["n"] == 3 and sum(map(sum, mine["metrics"]["confusion_matrix"])) == 3
    assert (tmp_path / "e2" / "confusion_matrix.png").is_file() and mine["labels"] == list(labels)

    ours = export_checkpoint(ckpt, tmp_path / "ours", tokenizer_file, format="spam_lightning")
    hf = export_checkpoint(ckpt, tmp_path / "hf", tokenizer_file, format="hf")
    assert ours and hf
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam", "2": "weather"}
    for folder in ("ours", "hf"):
        exported = Predictor.from_dir(str(tmp_path / folder), tokenizer_file, "cpu")
        again = exported.predict(texts)
        assert [p.label for p in again] == [p.label for p in predictions]
        assert again[0].probabilities == pytest.approx(predictions[0].probabilities, abs=1e-5)


def test_readme_commands_train_and_baseline_on_a_csv_file(
    tmp_path: Path, sms_tsv: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    """README's `python train.py data=csv data.path=my_texts.csv`, `python baseline.py data=csv ...` and
    `python baseline.py`, as typed (plus the offline vocabulary, a short smoke model and a temporary folder)."""
    data = _write(tmp_path / "my_texts.csv", _three_class_rows(sms_tsv, per_class=60))
    offline = f"data.tokenizer_file={tokenizer_file}"
    done = run_script("baseline.py", "data=csv", f"data.path={data}", offline, f"out_dir={tmp_path / 'bl'}")
    assert done.returncode == 0, done.stderr
    assert "TF-IDF + logistic regression" in done.stdout and "validation" in done.stdout
    saved = json.loads((tmp_path / "bl" / "baseline.json").read_text())
    assert saved["labels"] == ["ham", "spam", "weather"] and saved["test"]["recall_weather"] == 1.0
    assert 0.5 < saved["test"]["accuracy"] <= 1 and set(saved["test"]) >= {"f1_ham", "auroc", "precision_spam"}
    sms = run_script("baseline.py", f"data.source={sms_zip}", f"data.data_dir={tmp_path / 'sms'}", offline)
    assert sms.returncode == 0, sms.stderr
    test_row = next(line for line in sms.stdout.splitlines() if line.startswith("test "))
    assert float(test_row.split()[1]) > 0.9  # accuracy on the SMS test split

    train = run_script(
        "train.py", "data=csv", f"data.path={data}", offline, "experiment=smoke", "trainer.max_epochs=1",
        "report=false", f"runs_dir={tmp_path / 'runs'}", "run_name=r", "trainer.enable_progress_bar=false",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-2000:]
    metrics = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())
    assert metrics["labels"] == ["ham", "spam", "weather"] and len(metrics["test"]["confusion_matrix"]) == 3
    bad = run_script("baseline.py", "data=csv", f"data.path={tmp_path / 'missing.csv'}", offline)
    assert bad.returncode == 1 and bad.stderr.strip().endswith("missing.csv' does not exist")


def test_baseline_help_lists_its_own_options() -> None:
    done = run_script("baseline.py", "--help", timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("python baseline.py [key=value ...]")
    assert "\nmax_features: 50000 " in done.stdout and "root_dir: ${project_dir:}" in done.stdout
    assert "Configuration groups" not in done.stdout
