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
    from kdistill.training.round_targets import RelabelledTargets
    from kdistill.training.runtime import RunSetup
from pathlib import Path
from typing import TYPE_CHECKING

from kdistill.config import DistillConfig
from kdistill.training.records import (
    record_temperatures,
)
from kdistill.training.runtime import (
    RunSetup,
)

if TYPE_CHECKING:
    from datasets import Dataset
    from torch.utils.data import DataLoader

    from kdistill.evaluation.calibration import TemperatureFit
    from kdistill.teachers.classifier import Teacher
    from kdistill.training.loop import Training

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
    from kdistill.evaluation.members import member_metrics
    from kdistill.evaluation.metrics import classification_metrics, evaluate
    from kdistill.teachers.cache import teacher_logits_for

    if teacher is None:
        return None
    num_labels = run.data.num_labels
    # An ensemble is scored member by member as well, which needs every member's logits.
    ensemble = teacher.mode == "ensemble"
    if config.teacher_cache == "off" and not ensemble:
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
    labels = torch.tensor(list(run.val["label"]))
    metrics = classification_metrics(val_logits, labels, num_labels)
    if ensemble:
        metrics["members"] = member_metrics(teacher, labels, num_labels)
    return metrics


def make_teacher_targets(
    config: DistillConfig,
    run: RunSetup,
    teacher: Teacher | None,
    train_tok: Dataset,
    t_dtype: str,
    history: dict[str, Any],
    t_cal: float = 1.0,
    keep_teacher: bool = False,
    given: RelabelledTargets | None = None,
) -> TeacherLogits | None:
    """The teacher's logits for a training batch: online every batch (--teacher-cache off, the
    seed's loop), or the logits of every training example computed once in a length-sorted
    pass and looked up by row. Either way unlabelled rows are covered; their texts are part of
    the cache key. None with no teacher (alpha 0: plain cross-entropy). Records the cache in
    history["teacher_cache"]. The logits are divided by `t_cal` (--teacher-calibration);
    `keep_teacher` keeps it on the device after the cache pass (the intermediate losses run it
    online for its hidden states). `given`: --round-targets' logits (and row weights), computed
    before the loaders (`training.round_targets`); history["targets"] records them."""
    accelerator = run.accelerator
    if teacher is None:
        history["teacher_cache"] = {"mode": "none", "reason": "--alpha 0: no teacher"}
        return None
    if config.teacher_cache == "off":
        history["teacher_cache"] = {"mode": "off"}
        check_online_corrections(config, teacher)

        def online(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            with accelerator.autocast():
                logits = teacher.logits(batch)
            return logits if t_cal == 1.0 else logits / t_cal

        return online
    from kdistill.teachers.cache import teacher_logits_for
    from kdistill.training.round_targets import WeightedTargets, targets_record

    if given is not None:
        cache, history["teacher_cache"] = given.logits, given.cache
        history["targets"] = given.record
    else:
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
        history["targets"] = targets_record(cache)
    if len(cache) != len(train_tok):
        raise RuntimeError(f"{len(cache)} teacher rows for {len(train_tok)} training rows")
    cache = cache.to(accelerator.device)
    if t_cal != 1.0:
        cache = cache / t_cal
    if not keep_teacher:
        release_teacher(teacher, accelerator.device)
    if given is not None and given.weights is not None:
        return WeightedTargets(cache, given.weights.to(accelerator.device))

    def cached(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return cache.index_select(0, batch["row"])

    cached.logits = cache  # type: ignore[attr-defined]  # (rows, classes): the run's record reads it
    return cached


def release_teacher(teacher: Teacher, device: torch.device) -> None:
    """Free the teacher's weights once every epoch's logits are cached: they are all the run
    needs from it, and the seed's 1.5B teacher is 3.6 GB of bf16 that the student's optimizer
    state can use. Moving to CPU (as before) freed nothing on a CPU run. The modules stay, on
    the meta device (shapes without storage), so the closing summary can still count their
    parameters."""
    teacher.model.to(torch.device("meta"))  # an ensemble's model holds every member's
    for member in getattr(teacher, "members", [teacher]):
        prefix = getattr(member, "_prefix", None)
        if prefix is not None:  # a prompt teacher's shared-prefix keys and values
            prefix._caches.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    logger.info("teacher released from memory: its logits for every epoch are cached")


def check_online_corrections(config: DistillConfig, teacher: Teacher) -> None:
    """Label-free corrections are fitted on the whole transfer set, which an online teacher
    (--teacher-cache off) never sees at once: refused when asked for, said when auto."""
    from kdistill.errors import KdistillError
    from kdistill.teachers.cache import balancing

    if config.class_balance == "on":
        raise KdistillError(
            "--class-balance on fits the teacher's class prior on the whole transfer set, "
            "which --teacher-cache off never scores at once; drop --teacher-cache off"
        )
    if balancing(teacher, config) or getattr(teacher, "fit_scale", False):
        logger.warning(
            "--teacher-cache off: the teacher is not balanced and its embedding scale is 20, "
            "not fitted (both need the cache pass over the transfer set)"
        )


def teacher_temperatures_for(
    config: DistillConfig, run: RunSetup, teacher: Teacher, val_loader: DataLoader
) -> tuple[TemperatureFit | None, float]:
    """(the T_cal fit or None, T) for --teacher-calibration and --temperature, from one pass of
    the teacher over the validation split (training.temperature has the rules). A degenerate
    fit (on a bound, or no better than T = 1) is a warning: it is used, but says little."""
    from kdistill.evaluation.metrics import collect_logits
    from kdistill.training.temperature import teacher_temperatures

    val_logits, _ = collect_logits(teacher.logits, val_loader, run.accelerator, "teacher logits")
    labels = torch.tensor(list(run.val["label"]))
    fit, temperature = teacher_temperatures(
        config.teacher_calibration, config.temperature, val_logits.cpu(), labels
    )
    if fit is not None and fit.degenerate:
        logger.warning(
            "--teacher-calibration auto: %s; T_cal %.3g used", fit.degenerate, fit.temperature
        )
    logger.info(
        "teacher temperatures: T_cal %s, KD temperature T %.3g%s",
        f"{fit.summary()} (fitted on validation NLL)" if fit is not None else "off",
        temperature,
        " (auto: soft targets at half the uniform entropy)" if config.temperature == "auto" else "",
    )
    return fit, temperature


def resolve_temperatures(
    config: DistillConfig,
    run: RunSetup,
    teacher: Teacher | None,
    t: Training,
    record_dir: Path | None,
    history: dict[str, Any],
) -> tuple[float, float | str]:
    """(T_cal, T): --teacher-calibration and --temperature (maybe auto) chosen on validation,
    recorded in history.json and, for a new run, config.json. (1, --temperature) when neither
    asks for it."""
    if teacher is None or (config.teacher_calibration == "off" and config.temperature != "auto"):
        return 1.0, config.temperature

    fit, temperature = teacher_temperatures_for(config, run, teacher, t.val_loader)
    main = run.accelerator.is_main_process
    record_temperatures(record_dir if main else None, history, fit, temperature)
    return (fit.temperature if fit is not None else 1.0), temperature
