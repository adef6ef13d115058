"""Temperature scaling (Guo et al. 2017) with bounds: the one T in [0.05, 20] that minimises the
NLL of softmax(logits / T) on labelled rows, and what the fit says about itself.

Unbounded, the fit runs away where the logits carry no signal: on random labels the best T is
infinite (uniform probabilities), and an L-BFGS fit stopped at T = 3e6, which turned a teacher's
soft targets uniform without a word. So T is searched inside BOUNDS, and a fit that ends on a
bound, or gains nothing over T = 1, is reported as degenerate (one warning line, and the record
in config.json).

Why [0.05, 20]: softmax(z / 20) of logits that span +-10 (a trained classifier's range) is within
a few percent of uniform, so a larger T teaches nothing more; T = 0.05 multiplies the logits by
20, which makes any margin over 0.25 a certainty, so a smaller T only means the rows were all
right with margins to spare. Pure functions on logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

BOUNDS = (0.05, 20.0)
# A fit that lowers the mean NLL by less than this (nats) is no better than T = 1: calibration
# then leaves the logits as they are.
MIN_GAIN = 1e-4
# Golden-section steps over log T: 0.618^80 of a log-range under 6, far below any useful precision.
SEARCH_STEPS = 80


@dataclass
class TemperatureFit:
    """A bounded temperature fit on validation rows, as recorded in config.json.

    `temperature` is the one to apply: the fitted one, or 1 where the fit gains nothing."""

    temperature: float
    fitted: float
    bounds: tuple[float, float]
    bound_hit: str | None  # "lower", "upper" or None
    nll_at_1: float
    nll_fitted: float
    ece_at_1: float
    ece_fitted: float
    rows: int

    @property
    def degenerate(self) -> str | None:
        """Why the fit says little about the model, or None: at a bound, or no gain over T = 1."""
        if self.bound_hit is not None:
            low, high = self.bounds
            return (
                f"the fit hit the {self.bound_hit} bound T = "
                f"{low if self.bound_hit == 'lower' else high:g}"
            )
        if self.temperature == 1.0:
            return (
                f"the fit (T = {self.fitted:.3g}) is no better than T = 1 on validation NLL "
                f"({self.nll_at_1:.4f}); the logits are left as they are"
            )
        return None

    def record(self) -> dict[str, object]:
        """config.json's block: every field, plus `degenerate` (None or why)."""
        return {**asdict(self), "bounds": list(self.bounds), "degenerate": self.degenerate}

    def summary(self) -> str:
        """'T 0.31 (NLL 1.92 -> 0.41, ECE 0.57 -> 0.03 on 1000 validation rows)'."""
        return (
            f"T {self.temperature:.3g} (NLL {self.nll_at_1:.3f} -> {self.nll_fitted:.3f}, ECE "
            f"{self.ece_at_1:.3f} -> {self.ece_fitted:.3f} on {self.rows} validation rows)"
        )


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): the gap between confidence and accuracy, averaged over equal-width
    confidence bins weighted by their share of rows. 0 is perfectly calibrated.

    probs (n, num_labels) rows summing to 1, labels (n,).
    """
    confidence, preds = probs.max(-1)
    correct = (preds == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            gap = (confidence[in_bin].mean() - correct[in_bin].mean()).abs()
            ece += gap * in_bin.float().mean()
    return float(ece)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean NLL of softmax(logits / T) in float64. logits (n, C), labels (n,)."""
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] = BOUNDS
) -> TemperatureFit:
    """The T in `bounds` minimising the validation NLL of softmax(logits / T), on the rows with
    a label (label >= 0). It changes no prediction, only how sure they are.

    The NLL is convex in 1/T (a log-sum-exp of a linear function minus a linear one), so it has
    one minimum along log T: golden-section search finds it, or the bound nearest to it, without
    the step sizes an L-BFGS fit can overshoot with. logits (n, C), labels (n,).
    """
    keep = labels >= 0
    z, y = logits[keep].detach().double(), labels[keep].long()
    if len(y) == 0:
        raise ValueError("calibration needs labelled validation rows")
    if not bool(torch.isfinite(z).all()):
        raise ValueError("the logits are not all finite numbers")
    low, high = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(z, y, math.exp(c)), nll(z, y, math.exp(d))
    for _ in range(SEARCH_STEPS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(z, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(z, y, math.exp(d))
    fitted = math.exp((a + b) / 2)
    # Within 0.1% of a bound: the minimum lies on it or beyond.
    bound_hit = (
        "lower" if fitted <= bounds[0] * 1.001 else "upper" if fitted >= bounds[1] * 0.999 else None
    )
    nll_1, nll_fit = nll(z, y, 1.0), nll(z, y, fitted)
    applied = fitted if nll_1 - nll_fit >= MIN_GAIN else 1.0
    return TemperatureFit(
        temperature=applied,
        fitted=fitted,
        bounds=bounds,
        bound_hit=bound_hit,
        nll_at_1=nll_1,
        nll_fitted=nll(z, y, applied),
        ece_at_1=expected_calibration_error(F.softmax(z.float(), -1), y),
        ece_fitted=expected_calibration_error(F.softmax(z.float() / applied, -1), y),
        rows=len(y),
    )
