"""compare: is the student good enough to ship in place of its teacher?

Scores the teacher and each student on the same held-out rows (one length-sorted inference pass
each, as the logit cache does), measures how faithfully each student imitates the teacher
(agreement of predictions, KL between distributions) and what it saves (size, latency at
batch 1, throughput), and writes comparison_results.json, teacher_student_comparison.png and
report.html into a new folder. A cross-entropy-only student (--baseline) turns the numbers into
the gain distillation itself brings, when it is a fair one: cross-entropy only, the same student
on the same data with the same learning rate, batch size and schedule, for at least as many
optimizer steps; what matched and what still differs is named beside each gain. Every accuracy
and macro-F1 comes with a 95% bootstrap interval over the rows, and each gain with a paired one,
so a difference the split's size cannot tell from noise is reported as such. Each run's recipe
(layers, loss, rows, steps) is shown beside its name.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.config import CompareConfig
from kdistill.errors import KdistillError
from kdistill.evaluation.candidates import Candidate, check_labels, resolve_candidates
from kdistill.evaluation.gain import add_intervals, distillation_gain
from kdistill.evaluation.scoring import (
    Timing,
    add_ratios,
    load_student_model,
    model_record,
    release,
    score_model,
)
from kdistill.files import atomic_write_json
from kdistill.training.runs import finish_run_dir, new_run_dir

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset

    from kdistill.data.prepare import LabelledData
    from kdistill.from_run import Run
    from kdistill.teachers.classifier import Teacher

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: 95% intervals, the baseline's checks, latency IQRs
FILES = {
    "json": "comparison_results.json",
    "figure": "teacher_student_comparison.png",
    "html": "report.html",
}
# One scored model: (name, role, the loaded model, its (rows, num_labels) logits, its candidate).
Scored = tuple[str, str, "Teacher", torch.Tensor, Candidate | None]


def check_output_dir(output_dir: str) -> None:
    """--output-dir must be a folder or not exist yet, checked before any model loads."""
    path = Path(output_dir)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise KdistillError(
                f"--output-dir {output_dir}: {p} is a file; pass a folder (each "
                "comparison gets a new folder inside it)"
            )


def compare(config: CompareConfig) -> Path:
    """The compare command. Returns the new comparison folder."""
    from kdistill.data.sampling import subsample
    from kdistill.from_run import Run, check_same_split, data_config, run_of, teacher_model_for
    from kdistill.training.runtime import library_versions, pick_teacher_dtype, start_command

    started = datetime.now()
    # Everything that can be checked without loading a model fails first.
    check_output_dir(config.output_dir)
    candidates = resolve_candidates(config)
    # Runs given (students, baseline, a run as --teacher-model) fix the split and the teacher.
    runs = [Run(c.flag, c.given, c.run_config) for c in candidates if c.run_config]
    teacher_run = run_of(config.teacher_model, "--teacher-model")
    teacher_model = teacher_model_for(config, teacher_run, runs)
    runs = [teacher_run, *runs] if teacher_run else runs
    _device, precision, accelerator, data = start_command(data_config(config, runs))
    check_same_split(data, runs)
    check_setup(config, accelerator, data, candidates)
    rows = subsample(data.splits[config.split], config.max_samples, config.seed, "--max-samples")
    labels = torch.tensor(list(rows["label"]))
    # Every model in the same precision, so speed differences are the models', not the dtype's.
    dtype, dtype_name = pick_teacher_dtype(config.teacher_dtype, precision)
    logger.info(
        "comparing on %s/%s: %d rows, %d classes; %s, weights %s, mixed precision %s",
        data.name,
        config.split,
        len(rows),
        data.num_labels,
        accelerator.device,
        dtype_name,
        precision,
    )
    scored, timings = score_all(
        config, teacher_model, runs, candidates, data, rows, accelerator, dtype
    )
    models, boot = measure(config, scored, timings, labels, data.label_names, accelerator)
    results = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now().isoformat(timespec="seconds"),
        "dataset": dataset_entry(config, data, labels),
        "device": str(accelerator.device),
        "mixed_precision": precision,
        "versions": library_versions(),
        "config": config.to_dict(),
        **settings(config, len(rows)),
        # macro-F1 averages F1 over these: the classes with rows in the split.
        "macro_f1_classes": [data.label_names[c] for c in sorted(set(labels.tolist()))],
        "models": models,
        "distillation_gain": distillation_gain(models, boot),
        "files": FILES,
    }
    final = write_comparison(config, data.name, started, results)
    logger.info(
        "results on %s/%s (%d rows, %s):\n%s\nreport: %s",
        data.name,
        config.split,
        len(rows),
        accelerator.device,
        format_summary(results),
        final / FILES["html"],
    )
    return final


def check_setup(
    config: CompareConfig,
    accelerator: Accelerator,
    data: LabelledData,
    candidates: list[Candidate],
) -> None:
    """What can be refused once the data set is known, before any model loads: a distributed
    launch, a missing split, a student over other classes; and a warning for validation."""
    if accelerator.num_processes > 1:
        raise KdistillError(
            "compare times each model on one device; run it as a plain command, "
            "not under accelerate launch"
        )
    if config.split not in data.splits:
        other = "validation" if config.split == "test" else "test"
        raise KdistillError(
            f"--split {config.split}: {data.name} has no {config.split} split "
            f"(it has {', '.join(data.splits)}); pass --split {other}"
        )
    for c in candidates:
        check_labels(c, data.label_names)
    if config.split == "validation" and any(c.run_dir for c in candidates):
        logger.warning(
            "--split validation: distill chose each run's best epoch on validation, "
            "so the students' scores here are slightly optimistic; prefer a test "
            "split"
        )


def score_all(
    config: CompareConfig,
    teacher_model: str,
    runs: list[Run],
    candidates: list[Candidate],
    data: LabelledData,
    rows: Dataset,
    accelerator: Accelerator,
    dtype: torch.dtype,
) -> tuple[list[Scored], dict[str, Timing]]:
    """The teacher, then each candidate, loaded and scored on the rows; (each scored model,
    what each is timed on, by name)."""
    from kdistill.from_run import run_teacher
    from kdistill.teachers.classifier import load_teacher

    total = 1 + len(candidates)
    logger.info("[1/%d] teacher %s", total, teacher_model)
    chosen = run_teacher(config, teacher_model, runs, data.label_names, data.splits["train"])
    teacher = load_teacher(
        chosen.options,
        chosen.model,
        data.label_names,
        dtype,
        data.splits["train"],
        chosen.max_length or config.max_length,
        config.seed,
        chosen.shots,
    )
    teacher_logits, timing = score_model(teacher, rows, config, accelerator, data.num_labels)
    # Every model stays on the device until all are timed together, interleaved: timed one
    # after another, the same student measured 2.4 and 3.2 ms. Students are small beside the
    # teacher, so keeping them beside it costs little memory.
    scored: list[Scored] = [("teacher", "teacher", teacher, teacher_logits, None)]
    timings = {"teacher": timing}
    taken = {"teacher"}
    for i, c in enumerate(candidates, start=2):
        logger.info("[%d/%d] %s %s", i, total, c.role, c.model_dir)
        student = load_student_model(c, data.label_names, dtype)
        name = _unique(c.name, taken)
        logits, timings[name] = score_model(student, rows, config, accelerator, data.num_labels)
        scored.append((name, c.role, student, logits, c))
    return scored, timings


def measure(
    config: CompareConfig,
    scored: list[Scored],
    timings: dict[str, Timing],
    labels: torch.Tensor,
    label_names: list[str],
    accelerator: Accelerator,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every model timed together, then its record with ratios to the teacher and bootstrap
    intervals; (the records, teacher first; the resampled scores, for the paired gains). Each
    model's memory is released once its record is made."""
    from kdistill.evaluation.metrics import measure_speeds

    logger.info("timing %d models interleaved, %d repeats", len(timings), config.repeats)
    speeds = measure_speeds(timings, config.repeats, accelerator.device)
    teacher_logits = scored[0][3]
    models, preds = [], {}  # preds: (rows,) each, for the bootstrap
    for name, role, wrapper, logits, c in scored:
        record = model_record(
            name, role, wrapper, logits, labels, teacher_logits, speeds[name], label_names, c
        )
        models.append(record)
        preds[name] = logits.argmax(-1)
        release(wrapper)
    add_ratios(models)
    boot = add_intervals(
        models, preds, labels, len(label_names), config.bootstrap_resamples, config.seed
    )
    return models, boot


