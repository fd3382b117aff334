"""Pretrained GPT-2 loading, checked against Hugging Face transformers' GPT-2 as the oracle (no download)."""

from __future__ import annotations

import re
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import huggingface_hub.errors
import pytest
import torch
from safetensors.torch import save_file

from spam_lightning.data.preprocess import get_tokenizer
from spam_lightning.model.gpt import PRESETS, GPTModel, make_config
from spam_lightning.model.weights import (
    HF_REVISIONS,
    PretrainedDownloadError,
    PretrainedWeightsError,
    all_finite,
    build_gpt,
    convert_hf_state_dict,
    hf_shapes,
    load_hf_state_dict,
)

transformers = pytest.importorskip("transformers")

TINY = {"vocab_size": 50257, "context_length": 128, "emb_dim": 64, "n_layers": 2, "n_heads": 4}


def hf_gpt2(seed: int, **config: int) -> transformers.GPT2LMHeadModel:
    """A randomly initialised HF GPT-2 with every weight, bias and LayerNorm parameter non-trivial."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        **config, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    weight_std = cfg.n_embd**-0.5  # logits of order 1
    with torch.no_grad():
        for name, p in model.transformer.named_parameters():
            if ".ln_" in name or name.startswith("ln_f"):
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
            else:
                p.normal_(0.0, weight_std if name.endswith("weight") else 0.1)
    return model


def hub_state(model: transformers.GPT2LMHeadModel) -> dict[str, torch.Tensor]:
    """The Hub's `model.safetensors` layout: transformer keys without prefix, the tied lm_head dropped."""
    return {k: v.detach().clone().contiguous() for k, v in model.transformer.state_dict().items()}


def sms_token_ids(sms_tsv: Path, tokenizer_file: str, n: int, max_len: int) -> list[torch.Tensor]:
    enc = get_tokenizer(tokenizer_file)
    with open(sms_tsv, encoding="utf-8") as f:
        texts = [next(f).split("\t", 1)[1].strip() for _ in range(n)]
    return [torch.tensor([enc.encode(t)[:max_len]]) for t in texts]


@torch.no_grad()
def max_logit_diff(hf_model, ours: GPTModel, batches: list[torch.Tensor]) -> tuple[float, float]:
    ours.eval()
    diffs, scale = [], []
    for ids in batches:
        expected = hf_model(ids).logits
        diffs.append((ours(ids) - expected).abs().max().item())
        scale.append(expected.std().item())
    return max(diffs), min(scale)


@pytest.fixture(scope="module")
def tiny_hf():
    return hf_gpt2(0, n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=50257)


