"""A user's files are never destroyed (issue 27): export.py writes into a new or empty folder, or over an export of its
own whose files alone it replaces; predict.py's output and evaluate.py's out_dir never replace one of their inputs, nor
a file evaluate.py did not write; and each kind of input path that is not a file (nothing, a folder, a device, a FIFO,
a broken or looping symlink) gets its own one-line message. All refused before anything is loaded or written."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from helpers.scripts import run_script
from helpers.smoke import compose_cfg, copy_smoke, smoke_cfg

from spam_lightning.errors import CheckpointError, ConfigError, DataError, UserError
from spam_lightning.files import OutputPathError
from spam_lightning.inference.evaluate import read_labelled
from spam_lightning.inference.evaluate import run as evaluate_run
from spam_lightning.inference.export import export_checkpoint
from spam_lightning.inference.predict import read_texts
from spam_lightning.inference.predict import run as predict_run
from spam_lightning.inference.predictor import Predictor, load_predictor
from spam_lightning.training.run import run as train_run

HF_FILES = {"config.json", "model.safetensors", "gpt2.tiktoken", "README.md", "tokenizer.json", "vocab.json"}
HF_FILES |= {"merges.txt", "tokenizer_config.json", "special_tokens_map.json"}
OWN_FILES = {"spam_lightning.json", "spam_lightning.safetensors", "gpt2.tiktoken"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, smoke_source: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("user_files")
    return {"tmp": tmp, "ckpt": Path(copy_smoke(smoke_source, tmp)["best_checkpoint"])}


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Everything under `folder`, hidden entries too: each file's bytes, None for a folder."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def users_folder(folder: Path) -> Path:
    """Issue 27's repro: a folder of the user's with a README.md and a vocab.json (names of transformers' layout)."""
    folder.mkdir()
    (folder / "README.md").write_text("my notes\n")
    (folder / "vocab.json").write_text('{"mine": 1}\n')
    return folder


# -- export.py out_dir --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_refuses_a_folder_that_holds_no_export(smoke: dict[str, Any], tmp_path: Path, overwrite: bool) -> None:
    folder = users_folder(tmp_path / "mine")
    before = snapshot(tmp_path)
    with pytest.raises(OutputPathError) as refused:
        export_checkpoint(smoke["ckpt"], folder, overwrite=overwrite)
    expected = f"out_dir {str(folder)!r} is not empty and holds no exported model"
    assert str(refused.value).startswith(expected) and "it holds README.md, vocab.json." in str(refused.value)
    assert snapshot(tmp_path) == before  # nothing written, no temporary folder left
    if overwrite:  # the command itself: one line, exit status 1
        done = run_script("export.py", f"ckpt_path={smoke['ckpt']}", f"out_dir={folder}", "overwrite=true")
        assert done.returncode == 1 and done.stderr.strip().splitlines() == [f"error: {refused.value}"], done.stderr
        assert snapshot(tmp_path) == before


def test_overwrite_replaces_only_the_previous_exports_files(smoke: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "model"
    export_checkpoint(smoke["ckpt"], folder, format="hf")
    (folder / "notes.txt").write_text("mine\n")
    (folder / "sub").mkdir()
    export_checkpoint(smoke["ckpt"], folder, overwrite=True, format="spam_lightning")
    assert {p.name for p in folder.iterdir()} == {*OWN_FILES, "notes.txt", "sub"}
    assert (folder / "notes.txt").read_text() == "mine\n"
    # The user's README.md beside an export that did not write one: format=hf would replace it with its model card.
    (folder / "README.md").write_text("my notes\n")
    before = snapshot(tmp_path)
    with pytest.raises(OutputPathError, match=r"holds README\.md, which the export there did not write: refusing"):
        export_checkpoint(smoke["ckpt"], folder, overwrite=True, format="hf")
    assert snapshot(tmp_path) == before
    Predictor.from_dir(folder, device="cpu")  # the previous export, intact


def test_an_edited_record_cannot_make_overwrite_delete_other_files(smoke: dict[str, Any], tmp_path: Path) -> None:
    """overwrite deletes the files the previous record lists, only names of its layout: not the user's notes.txt,
    a file outside the folder, nor a vocab.json (transformers' layout) beside our own layout."""
    folder = tmp_path / "model"
    export_checkpoint(smoke["ckpt"], folder, format="spam_lightning")
    mine = {folder / "notes.txt", folder / "vocab.json", tmp_path / "outside.txt"}
    for path in mine:
        path.write_text("mine\n")
    record = json.loads((folder / "spam_lightning.json").read_text())
    record["onnx"] = {"files": {"../outside.txt": "0" * 64, "notes.txt": "0" * 64}}
    record["transformers_files_sha256"] = {"vocab.json": "0" * 64}
    (folder / "spam_lightning.json").write_text(json.dumps(record))
    export_checkpoint(smoke["ckpt"], folder, overwrite=True, format="spam_lightning")
    assert {p.name for p in folder.iterdir()} == {*OWN_FILES, "notes.txt", "vocab.json"}
    assert all(path.read_text() == "mine\n" for path in mine)
    Predictor.from_dir(folder, device="cpu")


def test_a_failed_or_interrupted_export_leaves_the_folder_as_it_was(
    smoke: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "model"
    export_checkpoint(smoke["ckpt"], folder, format="hf")
    before = snapshot(tmp_path)

    def ctrl_c(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("spam_lightning.inference.export.write_hf_tokenizer", ctrl_c)  # halfway through the files
    for out_dir in (folder, tmp_path / "new"):
        with pytest.raises(KeyboardInterrupt):
            export_checkpoint(smoke["ckpt"], out_dir, overwrite=True, format="hf")
        assert snapshot(tmp_path) == before  # the previous export whole; no new folder, no temporary one
    Predictor.from_dir(folder, device="cpu")


def test_earlier_formats_are_ours_a_file_is_not_a_folder(smoke: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "model"
    export_checkpoint(smoke["ckpt"], folder, format="spam_lightning")
    record = json.loads((folder / "spam_lightning.json").read_text())
    (folder / "spam_lightning.json").write_text(json.dumps({**record, "format": "spam_lightning.classifier/3"}))
    with pytest.raises(OutputPathError, match=r"already holds an exported model; pass overwrite=true to replace it"):
        export_checkpoint(smoke["ckpt"], folder)
    export_checkpoint(smoke["ckpt"], folder, overwrite=True)  # format=auto: transformers' layout
    assert {p.name for p in folder.iterdir()} == HF_FILES
    umask = os.umask(0)
    os.umask(umask)
    new = tmp_path / "a" / "new"
    export_checkpoint(smoke["ckpt"], new)
    assert stat.S_IMODE(new.stat().st_mode) == 0o777 & ~umask  # not the temporary folder's 0700
    assert {stat.S_IMODE(p.stat().st_mode) for p in new.iterdir()} == {0o666 & ~umask}
    (tmp_path / "file").write_text("mine\n")
    with pytest.raises(OutputPathError, match=r"out_dir '.*file' is a file, not a folder"):
        export_checkpoint(smoke["ckpt"], tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine\n"


# -- predict.py output, evaluate.py out_dir ---------------------------------------------------------------------------

OUTPUTS = ["input_file", "the same by another path", "a symlink to it", "a hard link to it", "ckpt_path"]
OUTPUTS += ["tokenizer_file", "inside model_dir"]


@pytest.mark.parametrize("case", OUTPUTS)
def test_predict_output_never_replaces_an_input(tmp_path: Path, tokenizer_file: str, case: str) -> None:
    """Refused before the model loads: the checkpoint is not one (or not there), and the model folder empty."""
    texts = tmp_path / "labelled.csv"
    texts.write_text("label,text\nspam,WIN a prize now\nham,see you at 6\n")
    model = [f"ckpt_path={tmp_path / 'missing.ckpt'}"]
    if case == "ckpt_path":
        model = [f"ckpt_path={tmp_path / 'model.ckpt'}"]
        (tmp_path / "model.ckpt").write_bytes(b"a checkpoint")
    elif case == "tokenizer_file":
        model.append(f"tokenizer_file={tmp_path / 'gpt2.tiktoken'}")
        shutil.copy(tokenizer_file, tmp_path / "gpt2.tiktoken")
    elif case == "inside model_dir":
        model = [f"model_dir={tmp_path / 'export'}"]
        (tmp_path / "export").mkdir()
    elif case == "a symlink to it":
        (tmp_path / "link.csv").symlink_to(texts)
    elif case == "a hard link to it":
        os.link(texts, tmp_path / "hard.csv")
    output = {
        "input_file": texts,
        "the same by another path": tmp_path / "no_such_folder" / ".." / "labelled.csv",
        "a symlink to it": tmp_path / "link.csv",
        "a hard link to it": tmp_path / "hard.csv",
        "ckpt_path": tmp_path / "model.ckpt",
        "tokenizer_file": tmp_path / "gpt2.tiktoken",
        "inside model_dir": tmp_path / "export" / "predictions.jsonl",
    }[case]
    before = snapshot(tmp_path)
    cfg = compose_cfg("predict", *model, f"input_file={texts}", f"output={output}", "device=cpu")
    with pytest.raises(OutputPathError) as refused:
        predict_run(cfg)
    key = case if case in ("ckpt_path", "tokenizer_file") else "model_dir" if "model_dir" in case else "input_file"
    assert f"output {str(output)!r} is " in str(refused.value) and f" {key} " in str(refused.value)
    assert "writing it would replace the input; choose another output" in str(refused.value)
    assert snapshot(tmp_path) == before


def test_predict_writes_an_output_beside_its_input(smoke: dict[str, Any], tmp_path: Path) -> None:
    texts = tmp_path / "labelled.csv"
    texts.write_text("label,text\nspam,WIN a prize now\nham,see you at 6\n")
    output = tmp_path / "predictions.jsonl"
    predict_run(compose_cfg("predict", f"ckpt_path={smoke['ckpt']}", f"input_file={texts}", f"output={output}"))
    assert [json.loads(line)["text"] for line in output.read_text().splitlines()] == ["WIN a prize now", "see you at 6"]
    assert texts.read_text().startswith("label,text\n")


def test_evaluate_replaces_only_an_earlier_evaluation(smoke: dict[str, Any], tmp_path: Path) -> None:
    data = tmp_path / "mine.tsv"
    data.write_text("text\tlabel\nWINNER! Claim your free prize now, call 0800\tspam\nsee you at home\tham\n")
    out = tmp_path / "out"

    def evaluate(*overrides: str, model: str = f"ckpt_path={smoke['ckpt']}") -> dict[str, Any]:
        cfg = compose_cfg("evaluate", model, f"data_file={data}", "device=cpu", "target_precision=null", *overrides)
        return evaluate_run(cfg)

    evaluate(f"out_dir={out}")
    evaluate(f"out_dir={out}", "threshold=0.7")  # an earlier evaluation's files: replaced
    assert json.loads((out / "evaluation.json").read_text())["threshold"] == 0.7
    mine = tmp_path / "mine"  # a folder of the user's with files of the names evaluate writes
    mine.mkdir()
    (mine / "evaluation.json").write_text('{"my": "notes"}\n')
    (mine / "pr_curve.png").write_bytes(b"my plot")
    (tmp_path / "export").mkdir()
    before = snapshot(tmp_path)
    missing, export = f"ckpt_path={tmp_path / 'missing.ckpt'}", f"model_dir={tmp_path / 'export'}"  # never loaded
    cases = [
        (missing, [f"out_dir={mine}"], r"holds evaluation\.json, pr_curve\.png, which evaluate\.py did not write"),
        (export, [f"out_dir={tmp_path / 'export'}"], r"out_dir '.*evaluation\.json' is inside the folder model_dir"),
        (missing, [f"out_dir={out}", f"data_file={out / 'misclassified.jsonl'}"], r"is the same file as data_file"),
    ]
    for model, overrides, expected in cases:
        with pytest.raises(OutputPathError, match=expected):
            evaluate(*overrides, model=model)
    assert snapshot(tmp_path) == before


# -- input paths ----------------------------------------------------------------------------------------------------

KINDS = ["missing", "folder", "device", "fifo", "broken symlink", "symlink loop"]


def odd_path(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A path of `kind` that is not a readable file, and what its message says it is."""
    path = tmp_path / kind.replace(" ", "_")
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "broken symlink":
        path.symlink_to(tmp_path / "gone")
    elif kind == "symlink loop":
        path.symlink_to(path)
    elif kind == "device":
        path = Path("/dev/zero")  # endless: read, it would never end
    return path, {
        "missing": "does not exist",
        "folder": "is a folder: ",
        "device": "is a character device, not a regular file",
        "fifo": "is a FIFO (named pipe), not a regular file: refused rather than waiting for a writer",
        "broken symlink": f"is a symbolic link to {str(tmp_path / 'gone')!r}, which does not exist",
        "symlink loop": "cannot be read (Too many levels of symbolic links)",
    }[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_input_path_gets_its_own_message(tmp_path: Path, kind: str) -> None:
    path, says = odd_path(tmp_path, kind)
    readers: list[tuple[str, type[UserError], Any]] = [
        ("input_file", DataError, lambda: read_texts(str(path))),
        ("data_file", DataError, lambda: read_labelled(path, ("ham", "spam"))),
        ("checkpoint", CheckpointError, lambda: load_predictor(ckpt_path=str(path))),
    ]
    for what, error, read in readers:
        with pytest.raises(error) as refused:
            read()
        message = str(refused.value)
        assert message.startswith(f"{what} {str(path)!r} {says}") and "\n" not in message, message
    if kind == "folder":
        assert message.endswith(f"is a folder: use model_dir={path} for an exported model")


def test_a_folder_as_checkpoint_and_a_file_as_model_dir(
    smoke: dict[str, Any], tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    export = tmp_path / "export"
    export_checkpoint(smoke["ckpt"], export)
    with pytest.raises(CheckpointError, match=rf"^checkpoint '{export}' is a folder: use model_dir={export} for an"):
        Predictor.from_checkpoint(export)
    with pytest.raises(CheckpointError, match=r"^model_dir '.*\.ckpt' is a file, not a folder: use ckpt_path= for a"):
        load_predictor(model_dir=str(smoke["ckpt"]))
    with pytest.raises(CheckpointError, match=r"^model_dir '.*nothing' does not exist$"):
        load_predictor(model_dir=str(tmp_path / "nothing"))
    cfg = smoke_cfg(tmp_path / "run", tmp_path / "data", sms_zip, tokenizer_file, f"ckpt_path={export}")
    with pytest.raises(ConfigError, match=rf"^ckpt_path '{export}' is a folder: training continues from a checkpoint"):
        train_run(cfg)
    assert not (tmp_path / "run").exists()
