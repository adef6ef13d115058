"""A loaded classifier behind one interface, torch or ONNX: what predict runs, and what export
holds its exported files to.

A student or teacher folder, a distill run directory (its best_model/), or an exported ONNX
folder (or one .onnx file in it) each load as a Predictor whose `forward` maps a padded batch to
float32 logits on CPU; rows are batched by token length (little padding) and put back in input
order. Torch models run in bf16 where the device does it natively, ONNX models in fp32 on
onnxruntime's CPU provider.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.errors import KdistillError
from kdistill.shipping.onnx_runtime import onnx_forward, onnx_session

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"


@dataclass
class Predictor:
    """A loaded classifier: `forward` maps a padded batch (`input_ids`, `attention_mask`, as
    torch tensors on CPU) to float32 logits (batch, num_labels) on CPU."""

    name: str
    kind: str  # "torch" | "onnx"
    tokenizer: PreTrainedTokenizerBase
    label_names: list[str]
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    precision: str = "no"
    model: Any = None  # the torch module or the onnxruntime session


# --------------------------------------------------------------------------- loading


def resolve_model(given: str, flag: str = "--model") -> tuple[Path | str, str]:
    """(what to load, "torch" | "onnx"). A run directory gives its best_model/; a folder holding
    model.onnx, or a .onnx file, is an ONNX model; anything else is a torch classifier (a local
    folder or a Hub id)."""
    path = Path(given).expanduser()
    if path.is_file() and path.suffix == ".onnx":
        return path, "onnx"
    if path.is_dir():
        # A run directory: its config.json is the run's, not a model's.
        if (path / "best_model").is_dir() and (
            not (path / "config.json").is_file() or is_run_folder(path)
        ):
            path = path / "best_model"
        if (path / ONNX_FILE).is_file():
            return path / ONNX_FILE, "onnx"
        if not (path / "config.json").is_file():
            raise KdistillError(
                f"{flag} {given}: no config.json or {ONNX_FILE} in {path}; pass a model folder, "
                "a distill run directory or an ONNX export"
            )
        return path, "torch"
    if path.exists():
        raise KdistillError(
            f"{flag} {given}: a file; pass a model folder, a distill run "
            "directory, an ONNX export folder or a .onnx file"
        )
    from kdistill.data.model_paths import check_model_path

    return check_model_path(given, flag), "torch"  # a Hub id, or a one-line 'no such folder'


def is_run_folder(path: Path) -> bool:
    """Whether `path` holds a distill run's config.json (a run directory, not a model folder)."""
    from kdistill.files import is_run_config

    try:
        return is_run_config(json.loads((path / "config.json").read_text()))
    except (OSError, ValueError):
        return False


def label_names_of(config: Any) -> list[str]:
    """The class names in logit order, from a transformers config (object or dict)."""
    id2label = config.id2label if hasattr(config, "id2label") else config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def load_torch_predictor(
    name: str, device: str, precision: str, flag: str = "--model"
) -> Predictor:
    """A transformers classifier in eval mode. One whose head was never trained is refused:
    from_pretrained would fill it with random weights and every prediction would be noise."""
    from kdistill.data.model_files import (
        head_keys,
        load_classifier,
        load_tokenizer,
        quiet_transformers,
        set_pad_token,
    )

    quiet_transformers()
    tokenizer = load_tokenizer(name, flag)
    model, info = load_classifier(name, flag)
    fresh = head_keys(model, info.get("missing_keys", [])) + head_keys(
        model, info.get("mismatched_keys", [])
    )
    if fresh:
        raise KdistillError(
            f"{flag} {name}: the model has no trained classification head (newly initialised: "
            f"{', '.join(sorted(fresh)[:2])}), so its predictions would be noise; predict with a "
            "distilled student (kdistill distill) or a fine-tuned teacher (kdistill "
            "finetune-teacher)"
        )
    set_pad_token(model, tokenizer)
    return torch_predictor(model.eval().to(device), tokenizer, device, precision, str(name))


def torch_predictor(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    device: str,
    precision: str,
    name: str,
) -> Predictor:
    """A loaded classifier's predictor: inference mode, autocast at `precision` (bf16/fp16)."""
    autocast = precision in ("bf16", "fp16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16

    @torch.inference_mode()
    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=autocast):
            logits = model(**inputs).logits
        return logits.float().cpu()

    return Predictor(
        name, "torch", tokenizer, label_names_of(model.config), forward, precision, model
    )


def load_onnx_predictor(
    onnx_file: Path, flag: str = "--model", threads: int | None = None
) -> Predictor:
    """An exported model on onnxruntime's CPU provider; the class names and tokenizer come from
    the export folder (kdistill export writes the model's config.json and tokenizer beside it)."""
    from kdistill.data.model_files import load_tokenizer

    folder = onnx_file.parent
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise KdistillError(
            f"{flag} {onnx_file}: no readable config.json beside it (the class "
            "names): pass a folder written by kdistill export"
        ) from e
    report = _read_report(folder / "export_report.json")
    if report.get("passed") is False:
        logger.warning(
            "%s: its export was refused (agreement with the torch model below %s, "
            "see export_report.json)",
            folder,
            report.get("min_agreement"),
        )
    tokenizer = load_tokenizer(str(folder), flag)
    session = onnx_session(onnx_file, flag, threads)
    return Predictor(
        str(onnx_file),
        "onnx",
        tokenizer,
        label_names_of(config),
        onnx_forward(session),
        "no",
        session,
    )


def _read_report(path: Path) -> dict[str, Any]:
    """An export's export_report.json, {} when absent or unreadable (a hand-made ONNX folder)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def load_predictor(
    given: str, device: str = "auto", mixed_precision: str = "auto", flag: str = "--model"
) -> Predictor:
    """Any model predict accepts (torch folder, run, ONNX export); a torch one on `device` (auto:
    the best here) at `mixed_precision` (auto: bf16 where the device does it natively)."""
    from kdistill.training.runtime import pick_device, pick_mixed_precision

    target, kind = resolve_model(given, flag)
    if kind == "onnx":
        return load_onnx_predictor(Path(target), flag)
    device = pick_device(device)
    return load_torch_predictor(
        str(target), device, pick_mixed_precision(mixed_precision, device), flag
    )


# --------------------------------------------------------------------------- inference


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of similar length, longest first (a memory problem shows at
    once): padding costs little, and each row is in exactly one batch."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def predict_logits(
    predictor: Predictor,
    texts: list[str],
    batch_size: int,
    max_length: int,
    progress: bool = False,
) -> torch.Tensor:
    """(len(texts), num_labels) float32 logits in the model's class order, rows in input
    order."""
    from tqdm.auto import tqdm

    tok = predictor.tokenizer
    encoded = tok(texts, truncation=True, max_length=max_length)
    ids, masks = encoded["input_ids"], encoded["attention_mask"]
    out = torch.empty(len(texts), len(predictor.label_names))
    batches = length_batches([len(i) for i in ids], batch_size)
    for rows in tqdm(batches, desc="predict", unit="batch", disable=not progress, leave=False):
        rows_in = {"input_ids": [ids[i] for i in rows], "attention_mask": [masks[i] for i in rows]}
        batch = tok.pad(rows_in, return_tensors="pt")
        logits = predictor.forward(
            {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        )
        if logits.shape[-1] != out.shape[-1]:
            raise KdistillError(
                f"--model {predictor.name}: it gives {logits.shape[-1]} logits "
                f"but names {out.shape[-1]} classes in config.json"
            )
        out[rows] = logits.float()
    return out
