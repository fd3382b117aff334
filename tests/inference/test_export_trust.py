"""An exported model folder is untrusted input: an edited record is refused (record_sha256), the files it names must
lie inside the folder, and every value is checked, each refusal one line naming the record's file and the key. Every
test runs on both layouts: transformers' (the record in config.json under "spam_lightning") and our own
(spam_lightning.json)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.records import resave_checkpoint, with_each_field_edited
from helpers.scripts import run_script
from helpers.smoke import copy_smoke

from spam_lightning.data.preprocess import PreprocessingError
from spam_lightning.errors import CheckpointError, UserError
from spam_lightning.inference.checkpoint import RECORD_KEY, load_trained
from spam_lightning.inference.export import export_checkpoint
from spam_lightning.inference.exported import read_export, record_sha256
from spam_lightning.inference.predictor import Predictor

TEXTS = ["Free entry! Text WIN to 80086 now to claim", "See you at 6", "URGENT call now"]
Edit = Callable[[dict[str, Any]], Any]
RECORD_FILE = {"hf": "config.json", "spam_lightning": "spam_lightning.json"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, smoke_source: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("trust")
    ckpt = Path(copy_smoke(smoke_source, tmp)["best_checkpoint"])
    for layout in RECORD_FILE:
        export_checkpoint(ckpt, tmp / layout, format=layout)
    return {"ckpt": ckpt, **{layout: tmp / layout for layout in RECORD_FILE}}


@pytest.fixture(scope="module", params=list(RECORD_FILE))
def trained(request: pytest.FixtureRequest, exported: dict[str, Any]) -> dict[str, Any]:
    """One layout's folder: the checkpoint, the folder ("model") and its record file's name ("record")."""
    return {"ckpt": exported["ckpt"], "model": exported[request.param], "record": RECORD_FILE[request.param]}


@pytest.fixture(scope="module")
def baseline(trained: dict[str, Any]) -> list[float | None]:
    return Predictor.from_dir(trained["model"], device="cpu").positive_probabilities(TEXTS)[0]


def record_file(model: Path) -> Path:
    return model / "spam_lightning.json" if (model / "spam_lightning.json").exists() else model / "config.json"


def record_of(content: dict[str, Any]) -> dict[str, Any]:
    """The record in a record file's content: config.json's "spam_lightning" key, or spam_lightning.json itself."""
    return content.get(RECORD_KEY, content)


def tampered(model: Path, dest: Path, edit: Edit | None = None, resign: bool = False) -> Path:
    """A copy of the exported folder (other files hard-linked) with `edit` applied to its record;
    `resign`: record_sha256 recomputed, as a forger (or a buggy writer) would, so the value checks are reached."""
    shutil.copytree(model, dest, copy_function=os.link)
    config_file = record_file(dest)
    config = json.loads(config_file.read_text())
    if edit is not None:
        edit(record_of(config))
    if resign:
        record_of(config)["record_sha256"] = record_sha256(record_of(config))
    config_file.unlink()  # a hard link: do not write through it into the original
    config_file.write_text(json.dumps(config, indent=2))
    return dest


def put(path: str, value: Any) -> Edit:
    """An edit setting config[a][b]... for path "a.b..."."""
    *parents, key = path.split(".")

    def edit(config: dict[str, Any]) -> None:
        for parent in parents:
            config = config[parent]
        config[key] = value

    return edit


def both(*edits: Edit) -> Edit:
    return lambda config: [edit(config) for edit in edits]


def refusal(model_dir: Path, error: type[Exception] | tuple[type[Exception], ...] = UserError) -> str:
    with pytest.raises(error) as caught:
        read_export(model_dir)
    message = str(caught.value)
    assert "\n" not in message and record_file(model_dir).name in message, message
    return message


def test_an_untampered_folder_loads_and_predicts_identically(
    trained: dict[str, Any], baseline: list[float | None], tmp_path: Path
) -> None:
    config = json.loads((trained["model"] / trained["record"]).read_text())
    assert record_of(config)["record_sha256"] == record_sha256(record_of(config))
    from_ckpt = Predictor.from_checkpoint(trained["ckpt"], device="cpu").positive_probabilities(TEXTS)[0]
    # transformers' layout folds the head's bias into the final LayerNorm: equal up to float rounding
    assert baseline == pytest.approx(from_ckpt, abs=1e-6, rel=0)
    # The hash is of canonical JSON: another layout of the same record file is not an edit; neither is provenance.
    # A tokenizer_file that stays inside the folder passes the value checks (record_sha256 made again to reach them).
    same = tampered(trained["model"], tmp_path / "same")
    (same / trained["record"]).write_text(json.dumps(config, indent=None, sort_keys=True))
    edited = tampered(trained["model"], tmp_path / "provenance", put("training.note", "moved"))
    inside = tampered(
        trained["model"], tmp_path / "inside", put("tokenizer_file", "./sub/../gpt2.tiktoken"), resign=True
    )
    for folder in (same, edited, inside):
        predictor = Predictor.from_dir(folder, device="cpu")
        assert predictor.positive_probabilities(TEXTS)[0] == baseline, folder
        assert predictor.preprocessing.labels == ("ham", "spam")


@pytest.mark.parametrize(
    "edit",
    [
        put("preprocessing.pad_length", 5),
        both(put("preprocessing.pad_length", 5), put("preprocessing.padding", 5)),
        put("preprocessing.max_length", 5),
        both(put("net.pool", "first"), put("preprocessing.pool", "first")),
        put("preprocessing.pool", "mean"),
        put("net.num_classes", 3),
        put("preprocessing.labels", ["spam", "ham"]),
        put("net.arch.n_layers", 1),
        put("net.arch.context_length", 64),
    ],
    ids=["pad_length", "padding", "max_length", "pool", "preprocessing.pool", "num_classes", "labels", "arch", "ctx"],
)
def test_an_edited_record_is_refused(trained: dict[str, Any], tmp_path: Path, edit: Edit) -> None:
    message = refusal(tampered(trained["model"], tmp_path / "m", edit), CheckpointError)
    assert f"record_sha256: {trained['record']} was edited after export" in message


def test_every_field_is_bound_but_the_provenance(
    trained: dict[str, Any], baseline: list[float | None], tmp_path: Path
) -> None:
    """Each field of the record file edited alone (every value in it, so a field added later is covered too) is
    refused: record_sha256 covers the whole record (the network, each preprocessing value, the weights' and the
    transformers files' sha256, the tokenizer file, the format), and config.json's transformers fields must say what
    the record says. Except `training`: provenance (the checkpoint's name, hyper-parameters, data), which changes no
    prediction; an edited one loads and predicts identically."""
    training = ("training.", f"{RECORD_KEY}.training.")
    accepted, refused = [], []
    for field, folder in with_each_field_edited(trained["model"], trained["record"], tmp_path):
        try:
            predictor = Predictor.from_dir(folder, device="cpu")
        except UserError as err:
            assert "\n" not in str(err) and trained["record"] in str(err), (field, str(err))
            refused.append(field)
            continue
        assert predictor.positive_probabilities(TEXTS)[0] == baseline, field
        accepted.append(field)
    assert [field for field in accepted if not field.startswith(training)] == []
    assert accepted and not [field for field in refused if field.startswith(training)]
    prefix = f"{RECORD_KEY}." if trained["record"] == "config.json" else ""
    for field in ("net.arch.n_heads", "net.pool", "preprocessing.max_length", "weights_sha256", "tokenizer_file"):
        assert prefix + field in refused
    assert not prefix or {"n_head", "id2label.0", f"{RECORD_KEY}.transformers_files_sha256.vocab.json"} <= {*refused}


@pytest.mark.parametrize("key", ["record_sha256", "weights_sha256"])
def test_a_missing_hash_is_refused(trained: dict[str, Any], tmp_path: Path, key: str) -> None:
    message = refusal(tampered(trained["model"], tmp_path / "m", lambda config: config.pop(key)), CheckpointError)
    assert f"{key} is missing" in message


@pytest.mark.parametrize("case", ["traversal", "absolute", "symlink"])
def test_tokenizer_file_must_lie_inside_the_folder(trained: dict[str, Any], tmp_path: Path, case: str) -> None:
    outside = tmp_path / "gpt2.tiktoken"  # GPT-2's real vocabulary, yet outside the folder: refused all the same
    shutil.copy(trained["model"] / "gpt2.tiktoken", outside)
    name = {"traversal": "../../../../../../../../etc/passwd", "absolute": str(outside), "symlink": "gpt2.tiktoken"}
    model = tampered(trained["model"], tmp_path / "m", put("tokenizer_file", name[case]), resign=True)
    if case == "symlink":
        (model / "gpt2.tiktoken").unlink()
        (model / "gpt2.tiktoken").symlink_to(outside)
    message = refusal(model, CheckpointError)
    assert f"tokenizer_file {name[case]!r} is outside the model folder" in message


BAD_VALUES: dict[str, tuple[Edit, str]] = {
    "pad_length -1": (put("preprocessing.pad_length", -1), "preprocessing.pad_length must be null or a positive int"),
    "pad_length 0": (put("preprocessing.pad_length", 0), "preprocessing.pad_length must be null or a positive int"),
    "pad_length true": (put("preprocessing.pad_length", True), "preprocessing.pad_length must be null or a positive"),
    "pad_length vs padding": (put("preprocessing.pad_length", 40), "preprocessing.pad_length must be consistent with"),
    "pad_length > context": (
        both(put("preprocessing.pad_length", 1000), put("preprocessing.padding", 1000)),
        "preprocessing.pad_length must be at most net.arch.context_length=128, got 1000",
    ),
    "max_length 0": (put("preprocessing.max_length", 0), "preprocessing.max_length must be a positive int, got 0"),
    "max_length str": (
        put("preprocessing.max_length", "5"),
        "preprocessing.max_length must be a positive int, got '5'",
    ),
    "max_length > context": (
        put("preprocessing.max_length", 1000),
        "preprocessing.max_length must be at most net.arch",
    ),
    "padding": (put("preprocessing.padding", "longest"), "preprocessing.padding must be 'longest_train', 'batch' or"),
    "pool unknown": (
        both(put("net.pool", "bogus"), put("preprocessing.pool", "bogus")),
        "net.pool must be one of ['last', 'last_token', 'first', 'mean'], got 'bogus'",
    ),
    "preprocessing.pool unknown": (put("preprocessing.pool", "bogus"), "preprocessing.pool must be one of"),
    "pool mismatch": (
        put("preprocessing.pool", "mean"),
        "preprocessing.pool 'mean' differs from net.pool 'last_token'",
    ),
    "num_classes 1": (put("net.num_classes", 1), "net.num_classes must be an int >= 2, got 1"),
    "num_classes true": (put("net.num_classes", True), "net.num_classes must be an int >= 2, got True"),
    "num_classes vs labels": (put("net.num_classes", 3), "preprocessing.labels has 2 labels, net.num_classes is 3"),
    "labels str": (
        put("preprocessing.labels", "hamspam"),
        "preprocessing.labels must be a list of at least 2 distinct",
    ),
    "labels empty": (put("preprocessing.labels", ["", "spam"]), "preprocessing.labels must be a list"),
    "labels repeated": (put("preprocessing.labels", ["ham", "ham"]), "preprocessing.labels must be a list"),
    "labels one": (put("preprocessing.labels", ["ham"]), "preprocessing.labels must be a list"),
    "preprocessing key": (put("preprocessing.stride", 2), "unknown keys ['stride']"),
    "net not a mapping": (put("net", "gpt2"), "net must be a mapping with the keys"),
    "arch key": (put("net.arch.n_experts", 4), "net.arch has unknown keys ['n_experts']"),
    "arch preset": (put("net.arch", "gpt3"), "net.arch must be a preset"),
    "arch n_heads 0": (put("net.arch.n_heads", 0), "net.arch.n_heads must be a positive int, got 0"),
    "arch emb_dim -64": (put("net.arch.emb_dim", -64), "net.arch.emb_dim must be a positive int, got -64"),
    "arch n_layers true": (put("net.arch.n_layers", True), "net.arch.n_layers must be a positive int, got True"),
    "arch context str": (put("net.arch.context_length", "128"), "net.arch.context_length must be a positive int"),
    "arch heads divide": (put("net.arch.n_heads", 3), "net.arch: emb_dim (64) must be divisible by n_heads (3)"),
    "arch dropout": (put("net.arch.dropout", 1.5), "net.arch.dropout must be a number in [0, 1), got 1.5"),
    "arch qkv_bias": (put("net.arch.qkv_bias", "yes"), "net.arch.qkv_bias must be true or false"),
    "arch vocab": (put("net.arch.vocab_size", 1000), "net.arch.vocab_size must be at least GPT-2's 50257 tokens"),
    "pad_token_id": (put("preprocessing.pad_token_id", 99999), "preprocessing.pad_token_id must be a GPT-2 token id"),
    "training": (put("training", ["x"]), "training must be a mapping"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_are_refused_naming_the_key(trained: dict[str, Any], tmp_path: Path, case: str) -> None:
    edit, expected = BAD_VALUES[case]
    message = refusal(
        tampered(trained["model"], tmp_path / "m", edit, resign=True), (CheckpointError, PreprocessingError)
    )
    assert expected in message


def test_a_checkpoint_record_gets_the_same_checks(trained: dict[str, Any], tmp_path: Path) -> None:
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    ckpt[RECORD_KEY]["preprocessing"]["max_length"] = "5"
    resave_checkpoint(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"preprocessing\.max_length must be a positive int, got '5'"):
        load_trained(tmp_path / "bad.ckpt")


# One tampering per layout through the CLI (each call starts Python, ~10 s); all kinds on both layouts in-process above.
CLI_CASES = {
    "config.json": (put("preprocessing.pad_length", 5), False, "was edited after export"),
    "spam_lightning.json": (
        put("tokenizer_file", "../../../../../../../../etc/passwd"),
        True,
        "tokenizer_file '../../../../../../../../etc/",
    ),
}


def test_predict_cli_refuses_a_tampered_folder_in_one_line(trained: dict[str, Any], tmp_path: Path) -> None:
    edit, resign, expected = CLI_CASES[trained["record"]]
    model = tampered(trained["model"], tmp_path / "m", edit, resign)
    done = run_script("predict.py", f"model_dir={model}", "text=hello", "device=cpu", timeout=120)
    assert done.returncode != 0 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    assert trained["record"] in lines[0] and expected in lines[0]
