"""Model cards of distilled students: a README.md in Hugging Face form in a run's best_model/
and final_model/, rewritten with test metrics, speed and size once compare has measured them.

The shared parts (Hub ids, model-index entries, usage) are in shipping.cards; a teacher's card
is in shipping.teacher_card, an ONNX export's in shipping.export_card. Writing a card must never
cost a finished run: every entry point here only warns on failure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.shipping.cards import (
    TAGS,
    build_card,
    count,
    dataset_hub_id,
    eval_results,
    folded_temperature_text,
    hub_id,
    num,
    pct,
    read_json,
    table,
    usage,
    write_card,
)
from kdistill.training.runs import PARTIAL_SUFFIX

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCard

logger = logging.getLogger(__name__)


def _temperature_cell(config: dict[str, Any]) -> str:
    """The KD temperature, with how it was chosen (--temperature auto) and the teacher's
    calibration temperature when --teacher-calibration fitted one."""
    resolved = config.get("resolved") or {}
    t = config.get("temperature")
    auto = t == "auto" and resolved.get("temperature")
    cell = f"{resolved['temperature']:.3g} (auto)" if auto else str(t)
    t_cal = resolved.get("teacher_calibration_temperature")
    return cell + (f"; teacher logits calibrated by T_cal {t_cal:.3g}" if t_cal else "")


def calibration_cell(config: dict[str, Any], which: str) -> str | None:
    """How sure this model's probabilities are meant to be (--calibrate-student); None for runs
    that predate it."""
    calibration = config.get("calibration")
    if not isinstance(calibration, dict):
        return None
    return folded_temperature_text(calibration, which, "--calibrate-student")


def run_card(
    run_dir: Path,
    which: str = "best_model",
    comparison: dict[str, Any] | None = None,
    repo_id: str | None = None,
) -> ModelCard:
    """The card of a distill run's best_model/ or final_model/, from its config.json and
    history.json; `comparison` (compare's results, with this model among them) adds test
    metrics and speed and size against the teacher."""
    config = read_json(run_dir / "config.json") or {}
    history = read_json(run_dir / "history.json") or {}
    data = config.get("data") or {}
    epochs = [e for e in history.get("epochs") or [] if isinstance(e, dict)]
    best = history.get("best") or {}
    epoch_no = (
        best.get("epoch") if which == "best_model" else (epochs[-1]["epoch"] if epochs else None)
    )
    record = next((e for e in epochs if e.get("epoch") == epoch_no), {})
    run_name = run_dir.name.removesuffix(PARTIAL_SUFFIX)
    final_dir = run_dir.with_name(run_name)
    name = f"{run_name}/{which}" if which != "best_model" else run_name
    data_name = data.get("name") or str(config.get("dataset"))
    data_id = dataset_hub_id(data.get("source")) or hub_id(config.get("dataset"))
    labels = data.get("label_names") or []

    metrics = {"accuracy": record.get("val_accuracy"), "macro_f1": record.get("val_macro_f1")}
    results = eval_results(data_id or data_name, data_name, "validation", metrics)
    model_row, teacher_row = _compared(comparison, final_dir / which, run_dir / which)
    if model_row is not None and comparison is not None:
        split = comparison.get("dataset", {}).get("split", "test")
        results += eval_results(
            data_id or data_name,
            data_name,
            split,
            {"accuracy": model_row.get("accuracy"), "macro_f1": model_row.get("macro_f1")},
        )

    no_teacher = _no_teacher(config)
    body = [
        f"# {name}",
        f"A {len(labels)}-class text classifier for {data_name}, {_summary(no_teacher)}",
        "## Training",
        table(["", ""], _training_rows(config, history, which, epoch_no, data_name)),
        *_validation_section(history, record, epoch_no, data),
    ]
    if model_row is not None and teacher_row is not None:
        body += compared_section(comparison or {}, model_row, teacher_row)
    body.append(usage(repo_id or str(final_dir / which)))
    if labels:
        body.append("## Labels\n\n" + ", ".join(f"`{n}`" for n in labels))
    return build_card(
        _metadata(config.get("student_model"), data_id, labels, name, results),
        "\n\n".join(body),
    )


def _metadata(
    base: str | None,
    data_id: str | None,
    labels: list[str],
    name: str,
    results: list[EvalResult],
) -> dict[str, Any]:
    """The card's YAML: what the Hub indexes (base model and data set only when they are Hub
    ids; the metrics as a model-index)."""
    return {
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "base_model": hub_id(base),
        "datasets": [data_id] if data_id else None,
        "metrics": ["accuracy", "f1"],
        "tags": [*TAGS, "knowledge-distillation"],
        "labels": labels,
        "model_name": name,
        "eval_results": results or None,
    }


def _no_teacher(config: dict[str, Any]) -> bool:
    """An --alpha 0 run is the cross-entropy-only baseline: it never loaded a teacher."""
    return config.get("alpha") == 0 or (config.get("teacher") or {}).get("used") is False


def _summary(no_teacher: bool) -> str:
    """How the model learned, in the card's first sentence."""
    if no_teacher:
        return (
            "trained by kdistill on the labels alone (`--alpha 0`): the cross-entropy-only "
            "baseline that distilled students are measured against."
        )
    return (
        "distilled by kdistill from a larger teacher: it learned from the teacher's "
        "softened predictions as well as from the labels."
    )


