"""compare: is the student good enough to ship in place of its teacher?

Scores the teacher and each student on the same held-out rows (one length-sorted inference pass
each, as the logit cache does), measures how faithfully each student imitates the teacher
(agreement of predictions, KL between distributions) and what it saves (size, latency at
batch 1, throughput), and writes comparison_results.json, teacher_student_comparison.png and
report.html into a new folder. A cross-entropy-only student (--baseline) turns the numbers into
the gain distillation itself brings, when it is a fair one: cross-entropy only, the same student
on the same data for as long. Every accuracy and macro-F1 comes with a 95% bootstrap interval over
the rows, and each gain with a paired one, so a difference the split's size cannot tell from noise
is reported as such.
"""

from __future__ import annotations

import gc
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.config import CompareConfig
from kdistill.errors import KdistillError
from kdistill.training.runs import atomic_write_json, finish_run_dir, is_run_config, new_run_dir

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset

    from kdistill.teachers.classifier import Teacher

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: 95% intervals, the baseline's checks, latency IQRs
FILES = {
    "json": "comparison_results.json",
    "figure": "teacher_student_comparison.png",
    "html": "report.html",
}
# Weight formats in the order transformers prefers them: a folder holding both safetensors and a
# pickle copy loads (and so weighs) only the safetensors.
WEIGHT_FORMATS = (("*.safetensors",), ("*.bin", "*.pt", "*.pth"), ("*.gguf",))


