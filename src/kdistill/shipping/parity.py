"""What an export is held to: real rows scored by the torch model and each exported file, and
every model timed under the same conditions.

An export is only as good as its agreement with the model it came from: the largest absolute
logit difference, the share of rows where both predict the same class, and the accuracy of each.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.config import ExportConfig
from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from kdistill.shipping.predictor import Predictor


def parity_source(config: ExportConfig, model_dir: Path, run_dir: Path | None) -> tuple[str, str]:
    """(--dataset, --data-dir) for the parity rows: the flag, else what the run or the teacher
    was trained on."""
    import json

    if config.dataset:
        return config.dataset, config.data_dir
    for f in ([run_dir / "config.json"] if run_dir else []) + [model_dir / "teacher_eval.json"]:
        try:
            saved = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        saved = saved.get("config", saved) if f.name == "teacher_eval.json" else saved
        if saved.get("dataset"):
            return str(saved["dataset"]), str(saved.get("data_dir") or config.data_dir)
    raise KdistillError(
        f"--model {config.model}: not a distill run or a finetune-teacher folder, "
        "so the rows to check it on are unknown; pass --dataset"
    )


def parity_rows(
    config: ExportConfig, model_dir: Path, run_dir: Path | None
) -> tuple[list[str], torch.Tensor, list[str], str]:
    """Texts, labels (in the data set's class order), class names and the data set's name."""
    from kdistill.data.prepare import load_for_training
    from kdistill.data.sampling import subsample

    dataset, data_dir = parity_source(config, model_dir, run_dir)
    data = load_for_training(
        dataset,
        data_dir,
        config.text_column,
        config.label_column,
        config.validation_split,
        config.seed,
    )
    if config.split not in data.splits or len(data.splits[config.split]) == 0:
        raise KdistillError(
            f"--split {config.split}: {data.name} has no {config.split} rows "
            f"(it has {', '.join(data.splits)})"
        )
    rows = subsample(data.splits[config.split], config.max_samples, config.seed, "--max-samples")
    return list(rows["text"]), torch.tensor(list(rows["label"])), data.label_names, data.name


def accuracy(logits: torch.Tensor, labels: torch.Tensor, columns: list[int] | None) -> float | None:
    """Accuracy over the data set's classes, `columns` being the model's logit column of each;
    None when the model's classes could not be matched to the data set's."""
    if columns is None:
        return None
    return float((logits[:, columns].argmax(-1) == labels).float().mean())


def parity(reference: torch.Tensor, logits: torch.Tensor) -> dict[str, float]:
    """How far an exported model's logits are from the torch model's. (n, num_labels) each."""
    diff = (reference - logits).abs()
    same = (reference.argmax(-1) == logits.argmax(-1)).float()
    return {
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "agreement": float(same.mean()),
    }


def time_all(
    predictors: dict[str, Predictor], texts: list[str], config: ExportConfig, threads: int
) -> dict[str, dict[str, Any]]:
    """Latency at batch 1 (median over the first --latency-rows rows, one at a time) and at
    --batch-size (one padded batch of the first rows), throughput at that batch size, and the
    IQR of each, for every predictor: timed interleaved (evaluation.metrics.measure_speeds), on
    `threads` threads, so the torch/bf16/ONNX/int8 ratios are measured under the same conditions."""
    from kdistill.evaluation.metrics import measure_speeds

    def enc(tok: Any, rows: list[str]) -> dict[str, torch.Tensor]:
        b = tok(
            rows, truncation=True, max_length=config.max_length, padding=True, return_tensors="pt"
        )
        return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}

    batch_rows = texts[: config.batch_size]
    models = {}
    for variant, p in predictors.items():
        singles = [enc(p.tokenizer, [t]) for t in texts[: config.latency_rows]]
        models[variant] = (p.forward, singles, enc(p.tokenizer, batch_rows))
    out = measure_speeds(models, config.repeats, torch.device("cpu"), threads)
    for s in out.values():
        s[f"latency_ms_batch_{config.batch_size}"] = 1000 * len(batch_rows) / s["throughput_per_s"]
    return out
