"""The package's structure: subpackages by flow, lower layers never import upper ones, no import cycles, prediction
without Lightning or the export writers, one owner for each concept."""

from __future__ import annotations

import ast
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "spam_lightning"
# Bottom to top: a module may import its own layer and the ones below it, never one above.
LAYERS = (
    {"errors", "files", "paths"},  # plumbing every flow shares
    {"model"},  # the network: GPT-2, LoRA, pretrained weights, SpamNet
    {"data"},  # texts to token ids: the one table reader, tokenizer + preprocessing record, data modules
    {"inference"},  # using a trained model: the checkpoint record and readers, prediction, evaluation, exports, serving
    {"training"},  # one training run: the LightningModule, feature cache, checkpoint IO, run folders, trackers, sweeps
    {"cli", "__init__"},  # the commands, and the library's front door
)
# What `python predict.py` imports: neither Lightning nor the export writers (inference.export).
PREDICTION = ("inference.predict", "inference.predictor", "inference.serve")
ONNX_PACKAGES = {"onnx", "onnxscript", "onnxruntime"}  # imported inside the functions that need them only


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))
SOURCE = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(module: str, at_import: bool = False) -> tuple[set[str], set[str]]:
    """(our modules, third-party top-level packages) that `module` imports anywhere in its source (`at_import`:
    only those imported when the module is, not inside functions)."""
    ours, theirs = set(), set()
    tree = ast.parse(SOURCE[module].read_text())
    for node in tree.body if at_import else ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            if name.startswith("spam_lightning."):
                ours.add(name.removeprefix("spam_lightning."))
            elif name != "spam_lightning":
                theirs.add(name.split(".")[0])
    return ours, theirs


GRAPH = {m: imports(m)[0] - {m} for m in MODULES}


def layer(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def reach(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for dep in GRAPH[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_every_module_belongs_to_a_layer() -> None:
    for module in MODULES:
        layer(module)


def test_subpackages_say_what_they_own() -> None:
    for sub in ("model", "data", "inference", "training"):
        doc = ast.get_docstring(ast.parse((PACKAGE / sub / "__init__.py").read_text()))
        assert doc and len(doc) > 100, sub
        assert not imports(sub)[0], f"{sub}/__init__.py imports nothing: importing one module loads only its needs"


def test_no_import_cycles() -> None:
    try:
        order = list(TopologicalSorter(GRAPH).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle: {err.args[1]}") from err
    assert set(order) >= set(MODULES)


def test_lower_layers_never_import_upper_ones() -> None:
    wrong = {m: sorted(d for d in deps if layer(d) > layer(m)) for m, deps in GRAPH.items()}
    assert not {m: deps for m, deps in wrong.items() if deps}


def test_prediction_imports_neither_lightning_nor_the_export_writers() -> None:
    for module in PREDICTION:
        for dep in reach(module) | {module}:
            assert not imports(dep, at_import=True)[1] & {"lightning", "pytorch_lightning"}, (module, dep)
        assert "inference.export" not in reach(module), module


def test_onnx_packages_are_imported_only_where_used() -> None:
    """torch prediction, and every other import of the package, never loads onnx, onnxscript or onnxruntime."""
    wrong = {m: sorted(imports(m, at_import=True)[1] & ONNX_PACKAGES) for m in MODULES}
    assert not {m: names for m, names in wrong.items() if names}
    assert {m for m in MODULES if imports(m)[1] & ONNX_PACKAGES} == {"inference.onnx"}


def test_one_owner_for_each_concept() -> None:
    """Each concept is defined in one module: grep finds no second copy."""
    sources = {m: SOURCE[m].read_text() for m in MODULES}

    def where(pattern: str) -> set[str]:
        return {m for m, text in sources.items() if re.search(pattern, text)}

    assert where(r"class \w+\(nn\.Module\)") == {"model.gpt", "model.lora", "model.net"}
    assert where(r"nn\.Linear\([^)]*num_classes") == {"model.net"}  # the classification head
    assert where(r"encode_ordinary") == {"data.preprocess"}
    assert where(r"torch\.full\(\(len\(") == {"data.preprocess"}  # right padding of token rows
    assert where(r"torch\.load\(") == {"inference.checkpoint"}
    assert where(r"\nLABELS = ") == {"data.sms_spam"}  # the SMS class names
    assert where(r"\nSPLITS = ") == {"data.tables"}  # the split names
    assert where(r'removeprefix\(b"\\xef\\xbb\\xbf"\)') == {"data.tables"}  # strict UTF-8 of input files, BOM dropped
    assert where(r"pd\.read_csv\(") == {"data.tables"}  # one table reader
    assert where(r'"\.tsv": "\\t"') == {"data.tables"}  # suffix -> delimiter
    assert where(r"class (InputError|DataError)\b") == {"errors"}  # a bad input file is a DataError, wherever read
    assert where(r"def read_export\(") == {"inference.exported"}
