"""OpenAI's pretrained GPT-2 weights (Hugging Face Hub layout) loaded into `GPTModel`.

The Hub's `model.safetensors` stores GPT-2 as OpenAI trained it: Conv1D layers whose weights are
(in_features, out_features), i.e. the transpose of `nn.Linear`, and one fused query/key/value
projection `c_attn` that the book splits into W_query, W_key and W_value.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from spam_lightning.errors import CheckpointError, DownloadError, UserError
from spam_lightning.files import file_sha256
from spam_lightning.model.gpt import PRESETS, GPTConfig, GPTModel

HF_REPO_OWNER = "openai-community"
HF_FILENAME = "model.safetensors"
# Pinned commits of the Hub repos openai-community/<name>, so that a run always loads the same bytes.
HF_REVISIONS: dict[str, str] = {
    "gpt2": "607a30d783dfa663caf39e06633721c8d4cfcd7e",
    "gpt2-medium": "6dcaa7a952f72f9298047fd5137cd6e4f05f41da",
    "gpt2-large": "32b71b12589c2f8d625668d2335a01cac3249519",
    "gpt2-xl": "15ea56dee5df4983c59b2538573817e1667135e2",
}
# Non-parameter causal-mask buffers that older checkpoints carry; our attention builds its own mask.
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
# Config fields that fix the tensor shapes (or, for n_heads, how the weights are read).
_ARCH_FIELDS = ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads", "qkv_bias")

OFFLINE_HINT = (
    "To run offline pass a local file, model.pretrained=/path/to/model.safetensors, "
    "or model.pretrained=null for a randomly initialised model, "
    "or pre-populate the Hugging Face cache and set HF_HUB_OFFLINE=1."
)


class PretrainedWeightsError(UserError, RuntimeError):
    """A pretrained weights file is missing, unreadable or does not fit the model config."""


class PretrainedDownloadError(PretrainedWeightsError, DownloadError):
    """The pretrained weights could not be fetched from the Hugging Face Hub."""


def hf_repo_id(name: str) -> str:
    return f"{HF_REPO_OWNER}/{name}"


def hf_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of a Hub GPT-2 `model.safetensors` (no `transformer.` prefix) -> its shape."""
    d, v, c = cfg.emb_dim, cfg.vocab_size, cfg.context_length
    block = {
        "ln_1.weight": (d,),
        "ln_1.bias": (d,),
        "attn.c_attn.weight": (d, 3 * d),
        "attn.c_attn.bias": (3 * d,),
        "attn.c_proj.weight": (d, d),
        "attn.c_proj.bias": (d,),
        "ln_2.weight": (d,),
        "ln_2.bias": (d,),
        "mlp.c_fc.weight": (d, 4 * d),
        "mlp.c_fc.bias": (4 * d,),
        "mlp.c_proj.weight": (4 * d, d),
        "mlp.c_proj.bias": (d,),
    }
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (v, d), "wpe.weight": (c, d)}
    shapes |= {f"h.{i}.{name}": shape for i in range(cfg.n_layers) for name, shape in block.items()}
    shapes["ln_f.weight"] = (d,)
    shapes["ln_f.bias"] = (d,)
    return shapes


