"""Model cards: a README.md in Hugging Face form beside every model kdistill saves.

A card is a view of files kdistill already wrote (a run's config.json and history.json, a
teacher's teacher_eval.json, compare's results, export's report), so its numbers are those
files' numbers, never recomputed. The YAML block carries what the Hub indexes (library,
pipeline tag, labels, base model, data sets, metrics as a model-index); the text says how the
model was made, how good it is next to its teacher, and how to load it.

Writing a card must never cost a finished run: every entry point here only warns on failure.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.training.runs import PARTIAL_SUFFIX, atomic_write_text

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCard

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
TAGS = ["text-classification", "kdistill"]
EXAMPLE_TEXT = "Your text to classify."
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


# --------------------------------------------------------------------------- helpers


def _read_json(path: Path) -> Any:
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
    info = _read_json(Path(source) / "dataset_info.json")
    if isinstance(info, dict) and info.get("hub_id"):
        return str(info["hub_id"])
    return hub_id(source)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _results(
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


# --------------------------------------------------------------------------- distilled students


def run_card(
    run_dir: Path,
    which: str = "best_model",
    comparison: dict[str, Any] | None = None,
    repo_id: str | None = None,
) -> ModelCard:
    """The card of a distill run's best_model/ or final_model/, from its config.json and
    history.json; `comparison` (compare's results, with this model among them) adds test
    metrics and speed and size against the teacher."""
    config = _read_json(run_dir / "config.json") or {}
    history = _read_json(run_dir / "history.json") or {}
    data = config.get("data") or {}
    teacher, student = config.get("teacher") or {}, config.get("student") or {}
    epochs = [e for e in history.get("epochs") or [] if isinstance(e, dict)]
    best = history.get("best") or {}
    epoch_no = (
        best.get("epoch") if which == "best_model" else (epochs[-1]["epoch"] if epochs else None)
    )
    record = next((e for e in epochs if e.get("epoch") == epoch_no), {})
    t_hist = history.get("teacher") or {}
    run_name = run_dir.name.removesuffix(PARTIAL_SUFFIX)
    final_dir = run_dir.with_name(run_name)
    name = f"{run_name}/{which}" if which != "best_model" else run_name
    data_name = data.get("name") or str(config.get("dataset"))
    data_id = dataset_hub_id(data.get("source")) or hub_id(config.get("dataset"))
    labels = data.get("label_names") or []

    metrics = {"accuracy": record.get("val_accuracy"), "macro_f1": record.get("val_macro_f1")}
    results = _results(data_id or data_name, data_name, "validation", metrics)
    model_row, teacher_row = _compared(comparison, final_dir / which, run_dir / which)
    if model_row is not None and comparison is not None:
        split = comparison.get("dataset", {}).get("split", "test")
        results += _results(
            data_id or data_name,
            data_name,
            split,
            {"accuracy": model_row.get("accuracy"), "macro_f1": model_row.get("macro_f1")},
        )

    layers = config.get("student_layers") or (
        f"{config['student_num_layers']} evenly spaced"
        if config.get("student_num_layers")
        else None
    )
    student_base = f"`{config.get('student_model')}`" + (
        f", layers {layers} kept" if layers else ""
    )
    # An --alpha 0 run is the cross-entropy-only baseline: it never loaded a teacher.
    no_teacher = config.get("alpha") == 0 or teacher.get("used") is False
    teacher_cell = (
        "none: `--alpha 0` trains on the labels alone (the cross-entropy-only baseline)"
        if no_teacher
        else f"`{config.get('teacher_model')}` ({teacher.get('class', '?')}, "
        f"{_count(teacher.get('parameters'))} parameters, {teacher.get('mode', '?')} "
        f"teacher), validation accuracy {_pct(t_hist.get('val_accuracy'))}"
    )
    loss_cell = (
        "CE(student, label)"
        if no_teacher
        else "alpha * T^2 * KL(teacher_T \\|\\| student_T) + (1 - alpha) * CE(student, label)"
    )
    summary = (
        "trained by kdistill on the labels alone (`--alpha 0`): the cross-entropy-only baseline "
        "that distilled students are measured against."
        if no_teacher
        else "distilled by kdistill from a larger teacher: it learned from the teacher's "
        "softened predictions as well as from the labels."
    )
    rows = [
        ["student base", student_base],
        ["student", f"{student.get('class', '?')}, {_count(student.get('parameters'))} parameters"],
        ["teacher", teacher_cell],
        ["loss", loss_cell],
        ["temperature T", str(config.get("temperature"))],
        ["alpha", str(config.get("alpha"))],
        [
            "data",
            f"{data_name}: {data.get('train_rows')} labelled training rows, "
            f"{data.get('unlabeled_rows') or 0} unlabelled, {data.get('validation_rows')} "
            "validation rows",
        ],
        [
            "samples",
            f"--max-train-samples {config.get('max_train_samples') or 'all'}, "
            f"--max-val-samples {config.get('max_val_samples') or 'all'}",
        ],
        [
            "training",
            f"{config.get('epochs')} epochs, batch size {config.get('batch_size')}, "
            f"learning rate {config.get('learning_rate')}, max length "
            f"{config.get('max_length')} tokens, seed {config.get('seed')}",
        ],
        [
            "this model",
            f"epoch {epoch_no}"
            + (" (best validation accuracy)" if which == "best_model" else " (the last)"),
        ],
    ]
    body = [
        f"# {name}",
        f"A {len(labels)}-class text classifier for {data_name}, {summary}",
        "## Training",
        _table(["", ""], rows),
        f"## Validation results (epoch {epoch_no}, {data.get('validation_rows')} rows)",
        _table(
            ["metric", "this model", "teacher"],
            [
                ["accuracy", _pct(record.get("val_accuracy")), _pct(t_hist.get("val_accuracy"))],
                ["macro-F1", _num(record.get("val_macro_f1")), _num(t_hist.get("val_macro_f1"))],
                [
                    "loss (cross-entropy)",
                    _num(record.get("val_loss")),
                    _num(t_hist.get("val_loss")),
                ],
            ],
        ),
        f"Chance (the most common class, or uniform guessing): "
        f"{_pct(history.get('chance_accuracy'))}.",
    ]
    if model_row is not None and teacher_row is not None:
        body += compared_section(comparison or {}, model_row, teacher_row)
    body.append(usage(repo_id or str(final_dir / which)))
    if labels:
        body.append("## Labels\n\n" + ", ".join(f"`{n}`" for n in labels))
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "base_model": hub_id(config.get("student_model")),
        "datasets": [data_id] if data_id else None,
        "metrics": ["accuracy", "f1"],
        "tags": [*TAGS, "knowledge-distillation"],
        "labels": labels,
        "model_name": name,
        "eval_results": results or None,
    }
    return build_card(metadata, "\n\n".join(body))


def _compared(
    comparison: dict[str, Any] | None, *paths: Path
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """This model's entry in compare's results (matched by its folder) and the teacher's."""
    if not comparison:
        return None, None
    models = comparison.get("models") or []
    wanted = {str(p.resolve()) for p in paths}
    row = next(
        (
            m
            for m in models
            if m.get("role") != "teacher" and str(Path(str(m.get("path"))).resolve()) in wanted
        ),
        None,
    )
    teacher = next((m for m in models if m.get("role") == "teacher"), None)
    return row, teacher


def compared_section(comparison: dict[str, Any], m: dict[str, Any], t: dict[str, Any]) -> list[str]:
    ds = comparison.get("dataset") or {}
    speed = comparison.get("speed_settings") or {}
    bs = speed.get("throughput_batch_size", "?")
    return [
        f"## {str(ds.get('split', 'test')).capitalize()} results and cost next to the teacher",
        f"Measured by `kdistill compare` on {ds.get('rows')} held-out {ds.get('split')} rows "
        f"({comparison.get('device')}, {comparison.get('created')}).",
        _table(
            ["", "this model", "teacher", "ratio"],
            [
                ["accuracy", _pct(m.get("accuracy")), _pct(t.get("accuracy")), ""],
                ["macro-F1", _num(m.get("macro_f1")), _num(t.get("macro_f1")), ""],
                ["agreement with the teacher", _pct(m.get("agreement_with_teacher")), "", ""],
                [
                    "latency at batch 1",
                    f"{_num(m.get('latency_ms_batch_1'), 2)} ms",
                    f"{_num(t.get('latency_ms_batch_1'), 2)} ms",
                    f"{_num(m.get('speedup_vs_teacher'), 2)}x faster",
                ],
                [
                    f"throughput at batch {bs}",
                    f"{_num(m.get('throughput_per_s'), 1)} rows/s",
                    f"{_num(t.get('throughput_per_s'), 1)} rows/s",
                    f"{_num(m.get('throughput_ratio_vs_teacher'), 2)}x",
                ],
                [
                    "parameters",
                    _count(m.get("parameters")),
                    _count(t.get("parameters")),
                    f"{_num(m.get('compression_vs_teacher'), 2)}x smaller",
                ],
                [
                    "size on disk",
                    f"{(m.get('size_on_disk_bytes') or 0) / 1e6:.1f} MB",
                    f"{(t.get('size_on_disk_bytes') or 0) / 1e6:.1f} MB",
                    "",
                ],
            ],
        ),
    ]


def write_run_cards(run_dir: Path, repo_id: str | None = None) -> None:
    """Cards for a run's best_model/ and final_model/ (the best one names `repo_id` in its
    usage when it is about to be pushed). Only warns on failure."""
    for which in ("best_model", "final_model"):
        if not (run_dir / which).is_dir():
            continue
        try:
            card = run_card(run_dir, which, repo_id=repo_id if which == "best_model" else None)
        except Exception as e:  # noqa: BLE001
            logger.warning("could not build the model card of %s: %s", run_dir / which, e)
            continue
        write_card(run_dir / which, card)


def add_comparison_to_cards(results: dict[str, Any]) -> None:
    """After compare: each compared student from a distill run gets its card rewritten with the
    test metrics, speed and size next to the teacher. Only warns on failure."""
    for m in results.get("models") or []:
        if m.get("role") == "teacher" or not m.get("run_dir"):
            continue
        folder = Path(str(m["path"]))
        if folder.name not in ("best_model", "final_model") or not folder.is_dir():
            continue
        try:
            card = run_card(Path(m["run_dir"]), folder.name, comparison=results)
        except Exception as e:  # noqa: BLE001
            logger.warning("could not update the model card of %s: %s", folder, e)
            continue
        write_card(folder, card)


# --------------------------------------------------------------------------- teachers


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
    method = config.get("method", "full")
    how = (
        "LoRA (r={}, alpha={}, merged into the weights)".format(
            config.get("lora_r"), config.get("lora_alpha")
        )
        if method == "lora"
        else "full fine-tuning"
    )
    name = folder.name
    results = _results(
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
        _table(
            ["", ""],
            [
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
            ],
        ),
        f"## Validation results ({report.get('val_rows')} rows)",
        _table(
            ["metric", "value"],
            [
                ["accuracy", _pct(report.get("val_accuracy"))],
                ["macro-F1", _num(report.get("val_macro_f1"))],
                ["loss (cross-entropy)", _num(last.get("val_loss"))],
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


# --------------------------------------------------------------------------- ONNX exports


def export_card(
    source: Path, report: dict[str, Any], folder: Path, repo_id: str | None = None
) -> ModelCard:
    """The card of an ONNX export: the source model's metadata (labels, data sets, metrics),
    library onnx, the parity and speed figures of export_report.json, and the source card's
    text below (without its torch usage section)."""
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
        config = _read_json(source / "config.json") or {}
        id2label = config.get("id2label") or {}
        metadata["labels"] = [id2label[k] for k in sorted(id2label, key=int)]

    rows = []
    if report.get("torch_bf16"):  # the torch model under bf16 autocast, for reference
        b = report["torch_bf16"]
        rows.append(
            [
                "torch (bf16 autocast)",
                "",
                _num(b.get("max_abs_logit_diff"), 5),
                _pct(b.get("agreement")),
                _pct(b.get("accuracy")),
                "",
            ]
        )
    for variant, p in (report.get("parity") or {}).items():
        rows.append(
            [
                variant,
                f"`{p.get('file')}`",
                _num(p.get("max_abs_logit_diff"), 5),
                _pct(p.get("agreement")),
                _pct(p.get("accuracy")),
                f"{(p.get('size_bytes') or 0) / 1e6:.1f} MB",
            ]
        )
    bs = report.get("batch_size", 32)
    speed_rows = [
        [
            variant,
            f"{_num(s.get('latency_ms_batch_1'), 2)} ms",
            f"{_num(s.get(f'latency_ms_batch_{bs}'), 1)} ms",
            f"{_num(s.get('throughput_per_s'), 1)} rows/s",
            f"{_num(s.get('speedup_vs_torch'), 2)}x",
        ]
        for variant, s in (report.get("speed") or {}).items()
    ]
    verdict = "passed" if report.get("passed") else "FAILED: do not deploy this export"
    body = [
        f"# {folder.name}",
        f"ONNX export of `{report.get('model')}` by `kdistill export` "
        f"({report.get('exporter')}, opset {report.get('opset')}).",
        f"## Parity with the torch model ({verdict})",
        f"On {report.get('rows')} {report.get('split')} rows of {report.get('dataset')}: the "
        f"largest absolute logit difference from the torch model, the share of rows where both "
        f"predict the same class (required: at least {_pct(report.get('min_agreement'))}) and "
        "the accuracy of each.",
        _table(
            ["model", "file", "max abs logit diff", "agreement", "accuracy", "size"],
            [
                [
                    "torch (fp32)",
                    "",
                    "0",
                    "100.00%",
                    _pct((report.get("torch") or {}).get("accuracy")),
                    f"{((report.get('torch') or {}).get('size_bytes') or 0) / 1e6:.1f} MB",
                ],
                *rows,
            ],
        ),
        f"## Speed on {report.get('device_description', 'CPU')}",
        _table(
            [
                "model",
                "latency, batch 1",
                f"latency, batch {bs}",
                f"throughput, batch {bs}",
                "speed-up at batch 1",
            ],
            speed_rows,
        ),
        usage(repo_id or str(folder), onnx=True),
    ]
    if source_text:
        # The source card's headings two levels down, under one heading of their own.
        body += ["## The source model", re.sub(r"^(#+) ", r"##\1 ", source_text, flags=re.M)]
    return build_card(metadata, "\n\n".join(body))


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
