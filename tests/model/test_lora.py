"""LoRA fine-tuning (appendix E), checked against PEFT's LoRA on transformers' GPT-2 as an independent oracle.

The book's LoRA and PEFT's compute the same function once three differences are mapped:
- scaling: the book adds alpha * x A B, PEFT (lora_alpha / r) * x A' B' (lora_alpha / sqrt(r) with use_rslora);
- layout: PEFT stores lora_A.weight (r, in) = A^T and lora_B.weight (out, r) = B^T;
- the fused query/key/value: transformers' GPT-2 has one Conv1D c_attn (d -> 3d) where the book has three Linear
  layers, each with its own adapter. One PEFT adapter of rank 3r on c_attn reproduces the three exactly:
  A_fused = [A_q A_k A_v] (d, 3r) and B_fused = blockdiag(B_q, B_k, B_v) (3r, 3d), so that
  x A_fused B_fused = [x A_q B_q, x A_k B_k, x A_v B_v]. Its scaling alpha * 3r / 3r stays the book's alpha when
  its lora_alpha is alpha * 3r (PEFT's rank_pattern / alpha_pattern). The gradients of the diagonal blocks are
  the three adapters' gradients (the off-diagonal blocks are extra PEFT parameters, zero here and not compared).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers.local_internet import write_gpt2_safetensors
from helpers.smoke import REPO, compose_cfg, make_nontrivial, train_smoke
from helpers.user_machine import SHORT
from hydra.utils import instantiate

from spam_lightning.data.modules import SmsSpamDataModule
from spam_lightning.data.preprocess import get_tokenizer
from spam_lightning.data.sms_spam import parse_split_csv, read_split_file, splits_dir
from spam_lightning.errors import ConfigError
from spam_lightning.files import file_sha256
from spam_lightning.inference.checkpoint import RECORD_KEY, load_trained, read_checkpoint
from spam_lightning.inference.evaluate import load_split
from spam_lightning.inference.export import export_checkpoint
from spam_lightning.inference.predictor import Predictor
from spam_lightning.model.gpt import PRESETS, GPTModel, make_config
from spam_lightning.model.lora import BOOK_TARGETS, LoRAConfig, LoRALinear, apply_lora, merge_lora
from spam_lightning.model.net import SpamNet
from spam_lightning.model.weights import convert_hf_state_dict, read_safetensors, to_hf_state_dict
from spam_lightning.training.module import SpamClassifier
from spam_lightning.training.run import module_config
from spam_lightning.training.run import run as train_run

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TINY = {"vocab_size": 50257, "context_length": 128, "emb_dim": 64, "n_layers": 2, "n_heads": 4}
PAD = 50256  # GPT-2's <|endoftext|>, the pad token of transformers' GPT2ForSequenceClassification
# (our layer in a block, transformers' module in h.{i}); query/key/value go to c_attn together
HF_MODULES = {"att.out_proj": "attn.c_proj", "ff.layers.0": "mlp.c_fc", "ff.layers.2": "mlp.c_proj"}
QKV = ("att.W_query", "att.W_key", "att.W_value")


def peft_lora_alpha(book_alpha: float, peft_rank: int, use_rslora: bool = False) -> float:
    """PEFT's lora_alpha with the book's scaling: PEFT multiplies by lora_alpha / r (or / sqrt(r))."""
    return book_alpha * (math.sqrt(peft_rank) if use_rslora else peft_rank)


@pytest.fixture(scope="module")
def test_texts(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> list[str]:
    """Real SMS texts: the test split, made from the UCI zip as training makes it (seed 123)."""
    data_dir = tmp_path_factory.mktemp("data")
    SmsSpamDataModule(
        source=str(sms_zip), data_dir=str(data_dir), seed=123, tokenizer_file=tokenizer_file
    ).prepare_data()
    path = splits_dir(data_dir, 123) / "test.csv"
    return parse_split_csv(read_split_file(path)[0], path)["text"].tolist()


def batch(texts: list[str], tokenizer_file: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids (with the pad token) and true lengths."""
    enc = get_tokenizer(tokenizer_file)
    ids = [enc.encode_ordinary(t)[:limit] for t in texts]
    lengths = torch.tensor([len(i) for i in ids])
    padded = torch.full((len(ids), int(lengths.max())), PAD)
    for row, i in enumerate(ids):
        padded[row, : len(i)] = torch.tensor(i)
    return padded, lengths


