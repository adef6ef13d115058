"""What a run writes about itself besides its models: config.json's teacher block and loss
formula, the epochs history.json records, a failure written into history.json, and the curves."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.errors import KdistillError, RunStopped
from kdistill.files import atomic_write_json
from kdistill.training.runtime import library_versions

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from kdistill.config import DistillConfig
    from kdistill.evaluation.calibration import TemperatureFit
    from kdistill.teachers.classifier import Teacher
    from kdistill.training.loop import Training
    from kdistill.training.runtime import RunSetup

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What the loop carries from epoch to epoch, and what history.json records."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_accuracy: float = -1.0


KD_LOSS = (
    "mean over rows of: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * "
    "CE(s, label) for a labelled row, T^2 * KL for an unlabelled row"
)


INTERMEDIATE_LOSS = (
    "; plus, over all rows, hidden_weight * L_hidden + attention_weight * L_rel "
    "(training.losses.distill_loss)"
)
CE_LOSS = "CE(s, label), mean over the labelled rows (alpha 0: no teacher on any row)"


def teacher_record(config: DistillConfig, teacher: Teacher | None, dtype: str) -> dict[str, Any]:
    """config.json's teacher block; with no teacher (alpha 0) the same keys, None, and used
    false, so everything that parses a run's config reads it the same way."""
    from kdistill.students.load import count_parameters
    from kdistill.teachers.few_shot import few_shot_record

    if teacher is None:
        return {
            "model": config.teacher_model,
            "used": False,
            "class": None,
            "parameters": None,
            "mode": None,
            "settings": None,
            "few_shot": None,
            "dtype": None,
            "attn_implementation": None,
        }
    model = teacher.model
    return {
        "model": config.teacher_model,
        "used": True,
        "class": type(model).__name__,
        "parameters": count_parameters(model),
        "mode": teacher.mode,
        "settings": teacher.settings(),
        "few_shot": few_shot_record(teacher, config.seed),
        "dtype": dtype,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }


@contextlib.contextmanager
def failure_recorded(
    history: dict[str, Any], path: Path, accelerator: Accelerator
) -> Iterator[None]:
    """Write a failure (or a requested stop) into history.json before it propagates."""
    try:
        yield
    except RunStopped as e:  # on request, with a checkpoint: not a failure
        if accelerator.is_main_process:
            history["stopped"] = str(e)
            atomic_write_json(path, history)
        raise
    except BaseException as e:
        if accelerator.is_main_process:
            history["failed"] = f"{type(e).__name__}: {e}"
            atomic_write_json(path, history)
        raise


def save_training_curves(history: dict[str, Any], path: Path) -> None:
    """The curves are a view of history.json: failing to draw them must not fail a run whose
    models are saved, so a plotting error is a warning."""
    from kdistill.evaluation.report import plot_training_curves

    try:
        plot_training_curves(history, path)
    except Exception as e:  # noqa: BLE001
        logger.warning("could not draw %s: %s", path.name, e)


