"""What every model card shares: Hub ids, the model-index entries, number formats, the usage
section, and the one writer that only warns.

A card is a view of files kdistill already wrote (a run's config.json and history.json, a
teacher's teacher_eval.json, compare's results, export's report), so its numbers are those
files' numbers, never recomputed. The YAML block carries what the Hub indexes (library,
pipeline tag, labels, base model, data sets, metrics as a model-index); the text says how the
model was made, how good it is next to its teacher, and how to load it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.files import atomic_write_text

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCard

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
TAGS = ["text-classification", "kdistill"]
EXAMPLE_TEXT = "Your text to classify."
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


def read_json(path: Path) -> Any:
    """A JSON file's content, None when it is missing or unreadable: a card shows '-' for what
    it cannot read rather than fail a finished run."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def hub_id(name: str | None) -> str | None:
    """`name` when it is a Hub repo id (org/name, not a local path), else None: the card's
    base_model and datasets must name Hub repos, and a local folder means nothing there."""
    from kdistill.data.model_paths import LOCAL_ROOTS  # data/, models/, outputs/: our own folders

    if not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None
    if name.split("/")[0] in LOCAL_ROOTS:
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.count("/") != 1:
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def dataset_hub_id(source: str | None) -> str | None:
    """The Hub data set behind a prepared folder (its dataset_info.json), or the source itself
    when it is a Hub id."""
    if not source:
        return None
    info = read_json(Path(source) / "dataset_info.json")
    if isinstance(info, dict) and info.get("hub_id"):
        return str(info["hub_id"])
    return hub_id(source)


def pct(x: float | None) -> str:
    """0.9312 -> '93.12%'; '-' for a number the source file lacks."""
    return "-" if x is None else f"{100 * x:.2f}%"


def num(x: float | None, digits: int = 4) -> str:
    """A number with `digits` decimals; '-' for one the source file lacks."""
    return "-" if x is None else f"{x:.{digits}f}"


def count(n: int | None) -> str:
    """1234567 -> '1.2M', 123456 -> '123k': tiny and large models both stay readable."""
    if n is None:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (the Hub renders it)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def eval_results(
    dataset_type: str, dataset_name: str, split: str, metrics: dict[str, float | None]
) -> list[EvalResult]:
    """model-index entries: accuracy and macro-F1 (f1 with metric_config 'macro')."""
    from huggingface_hub import EvalResult

    out = []
    for metric, value in metrics.items():
        if value is None:
            continue
        out.append(
            EvalResult(
                task_type="text-classification",
                task_name="Text Classification",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type="accuracy" if metric == "accuracy" else "f1",
                metric_config=None if metric == "accuracy" else "macro",
                metric_name=f"{split.capitalize()} {METRIC_NAMES[metric]}",
                metric_value=value,
            )
        )
    return out


def build_card(metadata: dict[str, Any], body: str) -> ModelCard:
    """A ModelCard from its YAML metadata (empty values left out, so the Hub does not index
    them) and its Markdown body."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(**{k: v for k, v in metadata.items() if v not in (None, [])})
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n")


def usage(where: str, onnx: bool = False) -> str:
    """How to load the model: the transformers pipeline (or onnxruntime) and kdistill predict."""
    if onnx:
        python = (
            "```python\nimport json, numpy as np, onnxruntime as ort\n"
            "from transformers import AutoTokenizer\n\n"
            f'folder = "{where}"\n'
            "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
            'session = ort.InferenceSession(f"{folder}/model.onnx")\n'
            'id2label = json.load(open(f"{folder}/config.json"))["id2label"]\n'
            f'enc = tokenizer(["{EXAMPLE_TEXT}"], return_tensors="np")\n'
            "names = [i.name for i in session.get_inputs()]\n"
            "logits = session.run(None, {n: enc[n].astype(np.int64) for n in names})[0]\n"
            "print(id2label[str(int(logits.argmax(-1)[0]))])\n```"
        )
    else:
        python = (
            "```python\nfrom transformers import pipeline\n\n"
            f'classifier = pipeline("text-classification", model="{where}")\n'
            f'classifier("{EXAMPLE_TEXT}", top_k=3)\n```'
        )
    return (
        f"## How to use\n\n{python}\n\nOr with kdistill (batched, a JSON line per row with the "
        f"class probabilities):\n\n```bash\nkdistill predict --model {where} "
        f'--text "{EXAMPLE_TEXT}"\nkdistill predict --model {where} --input texts.csv '
        "--text-column text --output predictions.jsonl\n```"
    )


def write_card(folder: Path, card: ModelCard | None) -> bool:
    """Write README.md atomically; a failure is a warning (the model is what matters)."""
    if card is None:
        return False
    try:
        atomic_write_text(folder / CARD_FILE, str(card))
    except Exception as e:  # noqa: BLE001
        logger.warning("could not write the model card %s: %s", folder / CARD_FILE, e)
        return False
    return True


def folded_temperature_text(
    calibration: dict[str, Any], which: str | None, flag: str
) -> str | None:
    """The card's line on a temperature folded into the head (training.calibration): T and the
    validation ECE before and after, or why the logits were left as trained. `calibration` is
    {"mode": ..., which: record} (a run's config.json) or the record itself (which None)."""
    if calibration.get("mode") == "off":
        return f"as trained (`{flag} off`): not calibrated"
    record = calibration.get(which) if which else calibration
    if not isinstance(record, dict) or "temperature" not in record:
        return None
    ece = f"validation ECE {num(record.get('ece_at_1'), 3)} -> {num(record.get('ece_fitted'), 3)}"
    if not record.get("applied"):
        why = record.get("error") or record.get("degenerate") or "T = 1 fits best"
        return f"left as trained ({why}; {ece})"
    note = f"; {record['degenerate']}" if record.get("degenerate") else ""
    return (
        f"calibrated: temperature T {record['temperature']:.3g} fitted on validation NLL and "
        f"folded into `{record.get('head')}` (its weight and bias divided by T; the same "
        f"predictions), {ece}{note}"
    )