def lora_net(arch: dict[str, Any] | str, config: LoRAConfig, seed: int) -> SpamNet:
    """A random SpamNet (pool=last_token, head without bias as transformers' score) with adapters whose A and B
    are both non-zero, so that every adapter changes the logits."""
    torch.manual_seed(seed)
    net = make_nontrivial(SpamNet(GPTModel(make_config(arch)), 2, "last_token"))
    with torch.no_grad():
        net.gpt.out_head.bias.zero_()
    apply_lora(net, config)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_(0.0, 0.02)
    return net.eval()


def peft_twin(net: SpamNet, config: LoRAConfig, use_rslora: bool = False) -> torch.nn.Module:
    """transformers' GPT2ForSequenceClassification with the same base weights, under PEFT's LoRA with the same
    adapter values (the module docstring's mapping)."""
    cfg, r = net.gpt.cfg, config.rank
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        num_labels=2, pad_token_id=PAD, layer_norm_epsilon=1e-5,
    )  # fmt: skip
    model = transformers.GPT2ForSequenceClassification(hf_cfg).eval()
    base = {k: v for k, v in net.gpt.state_dict().items() if not k.startswith("out_head.") and "lora_" not in k}
    hf = {f"transformer.{k}": v for k, v in to_hf_state_dict(base, cfg).items()}
    missing, unexpected = model.load_state_dict(hf | {"score.weight": net.gpt.out_head.weight.detach()}, strict=False)
    assert not unexpected and all(".attn.bias" in k or ".attn.masked_bias" in k for k in missing), missing
    alpha = config.alpha
    lora_config = peft.LoraConfig(
        r=r,
        lora_alpha=peft_lora_alpha(alpha, r, use_rslora),
        target_modules=["c_attn", "c_proj", "c_fc", "score"],
        rank_pattern={"c_attn": 3 * r},
        alpha_pattern={"c_attn": peft_lora_alpha(alpha, 3 * r, use_rslora)},
        lora_dropout=0.0,
        use_rslora=use_rslora,
        init_lora_weights=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fan_in_fan_out for Conv1D, set by PEFT itself
        twin = peft.get_peft_model(model, lora_config)
    params = dict(twin.named_parameters())

    def put(module: str, a: torch.Tensor, b: torch.Tensor) -> None:
        with torch.no_grad():
            params[f"base_model.model.{module}.lora_A.default.weight"].copy_(a.t())
            params[f"base_model.model.{module}.lora_B.default.weight"].copy_(b.t())

    for i, block in enumerate(net.gpt.trf_blocks):
        qkv = [block.get_submodule(name) for name in QKV]
        put(
            f"transformer.h.{i}.attn.c_attn",
            torch.cat([m.lora_A for m in qkv], 1),
            torch.block_diag(*(m.lora_B for m in qkv)),
        )
        for ours, theirs in HF_MODULES.items():
            m = block.get_submodule(ours)
            put(f"transformer.h.{i}.{theirs}", m.lora_A, m.lora_B)
    put("score", net.gpt.out_head.lora_A, net.gpt.out_head.lora_B)
    return twin.eval()


def compare(
    net: SpamNet, twin: torch.nn.Module, ids: torch.Tensor, lengths: torch.Tensor
) -> tuple[float, float, float]:
    """max |logit difference|, max |A/B gradient difference| (of the cross-entropy) and the logits' std."""
    labels = torch.arange(len(ids)) % 2
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    ours = net(ids, lengths)
    theirs = twin(input_ids=ids, attention_mask=mask).logits
    F.cross_entropy(ours, labels).backward()
    F.cross_entropy(theirs, labels).backward()
    grads = {n: p.grad for n, p in twin.named_parameters() if "lora_" in n}

    def theirs_of(module: str, which: str) -> torch.Tensor:
        return grads[f"base_model.model.{module}.{which}.default.weight"].t()

    diffs = []
    r = net.gpt.trf_blocks[0].att.W_query.lora_A.shape[1] if net.gpt.cfg.n_layers else 0
    for i, block in enumerate(net.gpt.trf_blocks):
        fused_a, fused_b = (
            theirs_of(f"transformer.h.{i}.attn.c_attn", "lora_A"),
            theirs_of(f"transformer.h.{i}.attn.c_attn", "lora_B"),
        )
        d = net.gpt.cfg.emb_dim
        for j, name in enumerate(QKV):
            m = block.get_submodule(name)
            diffs.append((m.lora_A.grad - fused_a[:, j * r : (j + 1) * r]).abs().max())
            diffs.append((m.lora_B.grad - fused_b[j * r : (j + 1) * r, j * d : (j + 1) * d]).abs().max())
        for ours_name, hf_name in HF_MODULES.items():
            m = block.get_submodule(ours_name)
            diffs.append((m.lora_A.grad - theirs_of(f"transformer.h.{i}.{hf_name}", "lora_A")).abs().max())
            diffs.append((m.lora_B.grad - theirs_of(f"transformer.h.{i}.{hf_name}", "lora_B")).abs().max())
    head = net.gpt.out_head
    diffs.append((head.lora_A.grad - theirs_of("score", "lora_A")).abs().max())
    diffs.append((head.lora_B.grad - theirs_of("score", "lora_B")).abs().max())
    assert all(p.grad is not None and p.grad.abs().max() > 0 for n, p in net.named_parameters() if "lora_" in n)
    return float((ours - theirs).detach().abs().max()), float(max(diffs)), float(ours.detach().std())


BOOK = LoRAConfig(rank=4, alpha=2.0)  # the book's targets: every Linear, the head included


@pytest.mark.parametrize("use_rslora", [False, True])
def test_peft_oracle_gives_the_same_logits_and_adapter_gradients(
    test_texts: list[str], tokenizer_file: str, use_rslora: bool
) -> None:
    net = lora_net(TINY, BOOK, seed=0)
    ids, lengths = batch(test_texts[:16], tokenizer_file, 128)
    twin = peft_twin(net, BOOK, use_rslora)
    logit_diff, grad_diff, scale = compare(net, twin, ids, lengths)
    print(f"tiny GPT-2 + LoRA vs PEFT: max |logit diff| {logit_diff:.3g}, max |A/B grad diff| {grad_diff:.3g}")
    assert scale > 0.1  # logits far from constant: a small difference means something
    assert logit_diff <= 1e-5 and grad_diff <= 1e-5


def test_peft_oracle_on_the_124m_architecture(test_texts: list[str], tokenizer_file: str) -> None:
    """In float64: float32 rounding through 12 blocks of width 768 alone differs by a few 1e-5 between any two
    implementations (the tiny model above is compared in float32). 9 s on our CPU, 25 s under load."""
    config = LoRAConfig(rank=16, alpha=16.0)  # the book's
    net = lora_net("gpt2", config, seed=1)
    ids, lengths = batch(test_texts[:2], tokenizer_file, 32)
    twin = peft_twin(net, config).double()
    logit_diff, grad_diff, _ = compare(net.double(), twin, ids, lengths)
    print(f"124M + LoRA vs PEFT: max |logit diff| {logit_diff:.3g}, max |A/B grad diff| {grad_diff:.3g}")
    assert logit_diff <= 1e-5 and grad_diff <= 1e-5


def test_the_scaling_mapping_is_needed() -> None:
    """PEFT with lora_alpha = the book's alpha (scaling alpha / r) is not the book's LoRA; peft_lora_alpha maps it."""
    assert peft_lora_alpha(16.0, 16) == 256.0 and peft_lora_alpha(16.0, 16, use_rslora=True) == 64.0
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 6)
    ours = LoRALinear(layer, rank=4, alpha=3.0)
    torch.nn.init.normal_(ours.lora_B)
    x = torch.randn(5, 8)

    def peft_delta(lora_alpha: float, use_rslora: bool) -> torch.Tensor:
        model = torch.nn.Sequential(torch.nn.Linear(8, 6))
        model[0].load_state_dict(layer.state_dict())
        config = peft.LoraConfig(r=4, lora_alpha=lora_alpha, target_modules=["0"], use_rslora=use_rslora)
        twin = peft.get_peft_model(model, config)
        lora = twin.base_model.model[0]
        with torch.no_grad():
            lora.lora_A["default"].weight.copy_(ours.lora_A.t())
            lora.lora_B["default"].weight.copy_(ours.lora_B.t())
            return twin(x) - layer(x)

    with torch.no_grad():
        delta = ours(x) - layer(x)
    assert delta.abs().max() > 0.1
    assert torch.allclose(peft_delta(3.0, use_rslora=False) * 4, delta, atol=1e-5)  # off by r without the mapping
    assert torch.allclose(peft_delta(3.0, use_rslora=True) * 2, delta, atol=1e-5)  # by sqrt(r) with rsLoRA
    for use_rslora in (False, True):
        assert torch.allclose(peft_delta(peft_lora_alpha(3.0, 4, use_rslora), use_rslora), delta, atol=1e-6)


