"""Corrections a teacher's logits get from the texts it scores, with no label anywhere.

Zero-shot teachers are biased: a prompt LLM prefers some label words, an encoder sits some
class descriptions nearer every text. Contextual calibration (Zhao et al. 2021, the prompt
teacher's --calibrate) divides by what the prompt gives a content-free input; balancing uses the
texts themselves instead. Both are label-free.

Balancing (Sinkhorn / prior matching). Find one bias b_k per class so that the teacher's mean
predicted distribution over the N texts it scores is the class prior pi (uniform, or
--class-prior):

    p_i = softmax(z_i + b),   (1/N) sum_i p_i = pi

Iterating b <- b + log pi - log mean_i p_i is Sinkhorn's algorithm on the N x C matrix
exp(z): rows normalised by the softmax, columns scaled to N pi. The argmax changes (that is
the point: a class the teacher never picks gets its share), the ranking of texts within a
class does not.

Scale. An embedding teacher's logits are s * cos; `fit_scale` picks the s at which the mean
entropy of softmax(s * cos) over the texts is half the uniform distribution's, log(C) / 2 (the
rule --temperature auto uses): the answer still stands out, other classes keep some mass.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from kdistill.errors import KdistillError

logger = logging.getLogger(__name__)

SINKHORN_STEPS = 200
SINKHORN_TOLERANCE = 1e-6


def parse_class_prior(spec: str | None, label_names: list[str]) -> torch.Tensor:
    """--class-prior: None -> uniform; 'Company=0.2,Film=0.1,...' (classes left out share the
    rest equally) -> (C,) probabilities summing to 1."""
    c = len(label_names)
    if not spec:
        return torch.full((c,), 1.0 / c)
    given: dict[str, float] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            share = float(value) if sep else float("nan")
        except ValueError:
            share = float("nan")
        if not math.isfinite(share) or share < 0:
            raise KdistillError(
                f"--class-prior: {item.strip()!r} must be Class=share with a share >= 0, "
                "e.g. Company=0.2,Film=0.1"
            )
        if name not in label_names:
            shown = ", ".join(label_names[:6]) + (" ..." if c > 6 else "")
            raise KdistillError(f"--class-prior: unknown class {name!r}; the classes are: {shown}")
        given[name] = share
    total = sum(given.values())
    rest = [n for n in label_names if n not in given]
    if total > 1 + 1e-6 or (not rest and total <= 0) or (rest and total >= 1 - 1e-9):
        raise KdistillError(
            f"--class-prior {spec}: the shares must sum to 1 (or less, the classes left out "
            f"sharing the rest), each class > 0 in the end (got a sum of {total:g})"
        )
    left = (1.0 - total) / len(rest) if rest else 0.0
    prior = torch.tensor([given.get(n, left) for n in label_names], dtype=torch.float64)
    if (prior <= 0).any():
        raise KdistillError(f"--class-prior {spec}: every class needs a share > 0")
    return (prior / prior.sum()).float()


def balance(logits: torch.Tensor, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities (N, C) whose mean distribution is `prior`, the bias b (C,)).

    Sinkhorn iterations on `logits` (N, C); converges in tens of steps."""
    z = logits.double().log_softmax(-1)
    log_prior = prior.double().log()
    b = torch.zeros(z.shape[1], dtype=torch.float64)
    for _ in range(SINKHORN_STEPS):
        mean = (z + b).softmax(-1).mean(0)  # (C,)
        step = log_prior - mean.clamp_min(1e-300).log()
        b += step
        if step.abs().max() < SINKHORN_TOLERANCE:
            break
    return (z + b).log_softmax(-1).float(), b.float()


def mean_entropy(logits: torch.Tensor) -> float:
    """Mean entropy (nats) of softmax(logits) over the rows."""
    logp = logits.double().log_softmax(-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def fit_scale(cosines: torch.Tensor, low: float = 1.0, high: float = 1000.0) -> float:
    """The s at which softmax(s * cosines) has a mean entropy of log(C) / 2: bisection in
    log s (entropy falls as s grows)."""
    target = math.log(cosines.shape[1]) / 2
    if mean_entropy(cosines * high) > target:  # near-identical cosines: as sharp as allowed
        return high
    lo, hi = math.log(low), math.log(high)
    for _ in range(60):
        mid = (lo + hi) / 2
        if mean_entropy(cosines * math.exp(mid)) > target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def predicted_histogram(logits: torch.Tensor, label_names: list[str]) -> dict[str, int]:
    """How many rows the teacher gives each class (its argmax): a zero-shot teacher that puts
    a third of the rows into one class shows it here before any label is looked at."""
    counts = torch.bincount(logits.argmax(-1), minlength=len(label_names)).tolist()
    return dict(zip(label_names, counts, strict=True))


def correct(
    teacher: Any, logits: torch.Tensor, correction: str, prior: torch.Tensor
) -> tuple[torch.Tensor, dict[str, Any]]:
    """`logits` (N, C) from `teacher` corrected on these rows as --class-balance and (for an
    embedding teacher) --embedding-scale auto ask; and a record of what was done."""
    record: dict[str, Any] = {}
    if teacher.mode == "embedding" and getattr(teacher, "fit_scale", False):
        cosines = logits / teacher.scale
        scale = fit_scale(cosines)
        logits = cosines * scale
        record["embedding_scale"] = scale
        logger.info("embedding teacher: scale %.3g fitted on %d texts", scale, len(logits))
    if correction == "balance":
        before = predicted_histogram(logits, [str(i) for i in range(logits.shape[1])])
        logits, bias = balance(logits, prior)
        record["balance"] = {
            "prior": [round(float(p), 6) for p in prior],
            "bias": [round(float(b), 4) for b in bias],
            "rows": len(logits),
            "predicted_before": list(before.values()),
        }
        logger.info(
            "teacher balanced to the class prior on %d texts (biases %.2f to %.2f)",
            len(logits),
            float(bias.min()),
            float(bias.max()),
        )
    return logits, record