@dataclass
class Candidate:
    """A student or baseline as given on the command line, resolved to the folder to load."""

    role: str  # "student" | "baseline"
    flag: str  # the flag that named it, for error messages
    given: str
    model_dir: Path
    run_dir: Path | None = None
    run_config: dict[str, Any] | None = None
    history: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        if self.run_dir is None:
            return self.model_dir.name
        # The run directory says what the model is (dataset, T, alpha); best_model is implied.
        return self.run_dir.name + (
            "" if self.model_dir.name == "best_model" else f"/{self.model_dir.name}"
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def resolve_candidate(given: str, role: str, flag: str) -> Candidate:
    """A model folder, a distill run directory (its best_model/ is compared), or a model folder
    inside one (best_model/, final_model/: the run's config and history come along)."""
    path = Path(given).expanduser()
    if not path.exists():
        raise KdistillError(
            f"{flag} {given}: no such folder; pass a model folder or a distill run directory"
        )
    if not path.is_dir():
        raise KdistillError(
            f"{flag} {given}: a file; pass a model folder or a distill run directory"
        )
    run_dir, model_dir = None, path
    if is_run_config(_read_json(path / "config.json")) or (path / "best_model").is_dir():
        run_dir, model_dir = path, path / "best_model"
        if not model_dir.is_dir():
            raise KdistillError(
                f"{flag} {given}: the run has no best_model/ yet (did it stop "
                "before its first epoch ended?)"
            )
    elif path.name in ("best_model", "final_model") and is_run_config(
        _read_json(path.parent / "config.json")
    ):
        run_dir = path.parent
    if not (model_dir / "config.json").is_file():
        raise KdistillError(
            f"{flag} {given}: no config.json in {model_dir}; pass a model folder "
            "or a distill run directory"
        )
    candidate = Candidate(role, flag, given, model_dir, run_dir)
    if run_dir is not None:
        candidate.run_config = _read_json(run_dir / "config.json")
        candidate.history = _read_json(run_dir / "history.json")
        if run_dir.name.endswith(".partial"):
            logger.warning(
                "%s %s: the run is still going or crashed; comparing its best model so far",
                flag,
                given,
            )
    return candidate


def resolve_candidates(config: CompareConfig) -> list[Candidate]:
    """Students in the order given, then the baseline."""
    if config.baseline and config.baseline in config.student_paths():
        raise KdistillError(
            f"--baseline {config.baseline} is also passed as a student; pass it once, as --baseline"
        )
    out = [
        resolve_candidate(
            p, "student", "--student-model" if p == config.student_model else "--students"
        )
        for p in config.student_paths()
    ]
    if config.baseline:
        out.append(resolve_candidate(config.baseline, "baseline", "--baseline"))
    return out


def check_labels(candidate: Candidate, label_names: list[str]) -> None:
    """A student must be a classifier over exactly the data set's classes (by name, in any
    order, matched by `kdistill.data.labels.match_names`); one trained on other labels cannot be
    scored against these, whatever its accuracy."""
    from kdistill.data.labels import match_names

    cfg = _read_json(candidate.model_dir / "config.json") or {}
    id2label = cfg.get("id2label") or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if not names or all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        raise KdistillError(
            f"{candidate.flag} {candidate.given}: its classes are unnamed "
            f"({', '.join(names[:3]) or 'none'}), so it is not a classifier "
            "trained on this data set; pass a distill run directory or its "
            "best_model/"
        )
    found = match_names(names, label_names, f"{candidate.flag} {candidate.given}")
    used = {i for i in found if i is not None}
    if None in found or len(names) != len(label_names):
        missing = [n for n, i in zip(label_names, found, strict=True) if i is None]
        extra = [n for i, n in enumerate(names) if i not in used]
        raise KdistillError(
            f"{candidate.flag} {candidate.given}: its labels differ from the data "
            f"set's and the teacher's; missing: {', '.join(missing) or 'none'}; "
            f"extra: {', '.join(extra) or 'none'}; compare students trained on "
            "this data set"
        )


def check_output_dir(output_dir: str) -> None:
    path = Path(output_dir)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise KdistillError(
                f"--output-dir {output_dir}: {p} is a file; pass a folder (each "
                "comparison gets a new folder inside it)"
            )


def weights_size(name: str) -> int:
    """Bytes of the weight files transformers loads from a model folder (a Hub id: its snapshot
    in the local cache). 0, with a warning, when no folder is found."""
    folder = Path(name)
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
        if not isinstance(found, str):
            logger.warning("%s: no local folder found; its size on disk is reported as 0", name)
            return 0
        folder = Path(found).parent
    for patterns in WEIGHT_FORMATS:
        files = {f for pattern in patterns for f in folder.glob(pattern)}
        if files:
            return sum(f.stat().st_size for f in files)  # stat follows the Hub cache's symlinks
    return 0


def load_student_model(candidate: Candidate, label_names: list[str], dtype: torch.dtype) -> Teacher:
    """A student loaded as a frozen classifier with its columns in the data set's class order,
    so it runs through exactly the same scoring and timing code as the teacher."""
    from kdistill.students.load import load_teacher_classifier
    from kdistill.teachers.classifier import ClassifierTeacher

    path = str(candidate.model_dir)
    try:
        model, tokenizer, columns = load_teacher_classifier(path, label_names, False, dtype)
    except KdistillError as e:  # the loader speaks of teachers; this one is a student
        raise KdistillError(str(e).replace("--teacher-model", candidate.flag)) from e
    return ClassifierTeacher(model, tokenizer, columns, path)


def pad_rows(
    rows: list[list[int]], pad_id: int, left: bool, device: torch.device
) -> dict[str, torch.Tensor]:
    """One batch padded to its longest row, on the side the tokenizer pads."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span], mask[i, span] = torch.tensor(r), 1
    return {"teacher_input_ids": ids.to(device), "teacher_attention_mask": mask.to(device)}


# (forward, one-row batches, one throughput batch): what measure_speeds times a model on.
Timing = tuple[
    Callable[[dict[str, torch.Tensor]], torch.Tensor],
    list[dict[str, torch.Tensor]],
    dict[str, torch.Tensor],
]


def score_model(
    wrapper: Teacher,
    rows: Dataset,
    config: CompareConfig,
    accelerator: Accelerator,
    num_labels: int,
) -> tuple[torch.Tensor, Timing]:
    """(len(rows), num_labels) logits over the split, and what measure_speeds times the model on
    (it times every model together, interleaved): the split's first rows one at a time, and its
    first throughput-batch-size rows as one batch, each model reading its own tokenisation of
    the same texts."""
    from kdistill.data.prepare import tokenize
    from kdistill.teachers.cache import compute_teacher_logits

    wrapper.to(accelerator.device)
    encoded = tokenize(rows, {"teacher": wrapper}, config.max_length)
    logits = compute_teacher_logits(wrapper, encoded, config.batch_size, accelerator, num_labels)
    ids = encoded.select_columns(["teacher_input_ids"])[:]["teacher_input_ids"]
    pad_id, left = wrapper.tokenizer.pad_token_id, wrapper.tokenizer.padding_side == "left"
    singles = [pad_rows([r], pad_id, left, accelerator.device) for r in ids[: config.latency_rows]]
    batch = pad_rows(ids[: config.throughput_batch_size], pad_id, left, accelerator.device)

    def forward(b: dict[str, torch.Tensor]) -> torch.Tensor:
        with accelerator.autocast():
            return wrapper.logits(b)

    return logits, (forward, singles, batch)


def model_record(
    name: str,
    role: str,
    wrapper: Teacher,
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    speed: dict[str, float],
    label_names: list[str],
    candidate: Candidate | None = None,
) -> dict[str, Any]:
    """One entry of comparison_results.json's `models`, before the ratios to the teacher."""
    from kdistill.evaluation.metrics import (
        agreement,
        classification_metrics,
        confusion,
        expected_calibration_error,
        mean_kl,
        per_class_scores,
    )
    from kdistill.students.load import count_parameters

    metrics = classification_metrics(logits, labels, len(label_names))
    preds = logits.argmax(-1)
    run_config = candidate.run_config if candidate else None
    data = (run_config or {}).get("data") or {}
    return {
        "name": name,
        "role": role,
        "path": wrapper.name,
        "run_dir": str(candidate.run_dir) if candidate and candidate.run_dir else None,
        "run_config": run_config,
        "history": candidate.history if candidate else None,
        "mode": wrapper.mode,
        "model_class": type(wrapper.model).__name__,
        "parameters": count_parameters(wrapper.model),
        "size_on_disk_bytes": weights_size(wrapper.name),
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "loss": metrics["loss"],
        "ece": expected_calibration_error(torch.softmax(logits.float(), -1), labels),
        "per_class": per_class_scores(labels, preds, label_names),
        "confusion_matrix": confusion(labels, preds, len(label_names)),
        "agreement_with_teacher": agreement(teacher_logits, logits),
        "kl_to_teacher": mean_kl(teacher_logits, logits),
        **speed,
        "training_data": {
            "labeled_rows": data.get("train_rows"),
            "unlabeled_rows": data.get("unlabeled_rows"),
        },
    }


def add_ratios(models: list[dict[str, Any]]) -> None:
    """Speed-up, throughput ratio and compression against the teacher (models[0])."""
    teacher = models[0]
    for m in models:
        m["speedup_vs_teacher"] = teacher["latency_ms_batch_1"] / m["latency_ms_batch_1"]
        m["throughput_ratio_vs_teacher"] = m["throughput_per_s"] / teacher["throughput_per_s"]
        m["compression_vs_teacher"] = teacher["parameters"] / m["parameters"]


ARCHITECTURE_KEYS = ("student_model", "student_layers", "student_num_layers")
# What the baseline must share with a student for the gain to measure distillation alone:
# (key in config.json's "data" or None for its top level, key, what to call it).
TRAINING_KEYS = (
    ("data", "source", "data set"),
    ("data", "train_rows", "labelled rows"),
    (None, "epochs", "epochs"),
    (None, "max_length", "max length"),
)


def baseline_problems(baseline: dict[str, Any]) -> list[str]:
    """Why the baseline is not a cross-entropy-only run (none when it is): alpha 0 and no
    teacher on any row. Runs written before alpha 0 meant that gave unlabelled rows T^2 * KL."""
    run_config = baseline.get("run_config")
    if not run_config:
        return [
            "the baseline has no distill config.json, so nothing shows it was trained on "
            "labels alone; pass the run directory of a distill --alpha 0 run"
        ]
    problems = []
    if run_config.get("alpha") != 0:
        problems.append(
            f"the baseline was trained with alpha {run_config.get('alpha')}, not 0: "
            "it learned from the teacher"
        )
    unlabeled = (run_config.get("data") or {}).get("unlabeled_rows")
    if unlabeled:
        problems.append(
            f"the baseline had {unlabeled} unlabelled rows, which learned from the teacher"
        )
    return problems


def baseline_differences(student: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """How a student's run differs from the baseline's in what the gain must hold fixed: the
    student architecture, the data set, its labelled rows, epochs and max length."""
    rs, rb = student.get("run_config"), baseline.get("run_config")
    if not rs:
        return [
            "the student has no distill config.json, so its student and data cannot be "
            "matched to the baseline's"
        ]
    if not rb:
        return []  # said once, in baseline_problems
    out = []
    for key in ARCHITECTURE_KEYS:
        if rs.get(key) != rb.get(key):
            out.append(f"{key} {rs.get(key)} vs the baseline's {rb.get(key)}")
    for section, key, what in TRAINING_KEYS:
        a = (rs.get(section) or {}) if section else rs
        b = (rb.get(section) or {}) if section else rb
        if a.get(key) != b.get(key):
            out.append(f"{what} {a.get(key)} vs the baseline's {b.get(key)}")
    return out


def add_intervals(
    models: list[dict[str, Any]],
    preds: dict[str, torch.Tensor],
    labels: torch.Tensor,
    num_labels: int,
    resamples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Each model's 95% bootstrap intervals (accuracy_ci, macro_f1_ci), every model scored on
    the same resamples of the rows; returns the resampled scores, for the paired gains."""
    from kdistill.evaluation.metrics import bootstrap_scores, interval

    y = labels.cpu().numpy()
    boot = bootstrap_scores(
        y, {n: p.cpu().numpy() for n, p in preds.items()}, num_labels, resamples, seed
    )
    for m in models:
        m["accuracy_ci"] = interval(boot[m["name"]]["accuracy"])
        m["macro_f1_ci"] = interval(boot[m["name"]]["macro_f1"])
    return boot


def _gain(
    student: dict[str, Any], baseline: dict[str, Any], boot: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """student - baseline in percentage points, with a paired 95% bootstrap interval: the
    difference on each resample of the same rows."""
    from kdistill.evaluation.metrics import interval

    out: dict[str, Any] = {"student": student["name"]}
    for metric in ("accuracy", "macro_f1"):
        diff = (boot[student["name"]][metric] - boot[baseline["name"]][metric]) * 100
        low, high = interval(diff)
        out[f"{metric}_points"] = (student[metric] - baseline[metric]) * 100
        out[f"{metric}_points_ci"] = [low, high]
        out[f"{metric}_within_noise"] = low <= 0.0 <= high
    return out


def distillation_gain(
    models: list[dict[str, Any]], boot: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """Each student's accuracy and macro-F1 minus the baseline's, in percentage points, with a
    paired bootstrap interval (`boot`: add_intervals' resampled scores).

    Only a fair baseline counts: cross-entropy only (alpha 0, no teacher on any row) and the
    same student architecture, data set, labelled rows, epochs and max length as the student.
    Anything else would fold that difference into the "gain" (more epochs, another student, a
    baseline that saw the teacher), so such a student gets no gain, and the differences are
    listed instead."""
    baseline = next((m for m in models if m["role"] == "baseline"), None)
    if baseline is None:
        return None
    problems = baseline_problems(baseline)
    gains, not_comparable = [], []
    for m in (m for m in models if m["role"] == "student"):
        differences = [*problems, *baseline_differences(m, baseline)]
        if differences:
            not_comparable.append({"student": m["name"], "differences": differences})
        else:
            gains.append(_gain(m, baseline, boot))
    return {
        "baseline": baseline["name"],
        "baseline_valid": not problems,
        "baseline_problems": problems,
        "students": gains,
        "not_comparable": not_comparable,
    }


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name} ({i})", i + 1
    taken.add(out)
    return out


def _release(wrapper: Teacher) -> None:
    """Free a model's memory before the next loads: a 1.5B teacher and its students need not
    share the GPU."""
    wrapper.model.to("cpu")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def compare(config: CompareConfig) -> Path:
    """The compare command. Returns the new comparison folder."""
    from kdistill.data.prepare import subsample
    from kdistill.evaluation.metrics import measure_speeds
    from kdistill.evaluation.report import plot_comparison, write_html_report
    from kdistill.from_run import (
        Run,
        check_same_split,
        data_config,
        run_of,
        run_teacher,
        teacher_model_for,
    )
    from kdistill.teachers.classifier import load_teacher
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
    scored: list[tuple[str, str, Teacher, torch.Tensor, Candidate | None]] = [
        ("teacher", "teacher", teacher, teacher_logits, None)
    ]
    timings = {"teacher": timing}
    taken = {"teacher"}
    for i, c in enumerate(candidates, start=2):
        logger.info("[%d/%d] %s %s", i, total, c.role, c.model_dir)
        student = load_student_model(c, data.label_names, dtype)
        name = _unique(c.name, taken)
        logits, timings[name] = score_model(student, rows, config, accelerator, data.num_labels)
        scored.append((name, c.role, student, logits, c))
    logger.info("timing %d models interleaved, %d repeats", len(timings), config.repeats)
    speeds = measure_speeds(timings, config.repeats, accelerator.device)
    models, preds = [], {}  # preds: (rows,) each, for the bootstrap
    for name, role, wrapper, logits, c in scored:
        record = model_record(
            name, role, wrapper, logits, labels, teacher_logits, speeds[name], data.label_names, c
        )
        models.append(record)
        preds[name] = logits.argmax(-1)
        _release(wrapper)
    add_ratios(models)
    boot = add_intervals(
        models, preds, labels, data.num_labels, config.bootstrap_resamples, config.seed
    )

    counts = torch.bincount(labels, minlength=data.num_labels).tolist()
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now().isoformat(timespec="seconds"),
        "dataset": {
            "name": data.name,
            "source": data.source,
            "split": config.split,
            "rows": len(rows),
            "label_names": data.label_names,
            "class_counts": counts,
        },
        "device": str(accelerator.device),
        "mixed_precision": precision,
        "versions": library_versions(),
        "config": config.to_dict(),
        "speed_settings": {
            "latency_rows": min(config.latency_rows, len(rows)),
            "throughput_batch_size": min(config.throughput_batch_size, len(rows)),
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
        # macro-F1 averages F1 over these: the classes with rows in the split.
        "macro_f1_classes": [data.label_names[c] for c in sorted(set(labels.tolist()))],
        "models": models,
        "distillation_gain": distillation_gain(models, boot),
        "files": FILES,
    }

    final, partial = new_run_dir(Path(config.output_dir), f"{data.name}_{config.split}", started)
    atomic_write_json(partial / FILES["json"], results)
    plot_comparison(results, partial / FILES["figure"])
    figures = {"Teacher and students compared": partial / FILES["figure"]}
    for m in models:
        curves = Path(m["run_dir"]) / "training_curves.png" if m["run_dir"] else None
        if curves and curves.is_file():
            figures[f"Training curves: {m['name']}"] = curves
    write_html_report(results, partial / FILES["html"], figures)
    finish_run_dir(partial, final)
    from kdistill.shipping.model_card import add_comparison_to_cards

    add_comparison_to_cards(results)  # the students' cards gain test metrics, speed and size
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


def _count(n: int) -> str:
    """1234567 -> '1.2M', 123456 -> '123k': tiny and large models both stay readable."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _ci(values: list[float]) -> str:
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
    gain = results["distillation_gain"]
    for g in gain["students"] if gain else []:
        lines.append(
            f"distillation gain of {g['student']} over {gain['baseline']}: "
            f"{_points_ci(g, 'accuracy', 'accuracy')}, "
            f"{_points_ci(g, 'macro_f1', 'macro-F1')}"
        )
    for n in gain["not_comparable"] if gain else []:
        lines.append(
            f"no distillation gain for {n['student']}: not a fair comparison with the "
            f"baseline {gain['baseline']} ({'; '.join(n['differences'])})"
        )
    return "\n".join(lines)
