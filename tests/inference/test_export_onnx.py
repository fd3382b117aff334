"""The ONNX export (export.py format=onnx): onnxruntime gives our torch model's logits and P(spam) on the whole test
split for every pooling, one session takes batches of any size and length, the folder keeps our record and its
trust checks (model.onnx's sha256 too), and predict.py backend=onnxruntime uses it, importing onnxruntime only then.
A pool=last_token export is in transformers' layout (config.json, tokenizer files), the folder Hugging Face Optimum's
ORTModelForSequenceClassification loads, with transformers' tokenizer from the same folder."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.records import with_each_field_edited
from helpers.scripts import run_script
from helpers.smoke import compose_cfg, copy_smoke, random_124m

import spam_lightning
from spam_lightning.data.preprocess import Preprocessing, get_tokenizer
from spam_lightning.errors import CheckpointError, ConfigError, UserError
from spam_lightning.files import file_sha256
from spam_lightning.inference.checkpoint import RECORD_KEY, TrainedModel, load_trained
from spam_lightning.inference.evaluate import load_split
from spam_lightning.inference.export import write_export
from spam_lightning.inference.exported import read_export, record_sha256
from spam_lightning.inference.onnx import OnnxNet
from spam_lightning.inference.predict import run as predict_run
from spam_lightning.inference.predictor import Predictor, load_predictor

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

TOLERANCE = 1e-5  # max |logits onnxruntime - torch| and max |P(spam) onnxruntime - torch|
REPO = Path(__file__).resolve().parents[2]
# pool -> padded length: last (the book's) pads every text to 120 tokens; the others pad each batch to its longest
POOLS = {"last_token": None, "last": 120, "first": None, "mean": None}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, smoke_source: Path) -> dict[str, Any]:
    """A smoke run (pool=last_token) exported by `python export.py ... format=onnx`, and the test split's texts."""
    tmp = tmp_path_factory.mktemp("onnx")
    ckpt = Path(copy_smoke(smoke_source, tmp)["best_checkpoint"])
    done = run_script("export.py", f"ckpt_path={ckpt}", "format=onnx", f"out_dir={tmp / 'last_token'}", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr and "[torch.onnx]" not in done.stdout + done.stderr, done.stderr
    texts, _ = load_split(Predictor.from_checkpoint(ckpt, device="cpu"), "test")
    return {"tmp": tmp, "ckpt": ckpt, "texts": texts, "folders": {"last_token": tmp / "last_token"}}


def with_pool(model: TrainedModel, pool: str, pad_length: int | None) -> TrainedModel:
    """The same weights recorded with another pooling and padded length (the graph differs, the weights do not)."""
    pre = dataclasses.replace(
        model.preprocessing, pool=pool, pad_length=pad_length, padding=pad_length if pad_length else "batch"
    )
    model.net.pool = pool
    return TrainedModel(model.net, pre, model.training)


def exported(smoke: dict[str, Any], pool: str, tokenizer_file: str) -> Path:
    """The smoke model with `pool`, exported with format=onnx (once per pool)."""
    if pool not in smoke["folders"]:
        model = with_pool(load_trained(smoke["ckpt"]), pool, POOLS[pool])
        write_export(model, smoke["tmp"] / pool, get_tokenizer(tokenizer_file), format="onnx")
        smoke["folders"][pool] = smoke["tmp"] / pool
    return smoke["folders"][pool]


def batch_logits(net: Any, pre: Preprocessing, rows: list[list[int]], size: int) -> torch.Tensor:
    """Logits of `rows` in batches of `size`, padded as prediction pads them."""
    out = []
    for start in range(0, len(rows), size):
        input_ids, lengths = pre.pad(rows[start : start + size])
        with torch.inference_mode():
            out.append(net(input_ids, lengths))
    return torch.cat(out)


@pytest.mark.parametrize("pool", list(POOLS))
def test_onnxruntime_equals_torch_on_the_whole_test_split(
    smoke: dict[str, Any], tokenizer_file: str, pool: str
) -> None:
    folder = exported(smoke, pool, tokenizer_file)
    torch_predictor = Predictor.from_dir(folder, device="cpu")
    onnx_predictor = Predictor.from_dir(folder, backend="onnxruntime")
    assert (torch_predictor.backend, onnx_predictor.backend) == ("torch", "onnxruntime")
    assert isinstance(onnx_predictor.net, OnnxNet) and onnx_predictor.preprocessing == torch_predictor.preprocessing
    texts = smoke["texts"]
    encoded = torch_predictor.encode(texts)
    rows = [e.ids for e in encoded]
    assert len(rows) == 300 and any(e.truncated for e in encoded)  # some texts are longer than 128 tokens
    pre = torch_predictor.preprocessing
    expected = batch_logits(torch_predictor.net, pre, rows, 64)
    got = batch_logits(onnx_predictor.net, pre, rows, 64)
    logit_diff = float((got - expected).abs().max())
    ours = torch_predictor.positive_probabilities(texts)[0]
    theirs = onnx_predictor.positive_probabilities(texts)[0]
    p_diff = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))  # type: ignore[operator]
    print(f"pool={pool}: max |dlogits| {logit_diff:.2g}, max |dP(spam)| {p_diff:.2g} on {len(texts)} test texts")
    assert logit_diff <= TOLERANCE and p_diff <= TOLERANCE
    assert expected.abs().max() > 0.5  # logits of a trained model, not all near zero
    # the export's own weights are the checkpoint's; in transformers' layout (last_token) with the head's bias folded
    # into the final LayerNorm's (inference/hf.py): equal up to float rounding
    from_ckpt = Predictor(with_pool(load_trained(smoke["ckpt"]), pool, POOLS[pool]), torch_predictor.tokenizer, "cpu")
    p_ckpt = from_ckpt.positive_probabilities(texts[:20])[0]
    p_export = torch_predictor.positive_probabilities(texts[:20])[0]
    if pool == "last_token":
        assert max(abs(a - b) for a, b in zip(p_ckpt, p_export, strict=True)) <= TOLERANCE  # type: ignore[operator]
    else:
        assert p_ckpt == p_export


