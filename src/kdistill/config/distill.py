"""The distill command's config: every flag of a distillation run."""

from __future__ import annotations

from dataclasses import dataclass

from kdistill.config.common import (
    HUB_PUBLIC_HELP,
    PUSH_HELP,
    ConfigBase,
    DataOptions,
    DeviceOptions,
    TeacherOptions,
    TrainingOptions,
    _check,
    _check_finite,
    _check_push_to_hub,
    _check_training,
    _lr_scheduler_opt,
    _opt,
)
from kdistill.config.self_training import SelfTrainingOptions
from kdistill.config.transfer_text import TransferTextOptions
from kdistill.errors import KdistillError


@dataclass
class DistillConfig(
    SelfTrainingOptions,
    TransferTextOptions,
    TeacherOptions,
    TrainingOptions,
    DataOptions,
    DeviceOptions,
    ConfigBase,
):
    """Train a student from a frozen teacher: loss = alpha * T^2 * KL + (1 - alpha) * CE
    + hidden_weight * L_hidden + attention_weight * L_rel (the last two with --hidden-loss and
    --attention-loss)."""

    dataset: str = _opt(
        "dbpedia",
        "Prepared data (data/<name>/ or its path), or anything prepare-data accepts "
        "(then split in memory).",
    )
    teacher_model: str = _opt(
        "models/DeepSeek-R1-Distill-Qwen-1.5B",
        "Teacher: a local folder, Hub id or .gguf file: a classifier trained on these labels, or a "
        "causal LM used as a prompt teacher (see --teacher-mode). Several, comma-separated or "
        "the flag repeated: a teacher ensemble (see --teacher-weights).",
        repeat="join",
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
    temperature: str | float = _opt(
        3.0,
        "Softening temperature T > 0: both distributions are softmax(logits / T); the KL term is "
        "multiplied by T^2 (Hinton et al.) so its gradients keep their size as T changes. auto: "
        "the T in [1, 20] at which the (calibrated) teacher's soft targets on the validation "
        "split have a mean entropy of half the uniform distribution's, log(classes) / 2: its "
        "answer still stands out and the other classes keep enough mass to be learnt from.",
    )
    alpha: float = _opt(
        0.7,
        "Weight of the distillation term in [0, 1]: loss = alpha * T^2 * KL(teacher || student) "
        "+ (1 - alpha) * CE(student, labels). 0 = supervised only, 1 = teacher only.",
    )
    # ---- issue 20: calibrated teacher, intermediate-layer losses (see training/losses.py)
    teacher_calibration: str = _opt(
        "off",
        "auto: fit one temperature T_cal in [0.05, 20] on the validation split by NLL "
        "(temperature scaling) and divide the teacher's logits by it before --temperature, p_t = "
        "softmax(z / (T_cal * T)); a fit on a bound or no better than T = 1 is a one-line "
        "warning; the fit (T_cal, bound hit, NLL at T = 1 and at T_cal) is recorded in "
        "config.json and history.json. A teacher from finetune-teacher is calibrated already "
        "(--calibrate-teacher). off: the raw logits.",
        choices=["auto", "off"],
    )
    calibrate_student: str = _opt(
        "auto",
        "auto: after training, fit one temperature T on the validation split by NLL (bounded to "
        "[0.05, 20]) for best_model/ and for final_model/, each its own, and fold it into the "
        "classification head (its last linear layer's weight and bias divided by T): "
        "predictions unchanged, probabilities that can be thresholded in predict, pipeline() and "
        "ONNX. T and the validation ECE before and after go into config.json, the model card and "
        "the compare report. off: the student's logits as trained.",
        choices=["auto", "off"],
    )
    hidden_loss: str = _opt(
        "none",
        "Also match hidden states on the --layer-map pairs: mse or cosine (1 - cos), through a "
        "learned linear projection where the widths differ (trained with the student, not saved "
        "with it); over real tokens when both models use the same tokenizer, else over "
        "mean-pooled states. Adds hidden_weight * L_hidden to the loss.",
        choices=["none", "mse", "cosine"],
    )
    hidden_weight: float = _opt(1.0, "Weight of the --hidden-loss term, >= 0.")
    layer_map: str = _opt(
        "auto",
        "Student:teacher layer pairs for --hidden-loss, blocks counted from 0 as in "
        "--student-layers, emb = embeddings, e.g. emb:emb,s0:t0,s1:t5. auto: a cut student maps "
        "to the blocks it was cut from; others uniformly, embeddings to embeddings and last to "
        "last. --attention-loss uses the last pair.",
    )
    attention_loss: str = _opt(
        "none",
        "relation: MiniLMv2 self-attention relation distillation on the last --layer-map pair: "
        "KL(teacher || student) of the query-query, key-key and value-value relations, split "
        "into as many relation heads as the two models' head counts share (gcd), so they may "
        "differ. Needs the same tokenizer. Adds attention_weight * L_rel to the loss.",
        choices=["none", "relation"],
    )
    attention_weight: float = _opt(1.0, "Weight of the --attention-loss term, >= 0.")
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
    gradient_checkpointing: str = _opt(
        "auto",
        "Recompute activations to save memory: auto turns it on for students over 100M "
        "parameters, where activation memory matters, and off for small ones where it only costs "
        "time.",
        choices=["auto", "on", "off"],
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
    student_lora: int = _opt(
        0,
        "LoRA rank for the student (peft): 0 trains every weight; R trains rank-R adapters on "
        "the attention projections and the new head, folded into the weights on save. For a "
        "student whose AdamW state does not fit (a 0.5B model needs about 8 GB); adapters learn "
        "best at a higher --learning-rate (5e-4).",
    )
    trim_vocab: str = _opt(
        "auto",
        "Cut the student's vocabulary to the tokens of its training, transfer and validation text "
        "(plus special tokens), remapping embedding rows and tokenizer together: auto trims a "
        "random-init student with a WordPiece tokenizer; on trims any WordPiece student (a "
        "pretrained or layer-cut one too); off keeps it whole. A token unseen at inference maps "
        "to the unknown token.",
        choices=["auto", "on", "off"],
    )
    keep_top_tokens: int = _opt(
        0,
        "With a trimmed vocabulary, also keep this many of the tokenizer's most frequent tokens "
        "(its lowest ids), for inference text the data did not show.",
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
    no_label_recipe: str = _opt(
        "auto",
        "With no labelled training rows (a transfer set taught by the teacher alone): auto trains "
        "with the recipe measured to let the student reach its teacher (--alpha 1, --temperature "
        "1, --epochs 10, --lr-scheduler constant, --batch-size 16, --learning-rate 1e-4), each "
        "where its flag is left at its default; "
        "off keeps the flags as given.",
        choices=["auto", "off"],
    )
    label_names: str | None = _opt(
        None,
        "Class names, 'A,B,C' or a JSON file (a list, or an object whose keys are the names): "
        "--dataset is then text without labels (a CSV/JSONL/Parquet with a text column), all of "
        "it the transfer set. With no labelled row anywhere the epoch is picked by agreement "
        "with the teacher on a held-out tenth of the texts (at most 500 rows).",
    )
    seeds: str | None = _opt(
        None,
        "Comma-separated seeds, e.g. 1,2,3: one run per seed (each as --seed would train it), "
        "grouped in one folder with seeds.json giving the mean and standard deviation of the "
        "best validation accuracy; the gap between two settings means little inside that spread.",
    )

    def __post_init__(self) -> None:
        if self.temperature != "auto":
            try:
                self.temperature = float(self.temperature)
            except (TypeError, ValueError):
                raise KdistillError(
                    f"--temperature must be a number > 0 or auto (got {self.temperature!r})"
                ) from None
        _check_finite(self)
        self.seed_list()
        _check(self.student_lora >= 0, f"--student-lora must be >= 0 (got {self.student_lora})")
        self._check_round_targets()
        _check(self.save_steps >= 0, f"--save-steps must be >= 0 (got {self.save_steps})")
        _check(
            not (self.resume and self.resume_from),
            "--resume and --resume-from: pass one of them, not both",
        )
        _check(0.0 <= self.alpha <= 1.0, f"--alpha must be in [0, 1] (got {self.alpha})")
        _check(
            self.head_learning_rate_scale > 0,
            f"--head-learning-rate-scale must be > 0 (got {self.head_learning_rate_scale})",
        )
        self._check_teacher_losses()
        _check_training(self)
        self._check_teacher()
        _check(
            not (str(self.teacher_weights).strip() == "agreement" and self.teacher_cache == "off"),
            "--teacher-weights agreement fits the weights on the whole transfer set, which "
            "--teacher-cache off never scores at once; drop --teacher-cache off",
        )
        _check(
            self.student_layers is None or self.student_num_layers is None,
            "--student-layers and --student-num-layers: pass one of them, not both",
        )
        _check(
            self.keep_top_tokens >= 0,
            f"--keep-top-tokens must be >= 0 (got {self.keep_top_tokens})",
        )
        self._check_unlabeled()
        self._check_transfer_text(self.alpha)
        _check_push_to_hub(self.push_to_hub)

    def _check_teacher_losses(self) -> None:
        """--temperature, --teacher-calibration and the intermediate-layer losses."""
        from kdistill.training.layer_map import parse_layer_map

        _check(
            self.temperature == "auto" or self.temperature > 0,
            f"--temperature must be > 0 or auto (got {self.temperature})",
        )
        _check(
            not (self.temperature == "auto" and self.seeds),
            "--temperature auto with --seeds: pass a number (each seed's run would pick its own)",
        )
        for flag, value, allowed in (
            ("--teacher-calibration", self.teacher_calibration, ("auto", "off")),
            ("--calibrate-student", self.calibrate_student, ("auto", "off")),
            ("--hidden-loss", self.hidden_loss, ("none", "mse", "cosine")),
            ("--attention-loss", self.attention_loss, ("none", "relation")),
        ):
            _check(value in allowed, f"{flag} must be one of {', '.join(allowed)} (got {value})")
        for flag, weight in (
            ("--hidden-weight", self.hidden_weight),
            ("--attention-weight", self.attention_weight),
        ):
            _check(weight >= 0, f"{flag} must be >= 0 (got {weight})")
        if self.layer_map.strip().lower() != "auto":
            parse_layer_map(self.layer_map, 1 << 20, 1 << 20)  # syntax now, ranges once loaded
        if self.alpha == 0:
            for flag, value in (
                ("--hidden-loss", self.hidden_loss),
                ("--attention-loss", self.attention_loss),
            ):
                _check(
                    value == "none",
                    f"{flag} {value} needs the teacher, and --alpha 0 trains without one; "
                    "pass --alpha > 0",
                )

    def uses_intermediate(self) -> bool:
        """Whether the loss reads hidden states or attention inputs (an online teacher pass)."""
        return (self.hidden_loss != "none" and self.hidden_weight > 0) or (
            self.attention_loss != "none" and self.attention_weight > 0
        )

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
