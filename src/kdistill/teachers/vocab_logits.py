"""Vocabulary logits only where a label token is scored, never more rows at once than a budget.

A prompt teacher needs log-probabilities at a handful of positions per prompt: the answer
position, and the label tokens after it. A causal LM's forward applies its output layer to a
(rows, positions, hidden) input: with a 151,936-token vocabulary (Qwen2, DeepSeek-R1-Distill)
each position costs 0.6 MB of float32 logits, and a batched bf16 matrix product over such an
input asked for 29.9 GB on CPU (issue 32: 64 rows x the 1536 x 151,936 output layer x 2 bytes).
So the decoder runs alone, the hidden states of the positions that are scored are gathered into
one 2D (N, hidden) matrix, and the output layer runs over it in row chunks whose logits fit a
byte budget: a plain matrix product on every backend, never a batched one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Set on architectures that transform the output layer's result (Gemma 2's soft-capping, Cohere's
# scale, Granite's divisor): their logits come from the whole model, not decoder + output layer.
HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def plain_head(model: PreTrainedModel) -> torch.nn.Module | None:
    """The output layer when logits are exactly `head(decoder(...).last_hidden_state)`, else
    None (the model then computes its own logits, `forward_hidden`)."""
    config = model.config
    if any(getattr(config, a, None) not in (None, 1.0) for a in HEAD_EXTRAS):
        return None
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or decoder is model:
        return None
    return model.get_output_embeddings()


def forward_hidden(
    model: PreTrainedModel, last_only: bool, **inputs: Any
) -> tuple[torch.Tensor, Any]:
    """(B, S, X) what the output layer reads at each position (S = 1 with `last_only`), and the
    extended cache. X is the hidden size when `plain_head`, so no vocabulary logits exist yet;
    otherwise the model's own logits (X = vocab)."""
    if plain_head(model) is None:
        keep = {"logits_to_keep": 1} if last_only else {}
        out = model(**inputs, use_cache=True, **keep)
        return out.logits, out.cache
    out = model.get_decoder()(**inputs, use_cache=True)
    hidden = out.last_hidden_state
    return (hidden[:, -1:] if last_only else hidden), out.cache


def token_logprobs(
    model: PreTrainedModel, hidden: torch.Tensor, targets: torch.Tensor, chunk_bytes: int
) -> torch.Tensor:
    """(N, K) float32 log-probabilities of `targets` (N, K) token ids at the N positions whose
    `hidden` (N, X) states are given (from `forward_hidden`). The output layer takes a 2D
    (rows, hidden) input in chunks of rows whose float32 logits and log-softmax fit
    `chunk_bytes`, so no (rows, vocab) tensor exceeds it, however long the prompts."""
    head = plain_head(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    rows = max(1, chunk_bytes // (vocab * 4 * 2))
    parts = []
    for h, t in zip(hidden.split(rows), targets.split(rows), strict=True):
        logits = head(h) if head is not None else h  # (rows, vocab)
        parts.append(logits.float().log_softmax(-1).gather(-1, t))
    if not parts:
        return torch.zeros(targets.shape, device=targets.device)
    return torch.cat(parts)
