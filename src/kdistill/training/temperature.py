"""The teacher's two temperatures, chosen on the validation split before training.

    p_t = softmax(z / (T_cal * T))

T_cal (`--teacher-calibration auto`) makes the teacher's probabilities mean what they say:
temperature scaling (Guo et al. 2017), the one T minimising the validation NLL. T (the KD
temperature, `--temperature`) then softens those calibrated targets, with its usual T^2 factor;
`--temperature auto` picks it by the entropy rule below. Pure functions on logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdistill.evaluation.calibration import TemperatureFit, fit_temperature

# --temperature auto: the soft targets' mean entropy, as a share of the uniform distribution's
# log(num_labels). Half way between a one-hot label (0, nothing beyond the label) and uniform
# (log C, no information): the teacher's answer still stands out, and the other classes share
# enough mass for their ranking (the "dark knowledge") to reach the student's gradient.
AUTO_ENTROPY_SHARE = 0.5
AUTO_RANGE = (1.0, 20.0)  # below 1 sharpens, which calibration is for; above 20 is flat anyway


def calibration_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """T_cal fitted on the labelled rows (label >= 0) by NLL, inside the bounds of
    evaluation.calibration; 1 where the fit gains nothing. logits (n, C), labels (n,)."""
    return teacher_calibration(logits, labels).temperature


def teacher_calibration(logits: torch.Tensor, labels: torch.Tensor) -> TemperatureFit:
    """The bounded T_cal fit on the labelled rows (label >= 0), with its NLL and ECE at T = 1
    and at the fit. logits (n, C), labels (n,)."""
    if not bool((labels >= 0).any()):
        raise ValueError("calibration needs labelled rows")
    return fit_temperature(logits, labels)


def mean_entropy(logits: torch.Tensor, temperature: float) -> float:
    """Mean over rows of the entropy of softmax(logits / T), in nats. logits (n, C)."""
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    return float(-(log_p.exp() * log_p).sum(-1).mean())


def auto_temperature(
    logits: torch.Tensor,
    share: float = AUTO_ENTROPY_SHARE,
    bounds: tuple[float, float] = AUTO_RANGE,
) -> float:
    """The KD temperature T in `bounds` at which softmax(logits / T) has mean entropy
    share * log(num_labels) on these (validation, already calibrated) logits.

    The mean entropy rises monotonically with T, so bisection on log T finds it; when even
    the lower bound is softer than the target, the lower bound (and likewise the upper).
    logits (n, C) with C >= 2.
    """
    target = share * math.log(logits.shape[-1])
    low, high = bounds
    if mean_entropy(logits, low) >= target:
        return low
    if mean_entropy(logits, high) <= target:
        return high
    lo, hi = math.log(low), math.log(high)
    for _ in range(40):  # 40 halvings of a log-range under 3: far below any useful precision
        mid = (lo + hi) / 2
        if mean_entropy(logits, math.exp(mid)) < target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def teacher_temperatures(
    calibration: str, temperature: float | str, val_logits: torch.Tensor, val_labels: torch.Tensor
) -> tuple[TemperatureFit | None, float]:
    """(the T_cal fit, T) for --teacher-calibration and --temperature, from the teacher's
    validation logits (n, C) and labels (n,): the fit is None with calibration off (T_cal = 1),
    and T is picked on the calibrated logits z / T_cal when it is auto."""
    fit = teacher_calibration(val_logits, val_labels) if calibration == "auto" else None
    t_cal = fit.temperature if fit is not None else 1.0
    if temperature == "auto":
        return fit, auto_temperature(val_logits.float() / t_cal)
    return fit, float(temperature)
