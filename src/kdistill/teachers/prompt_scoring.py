"""How a causal LM scores label words after prompts, given left-aligned prompt tokens.

A class's score is the mean per-token log-probability of its label word as the continuation of
the prompt. The first label token's log-probability comes from the prompt pass (one forward, KV
cache kept, only the last position's logits); tokens 2..n of every word are then scored over
that cache, packed into one sequence per prompt when the model's attention takes a custom mask
(`prefix_cache.packed_continuations`), else with the cache repeated per class in chunks that fit
a memory bound. Mean rather than sum, so a three-token word is not penalised against a one-token
word for its length.

Vocabulary logits are computed only where a label token is scored, in row chunks
(`teachers.vocab_logits`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from kdistill.teachers.prefix_cache import PrefixCache, packed_continuations, suffix_batch
from kdistill.teachers.vocab_logits import forward_hidden, token_logprobs

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def score_aligned(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    prefix: PrefixCache | None,
    label_ids: list[list[int]],
    pad: int,
    chunk_bytes: int,
) -> torch.Tensor:
    """(B, C) mean log-probability of each label word after each left-aligned row; with
    `prefix`, every row starts with its tokens and only what follows them runs, over a copy of
    the prefix's keys and values: one per row, so a long prefix cuts the batch into slices of
    `prefix.rows_per_forward()` rows."""
    if prefix is not None and ids.shape[0] > (rows := prefix.rows_per_forward()):
        slices = zip(ids.split(rows), mask.split(rows), strict=True)
        return torch.cat(
            [score_aligned(model, i, m, prefix, label_ids, pad, chunk_bytes) for i, m in slices]
        )
    if prefix is None:
        lengths = mask.sum(1)  # (B,)
        # Positions count real tokens only, so a padded row sees what it would see alone.
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        hidden, cache = forward_hidden(
            model, True, input_ids=ids, attention_mask=mask, position_ids=positions
        )
    else:
        suffix = suffix_batch(ids, mask, len(prefix), pad)
        mask, lengths = suffix["attention_mask"], suffix["lengths"]  # mask: (B, P + S)
        hidden, cache = forward_hidden(
            model,
            True,
            input_ids=suffix["input_ids"],
            attention_mask=mask,
            position_ids=suffix["position_ids"],
            cache=prefix.expanded(model, ids.shape[0]),
        )
    device = ids.device
    labels = [torch.tensor(r, device=device) for r in label_ids]
    n_tokens = torch.tensor([len(r) for r in label_ids], device=device)  # (C,)
    firsts = torch.stack([r[0] for r in labels]).expand(ids.shape[0], -1)  # (B, C)
    scores = token_logprobs(model, hidden[:, -1], firsts, chunk_bytes)  # (B, C)
    longest = int(n_tokens.max())
    if longest > 1:
        packed = packed_continuations(model, cache, mask, lengths, labels, chunk_bytes)
        if packed is None:
            packed = repeated_continuations(
                model, cache, mask, lengths, labels, longest, pad, chunk_bytes
            )
        scores = scores + packed
    return scores / n_tokens


def repeated_continuations(
    model: PreTrainedModel,
    cache: Any,
    mask: torch.Tensor,
    lengths: torch.Tensor,
    labels: list[torch.Tensor],
    longest: int,
    pad: int,
    chunk_bytes: int,
) -> torch.Tensor:
    """(B, C) summed log-probabilities of label tokens 2..n, for a model whose attention takes
    no custom mask: one forward over the prompt cache repeated per class, in chunks of classes
    that fit `chunk_bytes`."""
    device = mask.device
    batch, num_labels, steps = mask.shape[0], len(labels), longest - 1
    # (C, longest) label tokens padded on the right; a row's inputs are its tokens but the
    # last, its targets all tokens but the first.
    tokens = torch.full((num_labels, longest), pad, dtype=torch.long, device=device)
    real = torch.zeros((num_labels, longest), dtype=torch.long, device=device)
    for c, r in enumerate(labels):
        tokens[c, : len(r)] = r
        real[c, : len(r)] = 1
    inputs, targets, target_real = tokens[:, :-1], tokens[:, 1:], real[:, 1:]

    cache_bytes = sum(t.numel() * t.element_size() for kv in cache for t in kv[:2] if t is not None)
    per_row = cache_bytes / batch  # the vocabulary logits are bounded by `token_logprobs`
    per_chunk = max(1, min(num_labels, int(chunk_bytes // (per_row * batch))))
    result = torch.empty((batch, num_labels), device=device)
    for start in range(0, num_labels, per_chunk):
        cs = slice(start, min(start + per_chunk, num_labels))
        k = cs.stop - cs.start
        last = cs.stop == num_labels
        # Row b * k + j is prompt b with class start + j; the last chunk may consume the cache.
        rep = cache if last else copy.deepcopy(cache)
        rep.batch_repeat_interleave(k)
        hidden, _ = forward_hidden(
            model,
            False,
            input_ids=inputs[cs].repeat(batch, 1),
            attention_mask=torch.cat(
                [mask.repeat_interleave(k, 0), real[cs, :-1].repeat(batch, 1)], dim=1
            ),
            position_ids=(lengths[:, None] + torch.arange(steps, device=device)).repeat_interleave(
                k, 0
            ),
            cache=rep,
        )  # (B * k, steps, X)
        # Only positions whose target is a real label token reach the output layer.
        real_rows = target_real[cs].repeat(batch, 1).bool()  # (B * k, steps)
        wanted = targets[cs].repeat(batch, 1)[real_rows][:, None]  # (N, 1)
        picked = torch.zeros(real_rows.shape, device=device)
        picked[real_rows] = token_logprobs(model, hidden[real_rows], wanted, chunk_bytes)[:, 0]
        result[:, cs] = picked.sum(-1).view(batch, k)
    return result
