"""eval-teacher: how good is a teacher, before a training run is spent on it?

Runs the teacher once over a split (one length-sorted inference pass, the same one distill's
logit cache makes) and reports accuracy, macro-F1, per-class accuracy, and how its softened
probabilities look at several temperatures (ECE and entropy), to choose --temperature, the
prompt and the teacher itself.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.config import EvalTeacherConfig
from kdistill.errors import KdistillError
from kdistill.evaluation.members import member_metrics
from kdistill.files import atomic_write_json

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from datasets import Dataset

    from kdistill.data.prepare import LabelledData
    from kdistill.from_run import Run
    from kdistill.teachers.classifier import Teacher

logger = logging.getLogger(__name__)


def eval_teacher(config: EvalTeacherConfig) -> dict[str, Any]:
    """Returns the report (also written to --output when given)."""
    import torch

    from kdistill.from_run import check_same_split, data_config, run_of, teacher_model_for
    from kdistill.students.load import count_parameters
    from kdistill.teachers.guards import chance_accuracy
    from kdistill.training.runtime import library_versions, pick_teacher_dtype, start_command

    # A distill run as --teacher-model: its teacher, asked as it taught, on the run's split.
    run = run_of(config.teacher_model, "--teacher-model")
    runs = [run] if run else []
    teacher_model = teacher_model_for(config, run, [])
    _device, precision, accelerator, data = start_command(data_config(config, runs))
    check_same_split(data, runs)
    rows = split_rows(config, data)
    dtype, dtype_name = pick_teacher_dtype(config.teacher_dtype, precision)
    teacher = load_run_teacher(config, teacher_model, runs, data, dtype)
    teacher.to(accelerator.device)

    logits, elapsed, cache_record = teacher_logits(
        teacher, rows, config, accelerator, data.num_labels, dtype_name
    )
    labels = torch.tensor(list(rows["label"]))
    chance = chance_accuracy(labels.tolist(), data.num_labels)
    report: dict[str, Any] = {
        "teacher": teacher_model,
        "run": str(run.given) if run else None,
        "mode": teacher.mode,
        "settings": teacher.settings(),
        "parameters": count_parameters(teacher.model),
        "dataset": data.name,
        "split": config.split,
        "rows": len(rows),
        **quality(logits, labels, data.label_names, chance, config.temperature_list()),
        # An ensemble: each member's scores and the ensemble's, on the same rows.
        "members": (
            member_metrics(teacher, labels, data.num_labels) if teacher.mode == "ensemble" else None
        ),
        "teacher_cache": cache_record,
        "time_s": elapsed,
        **measured_speed(len(rows), elapsed, cache_record),
        "device": str(accelerator.device),
        "dtype": dtype_name,
        "config": config.to_dict(),
        "versions": library_versions(),
        "created": datetime.now().isoformat(timespec="seconds"),
    }
    if config.output:
        atomic_write_json(Path(config.output), report)
    return report


def split_rows(config: EvalTeacherConfig, data: LabelledData) -> Dataset:
    """The --split rows to score (--max-samples of them); a missing or empty split is refused."""
    from kdistill.data.sampling import subsample

    if config.split not in data.splits:
        raise KdistillError(
            f"--split {config.split}: {data.name} has no such split (it has "
            f"{', '.join(data.splits)})"
        )
    rows = subsample(data.splits[config.split], config.max_samples, config.seed, "--max-samples")
    if len(rows) == 0:
        raise KdistillError(f"--split {config.split}: {data.name}'s {config.split} split is empty")
    return rows


def load_run_teacher(
    config: EvalTeacherConfig,
    teacher_model: str,
    runs: list[Run],
    data: LabelledData,
    dtype: torch.dtype,
) -> Teacher:
    """The teacher as the run (if one was given) asked it, else as the flags say."""
    from kdistill.from_run import run_teacher
    from kdistill.teachers.classifier import load_teacher

    train = data.splits["train"]
    chosen = run_teacher(config, teacher_model, runs, data.label_names, train)
    return load_teacher(
        chosen.options,
        chosen.model,
        data.label_names,
        dtype,
        train,
        chosen.max_length or config.max_length,
        config.seed,
        chosen.shots,
    )


def teacher_logits(
    teacher: Teacher,
    rows: Dataset,
    config: EvalTeacherConfig,
    accelerator: Accelerator,
    num_labels: int,
    precision: str,
) -> tuple[torch.Tensor, float, dict[str, Any]]:
    """(len(rows), num_labels) logits from one length-sorted pass (distill's logit cache's,
    read or written as --teacher-cache says; an ensemble's member by member), the seconds it
    took, tokenising included, and the cache's record."""
    from kdistill.data.batches import tokenize
    from kdistill.teachers.cache import teacher_logits_for

    start = time.perf_counter()
    encoded = tokenize(rows, {"teacher": teacher}, config.max_length)
    texts = list(rows["text"])
    logits, record = teacher_logits_for(
        config.teacher_cache, teacher, encoded, texts, config, accelerator, num_labels, precision
    )
    return logits, time.perf_counter() - start, record


def measured_speed(rows: int, elapsed: float, record: dict[str, Any]) -> dict[str, Any]:
    """The teacher's speed, from the passes that ran only: logits read from the disk cache time
    the disk, and a rows/s made of them would credit the teacher with a speed it never had.

    `cached`: "none", "all", or "k of n members" for an ensemble partly read from the cache.
    `rows_per_second`: None when everything was cached; with members cached, the rows over the
    seconds of the member passes that ran (`computed_s`), so it is the speed of those members.
    """
    parts = record.get("members") or [record]
    ran = [r for r in parts if not r["hit"]]
    if not ran:
        return {"cached": "all", "computed_s": 0.0, "rows_per_second": None}
    if len(ran) == len(parts):
        return {
            "cached": "none",
            "computed_s": elapsed,
            "rows_per_second": rows / max(elapsed, 1e-9),
        }
    seconds = sum(r["time_s"] for r in ran)
    return {
        "cached": f"{len(parts) - len(ran)} of {len(parts)} members",
        "computed_s": seconds,
        "rows_per_second": rows / max(seconds, 1e-9),
    }


def _speed_text(report: dict[str, Any]) -> str:
    """'120 rows in 1.2 s (100.0 rows/s)', or what was cached instead of a speed never measured."""
    head = f"{report['rows']} rows in {report['time_s']:.1f} s"
    cached = report.get("cached", "none")
    if cached == "none":
        return f"{head} ({report['rows_per_second']:.1f} rows/s)"
    if cached == "all":
        return f"{head} (cached: every logit read from the disk cache; no speed measured)"
    speed = f"{report['rows_per_second']:.1f} rows/s over {report['computed_s']:.1f} s"
    return f"{head} ({cached} cached; the members that ran: {speed})"


def quality(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_names: list[str],
    chance: float,
    temperatures: list[float],
) -> dict[str, Any]:
    """Accuracy, macro-F1 and loss against chance (weak: at or below it, which distill refuses),
    per-class accuracy, and the softened targets' ECE and entropy at each temperature."""
    from kdistill.evaluation.metrics import (
        classification_metrics,
        per_class_accuracy,
        soft_target_stats,
    )
    from kdistill.teachers.label_free import predicted_histogram

    metrics = classification_metrics(logits, labels, len(label_names))
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "loss": metrics["loss"],
        "chance_accuracy": chance,
        "weak": metrics["accuracy"] <= chance,
        "per_class": per_class_accuracy(logits, labels, label_names),
        # Rows given each class: a zero-shot teacher's bias shows here, no label needed.
        "predicted": predicted_histogram(logits, label_names),
        "temperatures": [soft_target_stats(logits, labels, t) for t in temperatures],
        "max_entropy": math.log(len(label_names)),
    }


