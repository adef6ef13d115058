"""What every command's config shares: the field helper whose help text is --help,
the range checks, and the options for loading models and teachers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from kdistill.config.distill import DistillConfig
    from kdistill.config.finetune import FinetuneConfig


DEFAULT_TEACHER_REPO = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"


# transformers.get_scheduler's names that need no arguments beyond the step counts.
LR_SCHEDULERS = [
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
]


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


def _lr_scheduler_opt(default: str = "linear", why: str = "") -> Any:
    """--lr-scheduler, the same flag for distill and finetune-teacher (each dataclass needs a
    field of its own)."""
    return _opt(
        default,
        "Learning-rate schedule after the --warmup-ratio warm-up, by transformers' names: linear "
        "(decay to 0), cosine, cosine_with_restarts, polynomial, constant_with_warmup, "
        "inverse_sqrt, or constant (no warm-up either)." + why,
        choices=LR_SCHEDULERS,
    )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise KdistillError(message)


def _check_finite(config: Any) -> None:
    """`--temperature inf` and `--learning-rate nan` parse as floats: inf passes checks such as
    `x > 0`, nan any check written as a negation, and both end in nan losses. Refuse them."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            flag = "--" + f.name.replace("_", "-")
            raise KdistillError(f"{flag} must be a finite number (got {value})")


def _check_folder_name(value: str | None, flag: str, parent_flag: str) -> None:
    """A name that becomes a folder under --data-dir or --output-dir: one plain path component,
    so `../x` or `/tmp/x` cannot write outside it."""
    if value is None:
        return
    _check(
        bool(value.strip())
        and value not in (".", "..")
        and "/" not in value
        and "\\" not in value
        and "\0" not in value,
        f"{flag} {value!r} must be a plain folder name (no '/', not '.' or '..'): it is created "
        f"inside {parent_flag}",
    )


def _check_validation_split(value: float) -> None:
    _check(0.0 < value < 1.0, f"--validation-split must be between 0 and 1 (got {value})")


PUSH_HELP = (
    "Also upload the saved model folder, with its model card, to this Hugging Face Hub repo "
    "(org/name or name), created if missing; private unless --hub-public."
)


HUB_PUBLIC_HELP = "With --push-to-hub: create the repo public (default: private)."


def _check_push_to_hub(repo_id: str | None) -> None:
    """A malformed repo id fails before any training, not after it."""
    if repo_id is None:
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise KdistillError(
            f"--push-to-hub {repo_id!r}: not a Hub repo id; pass org/name or name (letters, "
            "digits, '-', '_' and '.')"
        ) from None


def _check_training(c: DistillConfig | FinetuneConfig) -> None:
    """The ranges every training command shares."""
    _check_finite(c)
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
    _check_validation_split(c.validation_split)


