"""What training does to a text before the model sees it, recorded once and replayed by prediction.

Training builds one `Preprocessing` (the data module, once it has seen the training split), saves it in
every checkpoint and export, and prediction reads it back: nothing is re-derived from settings. The same
`encode` and `pad` serve the training batches, the frozen-feature cache and prediction.

No Lightning here: an exported model needs only torch, safetensors and tiktoken.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import tiktoken
import torch

from spam_lightning.errors import UserError
from spam_lightning.tokenizer import GPT2_TIKTOKEN_SHA256, PAD_TOKEN_ID


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
        full = tokenizer.encode_ordinary_batch(list(texts))
        return [ids[:limit] for ids in full], [len(ids) > limit for ids in full]

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad token id rows to `pad_length` (or the longest row): (B, T) input_ids and (B,) lengths."""
        return pad(rows, self.pad_length, self.pad_token_id)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], source: str) -> Preprocessing:
        try:
            pre = cls(**{**record, "labels": tuple(record["labels"])})
        except (KeyError, TypeError) as err:
            raise PreprocessingError(f"{source}: incomplete preprocessing record ({err})") from err
        if pre.tokenizer != "gpt2" or pre.tokenizer_sha256 != GPT2_TIKTOKEN_SHA256:
            raise PreprocessingError(
                f"{source}: trained with tokenizer {pre.tokenizer!r} (sha256 {pre.tokenizer_sha256}); "
                f"this version has only GPT-2's BPE (sha256 {GPT2_TIKTOKEN_SHA256})"
            )
        return pre


def pad(rows: Sequence[Sequence[int]], width: int | None, pad_token_id: int = PAD_TOKEN_ID) -> tuple[torch.Tensor, ...]:
    """(B, width or longest) input_ids right-padded with `pad_token_id`, and the (B,) true lengths."""
    lengths = [len(ids) for ids in rows]
    input_ids = torch.full((len(rows), width if width is not None else max(lengths)), pad_token_id, dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return input_ids, torch.tensor(lengths, dtype=torch.long)
