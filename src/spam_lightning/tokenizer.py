"""tiktoken's GPT-2 encoding, from tiktoken's own cache/download or from a local ranks file."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

PAD_TOKEN_ID = 50256  # <|endoftext|>, the book's padding token
GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=4)
def get_tokenizer(tokenizer_file: str | None = None) -> tiktoken.Encoding:
    """GPT-2 BPE. None: `tiktoken.get_encoding("gpt2")` (downloads once into tiktoken's cache).

    A path: a local `.tiktoken` ranks file with the same bytes tiktoken downloads for GPT-2
    (`r50k_base.tiktoken`), checked against its pinned sha256 before use.
    """
    if tokenizer_file is None:
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as err:  # no network, proxy, ...: one clear cause and the way out
            raise RuntimeError(
                f"could not load tiktoken's GPT-2 encoding ({type(err).__name__}: {' '.join(str(err).split())[:200]}). "
                "To run offline, pass a local ranks file: data.tokenizer_file=/path/to/gpt2.tiktoken"
            ) from err
    path = Path(tokenizer_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer_file {str(path)!r} does not exist")
    actual = file_sha256(path)
    if actual != GPT2_TIKTOKEN_SHA256:
        raise ValueError(f"tokenizer_file {str(path)!r} has sha256 {actual}, expected GPT-2's {GPT2_TIKTOKEN_SHA256}")
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=load_tiktoken_bpe(str(path)),
        special_tokens={"<|endoftext|>": PAD_TOKEN_ID},
        explicit_n_vocab=50257,
    )
