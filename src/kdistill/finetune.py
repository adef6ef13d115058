"""finetune-teacher: train any checkpoint as a classifier on the data set, so it can teach.

The seed's DeepSeek download is a causal LM: as a sequence classifier its head is random. This
gives it (or any encoder) a trained head and the data set's id2label, in a folder `distill`
accepts as --teacher-model with no extra flags. Full fine-tuning; the loop is distill's with no
teacher (plain cross-entropy).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

from kdistill.config import FinetuneConfig
from kdistill.runs import atomic_dir, atomic_write_json

logger = logging.getLogger(__name__)


def finetune_teacher(config: FinetuneConfig) -> Path:
    """Returns the saved teacher folder (model, tokenizer, teacher_eval.json)."""
    from kdistill.data import dataset_name
    from kdistill.distill import (
        apply_gradient_checkpointing,
        library_versions,
        make_loaders,
        make_optimizer,
        make_scheduler,
        setup_run,
        student_inputs,
        train_one_epoch,
    )
    from kdistill.evaluate import evaluate
    from kdistill.models import load_student

    run = setup_run(config)
    device, precision, accelerator = run.device, run.precision, run.accelerator
    data, train, val = run.data, run.train, run.val
    model, tokenizer = load_student(config.model, data.label_names, config.seed)
    checkpointing = apply_gradient_checkpointing(model, config.gradient_checkpointing, device)
    # The "student" prefix names the inputs of the model being trained.
    train_loader, val_loader, _ = make_loaders(train, val, {"student": tokenizer}, config,
                                               accelerator)  # fmt: skip
    optimizer = make_optimizer(model, config.learning_rate, config.weight_decay)
    scheduler, _ = make_scheduler(optimizer, len(train_loader), config)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )

    start = time.perf_counter()
    epochs = []
    for epoch in range(1, config.epochs + 1):
        stats = train_one_epoch(model, None, train_loader, optimizer, scheduler, accelerator,
                                1.0, 0.0, f"fine-tune {epoch}/{config.epochs}")  # fmt: skip
        model.eval()
        metrics = evaluate(lambda b: model(**student_inputs(b)).logits, val_loader, accelerator,
                           data.num_labels, "validation")  # fmt: skip
        epochs.append(
            {"epoch": epoch, **stats, "val_accuracy": metrics["accuracy"],
             "val_macro_f1": metrics["macro_f1"], "val_loss": metrics["loss"]}
        )  # fmt: skip
        logger.info("epoch %d: loss %.4f, val acc %.4f, macro-F1 %.4f", epoch,
                    stats["train_loss"], metrics["accuracy"], metrics["macro_f1"])  # fmt: skip

    name = config.name or f"{dataset_name(config.model)}-{data.name}"
    target = Path(config.output_dir) / name
    if accelerator.is_main_process:
        with atomic_dir(target) as tmp:
            accelerator.unwrap_model(model, keep_torch_compile=False).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / "teacher_eval.json", {
                "val_accuracy": epochs[-1]["val_accuracy"],
                "val_macro_f1": epochs[-1]["val_macro_f1"],
                "val_rows": len(val),
                "train_rows": len(train),
                "label_names": data.label_names,
                "epochs": epochs,
                "config": config.to_dict(),
                "resolved": {"mixed_precision": precision, "device": str(accelerator.device),
                             "gradient_checkpointing": checkpointing},
                "time_s": time.perf_counter() - start,
                "versions": library_versions(),
                "created": datetime.now().isoformat(timespec="seconds"),
            })  # fmt: skip
        logger.info("teacher saved to %s (validation accuracy %.4f)", target,
                    epochs[-1]["val_accuracy"])  # fmt: skip
    accelerator.wait_for_everyone()
    return target
