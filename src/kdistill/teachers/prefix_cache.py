"""Key/value reuse in the prompt teacher: a shared prefix run once, label words scored together.

Shared prefix (what vLLM calls automatic prefix caching). Every prompt a prompt teacher builds
starts with the same tokens: few-shot examples, the instruction, the label list, a chat
template's system turn; only the text and the answer cue after it differ. Those tokens' keys and
values are the same in every row (a causal model's position p sees positions <= p only), so
they are computed once and each batch runs only its rows' suffixes on top of them. Exactness
does not rest on where the prefix string ends: a row uses the cache only if its own token ids
start with the prefix's ids, checked per batch. A BPE merge across the text boundary (or any
tokenizer quirk) can only make a row miss, and a missed row is scored the plain way.

Label words. A word of n tokens needs the log-probabilities of its tokens 2..n, read after the
prompt and the word's own earlier tokens. Rather than copying the prompt cache once per class,
all classes' tokens go into one sequence per row over a single cache, with a 4D attention mask
in which a label token sees the prompt, the earlier tokens of its own word and itself (the tree
attention of speculative decoding); positions restart at the prompt's end for every word.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

import torch

from kdistill.teachers.vocab_logits import forward_hidden, token_logprobs

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

# Shorter shared starts are not worth a cache copy per batch (a BOS alone, say).
MIN_PREFIX_TOKENS = 4

# A forward over the cache holds one copy of the prefix's keys and values per row (transformers'
# attention takes a (B, heads, positions, dim) cache), so rows x prefix tokens bounds its memory
# and the traffic of every attention call. Batches are cut to stay under it: with 14 few-shot
# examples (a 1,967-token prefix) SmolLM2-135M scored 0.32 s/row at 8 rows a forward against
# 0.58 at 64, on 2 CPU cores; with no shots (50 tokens) batches are not cut.
PREFIX_COPY_TOKENS = 16_384


def common_prefix(rows: list[list[int]]) -> list[int]:
    """The longest token-id list every row starts with."""
    if not rows:
        return []
    n = 0
    shortest = min(len(r) for r in rows)
    while n < shortest and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return list(rows[0][:n])


def suffix_batch(
    ids: torch.Tensor, mask: torch.Tensor, prefix_len: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """The model inputs that continue a prefix cache of `prefix_len` tokens.

    `ids` / `mask` are (B, W), left-aligned (pads first), every row starting with the prefix.
    Returns `input_ids` (B, S) of each row's tokens after the prefix, left-padded to the longest;
    `attention_mask` (B, prefix_len + S) over cache and suffix, so the pads sit between prefix
    and suffix; `position_ids` (B, S) counting real tokens only, so every row sees what it would
    see unpadded; and `lengths` (B,), real tokens in all.
    """
    lengths = mask.sum(1)
    suffix_lengths = lengths - prefix_len  # (B,) all >= 1 (checked by `match`)
    width = int(suffix_lengths.max())
    suffix_ids = ids[:, ids.shape[1] - width :]
    cols = torch.arange(width, device=ids.device)
    suffix_mask = (cols[None, :] >= width - suffix_lengths[:, None]).long()
    suffix_ids = torch.where(suffix_mask.bool(), suffix_ids, torch.full_like(suffix_ids, pad_id))
    prefix_mask = torch.ones((ids.shape[0], prefix_len), dtype=mask.dtype, device=mask.device)
    return {
        "input_ids": suffix_ids,
        "attention_mask": torch.cat([prefix_mask, suffix_mask.to(mask.dtype)], dim=1),
        "position_ids": prefix_len + (suffix_mask.cumsum(1) - 1).clamp(min=0),
        "lengths": lengths,
    }


class PrefixCache:
    """The key/value cache of one token prefix, computed once per device and copied per batch."""

    def __init__(self, prefix_ids: list[int]) -> None:
        self.prefix_ids = list(prefix_ids)
        self._caches: dict[str, Any] = {}
        self._warned = False

    def __len__(self) -> int:
        return len(self.prefix_ids)

    def rows_per_forward(self) -> int:
        """The most rows one forward over the cache takes (`PREFIX_COPY_TOKENS`)."""
        return max(1, PREFIX_COPY_TOKENS // max(1, len(self.prefix_ids)))

    def match(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the left-aligned row starts with the prefix and has a token after it."""
        n, width = len(self.prefix_ids), ids.shape[1]
        lengths = mask.sum(1)
        long_enough = lengths > n
        if n == 0 or width <= n or not bool(long_enough.any()):
            return torch.zeros_like(long_enough)
        start = (width - lengths).clamp(max=width - n - 1)  # the first real column of each row
        cols = start[:, None] + torch.arange(n, device=ids.device)  # (B, n)
        prefix = torch.tensor(self.prefix_ids, device=ids.device)
        hits = long_enough & (ids.gather(1, cols) == prefix).all(1)
        misses = int((~hits).sum())
        if misses and not self._warned:
            self._warned = True
            logger.info(
                "prefix cache: %d of %d rows in a batch do not start with the shared prompt "
                "prefix's %d tokens (the tokenizer merged it with the text); they are scored "
                "without the cache (same logits, slower)",
                misses,
                len(hits),
                n,
            )
        return hits

    def expanded(self, model: PreTrainedModel, batch: int) -> Any:
        """A fresh cache holding the prefix `batch` times, for one forward to extend."""
        key = f"{model.device}|{model.dtype}"
        if key not in self._caches:
            ids = torch.tensor([self.prefix_ids], device=model.device)
            _, self._caches[key] = forward_hidden(model, True, input_ids=ids)
        cache = copy.deepcopy(self._caches[key])
        cache.batch_repeat_interleave(batch)
        return cache

    def usable(self, model: PreTrainedModel) -> str | None:
        """Why this model's cache cannot be reused this way, or None when it can: a sliding
        window layer drops old positions, so an extended prefix would not equal the full run."""
        from transformers import DynamicCache

        cache = self.expanded(model, 1)
        if not isinstance(cache, DynamicCache):
            return f"the model's cache is a {type(cache).__name__}, not a DynamicCache"
        if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
            return "the model has sliding-window attention layers"
        return None


