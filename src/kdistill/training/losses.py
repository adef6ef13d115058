"""The distillation loss, pure functions: logits (kd_loss), hidden states, attention relations,
and distill_loss composing them."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class KDLoss(NamedTuple):
    """`loss` is what is optimised; the rest are its unweighted parts, for logging.

    kl: T^2 * KL over all rows; ce: CE over the labelled rows (0 when there are none);
    labeled_loss / unlabeled_loss: the mean per-row loss of each kind of row (0 when the batch
    has none); num_labeled / num_unlabeled: how many rows of each kind, to weight averages.
    """

    loss: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor
    labeled_loss: torch.Tensor
    unlabeled_loss: torch.Tensor
    num_labeled: int
    num_unlabeled: int


def _kl(log_p_s: torch.Tensor, log_p_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_t || p_s), mean over rows."""
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> KDLoss:
    """Hinton et al. (2015) distillation loss, over a batch that may hold unlabelled rows.

        p_t = softmax(teacher_logits / T)      p_s = softmax(student_logits / T)
        kl_i = T^2 * KL(p_t,i || p_s,i)        ce_i = CrossEntropy(student_logits_i, label_i)
        loss_i = alpha * kl_i + (1 - alpha) * ce_i      a labelled row
        loss_i = kl_i                                    an unlabelled row (label < 0), alpha > 0
        loss = mean over the batch's rows of loss_i

        alpha = 0: loss = mean over the labelled rows of ce_i; unlabelled rows contribute nothing

    With every row labelled this is alpha * T^2 * KL [batchmean] + (1 - alpha) * CE [mean]. An
    unlabelled row (a transfer-set row, Tang et al. 2019) has no label to learn from, so it
    gets the teacher's soft targets at full weight; alpha only trades the two sources of
    supervision where both exist. alpha = 0 is pure supervised training, the cross-entropy-only
    baseline distillation is measured against: no row learns from the teacher, so unlabelled
    rows (which have nothing else) drop out, and a batch of them alone gives a loss of 0. Any
    negative label marks an unlabelled row (kdistill.data.prepare gives them -100, the ignore index;
    -1 works too).

    The T^2 factor keeps the soft term's gradients the same size as T changes (they scale as
    1/T^2 otherwise), so alpha means the same at every temperature. `kl` is returned with the
    T^2 factor included.

    Shapes: logits (batch, num_labels), labels (batch,). The teacher's logits carry no gradient.
    Computed in float32 whatever the autocast dtype: log-softmax in bf16 loses the small
    probabilities that carry the teacher's "dark knowledge".
    """
    s = student_logits.float()
    t = teacher_logits.detach().float()
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    labeled = labels >= 0  # (batch,)
    n = labels.shape[0]
    n_labeled = int(labeled.sum())
    n_unlabeled = n - n_labeled
    zero = s.new_zeros(())

    kl = _kl(log_p_s, log_p_t, temperature)  # every row
    if n_unlabeled == 0:  # the common case, kept free of indexing
        kl_lab, kl_unl, ce = kl, zero, F.cross_entropy(s, labels)
    else:
        unlabeled = ~labeled
        kl_unl = _kl(log_p_s[unlabeled], log_p_t[unlabeled], temperature)
        if n_labeled:
            kl_lab = _kl(log_p_s[labeled], log_p_t[labeled], temperature)
            ce = F.cross_entropy(s[labeled], labels[labeled])
        else:
            kl_lab, ce = zero, zero
    # alpha 0 and 1 are exact, not 0 * kl (which is NaN if kl is inf).
    if alpha == 0.0:
        labeled_loss = ce
    elif alpha == 1.0:
        labeled_loss = kl_lab
    else:
        labeled_loss = alpha * kl_lab + (1.0 - alpha) * ce
    # The mean over rows of loss_i, as a weighted mean of the two kinds' means.
    if alpha == 0.0:  # cross-entropy only: the unlabelled rows have nothing to give
        loss = ce if n_labeled else s.sum() * 0.0  # still part of the graph, for backward()
    elif n_unlabeled == 0:
        loss = labeled_loss
    elif n_labeled == 0:
        loss = kl_unl
    else:
        loss = (n_labeled * labeled_loss + n_unlabeled * kl_unl) / n
    return KDLoss(
        loss,
        kl.detach(),
        ce.detach(),
        labeled_loss.detach(),
        kl_unl.detach(),
        n_labeled,
        n_unlabeled,
    )


# --------------------------------------------------------------------------- intermediate layers


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


class DistillLoss(NamedTuple):
    """distill_loss's result: `loss` is optimised; `kd` is kd_loss's result (its parts as
    KDLoss documents); hidden and relation are the unweighted intermediate terms (0 when off)."""

    loss: torch.Tensor
    kd: KDLoss
    hidden: torch.Tensor
    relation: torch.Tensor


class IntermediateStates(NamedTuple):
    """One batch's intermediate outputs of both models, on the mapped layer pairs.

    student_hidden[k] (batch, seq_s, d_s) and teacher_hidden[k] (batch, seq_t, d_t): the k-th
    pair of hidden states; student_qkv / teacher_qkv: the (queries, keys, values) of the
    relation's layer pair, each (batch, seq, width), or None; masks (batch, seq) with 1 on real
    tokens; token_level: the two tokenizers agree (see hidden_state_loss)."""

    student_hidden: list[torch.Tensor]
    teacher_hidden: list[torch.Tensor]
    student_qkv: tuple[torch.Tensor, ...] | None
    teacher_qkv: tuple[torch.Tensor, ...] | None
    student_mask: torch.Tensor
    teacher_mask: torch.Tensor
    token_level: bool


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    states: IntermediateStates | None = None,
    hidden_kind: str = "none",
    hidden_weight: float = 0.0,
    projection: HiddenProjection | None = None,
    attention_weight: float = 0.0,
    relation_heads: int = 1,
) -> DistillLoss:
    """The whole distillation loss: logits, and optionally hidden states and attention relations.

        loss = alpha * T^2 * KL + (1 - alpha) * CE          (kd_loss, per row as it documents)
             + hidden_weight * L_hidden                     (hidden_state_loss)
             + attention_weight * L_rel                     (attention_relation_loss)

    The two intermediate terms are over every row, labelled or not: they come from the teacher.
    With hidden_kind "none" (or hidden_weight 0) and attention_weight 0 (or no states) the
    result is kd_loss's, bit for bit: the same tensor, nothing added.
    """
    kd = kd_loss(student_logits, teacher_logits, labels, temperature, alpha)
    loss = kd.loss
    zero = kd.kl.new_zeros(())
    hidden = relation = zero
    if states is not None and hidden_kind != "none" and hidden_weight:
        if projection is None:
            raise ValueError("a hidden-state loss needs its projection")
        hidden = hidden_state_loss(
            states.student_hidden,
            states.teacher_hidden,
            states.student_mask,
            states.teacher_mask,
            projection,
            hidden_kind,
            states.token_level,
        )
        loss = loss + hidden_weight * hidden
    if states is not None and attention_weight and states.student_qkv is not None:
        if not states.token_level:
            raise ValueError("attention relations need both models to see the same tokens")
        relation = attention_relation_loss(
            states.student_qkv, states.teacher_qkv, states.student_mask, relation_heads
        )
        loss = loss + attention_weight * relation
    return DistillLoss(loss, kd, hidden.detach(), relation.detach())
