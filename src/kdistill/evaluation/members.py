"""How each member of a teacher ensemble scores, beside the ensemble itself: eval-teacher and
history.json report them, so a weak member is seen rather than averaged away."""

from __future__ import annotations

from typing import Any

import torch

from kdistill.evaluation.metrics import classification_metrics
from kdistill.teachers.ensemble import EnsembleTeacher, combine, member_label


def member_metrics(
    teacher: EnsembleTeacher, labels: torch.Tensor, num_labels: int
) -> list[dict[str, Any]]:
    """Accuracy, macro-F1 and loss of each member and of the ensemble, from the latest
    cached pass (whose rows `labels` label)."""
    if not teacher.member_logits:
        return []
    rows = []
    parts = [*zip(teacher.members, teacher.weights, teacher.member_logits, strict=True)]
    for m, w, z in parts:
        metrics = classification_metrics(z, labels, num_labels)
        rows.append({"member": member_label(m), "weight": w, **_scores(metrics)})
    ensemble = classification_metrics(
        combine(teacher.member_logits, teacher.weights), labels, num_labels
    )
    rows.append({"member": "ensemble", "weight": sum(teacher.weights), **_scores(ensemble)})
    return rows


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in ("accuracy", "macro_f1", "loss")}
