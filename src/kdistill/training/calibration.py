"""Calibrated models on disk: a temperature fitted on validation after training, folded into the
classification head, so that every consumer of the folder (`pipeline()`, `predict`, ONNX export)
reads probabilities that mean what they say, with no extra step and no prediction changed.

    softmax((h W^T + b) / T) = softmax(h (W / T)^T + b / T)

A distilled student inherits the flat targets of its teacher (the demo's have ECE 0.56 on test,
their cross-entropy baseline 0.09): `predict` then prints 0.3 for a right answer, which no one can
threshold. Dividing the last linear layer's weight and bias by the NLL-best T
(evaluation.calibration, bounded to [0.05, 20]) is exact for the softmax, so the argmax is the
same on every row. Each model folder gets its own T, fitted on its own validation logits.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.errors import KdistillError
from kdistill.evaluation.calibration import fit_temperature
from kdistill.files import atomic_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# The last linear layer of the heads transformers builds, by name: BERT, DistilBERT, ALBERT
# (`classifier`); RoBERTa, XLM-R, ELECTRA (`classifier.out_proj`); Qwen2, Llama, Mistral, GPT-2
# (`score`, no bias).
KNOWN_HEADS = ("score", "classifier", "classifier.out_proj")
# How far the folded model's logits may stray from logits / T, relative to their scale: float32
# rounding, and 8 bits of mantissa for weights saved in bfloat16 or float16.
FOLD_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-3}
HALF_TOLERANCE = 2e-2


def classification_head(model: torch.nn.Module) -> tuple[str, torch.nn.Linear]:
    """(name, layer): the linear layer whose outputs are the logits. A known head by name, else
    the one linear layer outside the base model with num_labels outputs; KdistillError naming
    --calibrate-student off where there is none, or several."""
    num_labels = model.config.num_labels
    modules = dict(model.named_modules())
    for name in KNOWN_HEADS:
        layer = modules.get(name)
        if isinstance(layer, torch.nn.Linear) and layer.out_features == num_labels:
            return name, layer
    base = getattr(model, "base_model_prefix", "")
    found = [
        (name, m)
        for name, m in modules.items()
        if isinstance(m, torch.nn.Linear)
        and m.out_features == num_labels
        and not (base and name.startswith(f"{base}."))
    ]
    if len(found) != 1:
        which = "none" if not found else ", ".join(n for n, _ in found)
        raise KdistillError(
            f"calibration: cannot tell which linear layer of {type(model).__name__} gives the "
            f"logits ({num_labels} outputs outside the base model: {which}); pass "
            "--calibrate-student off (or --calibrate off for finetune-teacher)"
        )
    return found[0]


@torch.no_grad()
def fold_temperature(model: torch.nn.Module, temperature: float) -> str:
    """Divide the head's weight and bias by T in place: the model's logits become logits / T.
    Returns the head's name."""
    name, head = classification_head(model)
    head.weight.div_(temperature)
    if head.bias is not None:
        head.bias.div_(temperature)
    return name


@torch.no_grad()
def folder_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int,
    batch_size: int,
) -> torch.Tensor:
    """(len(texts), num_labels) float32 logits on CPU, dropout off, in batches of similar length
    (little padding); row i for text i."""
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out = torch.empty(len(texts), model.config.num_labels)
    model.eval()
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in rows],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        ).to(device)
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        out[torch.tensor(rows)] = logits.float().cpu()
    return out


