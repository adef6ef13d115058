"""The distillation loss, pure functions: logits (kd_loss), hidden states, attention relations,
and distill_loss composing them."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from kdistill.training.layer_losses import (
    HiddenProjection,
    attention_relation_loss,
    hidden_state_loss,
)


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


def _kl(
    log_p_s: torch.Tensor,
    log_p_t: torch.Tensor,
    temperature: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * KL(p_t || p_s), mean over rows; with `weights` (rows,), mean over rows of w_i KL_i."""
    if weights is None:
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    else:
        per_row = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)
        kl = (weights.float() * per_row).mean()
    return kl * temperature**2


def _row_terms(
    s: torch.Tensor,
    log_p_s: torch.Tensor,
    log_p_t: torch.Tensor,
    labels: torch.Tensor,
    labeled: torch.Tensor,
    temperature: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T^2 KL over every row, over the labelled rows, over the unlabelled rows, CE over the
    labelled rows), the KL terms weighted per row by `weights`; a kind of row the batch lacks
    gives 0."""
    zero = s.new_zeros(())
    kl = _kl(log_p_s, log_p_t, temperature, weights)  # every row
    n_labeled = int(labeled.sum())
    if n_labeled == labels.shape[0]:  # the common case, kept free of indexing
        return kl, kl, zero, F.cross_entropy(s, labels)
    unlabeled = ~labeled

    def part(rows: torch.Tensor) -> torch.Tensor:
        w = weights[rows] if weights is not None else None
        return _kl(log_p_s[rows], log_p_t[rows], temperature, w)

    kl_unl = part(unlabeled)
    if not n_labeled:
        return kl, zero, kl_unl, zero
    kl_lab = part(labeled)
    return kl, kl_lab, kl_unl, F.cross_entropy(s[labeled], labels[labeled])


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    weights: torch.Tensor | None = None,
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
    negative label marks an unlabelled row (kdistill.data.unlabeled gives them -100, the ignore
    index; -1 works too).

    The T^2 factor keeps the soft term's gradients the same size as T changes (they scale as
    1/T^2 otherwise), so alpha means the same at every temperature. `kl` is returned with the
    T^2 factor included.

    `weights` (batch,), optional: kl_i becomes w_i * kl_i (--round-targets weighted gives each
    row its relabeller's confidence, mean 1 over the transfer set); None is w_i = 1, the loss
    above exactly.

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
    kl, kl_lab, kl_unl, ce = _row_terms(s, log_p_s, log_p_t, labels, labeled, temperature, weights)
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