@pytest.fixture
def tiny_file(tiny_hf, tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(hub_state(tiny_hf), str(path))
    return path


def test_tiny_oracle_matches_transformers(tiny_hf, tmp_path, sms_tsv, tokenizer_file):
    state = hub_state(tiny_hf)
    # Older Hub files also carry the causal-mask buffers; they must be ignored.
    state |= {f"h.{i}.attn.bias": torch.tril(torch.ones(1, 1, 128, 128)) for i in range(2)}
    state |= {f"h.{i}.attn.masked_bias": torch.tensor(-1e4) for i in range(2)}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    ours = build_gpt(make_config(TINY), str(path))
    diff, scale = max_logit_diff(tiny_hf, ours, sms_token_ids(sms_tsv, tokenizer_file, 8, 128))
    print(f"tiny GPT-2: max |logit diff| = {diff:.3g} (logit std >= {scale:.3g})")
    assert scale > 0.5  # logits are far from zero, so a small difference means something
    assert diff < 1e-4
    assert torch.equal(ours.out_head.weight, ours.tok_emb.weight)


def test_prefixed_state_dict_with_tied_lm_head(tiny_hf, sms_tsv, tokenizer_file):
    state = tiny_hf.state_dict()  # "transformer.*" keys plus "lm_head.weight"
    assert "lm_head.weight" in state and "transformer.wte.weight" in state
    ours = GPTModel(make_config(TINY))
    load_hf_state_dict(ours, state)
    diff, _ = max_logit_diff(tiny_hf, ours, sms_token_ids(sms_tsv, tokenizer_file, 2, 128))
    assert diff < 1e-4


def test_gpt2_124m_oracle_through_pinned_download(tmp_path, monkeypatch, sms_tsv, tokenizer_file):
    hf = hf_gpt2(1)  # GPT2Config() defaults: the real 124M shapes
    path = tmp_path / "model.safetensors"
    save_file(hub_state(hf), str(path))
    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    ours = build_gpt(make_config("gpt2"), "gpt2")
    expected_call = {"repo_id": "openai-community/gpt2", "revision": HF_REVISIONS["gpt2"]}
    assert calls == [expected_call | {"filename": "model.safetensors"}]
    diff, scale = max_logit_diff(hf, ours, sms_token_ids(sms_tsv, tokenizer_file, 2, 1024))
    print(f"124M GPT-2: max |logit diff| = {diff:.3g} (logit std >= {scale:.3g})")
    assert scale > 0.5
    assert diff < 1e-4


@pytest.mark.parametrize("name", list(PRESETS))
def test_key_mapping_for_every_size(name):
    """hf_shapes and the conversion agree with transformers' GPT-2 and our model, on meta tensors."""
    cfg = PRESETS[name]
    hf_cfg = transformers.GPT2Config(n_embd=cfg.emb_dim, n_layer=cfg.n_layers, n_head=cfg.n_heads)
    with torch.device("meta"):
        hf_state = transformers.GPT2Model(hf_cfg).state_dict()
        ours = GPTModel(cfg).state_dict()
    hf_state = {k: v for k, v in hf_state.items() if not re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", k)}
    assert hf_shapes(cfg) == {k: tuple(v.shape) for k, v in hf_state.items()}
    converted = convert_hf_state_dict(hf_state, cfg)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.items()}
    assert len(HF_REVISIONS[name]) == 40 and int(HF_REVISIONS[name], 16) >= 0


def write(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    return path


def test_missing_tensor_is_named(tiny_hf, tmp_path):
    state = hub_state(tiny_hf)
    del state["h.1.ln_2.bias"]
    path = write(tmp_path, state)
    with pytest.raises(PretrainedWeightsError, match=r"missing 1 tensor\(s\): h\.1\.ln_2\.bias") as err:
        build_gpt(make_config(TINY), path)
    assert str(path) in str(err.value)


def test_misshapen_tensor_is_named(tiny_hf, tmp_path):
    state = hub_state(tiny_hf)
    state["h.0.mlp.c_fc.weight"] = state["h.0.mlp.c_fc.weight"].t().contiguous()
    path = write(tmp_path, state)
    with pytest.raises(PretrainedWeightsError, match=r"'h\.0\.mlp\.c_fc\.weight' has shape \(256, 64\), "):
        build_gpt(make_config(TINY), path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensor_is_named(tiny_hf, tmp_path, bad):
    state = hub_state(tiny_hf)
    state["h.1.attn.c_proj.weight"][3, 5] = bad
    path = write(tmp_path, state)
    with pytest.raises(PretrainedWeightsError, match=r"'h\.1\.attn\.c_proj\.weight' holds NaN/Inf values") as err:
        build_gpt(make_config(TINY), path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("values", "finite"),
    [
        ([1.0, -2.0], True),
        ([3e38, 3e38], True),  # the sum overflows to inf, the elements are finite
        ([1.0, float("nan")], False),
        ([1.0, float("inf")], False),
        ([float("inf"), -float("inf")], False),  # the sum is NaN
        ([-float("inf")], False),
    ],
)
def test_all_finite(values, finite):
    assert all_finite(torch.tensor(values, dtype=torch.float32)) is finite


def test_unexpected_key_is_named(tiny_hf, tmp_path):
    state = hub_state(tiny_hf) | {"score.weight": torch.zeros(2, 64)}
    path = write(tmp_path, state)
    with pytest.raises(PretrainedWeightsError, match=r"1 unexpected key\(s\): score\.weight") as err:
        build_gpt(make_config(TINY), path)
    assert str(path) in str(err.value)


def test_wrong_architecture_says_what_the_file_holds(tiny_file):
    with pytest.raises(PretrainedWeightsError, match=r"unexpected key.*file looks like .*n_layers=2"):
        build_gpt(make_config(TINY, n_layers=1), tiny_file)


def test_untied_lm_head_is_rejected(tiny_hf):
    state = tiny_hf.state_dict()
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    with pytest.raises(PretrainedWeightsError, match=r"'lm_head\.weight' differs from 'wte\.weight'"):
        load_hf_state_dict(GPTModel(make_config(TINY)), state)


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_unreadable_file_is_named(tiny_file, tmp_path, content):
    path = tmp_path / "bad.safetensors"
    data = tiny_file.read_bytes()
    path.write_bytes(b"this is not a safetensors file" if content == "garbage" else data[: len(data) // 2])
    with pytest.raises(PretrainedWeightsError, match="as a safetensors file") as err:
        build_gpt(make_config(TINY), path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_neither_preset_nor_file(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="neither a GPT-2 preset"):
        build_gpt(make_config(TINY), str(tmp_path / "nope.safetensors"))


def test_preset_needs_its_architecture():
    with pytest.raises(PretrainedWeightsError, match=r"emb_dim=64 \(expected 768\)"):
        build_gpt(make_config(TINY), "gpt2")


def test_no_pretrained_is_random_init():
    model = build_gpt(make_config(TINY), None)
    assert isinstance(model, GPTModel) and model.cfg == make_config(TINY)


def test_download_failure_explains_offline_use(monkeypatch):
    calls = []

    def offline(**kwargs):
        calls.append(kwargs)
        raise huggingface_hub.errors.LocalEntryNotFoundError(
            "Cannot find the requested files in the disk cache and outgoing traffic has been disabled.\nMore"
        )

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(PretrainedDownloadError) as err:
        build_gpt(make_config("gpt2-medium"), "gpt2-medium")
    assert calls[0]["repo_id"] == "openai-community/gpt2-medium"
    assert calls[0]["revision"] == HF_REVISIONS["gpt2-medium"]
    message = str(err.value)
    assert "LocalEntryNotFoundError" in message and "\n" not in message
    for hint in ("model.pretrained=/path/to/model.safetensors", "model.pretrained=null", "HF_HUB_OFFLINE=1"):
        assert hint in message


def test_real_offline_mode_with_empty_cache(monkeypatch, tmp_path):
    """huggingface_hub itself, in offline mode with nothing cached: no network, one clear error."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    expected = r"openai-community/gpt2 at revision 607a30d7.*HF_HUB_OFFLINE=1"
    with pytest.raises(PretrainedDownloadError, match=expected):
        build_gpt(make_config("gpt2"), "gpt2")


def test_qkv_bias_is_required(tiny_file):
    with pytest.raises(PretrainedWeightsError, match="qkv_bias=true"):
        build_gpt(make_config(TINY, qkv_bias=False), tiny_file)


def built_in_place(cfg, pretrained, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(seed)
    gpt = build_gpt(cfg, pretrained)
    return gpt.state_dict(), torch.get_rng_state()


def threads_that_build(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import threading

    import spam_lightning.model.weights as weights

    names: list[str] = []
    build = weights._build_gpt

    def recorded(*args):
        names.append(threading.current_thread().name)
        return build(*args)

    monkeypatch.setattr(weights, "_build_gpt", recorded)
    return names


@pytest.mark.parametrize("pretrained", ["file", None])
def test_the_gpt_built_ahead_is_the_one_built_in_place(tiny_file, pretrained, monkeypatch):
    """train.py builds the GPT in a thread while Lightning imports: the run gets that very build, the same tensors
    and the same RNG state after it (the new head is drawn next) as a build in place."""
    from spam_lightning.model.weights import build_gpt_ahead, settle_ahead

    cfg, source = make_config(TINY), (tiny_file if pretrained else None)
    expected, rng_after = built_in_place(cfg, source, seed=7)
    builders = threads_that_build(monkeypatch)
    build_gpt_ahead(cfg, source, None, seed=7)
    settle_ahead()
    state, rng = built_in_place(cfg, source, seed=7)  # as the run: seeded, then build_gpt
    assert builders == ["build_gpt_ahead"]
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert torch.equal(rng, rng_after)


@pytest.mark.parametrize("other", ["seed", "weights file", "architecture"])
def test_a_gpt_built_ahead_for_another_call_is_built_again(tiny_file, tiny_hf, tmp_path, other, monkeypatch):
    from spam_lightning.model.weights import build_gpt_ahead, settle_ahead

    cfg = make_config(TINY)
    second = tmp_path / "second.safetensors"
    save_file({k: v + 1 for k, v in hub_state(tiny_hf).items()}, str(second))
    call = {"seed": (cfg, tiny_file, 8), "weights file": (cfg, second, 7)}.get(other)
    call = call or (make_config({**TINY, "dropout": 0.5}), tiny_file, 7)
    expected, rng_after = built_in_place(*call)
    builders = threads_that_build(monkeypatch)
    build_gpt_ahead(cfg, tiny_file, None, seed=7)
    settle_ahead()  # as the run, before it seeds
    state, rng = built_in_place(*call)
    assert builders == ["build_gpt_ahead", "MainThread"]
    assert all(torch.equal(state[k], expected[k]) for k in state) and torch.equal(rng, rng_after)