def test_merging_the_adapters_gives_the_same_outputs(test_texts: list[str], tokenizer_file: str) -> None:
    net = lora_net(TINY, BOOK, seed=2)
    ids, lengths = batch(test_texts[:16], tokenizer_file, 128)
    with torch.no_grad():
        before = net(ids, lengths)
        merge_lora(net)
        after = net(ids, lengths)
    assert not any(isinstance(m, LoRALinear) for m in net.modules())
    assert all("lora_" not in name for name in net.state_dict())
    assert set(net.state_dict()) == set(SpamNet(GPTModel(make_config(TINY)), 2, "last_token").state_dict())
    print(f"merged: max |logit diff| {(before - after).abs().max():.3g}")
    assert (before - after).abs().max() <= 1e-5


def test_the_books_trainable_count_for_124m() -> None:
    """Appendix E: 2,666,528 trainable parameters (rank 16 on every Linear of GPT-2 124M and the 2-class head)."""
    model = instantiate(module_config(compose_cfg("train", "experiment=book-lora", "model.pretrained=null").model))
    assert model.num_trainable_parameters == 2_666_528
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert model.feature_cache is None and "every block has adapters" in model.cache_off_reason
    assert (
        sum(p.numel() for p in model.parameters())
        == sum(p.numel() for p in SpamNet(GPTModel(PRESETS["gpt2"]), 2, "last").parameters()) + 2_666_528
    )


