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
from pathlib import Path
from typing import Any

import torch

from kdistill.config import PredictConfig
from kdistill.errors import KdistillError
from kdistill.files import atomic_write_text
from kdistill.shipping.predictor import load_predictor, predict_logits

logger = logging.getLogger(__name__)

READABLE = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt")


# --------------------------------------------------------------------------- reading input


def read_texts(path: Path, text_column: str, flag: str = "--input") -> list[str]:
    """The texts of a file, one per row, in file order, stripped of surrounding whitespace as in
    training. A .txt file has one text per line; tabular files (CSV/TSV, JSONL/JSON, Parquet)
    read `text_column` (comma-separated columns are joined with '. ', as prepare-data does). A
    row without text is kept, as an empty text, so output rows line up with input rows."""
    from kdistill.data.sources import join_text

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


# --------------------------------------------------------------------------- output


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