def dataset_entry(
    config: CompareConfig, data: LabelledData, labels: torch.Tensor
) -> dict[str, Any]:
    """The data set and split the models were scored on, with its rows per class."""
    return {
        "name": data.name,
        "source": data.source,
        "split": config.split,
        "rows": len(labels),
        "label_names": data.label_names,
        "class_counts": torch.bincount(labels, minlength=data.num_labels).tolist(),
    }


def settings(config: CompareConfig, rows: int) -> dict[str, Any]:
    """How the models were timed and how the intervals were drawn, as the results record it."""
    return {
        "speed_settings": {
            "latency_rows": min(config.latency_rows, rows),
            "throughput_batch_size": min(config.throughput_batch_size, rows),
            "repeats": config.repeats,
            "max_length": config.max_length,
            "threads": torch.get_num_threads(),
            "timing": "interleaved: each repeat times every model in turn "
            "(ABBA order); medians with their interquartile range",
        },
        "intervals": {
            "confidence": 0.95,
            "resamples": config.bootstrap_resamples,
            "seed": config.seed,
            "method": "percentile bootstrap over the split's rows; every model is scored on the "
            "same resamples, so each distillation gain's interval is paired",
        },
    }


def write_comparison(
    config: CompareConfig, data_name: str, started: datetime, results: dict[str, Any]
) -> Path:
    """The new comparison folder: results, figure and HTML report (with each run's training
    curves), written under a temporary name and renamed when complete; then the compared
    students' model cards gain the results. Returns the folder."""
    from kdistill.evaluation.comparison_figure import plot_comparison
    from kdistill.evaluation.html_report import write_html_report
    from kdistill.shipping.model_card import add_comparison_to_cards

    final, partial = new_run_dir(Path(config.output_dir), f"{data_name}_{config.split}", started)
    atomic_write_json(partial / FILES["json"], results)
    plot_comparison(results, partial / FILES["figure"])
    figures = {"Teacher and students compared": partial / FILES["figure"]}
    for m in results["models"]:
        curves = Path(m["run_dir"]) / "training_curves.png" if m["run_dir"] else None
        if curves and curves.is_file():
            figures[f"Training curves: {m['name']}"] = curves
    write_html_report(results, partial / FILES["html"], figures)
    finish_run_dir(partial, final)
    add_comparison_to_cards(results)  # the students' cards gain test metrics, speed and size
    return final


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or 'name (2)', 'name (3)'... when another model already took it: two students
    from folders of the same name stay apart in the report."""
    out, i = name, 2
    while out in taken:
        out, i = f"{name} ({i})", i + 1
    taken.add(out)
    return out


def _count(n: int) -> str:
    """1234567 -> '1.2M', 123456 -> '123k': tiny and large models both stay readable."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _ci(values: list[float]) -> str:
    """'[0.912,0.948]': an interval in the terminal table."""
    return f"[{values[0]:.3f},{values[1]:.3f}]"