@pytest.mark.parametrize(
    ("targets", "trainable", "cache"),
    [
        (["attention"], 2 * 4 * 2 * (64 + 64) + 64 * 2 + 2, False),  # the head has no adapter: it trains in full
        (["query", "ff_out"], 2 * 2 * (64 + 64 + 4 * 64 + 64) + 64 * 2 + 2, False),
        (["head"], 2 * (64 + 2), True),  # no block has adapters: the frozen-feature cache applies again
    ],
)
def test_targets_choose_what_trains(targets: list[str], trainable: int, cache: bool) -> None:
    model = SpamClassifier.from_options(
        arch=TINY, pretrained=None, finetune="lora", lora={"rank": 2, "targets": targets}
    )
    assert model.num_trainable_parameters == trainable
    assert (model.feature_cache is not None) == cache
    assert SpamClassifier.from_options(arch=TINY, pretrained=None, finetune="lora").lora == LoRAConfig()  # the book's


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.lora.rank=0", "model.lora.rank=0: expected an integer >= 1"),
        ("model.lora.rank=2.5", "model.lora.rank=2.5: expected an integer >= 1"),
        ("model.lora.alpha=nan", "model.lora.alpha=nan: expected a finite number"),
        ("model.lora.dropout=1.0", r"model.lora.dropout=1.0: expected a number in \[0, 1\)"),
        ("model.lora.targets=[attention,mlp]", "expected a non-empty list of attention, feed_forward, all, query"),
        ("model.finetune=adapters", r"model.finetune must be one of \['layers', 'lora'\]"),
    ],
)
def test_bad_lora_options_are_one_line_errors(override: str, message: str, tmp_path: Path) -> None:
    """Refused before any download or training, in one line naming the key."""
    cfg = compose_cfg(
        "train",
        "experiment=smoke",
        f"run_dir={tmp_path / 'run'}",
        "data.source=http://127.0.0.1:9/never-downloaded.zip",
        f"data.data_dir={tmp_path / 'data'}",
        "model.finetune=lora",
        override,
    )
    with pytest.raises(Exception, match=message) as err:  # Hydra's InstantiationException around our ConfigError
        train_run(cfg)
    cause = err.value.__cause__ or err.value
    assert isinstance(cause, ConfigError) and "\n" not in str(cause) and not (tmp_path / "data").exists()


