"""The configs of eval-teacher, compare and runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kdistill.config.common import (
    ConfigBase,
    DataOptions,
    DeviceOptions,
    TeacherOptions,
    _check,
    _check_finite,
    _check_validation_split,
    _opt,
)


@dataclass
class EvalTeacherConfig(TeacherOptions, DataOptions, DeviceOptions, ConfigBase):
    """Measure a teacher before distilling from it: accuracy, macro-F1, per-class accuracy and
    calibration (ECE) on a split, in any --teacher-mode."""

    teacher_model: str = _opt(
        "models/DeepSeek-R1-Distill-Qwen-1.5B",
        "Teacher: a local folder, Hub id or .gguf file (classifier or causal LM), or a distill "
        "run directory: its teacher, asked as it taught (prompt, few-shot examples), on its split. "
        "Several, comma-separated or the flag repeated: a teacher ensemble, each member reported.",
        repeat="join",
    )
    dataset: str = _opt("dbpedia", "Prepared data, or anything prepare-data accepts.")
    split: str = _opt(
        "validation",
        "Split to evaluate on; unlabeled = the rows prepare-data --labeled-fraction took the "
        "labels off (their labels were kept aside for this).",
        choices=["validation", "test", "train", "unlabeled"],
    )
    max_samples: int | None = _opt(None, "Stratified subsample of the split (keeps proportions).")
    max_length: int = _opt(128, "Maximum tokens per text.")
    temperatures: str = _opt(
        "1,2,3,4",
        "Temperatures at which to report ECE and the entropy of softmax(logits / T), to choose "
        "distill's --temperature.",
    )
    output: str | None = _opt(None, "Also write the report as JSON to this file.")
    teacher_cache: str = _opt(
        "auto",
        "Teacher logits on disk, as distill's: auto reuses a matching entry, disk also saves "
        "(an ensemble per member), off neither.",
        choices=["auto", "off", "disk"],
    )
    teacher_cache_dir: str | None = _opt(
        None, "Folder of the disk cache (default: $KDISTILL_CACHE or ~/.cache/kdistill)."
    )
    seed: int = _opt(42, "Seed for subsampling and few-shot examples.")

    def __post_init__(self) -> None:
        _check_finite(self)
        self._check_teacher()
        _check(self.max_length >= 2, f"--max-length must be >= 2 (got {self.max_length})")
        _check(
            self.max_samples is None or self.max_samples >= 1,
            f"--max-samples must be >= 1 (got {self.max_samples})",
        )
        _check_validation_split(self.validation_split)
        self.temperature_list()

    def temperature_list(self) -> list[float]:
        try:
            values = [float(t) for t in self.temperatures.split(",") if t.strip()]
        except ValueError:
            values = []
        _check(
            bool(values) and all(0 < t < math.inf for t in values),
            f"--temperatures must be comma-separated numbers > 0 (got {self.temperatures!r})",
        )
        return values


@dataclass
class CompareConfig(TeacherOptions, DataOptions, DeviceOptions, ConfigBase):
    """Compare a teacher and its students on a held-out split: accuracy, macro-F1, per-class
    scores, confusion, calibration, agreement with the teacher, size and speed. Writes
    comparison_results.json, teacher_student_comparison.png and report.html."""

    teacher_model: str = _opt(
        "models/DeepSeek-R1-Distill-Qwen-1.5B",
        "Teacher: a local folder, Hub id or .gguf file (classifier or causal LM), or a distill "
        "run directory (its teacher). Student runs fix the split compared on, and their teacher "
        "is asked as it taught them (prompt, few-shot examples).",
    )
    student_model: str | None = _opt(
        None, "Student: a model folder or a distill run directory (its best_model/ is used)."
    )
    students: str | None = _opt(
        None, "More students, comma-separated (model folders or run directories)."
    )
    baseline: str | None = _opt(
        None,
        "A student trained without the teacher (distill --alpha 0): the report states each "
        "student's gain from distillation against it, with a paired 95% interval. It counts "
        "only for students of the same student flags, data set, labelled rows, max length, "
        "tokenizer, learning rate, batch size and schedule, and a baseline trained for at "
        "least as many optimizer steps (give it more --epochs when the student also learns "
        "from unlabelled text); for others the differences are listed instead.",
    )
    dataset: str = _opt("dbpedia", "Prepared data, or anything prepare-data accepts.")
    split: str = _opt(
        "test",
        "Split to compare on (use validation when the data set has no test split).",
        choices=["test", "validation"],
    )
    max_samples: int | None = _opt(None, "Stratified subsample of the split (keeps proportions).")
    max_length: int = _opt(128, "Maximum tokens per text.")
    batch_size: int = _opt(64, "Batch size for scoring the split.")
    latency_rows: int = _opt(
        32, "Rows timed one at a time for latency at batch 1 (median reported)."
    )
    throughput_batch_size: int = _opt(32, "Batch size at which throughput is measured.")
    repeats: int = _opt(3, "Timed repeats of each speed measurement, after a warm-up.")
    bootstrap_resamples: int = _opt(
        1000,
        "Bootstrap resamples of the split's rows (seeded by --seed) behind each 95% interval: "
        "every accuracy and macro-F1, and the paired distillation gain.",
    )
    output_dir: str = _opt(
        "outputs/comparisons",
        "Parent folder: each comparison gets <dataset>_<split>_<YYYYMMDD_HHMMSS>/.",
    )
    seed: int = _opt(42, "Seed for subsampling.")

    def __post_init__(self) -> None:
        _check_finite(self)
        self._check_teacher()
        _check(bool(self.student_paths()), "pass --student-model (or --students): what to compare")
        _check(self.max_length >= 2, f"--max-length must be >= 2 (got {self.max_length})")
        for flag, value in (
            ("--batch-size", self.batch_size),
            ("--latency-rows", self.latency_rows),
            ("--throughput-batch-size", self.throughput_batch_size),
            ("--repeats", self.repeats),
        ):
            _check(value >= 1, f"{flag} must be >= 1 (got {value})")
        _check(
            self.max_samples is None or self.max_samples >= 1,
            f"--max-samples must be >= 1 (got {self.max_samples})",
        )
        _check(
            100 <= self.bootstrap_resamples <= 100_000,
            f"--bootstrap-resamples must be in [100, 100000] (got {self.bootstrap_resamples})",
        )
        _check_validation_split(self.validation_split)

    def student_paths(self) -> list[str]:
        """--student-model then --students, in order, without repeats."""
        paths = [self.student_model] if self.student_model else []
        paths += [s.strip() for s in (self.students or "").split(",") if s.strip()]
        return list(dict.fromkeys(paths))


@dataclass
class RunsConfig:
    """List the distill runs under a folder: complete, still running and crashed ones."""

    output_dir: str = _opt("outputs", "Folder searched (recursively) for run directories.")
    sort_by: str = _opt(
        "started",
        "Column to sort by.",
        choices=[
            "started",
            "name",
            "status",
            "dataset",
            "teacher",
            "student",
            "temperature",
            "alpha",
            "best_val_accuracy",
            "best_epoch",
            "duration_s",
            "path",
        ],
    )
    reverse: bool = _opt(False, "Sort in descending order.")
    json: bool = _opt(False, "Print JSON (one object per run) instead of a table.")
