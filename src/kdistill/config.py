"""One plain dataclass per command. Field `help` metadata is the `--help` text; `__post_init__`
checks ranges so a bad value fails before any model is loaded, with one line naming the flag."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kdistill.errors import KdistillError

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
    test_split: float = _opt(
        0.0,
        "Share of train held out as a stratified test split when the source has none (0 = none): "
        "compare then reports on rows no model was trained or selected on.",
    )
    labeled_fraction: float = _opt(
        1.0,
        "Share of train that keeps its labels, stratified, in [0, 1] (after the validation and "
        "test splits are made): the rest is written as unlabeled.parquet (text only, for distill "
        "--unlabeled-data) with its labels aside in unlabeled_labels.parquet, for evaluation "
        "only. Simulates scarce labels; 0 = no labelled training rows.",
    )
    data_dir: str = _opt("data", "Parent folder; the prepared data lands in <data-dir>/<name>/.")
    name: str | None = _opt(None, "Folder name under --data-dir (default: from --dataset).")
    seed: int = _opt(42, "Seed of the validation, test and labelled-fraction splits.")

    def __post_init__(self) -> None:
        _check_finite(self)
        _check_folder_name(self.name, "--name", "--data-dir")
        _check_validation_split(self.validation_split)
        _check(
            0.0 <= self.labeled_fraction <= 1.0,
            f"--labeled-fraction must be in [0, 1] (got {self.labeled_fraction})",
        )
        _check(
            0.0 <= self.test_split < 1.0, f"--test-split must be in [0, 1) (got {self.test_split})"
        )
        _check(
            self.validation_split + self.test_split < 1.0,
            "--validation-split + --test-split must leave rows to train on (sum < 1)",
        )


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
        "label words with a causal LM (zero/few-shot); auto picks classifier for a model with a "
        "classification head and prompt for a causal LM.",
        choices=["auto", "classifier", "prompt"],
    )
    prompt_template: str | None = _opt(
        None,
        "Prompt teacher: the text before the label word, with a {text} slot and an optional "
        "{labels} slot (default: a prompt listing the classes, ending 'Category:').",
    )
    label_words: str | None = _opt(
        None,
        "Prompt teacher: words the LLM should say for each class, as "
        "'EducationalInstitution=School,MeanOfTransportation=Vehicle' or a JSON file (default: "
        "the class names split into words).",
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
        64, "Batch size of teacher inference (no gradients, so larger than the student's)."
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
        _check(self.few_shot >= 0, f"--few-shot must be >= 0 (got {self.few_shot})")
        _check(
            self.prefix_cache in ("auto", "off"),
            f"--prefix-cache must be auto or off (got {self.prefix_cache})",
        )
        _check(
            self.teacher_batch_size >= 1,
            f"--teacher-batch-size must be >= 1 (got {self.teacher_batch_size})",
        )
        if self.prompt_template is not None:
            _check(
                "{text}" in self.prompt_template,
                "--prompt-template must contain the {text} slot where the example goes",
            )


@dataclass
class DistillConfig(TeacherOptions):
    """Train a student from a frozen teacher: loss = alpha * T^2 * KL + (1 - alpha) * CE."""

    dataset: str = _opt(
        "dbpedia",
        "Prepared data (data/<name>/ or its path), or anything prepare-data accepts "
        "(then split in memory).",
    )
    teacher_model: str = _opt(
        "models/DeepSeek-R1-Distill-Qwen-1.5B",
        "Teacher: a local folder, Hub id or .gguf file: a classifier trained on these labels, or a "
        "causal LM used as a prompt teacher (see --teacher-mode).",
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
    unlabeled_data: str | None = _opt(
        None,
        "Text without labels for the student to learn from the teacher alone (a transfer set): "
        "a local CSV/JSONL/Parquet file or folder (e.g. data/<name>/unlabeled.parquet from "
        "prepare-data --labeled-fraction) or a Hub data set id. Its rows get the KD term only, "
        "T^2 * KL; the teacher's logits for them are cached like the labelled rows'.",
    )
    unlabeled_text_column: str = _opt(
        "text", "Text column of --unlabeled-data; comma-separated columns are joined."
    )
    max_unlabeled_samples: int | None = _opt(
        None, "Random subsample of --unlabeled-data (seeded by --seed)."
    )
    unlabeled_ratio: float | None = _opt(
        None,
        "Share of each training batch that is unlabelled, in [0, 1): an epoch is then one pass "
        "over the labelled rows, unlabelled rows drawn without replacement (cycling) to fill "
        "each batch. Default: the natural proportion, every labelled and unlabelled row once "
        "per epoch, spread evenly over the batches.",
    )
    learning_rate: float = _opt(5e-5, "Peak learning rate of AdamW (warm-up, then --lr-scheduler).")
    weight_decay: float = _opt(0.01, "AdamW weight decay.")
    warmup_ratio: float = _opt(0.1, "Share of optimisation steps spent warming up, in [0, 1).")
    lr_scheduler: str = _lr_scheduler_opt(
        "constant_with_warmup",
        " Distillation's default holds the peak after the warm-up: on short runs a decay to 0 "
        "leaves the student undertrained (bench/intermediate.py, README).",
    )
    head_learning_rate_scale: float = _opt(
        1.0,
        "The student's classification head (new, random weights) learns at --learning-rate "
        "times this; the pretrained body at --learning-rate.",
    )
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
    group_by_length: bool = _opt(
        False,
        "Batch training examples of similar token length (shuffled groups of batches): less "
        "padding, but where length goes with the class (DBpedia) the batches are less mixed "
        "and accuracy can drop a few points, so it is off unless padding dominates.",
    )
    compile: bool = _opt(False, "torch.compile the student (helps on some GPUs; slow to start).")
    allow_weak_teacher: bool = _opt(
        False,
        "Distil from a teacher whose validation accuracy is at or below chance (refused "
        "otherwise: its soft targets would teach the student noise).",
    )
    student_layers: str | None = _opt(
        None,
        "Keep only these transformer layers of a pretrained student, e.g. 0,5 (DistilBERT-style: "
        "a small student that starts from real weights).",
    )
    student_num_layers: int | None = _opt(
        None, "Keep this many evenly spaced layers of a pretrained student (first and last kept)."
    )
    report_to: str = _opt(
        "none",
        "Also log metrics to an experiment tracker through Accelerate (tensorboard writes "
        "event files into the run directory; wandb and mlflow need their package installed).",
        choices=["none", "tensorboard", "wandb", "mlflow"],
    )
    save_steps: int = _opt(
        0,
        "Also checkpoint the training state every this many batches (0: only at the end of "
        "each epoch). The run directory keeps the latest checkpoint only.",
    )
    resume: bool = _opt(
        False,
        "Continue the latest unfinished run of this configuration under --output-dir from its "
        "checkpoint (a new run when there is none).",
    )
    resume_from: str | None = _opt(
        None,
        "Continue this run directory (its .partial folder) from its checkpoint; the other flags "
        "must be the ones it was started with.",
    )
    push_to_hub: str | None = _opt(None, PUSH_HELP + " distill pushes best_model/.")
    hub_public: bool = _opt(False, HUB_PUBLIC_HELP)
    seeds: str | None = _opt(
        None,
        "Comma-separated seeds, e.g. 1,2,3: one run per seed (each as --seed would train it), "
        "grouped in one folder with seeds.json giving the mean and standard deviation of the "
        "best validation accuracy; the gap between two settings means little inside that spread.",
    )

    def __post_init__(self) -> None:
        _check_finite(self)
        self.seed_list()
        _check(self.save_steps >= 0, f"--save-steps must be >= 0 (got {self.save_steps})")
        _check(
            not (self.resume and self.resume_from),
            "--resume and --resume-from: pass one of them, not both",
        )
        _check(self.temperature > 0, f"--temperature must be > 0 (got {self.temperature})")
        _check(0.0 <= self.alpha <= 1.0, f"--alpha must be in [0, 1] (got {self.alpha})")
        _check(
            self.head_learning_rate_scale > 0,
            f"--head-learning-rate-scale must be > 0 (got {self.head_learning_rate_scale})",
        )
        _check_training(self)
        self._check_teacher()
        _check(
            self.student_layers is None or self.student_num_layers is None,
            "--student-layers and --student-num-layers: pass one of them, not both",
        )
        self._check_unlabeled()
        _check_push_to_hub(self.push_to_hub)

    def _check_unlabeled(self) -> None:
        _check(
            self.max_unlabeled_samples is None or self.max_unlabeled_samples >= 1,
            f"--max-unlabeled-samples must be >= 1 (got {self.max_unlabeled_samples})",
        )
        _check(
            self.unlabeled_ratio is None or 0.0 <= self.unlabeled_ratio < 1.0,
            f"--unlabeled-ratio must be in [0, 1) (got {self.unlabeled_ratio})",
        )
        if self.unlabeled_data is None:
            for flag, value in (
                ("--max-unlabeled-samples", self.max_unlabeled_samples),
                ("--unlabeled-ratio", self.unlabeled_ratio),
            ):
                _check(value is None, f"{flag} needs --unlabeled-data (the unlabelled text)")
        if self.unlabeled_ratio:
            per_batch = round(self.unlabeled_ratio * self.batch_size)
            _check(
                0 < per_batch < self.batch_size,
                f"--unlabeled-ratio {self.unlabeled_ratio} with --batch-size {self.batch_size} "
                f"gives {per_batch} unlabelled rows per batch; choose a ratio and batch size that "
                "leave both kinds of row in each batch",
            )
        if self.unlabeled_data is not None:
            _check(
                not self.group_by_length,
                "--group-by-length and --unlabeled-data: batches mix labelled and unlabelled "
                "rows, not rows of similar length; drop --group-by-length",
            )

    def seed_list(self) -> list[int]:
        """--seeds as integers, or [--seed] without it."""
        if self.seeds is None:
            return [self.seed]
        try:
            seeds = [int(v) for v in str(self.seeds).split(",") if v.strip()]
        except ValueError:
            seeds = []
        _check(bool(seeds), f"--seeds must be comma-separated integers (got {self.seeds!r})")
        _check(len(set(seeds)) == len(seeds), f"--seeds lists a seed twice (got {self.seeds!r})")
        return seeds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneConfig(LoadOptions):
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
    learning_rate: float | None = _opt(
        None,
        "Peak AdamW learning rate, warm-up then --lr-scheduler (default: 5e-5 full, 5e-4 LoRA).",
    )
    weight_decay: float = _opt(0.01, "AdamW weight decay.")
    warmup_ratio: float = _opt(0.1, "Share of optimisation steps spent warming up, in [0, 1).")
    lr_scheduler: str = _lr_scheduler_opt()
    seed: int = _opt(42, "Seed for sampling, shuffling and the new head.")
    method: str = _opt(
        "full",
        "full trains every weight; lora trains low-rank adapters (peft) and the new head, then "
        "merges them into the weights on save, so the result loads as a plain classifier.",
        choices=["full", "lora"],
    )
    lora_r: int = _opt(8, "LoRA rank.")
    lora_alpha: float = _opt(16.0, "LoRA scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = _opt(0.05, "Dropout on the LoRA branch, in [0, 1).")
    target_modules: str | None = _opt(
        None,
        "Comma-separated module names that get adapters (default: q_proj,k_proj,v_proj,o_proj "
        "for Qwen2/Llama, query,key,value for BERT-family).",
    )
    gradient_accumulation_steps: int = _opt(1, "Micro-batches per optimiser step.")
    gradient_checkpointing: str = _opt(
        "auto", "auto: on for models over 100M parameters.", choices=["auto", "on", "off"]
    )
    mixed_precision: str = _opt(
        "auto",
        "auto: bf16 where supported, fp16 on older GPUs, else no.",
        choices=["auto", "no", "fp16", "bf16"],
    )
    device: str = _opt(
        "auto", "auto: cuda, then mps, then cpu.", choices=["auto", "cuda", "mps", "cpu"]
    )
    eval_batch_size: int | None = _opt(None, "Batch size for evaluation (default: 4x batch-size).")
    data_dir: str = _opt("data", "Where prepared data sets live.")
    text_column: str | None = _opt(None, "Text column when --dataset is not prepared yet.")
    label_column: str | None = _opt(None, "Label column when --dataset is not prepared yet.")
    validation_split: float = _opt(0.2, "Validation share when --dataset has no validation split.")
    push_to_hub: str | None = _opt(None, PUSH_HELP)
    hub_public: bool = _opt(False, HUB_PUBLIC_HELP)

    def __post_init__(self) -> None:
        _check_push_to_hub(self.push_to_hub)
        if self.learning_rate is None:
            # Adapters start at zero and move few weights: they need a larger step than full
            # fine-tuning to learn in the same epochs.
            self.learning_rate = 5e-4 if self.method == "lora" else 5e-5
        _check_training(self)
        _check_folder_name(self.name, "--name", "--output-dir")
        _check(self.lora_r >= 1, f"--lora-r must be >= 1 (got {self.lora_r})")
        _check(self.lora_alpha > 0, f"--lora-alpha must be > 0 (got {self.lora_alpha})")
        _check(
            0.0 <= self.lora_dropout < 1.0,
            f"--lora-dropout must be in [0, 1) (got {self.lora_dropout})",
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalTeacherConfig(TeacherOptions):
    """Measure a teacher before distilling from it: accuracy, macro-F1, per-class accuracy and
    calibration (ECE) on a split, in any --teacher-mode."""

    teacher_model: str = _opt(
        "models/DeepSeek-R1-Distill-Qwen-1.5B",
        "Teacher: a local folder, Hub id or .gguf file (classifier or causal LM), or a distill "
        "run directory: its teacher, asked as it taught (prompt, few-shot examples), on its split.",
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
    seed: int = _opt(42, "Seed for subsampling and few-shot examples.")
    device: str = _opt(
        "auto", "auto: cuda, then mps, then cpu.", choices=["auto", "cuda", "mps", "cpu"]
    )
    mixed_precision: str = _opt(
        "auto",
        "auto: bf16 where supported, fp16 on older GPUs, else no.",
        choices=["auto", "no", "fp16", "bf16"],
    )
    data_dir: str = _opt("data", "Where prepared data sets live.")
    text_column: str | None = _opt(None, "Text column when --dataset is not prepared yet.")
    label_column: str | None = _opt(None, "Label column when --dataset is not prepared yet.")
    validation_split: float = _opt(0.2, "Validation share when --dataset has no validation split.")

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_floats(value: str, flag: str) -> list[float]:
    """'2,3,4' -> [2.0, 3.0, 4.0], or a one-line error naming the flag."""
    try:
        values = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        values = []
    _check(bool(values), f"{flag} must be comma-separated numbers (got {value!r})")
    _check(all(math.isfinite(v) for v in values), f"{flag} values must be finite (got {value!r})")
    return values


@dataclass
class SweepConfig(DistillConfig):
    """Distil once per (temperature, alpha) pair, reusing the teacher's logits, and name the best:
    sweep.json and a heatmap of validation accuracy over T x alpha. Takes every distill flag."""

    temperature: str = _opt(  # type: ignore[assignment]
        "2,3,4", "Comma-separated temperatures T > 0 to try."
    )
    alpha: str = _opt(  # type: ignore[assignment]
        "0.5,0.7,0.9", "Comma-separated alphas in [0, 1] to try."
    )
    output_dir: str = _opt(
        "outputs/sweeps",
        "Parent folder: the sweep gets <dataset>_sweep_<YYYYMMDD_HHMMSS>/ with one run per "
        "grid point inside.",
    )
    lockstep: str = _opt(
        "auto",
        "Train the grid's students together over the same batches, their weights stacked, so "
        "each step does every point's work in one launch per operator; every point still gets "
        "its own run folder, clipping, best epoch and models. auto: where it fits in memory and "
        "the options allow it (else the points train in turn, with a warning saying why); on: "
        "always, an error where the options do not allow it; off: one point after another.",
        choices=["auto", "on", "off"],
    )

    def __post_init__(self) -> None:
        _check(
            self.push_to_hub is None,
            "--push-to-hub: a sweep trains one student per grid "
            "point; rerun the best point with distill --push-to-hub, or upload its best_model/ "
            "with `hf upload`",
        )
        for t in self.temperature_list():
            _check(t > 0, f"--temperature values must be > 0 (got {t})")
        for a in self.alpha_list():
            _check(0.0 <= a <= 1.0, f"--alpha values must be in [0, 1] (got {a})")
        _check(
            not (self.resume or self.resume_from),
            "--resume and --resume-from continue one distill run; resume a sweep's unfinished "
            "point with kdistill distill --resume-from <its run directory>",
        )
        self.run_config(self.temperature_list()[0], self.alpha_list()[0])  # the other ranges

    def temperature_list(self) -> list[float]:
        return parse_floats(str(self.temperature), "--temperature")

    def alpha_list(self) -> list[float]:
        return parse_floats(str(self.alpha), "--alpha")

    def run_config(
        self,
        temperature: float,
        alpha: float,
        output_dir: str | None = None,
        seed: int | None = None,
    ) -> DistillConfig:
        """The distill config of one grid point."""
        values = {f.name: getattr(self, f.name) for f in fields(DistillConfig)}
        values.update(
            temperature=temperature, alpha=alpha, output_dir=output_dir or self.output_dir
        )
        if seed is not None:  # one run of --seeds: it is the run --seed <seed> makes
            values.update(seed=seed, seeds=None)
        return DistillConfig(**values)


@dataclass
class CompareConfig(TeacherOptions):
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
        "only for students of the same student flags, data set, labelled rows, epochs and max "
        "length; for others the differences are listed instead.",
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
    device: str = _opt(
        "auto", "auto: cuda, then mps, then cpu.", choices=["auto", "cuda", "mps", "cpu"]
    )
    mixed_precision: str = _opt(
        "auto",
        "auto: bf16 where supported, fp16 on older GPUs, else no.",
        choices=["auto", "no", "fp16", "bf16"],
    )
    data_dir: str = _opt("data", "Where prepared data sets live.")
    text_column: str | None = _opt(None, "Text column when --dataset is not prepared yet.")
    label_column: str | None = _opt(None, "Label column when --dataset is not prepared yet.")
    validation_split: float = _opt(0.2, "Validation share when --dataset has no validation split.")

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


@dataclass
class PredictConfig:
    """Label new text with a trained classifier: a student or teacher folder, a distill run
    directory (its best_model/), or an exported ONNX folder or .onnx file. One JSON line per
    row: the label, its probability and the class probabilities."""

    model: str | None = _opt(
        None, "Model folder, distill run directory, ONNX export folder or .onnx file."
    )
    text: str | None = _opt(None, "One text to label (prints its prediction).")
    input: str | None = _opt(
        None,
        "File of texts: .csv/.tsv, .jsonl/.json, .parquet (--text-column) or .txt (one a line).",
    )
    output: str | None = _opt(
        None, "Write the predictions here as JSON lines (default: standard output)."
    )
    text_column: str = _opt(
        "text", "Text column of --input; comma-separated columns are joined, as in training."
    )
    batch_size: int = _opt(32, "Rows per forward pass (rows of similar length are batched).")
    top_k: int | None = _opt(None, "Keep only the K most probable classes per row (default: all).")
    max_length: int = _opt(
        128, "Maximum tokens per text; use the --max-length the model was trained with."
    )
    device: str = _opt(
        "auto", "auto: cuda, then mps, then cpu.", choices=["auto", "cuda", "mps", "cpu"]
    )
    mixed_precision: str = _opt(
        "auto",
        "auto: bf16 where supported, fp16 on older GPUs, else no (ONNX: always fp32).",
        choices=["auto", "no", "fp16", "bf16"],
    )

    def __post_init__(self) -> None:
        _check(bool(self.model), "--model: pass the model folder to predict with")
        _check(
            (self.text is None) != (self.input is None),
            'pass --text "..." or --input FILE (one of them)',
        )
        _check(self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})")
        _check(self.top_k is None or self.top_k >= 1, f"--top-k must be >= 1 (got {self.top_k})")
        _check(self.max_length >= 2, f"--max-length must be >= 2 (got {self.max_length})")
        _check(bool(self.text_column.strip()), "--text-column must name a column")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExportConfig:
    """Export a classifier to ONNX (and optionally a dynamic-int8 copy), check that the exported
    model predicts what the torch model does on real rows, and time each: export_report.json."""

    model: str | None = _opt(None, "Model folder or distill run directory (its best_model/).")
    format: str = _opt("onnx", "Export format.", choices=["onnx"])
    quantize: str | None = _opt(
        None,
        "Also write model_quantized.onnx: dynamic-int8 stores weights as int8 and quantises "
        "activations on the fly (smaller, usually faster on CPU; checked like the fp32 file).",
        choices=["dynamic-int8"],
    )
    output_dir: str | None = _opt(
        None, "Folder to write (default: <run>/onnx for a run, else <model folder>-onnx)."
    )
    min_agreement: float = _opt(
        0.99,
        "Refuse the export (exit 2, report kept) when an exported model's predictions agree with "
        "the torch model's on fewer than this share of the parity rows, in [0, 1].",
    )
    dataset: str | None = _opt(
        None,
        "Real rows for the parity check (prepared data, or anything prepare-data accepts); "
        "default: the data set the run or teacher was trained on.",
    )
    split: str = _opt(
        "validation", "Split whose rows are checked.", choices=["validation", "test", "train"]
    )
    max_samples: int = _opt(500, "Parity rows (a stratified subsample of the split).")
    max_length: int = _opt(128, "Maximum tokens per text.")
    opset: int = _opt(18, "ONNX opset version.")
    batch_size: int = _opt(32, "Batch size of the parity pass and of the throughput timing.")
    latency_rows: int = _opt(32, "Rows timed one at a time for latency at batch 1.")
    repeats: int = _opt(3, "Timed repeats of each speed measurement, after a warm-up.")
    threads: int | None = _opt(
        None,
        "Threads per model for the timing, the same for torch and onnxruntime (default: torch's, "
        "one per core); 1 gives steadier numbers on a CPU shared with other work.",
    )
    seed: int = _opt(42, "Seed for subsampling.")
    data_dir: str = _opt("data", "Where prepared data sets live.")
    text_column: str | None = _opt(None, "Text column when --dataset is not prepared yet.")
    label_column: str | None = _opt(None, "Label column when --dataset is not prepared yet.")
    validation_split: float = _opt(0.2, "Validation share when --dataset has no validation split.")
    push_to_hub: str | None = _opt(None, PUSH_HELP + " export pushes the ONNX folder.")
    hub_public: bool = _opt(False, HUB_PUBLIC_HELP)

    def __post_init__(self) -> None:
        _check(bool(self.model), "--model: pass the model folder or run directory to export")
        _check(
            0.0 <= self.min_agreement <= 1.0,
            f"--min-agreement must be in [0, 1] (got {self.min_agreement})",
        )
        for flag, value in (
            ("--max-samples", self.max_samples),
            ("--batch-size", self.batch_size),
            ("--latency-rows", self.latency_rows),
            ("--repeats", self.repeats),
        ):
            _check(value >= 1, f"{flag} must be >= 1 (got {value})")
        _check(self.max_length >= 2, f"--max-length must be >= 2 (got {self.max_length})")
        _check(self.opset >= 14, f"--opset must be >= 14 (got {self.opset})")
        _check(
            self.threads is None or self.threads >= 1,
            f"--threads must be >= 1 (got {self.threads})",
        )
        _check_validation_split(self.validation_split)
        _check_push_to_hub(self.push_to_hub)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