def resolved_config(
    config: DistillConfig,
    run: RunSetup,
    t: Training,
    n_student: int,
    teacher: Teacher | None,
    t_dtype: str,
) -> dict[str, Any]:
    """config.json: the flags, what `auto` resolved to, the data, the models and the loss."""
    from kdistill.data.prepare import split_record

    accelerator, data, n_train = run.accelerator, run.data, len(run.train)
    n_unlabeled = len(t.train_tok) - n_train  # the transfer set follows the labelled rows
    student = accelerator.unwrap_model(t.student, keep_torch_compile=False)
    return {
        "kind": "distill",
        **config.to_dict(),
        "resolved": {
            "device": str(accelerator.device),
            "mixed_precision": run.precision,
            "gradient_checkpointing": t.checkpointing,
            "num_processes": accelerator.num_processes,
            "effective_batch_size": config.batch_size
            * config.gradient_accumulation_steps
            * accelerator.num_processes,
            "total_optimizer_steps": t.total_steps,
            "eval_batch_size": t.eval_batch_size,
            "teacher_dtype": t_dtype if teacher is not None else None,
            "intermediate": t.intermediate.describe() if t.intermediate is not None else None,
            # Share of unlabelled rows per batch: --unlabeled-ratio, else the natural one.
            "unlabeled_share": (
                config.unlabeled_ratio
                if config.unlabeled_ratio is not None
                else n_unlabeled / (n_train + n_unlabeled)
            ),
        },
        "data": {
            "name": data.name,
            "source": data.source,
            "label_names": data.label_names,
            "train_rows": n_train,  # labelled
            "validation_rows": len(run.val),
            "unlabeled_rows": n_unlabeled,
            "unlabeled_source": config.unlabeled_data,
            "split": split_record(data),
        },
        "teacher": teacher_record(config, teacher, t_dtype),
        "student": {
            "model": config.student_model,
            "class": type(student).__name__,
            "parameters": n_student,
            # --trim-vocab: what the vocabulary was cut to (None: kept whole).
            "vocabulary": getattr(student.config, "kdistill_vocabulary", None),
        },
        "loss": (KD_LOSS + (INTERMEDIATE_LOSS if t.intermediate is not None else ""))
        if teacher is not None
        else CE_LOSS,
        "command": sys.argv,
        "versions": library_versions(),
        "started": datetime.now().isoformat(timespec="seconds"),
        # `kdistill runs` tells a run still going from one that crashed by this process.
        "process": {"pid": os.getpid(), "host": socket.gethostname()},
    }


def record_temperatures(
    run_dir: Path | None,
    history: dict[str, Any],
    fit: TemperatureFit | None,
    temperature: float | None,
) -> None:
    """The teacher's temperatures chosen on validation (--teacher-calibration auto: T_cal and
    its fit, else None; --temperature auto: the T picked) into history.json's teacher block
    and, for a new run (`run_dir`, main process), config.json's resolved block."""
    t_cal = fit.temperature if fit is not None else None
    history["teacher"]["calibration_temperature"] = t_cal
    history["teacher"]["calibration"] = fit.record() if fit is not None else None
    history["teacher"]["temperature"] = temperature
    if run_dir is None:
        return
    path = run_dir / "config.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    record["resolved"]["teacher_calibration_temperature"] = t_cal
    # The fit itself: the value, the bound it hit (if any), NLL at T = 1 and at the fit.
    record["resolved"]["teacher_calibration"] = history["teacher"]["calibration"]
    record["resolved"]["temperature"] = temperature
    atomic_write_json(path, record)


def new_history(teacher_metrics: dict[str, Any] | None, chance: float) -> dict[str, Any]:
    """history.json before the first epoch. Every key present either way (sweeps, runs and
    cards read them); None without a teacher."""
    metric = (teacher_metrics or {}).get
    return {
        "teacher": {
            "used": teacher_metrics is not None,
            "val_accuracy": metric("accuracy"),
            "val_macro_f1": metric("macro_f1"),
            "val_loss": metric("loss"),
            "val_rows": metric("n"),
            # A teacher ensemble: each member's validation scores and the ensemble's.
            **({"members": metric("members")} if metric("members") else {}),
        },
        "chance_accuracy": chance,
        "epochs": [],
    }


def record_epoch(
    state: TrainState,
    epoch: int,
    stats: dict[str, Any],
    metrics: dict[str, Any],
    lr: float,
    wall_time_s: float,
) -> bool:
    """Add the epoch to the run's history and log it. Returns whether it is the best so far;
    a validation loss that is not a number stops the run (never a best model from broken
    weights)."""
    state.epochs.append(
        {
            "epoch": epoch,
            **stats,
            "val_loss": metrics["loss"],
            "val_accuracy": metrics["accuracy"],
            "val_macro_f1": metrics["macro_f1"],
            "val_rows": metrics["n"],  # gathered from every process, each row once
            "learning_rate": lr,
            "wall_time_s": wall_time_s,
        }
    )
    logger.info(
        "epoch %d: loss %.4f (%s), val acc %.4f, macro-F1 %.4f, %.1f samples/s",
        epoch,
        stats["train_loss"],
        loss_parts(stats),
        metrics["accuracy"],
        metrics["macro_f1"],
        stats["samples_per_second"],
    )
    if not math.isfinite(metrics["loss"]):
        raise KdistillError(
            f"epoch {epoch}: the validation loss is {metrics['loss']}; lower --learning-rate"
        )
    if metrics["accuracy"] <= state.best_accuracy:
        return False
    state.best_accuracy, state.best_epoch = metrics["accuracy"], epoch
    return True


