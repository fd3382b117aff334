"""Options of predict.py/evaluate.py are range-checked before any model loads; non-finite weights are refused
on load; nothing non-finite reaches the JSON outputs (one smoke run trained for the module)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from helpers.records import resave_checkpoint
from helpers.scripts import run_script
from helpers.smoke import compose_cfg, copy_smoke
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from spam_lightning.data.preprocess import get_tokenizer
from spam_lightning.errors import CheckpointError, ConfigError
from spam_lightning.files import file_sha256
from spam_lightning.inference.checkpoint import load_trained
from spam_lightning.inference.evaluate import run as evaluate_run
from spam_lightning.inference.export import export_checkpoint
from spam_lightning.inference.exported import record_sha256
from spam_lightning.inference.predict import run as predict_run
from spam_lightning.inference.predict import write_jsonl
from spam_lightning.inference.predictor import NonFiniteOutputError, Prediction, Predictor, check_options

MISSING = "ckpt_path=/nonexistent/model.ckpt"  # a check that came after loading would fail on this instead
BAD_KEY = "gpt.trf_blocks.1.att.W_query.weight"  # the tiny smoke model's last block


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, smoke_source: Path) -> dict:
    tmp = tmp_path_factory.mktemp("smoke")
    metrics = copy_smoke(smoke_source, tmp)
    return {"tmp": tmp, "ckpt": Path(metrics["best_checkpoint"])}


@pytest.fixture(scope="module")
def nan_ckpt(smoke: dict) -> Path:
    """The smoke checkpoint with one tensor set to NaN."""
    ckpt = torch.load(smoke["ckpt"], map_location="cpu", weights_only=True)
    ckpt["state_dict"]["net." + BAD_KEY].fill_(float("nan"))
    path = smoke["tmp"] / "nan.ckpt"
    resave_checkpoint(ckpt, path)
    return path


# -- options ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "override", "message"),
    [
        ("predict", "threshold=nan", "threshold=nan: expected a number in [0, 1]"),
        ("predict", "threshold=2", "threshold=2: expected a number in [0, 1]"),
        ("predict", "threshold=-1", "threshold=-1: expected a number in [0, 1]"),
        ("predict", "threshold=abc", "threshold='abc': expected a number in [0, 1]"),
        ("predict", "threshold=true", "threshold=true: expected a number in [0, 1]"),
        ("predict", "batch_size=0", "batch_size=0: expected an integer >= 1"),
        ("predict", "batch_size=-1", "batch_size=-1: expected an integer >= 1"),
        ("predict", "batch_size=2.5", "batch_size=2.5: expected an integer >= 1"),
        ("predict", "batch_size=true", "batch_size=true: expected an integer >= 1"),
        ("predict", "precision=16", "precision=16: expected one of 32, bf16"),
        ("predict", "format=xml", "format='xml': expected one of auto, table, jsonl"),
        ("evaluate", "threshold=inf", "threshold=inf: expected a number in [0, 1]"),
        ("evaluate", "batch_size=-3", "batch_size=-3: expected an integer >= 1"),
        ("evaluate", "target_precision=0", "target_precision=0: expected a number in (0, 1]"),
        ("evaluate", "target_precision=1.5", "target_precision=1.5: expected a number in (0, 1]"),
        ("evaluate", "target_precision=nan", "target_precision=nan: expected a number in (0, 1]"),
        ("evaluate", "show_misclassified=-1", "show_misclassified=-1: expected an integer >= 0"),
        ("evaluate", "show_misclassified=1.5", "show_misclassified=1.5: expected an integer >= 0"),
    ],
)
def test_bad_option_is_refused_before_the_model_loads(config: str, override: str, message: str) -> None:
    cfg = compose_cfg(config, MISSING, override)
    with pytest.raises(ConfigError) as err:
        (predict_run if config == "predict" else evaluate_run)(cfg)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("config", "overrides"),
    [
        ("predict", ["threshold=0", "batch_size=1", "precision=bf16", "format=table"]),
        ("predict", ["threshold=1", "precision=32"]),
        ("evaluate", ["threshold=0.25", "target_precision=1", "show_misclassified=0"]),
        ("evaluate", ["target_precision=null", "batch_size=1000"]),
    ],
)
def test_values_at_the_bounds_are_accepted(config: str, overrides: list[str]) -> None:
    check_options(compose_cfg(config, *overrides))


def test_scripts_print_one_error_line_naming_the_key() -> None:
    for script, override in (("predict.py", "threshold=nan"), ("evaluate.py", "batch_size=true")):
        result = run_script(script, MISSING, override, timeout=120)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        key = override.split("=")[0]
        assert len(lines) == 1 and lines[0].startswith(f"error: {override}: expected"), result.stderr
        assert key in lines[0]


# -- non-finite weights -----------------------------------------------------------------------------------


def test_checkpoint_with_nan_weights_is_refused(nan_ckpt: Path, tokenizer_file: str) -> None:
    expected = f"checkpoint '{nan_ckpt}': parameter {BAD_KEY} holds NaN/Inf values"
    with pytest.raises(CheckpointError) as err:
        load_trained(nan_ckpt)
    assert str(err.value) == expected
    with pytest.raises(CheckpointError, match="holds NaN/Inf values"):  # export reads through load_trained
        export_checkpoint(nan_ckpt, nan_ckpt.parent / "nan-export", tokenizer_file)
    result = run_script(
        "predict.py", f"ckpt_path={nan_ckpt}", "text=hello", "device=cpu", f"tokenizer_file={tokenizer_file}",
        timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"error: {expected}"]


def test_export_with_inf_weights_is_refused(smoke: dict, tokenizer_file: str) -> None:
    folder = smoke["tmp"] / "inf-export"
    export_checkpoint(smoke["ckpt"], folder, tokenizer_file, format="spam_lightning")  # weights in our key names
    weights_file, config_file = folder / "spam_lightning.safetensors", folder / "spam_lightning.json"
    with safe_open(weights_file, "pt") as f:
        metadata = f.metadata()
    state = load_file(weights_file)
    state[BAD_KEY][0, 0] = float("inf")
    save_file(state, weights_file, metadata=metadata)
    config = json.loads(config_file.read_text())
    config["weights_sha256"] = file_sha256(weights_file)  # a consistent export of bad weights
    config["record_sha256"] = record_sha256(config)  # which the record's hash covers
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    with pytest.raises(CheckpointError) as err:
        Predictor.from_dir(folder, device="cpu")
    assert str(err.value) == f"exported model '{folder}': parameter {BAD_KEY} holds NaN/Inf values"


# -- nothing non-finite in the outputs --------------------------------------------------------------------


class InfLogits(torch.nn.Module):
    """The trained network, with +inf logits for the texts of `length` tokens."""

    def __init__(self, net: torch.nn.Module, length: int) -> None:
        super().__init__()
        self.net, self.length, self.num_classes = net, length, net.num_classes

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids, lengths).masked_fill((lengths == self.length)[:, None], float("inf"))


def test_non_finite_output_raises_naming_the_text(smoke: dict, tokenizer_file: str) -> None:
    predictor = Predictor(load_trained(smoke["ckpt"]), get_tokenizer(tokenizer_file), "cpu")
    texts = ["", "Free entry! Win a prize now, text WIN to 80086", "see you at lunch"]
    predictor.net = InfLogits(predictor.net, len(predictor.encode(texts)[2].ids))
    with pytest.raises(NonFiniteOutputError, match="output for text 2 is not finite") as err:
        predictor.predict(texts)  # text 0 (empty) is not scored: the index is still the text's
    assert err.value.index == 2
    with pytest.raises(NonFiniteOutputError, match="text 1 is not finite"):
        predictor.probabilities([e.ids for e in predictor.encode(texts)[1:]])  # indices among the ids given


def test_writers_refuse_non_finite_values(
    smoke: dict, tokenizer_file: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        nan = float("nan")
        write_jsonl([Prediction("hi", "ham", {"ham": nan, "spam": nan}, "spam", nan, False)], io.StringIO())

    import spam_lightning.inference.evaluate as evaluate

    real = evaluate.binary_metrics
    monkeypatch.setattr(evaluate, "binary_metrics", lambda *a: {**real(*a), "f1": float("nan")})
    cfg = compose_cfg("evaluate", f"ckpt_path={smoke['ckpt']}", f"out_dir={tmp_path}", "device=cpu",
                      f"tokenizer_file={tokenizer_file}", "target_precision=null")  # fmt: skip
    with pytest.raises(ValueError, match="not JSON compliant"):
        evaluate_run(cfg)
    assert not (tmp_path / "evaluation.json").exists()