@dataclass
class ConfigBase:
    """What every command's config does with itself: config.json and reports store it whole."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeviceOptions:
    """Where a command that runs a model runs it, and in what precision."""

    device: str = _opt(
        "auto", "auto picks cuda, then mps, then cpu.", choices=["auto", "cuda", "mps", "cpu"]
    )
    mixed_precision: str = _opt(
        "auto",
        "auto: bf16 where the device supports it (CUDA, recent CPUs), fp16 on older GPUs, else no.",
        choices=["auto", "no", "fp16", "bf16"],
    )


@dataclass
class DataOptions:
    """Where prepared data sets live, and how to read one that is not prepared yet (the same
    columns and validation share as prepare-data, split in memory)."""

    data_dir: str = _opt("data", "Where prepared data sets live (see prepare-data).")
    text_column: str | None = _opt(None, "Text column when --dataset is not prepared yet.")
    label_column: str | None = _opt(None, "Label column when --dataset is not prepared yet.")
    validation_split: float = _opt(
        0.2, "Validation share when --dataset is not prepared yet and has no validation split."
    )


@dataclass
class TrainingOptions:
    """The flags both training commands (distill, finetune-teacher) share with the same
    meaning and default; epochs, batch size and learning rate differ by command and stay
    with it."""

    max_train_samples: int | None = _opt(
        None, "Stratified subsample of train (keeps class proportions)."
    )
    max_val_samples: int | None = _opt(
        None, "Stratified subsample of validation (keeps class proportions)."
    )
    weight_decay: float = _opt(0.01, "AdamW weight decay.")
    warmup_ratio: float = _opt(0.1, "Share of optimisation steps spent warming up, in [0, 1).")
    gradient_accumulation_steps: int = _opt(
        1, "Micro-batches per optimiser step (effective batch = batch-size x this x processes)."
    )
    eval_batch_size: int | None = _opt(None, "Batch size for evaluation (default: 4x batch-size).")


@dataclass
class LoadOptions:
    """What a command that loads models may run: safe by default, shared by every such command.

    Pickle weights (pytorch_model.bin) and a model's own Python code (auto_map) both execute
    code from the model folder when loaded; safetensors and transformers' own classes do not.
    """

    allow_pickle: bool = _opt(
        False,
        "Also load pickle weights (*.bin, *.pt) when a model has no safetensors: loading a "
        "pickle can run code, so only for models from a source you trust.",
    )
    trust_remote_code: bool = _opt(
        False,
        "Run the Python code a model ships (config.json auto_map) to build it: only for models "
        "from a source you trust.",
    )


@dataclass
class TeacherOptions(LoadOptions):
    """How a teacher is loaded and asked: shared by distill and eval-teacher."""

    teacher_mode: str = _opt(
        "auto",
        "classifier reads a trained *ForSequenceClassification head; prompt scores each class's "
        "label words with a causal LM (zero/few-shot); embedding scores each text against "
        "sentence-encoder embeddings of each class's descriptions (zero-shot, no labels); auto "
        "picks classifier for a model with a classification head, prompt for a causal LM, and "
        "embedding for a sentence-transformers folder or an encoder with no head.",
        choices=["auto", "classifier", "prompt", "embedding"],
    )
    prompt_template: str | list[str] | None = _opt(
        None,
        "Prompt teacher: the text before the label word, with a {text} slot and an optional "
        "{labels} slot (default: a prompt listing the classes, ending 'Category:'). Embedding "
        "teacher: each class description is put into the template's {} slot, e.g. "
        "'A Wikipedia article about a {}.' (default: the bare description). Repeat the "
        "flag for an ensemble: one member per template.",
        repeat=True,
    )
    label_words: str | list[str] | None = _opt(
        None,
        "Prompt teacher: words the LLM should say for each class, as "
        "'EducationalInstitution=School,MeanOfTransportation=Vehicle' or a JSON file (default: "
        "the class names split into words). Repeat the flag for a prompt ensemble: one member "
        "per word set (and per --prompt-template).",
        repeat=True,
    )
    teacher_weights: str | None = _opt(
        None,
        "Teacher ensemble: comma-separated weights, one per member (each --teacher-model, times "
        "each --prompt-template x --label-words set), combined as normalise(sum_k w_k log p_k), "
        "weights scaled to sum 1 (default: equal). agreement: no labels read, each member "
        "weighted by how often its class is the other members' consensus on the texts scored "
        "(the transfer set in distill; needs the teacher cache); with two members that is "
        "equal weights.",
    )
    label_descriptions: str | None = _opt(
        None,
        "Embedding teacher: a JSON file mapping class names to a sentence or a list of "
        "sentences that describe the class (averaged); classes left out are described by their "
        "name split into words.",
    )
    embedding_scale: str = _opt(
        "auto",
        "Embedding teacher: logits = scale x cosine similarity. auto fits the scale on the texts "
        "being scored, no labels read: mean entropy of the softmax at half the uniform's "
        "(with --teacher-cache off: 20, the scale sentence encoders are trained at); a number "
        "fixes it.",
    )
    class_balance: str = _opt(
        "auto",
        "Correct the teacher's class prior on the texts it scores (the transfer set in distill, "
        "the split in eval-teacher), with no labels: Sinkhorn balancing so that its mean "
        "predicted distribution is the --class-prior. auto: on for embedding teachers (measured: "
        "bench/no_labels.py), off for the others; needs the teacher's cache pass "
        "(--teacher-cache not off).",
        choices=["auto", "on", "off"],
    )
    class_prior: str | None = _opt(
        None,
        "The class prior --class-balance matches: 'Company=0.2,Film=0.1', classes left out "
        "sharing the rest equally (default: uniform).",
    )
    few_shot: int = _opt(0, "Prompt teacher: K stratified training examples shown in the prompt.")
    chat_template: bool = _opt(
        False,
        "Prompt teacher: wrap the default prompt in the tokenizer's chat template (off: measured "
        "worse for SmolLM2-135M-Instruct on DBpedia, 19%% vs 45%% calibrated).",
    )
    calibrate: bool = _opt(
        True,
        "Prompt teacher: contextual calibration (Zhao et al. 2021): divide the class "
        "probabilities by those the prompt gives a content-free input, removing the LLM's bias "
        "towards some label words.",
    )
    prefix_cache: str = _opt(
        "auto",
        "Prompt teacher: compute the tokens every prompt shares (few-shot examples, instruction, "
        "label list) once and reuse their keys and values; auto = on when the prompts share a "
        "prefix. The logits are the same either way (not part of the teacher-cache key).",
        choices=["auto", "off"],
    )
    teacher_batch_size: int = _opt(
        64,
        "Batch size of teacher inference (no gradients, so larger than the student's). A prompt "
        "teacher with a long shared prefix runs fewer rows a forward: rows x prefix tokens <= "
        "16,384, as each row holds a copy of the prefix's keys and values.",
    )
    teacher_dtype: str = _opt(
        "auto",
        "Teacher weights' precision: auto = bf16 where the device does it natively, fp16 on "
        "older GPUs, else fp32.",
        choices=["auto", "fp32", "bf16", "fp16"],
    )
    allow_untrained_teacher: bool = _opt(
        False,
        "Use a classifier teacher whose head is newly initialised (its logits are noise).",
    )

    def _check_teacher(self) -> None:
        _check(
            self.class_balance in ("auto", "on", "off"),
            f"--class-balance must be auto, on or off (got {self.class_balance})",
        )
        if str(self.embedding_scale) != "auto":
            try:
                scale = float(self.embedding_scale)
            except (TypeError, ValueError):
                scale = float("nan")
            _check(
                math.isfinite(scale) and scale > 0,
                f"--embedding-scale must be a number > 0 or auto (got {self.embedding_scale!r})",
            )
        _check(self.few_shot >= 0, f"--few-shot must be >= 0 (got {self.few_shot})")
        _check(
            self.prefix_cache in ("auto", "off"),
            f"--prefix-cache must be auto or off (got {self.prefix_cache})",
        )
        _check(
            self.teacher_batch_size >= 1,
            f"--teacher-batch-size must be >= 1 (got {self.teacher_batch_size})",
        )
        templates = self.prompt_template
        for template in templates if isinstance(templates, list) else [templates]:
            _check(
                template is None or any(slot in template for slot in ("{text}", "{}", "{label}")),
                "--prompt-template must contain the {text} slot where the example goes (a prompt "
                "teacher), or the {} slot where a class description goes (an embedding teacher)",
            )
        if self.teacher_weights is not None and self.teacher_weights.strip() != "agreement":
            from kdistill.teachers.ensemble import parse_weights

            n = len(self.teacher_weights.split(","))
            parse_weights(self.teacher_weights, n)  # numbers, >= 0; the count is checked at load


def parse_floats(value: str, flag: str) -> list[float]:
    """'2,3,4' -> [2.0, 3.0, 4.0], or a one-line error naming the flag."""
    try:
        values = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        values = []
    _check(bool(values), f"{flag} must be comma-separated numbers (got {value!r})")
    _check(all(math.isfinite(v) for v in values), f"{flag} values must be finite (got {value!r})")
    return values


# The no-label path (bench/no_labels.py, README "No labels"): a calibrated prompt teacher is
# already flat, T=3 flattens it to near-uniform targets, and a short run with a decaying
# learning rate leaves the student far below its teacher.
# Batch size 16 and learning rate 1e-4 are the bench's (batch size 4 took ~7 min an epoch on
# 2,000 rows here).
NO_LABEL_RECIPE = {
    "alpha": 1.0,
    "temperature": 1.0,
    "epochs": 10,
    "lr_scheduler": "constant",
    "batch_size": 16,
    "learning_rate": 1e-4,
}


def no_label_recipe(config: DistillConfig, labeled_rows: int) -> tuple[DistillConfig, dict]:
    """`config` with NO_LABEL_RECIPE applied when the run has no labelled training rows and
    --no-label-recipe is auto: each value replaces a field left at its default (a flag given
    with another value wins). Returns the config and what changed ({field: (old, new)})."""
    if labeled_rows > 0 or config.no_label_recipe == "off" or not config.unlabeled_data:
        return config, {}
    defaults = {f.name: f.default for f in fields(config)}  # its own class's defaults
    changes = {
        name: (getattr(config, name), value)
        for name, value in NO_LABEL_RECIPE.items()
        if getattr(config, name) == defaults[name] and value != defaults[name]
    }
    if not changes:
        return config, {}
    return replace(config, **{k: new for k, (_, new) in changes.items()}), changes
