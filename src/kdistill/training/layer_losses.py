"""The intermediate-layer terms of the distillation loss, pure functions: hidden states matched
through a learned projection (TinyBERT, DistilBERT) and MiniLMv2's self-attention relations.
`losses.distill_loss` composes them with the logit term."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class HiddenProjection(torch.nn.Module):
    """One learned linear map per mapped layer pair, from the student's width to the teacher's
    (TextBrewer, DistillKit): an identity where the widths agree. It belongs to the training run,
    is trained with the student, and is not part of the saved student."""

    def __init__(self, student_width: int, teacher_width: int, pairs: int) -> None:
        super().__init__()
        self.maps = torch.nn.ModuleList(
            torch.nn.Identity()
            if student_width == teacher_width
            else torch.nn.Linear(student_width, teacher_width)
            for _ in range(pairs)
        )

    def forward(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every pair's student states at once (one call per step, as DistributedDataParallel
        expects of a wrapped module): states[k] (batch, seq, d_s) -> (batch, seq, d_t)."""
        return [m(x) for m, x in zip(self.maps, states, strict=True)]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values (batch, seq) over the positions where mask (batch, seq) is true."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def _pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens: (batch, seq, width) -> (batch, width)."""
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)


def _state_distance(s: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-position distance over the last dimension: mse = mean squared difference,
    cosine = 1 - cos(s, t)."""
    if kind == "mse":
        return (s - t).pow(2).mean(-1)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    raise ValueError(f"hidden loss kind must be mse or cosine (got {kind!r})")


def hidden_state_loss(
    student_states: list[torch.Tensor],
    teacher_states: list[torch.Tensor],
    student_mask: torch.Tensor,
    teacher_mask: torch.Tensor,
    projection: HiddenProjection,
    kind: str,
    token_level: bool,
) -> torch.Tensor:
    """Distance between mapped student and teacher hidden states, mean over the layer pairs.

        h_s' = W_k h_s + b_k          (the pair's projection; identity when the widths agree)
        mse:    d = mean_j (h_s'_j - h_t_j)^2        cosine: d = 1 - cos(h_s', h_t)
        token_level:  L_k = mean over real tokens (attention mask) of d at each position
        otherwise:    L_k = mean over rows of d(mean-pooled h_s', mean-pooled h_t)
        L_hidden = mean over pairs k of L_k

    token_level needs the two models to see the same tokens (the same tokenizer): position i
    of one is position i of the other. Otherwise each model's states are mean-pooled over its
    own real tokens first. Padded positions contribute nothing either way.

    Shapes: student_states[k] (batch, seq_s, d_s), teacher_states[k] (batch, seq_t, d_t),
    masks (batch, seq) with 1 on real tokens. Teacher states carry no gradient; float32.
    """
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError(
            "hidden_state_loss needs the same number (>= 1) of student and teacher states"
        )
    losses = []
    projected = projection([s.float() for s in student_states])
    for s, t in zip(projected, teacher_states, strict=True):
        t = t.detach().float()
        if token_level:
            losses.append(_masked_mean(_state_distance(s, t, kind), student_mask.bool()))
        else:
            pooled = _state_distance(_pool(s, student_mask), _pool(t, teacher_mask), kind)
            losses.append(pooled.mean())
    return torch.stack(losses).mean()


def _relation_log_probs(x: torch.Tensor, heads: int, key_mask: torch.Tensor) -> torch.Tensor:
    """log softmax(X_r X_r^T / sqrt(d_r)) over the keys, per relation head r.

    x (batch, seq, width) split into `heads` slices of width d_r = width / heads ->
    (batch, heads, seq, seq); padded keys get probability 0."""
    b, n, width = x.shape
    if width % heads:
        raise ValueError(f"width {width} does not split into {heads} relation heads")
    d = width // heads
    xr = x.float().view(b, n, heads, d).transpose(1, 2)  # (batch, heads, seq, d)
    scores = xr @ xr.transpose(-1, -2) / math.sqrt(d)  # (batch, heads, seq, seq)
    masked = ~key_mask.bool()[:, None, None, :]
    scores = scores.masked_fill(masked, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def attention_relation_loss(
    student_qkv: tuple[torch.Tensor, ...],
    teacher_qkv: tuple[torch.Tensor, ...],
    mask: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """MiniLMv2's multi-head self-attention relation distillation (Wang et al. 2021).

        for X in (Q, K, V), on one mapped layer pair, each split into `heads` relation heads:
            R_X = softmax(X_r X_r^T / sqrt(d_r))          (seq x seq, per relation head r)
            KL_X = mean over relation heads and real query tokens of
                   KL(R_X^teacher[i] || R_X^student[i])   (one row i of the relation)
        L_rel = KL_Q + KL_K + KL_V

    The relations are seq x seq whatever the widths, and both models are split into the same
    number of relation heads (d_r differs between them), so the teacher's and student's head
    counts and widths may differ; `heads` must divide every width. The two models must see the
    same tokens (the same tokenizer). Padded keys get probability 0 in both relations and padded
    query rows are left out, so padding contributes nothing.

    Shapes: each of student_qkv / teacher_qkv is (batch, seq, width) (queries, keys, values
    before the attention heads split them: the projection's output); mask (batch, seq).
    float32; the teacher's side carries no gradient.
    """
    key_mask = mask.bool()
    rows = key_mask[:, None, :].expand(-1, heads, -1)  # (batch, heads, seq): real query rows
    total = student_qkv[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_qkv, teacher_qkv, strict=True):
        log_s = _relation_log_probs(s, heads, key_mask)
        log_t = _relation_log_probs(t.detach(), heads, key_mask)
        # Written out rather than F.kl_div: a padded key has p_t = 0 and must add exactly 0.
        kl = (log_t.exp() * (log_t - log_s)).masked_fill(~key_mask[:, None, None, :], 0.0)
        total = total + _masked_mean(kl.sum(-1), rows)
    return total