# --- a LoRA run: checkpoints, prediction, export ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> dict[str, Any]:
    """A one-epoch LoRA smoke run (tiny model) on a tiny pretrained weights file: small checkpoints."""
    tmp = tmp_path_factory.mktemp("lora")
    arch = make_config(compose_cfg("train", "experiment=smoke").model.arch)
    weights = write_gpt2_safetensors(tmp / "weights" / "model.safetensors", arch, seed=1)
    overrides = (f"model.pretrained={weights}", "model.finetune=lora", "model.lora.rank=4", "model.lora.alpha=2")
    metrics = train_smoke(tmp, sms_zip, tokenizer_file, *overrides)
    return {"tmp": tmp, "weights": weights, "metrics": metrics, "ckpt": Path(metrics["best_checkpoint"])}


def test_lora_checkpoints_hold_the_adapters_and_the_head(lora_run: dict[str, Any]) -> None:
    d, n_layers, r = 64, 2, 4  # the tiny model; every Linear has a rank-4 adapter
    per_block = 4 * r * (d + d) + r * (d + 4 * d) + r * (4 * d + d)
    assert lora_run["metrics"]["parameters"]["trainable"] == n_layers * per_block + r * (d + 2)
    last = lora_run["ckpt"].parent / "last.ckpt"
    for path in (lora_run["ckpt"], last):
        ckpt = read_checkpoint(path)
        record = ckpt[RECORD_KEY]
        assert record["lora"] == {"rank": 4, "alpha": 2.0, "dropout": 0.0, "targets": list(BOOK_TARGETS)}
        assert record["frozen_weights"]["sha256"] == file_sha256(lora_run["weights"])
        keys = set(ckpt["state_dict"])
        head = {f"net.gpt.out_head.{name}" for name in ("weight", "bias", "lora_A", "lora_B")}
        assert head <= keys and all("lora_" in k for k in keys - head), sorted(keys)
        assert len(keys) == 2 * (6 * n_layers + 1) + 2
    assert "optimizer_states" in read_checkpoint(last)

    # load_trained: frozen weights from the file + adapters, merged into a plain network computing the same
    model = load_trained(lora_run["ckpt"])
    assert not any(isinstance(m, LoRALinear) for m in model.net.modules())
    unmerged = SpamNet.from_args(model.net.args())
    apply_lora(unmerged, LoRAConfig.from_dict(read_checkpoint(lora_run["ckpt"])[RECORD_KEY]["lora"]))
    frozen = convert_hf_state_dict(read_safetensors(lora_run["weights"]), unmerged.gpt.cfg)
    trained = {k.removeprefix("net."): v for k, v in read_checkpoint(lora_run["ckpt"])["state_dict"].items()}
    unmerged.load_state_dict({f"gpt.{k}": v for k, v in frozen.items()} | trained)
    assert unmerged.gpt.trf_blocks[0].att.W_query.lora_B.abs().max() > 0  # the adapters trained
    ids = torch.randint(0, 50256, (4, 20))
    with torch.no_grad():
        assert (unmerged.eval()(ids, torch.full((4,), 20)) - model.net(ids, torch.full((4,), 20))).abs().max() < 1e-5


def test_lora_exports_need_no_lora_code(lora_run: dict[str, Any], tmp_path: Path) -> None:
    """Our format and format=hf (loaded by transformers) predict what the checkpoint predicts: the adapters are
    merged, so neither needs LoRA code (format=onnx: below)."""
    predictor = Predictor.from_checkpoint(lora_run["ckpt"], device="cpu")
    texts, _ = load_split(predictor, "test")
    ours = predictor.positive_probabilities(texts)[0]

    export_checkpoint(lora_run["ckpt"], tmp_path / "own", format="spam_lightning")
    assert Predictor.from_dir(tmp_path / "own").positive_probabilities(texts)[0] == ours
    record = json.loads((tmp_path / "own" / "spam_lightning.json").read_text())
    assert record["training"]["lora"]["rank"] == 4

    export_checkpoint(lora_run["ckpt"], tmp_path / "hf", format="hf")
    assert "LoRA (the book's appendix E): rank 4, alpha 2 adapters" in (tmp_path / "hf" / "README.md").read_text()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        hf = model(**tokenizer(texts, truncation=True, padding=True, return_tensors="pt")).logits.softmax(-1)[:, 1]
    diff = max(abs(a - b) for a, b in zip(hf.tolist(), ours, strict=True))
    print(f"LoRA run exported for transformers: max |P(spam) - predict.py's| {diff:.3g}")
    assert diff <= 1e-5