def test_the_graph_names_no_local_file(smoke: dict[str, Any], tokenizer_file: str) -> None:
    """torch.onnx records each node's Python call stack with the file paths of this machine (its source checkout):
    left out of model.onnx, which then depends on the weights only. The exporter's other node metadata stays."""
    import onnx

    graph = onnx.load(exported(smoke, "last_token", tokenizer_file) / "model.onnx", load_external_data=False).graph
    keys = {p.key for node in graph.node for p in node.metadata_props}
    assert "pkg.torch.onnx.name_scopes" in keys and "pkg.torch.onnx.stack_trace" not in keys
    source = str(Path(spam_lightning.__file__).parent.parent)
    assert not [p.value for node in graph.node for p in node.metadata_props if source in p.value]


def test_one_session_takes_any_batch_size_and_length(smoke: dict[str, Any], tokenizer_file: str) -> None:
    folder = exported(smoke, "last_token", tokenizer_file)
    model = read_export(folder)[0]
    onnx_net = read_export(folder, backend="onnxruntime")[0].net
    shapes = [i.shape for i in onnx_net.session.get_inputs()] + [o.shape for o in onnx_net.session.get_outputs()]
    assert shapes == [["batch", "length"], ["batch", "length"], ["batch", 2]]  # symbolic, not the example's sizes
    torch.manual_seed(0)
    for batch, length in ((1, 1), (1, 128), (2, 8), (3, 5), (7, 1), (64, 37), (300, 128), (5, 2)):
        input_ids = torch.randint(0, 50257, (batch, length))
        lengths = torch.randint(1, length + 1, (batch,))
        lengths[0] = length
        with torch.inference_mode():
            expected = model.net(input_ids, lengths)
        got = onnx_net(input_ids, lengths)
        assert got.shape == (batch, 2)
        assert float((got - expected).abs().max()) <= TOLERANCE, (batch, length)


def config_of(folder: Path) -> dict[str, Any]:
    """config.json of a transformers-layout export: transformers' fields and our record under RECORD_KEY."""
    return json.loads((folder / "config.json").read_text())


def write_config(folder: Path, config: dict[str, Any]) -> None:
    (folder / "config.json").unlink(missing_ok=True)  # a hard link: never write through it
    (folder / "config.json").write_text(json.dumps(config))


