"""finetune-teacher: train any checkpoint as a classifier on the data set, so it can teach.

The seed's DeepSeek download is a causal LM: as a sequence classifier its head is random. This
gives it (or any encoder) a trained head and the data set's id2label, in a folder `distill`
accepts as --teacher-model with no extra flags. Full fine-tuning or LoRA (peft adapters merged
into the weights on save); the loop is distill's with no teacher (plain cross-entropy).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.config import FinetuneConfig
from kdistill.errors import KdistillError
from kdistill.files import atomic_dir, atomic_write_json

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from transformers import PreTrainedTokenizerBase

    from kdistill.training.runtime import RunSetup

logger = logging.getLogger(__name__)


def apply_lora(model: torch.nn.Module, config: FinetuneConfig) -> torch.nn.Module:
    """Wrap the classifier in LoRA adapters (students/lora.py); the new head stays trainable."""
    from kdistill.students.lora import add_lora, lora_targets

    targets = lora_targets(model, config.target_modules, "--method lora")
    return add_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, targets)


def finetune_teacher(config: FinetuneConfig) -> Path:
    """Returns the saved teacher folder (model, tokenizer, teacher_eval.json)."""
    from kdistill.data.sources import dataset_name
    from kdistill.evaluation.metrics import calibration_report
    from kdistill.students.load import load_student
    from kdistill.training.loaders import make_loaders
    from kdistill.training.loop import (
        apply_gradient_checkpointing,
        make_optimizer,
        make_scheduler,
        train_one_epoch,
    )
    from kdistill.training.runtime import setup_run

    run = setup_run(config)
    accelerator = run.accelerator
    if len(run.train) == 0:
        raise KdistillError(
            f"--dataset {config.dataset} has no labelled training rows, and a "
            "teacher is fine-tuned on labels; prepare it with a --labeled-fraction "
            "above 0"
        )
    model, tokenizer = load_student(config.model, run.data.label_names, config.seed)
    if config.calibrate_teacher == "auto":
        from kdistill.training.calibration import classification_head

        classification_head(model)  # a head it cannot find is refused now, not after training
    checkpointing = apply_gradient_checkpointing(model, config.gradient_checkpointing, run.device)
    if config.method == "lora":
        model = apply_lora(model, config)
    # The "student" prefix names the inputs of the model being trained.
    train_loader, val_loader, _ = make_loaders(
        run.train, run.val, {"student": tokenizer}, config, accelerator
    )
    optimizer = make_optimizer(model, config.learning_rate, config.weight_decay)
    scheduler, _ = make_scheduler(optimizer, len(train_loader), config)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )

    start = time.perf_counter()
    epochs = []
    for epoch in range(1, config.epochs + 1):
        desc = f"fine-tune {epoch}/{config.epochs}"
        args = (optimizer, scheduler, accelerator, 1.0, 0.0, desc)  # no teacher: plain CE
        stats = train_one_epoch(model, None, train_loader, *args)
        logits, labels = validation_logits(model, val_loader, accelerator)
        epochs.append(epoch_record(epoch, stats, logits, labels, run.data.num_labels))

    # How sure the teacher is when right decides what its soft targets teach: a flat softmax
    # at T=1 carries little beyond the argmax.
    calibration = calibration_report(logits, labels)
    log_calibration(calibration)
    name = config.name or f"{dataset_name(config.model)}-{run.data.name}"
    target = Path(config.output_dir) / name
    if accelerator.is_main_process:
        report = teacher_report(config, run, epochs, calibration, checkpointing, start)
        save_teacher(target, model, tokenizer, accelerator, report, config, run)
    accelerator.wait_for_everyone()
    if config.push_to_hub and accelerator.is_main_process:
        from kdistill.shipping.publish import push_folder

        push_folder(target, config.push_to_hub, not config.hub_public, what="teacher")
    return target


def validation_logits(
    model: torch.nn.Module, val_loader: DataLoader, accelerator: Accelerator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (rows, num_labels), labels (rows,)) with dropout off, gathered from every
    process: calibration reads the last epoch's."""
    from kdistill.evaluation.metrics import collect_logits
    from kdistill.training.loop import student_inputs

    model.eval()
    return collect_logits(
        lambda b: model(**student_inputs(b)).logits, val_loader, accelerator, "validation"
    )