@pytest.mark.slow  # the ONNX export
def test_lora_onnx_export_needs_no_lora_code(lora_run: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    predictor = Predictor.from_checkpoint(lora_run["ckpt"], device="cpu")
    texts, _ = load_split(predictor, "test")
    export_checkpoint(lora_run["ckpt"], tmp_path / "onnx", format="onnx")
    onnx = Predictor.from_dir(tmp_path / "onnx", backend="onnxruntime").positive_probabilities(texts)[0]
    assert max(abs(a - b) for a, b in zip(onnx, predictor.positive_probabilities(texts)[0], strict=True)) <= 1e-5


# --- the README's commands ----------------------------------------------------------------------------------------


def cli(tmp: Path, *args: str, sms_zip: Path, tokenizer_file: str) -> subprocess.CompletedProcess:
    """`python train.py ARGS` from the repository, offline (the local data and vocabulary) and short."""
    command = [
        sys.executable, "train.py", *args, f"runs_dir={tmp / 'runs'}", f"data.source={sms_zip}",
        f"data.tokenizer_file={tokenizer_file}", f"data.data_dir={tmp / 'data'}", "report=false",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["null", "file"])
def test_book_lora_command_reports_the_books_trainable_count(
    weights: str, tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    """`python train.py experiment=book-lora model.pretrained=null` (README), and from a 124M weights file in the
    Hub's layout standing in for OpenAI's (offline): small checkpoints of the adapters and the head either way (random
    weights are remade from model.init_seed, pretrained ones from their file). One batch."""
    pretrained = "null" if weights == "null" else str(write_gpt2_safetensors(tmp_path / "model.safetensors"))
    one_batch = ("trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
    one_batch += ("trainer.limit_test_batches=1", "data.batch_size=2", "run_name=book_lora")
    args = ("experiment=book-lora", f"model.pretrained={pretrained}", *one_batch)
    done = cli(tmp_path, *args, sms_zip=sms_zip, tokenizer_file=tokenizer_file)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "trainable parameters: 2,666,528 of 127,107,874" in log
    assert "frozen-feature cache off: model.finetune=lora: every block has adapters" in log
    run_dir = tmp_path / "runs" / "book_lora"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["parameters"] == {"trainable": 2_666_528, "total": 127_107_874}
    state = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    stored = sum(t.numel() for t in state.values())
    assert stored == 2_666_528 + 768 * 2 + 2  # + the frozen head


@pytest.mark.slow
def test_lora_sweeps(tmp_path: Path, sms_zip: Path, tokenizer_file: str) -> None:
    """The README's rank grid and Optuna search over rank and lr (the smoke model, shortened)."""
    kw = {"sms_zip": sms_zip, "tokenizer_file": tokenizer_file}
    short = (*SHORT.split(), "data.eval_batch_size=100")
    done = cli(tmp_path, "-m", "experiment=smoke", "model.finetune=lora", "model.lora.rank=4,8,16",
               "run_name=lora_ranks", *short, **kw)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp_path / "runs" / "lora_ranks"
    ranks = [yaml.safe_load((sweep / job / "config.yaml").read_text())["model"]["lora"]["rank"] for job in "012"]
    assert ranks == [4, 8, 16]
    trainable = [json.loads((sweep / job / "metrics.json").read_text())["parameters"]["trainable"] for job in "012"]
    assert trainable[1] == 2 * trainable[0] and trainable[2] == 4 * trainable[0]

    search = ("-m", "hparams_search=optuna", "run_name=lora_search", "experiment=smoke", "model.finetune=lora")
    search += ("model.trainable_layers=last_block", "model.lora.rank=choice(4,8,16)", "hydra.sweeper.n_trials=2")
    done = cli(tmp_path, *search, *short, **kw)
    assert done.returncode == 0, done.stderr[-3000:]
    header, *rows = (tmp_path / "runs" / "lora_search" / "summary.csv").read_text().splitlines()
    assert {"model.lora.rank", "model.lr"} <= set(header.split(",")) and [r.split(",")[1] for r in rows] == ["ok"] * 2
    params = yaml.safe_load((tmp_path / "runs" / "lora_search" / "optimization_results.yaml").read_text())
    assert {"model.lora.rank", "model.lr"} <= set(params["best_params"])
