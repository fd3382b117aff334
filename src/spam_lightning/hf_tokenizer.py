"""GPT-2's tokenizer in Hugging Face's files, made from our sha256-pinned tiktoken ranks: no download.

tiktoken's GPT-2 encoding (r50k_base) and Hugging Face's GPT-2 tokenizer are the same byte-level BPE written two
ways. tiktoken stores each token's bytes with its rank (= its id); Hugging Face stores each token as a string of
"byte-level" characters (every byte mapped to a printable character, `byte_level_alphabet`) in vocab.json, and the
merges in priority order in merges.txt. The merge that makes a token is recovered by running tiktoken's BPE on the
token's bytes with only the lower-ranked tokens (`merges`): it ends in exactly two parts, the pair that merges
into it. The pre-tokenizer (ByteLevel with GPT-2's regex) is tiktoken's `r50k_pat_str`.

`write_hf_tokenizer` writes tokenizer.json (read by the fast tokenizers), vocab.json and merges.txt (the slow
ones), and tokenizer_config.json / special_tokens_map.json: pad token <|endoftext|>, right padding and
truncation at the training length, and `split_special_tokens` so that "<|endoftext|>" typed in a text is plain
text, as our preprocessing treats it (tiktoken's ordinary encoding), never the special token 50256.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import tiktoken

from spam_lightning.tokenizer import PAD_TOKEN_ID

SPECIAL = "<|endoftext|>"  # GPT-2's only special token: end of text, and our padding
FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


class TokenizerConversionError(ValueError):
    """The ranks do not describe a byte-level BPE that Hugging Face's files can express."""


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> character map: printable Latin-1 bytes stand for themselves, the others (controls, space)
    for the characters from U+0100 on, in byte order (OpenAI's `bytes_to_unicode`)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict(zip(printable, printable, strict=True)), 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = 256 + extra
            extra += 1
    return {byte: chr(code) for byte, code in chars.items()}


def _bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's BPE on `token`'s bytes with the tokens ranked below `max_rank`: repeatedly merge the adjacent
    pair whose concatenation has the lowest rank (leftmost on a tie)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab.json's token -> id and merges.txt's pairs in priority order, from tiktoken's bytes -> rank."""
    alphabet = byte_level_alphabet()

    def text(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    if len(vocab) != len(ranks) or sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerConversionError("the ranks must be the ids 0..n-1 of distinct tokens")
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _bpe(ranks, token, rank)
        if len(parts) != 2:
            raise TokenizerConversionError(f"token {rank} ({token!r}) is not one merge of two lower-ranked tokens")
        merges.append((text(parts[0]), text(parts[1])))
    return vocab, merges


def _byte_level(**options: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True, **options}


def tokenizer_json(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict[str, Any]:
    """The `tokenizers` library's serialisation of GPT-2's tokenizer (as the Hub's openai-community/gpt2 has it)."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": PAD_TOKEN_ID,
                "content": SPECIAL,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": _byte_level(),
        "post_processor": _byte_level(trim_offsets=False),
        "decoder": _byte_level(),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": [f"{a} {b}" for a, b in merges],  # byte-level tokens never hold a space
        },
    }


def tokenizer_config(model_max_length: int) -> dict[str, Any]:
    """tokenizer_config.json: GPT-2's tokenizer padding with <|endoftext|> on the right, truncating on the right at
    `model_max_length` (with truncation=True), and reading "<|endoftext|>" in a text as plain text."""
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_max_length,
        "padding_side": "right",
        "truncation_side": "right",
        "bos_token": SPECIAL,
        "eos_token": SPECIAL,
        "unk_token": SPECIAL,
        "pad_token": SPECIAL,
        "add_prefix_space": False,
        "add_bos_token": False,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "added_tokens_decoder": {
            str(PAD_TOKEN_ID): {
                "content": SPECIAL,
                "lstrip": False,
                "normalized": True,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
        },
    }


def write_hf_tokenizer(tokenizer: tiktoken.Encoding, out_dir: Path, model_max_length: int) -> list[Path]:
    """Write FILES into out_dir from tiktoken's GPT-2 encoding; returns their paths."""
    if tokenizer.eot_token != PAD_TOKEN_ID or tokenizer.n_vocab != PAD_TOKEN_ID + 1:
        raise TokenizerConversionError(f"expected GPT-2's encoding ({PAD_TOKEN_ID + 1} tokens), got {tokenizer.name}")
    vocab, merges = vocab_and_merges(tokenizer._mergeable_ranks)
    full_vocab = {**vocab, SPECIAL: PAD_TOKEN_ID}
    special = {name: SPECIAL for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    contents = {
        "tokenizer.json": json.dumps(tokenizer_json(full_vocab, merges), ensure_ascii=False),
        "vocab.json": json.dumps(full_vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(tokenizer_config(model_max_length), indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }
    paths = []
    for name in FILES:
        path = out_dir / name
        path.write_text(contents[name], encoding="utf-8")
        paths.append(path)
    return paths
