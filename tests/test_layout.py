"""The package's structure: no import cycles, lower layers never import upper ones, one copy of each concept."""

from __future__ import annotations

import ast
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "spam_lightning"
# Lower layers (the network, its weights, the data and what a checkpoint holds) never import these.
UPPER = {"train", "classifier", "feature_cache", "checkpointing", "inference", "predict", "evaluate", "export"}
UPPER |= {"report", "sweep", "optuna_sweeper", "ddp", "textio", "trackers", "serve", "serve_requests"}
LOWER = {"gpt", "net", "weights", "preprocess", "tokenizer", "sms_spam", "samplers", "data", "checkpoint"}
LOWER |= {"hf_export", "hf_tokenizer", "model_card"}  # what export.py writes for transformers
LOWER |= {"onnx_model"}  # the ONNX graph export.py writes, and predict.py's onnxruntime backend
LOWER |= {"lora"}  # LoRA adapters on the network, merged by the checkpoint reader
LOWER |= {"text_csv", "csv_data"}  # labelled CSV/TSV data (data=csv)
# Prediction and export load without Lightning (start-up time; an exported model needs torch, safetensors, tiktoken).
NO_LIGHTNING = {"gpt", "net", "weights", "preprocess", "tokenizer", "checkpoint", "export", "inference", "textio"}
NO_LIGHTNING |= {"predict", "sms_spam", "errors", "files", "downloads", "hf_export", "hf_tokenizer", "model_card"}
NO_LIGHTNING |= {"onnx_model", "lora", "text_csv"}
# Imported only by the functions that need them (the ONNX export; backend=onnxruntime), never when a module is.
ONNX_PACKAGES = {"onnx", "onnxscript", "onnxruntime"}
# Modules allowed beyond ~400 lines, and why.
LONG: dict[str, str] = {}


def imports(module: str, at_import: bool = False) -> tuple[set[str], set[str]]:
    """(our modules, third-party top-level packages) that `module` imports anywhere in its source (`at_import`:
    only those imported when the module is, not inside functions)."""
    ours, theirs = set(), set()
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for node in tree.body if at_import else ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            if name.startswith("spam_lightning."):
                ours.add(name.split(".")[1])
            else:
                theirs.add(name.split(".")[0])
    return ours, theirs


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
GRAPH = {m: imports(m)[0] for m in MODULES}


def test_no_import_cycles() -> None:
    try:
        order = list(TopologicalSorter(GRAPH).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle: {err.args[1]}") from err
    assert set(order) >= set(MODULES)


def test_lower_layers_never_import_upper_ones() -> None:
    assert set(MODULES) >= LOWER | UPPER
    wrong = {m: sorted(GRAPH[m] & UPPER) for m in LOWER if GRAPH[m] & UPPER}
    assert not wrong


def test_prediction_path_imports_no_lightning() -> None:
    def reach(module: str, seen: set[str]) -> set[str]:
        for dep in GRAPH[module] - seen:
            seen.add(dep)
            reach(dep, seen)
        return seen

    for module in NO_LIGHTNING:
        for dep in reach(module, {module}):
            assert not imports(dep, at_import=True)[1] & {"lightning", "pytorch_lightning"}, (module, dep)


def test_onnx_packages_are_imported_only_where_used() -> None:
    """torch prediction, and every other import of the package, never loads onnx, onnxscript or onnxruntime."""
    wrong = {m: sorted(imports(m, at_import=True)[1] & ONNX_PACKAGES) for m in MODULES}
    assert not {m: names for m, names in wrong.items() if names}
    assert {m for m in MODULES if imports(m)[1] & ONNX_PACKAGES} == {"onnx_model"}


def test_one_copy_of_each_concept() -> None:
    """One network class, one preprocessing (encode/pad), one checkpoint reader: grep finds no second copy."""
    sources = {m: (PACKAGE / f"{m}.py").read_text() for m in MODULES}

    def where(pattern: str) -> set[str]:
        return {m for m, text in sources.items() if re.search(pattern, text)}

    assert where(r"class \w+\(nn\.Module\)") == {"gpt", "lora", "net"}  # GPT-2's parts, the LoRA layer; the network
    assert where(r"nn\.Linear\([^)]*num_classes") == {"net"}  # the classification head
    assert where(r"encode_ordinary") == {"preprocess"}
    assert where(r"torch\.full\(\(len\(") == {"preprocess"}  # right padding of token rows
    assert where(r"torch\.load\(") == {"checkpoint"}
    assert where(r"\nLABELS = ") == {"sms_spam"}  # the SMS class names
    assert where(r"\nSPLITS = ") == {"text_csv"}  # the split names


def test_modules_stay_small() -> None:
    sizes = {m: len((PACKAGE / f"{m}.py").read_text().splitlines()) for m in MODULES}
    assert not {m: n for m, n in sizes.items() if n > 420 and m not in LONG}
