"""GPT-2's BPE (tiktoken), built from its sha256-pinned ranks file: a local file, our cache, or a download.

The ranks file is the one tiktoken downloads for GPT-2's encoding (`r50k_base.tiktoken`). Once verified,
it is kept in the cache folder (`spam_lightning.files.cache_dir`), where every later run, sweep job
and prediction finds it: `data.tokenizer_file` is needed once, offline, and never again.

What training does to a text before the model sees it, recorded once and replayed by prediction.

Training builds one `Preprocessing` (the data module, once it has seen the training split), saves it in
every checkpoint and export, and prediction reads it back: nothing is re-derived from settings. The same
`encode` and `pad` serve the training batches, the frozen-feature cache and prediction.

No Lightning here: an exported model needs only torch, safetensors and tiktoken.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

from spam_lightning.errors import UserError
from spam_lightning.files import atomic_write_bytes, cache_dir, fetch, file_sha256
from spam_lightning.model.gpt import POOLS, GPTConfig

PAD_TOKEN_ID = 50256  # <|endoftext|>, the book's padding token
GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"  # tiktoken's own source
TOKENIZER_NAME = "gpt2.tiktoken"


class TokenizerError(UserError, ValueError):
    """A tokenizer file that is missing or is not GPT-2's vocabulary."""


def tokenizer_path(tokenizer_file: str | None = None, url: str = TIKTOKEN_URL) -> Path:
    """A verified GPT-2 ranks file: `tokenizer_file` (then also copied into the cache), the cached copy, or a
    download from `url` into the cache."""
    cached = cache_dir() / TOKENIZER_NAME
    if tokenizer_file is not None:
        path = Path(tokenizer_file).expanduser()
        if not path.is_file():
            raise TokenizerError(f"tokenizer_file {str(path)!r} does not exist")
        actual = file_sha256(path)
        if actual != GPT2_TIKTOKEN_SHA256:
            raise TokenizerError(
                f"tokenizer_file {str(path)!r} has sha256 {actual}, expected GPT-2's {GPT2_TIKTOKEN_SHA256}"
            )
        if not _verified(cached):
            atomic_write_bytes(cached, path.read_bytes())
        return path
    if _verified(cached):
        return cached
    return fetch(
        [url],
        GPT2_TIKTOKEN_SHA256,
        cached,
        what="GPT-2's BPE vocabulary",
        offline_hint="pass a local copy once: data.tokenizer_file=/path/to/gpt2.tiktoken (kept in the cache after)",
    )


def _verified(path: Path) -> bool:
    return path.is_file() and file_sha256(path) == GPT2_TIKTOKEN_SHA256


