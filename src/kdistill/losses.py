"""The distillation loss, a pure function."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class KDLoss(NamedTuple):
    """`loss` is what is optimised; `kl` and `ce` are its unweighted parts, for logging."""

    loss: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> KDLoss:
    """Hinton et al. (2015) distillation loss.

        p_t = softmax(teacher_logits / T)      p_s = softmax(student_logits / T)
        kl  = T^2 * KL(p_t || p_s)             (mean over the batch: "batchmean")
        ce  = CrossEntropy(student_logits, labels)   (at temperature 1)
        loss = alpha * kl + (1 - alpha) * ce

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
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2
    ce = F.cross_entropy(s, labels)
    if alpha == 0.0:  # exactly cross-entropy, not 0 * kl (which is NaN if kl is inf)
        return KDLoss(ce, kl.detach(), ce.detach())
    if alpha == 1.0:
        return KDLoss(kl, kl.detach(), ce.detach())
    return KDLoss(alpha * kl + (1.0 - alpha) * ce, kl.detach(), ce.detach())
