"""A SpamNet as an ONNX graph (export.py format=onnx): written with torch.onnx.export, checked with onnxruntime
before the export is accepted, and run by `predict.py backend=onnxruntime` (`OnnxNet`).

The graph, model.onnx, beside the export's record and weights (export.py; transformers' layout when transformers can
compute the model, with config.json and tokenizer.json: the folder Optimum loads):
    inputs   input_ids       (batch, length) int64: token ids right-padded with the record's pad token, as
                             Preprocessing.pad makes them (the record says how: padded length, truncation, tokenizer)
             attention_mask  (batch, length) int64: 1 on each row's real tokens, 0 on its padding (right padding:
                             a row's number of real tokens is its sum, 1..length)
    output   logits          (batch, num_classes) float32, in class-id order (the record's preprocessing.labels;
                             its positive_class is the class a two-class model's threshold applies to: softmax's
                             column of it)
batch and length are dynamic (length up to the context length). It computes SpamNet.forward(input_ids, lengths) with
lengths = attention_mask.sum(-1), for every pooling: last_token reads position lengths-1, mean averages the first
`lengths` positions, last reads the final (padded) position and first position 0; those two ignore the mask, which
stays an input so that every export has the same signature. These are the names and shapes Hugging Face's tokenizers
give and Optimum's ORTModelForSequenceClassification feeds; the mask's only use is each row's length, so it must be
right padding (the exported tokenizer's padding_side), without holes: causal attention never lets a real token see
the padding after it.

The graph carries the record_sha256 of the export it belongs to, as it was before the "onnx" entry was added
(metadata_props): it covers the weights' sha256, so a model.onnx copied in from another export, of the same recipe
too, is refused even where the record's sha256 of the file was edited (and the record's own hash made again).

Only the functions that need them import onnx and onnxscript (the export) and onnxruntime (OnnxNet): torch
prediction imports none of them.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tiktoken
import torch

from spam_lightning.data.preprocess import Preprocessing
from spam_lightning.errors import CheckpointError, UserError
from spam_lightning.files import file_sha256
from spam_lightning.inference.hf import PROBE_TEXTS
from spam_lightning.model.net import SpamNet

ONNX_NAME = "model.onnx"
ONNX_DATA_NAME = "model.onnx.data"  # the weights beside the graph: torch's exporter writes it beyond 1.5 GiB of
# weights (GPT-2 large and xl), protobuf's limit for one file being 2 GB
INPUTS, OUTPUT = ("input_ids", "attention_mask"), "logits"
METADATA_KEY = "spam_lightning.record_sha256"
# At export: |logits onnxruntime - torch| <= this x max(1, |logits|) on the probe texts, else refused. A guard against
# a wrong graph (which is off by orders of magnitude more), with room for float rounding in larger pretrained models;
# tests/inference/test_export_onnx.py holds exports to 1e-5 on the test split.
CHECK_TOLERANCE = 1e-4
INSTALL = 'pip install ".[onnx]"'


class OnnxError(UserError, RuntimeError):
    """ONNX export or onnxruntime prediction that cannot run here (a package missing) or gives other logits."""


STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"  # torch.onnx's per-node metadata


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise OnnxError(f"backend=onnxruntime needs onnxruntime, which is not installed: {INSTALL}") from err
    return onnxruntime


def require_export_packages() -> None:
    """torch.onnx.export's exporter needs onnx and onnxscript, and the check after it onnxruntime."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxError(f"format=onnx needs {', '.join(missing)}, not installed: {INSTALL}")