def _points_ci(g: dict[str, Any], metric: str, what: str) -> str:
    """'+3.1 accuracy points (95% CI +0.4 to +5.9)', ', within noise' when it spans 0."""
    low, high = g[f"{metric}_points_ci"]
    noise = ", within noise" if g[f"{metric}_within_noise"] else ""
    return f"{g[f'{metric}_points']:+.1f} {what} points (95% CI {low:+.1f} to {high:+.1f}{noise})"


def format_summary(results: dict[str, Any]) -> str:
    """The table a user reads in the terminal: quality with its 95% interval, faithfulness,
    speed and size per model; then each student's gain over the baseline, or why there is none."""
    models = results["models"]
    width = max(12, *(len(m["name"]) for m in models)) + 2
    bs = results["speed_settings"]["throughput_batch_size"]
    header = (
        f"{'model':<{width}}{'role':<10}{'accuracy':>9}{'95% CI':>15}{'macro-F1':>9}"
        f"{'95% CI':>15}{'agree':>7}{'KL':>7}{'ms/ex@1':>9}{'speed-up':>9}"
        f"{f'ex/s@{bs}':>10}{'params':>9}{'MB':>8}"
    )
    lines = [header]
    for m in models:
        lines.append(
            f"{m['name']:<{width}}{m['role']:<10}{m['accuracy']:>9.4f}{_ci(m['accuracy_ci']):>15}"
            f"{m['macro_f1']:>9.4f}{_ci(m['macro_f1_ci']):>15}"
            f"{m['agreement_with_teacher']:>7.3f}{m['kl_to_teacher']:>7.3f}"
            f"{m['latency_ms_batch_1']:>9.2f}{m['speedup_vs_teacher']:>8.1f}x"
            f"{m['throughput_per_s']:>10.1f}{_count(m['parameters']):>9}"
            f"{m['size_on_disk_bytes'] / 1e6:>8.1f}"
        )
    # Two runs' folder names may differ only by a timestamp: say how each was made.
    lines += [f"{m['name']}: {m['recipe']}" for m in models if m.get("recipe")]
    gain = results["distillation_gain"]
    for g in gain["students"] if gain else []:
        lines.append(
            f"distillation gain of {g['student']} over {gain['baseline']}: "
            f"{_points_ci(g, 'accuracy', 'accuracy')}, "
            f"{_points_ci(g, 'macro_f1', 'macro-F1')}"
        )
        lines.append(f"  matched: {', '.join(g.get('matched') or ['nothing recorded'])}")
        if g.get("differs"):
            lines.append(f"  differs: {'; '.join(g['differs'])}")
    for n in gain["not_comparable"] if gain else []:
        lines.append(
            f"no distillation gain for {n['student']}: not a fair comparison with the "
            f"baseline {gain['baseline']} ({'; '.join(n['differences'])})"
        )
    return "\n".join(lines)
