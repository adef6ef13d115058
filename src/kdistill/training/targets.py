"""The teacher's side of the step: the logits a training batch is distilled from (online under
`no_grad`, or computed once and looked up by row), and the teacher's validation metrics that the
strength guard reads before any time goes to the student."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from datasets import Dataset
    from torch.utils.data import DataLoader

    from kdistill.config import DistillConfig
    from kdistill.teachers.classifier import Teacher
    from kdistill.training.loop import TeacherLogits
    from kdistill.training.runtime import RunSetup

logger = logging.getLogger(__name__)


def evaluate_teacher(
    config: DistillConfig,
    run: RunSetup,
    teacher: Teacher | None,
    val_loader: DataLoader,
    val_tok: Dataset,
    t_dtype: str,
) -> dict[str, Any] | None:
    """The teacher's validation metrics; None without a teacher (alpha 0). With a cache, the
    validation logits are cached too: a sweep evaluates the teacher once."""
    from kdistill.evaluation.metrics import classification_metrics, evaluate
    from kdistill.teachers.cache import teacher_logits_for

    if teacher is None:
        return None
    num_labels = run.data.num_labels
    if config.teacher_cache == "off":
        return evaluate(teacher.logits, val_loader, run.accelerator, num_labels, "teacher eval")
    val_logits, _ = teacher_logits_for(
        config.teacher_cache,
        teacher,
        val_tok,
        list(run.val["text"]),
        config,
        run.accelerator,
        num_labels,
        t_dtype,
    )
    return classification_metrics(val_logits, torch.tensor(list(run.val["label"])), num_labels)


def make_teacher_targets(
    config: DistillConfig,
    run: RunSetup,
    teacher: Teacher | None,
    train_tok: Dataset,
    t_dtype: str,
    history: dict[str, Any],
) -> TeacherLogits | None:
    """The teacher's logits for a training batch: online every batch (--teacher-cache off, the
    seed's loop), or the logits of every training example computed once in a length-sorted
    pass and looked up by row. Either way unlabelled rows are covered; their texts are part of
    the cache key. None with no teacher (alpha 0: plain cross-entropy). Records the cache in
    history["teacher_cache"]."""
    accelerator = run.accelerator
    if teacher is None:
        history["teacher_cache"] = {"mode": "none", "reason": "--alpha 0: no teacher"}
        return None
    if config.teacher_cache == "off":
        history["teacher_cache"] = {"mode": "off"}

        def online(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            with accelerator.autocast():
                return teacher.logits(batch)

        return online
    from kdistill.teachers.cache import teacher_logits_for

    texts = list(train_tok.select_columns(["text"])[:]["text"])
    cache, history["teacher_cache"] = teacher_logits_for(
        config.teacher_cache,
        teacher,
        train_tok,
        texts,
        config,
        accelerator,
        run.data.num_labels,
        t_dtype,
    )
    cache = cache.to(accelerator.device)
    # Its logits are all the run needs from the teacher now: give its memory to the student.
    teacher.to(torch.device("cpu"))
    if accelerator.device.type == "cuda":
        torch.cuda.empty_cache()

    def cached(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return cache.index_select(0, batch["row"])

    return cached
