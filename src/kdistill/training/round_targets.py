"""--round-targets: what a self-training round's student takes from its relabelled transfer set.

The relabeller (the teacher ensembled with the previous round's student) gives each transfer
row i a distribution p_i; its confidence is c_i = max_k p_i(k), read at T = 1.

    soft      every row's soft targets at full weight (what round 1 always uses)
    weighted  row i's KD term times w_i = c_i / mean_j c_j: confident rows count more, the mean
              weight is 1 so the loss keeps its size (kd_loss's `weights`)
    filtered  rows with c_i < --round-min-confidence are dropped before the loaders are made,
              so the round trains on fewer rows. A class is never emptied by it: each class the
              relabeller gives rows to keeps at least its most confident MIN_CLASS_SHARE of
              them (at least one), threshold or not. history.json and rounds.json say how many.

Labelled rows, where a run has them, keep weight 1 and are never dropped: their labels are not
the relabeller's. The relabeller's logits are computed once on the whole transfer set (so
balancing is fitted on every row, and the cache key is a soft round's) and the kept rows' are
handed to `make_teacher_targets`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from datasets import Dataset

    from kdistill.config import DistillConfig
    from kdistill.teachers.classifier import Teacher
    from kdistill.training.runtime import RunSetup

# A filtered class keeps at least this share of the rows the relabeller gives it.
MIN_CLASS_SHARE = 0.2


@dataclass
class RelabelledTargets:
    """The relabeller's logits for the rows a round trains on (labelled rows, then the kept
    transfer rows, the order of the training set), each row's loss weight (None: all 1), the
    teacher-cache record and what history.json records of the targets."""

    logits: torch.Tensor  # (rows, C)
    weights: torch.Tensor | None  # (rows,)
    cache: dict[str, Any]
    record: dict[str, Any]


class WeightedTargets:
    """Cached teacher logits with a loss weight per training row, both looked up by `row`."""

    def __init__(self, logits: torch.Tensor, weights: torch.Tensor) -> None:
        self.logits, self.row_weights = logits, weights

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits.index_select(0, batch["row"])  # (batch, C)

    def weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.row_weights.index_select(0, batch["row"])  # (batch,)


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """(N,) each row's largest class probability, softmax(logits) at T = 1."""
    return logits.float().softmax(-1).max(-1).values


def confidence_weights(logits: torch.Tensor) -> torch.Tensor:
    """(N,) w_i = c_i / mean_j c_j: proportional to the confidence, mean 1."""
    c = confidence(logits)
    return c / c.mean()


def keep_confident(
    logits: torch.Tensor, threshold: float, min_share: float = MIN_CLASS_SHARE
) -> tuple[list[int], dict[str, Any]]:
    """(the rows kept, in order; a record). Rows with confidence >= `threshold`, plus for each
    predicted class whose kept rows fall short of ceil(min_share * its rows) its most
    confident rows up to that floor."""
    conf, pred = logits.float().softmax(-1).max(-1)
    keep = conf >= threshold
    floored: dict[int, int] = {}
    for k in range(logits.shape[1]):
        rows = (pred == k).nonzero().flatten()
        need = max(1, math.ceil(min_share * len(rows))) if len(rows) else 0
        have = int(keep[rows].sum())
        if have < need:
            keep[rows[conf[rows].argsort(descending=True)[:need]]] = True
            floored[k] = need - have
    kept = keep.nonzero().flatten().tolist()
    record = {
        "threshold": threshold,
        "kept_rows": len(kept),
        "kept_mean_confidence": float(conf[keep].mean()) if kept else None,
        "class_floor": f"each predicted class keeps at least its most confident {min_share:.0%}",
        "kept_by_floor": {str(k): n for k, n in floored.items()},
    }
    return kept, record


def relabelled_targets(
    config: DistillConfig,
    run: RunSetup,
    teacher: Teacher | None,
    unlabeled: Dataset | None,
    t_dtype: str,
) -> tuple[Dataset | None, RelabelledTargets | None]:
    """--round-targets weighted or filtered: the teacher's logits on the training rows (labelled
    rows and the transfer set) computed now, before the loaders, so a filter can drop rows from
    the transfer set. Returns the transfer set (filtered or not) and the targets; with soft
    targets (or nothing to relabel) the transfer set as it was and None."""
    if config.round_targets == "soft" or teacher is None or unlabeled is None:
        return unlabeled, None
    from datasets import Dataset

    from kdistill.data.unlabeled import with_unlabeled
    from kdistill.teachers.cache import teacher_logits_for

    texts = list(with_unlabeled(run.train, unlabeled)["text"])  # the training set's order
    ids = teacher.encode(texts, config.max_length)["input_ids"]
    encoded = Dataset.from_dict({"text": texts, "teacher_input_ids": ids})
    teacher.to(run.accelerator.device)
    logits, cache = teacher_logits_for(
        config.teacher_cache,
        teacher,
        encoded,
        texts,
        config,
        run.accelerator,
        run.data.num_labels,
        t_dtype,
    )
    n_labelled = len(texts) - len(unlabeled)
    transfer = logits[n_labelled:]
    record: dict[str, Any] = {
        "mode": config.round_targets,
        "transfer_rows": len(transfer),
        "mean_confidence": float(confidence(transfer).mean()),
    }
    if config.round_targets == "weighted":
        w = confidence_weights(transfer)
        record.update(kept_rows=len(transfer), weight_min=float(w.min()), weight_max=float(w.max()))
        weights = torch.cat([torch.ones(n_labelled), w])
        return unlabeled, RelabelledTargets(logits, weights, cache, record)
    kept, filtered = keep_confident(transfer, config.round_min_confidence)
    record.update(filtered)
    rows = list(range(n_labelled)) + [n_labelled + i for i in kept]
    return unlabeled.select(kept), RelabelledTargets(logits[rows], None, cache, record)


def targets_record(logits: torch.Tensor) -> dict[str, Any]:
    """What history.json records of soft targets: every row kept, their mean confidence."""
    return {
        "mode": "soft",
        "kept_rows": len(logits),
        "mean_confidence": float(confidence(logits).mean()) if len(logits) else None,
    }
