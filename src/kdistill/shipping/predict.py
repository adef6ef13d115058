"""predict: label new text with a trained classifier, the way it will run in production.

The model is a student or teacher folder, a distill run directory (its best_model/), or an
exported ONNX folder (or one .onnx file in it): all three give the same JSON line per row,

    {"row": 0, "text": "...", "label": "Company", "score": 0.93,
     "probabilities": {"Company": 0.93, "Artist": 0.02, ...}}

the probabilities sorted from most to least likely (the first --top-k). Rows are batched by
token length (little padding) and put back in input order; torch models run in bf16 where the
device does it natively, ONNX models in fp32 on onnxruntime's CPU provider.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.config import PredictConfig
from kdistill.errors import KdistillError
from kdistill.training.runs import atomic_write_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
READABLE = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt")


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
            not (path / "config.json").is_file() or _is_run(path)
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
    from kdistill.students.load import check_model_path

    return check_model_path(given, flag), "torch"  # a Hub id, or a one-line 'no such folder'


def _is_run(path: Path) -> bool:
    from kdistill.training.runs import is_run_config

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
    from kdistill.students.load import (
        _head_keys,
        load_classifier,
        load_tokenizer,
        quiet_transformers,
        set_pad_token,
    )

    quiet_transformers()
    tokenizer = load_tokenizer(name, flag)
    model, info = load_classifier(name, flag)
    fresh = _head_keys(model, info.get("missing_keys", [])) + _head_keys(
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
    from kdistill.shipping.export import onnx_forward, onnx_session
    from kdistill.students.load import load_tokenizer

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
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def load_predictor(
    given: str, device: str = "auto", mixed_precision: str = "auto", flag: str = "--model"
) -> Predictor:
    from kdistill.training.runtime import pick_device, pick_mixed_precision

    target, kind = resolve_model(given, flag)
    if kind == "onnx":
        return load_onnx_predictor(Path(target), flag)
    device = pick_device(device)
    return load_torch_predictor(
        str(target), device, pick_mixed_precision(mixed_precision, device), flag
    )


# --------------------------------------------------------------------------- reading input


def read_texts(path: Path, text_column: str, flag: str = "--input") -> list[str]:
    """The texts of a file, one per row, in file order, stripped of surrounding whitespace as in
    training. A .txt file has one text per line; tabular files (CSV/TSV, JSONL/JSON, Parquet)
    read `text_column` (comma-separated columns are joined with '. ', as prepare-data does). A
    row without text is kept, as an empty text, so output rows line up with input rows."""
    from kdistill.data.prepare import join_text

    if not path.is_file():
        raise KdistillError(f"{flag} {path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in READABLE:
        raise KdistillError(
            f"{flag} {path}: unsupported file type {suffix!r}; use one of {', '.join(READABLE)}"
        )
    if path.stat().st_size == 0:
        raise KdistillError(f"{flag} {path} is empty")
    try:
        if suffix == ".txt":
            texts = [line.strip() for line in path.read_text(encoding="utf-8").split("\n")]
            while texts and not texts[-1]:  # the file's last newline ends a line
                texts.pop()
            if not texts:
                raise KdistillError(f"{flag} {path} has no text")
            return texts
        rows, columns = _read_table(path, suffix)
    except UnicodeDecodeError as e:
        raise KdistillError(f"{flag} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    if not rows:
        raise KdistillError(f"{flag} {path} has no rows")
    wanted = [c.strip() for c in text_column.split(",") if c.strip()]
    missing = [c for c in wanted if c not in columns]
    if missing:
        have = ", ".join(map(str, columns))
        raise KdistillError(
            f"{flag} {path}: no column {missing[0]!r} (columns: {have}); choose "
            "one with --text-column"
        )
    texts = [join_text([row.get(c) for c in wanted]) for row in rows]
    empty = sum(t is None for t in texts)
    if empty == len(texts):
        raise KdistillError(f"{flag} {path}: no row has text in {', '.join(wanted)}")
    if empty:
        logger.warning("%s: %d rows have no text; they are predicted as empty texts", path, empty)
    return [t or "" for t in texts]


def _read_table(path: Path, suffix: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows as dicts, column names) of a CSV/TSV, JSON/JSONL or Parquet file."""
    if suffix in (".csv", ".tsv"):
        csv.field_size_limit(sys.maxsize)  # long documents are one field
        with path.open(newline="", encoding="utf-8-sig") as f:
            try:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                rows = list(reader)
            except csv.Error as e:
                raise KdistillError(f"--input {path}: cannot read it as CSV: {e}") from e
            return rows, list(reader.fieldnames or [])
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001  (pyarrow raises several types for a bad file)
            raise KdistillError(f"--input {path}: cannot read it as Parquet: {e}") from e
        return table.to_pylist(), table.column_names
    text = path.read_text(encoding="utf-8-sig")
    rows: list[Any]
    try:
        rows = (
            json.loads(text)
            if suffix == ".json" and text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as e:
        raise KdistillError(
            f"--input {path}: not valid JSON lines ({e.msg}, line {e.lineno})"
        ) from e
    if not all(isinstance(r, dict) for r in rows):
        raise KdistillError(f"--input {path}: every line must be a JSON object")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return rows, columns


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


def prediction_rows(
    texts: list[str], probs: torch.Tensor, label_names: list[str], top_k: int | None
) -> list[dict[str, Any]]:
    """One JSON-ready dict per row: its index, text, label, the label's probability, and the
    top_k most probable classes with their probabilities (all classes when top_k is None)."""
    k = min(top_k or len(label_names), len(label_names))
    values, indices = probs.topk(k, dim=-1)  # sorted, most probable first
    out = []
    for row, text in enumerate(texts):
        pairs = zip(values[row].tolist(), indices[row].tolist(), strict=True)
        top = {label_names[j]: float(p) for p, j in pairs}
        label = label_names[int(indices[row, 0])]
        out.append(
            {"row": row, "text": text, "label": label, "score": top[label], "probabilities": top}
        )
    return out


def predict(config: PredictConfig) -> str:
    """The predict command. Returns what to print: the JSON lines, or with --output a line
    saying where they went."""
    texts = (
        [config.text.strip()]  # stripped like every text in training (data.join_text)
        if config.text is not None
        else read_texts(Path(config.input).expanduser(), config.text_column)
    )
    predictor = load_predictor(config.model, config.device, config.mixed_precision)
    logger.info(
        "%s (%s%s): %d classes, %d rows",
        predictor.name,
        predictor.kind,
        f", {predictor.precision}" if predictor.precision != "no" else "",
        len(predictor.label_names),
        len(texts),
    )
    logits = predict_logits(
        predictor, texts, config.batch_size, config.max_length, progress=config.input is not None
    )
    probs = torch.softmax(logits, dim=-1)
    rows = prediction_rows(texts, probs, predictor.label_names, config.top_k)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if config.output is None:
        return lines
    atomic_write_text(Path(config.output).expanduser(), lines)
    logger.info("wrote %d predictions to %s", len(rows), config.output)
    return f"{config.output}\n"
