"""Every option of train.py (conf/train.yaml, the model and data groups, the trainer, callbacks and logger keys our
configs define, the trackers' too), export.py, baseline.py, predict.py, evaluate.py and serve.py, and every field of a
POST /predict request, has a test that fails when the code accepts the option and then does not
use it: the test observes its effect (the weights after a step, the batches, the splits, the files written), not
its parsing. OPTIONS is the table, one entry per key; test_every_option_has_an_entry lists the keys from the YAML
files and the request fields of serve_requests.request_models, so a new option or field without a test (or a
stated reason why it has none) fails the suite.

The train-side tests run train.run as train.py does, in-process, stopped where it calls Trainer.fit (`build`): the
trainer, model and data module it made from the config, in about half a second. Keys that go to Lightning as they
are (trainer.*, Lightning's own callbacks and logger) are checked on the Lightning objects train.run built; what
Lightning then does with a value is Lightning's to test. A few tests train for 2-3 steps.

predict.py, evaluate.py and serve.py (their options and request fields) are tested in
tests/inference/test_options_predict_evaluate_serve.py; export.py's and baseline.py's in
tests/training/test_options_export_baseline.py."""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers.local_internet import TIKTOKEN_R50K_PATH, UCI_ZIP_PATH, LocalInternet
from helpers.smoke import compose_cfg
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, ModelSummary
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

import spam_lightning.inference.serve as serve_requests
import spam_lightning.training.checkpoints as checkpointing
import spam_lightning.training.sweeps as sweep
from spam_lightning.data.modules import TextDataModule
from spam_lightning.data.preprocess import get_tokenizer
from spam_lightning.errors import ConfigError, DataError
from spam_lightning.inference.checkpoint import read_checkpoint
from spam_lightning.model.gpt import GPTModel, make_config
from spam_lightning.model.lora import LoRALinear
from spam_lightning.model.weights import to_hf_state_dict
from spam_lightning.training.feature_cache import FrozenFeatureCache
from spam_lightning.training.module import SpamClassifier
from spam_lightning.training.run import run as train_run
from spam_lightning.training.trackers import ResumableCSVLogger

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
THIS = "tests/training/test_options_effect.py"
TINY_ARCH = {"emb_dim": 64, "n_layers": 2, "n_heads": 2, "context_length": 128, "dropout": 0.0, "qkv_bias": True}

# ---------------------------------------------------------------------------------------------------------------
# Building what train.run builds
# ---------------------------------------------------------------------------------------------------------------


class _FitCalled(Exception):
    pass


@dataclass
class Built:
    cfg: DictConfig
    trainer: L.Trainer
    model: SpamClassifier
    datamodule: TextDataModule
    ckpt_path: str | None


@dataclass
class Inputs:
    """What every build needs: the local data and vocabulary, and a folder per build."""

    tmp: Path
    sms_zip: Path
    tokenizer_file: str
    csv_file: Path
    count: int = 0

    def data_args(self, data: str) -> list[str]:
        if data == "csv":
            return ["data=csv", f"data.path={self.csv_file}"]
        return [f"data.source={self.sms_zip}", f"data.data_dir={self.tmp / 'sms'}"]

    def cfg(self, *overrides: str, data: str = "sms_spam") -> DictConfig:
        self.count += 1
        return compose_cfg(
            "train",
            "experiment=smoke",
            f"run_dir={self.tmp / f'run{self.count}'}",
            *self.data_args(data),
            f"data.tokenizer_file={self.tokenizer_file}",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            *overrides,
        )


def build_cfg(cfg: DictConfig) -> Built:
    """train.run(cfg) up to its call of Trainer.fit: the objects it made, nothing trained."""
    got: dict[str, Any] = {}

    def fit(trainer: L.Trainer, model: SpamClassifier, datamodule: TextDataModule, ckpt_path: str | None) -> None:
        got.update(trainer=trainer, model=model, datamodule=datamodule, ckpt_path=ckpt_path)
        raise _FitCalled

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(L.Trainer, "fit", fit)
        with pytest.raises(_FitCalled):
            train_run(cfg)
    return Built(cfg=cfg, **got)


