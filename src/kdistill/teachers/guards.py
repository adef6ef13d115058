"""The teacher-strength guard: a teacher at chance has no knowledge of the task to pass on, so
a run refuses it (or warns when it is near chance) before spending any time on the student."""

from __future__ import annotations

import logging

import torch

from kdistill.errors import KdistillError

logger = logging.getLogger(__name__)


def chance_accuracy(labels: list[int], num_labels: int) -> float:
    """What a teacher that knows nothing scores: uniform guessing, or always naming the
    validation split's most common class, whichever is higher."""
    counts = torch.bincount(torch.tensor(labels), minlength=num_labels)
    return max(1.0 / num_labels, float(counts.max()) / max(len(labels), 1))


# A teacher that closes less than this share of the gap between chance and a perfect score is
# "near chance". A ratio of accuracy to chance cannot say it: 2x chance is 100% on a binary task.
NEAR_CHANCE_SKILL = 0.25


def skill_over_chance(accuracy: float, chance: float) -> float:
    """Where accuracy sits between chance (0) and a perfect score (1): (acc - chance) /
    (1 - chance), the same scale for 2 classes and 200. 0 when chance is already perfect (every
    validation row one class), since no teacher can show anything there."""
    return 0.0 if chance >= 1.0 else (accuracy - chance) / (1.0 - chance)


def check_teacher_strength(accuracy: float, chance: float, allow_weak: bool) -> None:
    """Refuse a teacher at or below chance (skill 0): its soft targets carry no knowledge of the
    task, and distilling from them teaches the student noise (a raw zero-shot LLM can land below
    chance). Warn below NEAR_CHANCE_SKILL of the way from chance to a perfect score."""
    skill = skill_over_chance(accuracy, chance)
    if skill <= 0.0:
        message = (
            f"the teacher's validation accuracy {accuracy:.3f} is at or below chance "
            f"({chance:.3f}), so distilling from it would teach noise; check it with kdistill "
            "eval-teacher, fine-tune it (finetune-teacher), try --calibrate, --few-shot or "
            "--label-words for a prompt teacher, or pass --allow-weak-teacher"
        )
        if not allow_weak:
            raise KdistillError(message)
        logger.warning("%s (allowed by --allow-weak-teacher)", message.split(", so")[0])
    elif skill < NEAR_CHANCE_SKILL:
        share, limit = 100 * skill, 100 * NEAR_CHANCE_SKILL
        logger.warning(
            "the teacher's validation accuracy %.3f is near chance (%.3f): it closes only %.0f%% "
            "of the gap from chance to 100%% (below %.0f%%), so distilling from it will help the "
            "student little",
            accuracy,
            chance,
            share,
            limit,
        )
    else:
        logger.info("teacher validation accuracy %.4f (chance %.4f)", accuracy, chance)