def epoch_record(
    epoch: int, stats: dict[str, Any], logits: torch.Tensor, labels: torch.Tensor, num_labels: int
) -> dict[str, Any]:
    """teacher_eval.json's line for an epoch, logged."""
    from kdistill.evaluation.metrics import classification_metrics

    metrics = classification_metrics(logits, labels, num_labels)
    logger.info(
        "epoch %d: loss %.4f, val acc %.4f, macro-F1 %.4f",
        epoch,
        stats["train_loss"],
        metrics["accuracy"],
        metrics["macro_f1"],
    )
    return {
        "epoch": epoch,
        **stats,
        "val_accuracy": metrics["accuracy"],
        "val_macro_f1": metrics["macro_f1"],
        "val_loss": metrics["loss"],
    }


def log_calibration(calibration: dict[str, Any]) -> None:
    """One line on how sure the teacher is when right: its soft targets depend on it."""
    logger.info(
        "teacher calibration on validation: ECE %.3f, NLL %.3f at T=1; fitted temperature %.3f "
        "gives ECE %.3f, NLL %.3f",
        calibration["ece"],
        calibration["nll"],
        calibration["fitted_temperature"],
        calibration["ece_calibrated"],
        calibration["nll_calibrated"],
    )


def teacher_report(
    config: FinetuneConfig,
    run: RunSetup,
    epochs: list[dict[str, Any]],
    calibration: dict[str, Any],
    checkpointing: bool,
    start: float,
) -> dict[str, Any]:
    """teacher_eval.json: the last epoch's validation numbers (what distill's teacher check will
    see), every epoch, the calibration, and the config."""
    from kdistill.training.runtime import library_versions

    return {
        "val_accuracy": epochs[-1]["val_accuracy"],
        "val_macro_f1": epochs[-1]["val_macro_f1"],
        "val_rows": len(run.val),
        "train_rows": len(run.train),
        "label_names": run.data.label_names,
        "epochs": epochs,
        "calibration": calibration,
        "config": config.to_dict(),
        "resolved": {
            "mixed_precision": run.precision,
            "device": str(run.accelerator.device),
            "gradient_checkpointing": checkpointing,
            "learning_rate": config.learning_rate,
        },
        "time_s": time.perf_counter() - start,
        "versions": library_versions(),
        "created": datetime.now().isoformat(timespec="seconds"),
    }


def save_teacher(
    target: Path,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
    report: dict[str, Any],
    config: FinetuneConfig,
    run: RunSetup,
) -> None:
    """Model (LoRA merged), tokenizer, the head calibrated (--calibrate-teacher),
    teacher_eval.json and card into a temporary folder, renamed to `target` when complete.
    Main process only."""
    from kdistill.shipping.teacher_card import write_teacher_card
    from kdistill.students.lora import merged
    from kdistill.training.calibration import calibrate_model_folder, log_fit

    with atomic_dir(target) as tmp:
        merged(accelerator.unwrap_model(model, keep_torch_compile=False)).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if config.calibrate_teacher == "auto":
            texts, labels = list(run.val["text"]), list(run.val["label"])
            args = (config.max_length, config.batch_size, accelerator.device)
            report["head_calibration"] = calibrate_model_folder(tmp, texts, labels, *args)
            if "temperature" in report["head_calibration"]:
                log_fit("teacher", report["head_calibration"])
        else:
            report["head_calibration"] = {"mode": "off"}
        atomic_write_json(tmp / "teacher_eval.json", report)
        write_teacher_card(tmp, target, report, config.push_to_hub)
    logger.info("teacher saved to %s (validation accuracy %.4f)", target, report["val_accuracy"])
