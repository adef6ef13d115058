"""The model card of a fine-tuned teacher (finetune-teacher), from its teacher_eval.json.

A teacher is pushed to the Hub so students can be distilled from it elsewhere; its card says
what it was tuned from and how, and how good it is on validation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.shipping.cards import (
    TAGS,
    build_card,
    dataset_hub_id,
    eval_results,
    folded_temperature_text,
    hub_id,
    num,
    pct,
    table,
    usage,
    write_card,
)

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

logger = logging.getLogger(__name__)


def teacher_card(folder: Path, report: dict[str, Any], repo_id: str | None = None) -> ModelCard:
    """The card of a finetune-teacher folder, from its teacher_eval.json."""
    config = report.get("config") or {}
    epochs = report.get("epochs") or []
    last = epochs[-1] if epochs else {}
    labels = report.get("label_names") or []
    data_name = str(config.get("dataset"))
    data_id = dataset_hub_id(str(Path(config.get("data_dir") or "data") / data_name)) or hub_id(
        config.get("dataset")
    )
    name = folder.name
    results = eval_results(
        data_id or data_name,
        data_name,
        "validation",
        {"accuracy": report.get("val_accuracy"), "macro_f1": report.get("val_macro_f1")},
    )
    body = [
        f"# {name}",
        f"`{config.get('model')}` fine-tuned by kdistill as a {len(labels)}-class text "
        f"classifier for {data_name}, to teach smaller students (`kdistill distill "
        f"--teacher-model {name}`).",
        "## Training",
        table(["", ""], _training_rows(config, report, data_name)),
        f"## Validation results ({report.get('val_rows')} rows)",
        table(
            ["metric", "value"],
            [
                ["accuracy", pct(report.get("val_accuracy"))],
                ["macro-F1", num(report.get("val_macro_f1"))],
                ["loss (cross-entropy)", num(last.get("val_loss"))],
            ],
        ),
        usage(repo_id or str(folder)),
    ]
    if labels:
        body.append("## Labels\n\n" + ", ".join(f"`{n}`" for n in labels))
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "base_model": hub_id(config.get("model")),
        "datasets": [data_id] if data_id else None,
        "metrics": ["accuracy", "f1"],
        "tags": [*TAGS, "teacher"],
        "labels": labels,
        "model_name": name,
        "eval_results": results or None,
    }
    return build_card(metadata, "\n\n".join(body))


def _training_rows(
    config: dict[str, Any], report: dict[str, Any], data_name: str
) -> list[list[str]]:
    """The Training table: base model, method (full or merged LoRA), data and settings."""
    how = (
        "LoRA (r={}, alpha={}, merged into the weights)".format(
            config.get("lora_r"), config.get("lora_alpha")
        )
        if config.get("method", "full") == "lora"
        else "full fine-tuning"
    )
    calibration = report.get("head_calibration")
    cell = (
        folded_temperature_text(calibration, None, "--calibrate-teacher")
        if isinstance(calibration, dict)
        else None
    )
    return [
        ["base model", f"`{config.get('model')}`"],
        ["method", how],
        [
            "data",
            f"{data_name}: {report.get('train_rows')} training rows, "
            f"{report.get('val_rows')} validation rows",
        ],
        [
            "training",
            f"{config.get('epochs')} epochs, batch size {config.get('batch_size')}, "
            f"learning rate {(report.get('resolved') or {}).get('learning_rate')}, "
            f"max length {config.get('max_length')} tokens, "
            f"seed {config.get('seed')}",
        ],
        *([["probabilities", cell]] if cell else []),
    ]


def write_teacher_card(
    write_to: Path, folder: Path, report: dict[str, Any], repo_id: str | None = None
) -> None:
    """The card of the teacher that will sit at `folder`, written into `write_to` (the
    temporary folder renamed to `folder` when complete). Only warns on failure."""
    try:
        card = teacher_card(folder, report, repo_id)
    except Exception as e:  # noqa: BLE001
        logger.warning("could not build the model card of %s: %s", folder, e)
        return
    write_card(write_to, card)