@lru_cache(maxsize=4)
def get_tokenizer(tokenizer_file: str | None = None, url: str = TIKTOKEN_URL) -> tiktoken.Encoding:
    """GPT-2's BPE encoding (the same as `tiktoken.get_encoding("gpt2")`) from `tokenizer_path`."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=load_tiktoken_bpe(str(tokenizer_path(tokenizer_file, url))),
        special_tokens={"<|endoftext|>": PAD_TOKEN_ID},
        explicit_n_vocab=50257,
    )


class PreprocessingError(UserError, ValueError):
    """A recorded preprocessing that is incomplete or that this version cannot replay."""


@dataclass(frozen=True)
class Preprocessing:
    labels: tuple[str, ...]  # class names in class-id order, e.g. ("ham", "spam")
    max_length: int  # texts are truncated to this many tokens (data.max_length, capped at the context length)
    pad_length: (
        int | None
    )  # every row right-padded (and truncated) to this many tokens; None: each batch to its longest
    padding: str | int  # the data.padding that gave pad_length: longest_train | batch | an int
    pool: str  # the model's pooling (model.pool): last | last_token | first | mean
    tokenizer: str = "gpt2"  # tiktoken's GPT-2 BPE, from its sha256-pinned ranks file
    tokenizer_sha256: str = GPT2_TIKTOKEN_SHA256
    pad_token_id: int = PAD_TOKEN_ID  # <|endoftext|>, right padding
    # The class whose probability a two-class model's threshold applies to (label = it iff P(it) > threshold; the
    # binary metrics are its precision, recall, ...). None: labels[1] for two classes; always None for more.
    positive_class: str | None = None

    def __post_init__(self) -> None:
        if len(self.labels) == 2 and self.positive_class is None:
            object.__setattr__(self, "positive_class", self.labels[1])  # the usual pos_label=1
        check_positive_class(self.positive_class, self.labels, "positive_class", PreprocessingError)

    @property
    def positive_index(self) -> int | None:
        """The positive class's id (two classes), None for more classes."""
        return None if self.positive_class is None else self.labels.index(self.positive_class)

    @property
    def token_limit(self) -> int:
        """Texts longer than this many tokens are truncated."""
        return min(self.max_length, self.pad_length) if self.pad_length is not None else self.max_length

    @property
    def padding_invariant(self) -> bool:
        """Whether a text's logits are independent of the other texts in its batch (all but pool=last with
        per-batch padding, which reads the batch's final position)."""
        return self.pad_length is not None or self.pool != "last"

    def encode(self, tokenizer: tiktoken.Encoding, texts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids of each text (`encode_ordinary`: special-token text is plain text) truncated to
        `token_limit`, and whether each was truncated."""
        limit = self.token_limit
        # One call per text: encode_ordinary_batch's thread pool costs more than it saves on texts this short
        # (the SMS set: 0.04 s against 0.01 s here; only texts of several thousand characters gain from it).
        full = [tokenizer.encode_ordinary(text) for text in texts]
        return [ids[:limit] for ids in full], [len(ids) > limit for ids in full]

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad token id rows to `pad_length` (or the longest row): (B, T) input_ids and (B,) lengths."""
        return pad(rows, self.pad_length, self.pad_token_id)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, record: Any, source: str) -> Preprocessing:
        """The record `to_dict` wrote, read from a file (a checkpoint or config.json): every value is checked, and
        a PreprocessingError names `source`, the key and what was expected."""
        if not isinstance(record, Mapping):
            raise PreprocessingError(f"{source}: preprocessing must be a mapping, got {type(record).__name__}")
        unknown = sorted(set(record) - {f.name for f in fields(cls)})
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in record]
        if unknown or missing:
            raise PreprocessingError(
                f"{source}: incomplete preprocessing record (missing keys {missing}, unknown keys {unknown})"
            )

        def expected(key: str, what: str) -> PreprocessingError:
            return PreprocessingError(f"{source}: preprocessing.{key} must be {what}, got {record[key]!r}")

        labels, pad_length, padding = record["labels"], record["pad_length"], record["padding"]
        if not (
            isinstance(labels, list | tuple)
            and len(labels) >= 2
            and all(isinstance(label, str) and label.strip() for label in labels)
            and len(set(labels)) == len(labels)
        ):
            raise expected("labels", "a list of at least 2 distinct non-empty strings")
        if not _positive_int(record["max_length"]):
            raise expected("max_length", "a positive int")
        if pad_length is not None and not _positive_int(pad_length):
            raise expected("pad_length", "null or a positive int")
        if not (padding in ("longest_train", "batch") or _positive_int(padding)):
            raise expected("padding", "'longest_train', 'batch' or a positive int")
        # The data module derives pad_length from padding: batch -> null, an int -> that int, longest_train -> an int.
        if (pad_length is None) != (padding == "batch") or (_positive_int(padding) and pad_length != padding):
            raise expected("pad_length", f"consistent with preprocessing.padding={padding!r}")
        if record["pool"] not in POOLS:
            raise expected("pool", f"one of {list(POOLS)}")
        pad_token_id = record.get("pad_token_id", PAD_TOKEN_ID)
        if not (type(pad_token_id) is int and 0 <= pad_token_id <= PAD_TOKEN_ID):
            raise expected("pad_token_id", f"a GPT-2 token id in [0, {PAD_TOKEN_ID}]")
        # A record written before positive_class existed meant labels[1] (Preprocessing's default); a recorded null
        # for two classes is refused like any other value that is not a class name.
        if "positive_class" in record:
            check_positive_class(record["positive_class"], labels, f"{source}: preprocessing.positive_class")
        pre = cls(**{**record, "labels": tuple(labels)})
        if pre.tokenizer != "gpt2" or pre.tokenizer_sha256 != GPT2_TIKTOKEN_SHA256:
            raise PreprocessingError(
                f"{source}: trained with tokenizer {pre.tokenizer!r} (sha256 {pre.tokenizer_sha256}); "
                f"this version has only GPT-2's BPE (sha256 {GPT2_TIKTOKEN_SHA256})"
            )
        return pre

    def check_fits(self, arch: GPTConfig, num_classes: int, pool: str, source: str) -> None:
        """Refuse a record that contradicts the network recorded beside it (`SpamNet.args()`: net.*)."""
        if pool != self.pool:
            raise PreprocessingError(f"{source}: preprocessing.pool {self.pool!r} differs from net.pool {pool!r}")
        if len(self.labels) != num_classes:
            raise PreprocessingError(
                f"{source}: preprocessing.labels has {len(self.labels)} labels, net.num_classes is {num_classes}"
            )
        for key in ("max_length", "pad_length"):
            value = getattr(self, key)
            if value is not None and value > arch.context_length:
                raise PreprocessingError(
                    f"{source}: preprocessing.{key} must be at most net.arch.context_length={arch.context_length}, "
                    f"got {value}"
                )
        if arch.vocab_size <= PAD_TOKEN_ID:
            raise PreprocessingError(
                f"{source}: net.arch.vocab_size must be at least GPT-2's {PAD_TOKEN_ID + 1} tokens, "
                f"got {arch.vocab_size}"
            )


def check_positive_class(
    positive_class: Any, labels: Sequence[str], key: str, error: type[UserError] = PreprocessingError
) -> None:
    """A positive class is one of two classes' names; more classes have none (no threshold applies to them)."""
    if len(labels) == 2 and positive_class not in labels:
        raise error(f"{key} must be one of the two classes {list(labels)}, got {positive_class!r}")
    if len(labels) > 2 and positive_class is not None:
        raise error(
            f"{key}={positive_class!r}: a positive class applies to two-class data only (its threshold); "
            f"these data have {len(labels)} classes {list(labels)}, leave it null"
        )


def _positive_int(value: Any) -> bool:
    return type(value) is int and value > 0  # not a bool, which JSON's true becomes


def pad(rows: Sequence[Sequence[int]], width: int | None, pad_token_id: int = PAD_TOKEN_ID) -> tuple[torch.Tensor, ...]:
    """(B, width or longest) input_ids right-padded with `pad_token_id`, and the (B,) true lengths."""
    lengths = [len(ids) for ids in rows]
    input_ids = torch.full((len(rows), width if width is not None else max(lengths)), pad_token_id, dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return input_ids, torch.tensor(lengths, dtype=torch.long)
