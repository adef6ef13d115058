"""One plain dataclass per command. Field `help` metadata is the `--help` text; `__post_init__`
checks ranges so a bad value fails before any model is loaded, with one line naming the flag."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kdistill.errors import KdistillError

DEFAULT_TEACHER_REPO = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise KdistillError(message)


def _check_training(c: DistillConfig | FinetuneConfig) -> None:
    """The ranges every training command shares."""
    _check(c.epochs >= 1, f"--epochs must be >= 1 (got {c.epochs})")
    _check(c.batch_size >= 1, f"--batch-size must be >= 1 (got {c.batch_size})")
    _check(
        c.eval_batch_size is None or c.eval_batch_size >= 1,
        f"--eval-batch-size must be >= 1 (got {c.eval_batch_size})",
    )
    _check(c.max_length >= 2, f"--max-length must be >= 2 (got {c.max_length})")
    for flag, value in (
        ("--max-train-samples", c.max_train_samples),
        ("--max-val-samples", c.max_val_samples),
    ):
        _check(value is None or value >= 1, f"{flag} must be >= 1 (got {value})")
    _check(c.learning_rate > 0, f"--learning-rate must be > 0 (got {c.learning_rate})")
    _check(c.weight_decay >= 0, f"--weight-decay must be >= 0 (got {c.weight_decay})")
    _check(0.0 <= c.warmup_ratio < 1.0, f"--warmup-ratio must be in [0, 1) (got {c.warmup_ratio})")
    _check(
        c.gradient_accumulation_steps >= 1,
        f"--gradient-accumulation-steps must be >= 1 (got {c.gradient_accumulation_steps})",
    )
    _check(
        0.0 < c.validation_split < 1.0,
        f"--validation-split must be between 0 and 1 (got {c.validation_split})",
    )


@dataclass
class DownloadConfig:
    """Download a model snapshot from the Hugging Face Hub into models/<name>/."""

    model: str = _opt(DEFAULT_TEACHER_REPO, "Hub repo id of the model to download.")
    output_dir: str = _opt("models", "Parent folder; the model lands in <output-dir>/<name>/.")
    revision: str | None = _opt(None, "Branch, tag or commit to download (default: main).")
    allow_pickle: bool = _opt(
        False, "Also download pickle weights (*.bin, *.pt): only for repos without safetensors."
    )

    def __post_init__(self) -> None:
        _check(bool(self.model.strip()), "--model must be a Hub repo id such as org/name")


@dataclass
class PrepareDataConfig:
    """Load a labelled data set, split it, explore it and save it under data/<name>/."""

    dataset: str = _opt(
        "dbpedia",
        "dbpedia, ag_news, a Hub data set id, or a local CSV/JSONL/Parquet file or folder.",
    )
    validation_split: float = _opt(
        0.2, "Share of train held out as a stratified validation split (0 < x < 1)."
    )
    text_column: str | None = _opt(
        None, "Text column (default: the alias's, else 'text'); comma-separated columns are joined."
    )
    label_column: str | None = _opt(None, "Label column (default: the alias's, else 'label').")
    data_dir: str = _opt("data", "Parent folder; the prepared data lands in <data-dir>/<name>/.")
    name: str | None = _opt(None, "Folder name under --data-dir (default: from --dataset).")
    seed: int = _opt(42, "Seed of the validation split.")

    def __post_init__(self) -> None:
        _check(
            0.0 < self.validation_split < 1.0,
            f"--validation-split must be between 0 and 1 (got {self.validation_split})",
        )


@dataclass
class DistillConfig:
    """Train a student from a frozen teacher: loss = alpha * T^2 * KL + (1 - alpha) * CE."""

    dataset: str = _opt(
        "dbpedia",
        "Prepared data (data/<name>/ or its path), or anything prepare-data accepts "
        "(then split in memory).",
    )
    teacher_model: str = _opt(
        "models/DeepSeek-R1-Distill-Qwen-1.5B",
        "Teacher: a local folder or Hub id of a sequence classifier trained on these labels.",
    )
    student_model: str = _opt(
        "Qwen/Qwen2.5-0.5B",
        "Student: a local folder or Hub id; a folder with only a config.json starts from random "
        "weights.",
    )
    student_tokenizer: str | None = _opt(
        None, "Tokenizer for the student (default: the student's own)."
    )
    epochs: int = _opt(3, "Training epochs.")
    batch_size: int = _opt(4, "Examples per step per device.")
    max_length: int = _opt(128, "Maximum tokens per text (each model's own tokenizer).")
    temperature: float = _opt(
        3.0,
        "Softening temperature T > 0: both distributions are softmax(logits / T); the KL term is "
        "multiplied by T^2 (Hinton et al.) so its gradients keep their size as T changes.",
    )
    alpha: float = _opt(
        0.7,
        "Weight of the distillation term in [0, 1]: loss = alpha * T^2 * KL(teacher || student) "
        "+ (1 - alpha) * CE(student, labels). 0 = supervised only, 1 = teacher only.",
    )
    max_train_samples: int | None = _opt(
        None, "Stratified subsample of train (keeps class proportions)."
    )
    max_val_samples: int | None = _opt(
        None, "Stratified subsample of validation (keeps class proportions)."
    )
    learning_rate: float = _opt(5e-5, "Peak learning rate of AdamW (linear warm-up and decay).")
    weight_decay: float = _opt(0.01, "AdamW weight decay.")
    warmup_ratio: float = _opt(0.1, "Share of optimisation steps spent warming up, in [0, 1).")
    seed: int = _opt(42, "Seed for sampling, shuffling and the student's new head.")
    output_dir: str = _opt(
        "outputs/student_soft_distill",
        "Parent folder of run directories {dataset}_T{T}_A{alpha}_{YYYYMMDD_HHMMSS}/.",
    )
    gradient_accumulation_steps: int = _opt(
        1, "Micro-batches per optimiser step (effective batch = batch-size x this x processes)."
    )
    gradient_checkpointing: str = _opt(
        "auto",
        "Recompute activations to save memory: auto turns it on for students over 100M "
        "parameters, where activation memory matters, and off for small ones where it only costs "
        "time.",
        choices=["auto", "on", "off"],
    )
    mixed_precision: str = _opt(
        "auto",
        "auto: bf16 where the device supports it (CUDA, recent CPUs), fp16 on older GPUs, else no.",
        choices=["auto", "no", "fp16", "bf16"],
    )
    device: str = _opt(
        "auto", "auto picks cuda, then mps, then cpu.", choices=["auto", "cuda", "mps", "cpu"]
    )
    eval_batch_size: int | None = _opt(None, "Batch size for evaluation (default: 4x batch-size).")
    data_dir: str = _opt("data", "Where prepared data sets live (see prepare-data).")
    text_column: str | None = _opt(None, "Text column when --dataset is not prepared yet.")
    label_column: str | None = _opt(None, "Label column when --dataset is not prepared yet.")
    validation_split: float = _opt(
        0.2, "Validation share when --dataset is not prepared yet and has no validation split."
    )
    allow_untrained_teacher: bool = _opt(
        False,
        "Use a teacher whose classification head is newly initialised (its logits are noise).",
    )
    teacher_cache: str = _opt(
        "auto",
        "Teacher logits: off runs the teacher on every batch (the seed's loop); memory computes "
        "them once in a length-sorted pass and reuses them every epoch; disk also saves them "
        "(keyed by teacher, tokenizer, max-length, precision and texts) so later runs on the "
        "same teacher and data skip the teacher; auto = memory, reusing a matching disk entry.",
        choices=["auto", "off", "memory", "disk"],
    )
    teacher_cache_dir: str | None = _opt(
        None, "Folder of the disk cache (default: $KDISTILL_CACHE or ~/.cache/kdistill)."
    )
    teacher_batch_size: int = _opt(
        64, "Batch size of teacher inference (no gradients, so larger than the student's)."
    )
    teacher_dtype: str = _opt(
        "auto",
        "Teacher weights' precision: auto = bf16 where the device does it natively, fp16 on "
        "older GPUs, else fp32.",
        choices=["auto", "fp32", "bf16", "fp16"],
    )
    group_by_length: bool = _opt(
        False,
        "Batch training examples of similar token length (shuffled groups of batches): less "
        "padding, but where length goes with the class (DBpedia) the batches are less mixed "
        "and accuracy can drop a few points, so it is off unless padding dominates.",
    )
    compile: bool = _opt(False, "torch.compile the student (helps on some GPUs; slow to start).")

    def __post_init__(self) -> None:
        _check(self.temperature > 0, f"--temperature must be > 0 (got {self.temperature})")
        _check(0.0 <= self.alpha <= 1.0, f"--alpha must be in [0, 1] (got {self.alpha})")
        _check_training(self)
        _check(
            self.teacher_batch_size >= 1,
            f"--teacher-batch-size must be >= 1 (got {self.teacher_batch_size})",
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneConfig:
    """Fine-tune a checkpoint as a sequence classifier on a data set, to serve as a teacher."""

    model: str = _opt(
        "models/DeepSeek-R1-Distill-Qwen-1.5B", "Checkpoint to fine-tune: a local folder or Hub id."
    )
    dataset: str = _opt("dbpedia", "Prepared data, or anything prepare-data accepts.")
    output_dir: str = _opt("models", "Parent folder; the teacher lands in <output-dir>/<name>/.")
    name: str | None = _opt(None, "Folder name (default: <model name>-<dataset name>).")
    epochs: int = _opt(1, "Training epochs.")
    batch_size: int = _opt(16, "Examples per step per device.")
    max_length: int = _opt(128, "Maximum tokens per text.")
    max_train_samples: int | None = _opt(None, "Stratified subsample of train.")
    max_val_samples: int | None = _opt(None, "Stratified subsample of validation.")
    learning_rate: float = _opt(5e-5, "Peak learning rate of AdamW (linear warm-up and decay).")
    weight_decay: float = _opt(0.01, "AdamW weight decay.")
    warmup_ratio: float = _opt(0.1, "Share of optimisation steps spent warming up, in [0, 1).")
    seed: int = _opt(42, "Seed for sampling, shuffling and the new head.")
    gradient_accumulation_steps: int = _opt(1, "Micro-batches per optimiser step.")
    gradient_checkpointing: str = _opt(
        "auto", "auto: on for models over 100M parameters.", choices=["auto", "on", "off"]
    )
    mixed_precision: str = _opt(
        "auto", "auto: bf16 where supported, fp16 on older GPUs, else no.",
        choices=["auto", "no", "fp16", "bf16"],
    )  # fmt: skip
    device: str = _opt(
        "auto", "auto: cuda, then mps, then cpu.", choices=["auto", "cuda", "mps", "cpu"]
    )
    eval_batch_size: int | None = _opt(None, "Batch size for evaluation (default: 4x batch-size).")
    data_dir: str = _opt("data", "Where prepared data sets live.")
    text_column: str | None = _opt(None, "Text column when --dataset is not prepared yet.")
    label_column: str | None = _opt(None, "Label column when --dataset is not prepared yet.")
    validation_split: float = _opt(0.2, "Validation share when --dataset has no validation split.")

    def __post_init__(self) -> None:
        _check_training(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
