"""The model card of an ONNX export: the source model's card, with the export's parity and
speed figures (export_report.json) in front and onnxruntime usage instead of transformers'.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.shipping.cards import (
    CARD_FILE,
    TAGS,
    build_card,
    num,
    pct,
    read_json,
    table,
    usage,
    write_card,
)

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

logger = logging.getLogger(__name__)


def export_card(
    source: Path, report: dict[str, Any], folder: Path, repo_id: str | None = None
) -> ModelCard:
    """The card of an ONNX export: the source model's metadata (labels, data sets, metrics),
    library onnx, the parity and speed figures of export_report.json, and the source card's
    text below (without its torch usage section)."""
    metadata, source_text = _source_card(source)
    bs = report.get("batch_size", 32)
    verdict = "passed" if report.get("passed") else "FAILED: do not deploy this export"
    torch_ref = report.get("torch") or {}
    body = [
        f"# {folder.name}",
        f"ONNX export of `{report.get('model')}` by `kdistill export` "
        f"({report.get('exporter')}, opset {report.get('opset')}).",
        f"## Parity with the torch model ({verdict})",
        f"On {report.get('rows')} {report.get('split')} rows of {report.get('dataset')}: the "
        f"largest absolute logit difference from the torch model, the share of rows where both "
        f"predict the same class (required: at least {pct(report.get('min_agreement'))}) and "
        "the accuracy of each.",
        table(
            ["model", "file", "max abs logit diff", "agreement", "accuracy", "size"],
            [
                [
                    "torch (fp32)",
                    "",
                    "0",
                    "100.00%",
                    pct(torch_ref.get("accuracy")),
                    f"{(torch_ref.get('size_bytes') or 0) / 1e6:.1f} MB",
                ],
                *_parity_rows(report),
            ],
        ),
        f"## Speed on {report.get('device_description', 'CPU')}",
        table(
            [
                "model",
                "latency, batch 1",
                f"latency, batch {bs}",
                f"throughput, batch {bs}",
                "speed-up at batch 1",
            ],
            _speed_rows(report, bs),
        ),
        usage(repo_id or str(folder), onnx=True),
    ]
    if source_text:
        # The source card's headings two levels down, under one heading of their own.
        body += ["## The source model", re.sub(r"^(#+) ", r"##\1 ", source_text, flags=re.M)]
    return build_card(metadata, "\n\n".join(body))


def _source_card(source: Path) -> tuple[dict[str, Any], str]:
    """(metadata, text) carried over from the source model's card: its labels, data sets and
    metrics, library onnx; its text without the torch usage section, its labels kept."""
    from huggingface_hub import ModelCard

    metadata: dict[str, Any] = {}
    source_text = ""
    if (source / CARD_FILE).is_file():
        src = ModelCard.load(source / CARD_FILE)
        metadata = src.data.to_dict()
        source_text = src.text.split("## How to use")[0].strip()
        tail = src.text.split("## Labels", 1)
        if len(tail) == 2:
            source_text += "\n\n## Labels" + tail[1]
        metadata.pop("model-index", None)
        metadata["eval_results"], metadata["model_name"] = src.data.eval_results, None
        if src.data.eval_results:
            metadata["model_name"] = src.data.model_name
    metadata.update(library_name="onnx", pipeline_tag="text-classification")
    metadata["tags"] = list(dict.fromkeys([*(metadata.get("tags") or TAGS), "onnx"]))
    if "labels" not in metadata:
        config = read_json(source / "config.json") or {}
        id2label = config.get("id2label") or {}
        metadata["labels"] = [id2label[k] for k in sorted(id2label, key=int)]
    return metadata, source_text


def _parity_rows(report: dict[str, Any]) -> list[list[str]]:
    """The parity table's rows after the fp32 reference: bf16 autocast, then each file."""
    rows = []
    if report.get("torch_bf16"):  # the torch model under bf16 autocast, for reference
        b = report["torch_bf16"]
        rows.append(
            [
                "torch (bf16 autocast)",
                "",
                num(b.get("max_abs_logit_diff"), 5),
                pct(b.get("agreement")),
                pct(b.get("accuracy")),
                "",
            ]
        )
    for variant, p in (report.get("parity") or {}).items():
        rows.append(
            [
                variant,
                f"`{p.get('file')}`",
                num(p.get("max_abs_logit_diff"), 5),
                pct(p.get("agreement")),
                pct(p.get("accuracy")),
                f"{(p.get('size_bytes') or 0) / 1e6:.1f} MB",
            ]
        )
    return rows


def _speed_rows(report: dict[str, Any], bs: int) -> list[list[str]]:
    """The speed table's rows: latency at batch 1 and `bs`, throughput, speed-up over torch."""
    return [
        [
            variant,
            f"{num(s.get('latency_ms_batch_1'), 2)} ms",
            f"{num(s.get(f'latency_ms_batch_{bs}'), 1)} ms",
            f"{num(s.get('throughput_per_s'), 1)} rows/s",
            f"{num(s.get('speedup_vs_torch'), 2)}x",
        ]
        for variant, s in (report.get("speed") or {}).items()
    ]


def write_export_card(
    write_to: Path, source: Path, report: dict[str, Any], folder: Path, repo_id: str | None = None
) -> None:
    """The card of the export that will sit at `folder`, written into `write_to` (its temporary
    folder). Only warns on failure."""
    try:
        card = export_card(source, report, folder, repo_id)
    except Exception as e:  # noqa: BLE001
        logger.warning("could not build the model card of %s: %s", folder, e)
        return
    write_card(write_to, card)
