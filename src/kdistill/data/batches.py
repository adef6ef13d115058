"""Tokenised batches: each model (student, teacher) reads the same raw text through its own
tokenizer or prompt, and `PairCollator` pads each model's inputs per batch.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from kdistill.data.digests import tokenizer_identity

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

# tokenize() cuts a text to max(max_length * CHARS_PER_TOKEN_BOUND, MIN_CHARS_KEPT) characters
# before tokenising it: real tokens average 3-6 characters, and even runs of whitespace, which
# some tokenizers drop, would have to fill most of 64k characters to move a kept token.
CHARS_PER_TOKEN_BOUND = 64
MIN_CHARS_KEPT = 65_536


def tokenize(
    ds: Dataset,
    encoders: dict[str, Any],
    max_length: int,
) -> Dataset:
    """Add `<prefix>_input_ids` / `<prefix>_attention_mask` for each model's own encoder.

    An encoder is a tokenizer, or a teacher with `encode(texts, max_length)` (a prompt teacher
    wraps each text in its prompt). A Qwen BPE teacher and a WordPiece student see the same raw
    text, each split its own way; padding happens per batch in `PairCollator`.
    """
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar
    from transformers import PreTrainedTokenizerBase

    # A tokenizer splits the whole text before it truncates: a 5 MB row (a book pasted into a
    # cell) costs seconds per tokenizer and pass. Cutting the text first, far beyond what
    # max_length tokens can cover, leaves the kept tokens as they were and the cost bounded.
    limit = max(max_length * CHARS_PER_TOKEN_BOUND, MIN_CHARS_KEPT)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {}
        texts = [t if len(t) <= limit else t[:limit] for t in batch["text"]]
        for prefix, encoder in encoders.items():
            if isinstance(encoder, PreTrainedTokenizerBase):
                enc = encoder(texts, truncation=True, max_length=max_length)
            else:
                enc = encoder.encode(texts, max_length)
            out[f"{prefix}_input_ids"] = enc["input_ids"]
            out[f"{prefix}_attention_mask"] = enc["attention_mask"]
        return out

    fingerprint = _fingerprint(ds, encoders, max_length, limit)
    # A bar only where tokenising takes long enough to wonder about.
    (enable_progress_bar if len(ds) > 50_000 else disable_progress_bar)()
    try:
        return ds.map(encode, batched=True, desc="tokenising", new_fingerprint=fingerprint)
    finally:
        disable_progress_bar()


def _fingerprint(ds: Dataset, encoders: dict[str, Any], max_length: int, limit: int) -> str:
    """The tokenised split's name for datasets' cache. datasets fingerprints a map function by
    pickling it, and a teacher encoder holds its whole model: name the result by what decides
    it instead."""
    from transformers import PreTrainedTokenizerBase

    identity = [ds._fingerprint, max_length, limit]
    for prefix, encoder in sorted(encoders.items()):
        if isinstance(encoder, PreTrainedTokenizerBase):
            identity.append([prefix, tokenizer_identity(encoder)])
        else:
            identity.append(
                [
                    prefix,
                    type(encoder).__name__,
                    encoder.name,
                    encoder.settings(),
                    tokenizer_identity(encoder.tokenizer),
                ]
            )
    return hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:32]


class PairCollator:
    """Pads each model's inputs to the longest row of the batch; `labels` as a tensor."""

    def __init__(self, tokenizers: dict[str, PreTrainedTokenizerBase]) -> None:
        self.tokenizers = tokenizers

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch: dict[str, Any] = {"labels": torch.tensor([r["label"] for r in rows])}
        if "row" in rows[0]:
            batch["row"] = torch.tensor([r["row"] for r in rows])
        for prefix, tok in self.tokenizers.items():
            padded = tok.pad(
                {
                    "input_ids": [r[f"{prefix}_input_ids"] for r in rows],
                    "attention_mask": [r[f"{prefix}_attention_mask"] for r in rows],
                },
                return_tensors="pt",
            )
            batch[f"{prefix}_input_ids"] = padded["input_ids"]
            batch[f"{prefix}_attention_mask"] = padded["attention_mask"]
        return batch
