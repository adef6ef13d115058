"""A point's seeds in a sweep: their mean, spread and whether a lead is more than the spread.

`--seeds 1,2,3` repeats a run per seed; a lead smaller than the seeds' spread is not a finding,
so the sweep reports it as such.
"""

from __future__ import annotations

import math
from typing import Any


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def seed_summary(runs: list[dict[str, Any]], temperature: float, alpha: float) -> dict[str, Any]:
    """A point's seeds: mean and sample standard deviation of their best validation accuracy."""
    mine = [r for r in runs if (r["temperature"], r["alpha"]) == (temperature, alpha)]
    done = [r for r in mine if r["status"] == "completed"]
    mean, std = mean_std([r["best_val_accuracy"] for r in done])
    return {
        "temperature": temperature,
        "alpha": alpha,
        "seeds": [r["seed"] for r in done],
        "failed_seeds": [r["seed"] for r in mine if r["status"] != "completed"],
        "val_accuracy_mean": mean,
        "val_accuracy_std": std,
        "val_accuracy_min": min((r["best_val_accuracy"] for r in done), default=None),
        "val_accuracy_max": max((r["best_val_accuracy"] for r in done), default=None),
        "run_dirs": [r["run_dir"] for r in done],
    }


def best_by_mean(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest mean, with its lead over the runner-up and whether that lead is more than one
    spread (the larger of the two points' standard deviations): `clear_lead` false means the
    seeds cannot tell the two apart."""
    done = sorted(
        (p for p in points if p["val_accuracy_mean"] is not None),
        key=lambda p: -p["val_accuracy_mean"],
    )
    if not done:
        return None
    best = dict(done[0])
    if len(done) > 1:
        runner = done[1]
        spreads = [
            s for s in (best["val_accuracy_std"], runner["val_accuracy_std"]) if s is not None
        ]
        best["lead"] = best["val_accuracy_mean"] - runner["val_accuracy_mean"]
        best["spread"] = max(spreads) if spreads else None
        best["clear_lead"] = best["spread"] is not None and best["lead"] > best["spread"]
    return best