def labelled_csv(path: Path) -> Path:
    """Three classes of different sizes (60, 45, 30 rows), texts of 3 to 40 words, every text distinct, with a second
    text column and a second label column (for text_column, label_column)."""
    sentence = "the quick brown fox jumps over a lazy dog while it rains in the old town near the river"
    words = sentence.split()
    rows = ["id,text,body,label,topic"]
    for name, n, other in (("weather", 60, "x"), ("sports", 45, "y"), ("politics", 30, "z")):
        for i in range(n):
            text = f"{name} note {i}: " + " ".join(words[j % len(words)] for j in range(i % 37 + 3))
            rows.append(f"{len(rows)},{text},body {other} {i},{name},{other}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> Inputs:
    tmp = tmp_path_factory.mktemp("options")
    return Inputs(tmp, sms_zip, tokenizer_file, labelled_csv(tmp / "labelled.csv"))


def build(inputs: Inputs, *overrides: str, data: str = "sms_spam") -> Built:
    return build_cfg(inputs.cfg(*overrides, data=data))


def first_batch(loader: Any) -> dict[str, Any]:
    return next(iter(loader))


def train_texts(built: Built) -> list[str]:
    return built.datamodule.read_split("train")["text"].tolist()


# ---------------------------------------------------------------------------------------------------------------
# train.yaml
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights_file(inputs: Inputs) -> Path:
    """A tiny GPT's weights in the Hub's layout (what model.pretrained takes)."""
    cfg = make_config(TINY_ARCH)
    torch.manual_seed(11)
    path = inputs.tmp / "tiny.safetensors"
    save_file(to_hf_state_dict(GPTModel(cfg).state_dict(), cfg), str(path))
    return path


def test_seed_draws_the_new_head_and_is_the_default_data_seed_and_init_seed(inputs: Inputs, weights_file: Path) -> None:
    pretrained = f"model.pretrained={weights_file}"
    heads = {seed: build(inputs, pretrained, f"seed={seed}").model.net.gpt.out_head.weight for seed in (1, 2)}
    assert not torch.equal(heads[1], heads[2])  # seed_everything(seed): the new head's init
    assert torch.equal(heads[1], build(inputs, pretrained, "seed=1").model.net.gpt.out_head.weight)
    seven, default = build(inputs, "seed=7"), build(inputs)
    assert set(train_texts(seven)) != set(train_texts(default))  # data.seed: ${seed}
    assert (inputs.tmp / "sms" / "seed-7" / "splits.json").is_file()
    assert not torch.equal(seven.model.net.gpt.tok_emb.weight, default.model.net.gpt.tok_emb.weight)  # init_seed
    assert set(train_texts(build(inputs, "seed=7", data="csv"))) != set(train_texts(build(inputs, data="csv")))


def test_root_dir_holds_the_data_by_default(inputs: Inputs) -> None:
    root = inputs.tmp / "root"
    cfg = compose_cfg(
        "train", "experiment=smoke", f"root_dir={root}", f"run_dir={root / 'run'}", f"data.source={inputs.sms_zip}",
        f"data.tokenizer_file={inputs.tokenizer_file}", "trainer.enable_progress_bar=false",
    )  # fmt: skip
    built = build_cfg(cfg)
    assert (root / "data" / "sms_spam" / "seed-123" / "train.csv").is_file()
    assert built.datamodule.read_split("train").equals(build(inputs).datamodule.read_split("train"))


def test_run_dir_receives_config_yaml_and_is_lightnings_root(inputs: Inputs) -> None:
    built = build(inputs)
    run_dir = Path(built.cfg.run_dir)
    assert OmegaConf.load(run_dir / "config.yaml").model.lr == built.cfg.model.lr
    assert Path(built.trainer.default_root_dir) == run_dir
    assert Path(built.trainer.logger.log_dir) == run_dir / "logs"
    checkpoints = [c for c in built.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert {Path(c.dirpath) for c in checkpoints} == {run_dir / "checkpoints"}


def test_print_config_prints_the_composed_config(inputs: Inputs, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        build(inputs, "print_config=true", "model.lr=0.000123")
    printed = caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        build(inputs, "model.lr=0.000123")
    assert "0.000123" in printed and "0.000123" not in caplog.text


class SpySaves:
    """Every checkpoint the run writes (through AtomicCheckpointIO, trainer.plugins): its path and global step."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.saves: list[tuple[Path, int]] = []
        original = checkpointing.AtomicCheckpointIO.save_checkpoint

        def save(io: Any, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            self.saves.append((Path(path), checkpoint["global_step"]))
            original(io, checkpoint, path, storage_options)

        mp.setattr(checkpointing.AtomicCheckpointIO, "save_checkpoint", save)


SHORT = (
    "trainer.max_steps=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.eval_batch_size=64",
)


def short_run(inputs: Inputs, *overrides: str) -> tuple[Path, dict[str, Any], list[tuple[Path, int]]]:
    """3 training steps (and a 1-batch evaluation of each split when test_after_fit): run folder, result, saves."""
    cfg = inputs.cfg(*SHORT, *overrides)
    with pytest.MonkeyPatch.context() as mp:
        spy = SpySaves(mp)
        result = train_run(cfg)
    return Path(cfg.run_dir), result, spy.saves


PLOTS = ("loss.png", "accuracy.png", "confusion_matrix.png", "pr_curve.png")


def test_checkpoint_every_n_steps_writes_last_ckpt_at_those_steps(inputs: Inputs) -> None:
    """checkpoint_every_n_steps is the default of the LastCheckpoint callback's every_n_steps, whose dirpath says
    where last.ckpt goes."""
    kept = "callbacks.last_every_n_steps_and_on_interrupt.dirpath=${run_dir}/kept"
    run_dir, _, saves = short_run(inputs, "checkpoint_every_n_steps=2", kept, "test_after_fit=false")
    assert (run_dir / "kept" / "last.ckpt", 2) in saves
    run_dir, _, saves = short_run(inputs, "callbacks.last_every_n_steps_and_on_interrupt.every_n_steps=1",
                                  "test_after_fit=false")  # fmt: skip
    assert {(run_dir / "checkpoints" / "last.ckpt", step) for step in (1, 2)} <= set(saves)
    _, _, default = short_run(inputs, "test_after_fit=false")
    assert [step for path, step in default if path.name == "last.ckpt"] == [3]  # the epoch-level one only


def test_test_after_fit_and_report(inputs: Inputs) -> None:
    untested, result, _ = short_run(inputs, "test_after_fit=false")
    assert result == {} and not (untested / "metrics.json").exists() and not (untested / "test_scores.csv").exists()
    tested, result, _ = short_run(inputs, "report=false")
    assert json.loads((tested / "metrics.json").read_text())["test"] == result["test"]
    assert not any((tested / name).exists() for name in PLOTS)
    reported, _, _ = short_run(inputs)
    assert all((reported / name).is_file() for name in PLOTS)


class SpySteps:
    """The weights at the first training step of a run, and how many steps it ran."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.first: dict[str, torch.Tensor] | None = None
        self.steps = 0
        original = SpamClassifier.training_step

        def training_step(model: SpamClassifier, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.first is None:
                self.first = {n: p.detach().clone() for n, p in model.named_parameters()}
            self.steps += 1
            return original(model, batch, batch_idx)

        mp.setattr(SpamClassifier, "training_step", training_step)


@pytest.mark.parametrize("how", ["ckpt_path", "resume"])
def test_a_run_continues_from_the_checkpoint(how: str, inputs: Inputs) -> None:
    """From a 2-step run's last.ckpt, a run of max_steps=3 trains one step, starting from that checkpoint's weights
    (a fresh run would train 3 steps from the initial weights)."""
    first, _, _ = short_run(inputs, "trainer.max_steps=2", "test_after_fit=false")
    last = first / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(last)["state_dict"]
    cfg = inputs.cfg(*SHORT, "test_after_fit=false")
    if how == "ckpt_path":
        cfg.ckpt_path = str(last)
    else:
        shutil.copytree(first, cfg.run_dir)
        cfg.resume = True
    with pytest.MonkeyPatch.context() as mp:
        spy = SpySteps(mp)
        train_run(cfg)
    assert spy.steps == 1
    assert spy.first is not None and spy.first.keys() == saved.keys()
    assert all(torch.equal(spy.first[k], saved[k]) for k in saved)


# ---------------------------------------------------------------------------------------------------------------
# model: conf/model/gpt2.yaml (and gpt2-lora.yaml)
# ---------------------------------------------------------------------------------------------------------------


def train_batch(built: Built) -> dict[str, Any]:
    built.datamodule.setup("fit")
    return first_batch(built.datamodule.train_dataloader())


def one_step(model: SpamClassifier, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One step of the optimizer the model configures, on `batch`; returns the parameters before and after it and
    leaves their gradients in place."""
    model.train()
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.zero_grad()
    loss = F.cross_entropy(model(batch["input_ids"], batch["lengths"]), batch["labels"])
    loss.backward()
    optimizer.step()
    return before, {n: p.detach().clone() for n, p in model.named_parameters()}


def adamw_oracle(before: dict[str, torch.Tensor], model: SpamClassifier, lr: float, weight_decay: float) -> dict:
    """The same step by torch's reference AdamW (not fused) on copies of the parameters, from their gradients."""
    params = {n: torch.nn.Parameter(before[n].clone()) for n, p in model.named_parameters() if p.requires_grad}
    for n, p in model.named_parameters():
        if p.requires_grad:
            params[n].grad = p.grad.clone()
    torch.optim.AdamW(params.values(), lr=lr, weight_decay=weight_decay, fused=False, foreach=False).step()
    return {n: p.detach() for n, p in params.items()}


@pytest.mark.parametrize("finetune", ["layers", "lora"])
def test_lr_and_weight_decay_make_the_optimizer_step(finetune: str, inputs: Inputs) -> None:
    """model.lr and model.weight_decay: the step equals torch's AdamW with those values, and differs from the step
    with either one at its default."""
    lora = ["model.finetune=lora", "model.lora.rank=2"] if finetune == "lora" else []
    lr, weight_decay = 3e-3, 0.3
    built = build(inputs, *lora, f"model.lr={lr}", f"model.weight_decay={weight_decay}")
    before, after = one_step(built.model, train_batch(built))
    trained = {n for n, p in built.model.named_parameters() if p.requires_grad}
    defaults = {key: inputs.cfg(*lora).model[key] for key in ("lr", "weight_decay")}
    expected = adamw_oracle(before, built.model, lr, weight_decay)
    for name in trained:
        torch.testing.assert_close(after[name], expected[name], rtol=1e-5, atol=1e-7)
    for key, default in defaults.items():
        other = {"lr": lr, "weight_decay": weight_decay, key: default}
        wrong = adamw_oracle(before, built.model, **other)
        assert max(float((after[n] - wrong[n]).abs().max()) for n in trained) > 1e-6, key


def test_the_optimizer_node_is_any_torch_optimizer(inputs: Inputs) -> None:
    """model.optimizer: its class and its own arguments make the step (SGD with momentum, against torch's SGD on
    copies), the short names reach it (model.lr), and the checkpoint's hyper_parameters record it."""
    built = build(
        inputs, "model.optimizer._target_=torch.optim.SGD", "model.lr=0.05", "model.weight_decay=0.0",
        "+model.optimizer.momentum=0.9",
    )  # fmt: skip
    assert built.model.hparams.optimizer == "torch.optim.SGD" and built.model.hparams.lr == 0.05
    model = built.model
    batch = train_batch(built)
    before, after = one_step(model, batch)
    params = {n: torch.nn.Parameter(before[n].clone()) for n, p in model.named_parameters() if p.requires_grad}
    for n, p in model.named_parameters():
        if p.requires_grad:
            params[n].grad = p.grad.clone()
    torch.optim.SGD(params.values(), lr=0.05, momentum=0.9).step()
    for name, param in params.items():
        torch.testing.assert_close(after[name], param.detach(), rtol=1e-5, atol=1e-7)
    adamw = adamw_oracle(before, model, 0.05, 0.0)
    assert max(float((after[n] - adamw[n]).abs().max()) for n in params) > 1e-6  # not AdamW's step
    with pytest.raises(InstantiationException, match=r"model\.lr must be a number > 0"):
        build(inputs, "model.optimizer.lr=0")  # the node's own value, checked as the short name is


@pytest.mark.parametrize("key", ["arch", "pretrained", "init_seed", "dropout", "num_classes", "pool"])
def test_the_net_node_builds_the_network(key: str, inputs: Inputs, weights_file: Path) -> None:
    """model.net: each of its values, set on the node itself, shapes the network handed to the module (the short
    names are only what the node reads by default)."""
    net = build(inputs).model.net
    changed = {
        "arch": (
            "model.net.arch={emb_dim: 32, n_layers: 3, n_heads: 2, context_length: 128}",
            lambda n: len(n.gpt.trf_blocks) == 3,
        ),
        "pretrained": (f"model.net.pretrained={weights_file}", lambda n: n.origin["pretrained"] == str(weights_file)),
        "init_seed": (
            "model.net.init_seed=99",
            lambda n: not torch.equal(n.gpt.trf_blocks[0].att.W_query.weight, net.gpt.trf_blocks[0].att.W_query.weight),
        ),
        "dropout": ("model.net.dropout=0.25", lambda n: n.gpt.cfg.dropout == 0.25),
        "num_classes": ("model.net.num_classes=2", lambda n: n.num_classes == 2),
        "pool": ("model.net.pool=first", lambda n: n.pool == "first"),
    }[key]
    override, holds = changed
    assert holds(build(inputs, override).model.net), key
    if key != "num_classes":  # the data's count is the default too
        assert not holds(net), key


def test_arch_shapes_the_network(inputs: Inputs) -> None:
    gpt = build(inputs, "model.arch.emb_dim=32", "model.arch.n_layers=3").model.net.gpt
    assert gpt.tok_emb.weight.shape[1] == 32 and len(gpt.trf_blocks) == 3


def test_pretrained_weights_are_the_files(inputs: Inputs, weights_file: Path) -> None:
    cfg = make_config(TINY_ARCH)
    torch.manual_seed(11)
    expected = GPTModel(cfg).state_dict()
    gpt = build(inputs, f"model.pretrained={weights_file}").model.net.gpt
    for name, tensor in gpt.state_dict().items():
        if not name.startswith("out_head."):
            assert torch.equal(tensor, expected[name]), name


def test_init_seed_draws_the_random_trunk(inputs: Inputs) -> None:
    def trunk(*overrides: str) -> torch.Tensor:
        return build(inputs, *overrides).model.net.gpt.trf_blocks[0].att.W_query.weight

    assert not torch.equal(trunk("model.init_seed=7"), trunk("model.init_seed=8"))
    assert torch.equal(trunk("model.init_seed=7", "seed=1"), trunk("model.init_seed=7", "seed=2"))


def test_dropout_is_active_in_training(inputs: Inputs) -> None:
    def two_passes(*overrides: str) -> tuple[torch.Tensor, torch.Tensor]:
        built = build(inputs, *overrides)
        batch = train_batch(built)
        built.model.train()
        with torch.no_grad():
            return tuple(built.model(batch["input_ids"], batch["lengths"]) for _ in range(2))  # type: ignore[return-value]

    assert not torch.equal(*two_passes("model.dropout=0.5"))
    assert torch.equal(*two_passes())  # tiny's dropout is 0.0


def test_num_classes_must_be_the_datas(inputs: Inputs) -> None:
    with pytest.raises(ConfigError, match=r"model.num_classes=3, but the data has 2 classes"):
        build(inputs, "model.num_classes=3")
    assert build(inputs, "model.num_classes=3", data="csv").model.net.gpt.out_head.out_features == 3


def test_trainable_layers_choose_what_the_step_changes(inputs: Inputs) -> None:
    built = build(inputs, "model.trainable_layers=head")
    before, after = one_step(built.model, train_batch(built))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"net.gpt.out_head.weight", "net.gpt.out_head.bias"}


def test_pool_chooses_the_position_read(inputs: Inputs) -> None:
    """pool=first: the logits do not depend on the tokens after the first (last_token's do)."""
    for pool, depends in (("first", False), ("last_token", True)):
        model = build(inputs, f"model.pool={pool}").model.eval()
        ids = torch.tensor([[464, 2068, 7586, 21831], [464, 11, 318, 257]])
        with torch.no_grad():
            a, b = model(ids, torch.tensor([4, 4]))
        assert torch.allclose(a, b) != depends, pool


def test_cache_frozen_false_attaches_no_feature_cache(inputs: Inputs) -> None:
    frozen = ("model.trainable_layers=last_block",)  # block 0 frozen: the cache would be on (auto)
    assert [type(c) for c in build(inputs, *frozen).model.configure_callbacks()] == [FrozenFeatureCache]
    assert build(inputs, *frozen, "model.cache_frozen=false").model.configure_callbacks() == []


def test_compile_compiles_the_blocks(inputs: Inputs) -> None:
    blocks = build(inputs, "model.compile=true").model.net.gpt.trf_blocks
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert all(block._compiled_call_impl is None for block in build(inputs).model.net.gpt.trf_blocks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 applies to CUDA GPUs only")
@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_sets_the_matmul_precision_on_cuda(tf32: bool, inputs: Inputs) -> None:
    built = build(inputs, f"model.tf32={str(tf32).lower()}")
    built.datamodule.setup("fit")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        gpu = L.Trainer(accelerator="gpu", devices=1, logger=False, enable_progress_bar=False, limit_val_batches=1)
        gpu.validate(built.model, built.datamodule.val_dataloader(), verbose=False)
        assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
    finally:
        torch.set_float32_matmul_precision(before)


def lora_layers(model: SpamClassifier) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.net.named_modules() if isinstance(m, LoRALinear)}


def test_finetune_lora_trains_only_the_adapters(inputs: Inputs) -> None:
    built = build(inputs, "model.finetune=lora", "model.lora.rank=2")
    before, after = one_step(built.model, train_batch(built))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.endswith(("lora_A", "lora_B")) for n in changed)


def test_lora_rank_alpha_dropout_and_targets(inputs: Inputs) -> None:
    built = build(
        inputs, "model.finetune=lora", "model.lora.rank=3", "model.lora.alpha=2.5", "model.lora.dropout=0.5",
        "model.lora.targets=[query,head]",
    )  # fmt: skip
    layers = lora_layers(built.model)
    assert sorted(layers) == ["gpt.out_head", "gpt.trf_blocks.0.att.W_query", "gpt.trf_blocks.1.att.W_query"]
    layer = layers["gpt.out_head"]
    assert layer.lora_A.shape[1] == layer.lora_B.shape[0] == 3  # rank
    torch.manual_seed(0)
    with torch.no_grad():
        layer.lora_B.normal_()
        x = torch.randn(5, layer.in_features)
        layer.eval()
        added = layer(x) - F.linear(x, layer.weight, layer.bias)
        torch.testing.assert_close(added, 2.5 * (x @ layer.lora_A @ layer.lora_B))  # alpha
        layer.train()
        assert not torch.equal(layer(x), layer(x))  # dropout on the adapter's input


# ---------------------------------------------------------------------------------------------------------------
# data: the keys conf/data/sms_spam.yaml and conf/data/csv.yaml share (each file's own entry is tested)
# ---------------------------------------------------------------------------------------------------------------

DATA = ("sms_spam", "csv")


@pytest.mark.parametrize("data", DATA)
def test_batch_size_eval_batch_size_and_drop_last(data: str, inputs: Inputs) -> None:
    built = build(inputs, "data.batch_size=6", "data.eval_batch_size=7", "data.drop_last=false", data=data)
    built.datamodule.setup("fit")
    n = len(built.datamodule.datasets["train"])
    assert n % 6 and n % 16  # an incomplete last batch, at this batch size and smoke's 16
    loader = built.datamodule.train_dataloader()
    sizes = [len(batch["labels"]) for batch in loader]
    assert sizes == [6] * (n // 6) + [n % 6]  # drop_last=false keeps the incomplete batch
    assert len(first_batch(built.datamodule.val_dataloader())["labels"]) == 7
    dropped = build(inputs, "data.batch_size=6", data=data)
    dropped.datamodule.setup("fit")
    assert len(dropped.datamodule.train_dataloader()) == n // 6  # drop_last=true (the default) drops it


@pytest.mark.parametrize("data", DATA)
def test_padding_and_max_length(data: str, inputs: Inputs) -> None:
    fixed = train_batch(build(inputs, "data.padding=77", data=data))
    assert fixed["input_ids"].shape[1] == 77
    built = build(inputs, "data.max_length=8", data=data)
    batch = train_batch(built)
    assert batch["input_ids"].shape[1] == 8 and int(batch["lengths"].max()) == 8
    assert built.datamodule.truncated["train"] > 0


@pytest.mark.parametrize("data", DATA)
def test_pool_last_pads_every_batch_to_the_longest_training_text(data: str, inputs: Inputs) -> None:
    """data.pool (${model.pool}) resolves padding=auto: the book's pool=last pads to the longest training text."""
    built = build(inputs, "model.pool=last", "data.padding=auto", data=data)  # smoke sets padding=batch
    tokenizer = get_tokenizer(inputs.tokenizer_file)
    longest = max(len(tokenizer.encode(t, allowed_special="all")) for t in train_texts(built))
    assert {batch["input_ids"].shape[1] for batch in built.datamodule.train_dataloader()} == {min(longest, 128)}


@pytest.mark.parametrize("data", DATA)
def test_bucket_by_length_reduces_the_padding(data: str, inputs: Inputs) -> None:
    def padded_tokens(*overrides: str) -> tuple[int, list[int]]:
        built = build(inputs, "data.batch_size=4", *overrides, data=data)
        built.datamodule.setup("fit")
        batches = list(built.datamodule.train_dataloader())
        return sum(b["input_ids"].numel() for b in batches), sorted(int(x) for b in batches for x in b["lengths"])

    (plain, plain_lengths), (bucketed, bucketed_lengths) = padded_tokens(), padded_tokens("data.bucket_by_length=true")
    assert bucketed < 0.8 * plain and len(bucketed_lengths) == len(plain_lengths)


@pytest.mark.parametrize("data", DATA)
def test_num_workers_and_pin_memory_reach_the_loaders(data: str, inputs: Inputs) -> None:
    built = build(inputs, "data.num_workers=2", "data.pin_memory=true", data=data)
    built.datamodule.setup("fit")
    for loader in (built.datamodule.train_dataloader(), built.datamodule.val_dataloader()):
        assert (loader.num_workers, loader.persistent_workers, loader.pin_memory) == (2, True, True)


@pytest.mark.parametrize("data", DATA)
def test_data_seed_makes_the_split(data: str, inputs: Inputs) -> None:
    seven, default = build(inputs, "data.seed=7", data=data), build(inputs, data=data)
    assert set(train_texts(seven)) != set(train_texts(default))


def test_data_seed_makes_the_training_order(inputs: Inputs, three_files: dict[str, Path]) -> None:
    """Three given files: the splits do not depend on the seed, the order of the training batches does."""
    given = ["data.path=null", *(f"data.{split}_file={path}" for split, path in three_files.items())]
    orders = {}
    for seed in (7, 123):
        built = build(inputs, *given, f"data.seed={seed}", "data.drop_last=false", data="csv")
        built.datamodule.setup("fit")
        orders[seed] = [t for b in built.datamodule.train_dataloader() for t in b["token_ids"]]
    assert sorted(map(tuple, orders[7])) == sorted(map(tuple, orders[123]))
    assert orders[7] != orders[123]


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder without the GPT-2 vocabulary: a run must take it from data.tokenizer_file or download it."""
    monkeypatch.setenv("SPAM_LIGHTNING_CACHE", str(tmp_path / "cache"))
    get_tokenizer.cache_clear()
    yield tmp_path / "cache"
    get_tokenizer.cache_clear()


@pytest.mark.parametrize("data", DATA)
def test_tokenizer_file_and_tokenizer_url(data: str, inputs: Inputs, empty_cache: Path) -> None:
    unreachable = "data.tokenizer_url=http://127.0.0.1:9/r50k_base.tiktoken"
    build(inputs, unreachable, data=data)  # data.tokenizer_file (Inputs.cfg): no download needed
    assert (empty_cache / "gpt2.tiktoken").read_bytes() == Path(inputs.tokenizer_file).read_bytes()
    (empty_cache / "gpt2.tiktoken").unlink()
    get_tokenizer.cache_clear()
    with LocalInternet() as internet:
        url = internet.add_file(TIKTOKEN_R50K_PATH, inputs.tokenizer_file)
        build(inputs, "data.tokenizer_file=null", f"data.tokenizer_url={url}", data=data)
        assert internet.count("GET", TIKTOKEN_R50K_PATH) >= 1
    assert (empty_cache / "gpt2.tiktoken").is_file()


# -- sms_spam only -----------------------------------------------------------------------------------------------


def test_sms_source_urls_and_data_dir(inputs: Inputs, sms_tsv: Path) -> None:
    with LocalInternet() as internet:
        url = internet.add_file(UCI_ZIP_PATH, inputs.sms_zip)
        folder = inputs.tmp / "downloaded"
        build(inputs, "data.source=null", f"data.data_dir={folder}", f"data.urls=[{url}]")
        assert internet.count("GET", UCI_ZIP_PATH) == 1
    assert (folder / "sms+spam+collection.zip").read_bytes() == inputs.sms_zip.read_bytes()
    assert (folder / "seed-123" / "splits.json").is_file()
    folder = inputs.tmp / "from-tsv"
    build(inputs, f"data.source={sms_tsv}", f"data.data_dir={folder}", "data.urls=[http://127.0.0.1:9/gone.zip]")
    assert (folder / "SMSSpamCollection").read_bytes() == sms_tsv.read_bytes()
    assert not (folder / "sms+spam+collection.zip").exists()


def test_sms_verify_checksum(inputs: Inputs, sms_tsv: Path) -> None:
    """A variant of the collection (one spam message edited: every spam message is kept by the balancing) is refused
    by UCI's sha256, and used with verify_checksum=false."""
    lines = sms_tsv.read_bytes().split(b"\n")
    first_spam = next(i for i, line in enumerate(lines) if line.startswith(b"spam\t"))
    lines[first_spam] = b"spam\tA VARIANT MESSAGE of our own, call 0800 000 000"
    variant = inputs.tmp / "variant" / "SMSSpamCollection"
    variant.parent.mkdir()
    variant.write_bytes(b"\n".join(lines))
    source = (f"data.source={variant}", f"data.data_dir={inputs.tmp / 'variant-data'}")
    with pytest.raises(DataError, match="sha256"):
        build(inputs, *source)
    built = build(inputs, *source, "data.verify_checksum=false")
    texts = [t for split in ("train", "validation", "test") for t in built.datamodule.read_split(split)["text"]]
    assert "A VARIANT MESSAGE of our own, call 0800 000 000" in texts


# -- csv only ----------------------------------------------------------------------------------------------------


def split_frames(built: Built) -> dict[str, Any]:
    return {split: built.datamodule.read_split(split) for split in ("train", "validation", "test")}


def file_rows(path: Path, sep: str = ",") -> Any:
    import pandas as pd

    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)


def test_csv_path_is_the_data(inputs: Inputs) -> None:
    built = build(inputs, data="csv")
    texts = sorted(t for frame in split_frames(built).values() for t in frame["text"])
    assert texts == sorted(file_rows(inputs.csv_file)["text"])


@pytest.fixture(scope="module")
def three_files(inputs: Inputs) -> dict[str, Path]:
    """The labelled file's rows shuffled and cut into train.csv (90 rows), validation.csv (20), test.csv (25)."""
    rows = file_rows(inputs.csv_file).sample(frac=1, random_state=0)
    folder = inputs.tmp / "three"
    folder.mkdir()
    files = {}
    for split, part in (("train", rows[:90]), ("validation", rows[90:110]), ("test", rows[110:])):
        files[split] = folder / f"{split}.csv"
        part.to_csv(files[split], index=False)
    return files


def test_csv_three_files_are_the_splits(inputs: Inputs, three_files: dict[str, Path]) -> None:
    given = [f"data.{split}_file={path}" for split, path in three_files.items()]
    built = build(inputs, "data.path=null", *given, data="csv")
    for split, frame in split_frames(built).items():
        assert frame["text"].tolist() == file_rows(three_files[split])["text"].tolist(), split


def test_csv_text_column_and_label_column(inputs: Inputs) -> None:
    built = build(inputs, "data.text_column=body", "data.label_column=topic", data="csv")
    assert built.datamodule.labels == ("x", "y", "z")
    train = built.datamodule.read_split("train")
    assert all(text.startswith("body ") for text in train["text"])
    assert all(
        text.startswith(f"body {'xyz'[label]} ") for text, label in zip(train["text"], train["label"], strict=True)
    )


def test_csv_delimiter(inputs: Inputs) -> None:
    semicolons = inputs.tmp / "semicolons.csv"
    file_rows(inputs.csv_file).to_csv(semicolons, sep=";", index=False)
    with pytest.raises(DataError, match="no column 'text'"):
        build(inputs, f"data.path={semicolons}", data="csv")
    built = build(inputs, f"data.path={semicolons}", "data.delimiter=';'", data="csv")
    assert built.datamodule.labels == ("politics", "sports", "weather")


def test_csv_classes_give_the_class_ids(inputs: Inputs) -> None:
    order = ["sports", "weather", "politics"]
    built = build(inputs, f"data.classes=[{','.join(order)}]", data="csv")
    assert built.datamodule.labels == tuple(order)
    for frame in split_frames(built).values():
        assert all(text.startswith(order[label]) for text, label in zip(frame["text"], frame["label"], strict=True))
    built.datamodule.setup("fit")
    assert built.datamodule.preprocessing.labels == tuple(order)  # what checkpoints and exports record
    assert built.datamodule.record()["classes"] == order
    default = build(inputs, data="csv").datamodule.labels
    assert default == ("politics", "sports", "weather")  # sorted: the option changed the order


def class_counts(frame: Any, names: tuple[str, ...]) -> dict[str, int]:
    return {names[i]: int(n) for i, n in frame["label"].value_counts().items()}


def test_csv_fractions_stratify_and_balance(inputs: Inputs) -> None:
    names = ("politics", "sports", "weather")
    sizes = {"politics": 30, "sports": 45, "weather": 60}
    halves = split_frames(build(inputs, "data.fractions=[0.5,0.25]", data="csv"))
    assert class_counts(halves["train"], names) == {k: int(n * 0.5) for k, n in sizes.items()}
    assert class_counts(halves["validation"], names) == {k: int(n * 0.25) for k, n in sizes.items()}

    # stratify=false: the file shuffled with the seed, then cut (not per class)
    cut = split_frames(build(inputs, "data.stratify=false", "data.seed=5", data="csv"))
    shuffled = file_rows(inputs.csv_file).sample(frac=1, random_state=5).reset_index(drop=True)
    assert cut["train"]["text"].tolist() == shuffled["text"][: int(len(shuffled) * 0.7)].tolist()
    assert class_counts(cut["train"], names) != {k: int(n * 0.7) for k, n in sizes.items()}

    balanced = split_frames(build(inputs, "data.balance=undersample", data="csv"))
    assert class_counts(balanced["train"], names) == dict.fromkeys(names, int(30 * 0.7))


# ---------------------------------------------------------------------------------------------------------------
# trainer, callbacks and logger keys: each reaches the Lightning object train.run builds
# ---------------------------------------------------------------------------------------------------------------


def callback(built: Built, kind: type, dirpath: str | None = None) -> Any:
    """The callback of `kind` (of ModelCheckpoints, the one writing into `dirpath`)."""
    found = [c for c in built.trainer.callbacks if type(c) is kind and (dirpath is None or c.dirpath == dirpath)]
    assert len(found) == 1, (kind, dirpath, built.trainer.callbacks)
    return found[0]


def best(b: Built) -> ModelCheckpoint:
    return callback(b, ModelCheckpoint, str(Path(b.cfg.run_dir) / "best"))


def last(b: Built) -> ModelCheckpoint:
    return callback(b, ModelCheckpoint, str(Path(b.cfg.run_dir) / "last"))


# key -> (override, what the built trainer, callback or logger then holds). One build takes them all.
LIGHTNING: dict[str, tuple[str, Any]] = {
    "trainer/default.yaml:devices": ("trainer.devices=2", lambda b: b.trainer.num_devices == 2),
    "trainer/default.yaml:num_nodes": ("trainer.num_nodes=2", lambda b: b.trainer.num_nodes == 2),
    "trainer/default.yaml:strategy": (
        "trainer.strategy=ddp_spawn",
        lambda b: getattr(b.trainer.strategy, "_start_method", None) == "spawn",
    ),  # auto: ddp (popen)
    "trainer/default.yaml:precision": ("trainer.precision=bf16-mixed", lambda b: b.trainer.precision == "bf16-mixed"),
    "trainer/default.yaml:max_epochs": ("trainer.max_epochs=7", lambda b: b.trainer.max_epochs == 7),
    "trainer/default.yaml:max_steps": ("trainer.max_steps=50", lambda b: b.trainer.max_steps == 50),
    "trainer/default.yaml:limit_train_batches": (
        "trainer.limit_train_batches=0.5",
        lambda b: b.trainer.limit_train_batches == 0.5,
    ),
    "trainer/default.yaml:limit_val_batches": (
        "trainer.limit_val_batches=3",
        lambda b: b.trainer.limit_val_batches == 3,
    ),
    "trainer/default.yaml:limit_test_batches": (
        "trainer.limit_test_batches=4",
        lambda b: b.trainer.limit_test_batches == 4,
    ),
    "trainer/default.yaml:log_every_n_steps": (
        "trainer.log_every_n_steps=3",
        lambda b: b.trainer.log_every_n_steps == 3,
    ),
    "trainer/default.yaml:gradient_clip_val": (
        "trainer.gradient_clip_val=0.7",
        lambda b: b.trainer.gradient_clip_val == 0.7,
    ),
    "trainer/default.yaml:accumulate_grad_batches": (
        "trainer.accumulate_grad_batches=2",
        lambda b: b.trainer.accumulate_grad_batches == 2,
    ),
    "trainer/default.yaml:deterministic": ("trainer.deterministic=true", lambda b: b.deterministic_on),
    "trainer/default.yaml:default_root_dir": (
        "trainer.default_root_dir=${run_dir}/lightning",
        lambda b: b.trainer.default_root_dir == f"{b.cfg.run_dir}/lightning",
    ),
    "trainer/default.yaml:enable_progress_bar": (
        "trainer.enable_progress_bar=true",
        lambda b: b.trainer.progress_bar_callback is not None,
    ),
    "trainer/default.yaml:enable_model_summary": (
        "trainer.enable_model_summary=true",
        lambda b: any(isinstance(c, ModelSummary) for c in b.trainer.callbacks),
    ),
    "trainer/default.yaml:use_distributed_sampler": (
        "trainer.use_distributed_sampler=true",
        lambda b: b.trainer._accelerator_connector.use_distributed_sampler,
    ),
    "callbacks/default.yaml:best_checkpoint.dirpath": (
        "callbacks.best_checkpoint.dirpath=${run_dir}/best",
        lambda b: best(b) is not None,
    ),
    "callbacks/default.yaml:best_checkpoint.filename": (
        "callbacks.best_checkpoint.filename='top-{epoch}'",
        lambda b: best(b).filename == "top-{epoch}",
    ),
    "callbacks/default.yaml:best_checkpoint.auto_insert_metric_name": (
        "callbacks.best_checkpoint.auto_insert_metric_name=true",
        lambda b: best(b).auto_insert_metric_name,
    ),
    "callbacks/default.yaml:best_checkpoint.monitor": (
        "callbacks.best_checkpoint.monitor=val/f1",
        lambda b: best(b).monitor == "val/f1",
    ),
    "callbacks/default.yaml:best_checkpoint.mode": (
        "callbacks.best_checkpoint.mode=min",
        lambda b: best(b).mode == "min",
    ),
    "callbacks/default.yaml:best_checkpoint.save_top_k": (
        "callbacks.best_checkpoint.save_top_k=2",
        lambda b: best(b).save_top_k == 2,
    ),
    "callbacks/default.yaml:best_checkpoint.save_weights_only": (
        "callbacks.best_checkpoint.save_weights_only=false",
        lambda b: not best(b).save_weights_only,
    ),
    "callbacks/default.yaml:last_checkpoint.dirpath": (
        "callbacks.last_checkpoint.dirpath=${run_dir}/last",
        lambda b: last(b) is not None,
    ),
    "callbacks/default.yaml:last_checkpoint.filename": (
        "callbacks.last_checkpoint.filename=latest",
        lambda b: last(b).filename == "latest",
    ),
    "callbacks/default.yaml:last_checkpoint.monitor": (
        "callbacks.last_checkpoint.monitor=val/loss",
        lambda b: last(b).monitor == "val/loss",
    ),
    "callbacks/default.yaml:last_checkpoint.save_top_k": (
        "callbacks.last_checkpoint.save_top_k=3",
        lambda b: last(b).save_top_k == 3,
    ),
    "callbacks/default.yaml:last_checkpoint.enable_version_counter": (
        "callbacks.last_checkpoint.enable_version_counter=true",
        lambda b: last(b)._enable_version_counter,
    ),
    "callbacks/default.yaml:last_checkpoint.every_n_epochs": (
        "callbacks.last_checkpoint.every_n_epochs=2",
        lambda b: last(b)._every_n_epochs == 2,
    ),
    "callbacks/default.yaml:lr_monitor.logging_interval": (
        "callbacks.lr_monitor.logging_interval=epoch",
        lambda b: callback(b, LearningRateMonitor).logging_interval == "epoch",
    ),
    "callbacks/early_stopping.yaml:early_stopping.monitor": (
        "callbacks.early_stopping.monitor=val/f1",
        lambda b: callback(b, EarlyStopping).monitor == "val/f1",
    ),
    "callbacks/early_stopping.yaml:early_stopping.mode": (
        "callbacks.early_stopping.mode=max",
        lambda b: callback(b, EarlyStopping).mode == "max",
    ),
    "callbacks/early_stopping.yaml:early_stopping.patience": (
        "callbacks.early_stopping.patience=5",
        lambda b: callback(b, EarlyStopping).patience == 5,
    ),
    "callbacks/early_stopping.yaml:early_stopping.min_delta": (
        "callbacks.early_stopping.min_delta=0.25",
        lambda b: callback(b, EarlyStopping).min_delta == 0.25,
    ),
    "callbacks/early_stopping.yaml:early_stopping.check_finite": (
        "callbacks.early_stopping.check_finite=false",
        lambda b: not callback(b, EarlyStopping).check_finite,
    ),
    "callbacks/early_stopping.yaml:early_stopping.verbose": (
        "callbacks.early_stopping.verbose=false",
        lambda b: not callback(b, EarlyStopping).verbose,
    ),
    "logger/csv.yaml:csv.save_dir": (
        "logger.csv.save_dir=${run_dir}/elsewhere",
        lambda b: Path(b.trainer.logger.log_dir).parents[1].name == "elsewhere",
    ),
    "logger/csv.yaml:csv.name": (
        "logger.csv.name=mylogs",
        lambda b: Path(b.trainer.logger.log_dir).parent.name == "mylogs",
    ),
    "logger/csv.yaml:csv.version": ("logger.csv.version=v2", lambda b: Path(b.trainer.logger.log_dir).name == "v2"),
}


@contextmanager
def process_flags_kept() -> Iterator[None]:
    """trainer.deterministic=true switches torch's deterministic algorithms on for the whole process (and sets
    CUBLAS_WORKSPACE_CONFIG): put both back as they were."""
    deterministic, cublas = torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


@pytest.fixture(scope="module")
def lightning_built(inputs: Inputs) -> Built:
    """One build with every LIGHTNING override (callbacks=early_stopping: the default callbacks and EarlyStopping)."""
    with process_flags_kept():
        torch.use_deterministic_algorithms(False)
        built = build(inputs, "callbacks=early_stopping", *(override for override, _ in LIGHTNING.values()))
        built.deterministic_on = torch.are_deterministic_algorithms_enabled()  # type: ignore[attr-defined]
    assert isinstance(built.trainer.logger, ResumableCSVLogger)
    return built


@pytest.mark.parametrize("key", list(LIGHTNING))
def test_lightning_keys_reach_the_trainer_callbacks_and_logger(
    key: str, lightning_built: Built, inputs: Inputs
) -> None:
    assert LIGHTNING[key][1](lightning_built), LIGHTNING[key][0]


def test_the_defaults_differ_from_the_values_tested(inputs: Inputs) -> None:
    """Each LIGHTNING check fails on a build with the defaults (else it could not tell an ignored key)."""
    checkpoints = (
        "callbacks.best_checkpoint.dirpath=${run_dir}/best",
        "callbacks.last_checkpoint.dirpath=${run_dir}/last",
    )
    with process_flags_kept():
        torch.use_deterministic_algorithms(False)
        default = build(inputs, "callbacks=early_stopping", *checkpoints)
        default.deterministic_on = torch.are_deterministic_algorithms_enabled()  # type: ignore[attr-defined]
    dirpaths = {"callbacks/default.yaml:best_checkpoint.dirpath", "callbacks/default.yaml:last_checkpoint.dirpath"}
    holding = []
    for key, (_, check) in LIGHTNING.items():
        try:
            held = check(default)
        except AssertionError:
            held = False
        if held and key not in dirpaths:
            holding.append(key)
    assert holding == []


def test_plugins_write_checkpoints_atomically(inputs: Inputs) -> None:
    assert isinstance(build(inputs).trainer.strategy.checkpoint_io, checkpointing.AtomicCheckpointIO)
    assert not isinstance(build(inputs, "trainer.plugins=null").trainer.strategy.checkpoint_io,
                          checkpointing.AtomicCheckpointIO)  # fmt: skip


def test_fast_dev_run(inputs: Inputs) -> None:
    assert build(inputs, "trainer.fast_dev_run=true").trainer.fast_dev_run is True
    assert build(inputs).trainer.fast_dev_run is False


def test_accelerator(inputs: Inputs) -> None:
    if torch.cuda.is_available():
        assert build(inputs, "trainer.accelerator=gpu", "trainer.devices=1").trainer.strategy.root_device.type == "cuda"
        assert build(inputs, "trainer.accelerator=cpu").trainer.strategy.root_device.type == "cpu"
    else:  # accelerator=auto would take the CPU: gpu reaching Lightning is refused there
        with pytest.raises(Exception, match="No supported gpu backend found"):
            build(inputs, "trainer.accelerator=gpu")


# ---------------------------------------------------------------------------------------------------------------
# train.yaml's hydra.callbacks.sweep_summary: the summary of a multirun (spam_lightning.training.sweeps.SweepSummary)
# ---------------------------------------------------------------------------------------------------------------


def sweep_config(*overrides: str) -> Any:
    """train.yaml's config as a multirun's callbacks get it (with overrides)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=["run_dir=.", *overrides], return_hydra_config=True)


def test_sweep_summary_optimized_metric_and_fail_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep, "_last_summary", None)  # restored after: exit_code() reads these
    monkeypatch.setattr(sweep, "_last_fail_on", "any")
    jobs = {"0": {"accuracy": 0.9, "loss": 0.5}, "1": {"accuracy": 0.6, "loss": 0.3}, "2": None}
    for job, validation in jobs.items():
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- model.lr={job}\n")
        if validation is None:
            sweep.write_failure(tmp_path / job, "RuntimeError: boom")
        else:
            (tmp_path / job / "metrics.json").write_text(json.dumps({"validation": validation}))

    def run(*overrides: str) -> tuple[list[str], int]:
        config = sweep_config(f"hydra.sweep.dir={tmp_path}", *overrides)
        instantiate(config.hydra.callbacks.sweep_summary).on_multirun_end(config)
        rows = (tmp_path / "summary.csv").read_text().splitlines()[1:]
        return [row.split(",")[0] for row in rows], sweep.exit_code()

    assert run() == (["0", "1", "2"], 1)  # the defaults: best validation accuracy first; a failed job fails the sweep
    fail_on = "hydra.callbacks.sweep_summary.fail_on"
    assert run("optimized_metric=validation/loss", f"{fail_on}=never") == (["1", "0", "2"], 0)  # the lowest loss first
    assert "best first by validation/loss (minimize)" in (tmp_path / "summary.md").read_text()
    assert run(f"{fail_on}=all")[1] == 0  # not every job failed
    # The Optuna search's direction follows the metric (null); one that contradicts it is refused when Hydra makes
    # its callbacks, before any folder is made.
    assert run("hparams_search=optuna", "optimized_metric=validation/loss")[0] == ["1", "0", "2"]
    with pytest.raises(SystemExit, match=r"^error: hydra.sweeper.direction=maximize with optimized_metric=valid"):
        run("hparams_search=optuna", "optimized_metric=validation/loss", "hydra.sweeper.direction=maximize")
    with pytest.raises(SystemExit, match=r"^error: hydra.sweeper.direction=minimize with optimized_metric=valid"):
        run("hparams_search=optuna", "hydra.sweeper.direction=minimize")
    with pytest.raises(SystemExit, match=r"^error: optimized_metric=val/loss: not a metric of .*validation/loss"):
        run("optimized_metric=val/loss")


# ---------------------------------------------------------------------------------------------------------------
# The trackers' logger configs (logger/mlflow.yaml, wandb.yaml, tensorboard.yaml): each key on the logger built from it
# ---------------------------------------------------------------------------------------------------------------

SAVED_IDS = {"mlflow": {"run_id": "0123456789abcdef"}, "wandb": {"id": "abc123"}}  # a run's trackers.json


@contextmanager
def tensorboard_importable() -> Iterator[None]:
    """Lightning's TensorBoardLogger is made without tensorboard (not a test dependency): nothing here writes to it."""
    import lightning.fabric.loggers.tensorboard as fabric_tensorboard

    import spam_lightning.training.trackers as trackers

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fabric_tensorboard, "_TENSORBOARDX_AVAILABLE", True)
        mp.setattr(trackers, "require_extra", lambda *args: None)
        yield


def tracker_loggers(inputs: Inputs, *overrides: str) -> tuple[DictConfig, dict[str, Any]]:
    """The loggers train.run makes from logger=[mlflow,wandb,tensorboard] (it instantiates each logger config; nothing
    is logged here, so no tracker run starts), with a trackers.json of earlier runs in the trackers' run_dir."""
    cfg = inputs.cfg("logger=[mlflow,wandb,tensorboard]", *overrides)
    for tracker in ("mlflow", "wandb"):
        run_dir = Path(cfg.logger[tracker].run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        uri = cfg.logger.mlflow.tracking_uri  # an MLflow run is continued from the same store only
        ids = {"mlflow": {**SAVED_IDS["mlflow"], "tracking_uri": uri}, "wandb": SAVED_IDS["wandb"]}
        (run_dir / "trackers.json").write_text(json.dumps(ids))
    with tensorboard_importable():
        return cfg, {name: instantiate(config) for name, config in cfg.logger.items()}


def log_dir(logger: Any) -> Path:
    return Path(logger.log_dir)


# key -> (override, what the built loggers then hold, given the config)
TRACKERS: dict[str, tuple[str, Any]] = {
    "logger/mlflow.yaml:mlflow.tracking_uri": (
        "logger.mlflow.tracking_uri=sqlite:///${run_dir}/other.db",
        lambda cfg, lg: lg["mlflow"]._tracking_uri == f"sqlite:///{cfg.run_dir}/other.db",
    ),
    "logger/mlflow.yaml:mlflow.artifact_location": (
        "logger.mlflow.artifact_location=${run_dir}/artifacts",
        lambda cfg, lg: lg["mlflow"]._artifact_location == (Path(cfg.run_dir) / "artifacts").as_uri(),
    ),
    "logger/mlflow.yaml:mlflow.experiment_name": (
        "logger.mlflow.experiment_name=other",
        lambda cfg, lg: lg["mlflow"]._experiment_name == "other",
    ),
    "logger/mlflow.yaml:mlflow.run_name": (
        "logger.mlflow.run_name=named",
        lambda cfg, lg: lg["mlflow"]._run_name == "named",
    ),
    "logger/mlflow.yaml:mlflow.tags.run_dir": (
        "logger.mlflow.tags.run_dir=tagged",
        lambda cfg, lg: lg["mlflow"].tags == {"run_dir": "tagged"},
    ),
    "logger/mlflow.yaml:mlflow.run_dir": (
        "logger.mlflow.run_dir=${run_dir}/ids",
        lambda cfg, lg: lg["mlflow"]._run_dir == Path(cfg.run_dir) / "ids",
    ),
    "logger/mlflow.yaml:mlflow.continue_run": (
        "logger.mlflow.continue_run=true",
        lambda cfg, lg: lg["mlflow"]._run_id == SAVED_IDS["mlflow"]["run_id"],
    ),
    "logger/wandb.yaml:wandb.offline": ("logger.wandb.offline=false", lambda cfg, lg: lg["wandb"]._offline is False),
    "logger/wandb.yaml:wandb.save_dir": (
        "logger.wandb.save_dir=${run_dir}/wb",
        lambda cfg, lg: lg["wandb"]._save_dir == f"{cfg.run_dir}/wb",
    ),
    "logger/wandb.yaml:wandb.project": ("logger.wandb.project=other", lambda cfg, lg: lg["wandb"]._project == "other"),
    "logger/wandb.yaml:wandb.name": ("logger.wandb.name=named", lambda cfg, lg: lg["wandb"]._name == "named"),
    "logger/wandb.yaml:wandb.run_dir": (
        "logger.wandb.run_dir=${run_dir}/ids",
        lambda cfg, lg: lg["wandb"]._run_dir == Path(cfg.run_dir) / "ids",
    ),
    "logger/wandb.yaml:wandb.continue_run": (
        "logger.wandb.continue_run=true",
        lambda cfg, lg: lg["wandb"]._wandb_init.get("id") == SAVED_IDS["wandb"]["id"],
    ),
    **{
        f"logger/tensorboard.yaml:{logger}.{key}": (f"logger.{logger}.{key}={value}", check)
        for logger in ("tensorboard", "csv")
        for key, value, check in (
            (
                "save_dir",
                "${run_dir}/elsewhere",
                lambda cfg, lg, lo=logger: log_dir(lg[lo]).is_relative_to(Path(cfg.run_dir) / "elsewhere"),
            ),
            ("name", "mine", lambda cfg, lg, lo=logger: "mine" in log_dir(lg[lo]).parts),
            ("version", "v3", lambda cfg, lg, lo=logger: log_dir(lg[lo]).name == "v3"),
        )
    },
}


@pytest.fixture(scope="module")
def default_trackers(inputs: Inputs) -> tuple[DictConfig, dict[str, Any]]:
    return tracker_loggers(inputs)


@pytest.mark.parametrize("key", list(TRACKERS))
def test_tracker_keys_reach_the_loggers(
    key: str, inputs: Inputs, default_trackers: tuple[DictConfig, dict[str, Any]]
) -> None:
    """Each key's value is in the logger built from it, and not in the one built with the defaults
    (tests/training/test_trackers.py runs MLflow and W&B for real: the run, its name, its artifacts, a continued
    run)."""
    override, holds = TRACKERS[key]
    assert holds(*tracker_loggers(inputs, override)), override
    assert not holds(*default_trackers), key


# ---------------------------------------------------------------------------------------------------------------
# The table: every option and the test that fails when it is ignored
# ---------------------------------------------------------------------------------------------------------------

EXPORT_BASELINE = "tests/training/test_options_export_baseline.py"
INFERENCE = "tests/inference/test_options_predict_evaluate_serve.py"


def here(test: str) -> str:
    return f"{THIS}::{test}"


def inference(*tests: str) -> tuple[str, ...]:
    return tuple(f"{INFERENCE}::{test}" for test in tests)


def both_sources(test: str) -> tuple[str, ...]:
    return inference(f"{test}[ckpt]", f"{test}[model_dir]")


NET_KEYS = ("arch", "pretrained", "init_seed", "dropout", "num_classes", "pool")  # model.net's, as the short names
OPTIONS: dict[str, str | tuple[str, ...]] = {
    # conf/train.yaml
    "train.yaml:seed": here("test_seed_draws_the_new_head_and_is_the_default_data_seed_and_init_seed"),
    # runs/r/train.log
    "train.yaml:run_name": "tests/training/test_train.py::test_run_log_refused_rerun_and_clean_resume",
    "train.yaml:root_dir": here("test_root_dir_holds_the_data_by_default"),
    "train.yaml:runs_dir": "tests/training/test_train.py::test_run_log_refused_rerun_and_clean_resume",  # tmp/runs/r
    "train.yaml:run_dir": here("test_run_dir_receives_config_yaml_and_is_lightnings_root"),
    "train.yaml:ckpt_path": here("test_a_run_continues_from_the_checkpoint[ckpt_path]"),
    "train.yaml:resume": here("test_a_run_continues_from_the_checkpoint[resume]"),
    "train.yaml:checkpoint_every_n_steps": here("test_checkpoint_every_n_steps_writes_last_ckpt_at_those_steps"),
    "train.yaml:test_after_fit": here("test_test_after_fit_and_report"),
    "train.yaml:report": here("test_test_after_fit_and_report"),
    "train.yaml:print_config": here("test_print_config_prints_the_composed_config"),
    "train.yaml:optimized_metric": (
        here("test_sweep_summary_optimized_metric_and_fail_on"),
        "tests/training/test_sweeps.py::test_optuna_search_continues_from_its_study",
    ),
    "train.yaml:tags": (
        "tests/training/test_trackers.py::test_mlflow_run_is_logged_and_reads_back",
        "tests/training/test_trackers.py::test_a_combination_logs_to_both_and_resume_continues_their_runs",
    ),
    "train.yaml:hydra.callbacks.sweep_summary.optimized_metric": here(
        "test_sweep_summary_optimized_metric_and_fail_on"
    ),
    "train.yaml:hydra.callbacks.sweep_summary.direction": here("test_sweep_summary_optimized_metric_and_fail_on"),
    "train.yaml:hydra.callbacks.sweep_summary.fail_on": here("test_sweep_summary_optimized_metric_and_fail_on"),
    # conf/model/gpt2.yaml (the other model configs set the same keys)
    "model/gpt2.yaml:arch": here("test_arch_shapes_the_network"),
    "model/gpt2.yaml:pretrained": here("test_pretrained_weights_are_the_files"),
    "model/gpt2.yaml:init_seed": here("test_init_seed_draws_the_random_trunk"),
    "model/gpt2.yaml:dropout": here("test_dropout_is_active_in_training"),
    "model/gpt2.yaml:num_classes": here("test_num_classes_must_be_the_datas"),
    "model/gpt2.yaml:trainable_layers": here("test_trainable_layers_choose_what_the_step_changes"),
    "model/gpt2.yaml:pool": here("test_pool_chooses_the_position_read"),
    "model/gpt2.yaml:lr": (
        here("test_lr_and_weight_decay_make_the_optimizer_step[layers]"),
        here("test_lr_and_weight_decay_make_the_optimizer_step[lora]"),
    ),
    "model/gpt2.yaml:weight_decay": (
        here("test_lr_and_weight_decay_make_the_optimizer_step[layers]"),
        here("test_lr_and_weight_decay_make_the_optimizer_step[lora]"),
    ),
    **{f"model/gpt2.yaml:net.{key}": here(f"test_the_net_node_builds_the_network[{key}]") for key in NET_KEYS},
    "model/gpt2.yaml:optimizer._partial_": here("test_the_optimizer_node_is_any_torch_optimizer"),
    "model/gpt2.yaml:optimizer.lr": here("test_the_optimizer_node_is_any_torch_optimizer"),
    "model/gpt2.yaml:optimizer.weight_decay": (
        here("test_lr_and_weight_decay_make_the_optimizer_step[layers]"),
        here("test_lr_and_weight_decay_make_the_optimizer_step[lora]"),
    ),
    "model/gpt2.yaml:scheduler": "tests/training/test_classifier.py::test_cosine_scheduler_steps_per_optimizer_step",
    "model/gpt2.yaml:warmup_steps": "tests/training/test_classifier.py::test_cosine_scheduler_steps_per_optimizer_step",
    "model/gpt2.yaml:cache_frozen": here("test_cache_frozen_false_attaches_no_feature_cache"),
    "model/gpt2.yaml:cache_dir": (
        "tests/training/test_trunk_store.py::test_a_second_run_reads_the_trunk_from_disk_and_trains_identically"
    ),
    "model/gpt2.yaml:cache_max_gb": (
        "tests/training/test_trunk_store.py::test_the_size_limit_drops_least_recently_used_trunks"
    ),
    "model/gpt2.yaml:compile": here("test_compile_compiles_the_blocks"),
    # runs where CUDA is (skipped on CPUs: TF32 is a CUDA matmul mode, nothing to observe elsewhere)
    "model/gpt2.yaml:tf32": (
        here("test_tf32_sets_the_matmul_precision_on_cuda[True]"),
        here("test_tf32_sets_the_matmul_precision_on_cuda[False]"),
    ),
    "model/gpt2.yaml:finetune": here("test_finetune_lora_trains_only_the_adapters"),
    "model/gpt2.yaml:lora.rank": here("test_lora_rank_alpha_dropout_and_targets"),
    "model/gpt2.yaml:lora.alpha": here("test_lora_rank_alpha_dropout_and_targets"),
    "model/gpt2.yaml:lora.dropout": here("test_lora_rank_alpha_dropout_and_targets"),
    "model/gpt2.yaml:lora.targets": here("test_lora_rank_alpha_dropout_and_targets"),
    # conf/data/sms_spam.yaml's own keys
    "data/sms_spam.yaml:source": here("test_sms_source_urls_and_data_dir"),
    "data/sms_spam.yaml:data_dir": here("test_sms_source_urls_and_data_dir"),
    "data/sms_spam.yaml:urls": here("test_sms_source_urls_and_data_dir"),
    "data/sms_spam.yaml:verify_checksum": here("test_sms_verify_checksum"),
    # conf/data/csv.yaml's own keys
    "data/csv.yaml:path": here("test_csv_path_is_the_data"),
    "data/csv.yaml:train_file": here("test_csv_three_files_are_the_splits"),
    "data/csv.yaml:validation_file": here("test_csv_three_files_are_the_splits"),
    "data/csv.yaml:test_file": here("test_csv_three_files_are_the_splits"),
    "data/csv.yaml:text_column": here("test_csv_text_column_and_label_column"),
    "data/csv.yaml:label_column": here("test_csv_text_column_and_label_column"),
    "data/csv.yaml:delimiter": here("test_csv_delimiter"),
    "data/csv.yaml:classes": here("test_csv_classes_give_the_class_ids"),
    "data/csv.yaml:fractions": here("test_csv_fractions_stratify_and_balance"),
    "data/csv.yaml:stratify": here("test_csv_fractions_stratify_and_balance"),
    "data/csv.yaml:balance": here("test_csv_fractions_stratify_and_balance"),
    "data/csv.yaml:positive_class": (
        "tests/inference/test_positive_class.py::test_training_metrics_are_the_positive_class_s"
    ),
    # the trainer, callbacks and logger keys that LIGHTNING does not hold
    "trainer/default.yaml:accelerator": here("test_accelerator"),
    "trainer/default.yaml:fast_dev_run": here("test_fast_dev_run"),
    "trainer/default.yaml:plugins": here("test_plugins_write_checkpoints_atomically"),
    "callbacks/default.yaml:last_every_n_steps_and_on_interrupt.dirpath": here(
        "test_checkpoint_every_n_steps_writes_last_ckpt_at_those_steps"
    ),
    "callbacks/default.yaml:last_every_n_steps_and_on_interrupt.every_n_steps": here(
        "test_checkpoint_every_n_steps_writes_last_ckpt_at_those_steps"
    ),
    # conf/export.yaml
    "export.yaml:ckpt_path": f"{EXPORT_BASELINE}::test_export_ckpt_path_out_dir_and_format",
    "export.yaml:out_dir": f"{EXPORT_BASELINE}::test_export_ckpt_path_out_dir_and_format",
    "export.yaml:format": f"{EXPORT_BASELINE}::test_export_ckpt_path_out_dir_and_format",
    "export.yaml:overwrite": f"{EXPORT_BASELINE}::test_export_overwrite_replaces_only_our_files",
    "export.yaml:tokenizer_file": f"{EXPORT_BASELINE}::test_export_tokenizer_file_is_the_vocabulary_read",
    # conf/baseline.yaml (its data group: the data configs above)
    **dict.fromkeys(
        (
            "baseline.yaml:seed",
            "baseline.yaml:root_dir",
            "baseline.yaml:out_dir",
            "baseline.yaml:max_features",
            "baseline.yaml:C",
            "baseline.yaml:max_iter",
        ),
        f"{EXPORT_BASELINE}::test_baseline_options_against_sklearn",
    ),
    "baseline.yaml:model.pool": "untestable: it only resolves the data config's padding=auto (data.pool: "
    "${model.pool}); the baseline makes no tokens, so no value of it can change what baseline.py computes",
    # the keys both data configs have: each file's own entry
    **{
        f"data/{data}.yaml:{key}": here(f"{test}[{data}]")
        for data in DATA
        for key, test in (
            ("tokenizer_file", "test_tokenizer_file_and_tokenizer_url"),
            ("tokenizer_url", "test_tokenizer_file_and_tokenizer_url"),
            ("padding", "test_padding_and_max_length"),
            ("max_length", "test_padding_and_max_length"),
            ("pool", "test_pool_last_pads_every_batch_to_the_longest_training_text"),
            ("bucket_by_length", "test_bucket_by_length_reduces_the_padding"),
            ("batch_size", "test_batch_size_eval_batch_size_and_drop_last"),
            ("eval_batch_size", "test_batch_size_eval_batch_size_and_drop_last"),
            ("drop_last", "test_batch_size_eval_batch_size_and_drop_last"),
            ("num_workers", "test_num_workers_and_pin_memory_reach_the_loaders"),
            ("pin_memory", "test_num_workers_and_pin_memory_reach_the_loaders"),
            ("seed", "test_data_seed_makes_the_split"),
        )
    },
    **{key: here(f"test_lightning_keys_reach_the_trainer_callbacks_and_logger[{key}]") for key in LIGHTNING},
}
OPTIONS["data/csv.yaml:seed"] = (
    here("test_data_seed_makes_the_split[csv]"),
    here("test_data_seed_makes_the_training_order"),
)
# the trackers' logger configs (logger/many.yaml only combines them), and the runs tests/training/test_trackers.py
# reads back
OPTIONS |= {key: here(f"test_tracker_keys_reach_the_loggers[{key}]") for key in TRACKERS}
for tracker in ("mlflow", "wandb"):
    OPTIONS[f"logger/{tracker}.yaml:{tracker}.continue_run"] = (
        here(f"test_tracker_keys_reach_the_loggers[logger/{tracker}.yaml:{tracker}.continue_run]"),
        "tests/training/test_trackers.py::test_a_combination_logs_to_both_and_resume_continues_their_runs",
    )
# conf/predict.yaml
OPTIONS |= {
    "predict.yaml:ckpt_path": inference("test_predict_ckpt_path_and_model_dir_are_the_model_read[ckpt]"),
    "predict.yaml:model_dir": inference("test_predict_ckpt_path_and_model_dir_are_the_model_read[model_dir]"),
    "predict.yaml:text": inference("test_predict_text_one_or_a_list"),
    "predict.yaml:input_file": inference("test_predict_input_file_and_column"),
    "predict.yaml:column": inference("test_predict_input_file_and_column"),
    "predict.yaml:output": inference("test_predict_output_and_format"),
    "predict.yaml:format": inference("test_predict_output_and_format"),
    "predict.yaml:batch_size": inference("test_predict_batch_size_is_the_texts_per_forward_pass"),
    "predict.yaml:threshold": inference("test_predict_threshold_gives_the_labels"),
    "predict.yaml:device": inference("test_predict_device"),  # on the GPU where there is one
    "predict.yaml:precision": inference("test_predict_precision_bf16_runs_in_bfloat16"),
    "predict.yaml:backend": "tests/inference/test_export_onnx.py::test_predict_py_with_onnxruntime",
    "predict.yaml:tokenizer_file": both_sources("test_predict_tokenizer_file_is_the_vocabulary_read"),
}
# conf/evaluate.yaml
OPTIONS |= {
    **dict.fromkeys(
        ("evaluate.yaml:ckpt_path", "evaluate.yaml:split"),
        inference("test_evaluate_ckpt_path_and_split[validation]", "test_evaluate_ckpt_path_and_split[test]"),
    ),
    **dict.fromkeys(
        ("evaluate.yaml:model_dir", "evaluate.yaml:data_file", "evaluate.yaml:column", "evaluate.yaml:label_column"),
        inference("test_evaluate_model_dir_data_file_column_and_label_column"),
    ),
    "evaluate.yaml:data_dir": inference("test_evaluate_data_dir_is_where_the_splits_are_read"),
    "evaluate.yaml:threshold": inference("test_evaluate_threshold_is_the_metrics"),
    "evaluate.yaml:target_precision": inference("test_evaluate_target_precision_chooses_the_threshold_on_validation"),
    "evaluate.yaml:batch_size": inference("test_evaluate_batch_size"),
    "evaluate.yaml:device": inference("test_evaluate_device"),
    "evaluate.yaml:tokenizer_file": inference("test_evaluate_tokenizer_file"),
    "evaluate.yaml:out_dir": inference("test_evaluate_out_dir_and_show_misclassified"),
    "evaluate.yaml:show_misclassified": inference("test_evaluate_out_dir_and_show_misclassified"),
}
# conf/serve.yaml
LITSERVE = inference("test_serve_litserve_settings_reach_the_server")
HOW_IT_RUNS = inference("test_serve_host_port_api_servers_and_log_level_are_how_it_runs")
OPTIONS |= {
    "serve.yaml:ckpt_path": inference("test_serve_ckpt_path_and_model_dir_are_the_model_served[ckpt]"),
    "serve.yaml:model_dir": inference("test_serve_ckpt_path_and_model_dir_are_the_model_served[model_dir]"),
    "serve.yaml:metrics_file": inference("test_serve_metrics_file_is_what_info_shows"),
    "serve.yaml:tokenizer_file": inference("test_serve_tokenizer_file_is_read_by_the_server_and_each_model_process"),
    **dict.fromkeys(
        ("serve.yaml:host", "serve.yaml:port", "serve.yaml:api_servers", "serve.yaml:log_level"), HOW_IT_RUNS
    ),
    "serve.yaml:threshold": inference("test_serve_threshold_is_the_default_of_every_request"),
    "serve.yaml:batch_size": inference("test_serve_batch_size_is_the_texts_per_forward_pass"),
    **{
        f"serve.yaml:{key}": LITSERVE
        for key in ("max_batch_size", "batch_timeout", "workers", "fast_queue", "request_timeout")
    },
    **dict.fromkeys(
        ("serve.yaml:device", "serve.yaml:devices"),
        inference("test_serve_device_and_devices_choose_the_model_processes_devices"),
    ),
    "serve.yaml:threads": inference("test_serve_threads_are_each_model_process_s_torch_threads"),
    "serve.yaml:precision": inference("test_serve_precision_bf16"),
    "serve.yaml:backend": inference("test_serve_backend_onnxruntime_runs_model_onnx"),
    **{
        f"serve.yaml:limits.{key}": inference("test_serve_limits_refuse_larger_requests")
        for key in ("max_texts", "max_text_bytes", "max_request_bytes")
    },
}
# the fields of a POST /predict request: {"text": ...} and {"texts": [...]}, each optionally with "threshold"
OPTIONS |= {
    "POST /predict:text": inference(
        "test_request_text_texts_and_threshold[text]", "test_request_fields_pass_the_guard"
    ),
    "POST /predict:texts": inference(
        "test_request_text_texts_and_threshold[texts]", "test_request_fields_pass_the_guard"
    ),
    **{
        f"POST /predict:threshold[{form}]": (
            *inference(f"test_request_text_texts_and_threshold[{form}]"),
            "tests/inference/test_serve.py::test_threshold_and_per_text_errors",
        )
        for form in ("text", "texts")
    },
}

# The config files whose keys are options.
OPTION_FILES = (
    "train.yaml", "model/gpt2.yaml", "data/sms_spam.yaml", "data/csv.yaml", "trainer/default.yaml",
    "callbacks/default.yaml", "callbacks/early_stopping.yaml", "logger/csv.yaml", "logger/mlflow.yaml",
    "logger/wandb.yaml", "logger/tensorboard.yaml", "logger/many.yaml", "export.yaml", "baseline.yaml",
    "predict.yaml", "evaluate.yaml", "serve.yaml",
)  # fmt: skip
REQUEST_FORMS = ("text", "texts")  # a request gives one of them
NOT_OPTIONS = ("defaults", "_target_", "_convert_")


def option_keys(file: str) -> list[str]:
    """The dotted keys of a config file's values (lists are one value); of `hydra:`, only our sweep summary's."""
    config = OmegaConf.to_container(OmegaConf.load(CONF / file), resolve=False)
    assert isinstance(config, dict)
    hydra = config.pop("hydra", {})
    summary = hydra.get("callbacks", {}).get("sweep_summary") if isinstance(hydra, dict) else None
    if summary:
        config["hydra"] = {"callbacks": {"sweep_summary": summary}}

    def walk(node: dict[str, Any], prefix: str) -> Iterator[str]:
        for key, value in node.items():
            if key in NOT_OPTIONS:
                continue
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    return [f"{file}:{key}" for key in walk(config, "")]


def request_keys() -> list[str]:
    """The fields of the request models FastAPI validates a POST /predict body with (serve_requests.request_models):
    "text" and "texts", and every other field once per form."""
    models = serve_requests.request_models(serve_requests.Limits(max_texts=1, max_text_bytes=1, max_request_bytes=1))
    fields = sorted({name for model in models for name in model.model_fields})
    assert set(REQUEST_FORMS) <= set(fields)
    others = [f"{field}[{form}]" for field in fields if field not in REQUEST_FORMS for form in REQUEST_FORMS]
    return [f"POST /predict:{key}" for key in (*REQUEST_FORMS, *others)]


def test_every_option_has_an_entry() -> None:
    keys = [key for file in OPTION_FILES for key in option_keys(file)] + request_keys()
    assert "POST /predict:threshold[text]" in keys
    assert len(keys) > 100
    assert sorted(set(keys) - set(OPTIONS)) == [], "options without a test (add an entry to OPTIONS)"
    assert sorted(set(OPTIONS) - set(keys)) == [], "entries for keys no config file has"


def test_every_entry_names_a_test_that_exists() -> None:
    """Each entry is "untestable: why", or tests as FILE::NAME[PARAM] whose function exists (and whose parameter
    is one of its cases, for this file's parametrized tests)."""
    functions: dict[str, set[str]] = {}
    for key, entry in OPTIONS.items():
        if isinstance(entry, str) and entry.startswith("untestable: "):
            assert len(entry) > 40, key  # with the reason
            continue
        for test in (entry,) if isinstance(entry, str) else entry:
            file, _, name = test.partition("::")
            if file not in functions:
                tree = ast.parse((REPO / file).read_text(encoding="utf-8"))
                functions[file] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            function, _, param = name.partition("[")
            assert function in functions[file], f"{key}: {test}"
            if file in (THIS, INFERENCE) and param:
                cases = {
                    "test_lightning_keys_reach_the_trainer_callbacks_and_logger": set(LIGHTNING),
                    "test_tracker_keys_reach_the_loggers": set(TRACKERS),
                    "test_a_run_continues_from_the_checkpoint": {"ckpt_path", "resume"},
                    "test_lr_and_weight_decay_make_the_optimizer_step": {"layers", "lora"},
                    "test_the_net_node_builds_the_network": set(NET_KEYS),
                    "test_tf32_sets_the_matmul_precision_on_cuda": {"True", "False"},
                    "test_evaluate_ckpt_path_and_split": {"validation", "test"},
                    "test_request_text_texts_and_threshold": set(REQUEST_FORMS),
                }.get(function, set(DATA) if file == THIS else {"ckpt", "model_dir"})
                assert param.removesuffix("]") in cases, f"{key}: {test}"
