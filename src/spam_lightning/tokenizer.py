"""GPT-2's BPE (tiktoken), built from its sha256-pinned ranks file: a local file, our cache, or a download.

The ranks file is the one tiktoken downloads for GPT-2's encoding (`r50k_base.tiktoken`). Once verified,
it is kept in the cache folder (`spam_lightning.downloads.cache_dir`), where every later run, sweep job
and prediction finds it: `data.tokenizer_file` is needed once, offline, and never again.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

from spam_lightning.downloads import cache_dir, fetch
from spam_lightning.errors import UserError
from spam_lightning.files import atomic_write_bytes, file_sha256

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