def _listing(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys, key=_natural)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _natural(key: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _normalise_keys(hf_state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Strip `transformer.`, drop causal-mask buffers and a `lm_head.weight` tied to `wte.weight`."""
    state: dict[str, Tensor] = {}
    for key, tensor in hf_state.items():
        name = key.removeprefix("transformer.")
        if name in state:
            raise PretrainedWeightsError(f"{source}: {name!r} appears both with and without 'transformer.'")
        if not _MASK_BUFFER.fullmatch(name):
            state[name] = tensor
    head = state.pop("lm_head.weight", None)
    wte = state.get("wte.weight")
    if head is not None and wte is not None and (head.shape != wte.shape or not torch.equal(head, wte)):
        raise PretrainedWeightsError(
            f"{source}: 'lm_head.weight' differs from 'wte.weight'; GPT-2 ties them and so does this loader"
        )
    return state


# The one key mapping between the Hub's GPT-2 layout and ours, used in both directions. Per block:
# (Hub key, our key, a Conv1D weight stored (in, out) that nn.Linear holds as (out, in)); c_attn is QKV side by side.
TRUNK_KEYS = (
    ("wte.weight", "tok_emb.weight"),
    ("wpe.weight", "pos_emb.weight"),
    ("ln_f.weight", "final_norm.weight"),
    ("ln_f.bias", "final_norm.bias"),
)
BLOCK_KEYS = (
    ("ln_1.weight", "norm1.weight", False),
    ("ln_1.bias", "norm1.bias", False),
    ("attn.c_proj.weight", "att.out_proj.weight", True),
    ("attn.c_proj.bias", "att.out_proj.bias", False),
    ("ln_2.weight", "norm2.weight", False),
    ("ln_2.bias", "norm2.bias", False),
    ("mlp.c_fc.weight", "ff.layers.0.weight", True),
    ("mlp.c_fc.bias", "ff.layers.0.bias", False),
    ("mlp.c_proj.weight", "ff.layers.2.weight", True),
    ("mlp.c_proj.bias", "ff.layers.2.bias", False),
)
QKV = ("att.W_query", "att.W_key", "att.W_value")


def convert_hf_state_dict(
    hf_state: Mapping[str, Tensor], cfg: GPTConfig, source: str = "state dict"
) -> dict[str, Tensor]:
    """Check a Hub-layout GPT-2 state dict against `cfg` and rename/split/transpose it into ours.

    Keys may carry a `transformer.` prefix; mask buffers are ignored; `lm_head.weight` must equal
    `wte.weight`, which also becomes our `out_head.weight`. `source` names the file in errors.
    """
    if not cfg.qkv_bias:
        raise PretrainedWeightsError(
            f"{source}: GPT-2's query/key/value projections have biases; set the model config's qkv_bias=true"
        )
    state = _normalise_keys(hf_state, source)
    expected = hf_shapes(cfg)
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        problems = [f"missing {len(missing)} tensor(s): {_listing(missing)}"] if missing else []
        problems += [f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}"] if unexpected else []
        raise PretrainedWeightsError(
            f"{source} does not fit GPT-2 with {_arch(cfg)}: {'; '.join(problems)}{_file_arch(state)}"
        )
    wrong = [k for k, shape in expected.items() if tuple(state[k].shape) != shape]
    if wrong:
        found = {k: tuple(state[k].shape) for k in wrong}
        details = ", ".join(f"{k!r} has shape {found[k]}, expected {expected[k]}" for k in wrong[:3])
        more = f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise PretrainedWeightsError(
            f"{source} does not fit GPT-2 with {_arch(cfg)}: {details}{more}{_file_arch(state)}"
        )

    for key in expected:
        tensor = state[key]
        if tensor.is_floating_point() and tensor.device.type != "meta" and not all_finite(tensor):
            raise PretrainedWeightsError(f"{source}: {key!r} holds NaN/Inf values (a corrupt or diverged weights file)")

    ours = {mine: state[hub] for hub, mine in TRUNK_KEYS} | {"out_head.weight": state["wte.weight"]}
    for i in range(cfg.n_layers):
        h, b = f"h.{i}.", f"trf_blocks.{i}."
        for hub, mine, conv1d in BLOCK_KEYS:
            ours[b + mine] = state[h + hub].t() if conv1d else state[h + hub]
        weights, biases = (
            state[h + "attn.c_attn.weight"].chunk(3, dim=-1),
            state[h + "attn.c_attn.bias"].chunk(3, dim=-1),
        )
        for name, weight, bias in zip(QKV, weights, biases, strict=True):
            ours[b + f"{name}.weight"], ours[b + f"{name}.bias"] = weight.t(), bias
    return ours


def to_hf_state_dict(ours: Mapping[str, Tensor], cfg: GPTConfig) -> dict[str, Tensor]:
    """The inverse of `convert_hf_state_dict` for the trunk: our GPTModel's tensors (without `out_head`) in the
    Hub's layout (no `transformer.` prefix; Conv1D weights transposed, query/key/value fused into c_attn)."""
    if not cfg.qkv_bias:
        raise PretrainedWeightsError("GPT-2's layout has query/key/value biases; this model has none (qkv_bias=false)")
    hf = {hub: ours[mine] for hub, mine in TRUNK_KEYS}
    for i in range(cfg.n_layers):
        h, b = f"h.{i}.", f"trf_blocks.{i}."
        for hub, mine, conv1d in BLOCK_KEYS:
            hf[h + hub] = ours[b + mine].t() if conv1d else ours[b + mine]
        hf[h + "attn.c_attn.weight"] = torch.cat([ours[b + f"{name}.weight"].t() for name in QKV], dim=-1)
        hf[h + "attn.c_attn.bias"] = torch.cat([ours[b + f"{name}.bias"] for name in QKV])
    return {k: v.detach().cpu().contiguous() for k, v in hf.items()}


def load_hf_state_dict(model: GPTModel, hf_state: Mapping[str, Tensor], source: str = "state dict") -> None:
    """Copy Hub-layout GPT-2 weights into `model` (in place, into its existing dtype and device)."""
    model.load_state_dict(convert_hf_state_dict(hf_state, model.cfg, source))


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file {str(path)!r} does not exist")
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ...
        message = f"cannot read {str(path)!r} as a safetensors file: {_one_line(err)}"
        raise PretrainedWeightsError(message) from err


def download_pretrained(name: str) -> Path:
    """The cached path of `model.safetensors` for a preset, downloaded at its pinned revision if needed."""
    from huggingface_hub import hf_hub_download

    repo, revision = hf_repo_id(name), HF_REVISIONS[name]
    try:
        return Path(str(hf_hub_download(repo_id=repo, filename=HF_FILENAME, revision=revision)))
    except Exception as err:  # no network, offline mode, 404, gated, disk full, ...
        raise PretrainedDownloadError(
            f"could not get {HF_FILENAME} of {repo} at revision {revision} from the Hugging Face Hub "
            f"({_one_line(err)}). {OFFLINE_HINT}"
        ) from err


def _arch_differences(cfg: GPTConfig, preset: str) -> list[str]:
    """The architecture fields in which `cfg` differs from the preset's (whose weights would not fit it)."""
    return [f for f in _ARCH_FIELDS if getattr(cfg, f) != getattr(PRESETS[preset], f)]


def pretrained_file(cfg: GPTConfig, pretrained: str | os.PathLike[str]) -> Path:
    """The local weights file of `pretrained`: a preset name ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"),
    fetched from the Hugging Face Hub at its pinned revision (or found in the Hub's cache), or a local
    `model.safetensors` in the Hub's layout."""
    if isinstance(pretrained, str) and pretrained in PRESETS:
        preset = PRESETS[pretrained]
        if diff := _arch_differences(cfg, pretrained):
            raise PretrainedWeightsError(
                f"model.pretrained={pretrained!r} needs the {pretrained!r} architecture, but the config has "
                + ", ".join(f"{f}={getattr(cfg, f)} (expected {getattr(preset, f)})" for f in diff)
            )
        return download_pretrained(pretrained)
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(
            f"model.pretrained={str(pretrained)!r} is neither a GPT-2 preset ({', '.join(PRESETS)}) "
            "nor an existing safetensors file"
        )
    return path


def build_gpt(cfg: GPTConfig, pretrained: str | os.PathLike[str] | None, init_seed: int | None = None) -> GPTModel:
    """`GPTModel(cfg)`, randomly initialised (None: from `init_seed`, else the global RNG) or with OpenAI's
    weights (see `pretrained_file`). The one `build_gpt_ahead` made, where it was made for this very call."""
    path = None if pretrained is None else pretrained_file(cfg, pretrained)
    ahead = _take_ahead((cfg, None if path is None else str(path), init_seed))
    return ahead if ahead is not None else _build_gpt(cfg, path, init_seed)


def _build_gpt(cfg: GPTConfig, path: Path | None, init_seed: int | None) -> GPTModel:
    if path is None:
        return GPTModel(cfg) if init_seed is None else random_gpt(cfg, init_seed)
    state = read_safetensors(path)
    model = GPTModel(cfg)
    load_hf_state_dict(model, state, source=f"weights file {str(path)!r}")
    weights_sha256(path)  # hashed for the checkpoints' provenance in the background, once the weights are in
    return model


@dataclass
class _Ahead:
    key: tuple[GPTConfig, str | None, int | None]
    rng_before: Tensor  # the global CPU RNG's state the build started from
    thread: threading.Thread
    gpt: GPTModel | None = None  # None: the build failed (the call it was made for builds again, and reports)
    rng_after: Tensor | None = None


_ahead: _Ahead | None = None


def build_gpt_ahead(
    cfg: GPTConfig, pretrained: str | os.PathLike[str] | None, init_seed: int | None, seed: int
) -> None:
    """Start `build_gpt(cfg, pretrained, init_seed)` in a background thread, from the RNG state of
    `torch.manual_seed(seed)`. train.py calls it before it imports Lightning (seconds of Python), which the random
    init, the file read and the copy into the model (torch work that releases the GIL) then overlap.

    `build_gpt` takes this model only when it is called with the same arguments and the global RNG in the state the
    thread started from, and leaves the RNG as the build left it: the model, and everything drawn after it (the new
    head), are exactly those of a build at that point. Otherwise the model is dropped and built again there. Until
    `settle_ahead` returns, nothing else may use the global RNG. No download: a preset is used from the Hub's cache
    only (a run that must download builds in order)."""
    global _ahead
    settle_ahead()
    path = None if pretrained is None else _local_file(cfg, pretrained)
    if pretrained is not None and path is None:
        return
    torch.manual_seed(seed)

    def build() -> None:
        try:
            job.gpt = _build_gpt(cfg, path, init_seed)
        except Exception:  # the call it was made for builds again, and raises the error in its order
            job.gpt = None
        finally:
            sys.setswitchinterval(interval)
        job.rng_after = torch.get_rng_state()

    # Each of the build's few hundred torch calls releases the GIL and then waits for it while the importing thread
    # runs Python: at the default 5 ms switch interval that doubles the build (2.2 s against 1.1 s for 124M).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)

    thread = threading.Thread(target=build, name="build_gpt_ahead", daemon=True)
    job = _Ahead((cfg, None if path is None else str(path), init_seed), torch.get_rng_state(), thread)
    thread.start()
    _ahead = job


def settle_ahead() -> None:
    """Wait for `build_gpt_ahead`'s thread: after this the global RNG is the caller's again."""
    if _ahead is not None:
        _ahead.thread.join()


def _take_ahead(key: tuple[GPTConfig, str | None, int | None]) -> GPTModel | None:
    global _ahead
    settle_ahead()
    job, _ahead = _ahead, None
    if job is None or job.gpt is None or job.key != key or not torch.equal(torch.get_rng_state(), job.rng_before):
        return None
    assert job.rng_after is not None
    torch.set_rng_state(job.rng_after)
    return job.gpt


def _local_file(cfg: GPTConfig, pretrained: str | os.PathLike[str]) -> Path | None:
    """`pretrained_file`'s answer where it needs no network, else None."""
    if isinstance(pretrained, str) and pretrained in PRESETS:
        from huggingface_hub import try_to_load_from_cache

        if _arch_differences(cfg, pretrained):
            return None  # pretrained_file refuses it
        cached = try_to_load_from_cache(hf_repo_id(pretrained), HF_FILENAME, revision=HF_REVISIONS[pretrained])
        return Path(cached) if isinstance(cached, str) else None
    path = Path(pretrained).expanduser().absolute()
    return path if path.is_file() else None


def random_gpt(cfg: GPTConfig, init_seed: int) -> GPTModel:
    """A GPT-2 randomly initialised from its own seed: the same seed (and torch) makes the same weights again, so
    checkpoints of a random-init run need not hold its frozen ones. Seeds the global RNG (train.py has just seeded
    it with the same value by default, so what is drawn after, e.g. the new head, is as without init_seed)."""
    torch.manual_seed(init_seed)
    return GPTModel(cfg)


def all_finite(tensor: Tensor) -> bool:
    """Whether every element is finite. One sum first: NaN and Inf carry through it, and it allocates nothing (13x
    faster than `isfinite(t).all()` for GPT-2's weights); only a sum that is not finite (a NaN or Inf, or finite
    values that overflow) is settled element by element."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def tensors_sha256(named: Iterable[tuple[str, Tensor]]) -> str:
    """The sha256 of named tensors: each one's name, dtype, shape and bytes, in the order given (~1 s per GB on our
    CPUs). A GPU's tensors are copied to the CPU in pieces of 64M elements."""
    digest = hashlib.sha256()
    for name, tensor in named:
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        flat = tensor.detach().reshape(-1)
        for start in range(0, flat.numel(), 1 << 26):
            piece = flat[start : start + (1 << 26)].to("cpu").contiguous()
            digest.update(piece.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def random_provenance(init_seed: int, initial: Mapping[str, Tensor]) -> dict[str, Any]:
    """The frozen-weights record of a random-init run: the seed that makes them again, and the sha256 of the
    initial state dict."""
    return {
        "pretrained": None,
        "revision": None,
        "init_seed": init_seed,
        "sha256": tensors_sha256(sorted(initial.items())),
    }


def provenance(cfg: GPTConfig, pretrained: str | os.PathLike[str]) -> dict[str, str | None]:
    """Where pretrained weights came from, so that they can be fetched and checked again: the preset name and
    its pinned Hub revision, or the file's absolute path; and the file's sha256."""
    path = pretrained_file(cfg, pretrained)
    if isinstance(pretrained, str) and pretrained in PRESETS:
        name, revision = pretrained, HF_REVISIONS[pretrained]
    else:
        name, revision = str(path.absolute()), None
    return {"pretrained": name, "revision": revision, "sha256": weights_sha256(path).result()}


_HASHES: dict[tuple[str, int, int], Future[str]] = {}


def weights_sha256(path: Path) -> Future[str]:
    """The sha256 of a weights file, computed once per process (and file version) in a background thread."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = ThreadPoolExecutor(max_workers=1).submit(file_sha256, path)
    return _HASHES[key]


def load_recorded(cfg: GPTConfig, recorded: Mapping[str, str | None], source: str) -> dict[str, Tensor]:
    """Our-layout GPT-2 weights from a `provenance` or `random_provenance` record, refused unless their sha256
    matches it."""
    if recorded["pretrained"] is None:
        init_seed = int(recorded["init_seed"])  # type: ignore[arg-type]
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stays as it was
            state = random_gpt(cfg, init_seed).state_dict()
        if random_provenance(init_seed, state)["sha256"] != recorded["sha256"]:
            raise CheckpointError(
                f"{source} was trained on random weights from seed {recorded['init_seed']}, but this torch "
                f"({torch.__version__}) makes other weights from that seed; use the torch version that trained it"
            )
        return state
    name = str(recorded["pretrained"])
    if name in PRESETS and recorded.get("revision") != HF_REVISIONS[name]:
        raise CheckpointError(
            f"{source}: its frozen weights are {name} at Hub revision {recorded.get('revision')}, but this version "
            f"pins revision {HF_REVISIONS[name]}"
        )
    try:
        path = pretrained_file(cfg, name)
    except PretrainedWeightsError as err:
        raise CheckpointError(
            f"{source} holds only the trained layers; its frozen weights ({name}) are not available: {err}"
        ) from err
    actual = weights_sha256(path).result()
    if actual != recorded["sha256"]:
        raise CheckpointError(
            f"{source} was trained on frozen weights {name} with sha256 {recorded['sha256']}, but {path} has "
            f"sha256 {actual}: not the weights it was trained with"
        )
    return convert_hf_state_dict(read_safetensors(path), cfg, source=f"weights file {str(path)!r}")


def _arch(cfg: GPTConfig) -> str:
    return ", ".join(f"{f}={getattr(cfg, f)}" for f in _ARCH_FIELDS if f != "qkv_bias")


def _file_arch(state: Mapping[str, Tensor]) -> str:
    """A hint of which architecture the file holds, from the embedding shapes and block count."""
    facts: list[str] = []
    wte, wpe = state.get("wte.weight"), state.get("wpe.weight")
    if wte is not None and wte.dim() == 2:
        facts += [f"vocab_size={wte.shape[0]}", f"emb_dim={wte.shape[1]}"]
    if wpe is not None and wpe.dim() == 2:
        facts.append(f"context_length={wpe.shape[0]}")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"h\.(\d+)\.", k))}
    if blocks:
        facts.append(f"n_layers={max(blocks) + 1}")
    return f" (the file looks like {', '.join(facts)})" if facts else ""


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")