def write_onnx(
    net: SpamNet, out_dir: Path, record_sha256: str, preprocessing: Preprocessing, tokenizer: tiktoken.Encoding
) -> dict[str, Any]:
    """Export `net` (float32, CPU) to out_dir/model.onnx (out_dir: a new folder, export.write_export's staging one)
    and check it with onnxruntime against `net`; returns the record's "onnx" entry: the files written and their
    sha256, opset, inputs, output and the difference checked. The graph carries `record_sha256`, the hash of the
    record without that entry, which covers the weights' sha256."""
    require_export_packages()
    parameter = next(net.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        net = copy.deepcopy(net).float().cpu()
    net = net.eval()
    context = net.gpt.cfg.context_length
    length = min(8, context)  # an example of at least 2 rows and 2 positions: sizes 0 and 1 would be specialised
    example = (torch.full((2, length), preprocessing.pad_token_id), attention_mask(torch.tensor([length, 1]), length))
    axes = {0: torch.export.Dim("batch"), 1: torch.export.Dim("length", max=context)}
    dynamic = {"input_ids": axes, "attention_mask": axes}
    path = out_dir / ONNX_NAME
    with warnings.catch_warnings(), _quiet("torch.onnx", "torch.export", "onnxscript"):
        warnings.simplefilter("ignore")  # the exporter's deprecation and axis-naming notes
        program = torch.onnx.export(
            MaskedNet(net), example, dynamo=True, input_names=list(INPUTS), output_names=[OUTPUT],
            dynamic_shapes=dynamic, verbose=False, report=False,
        )  # fmt: skip
        program.model.metadata_props[METADATA_KEY] = record_sha256
        # The exporter records each node's Python call stack, with this machine's file paths: left out, so a
        # model.onnx names no local folder and the same weights give the same file from any checkout.
        for graph in (program.model.graph, *program.model.functions.values()):
            for node in graph.all_nodes():
                node.metadata_props.pop(STACK_TRACE_KEY, None)
        program.save(path)  # the weights go into model.onnx.data beyond 1.5 GiB
    files = [p for p in (path, out_dir / ONNX_DATA_NAME) if p.is_file()]
    net_of_onnx = OnnxNet(path, record_sha256)
    difference = check_onnx(net_of_onnx, net, preprocessing, tokenizer, str(path))
    return {
        "files": {p.name: file_sha256(p) for p in files},
        "inputs": list(INPUTS),
        "output": OUTPUT,
        "opset": program.model.opset_imports.get("", None),
        "exporter": f"torch {torch.__version__}",
        "max_abs_logit_difference": difference,  # onnxruntime against torch on the probe texts, at export
    }


def check_onnx(onnx_net: OnnxNet, net: SpamNet, pre: Preprocessing, tokenizer: tiktoken.Encoding, source: str) -> float:
    """The largest |logits| difference of onnxruntime against torch on the probe texts, as one padded batch and as
    a single text (two shapes through one session); beyond CHECK_TOLERANCE the export is refused."""
    ids, _ = pre.encode(tokenizer, PROBE_TEXTS)
    worst = 0.0
    for rows in (ids, ids[3:4]):
        input_ids, lengths = pre.pad(rows)
        with torch.inference_mode():
            expected = net(input_ids, lengths)
        got = onnx_net(input_ids, lengths)
        difference = float((got - expected).abs().max())
        if not difference <= CHECK_TOLERANCE * max(1.0, float(expected.abs().max())):  # NaN too
            raise OnnxError(
                f"{source}: onnxruntime's logits differ from torch's by {difference:.3g} (> {CHECK_TOLERANCE:g}); "
                "export refused"
            )
        worst = max(worst, difference)
    return worst


def attention_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """(B, length) int64: 1 on the first lengths[i] positions of row i, 0 after (right padding)."""
    return (torch.arange(length, device=lengths.device) < lengths[:, None]).long()


class MaskedNet(torch.nn.Module):
    """SpamNet with Hugging Face's inputs: (input_ids, attention_mask) of right-padded rows -> (B, C) logits."""

    def __init__(self, net: SpamNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids, attention_mask.sum(-1))


class OnnxNet:
    """model.onnx in an onnxruntime session on the CPU, called like SpamNet: (input_ids, lengths) -> (B, C) logits
    (it feeds the graph the attention mask of `lengths`).

    Its intra-op threads are torch's (torch.get_num_threads()), so that both backends use the same cores."""

    def __init__(self, path: Path, record_sha256: str, num_classes: int = 2, pool: str = "last_token") -> None:
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own exception types: an invalid or truncated graph
            raise CheckpointError(f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0]})") from err
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != list(INPUTS) or outputs != [OUTPUT]:  # ["input_ids", "lengths"]: exported by an earlier version
            raise CheckpointError(
                f"{path}: inputs {inputs} and outputs {outputs}, expected {list(INPUTS)} -> {OUTPUT}; export the "
                "checkpoint again with format=onnx"
            )
        bound = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if bound != record_sha256:
            raise CheckpointError(
                f"{path}: exported for another model (its {METADATA_KEY} is {bound!r}, the record's is "
                f"{record_sha256!r}); export the checkpoint again"
            )
        self.num_classes, self.pool = num_classes, pool

    def __call__(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = attention_mask(lengths.cpu(), input_ids.shape[1])
        feeds = {"input_ids": input_ids.cpu().numpy(), "attention_mask": mask.numpy()}
        (logits,) = self.session.run([OUTPUT], feeds)
        return torch.from_numpy(logits)


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Loggers at ERROR for a while: the exporter logs its progress and the operators it skips (torchvision's)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