def test_the_folder_keeps_our_record_and_its_checks(smoke: dict[str, Any], tmp_path: Path, tokenizer_file: str) -> None:
    folder = exported(smoke, "last_token", tokenizer_file)
    names = sorted(p.name for p in folder.iterdir())
    hf_names = ["README.md", "config.json", "gpt2.tiktoken", "merges.txt", "model.safetensors", "tokenizer.json"]
    assert names == sorted([*hf_names, "model.onnx", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"])
    record = config_of(folder)[RECORD_KEY]
    assert record["preprocessing"]["pool"] == "last_token" and record["preprocessing"]["max_length"] == 128
    entry = record["onnx"]
    assert entry["inputs"] == ["input_ids", "attention_mask"] and entry["output"] == "logits"
    assert set(entry["files"]) == {"model.onnx"} and entry["max_abs_logit_difference"] <= TOLERANCE
    assert str(smoke["tmp"]).encode() not in (folder / "model.onnx").read_bytes()  # no local paths
    card = (folder / "README.md").read_text()
    assert "ORTModelForSequenceClassification" in card and "\n- onnx\n" in card
    # pool=last: transformers cannot compute it, so our own layout, with the same graph inputs
    own = exported(smoke, "last", tokenizer_file)
    assert not (own / "config.json").exists()
    assert json.loads((own / "spam_lightning.json").read_text())["onnx"]["inputs"] == ["input_ids", "attention_mask"]

    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(folder, dest, copy_function=os.link)
        return dest

    def refused(model_dir: Path, match: str, error: type[Exception] = CheckpointError) -> None:
        with pytest.raises(error, match=match) as caught:
            Predictor.from_dir(model_dir, backend="onnxruntime")
        assert "\n" not in str(caught.value)

    corrupt = copy("corrupt")
    data = (corrupt / "model.onnx").read_bytes()
    (corrupt / "model.onnx").unlink()  # a hard link: never write through it
    (corrupt / "model.onnx").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    refused(corrupt, r"model\.onnx: missing, or its sha256 differs from config\.json's onnx\.files")
    missing = copy("missing")
    (missing / "model.onnx").unlink()
    refused(missing, r"model\.onnx: missing, or its sha256")
    # model.onnx of another export (pool=last), its sha256 written into the record: the record's hash covers it; made
    # again too, the graph's own record_sha256 says it belongs to another model
    other = copy("other")
    (other / "model.onnx").unlink()
    shutil.copy(own / "model.onnx", other / "model.onnx")
    config = config_of(other)
    edited = config[RECORD_KEY]
    edited["onnx"]["files"]["model.onnx"] = json.loads((own / "spam_lightning.json").read_text())["onnx"]["files"][
        "model.onnx"
    ]
    write_config(other, config)
    refused(other, r"config\.json was edited after export")
    edited["record_sha256"] = record_sha256(edited)
    write_config(other, config)
    refused(other, r"exported for another model \(its spam_lightning\.record_sha256 is '[0-9a-f]{64}'")
    # a graph with the inputs of an earlier version: export again
    earlier = copy("earlier")
    graph = onnx.load(earlier / "model.onnx")
    for node in graph.graph.node:
        node.input[:] = ["lengths" if name == "attention_mask" else name for name in node.input]
    graph.graph.input[1].name = "lengths"
    (earlier / "model.onnx").unlink()
    onnx.save(graph, earlier / "model.onnx")
    config = config_of(earlier)
    config[RECORD_KEY]["onnx"]["files"]["model.onnx"] = file_sha256(earlier / "model.onnx")
    config[RECORD_KEY]["record_sha256"] = record_sha256(config[RECORD_KEY])
    write_config(earlier, config)
    refused(earlier, r"inputs \['input_ids', 'lengths'\].*export the checkpoint again with format=onnx$")
    outside = copy("symlink")
    shutil.copy(folder / "model.onnx", tmp_path / "elsewhere.onnx")
    (outside / "model.onnx").unlink()
    (outside / "model.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    refused(outside, r"onnx\.files 'model\.onnx' is outside the model folder")
    # the record itself stays protected by record_sha256, for both backends
    pool = copy("pool")
    config = config_of(pool)
    config[RECORD_KEY]["preprocessing"]["pool"] = config[RECORD_KEY]["net"]["pool"] = "first"
    write_config(pool, config)
    refused(pool, r"config\.json was edited after export")
    # format=auto for a last_token model: transformers' layout, no model.onnx: refused, saying how to get one
    write_export(load_trained(smoke["ckpt"]), tmp_path / "hf", get_tokenizer(tokenizer_file))
    refused(tmp_path / "hf", r"has no model\.onnx \(exported without format=onnx\).*format=onnx`; or predict with")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "ORTModelForSequenceClassification" not in card and "\n- onnx\n" not in card
    with pytest.raises(ConfigError, match="not ckpt_path"):
        load_predictor(ckpt_path=str(smoke["ckpt"]), backend="onnxruntime")


def test_a_graph_of_another_model_of_the_same_recipe_is_refused(
    smoke: dict[str, Any], tmp_path: Path, tokenizer_file: str
) -> None:
    """Two exports of one recipe differ in their weights alone: the record binds them (weights_sha256 is in
    record_sha256 and in the hash the graph carries), so the other's model.onnx is refused with its sha256 edited into
    the record, and with the record's hash made again too."""
    folder = exported(smoke, "last_token", tokenizer_file)
    model = load_trained(smoke["ckpt"])
    with torch.no_grad():
        model.net.gpt.out_head.weight.neg_()  # another model: the same net and preprocessing, other weights
    write_export(model, tmp_path / "other", get_tokenizer(tokenizer_file), format="onnx")
    config, their_config = config_of(folder), config_of(tmp_path / "other")
    ours, theirs = config[RECORD_KEY], their_config[RECORD_KEY]
    assert (ours["net"], ours["preprocessing"]) == (theirs["net"], theirs["preprocessing"])
    assert ours["record_sha256"] != theirs["record_sha256"]
    swapped = tmp_path / "swapped"
    shutil.copytree(folder, swapped, copy_function=os.link)
    (swapped / "model.onnx").unlink()
    shutil.copy(tmp_path / "other" / "model.onnx", swapped / "model.onnx")
    ours["onnx"]["files"]["model.onnx"] = theirs["onnx"]["files"]["model.onnx"]
    for expected in (r"config\.json was edited after export", r"model\.onnx: exported for another model"):
        write_config(swapped, config)
        with pytest.raises(CheckpointError, match=expected):
            Predictor.from_dir(swapped, backend="onnxruntime")
        ours["record_sha256"] = record_sha256(ours)  # as a forger would


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_every_field_of_an_onnx_record_is_bound_but_the_provenance(
    smoke: dict[str, Any], tmp_path: Path, tokenizer_file: str, backend: str
) -> None:
    """test_export_trust's field-by-field check on the record of format=onnx, for both backends: each field edited
    alone is refused (the "onnx" entry too), except the provenance (training)."""
    accepted, refused = [], []
    folder = exported(smoke, "last_token", tokenizer_file)
    for field, edited in with_each_field_edited(folder, "config.json", tmp_path):
        try:
            read_export(edited, backend)
        except UserError:
            refused.append(field)
            continue
        accepted.append(field)
    assert accepted and [field for field in accepted if not field.startswith(f"{RECORD_KEY}.training.")] == []
    bound = {"onnx.files.model.onnx", "onnx.opset", "onnx.inputs", "weights_sha256", "net.arch.n_heads"}
    assert {f"{RECORD_KEY}.{field}" for field in bound} | {"n_head", "id2label.0"} <= set(refused)


def test_overwrite_removes_the_graph_with_the_format(
    smoke: dict[str, Any], tmp_path: Path, tokenizer_file: str
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(exported(smoke, "last_token", tokenizer_file), folder)
    write_export(load_trained(smoke["ckpt"]), folder, get_tokenizer(tokenizer_file), overwrite=True, format="hf")
    assert not (folder / "model.onnx").exists() and (folder / "config.json").is_file()


def test_predict_py_with_onnxruntime(smoke: dict[str, Any], tmp_path: Path, tokenizer_file: str) -> None:
    folder = exported(smoke, "last_token", tokenizer_file)
    messages = tmp_path / "messages.txt"
    messages.write_text("\n".join(smoke["texts"][:40]) + "\n", encoding="utf-8")
    no_onnxruntime = tmp_path / "no_onnxruntime"  # an onnxruntime that cannot be imported, as when not installed
    (no_onnxruntime / "onnxruntime").mkdir(parents=True)
    (no_onnxruntime / "onnxruntime" / "__init__.py").write_text("raise ImportError('No module named onnxruntime')\n")
    hidden = {"PYTHONPATH": os.pathsep.join([str(no_onnxruntime), os.environ.get("PYTHONPATH", "")])}

    def predict(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_script("predict.py", f"model_dir={folder}", *args, "format=jsonl", env=env, timeout=120)

    def one_error_line(done: subprocess.CompletedProcess[str], message: str) -> None:
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and lines == [f"error: {message}"], done.stderr[-2000:]

    outputs = {}
    for backend, env in (("torch", hidden), ("onnxruntime", None)):  # torch needs no onnxruntime
        done = predict(f"input_file={messages}", f"backend={backend}", env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[backend] = [json.loads(line) for line in done.stdout.splitlines()]
    assert [p["label"] for p in outputs["torch"]] == [p["label"] for p in outputs["onnxruntime"]]
    for a, b in zip(outputs["torch"], outputs["onnxruntime"], strict=True):
        assert abs(a["positive_probability"] - b["positive_probability"]) <= TOLERANCE
    one_error_line(predict("backend=onnxruntime", "text=hi", env=hidden), INSTALL_MESSAGE)
    hf = tmp_path / "hf"
    write_export(load_trained(smoke["ckpt"]), hf, get_tokenizer(tokenizer_file), format="hf")
    done = run_script("predict.py", f"model_dir={hf}", "backend=onnxruntime", "text=hi", timeout=120)
    expected = f"{hf} has no model.onnx (exported without format=onnx): backend=onnxruntime needs a folder written "
    one_error_line(done, expected + "by `python export.py ckpt_path=... format=onnx`; or predict with backend=torch")
    # exporting without the packages: one line, nothing written
    done = run_script("export.py", f"ckpt_path={smoke['ckpt']}", "format=onnx", f"out_dir={tmp_path / 'x'}", env=hidden)
    one_error_line(done, 'format=onnx needs onnxruntime, not installed: pip install ".[onnx]"')
    assert not (tmp_path / "x").exists()


INSTALL_MESSAGE = 'backend=onnxruntime needs onnxruntime, which is not installed: pip install ".[onnx]"'


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("backend=tensorrt",), "backend='tensorrt': expected one of torch, onnxruntime"),
        (("backend=onnxruntime", "device=cuda"), "device=cuda: backend=onnxruntime runs on the CPU here"),
        (("backend=onnxruntime", "precision=bf16"), "precision=bf16: backend=onnxruntime runs the exported float32"),
    ],
)
def test_backend_options_are_checked_before_any_model_loads(overrides: tuple[str, ...], message: str) -> None:
    cfg = compose_cfg("predict", "model_dir=/nonexistent", "text=hi", *overrides)
    with pytest.raises(ConfigError) as refused:
        predict_run(cfg)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_prediction_imports_onnxruntime_only_for_that_backend(smoke: dict[str, Any], tokenizer_file: str) -> None:
    folder = exported(smoke, "last_token", tokenizer_file)
    script = f"""
import sys
from spam_lightning.inference.predict import run
from spam_lightning.inference.predictor import Predictor
def loaded():
    names = {{m.split(".")[0] for m in sys.modules}}
    return sorted(names & {{"onnxruntime", "onnx", "onnxscript", "lightning", "pytorch_lightning"}})
Predictor.from_dir({str(folder)!r}).predict(["hello"])
print(loaded())
Predictor.from_dir({str(folder)!r}, backend="onnxruntime").predict(["hello"])
print(loaded())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["[]", "['onnxruntime']"]  # never onnx or onnxscript (export only), Lightning


def optimum_classifier() -> Any:
    """Optimum's ORTModelForSequenceClassification, or a skip saying why it is not installed."""
    try:
        from optimum.onnxruntime import ORTModelForSequenceClassification
    except ImportError as err:  # every optimum-onnx release so far needs transformers < 4.58 (docs/using-a-model.md)
        pytest.skip(f"Optimum's onnxruntime models cannot be imported here: {err}")
    return ORTModelForSequenceClassification


def optimum_contract_logits(folder: Path, inputs: dict[str, Any]) -> Any:
    """What ORTModelForSequenceClassification.from_pretrained(folder)(**inputs).logits does (optimum-onnx 0.1.0's
    modeling.py), with onnxruntime: AutoConfig from config.json, the folder's one *.onnx file, model.onnx (its glob
    and standard file name), fed the tokenizer's outputs that the session names as inputs, the output "logits"."""
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(folder).model_type == "gpt2"
    assert [p.name for p in folder.glob("**/*.onnx")] == ["model.onnx"]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["input_ids", "attention_mask"] and [o.name for o in session.get_outputs()] == ["logits"]
    assert {i.type for i in session.get_inputs()} == {"tensor(int64)"}
    (logits,) = session.run(["logits"], {name: inputs[name] for name in names})
    return logits


@pytest.mark.parametrize("loader", ["optimum", "onnxruntime"])
def test_optimum_loads_the_folder_with_its_tokenizer(
    smoke: dict[str, Any], tmp_path: Path, tokenizer_file: str, loader: str
) -> None:
    """The format=onnx folder as Optimum's users load it (ORTModelForSequenceClassification and AutoTokenizer from the
    folder; where Optimum cannot be installed, its loading path with onnxruntime): P(spam) of texts of different
    lengths, one padded batch, within 1e-5 of predict.py's (both backends)."""
    from transformers import AutoConfig, AutoTokenizer

    folder = exported(smoke, "last_token", tokenizer_file)
    by_length = sorted(smoke["texts"], key=len)
    texts = [*by_length[:: len(by_length) // 6], by_length[-1], "ok", "Sorry, I'll call later <|endoftext|>"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
    lengths = inputs["attention_mask"].sum(-1)
    assert inputs["input_ids"].shape[1] == 128 and min(lengths) < 5  # one text truncated, others padded
    if loader == "optimum":
        model = optimum_classifier().from_pretrained(folder)
        logits = model(**tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).logits.numpy()
    else:
        logits = optimum_contract_logits(folder, dict(inputs))
    spam = AutoConfig.from_pretrained(folder).label2id["spam"]
    theirs = torch.from_numpy(logits).softmax(-1)[:, spam].tolist()
    messages = tmp_path / "messages.txt"
    messages.write_text("\n".join(texts) + "\n", encoding="utf-8")
    for backend in ("torch", "onnxruntime"):
        args = (f"model_dir={folder}", f"input_file={messages}", f"backend={backend}", "format=jsonl")
        done = run_script("predict.py", *args, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        ours = [json.loads(line)["positive_probability"] for line in done.stdout.splitlines()]
        difference = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
        print(f"{loader} against predict.py backend={backend}: max |dP(spam)| {difference:.2g} on {len(texts)} texts")
        assert difference <= TOLERANCE and max(ours) - min(ours) > 0.1  # the texts matter


@pytest.mark.slow
def test_124m_architecture(tmp_path: Path, sms_tsv: Path, tokenizer_file: str) -> None:
    """GPT-2 124M shapes (random weights), pool=last_token, 20 texts: exported, then onnxruntime against torch."""
    pre = Preprocessing(labels=("ham", "spam"), max_length=1024, pad_length=None, padding="batch", pool="last_token")
    model = TrainedModel(random_124m("last_token"), pre, {})
    tokenizer = get_tokenizer(tokenizer_file)
    texts = [line.split("\t", 1)[1] for line in sms_tsv.read_text(encoding="utf-8").splitlines()[:20]]
    start = time.perf_counter()
    write_export(model, tmp_path, tokenizer, format="onnx")
    exported_s = time.perf_counter() - start
    ours = Predictor(model, tokenizer, device="cpu")
    theirs = Predictor.from_dir(tmp_path, backend="onnxruntime")
    rows = [e.ids for e in ours.encode(texts)]
    logit_diff = float((batch_logits(theirs.net, pre, rows, 8) - batch_logits(ours.net, pre, rows, 8)).abs().max())
    p_ours, p_theirs = ours.positive_probabilities(texts)[0], theirs.positive_probabilities(texts, batch_size=7)[0]
    p_diff = max(abs(a - b) for a, b in zip(p_ours, p_theirs, strict=True))  # type: ignore[operator]
    print(f"124M: exported in {exported_s:.0f} s; max |dlogits| {logit_diff:.2g}, max |dP(spam)| {p_diff:.2g}")
    assert max(p_ours) - min(p_ours) > 0.01  # type: ignore[operator]  # the texts matter
    assert logit_diff <= TOLERANCE and p_diff <= TOLERANCE
    assert (tmp_path / "model.onnx").stat().st_size > 400e6 and not (tmp_path / "model.onnx.data").exists()