def packed_continuations(
    model: PreTrainedModel,
    cache: Any,
    mask: torch.Tensor,
    lengths: torch.Tensor,
    labels: list[torch.Tensor],
    chunk_bytes: int,
) -> torch.Tensor | None:
    """(B, C) summed log-probabilities of label tokens 2..n of every class after every prompt,
    or None where the model cannot take a custom 4D mask (flash attention, sliding windows).

    `cache` holds the prompts (B, W) with `mask` (B, W) over its columns and `lengths` (B,) real
    tokens each; it is extended in place. Classes are packed into chunks of at most
    `chunk_bytes` of fp32 logits; the cache is cropped back to the prompts between chunks.
    """
    impl = getattr(model.config, "_attn_implementation", None)
    layers = getattr(cache, "layers", None)
    if impl not in ("sdpa", "eager") or layers is None:
        return None
    if any(getattr(layer, "is_sliding", False) for layer in layers):
        return None
    device = mask.device
    batch, width = mask.shape
    vocab = model.get_output_embeddings().weight.shape[0]
    budget = max(1, chunk_bytes // (batch * vocab * 4 * 2))  # tokens: logits + log-softmax
    chunks = _chunks(labels, budget)
    result = torch.zeros((batch, len(labels)), device=device)
    prompt = mask.bool()[:, None, :]  # (B, 1, W)
    for i, chunk in enumerate(chunks):
        if not chunk:
            continue
        inputs = torch.cat([labels[c][:-1] for c in chunk])  # (T,) every word but its last token
        targets = torch.cat([labels[c][1:] for c in chunk])  # (T,) every word but its first
        owner = torch.cat(
            [torch.full((len(labels[c]) - 1,), j, device=device) for j, c in enumerate(chunk)]
        )
        offset = torch.cat([torch.arange(len(labels[c]) - 1, device=device) for c in chunk])
        steps = len(inputs)
        allowed = _packed_mask(prompt, owner, offset, impl == "eager", model.dtype)
        hidden, _ = forward_hidden(
            model,
            False,
            input_ids=inputs.expand(batch, steps),
            attention_mask=allowed,
            position_ids=lengths[:, None] + offset,
            cache=cache,
        )  # (B, T, X)
        if i < len(chunks) - 1:
            cache.crop(-steps)
        # (B * T, X) rows into the output layer: only the packed label positions, in chunks.
        wanted = targets.expand(batch, steps).reshape(-1, 1)
        flat = hidden.reshape(batch * steps, -1)
        picked = token_logprobs(model, flat, wanted, chunk_bytes).view(batch, steps)
        summed = torch.zeros((batch, len(chunk)), device=device).index_add_(1, owner, picked)
        result[:, chunk] = summed
    return result


def _chunks(labels: list[torch.Tensor], budget: int) -> list[list[int]]:
    """Classes with a second token, in order, grouped so each group's tokens 2..n fit `budget`
    (a lone word longer than the budget still gets its own group)."""
    chunks: list[list[int]] = [[]]
    for c, r in enumerate(labels):
        if len(r) < 2:
            continue
        tokens = sum(len(labels[k]) - 1 for k in chunks[-1])
        if chunks[-1] and tokens + len(r) - 1 > budget:
            chunks.append([])
        chunks[-1].append(c)
    return chunks


def _packed_mask(
    prompt: torch.Tensor,
    owner: torch.Tensor,
    offset: torch.Tensor,
    additive: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(B, 1, T, W + T) attention mask of the packed label tokens: the prompt's real columns
    (`prompt`, (B, 1, W)), and within the T packed tokens only the same word's earlier tokens
    and itself. `additive` (eager attention adds the mask to the scores): 0 / dtype min
    instead of True / False (sdpa reads True as "attend")."""
    batch, _, width = prompt.shape
    steps = len(owner)
    # (T, T): a label token sees its own word's earlier tokens and itself, no other word.
    own = (owner[:, None] == owner[None, :]) & (offset[:, None] >= offset[None, :])
    allowed = torch.cat(
        [prompt.expand(batch, steps, width), own.expand(batch, steps, steps)], dim=-1
    )[:, None]
    if additive:
        allowed = torch.zeros(allowed.shape, dtype=dtype, device=prompt.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return allowed
