"""Scoring one model for compare: its logits over the split, what it is timed on, and its entry
in comparison_results.json (quality, faithfulness to the teacher, size).

Teacher and students go through the same code: a student is loaded as a frozen classifier with
its columns in the data set's class order, so nothing differs but the model.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset

    from kdistill.config import CompareConfig
    from kdistill.evaluation.candidates import Candidate
    from kdistill.teachers.classifier import Teacher

logger = logging.getLogger(__name__)

# Weight formats in the order transformers prefers them: a folder holding both safetensors and a
# pickle copy loads (and so weighs) only the safetensors.
WEIGHT_FORMATS = (("*.safetensors",), ("*.bin", "*.pt", "*.pth"), ("*.gguf",))


def weights_size(name: str) -> int:
    """Bytes of the weight files transformers loads from a model folder (a Hub id: its snapshot
    in the local cache). 0, with a warning, when no folder is found."""
    folder = Path(name)
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
        if not isinstance(found, str):
            logger.warning("%s: no local folder found; its size on disk is reported as 0", name)
            return 0
        folder = Path(found).parent
    for patterns in WEIGHT_FORMATS:
        files = {f for pattern in patterns for f in folder.glob(pattern)}
        if files:
            return sum(f.stat().st_size for f in files)  # stat follows the Hub cache's symlinks
    return 0


def load_student_model(candidate: Candidate, label_names: list[str], dtype: torch.dtype) -> Teacher:
    """A student loaded as a frozen classifier with its columns in the data set's class order,
    so it runs through exactly the same scoring and timing code as the teacher."""
    from kdistill.teachers.classifier import ClassifierTeacher, load_teacher_classifier

    path = str(candidate.model_dir)
    try:
        model, tokenizer, columns = load_teacher_classifier(path, label_names, False, dtype)
    except KdistillError as e:  # the loader speaks of teachers; this one is a student
        raise KdistillError(str(e).replace("--teacher-model", candidate.flag)) from e
    return ClassifierTeacher(model, tokenizer, columns, path)


def pad_rows(
    rows: list[list[int]], pad_id: int, left: bool, device: torch.device
) -> dict[str, torch.Tensor]:
    """One batch padded to its longest row, on the side the tokenizer pads."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span], mask[i, span] = torch.tensor(r), 1
    return {"teacher_input_ids": ids.to(device), "teacher_attention_mask": mask.to(device)}


# (forward, one-row batches, one throughput batch): what measure_speeds times a model on.
Timing = tuple[
    Callable[[dict[str, torch.Tensor]], torch.Tensor],
    list[dict[str, torch.Tensor]],
    dict[str, torch.Tensor],
]


def score_model(
    wrapper: Teacher,
    rows: Dataset,
    config: CompareConfig,
    accelerator: Accelerator,
    num_labels: int,
) -> tuple[torch.Tensor, Timing]:
    """(len(rows), num_labels) logits over the split, and what measure_speeds times the model on
    (it times every model together, interleaved): the split's first rows one at a time, and its
    first throughput-batch-size rows as one batch, each model reading its own tokenisation of
    the same texts."""
    from kdistill.data.batches import tokenize
    from kdistill.teachers.cache import compute_teacher_logits

    wrapper.to(accelerator.device)
    encoded = tokenize(rows, {"teacher": wrapper}, config.max_length)
    logits = compute_teacher_logits(wrapper, encoded, config.batch_size, accelerator, num_labels)
    ids = encoded.select_columns(["teacher_input_ids"])[:]["teacher_input_ids"]
    pad_id, left = wrapper.tokenizer.pad_token_id, wrapper.tokenizer.padding_side == "left"
    singles = [pad_rows([r], pad_id, left, accelerator.device) for r in ids[: config.latency_rows]]
    batch = pad_rows(ids[: config.throughput_batch_size], pad_id, left, accelerator.device)

    def forward(b: dict[str, torch.Tensor]) -> torch.Tensor:
        with accelerator.autocast():
            return wrapper.logits(b)

    return logits, (forward, singles, batch)


def model_record(
    name: str,
    role: str,
    wrapper: Teacher,
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    speed: dict[str, float],
    label_names: list[str],
    candidate: Candidate | None = None,
) -> dict[str, Any]:
    """One entry of comparison_results.json's `models`, before the ratios to the teacher."""
    from kdistill.evaluation.gain import run_recipe
    from kdistill.evaluation.metrics import (
        agreement,
        classification_metrics,
        confusion,
        expected_calibration_error,
        mean_kl,
        per_class_scores,
    )
    from kdistill.students.load import count_parameters

    metrics = classification_metrics(logits, labels, len(label_names))
    preds = logits.argmax(-1)
    run_config = candidate.run_config if candidate else None
    data = (run_config or {}).get("data") or {}
    return {
        "name": name,
        "role": role,
        "path": wrapper.name,
        "run_dir": str(candidate.run_dir) if candidate and candidate.run_dir else None,
        "run_config": run_config,
        "history": candidate.history if candidate else None,
        "mode": wrapper.mode,
        "model_class": type(wrapper.model).__name__,
        "parameters": count_parameters(wrapper.model),
        "size_on_disk_bytes": weights_size(wrapper.name),
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "loss": metrics["loss"],
        "ece": expected_calibration_error(torch.softmax(logits.float(), -1), labels),
        "calibration": folded_calibration(wrapper.name, candidate),
        "per_class": per_class_scores(labels, preds, label_names),
        "confusion_matrix": confusion(labels, preds, len(label_names)),
        "agreement_with_teacher": agreement(teacher_logits, logits),
        "kl_to_teacher": mean_kl(teacher_logits, logits),
        **speed,
        "training_data": {
            "labeled_rows": data.get("train_rows"),
            "unlabeled_rows": data.get("unlabeled_rows"),
        },
        "recipe": run_recipe(run_config),
    }


def folded_calibration(path: str, candidate: Candidate | None) -> dict[str, Any] | None:
    """The temperature folded into this model's head on validation (training.calibration): a
    run's config.json "calibration" for its model folder, a finetune-teacher folder's
    teacher_eval.json "head_calibration"; {"mode": "off"} where it was turned off, None where
    the model predates it or is not kdistill's."""
    from kdistill.evaluation.candidates import read_json

    if candidate is not None and candidate.run_config is not None:
        calibration = candidate.run_config.get("calibration")
        if not isinstance(calibration, dict):
            return None
        if calibration.get("mode") == "off":
            return {"mode": "off"}
        return calibration.get(candidate.model_dir.name)
    report = read_json(Path(path) / "teacher_eval.json") if Path(path).is_dir() else None
    found = report.get("head_calibration") if isinstance(report, dict) else None
    return found if isinstance(found, dict) else None


def add_ratios(models: list[dict[str, Any]]) -> None:
    """Speed-up, throughput ratio and compression against the teacher (models[0])."""
    teacher = models[0]
    for m in models:
        m["speedup_vs_teacher"] = teacher["latency_ms_batch_1"] / m["latency_ms_batch_1"]
        m["throughput_ratio_vs_teacher"] = m["throughput_per_s"] / teacher["throughput_per_s"]
        m["compression_vs_teacher"] = teacher["parameters"] / m["parameters"]


def release(wrapper: Teacher) -> None:
    """Free a model's memory before the next loads: a 1.5B teacher and its students need not
    share the GPU."""
    wrapper.model.to("cpu")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