def calibrate_model_folder(
    folder: Path,
    texts: list[str],
    labels: list[int],
    max_length: int,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Fit T on the folder's validation logits and fold it into its head; the folder is
    rewritten atomically (the old one stays until the new one is complete). Returns the record
    for config.json: the fit (T, bound hit, NLL and ECE at T = 1 and after), the head, and
    whether it was applied (not where the fit gains nothing over T = 1)."""
    from kdistill.data.model_files import load_classifier, load_tokenizer, set_pad_token

    keep = [i for i, y in enumerate(labels) if y >= 0]
    if not keep:  # a finished run is never failed for it: said, recorded, left as trained
        logger.warning("calibration of %s skipped: no labelled validation rows", folder)
        return {"applied": False, "error": "no labelled validation rows"}
    model, _ = load_classifier(str(folder), "--calibrate-student", dtype="auto")
    tokenizer = load_tokenizer(str(folder), "--calibrate-student")
    set_pad_token(model, tokenizer)
    model.to(device)
    texts, target = [texts[i] for i in keep], torch.tensor([labels[i] for i in keep])
    logits = folder_logits(model, tokenizer, texts, max_length, batch_size)
    fit = fit_temperature(logits, target)
    record: dict[str, Any] = {**fit.record(), "applied": False, "head": None}
    if fit.temperature == 1.0:
        return record
    record["head"] = fold_temperature(model, fit.temperature)
    # The fold must give logits / T exactly (up to rounding): checked on the first rows, so a
    # head that is not the last layer (a non-linearity after it) is caught, not shipped.
    probe = list(range(min(len(texts), batch_size)))
    folded = folder_logits(model, tokenizer, [texts[i] for i in probe], max_length, batch_size)
    expected = logits[probe] / fit.temperature
    scale = expected.abs().max().clamp_min(1.0)
    tolerance = FOLD_TOLERANCE.get(model.dtype, HALF_TOLERANCE) * scale
    if not bool(((folded - expected).abs() <= tolerance).all()):
        # The weights are trained and saved: a warning, and the folder left as it was.
        record["error"] = (
            f"dividing {record['head']} by T did not divide the logits by T (it is not the "
            "model's last layer); the model is left uncalibrated"
        )
        logger.warning("calibration of %s: %s", folder, record["error"])
        return record
    with atomic_dir(folder) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)  # tokenizer, card, reports
        model.save_pretrained(tmp)
    record["applied"] = True
    return record


def calibrate_run_models(
    run_dir: Path,
    mode: str,
    texts: list[str],
    labels: list[int],
    max_length: int,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """--calibrate-student for a run's saved models. auto: each model folder (best_model/,
    final_model/) gets its own T, fitted on its own validation logits, folded into its head.
    The records go into the run's config.json under "calibration" ({"mode": "off"} with off);
    the model cards and compare read them there. Main process only, before the cards are
    written and the run folder renamed: distill, lockstep sweeps and --seeds all end here."""
    import json

    from kdistill.files import atomic_write_json
    from kdistill.training.runs import MODEL_FOLDERS

    records: dict[str, Any] = {"mode": mode}
    for which in MODEL_FOLDERS if mode == "auto" else ():
        folder = run_dir / which
        if not folder.is_dir():
            continue
        record = calibrate_model_folder(folder, texts, labels, max_length, batch_size, device)
        records[which] = record
        if "temperature" in record:
            log_fit(f"student {which}", record)
    path = run_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["calibration"] = records
    atomic_write_json(path, config)
    return records


def log_fit(what: str, record: dict[str, Any]) -> None:
    """One line per calibrated model; a degenerate fit (on a bound, or no gain) is a warning."""
    line = (
        f"{what} calibrated: T {record['temperature']:.3g} (NLL {record['nll_at_1']:.3f} -> "
        f"{record['nll_fitted']:.3f}, ECE {record['ece_at_1']:.3f} -> {record['ece_fitted']:.3f} "
        f"on {record['rows']} validation rows)"
    )
    if record["degenerate"]:
        logger.warning("%s; %s", line, record["degenerate"])
    else:
        logger.info("%s", line)


def logits_as_trained(teacher: Any) -> list[float]:
    """Distil from a finetune-teacher folder's logits as trained: the T its --calibrate-teacher
    folded into the head (teacher_eval.json) is multiplied back, in memory, for each classifier
    teacher (or ensemble member) that has one. Returns those temperatures.

    Why: distill's soft targets are softmax(z / T) of the raw logits unless --teacher-calibration
    auto calibrates them; a teacher that ships calibrated must not change that silently. On a
    reduced demo run, calibrated soft targets at T = 3 (--teacher-calibration auto, which is what
    the folded head would give: the teacher is sure of itself at T_cal = 0.1) left the cut student
    at 51.8% test accuracy where the logits as trained gave 85.8%
    (bench/results/calibration.txt). The cache key records it (settings())."""
    from kdistill.evaluation.candidates import read_json

    undone = []
    for member in getattr(teacher, "members", None) or [teacher]:
        folder = Path(str(getattr(member, "name", "")))
        if getattr(member, "mode", None) != "classifier" or not folder.is_dir():
            continue
        report = read_json(folder / "teacher_eval.json")
        record = report.get("head_calibration") if isinstance(report, dict) else None
        if not isinstance(record, dict) or not record.get("applied"):
            continue
        t = float(record["temperature"])
        fold_temperature(member.model, 1.0 / t)
        member.head_temperature_undone = t
        undone.append(t)
        logger.info(
            "teacher %s ships calibrated (T %.3g folded into its head); distilling from its "
            "logits as trained, T multiplied back (--teacher-calibration auto calibrates them)",
            folder,
            t,
        )
    return undone