def _vocabulary_rows(vocabulary: dict[str, Any] | None) -> list[list[str]]:
    """The cut vocabulary (--trim-vocab), and what it means at inference."""
    if not vocabulary:
        return []
    coverage = vocabulary.get("heldout_coverage")
    covers = (
        f"; a vocabulary from the training text alone covers {pct(coverage)} of validation tokens"
        if coverage is not None
        else ""
    )
    return [
        [
            "vocabulary",
            f"cut to {vocabulary.get('kept'):,} of {vocabulary.get('source_size'):,} "
            f"tokens: those of the training, transfer and validation text, the special tokens "
            f"and {vocabulary.get('from_top') or 0} of the tokenizer's most frequent{covers}. "
            "A token outside it maps to the unknown token.",
        ]
    ]


def _training_rows(
    config: dict[str, Any],
    history: dict[str, Any],
    which: str,
    epoch_no: int | None,
    data_name: str,
) -> list[list[str]]:
    """The Training table: student, teacher, loss, temperature and alpha, data, settings, and
    which epoch this model is."""
    data = config.get("data") or {}
    student = config.get("student") or {}
    layers = config.get("student_layers") or (
        f"{config['student_num_layers']} evenly spaced"
        if config.get("student_num_layers")
        else None
    )
    student_base = f"`{config.get('student_model')}`" + (
        f", layers {layers} kept" if layers else ""
    )
    no_teacher = _no_teacher(config)
    loss_cell = (
        "CE(student, label)"
        if no_teacher
        else "alpha * T^2 * KL(teacher_T \\|\\| student_T) + (1 - alpha) * CE(student, label)"
    )
    return [
        ["student base", student_base],
        ["student", f"{student.get('class', '?')}, {count(student.get('parameters'))} parameters"],
        *_vocabulary_rows(student.get("vocabulary")),
        ["teacher", _teacher_cell(config, history)],
        ["loss", loss_cell],
        ["temperature T", _temperature_cell(config)],
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
        *([["probabilities", cell]] if (cell := calibration_cell(config, which)) else []),
    ]


def _teacher_cell(config: dict[str, Any], history: dict[str, Any]) -> str:
    """The teacher's row of the Training table: what it was and how well it did, or none."""
    if _no_teacher(config):
        return "none: `--alpha 0` trains on the labels alone (the cross-entropy-only baseline)"
    teacher = config.get("teacher") or {}
    t_hist = history.get("teacher") or {}
    return (
        f"`{config.get('teacher_model')}` ({teacher.get('class', '?')}, "
        f"{count(teacher.get('parameters'))} parameters, {teacher.get('mode', '?')} "
        f"teacher), validation accuracy {pct(t_hist.get('val_accuracy'))}"
    )


def _validation_section(
    history: dict[str, Any], record: dict[str, Any], epoch_no: int | None, data: dict[str, Any]
) -> list[str]:
    """This model's validation scores beside the teacher's, and chance."""
    t_hist = history.get("teacher") or {}
    return [
        f"## Validation results (epoch {epoch_no}, {data.get('validation_rows')} rows)",
        table(
            ["metric", "this model", "teacher"],
            [
                ["accuracy", pct(record.get("val_accuracy")), pct(t_hist.get("val_accuracy"))],
                ["macro-F1", num(record.get("val_macro_f1")), num(t_hist.get("val_macro_f1"))],
                [
                    "loss (cross-entropy)",
                    num(record.get("val_loss")),
                    num(t_hist.get("val_loss")),
                ],
            ],
        ),
        f"Chance (the most common class, or uniform guessing): "
        f"{pct(history.get('chance_accuracy'))}.",
    ]


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
    """The section compare's results add: this model (`m`) next to the teacher (`t`) on the
    held-out split, in quality, speed and size."""
    ds = comparison.get("dataset") or {}
    speed = comparison.get("speed_settings") or {}
    bs = speed.get("throughput_batch_size", "?")
    return [
        f"## {str(ds.get('split', 'test')).capitalize()} results and cost next to the teacher",
        f"Measured by `kdistill compare` on {ds.get('rows')} held-out {ds.get('split')} rows "
        f"({comparison.get('device')}, {comparison.get('created')}).",
        table(
            ["", "this model", "teacher", "ratio"],
            [
                ["accuracy", pct(m.get("accuracy")), pct(t.get("accuracy")), ""],
                ["macro-F1", num(m.get("macro_f1")), num(t.get("macro_f1")), ""],
                ["agreement with the teacher", pct(m.get("agreement_with_teacher")), "", ""],
                ["ECE (calibration, 0 is best)", num(m.get("ece")), num(t.get("ece")), ""],
                [
                    "latency at batch 1",
                    f"{num(m.get('latency_ms_batch_1'), 2)} ms",
                    f"{num(t.get('latency_ms_batch_1'), 2)} ms",
                    f"{num(m.get('speedup_vs_teacher'), 2)}x faster",
                ],
                [
                    f"throughput at batch {bs}",
                    f"{num(m.get('throughput_per_s'), 1)} rows/s",
                    f"{num(t.get('throughput_per_s'), 1)} rows/s",
                    f"{num(m.get('throughput_ratio_vs_teacher'), 2)}x",
                ],
                [
                    "parameters",
                    count(m.get("parameters")),
                    count(t.get("parameters")),
                    f"{num(m.get('compression_vs_teacher'), 2)}x smaller",
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
