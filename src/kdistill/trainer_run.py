"""The run directory of a DistillationTrainer: the files `kdistill distill` writes (config.json,
history.json, best_model/ with its card, training_curves.png), made from the Trainer's state so
`kdistill predict`, `compare` and `runs` read it like any distill run."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.api import teacher_logits as compute_teacher_logits
from kdistill.data.labels import unnamed
from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from datasets import Dataset

    # A DistillationTrainer, typed as its base: trainer.py imports this module, not back.
    from transformers import Trainer

logger = logging.getLogger(__name__)


def student_label_names(model: torch.nn.Module) -> list[str]:
    """The student's classes in logit order; a head with placeholder names cannot be matched
    to a teacher's classes."""
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if unnamed(names):
        raise KdistillError(
            "the student's config.id2label has no class names; load it with "
            "num_labels, id2label and label2id for the data set's classes"
        )
    return names


def label_column(ds: Dataset) -> list[int]:
    """The integer labels of a data set in Trainer form (`label` or `labels`)."""
    name = "label" if "label" in ds.column_names else "labels"
    return list(ds[name])


def validation_metrics(
    trainer: Trainer, n_labels: int
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(student, teacher) accuracy, macro-F1 and loss on eval_dataset's labelled rows, measured
    now; None where there is no eval_dataset (or, for the teacher, no text or teacher)."""
    from kdistill.evaluation.metrics import classification_metrics

    ds, args = trainer.eval_dataset, trainer.args
    if ds is None:
        return None, None

    def metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        keep = labels >= 0
        return classification_metrics(logits[keep].float(), labels[keep], n_labels)

    out = trainer.predict(ds, metric_key_prefix="kdistill")
    logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
    student = metrics(torch.as_tensor(logits), torch.as_tensor(out.label_ids))
    if trainer.teacher is None or args.text_column not in ds.column_names:
        return student, None
    t_logits = compute_teacher_logits(
        trainer.teacher,
        list(ds[args.text_column]),
        max_length=args.teacher_max_length,
        batch_size=args.teacher_batch_size,
        cache=args.teacher_cache,
        cache_dir=args.teacher_cache_dir,
        accelerator=trainer.accelerator,
    )
    trainer.teacher.to(torch.device("cpu"))
    return student, metrics(t_logits, torch.tensor(label_column(ds)))


def run_config(trainer: Trainer, dataset: str, val_rows: int | None) -> dict[str, Any]:
    """config.json of a distill run, with the fields `kdistill runs`, compare and the model
    card read, and the TrainingArguments in full."""
    from kdistill.students.load import count_parameters
    from kdistill.training.runtime import library_versions

    args, teacher = trainer.args, trainer.teacher
    student = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    labels = label_column(trainer.train_dataset)
    labeled = sum(1 for y in labels if y >= 0)
    t_model = teacher.model if teacher is not None else None
    return {
        "kind": "distill",
        "made_by": "kdistill.DistillationTrainer",
        "dataset": dataset,
        "teacher_model": teacher.name if teacher is not None else args.teacher_model,
        "student_model": getattr(student, "name_or_path", None) or type(student).__name__,
        "student_layers": None,
        "student_num_layers": None,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "epochs": args.num_train_epochs,
        "batch_size": args.per_device_train_batch_size,
        "learning_rate": args.learning_rate,
        "max_length": args.teacher_max_length,
        "seed": args.seed,
        "training_arguments": args.to_dict(),
        "data": {
            "name": dataset,
            "source": None,
            "label_names": student_label_names(student),
            "train_rows": labeled,
            "unlabeled_rows": len(labels) - labeled,
            "validation_rows": val_rows,
        },
        "teacher": {
            "model": teacher.name if teacher is not None else args.teacher_model,
            "class": type(t_model).__name__ if t_model is not None else None,
            "parameters": count_parameters(t_model) if t_model is not None else None,
            "mode": teacher.mode if teacher is not None else None,
            "settings": teacher.settings() if teacher is not None else None,
        },
        "student": {
            "model": getattr(student, "name_or_path", None),
            "class": type(student).__name__,
            "parameters": count_parameters(student),
        },
        "loss": "mean over rows of: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) "
        "+ (1 - alpha) * CE(s, label) for a labelled row, T^2 * KL for an unlabelled row",
        "command": sys.argv,
        "versions": library_versions(),
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def run_history(
    trainer: Trainer, val: dict[str, Any] | None, teacher: dict[str, Any] | None
) -> dict[str, Any]:
    """history.json: one epoch record, the saved student's, and the Trainer's own log."""
    log = trainer.state.log_history
    train_losses = [e["loss"] for e in log if "loss" in e]
    epoch = round(trainer.state.epoch or trainer.args.num_train_epochs)
    record = {"epoch": epoch, "train_loss": train_losses[-1] if train_losses else None}
    for key in ("loss", "accuracy", "macro_f1"):
        record[f"val_{key}"] = val[key] if val else None
    record["val_rows"] = val["n"] if val else None
    return {
        "teacher": {
            f"val_{k}": teacher[key] if teacher else None
            for k, key in (
                ("accuracy", "accuracy"),
                ("macro_f1", "macro_f1"),
                ("loss", "loss"),
                ("rows", "n"),
            )
        },
        "epochs": [record],
        "best": {"epoch": epoch, "val_accuracy": record["val_accuracy"]},
        "trainer_log_history": log,
        "total_time_s": next((e["train_runtime"] for e in log if "train_runtime" in e), None),
        "completed": datetime.now().isoformat(timespec="seconds"),
    }


def save_trainer_run(trainer: Trainer, dataset: str) -> Path:
    """DistillationTrainer.save_run: the files `kdistill distill` writes, from the Trainer's,
    in a `.partial` folder renamed when complete."""
    from kdistill.files import atomic_write_json
    from kdistill.shipping.model_card import write_run_cards
    from kdistill.training.checkpoint import save_model
    from kdistill.training.records import save_training_curves
    from kdistill.training.runs import finish_run_dir, new_run_dir, run_name

    args = trainer.args
    if trainer.processing_class is None:
        raise KdistillError(
            "save_run needs the student's tokenizer: DistillationTrainer("
            "processing_class=tokenizer)"
        )
    student = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    val, teacher_val = validation_metrics(trainer, len(student_label_names(student)))
    partial = final = None
    if trainer.is_world_process_zero():
        final, partial = new_run_dir(
            Path(args.output_dir), run_name(dataset, args.temperature, args.alpha)
        )
        atomic_write_json(
            partial / "config.json", run_config(trainer, dataset, val["n"] if val else None)
        )
    # Every process: a sharded student (FSDP, ZeRO-3) is gathered from all of them.
    save_model(
        (partial or Path(args.output_dir)) / "best_model",
        trainer.model,
        trainer.processing_class,
        trainer.accelerator,
    )
    if partial is None or final is None:
        return Path(args.output_dir)
    history = run_history(trainer, val, teacher_val)
    atomic_write_json(partial / "history.json", history)
    save_training_curves(history, partial / "training_curves.png")
    write_run_cards(partial)
    finish_run_dir(partial, final)
    logger.info("saved the distilled student as %s", final)
    return final
