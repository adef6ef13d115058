"""Few-shot examples for a prompt teacher: picked stratified from train, and recorded in the
run's config.json so every later command given the run shows the same ones.
"""

from __future__ import annotations

import math
import random
from typing import Any

from kdistill.errors import KdistillError


def pick_few_shot(
    texts: list[str], labels: list[int], label_names: list[str], k: int, seed: int
) -> list[tuple[str, int]]:
    """K (text, label) examples, stratified: round-robin over the classes in a seeded random
    order, so K <= number of classes gives K different classes, and the prompt does not show
    one class several times in a row."""
    if k < 0:
        raise KdistillError(f"--few-shot {k}: must be 0 or more")
    if k == 0:
        return []
    if k > len(texts):
        raise KdistillError(
            f"--few-shot {k}: larger than the {len(texts)} training rows; use {len(texts)} or fewer"
        )
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    classes = sorted(by_class)
    rng.shuffle(classes)
    for c in classes:
        rng.shuffle(by_class[c])
    # Class at position j of the order gets ceil((k - j) / C) examples.
    for j, c in enumerate(classes):
        need = math.ceil((k - j) / len(classes)) if j < k else 0
        if need > len(by_class[c]):
            raise KdistillError(
                f"--few-shot {k}: larger than a class: {k} examples need {need} of class "
                f"{label_names[c]!r}, which has {len(by_class[c])} rows; use --few-shot "
                f"{len(classes)} or fewer"
            )
    picked = [by_class[classes[j % len(classes)]][j // len(classes)] for j in range(k)]
    return [(texts[i], labels[i]) for i in picked]


def few_shot_record(teacher: Any, seed: int) -> dict[str, Any] | None:
    """The few-shot examples a prompt teacher shows, whole (before the prompt cuts them), for
    the run's config.json: compare and eval-teacher given the run show the same ones, rather
    than picking their own from another train split. None for a teacher without any."""
    settings = getattr(teacher, "prompt_settings", None)
    if settings is None or not settings.few_shot:
        return None
    return {
        "k": len(settings.few_shot),
        "seed": seed,
        "picked_from": "train after --max-train-samples",
        "rows": [[text, teacher.label_names[y]] for text, y in settings.few_shot],
    }


def shots_from_record(
    record: dict[str, Any], label_names: list[str], where: str
) -> list[tuple[str, int]]:
    """`few_shot_record`'s rows back as (text, label index) over `label_names`."""
    index = {n: i for i, n in enumerate(label_names)}
    shots = []
    for text, name in record.get("rows") or []:
        if name not in index:
            raise KdistillError(
                f"{where}: its few-shot example of class {name!r} is not a class of this data "
                "set; pass the --dataset the run used"
            )
        shots.append((str(text), index[name]))
    return shots