def write_epoch(
    history: dict[str, Any],
    state: TrainState,
    accelerator: Accelerator,
    path: Path,
    epoch: int,
    scalars: dict[str, float | None],
) -> None:
    """history.json at `path` and the tracker's `scalars` (those not None), after every epoch."""
    history["epochs"] = state.epochs
    history["best"] = {"epoch": state.best_epoch, "val_accuracy": state.best_accuracy}
    accelerator.log({k: v for k, v in scalars.items() if v is not None}, step=epoch)
    if accelerator.is_main_process:
        atomic_write_json(path, history)


def tracker_scalars(
    stats: dict[str, Any], metrics: dict[str, Any], lr: float, teacher_accuracy: float | None
) -> dict[str, float | None]:
    """What TensorBoard, W&B or MLflow plot per epoch."""
    return {
        "train/loss": stats["train_loss"],
        "train/kl": stats["train_kl"],
        "train/ce": stats["train_ce"],
        "train/loss_labeled": stats["train_loss_labeled"],
        "train/loss_unlabeled": stats["train_loss_unlabeled"],
        "train/hidden": stats.get("train_hidden"),
        "train/relation": stats.get("train_relation"),
        "train/samples_per_second": stats["samples_per_second"],
        "val/loss": metrics["loss"],
        "val/accuracy": metrics["accuracy"],
        "val/macro_f1": metrics["macro_f1"],
        "learning_rate": lr,
        "teacher/val_accuracy": teacher_accuracy,
    }


def loss_parts(stats: dict[str, Any]) -> str:
    """'KL 0.41, CE 0.12' for the log line, plus each kind of row's loss when both are there."""
    parts = [f"KL {stats['train_kl']:.4f}"]
    if stats["train_ce"] is not None:
        parts.append(f"CE {stats['train_ce']:.4f}")
    for key, name in (("train_hidden", "hidden"), ("train_relation", "relation")):
        if stats.get(key) is not None:
            parts.append(f"{name} {stats[key]:.4f}")
    if stats["train_unlabeled_samples"] and stats["train_labeled_samples"]:
        parts.append(
            f"labelled rows {stats['train_loss_labeled']:.4f}, unlabelled rows "
            f"{stats['train_loss_unlabeled']:.4f}"
        )
    return ", ".join(parts)


def done_summary(
    state: TrainState, teacher: Teacher | None, teacher_accuracy: float | None, n_student: int
) -> str:
    """The closing log line: what the student reached, against the teacher and their sizes."""
    from kdistill.students.load import count_parameters

    teacher_part = (
        f"teacher {teacher_accuracy:.4f}, {count_parameters(teacher.model) / 1e6:.1f}M parameters"
        if teacher is not None
        else "no teacher (alpha 0)"
    )
    return (
        f"done: best validation accuracy {state.best_accuracy:.4f} at epoch {state.best_epoch}; "
        f"{teacher_part}; student {n_student / 1e6:.1f}M parameters"
    )


def evaluate_student(
    student: torch.nn.Module, val_loader: DataLoader, accelerator: Accelerator, num_labels: int
) -> dict[str, Any]:
    """Validation metrics with dropout off: the numbers must be the model's, not a noisy draw."""
    from kdistill.evaluation.metrics import evaluate
    from kdistill.training.loop import student_inputs

    student.eval()
    return evaluate(
        lambda b: student(**student_inputs(b)).logits,
        val_loader,
        accelerator,
        num_labels,
        "validation",
    )