def format_report(report: dict[str, Any]) -> str:
    """The table printed after eval-teacher: overall scores against chance, per class, then the
    softened targets per temperature (to choose --temperature)."""
    lines = [
        f"teacher {report['teacher']} ({report['mode']}, {report['parameters'] / 1e6:.1f}M "
        f"parameters) on {report['dataset']}/{report['split']}: {_speed_text(report)}",
        f"accuracy {report['accuracy']:.4f}   macro-F1 {report['macro_f1']:.4f}   "
        f"chance {report['chance_accuracy']:.4f}"
        + ("   WEAK: at or below chance; distill refuses it" if report["weak"] else ""),
        "",
        f"{'class':<28}{'accuracy':>10}{'rows':>7}{'predicted':>11}",
    ]
    predicted = report.get("predicted") or {}
    for name, c in report["per_class"].items():
        lines.append(f"{name:<28}{c['accuracy']:>10.4f}{c['n']:>7}{predicted.get(name, 0):>11}")
    balanced = (report.get("teacher_cache") or {}).get("label_free", {}).get("balance")
    if balanced:
        lines.append(
            f"(balanced to the class prior on these {balanced['rows']} rows, no labels read; "
            "predicted before: " + ",".join(str(n) for n in balanced["predicted_before"]) + ")"
        )
    if report.get("members"):
        lines += ["", f"{'ensemble member':<60}{'weight':>7}{'accuracy':>10}{'macro-F1':>10}"]
        for m in report["members"]:
            lines.append(
                f"{m['member'][:60]:<60}{m['weight']:>7.3g}{m['accuracy']:>10.4f}"
                f"{m['macro_f1']:>10.4f}"
            )
    lines += ["", f"{'T':>5}{'ECE':>9}{'entropy':>10}   (max entropy {report['max_entropy']:.3f})"]
    for t in report["temperatures"]:
        lines.append(f"{t['temperature']:>5g}{t['ece']:>9.4f}{t['mean_entropy']:>10.4f}")
    return "\n".join(lines)
