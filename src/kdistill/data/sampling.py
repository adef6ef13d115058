"""Stratified sampling: subsamples, held-out splits and the labelled fraction keep each class's
share, so a small run or a scarce-label run still sees every class in proportion.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import TYPE_CHECKING

from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)


def stratified_indices(labels: list[int], n: int, seed: int, what: str = "sample") -> list[int]:
    """Pick `n` row indices keeping each class's share (largest-remainder rounding).

    Every class present gets at least one row, so `n` must be at least the number of classes.
    Returns indices in their original order.
    """
    total = len(labels)
    if n >= total:
        return list(range(total))
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    classes = sorted(by_class)
    if n < len(classes):
        raise KdistillError(
            f"{what} {n} is smaller than the {len(classes)} classes; stratified sampling needs at "
            f"least one example per class, so use {len(classes)} or more"
        )
    exact = {c: n * len(by_class[c]) / total for c in classes}
    quota = {c: max(1, int(exact[c])) for c in classes}
    # Hand out (or take back) rows by largest (smallest) fractional part until the sum is n.
    order = sorted(classes, key=lambda c: exact[c] - int(exact[c]), reverse=True)
    k = 0
    while sum(quota.values()) < n:
        c = order[k % len(order)]
        if quota[c] < len(by_class[c]):
            quota[c] += 1
        k += 1
    k = 0
    while sum(quota.values()) > n:
        c = order[::-1][k % len(order)]
        if quota[c] > 1:
            quota[c] -= 1
        k += 1
    rng = random.Random(seed)
    chosen: list[int] = []
    for c in classes:
        chosen.extend(rng.sample(by_class[c], quota[c]))
    return sorted(chosen)


def split_off_validation(
    train: Dataset,
    share: float,
    seed: int,
    flag: str = "--validation-split",
    label_names: list[str] | None = None,
) -> tuple[Dataset, Dataset]:
    """A stratified `share` of train becomes validation (or test); the rest stays train."""
    labels = train["label"]
    n_val = max(1, round(share * len(labels)))
    if n_val >= len(labels):
        raise KdistillError(f"{flag} {share} leaves no training rows")
    counts = Counter(labels)
    single = sorted(c for c, k in counts.items() if k < 2)
    if single:
        # Stratification gives every class a held-out row: a class's only row would leave
        # train, and the model could never learn the class it is then scored on.
        name = label_names[single[0]] if label_names else single[0]
        more = f" (and {len(single) - 1} more)" if len(single) > 1 else ""
        raise KdistillError(
            f"{flag}: class {name!r}{more} has a single example; a stratified split needs at "
            "least 2 of each class (one to train on, one to hold out): add examples or drop "
            "those rows"
        )
    n_classes = len(counts)
    if n_val < n_classes:
        logger.warning(
            "validation has %d rows for %d classes: some classes are missing from it",
            n_val,
            n_classes,
        )
        rng = random.Random(seed)
        val_idx = sorted(rng.sample(range(len(labels)), n_val))
    else:
        val_idx = stratified_indices(labels, n_val, seed, flag)
    chosen = set(val_idx)
    train_idx = [i for i in range(len(labels)) if i not in chosen]
    return train.select(train_idx), train.select(val_idx)


def split_off_unlabeled(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Keep a stratified `fraction` of train labelled; the rest is returned as the unlabelled
    split (its labels still attached, for evaluation only). fraction 0: every row unlabelled."""
    labels = train["label"]
    n_keep = round(fraction * len(labels))
    n_classes = len(set(labels))
    if fraction > 0 and n_keep < n_classes:
        raise KdistillError(
            f"--labeled-fraction {fraction} keeps {n_keep} of {len(labels)} training rows, fewer "
            f"than the {n_classes} classes (stratified sampling keeps one of each); use at least "
            f"{n_classes / len(labels):.3g}, or 0 for no labelled rows"
        )
    keep = stratified_indices(labels, n_keep, seed, "--labeled-fraction") if n_keep else []
    kept = set(keep)
    rest = [i for i in range(len(labels)) if i not in kept]
    return train.select(keep), train.select(rest)


def subsample(ds: Dataset, n: int | None, seed: int, flag: str) -> Dataset:
    """At most `n` rows, stratified (`--max-*-samples`): a quick run keeps every class."""
    if n is None or n >= len(ds):
        return ds
    return ds.select(stratified_indices(ds["label"], n, seed, flag))
