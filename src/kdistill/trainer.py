"""A kdistill teacher inside an existing transformers.Trainer script (TRL style): swap
`TrainingArguments` for `DistillationArguments` and `Trainer` for `DistillationTrainer`.

    args = DistillationArguments(output_dir="out", teacher_model="models/minilm-dbpedia",
                                 temperature=3.0, alpha=0.7, num_train_epochs=3)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=train,
                                  eval_dataset=val, processing_class=tokenizer)
    trainer.train()
    run_dir = trainer.save_run("dbpedia")     # a folder kdistill predict / compare / runs read

Only the loss differs from the Trainer's: `kd_loss` (alpha * T^2 * KL + (1 - alpha) * CE, T^2 *
KL for rows labelled -100) against the teacher's logits, computed once for every training row
when the trainer is built (the teacher-logit cache of `kdistill distill`) and looked up by row.
The training set must be a datasets.Dataset that keeps its raw `text` column beside the
student's tokenised columns: the teacher reads the text with its own tokenizer or prompt. The
trainer adds a `kd_row` column (each row's index) that survives `remove_unused_columns` and is
taken out of the features before your collator sees them, then passed on as `inputs["kd_row"]`.
Evaluation reports the student's cross-entropy, the `val_loss` of `kdistill distill`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainingArguments

from kdistill.api import CACHE_MODES, DTYPES, MODES, load_teacher
from kdistill.api import teacher_logits as compute_teacher_logits
from kdistill.errors import KdistillError
from kdistill.teachers.classifier import Teacher
from kdistill.trainer_run import save_trainer_run, student_label_names
from kdistill.training.losses import kd_loss

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

ROW = "kd_row"  # the column that ties a training row to its cached teacher logits


def _help(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class DistillationArguments(TrainingArguments):
    """TrainingArguments plus the distillation settings of `kdistill distill`."""

    temperature: float = _help(
        3.0, "Softening temperature T > 0; the KL term is multiplied by T^2 (Hinton et al.)."
    )
    alpha: float = _help(
        0.7,
        "Weight of the distillation term in [0, 1]: alpha * T^2 * KL + (1 - alpha) * CE; "
        "0 = labels only, 1 = teacher only.",
    )
    teacher_model: str | None = _help(
        None,
        "Teacher folder, Hub id or .gguf, loaded with the student's label names (its "
        "config.id2label) unless a teacher is passed to the trainer.",
    )
    teacher_mode: str = _help("auto", "classifier, prompt, or auto (by the model's head).")
    teacher_dtype: str = _help("fp32", "Teacher weights' precision: fp32, bf16 or fp16.")
    prompt_template: str | None = _help(None, "Prompt teacher: text with a {text} slot.")
    label_words: str | None = _help(None, "Prompt teacher: 'Class=word,...' or a JSON file.")
    few_shot: int = _help(0, "Prompt teacher: K stratified training examples in the prompt.")
    calibrate: bool = _help(True, "Prompt teacher: contextual calibration.")
    chat_template: bool = _help(False, "Prompt teacher: wrap the prompt in the chat template.")
    allow_untrained_teacher: bool = _help(False, "Use a classifier teacher with a fresh head.")
    teacher_max_length: int = _help(128, "Maximum tokens per text for the teacher.")
    teacher_batch_size: int = _help(64, "Batch size of the teacher's one inference pass.")
    teacher_cache: str = _help(
        "auto",
        "memory, disk (also saved, keyed as kdistill distill keys it) or auto (a matching "
        "disk entry is reused, else memory).",
    )
    teacher_cache_dir: str | None = _help(None, "Folder of the disk cache.")
    text_column: str = _help("text", "The training set's raw text column, read by the teacher.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.temperature < float("inf"):
            raise KdistillError(f"temperature must be a finite number > 0 (got {self.temperature})")
        if not 0.0 <= self.alpha <= 1.0:
            raise KdistillError(f"alpha must be in [0, 1] (got {self.alpha})")
        for name, value, allowed in (
            ("teacher_mode", self.teacher_mode, MODES),
            ("teacher_dtype", self.teacher_dtype, tuple(DTYPES)),
            ("teacher_cache", self.teacher_cache, CACHE_MODES),
        ):
            if value not in allowed:
                raise KdistillError(f"{name}={value!r}: pass one of {', '.join(allowed)}")
        if self.teacher_max_length < 2 or self.teacher_batch_size < 1:
            raise KdistillError("teacher_max_length must be >= 2 and teacher_batch_size >= 1")


class RowCollator:
    """Takes the raw text and the row index out of each feature, so the wrapped collator (yours,
    or the Trainer's default) sees only what it knows, then adds the rows back as a tensor."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]], text: str):
        self.collator = collator
        self.text = text

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [f.get(ROW) for f in features]
        stripped = [{k: v for k, v in f.items() if k not in (ROW, self.text)} for f in features]
        batch = self.collator(stripped)
        if all(r is not None for r in rows):
            batch[ROW] = torch.tensor(rows, dtype=torch.long)
        return batch


class DistillationTrainer(Trainer):
    """transformers.Trainer whose training loss is kdistill's `kd_loss` against a frozen teacher.

    `teacher` is a kdistill teacher (`kdistill.load_teacher`); without one, `args.teacher_model`
    is loaded with the student's label names. `teacher_logits` instead gives the targets
    directly: a (len(train_dataset), num_labels) tensor, row i for training row i. Everything
    else is the Trainer's: optimiser, schedule, accumulation, devices, checkpoints, callbacks.
    """

    # kd_loss is a per-batch mean: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        args: DistillationArguments | None = None,
        teacher: Teacher | None = None,
        teacher_logits: torch.Tensor | None = None,
        train_dataset: Dataset | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, DistillationArguments):
            raise KdistillError("DistillationTrainer needs args=DistillationArguments(...)")
        if model is None or train_dataset is None:
            raise KdistillError("DistillationTrainer needs the student (model=) and train_dataset=")
        label_names = student_label_names(model)
        if teacher is None and teacher_logits is None:
            teacher = teacher_from_arguments(args, label_names, train_dataset)
        train_dataset = with_row_index(train_dataset, args.text_column, teacher_logits is None)
        super().__init__(model=model, args=args, train_dataset=train_dataset, **kwargs)
        self.teacher = teacher
        self.data_collator = RowCollator(self.data_collator, args.text_column)
        # The row index must reach compute_loss whatever remove_unused_columns says, and the
        # loss is ours: the model is not given num_items_in_batch.
        self._set_signature_columns_if_needed()
        self._signature_columns.append(ROW)
        self.model_accepts_loss_kwargs = False
        if teacher_logits is None:
            texts = list(train_dataset[args.text_column])
            teacher_logits = compute_teacher_logits(
                teacher,
                texts,
                max_length=args.teacher_max_length,
                batch_size=args.teacher_batch_size,
                cache=args.teacher_cache,
                cache_dir=args.teacher_cache_dir,
                accelerator=self.accelerator,
            )
            teacher.to(torch.device("cpu"))  # its logits are all training needs from it now
        expected = (len(train_dataset), len(label_names))
        if tuple(teacher_logits.shape) != expected:
            raise KdistillError(
                f"teacher_logits has shape {tuple(teacher_logits.shape)}; the training set and "
                f"the student's classes need {expected} (row i for training row i)"
            )
        self.teacher_logits = teacher_logits.float().cpu()

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Training: kd_loss(student, cached teacher logits of the batch's rows, labels, T,
        alpha). Evaluation: the student's cross-entropy on its labelled rows. The loss is a
        mean over the batch's rows, whatever `num_items_in_batch` says."""
        inputs = dict(inputs)  # prediction_step reads the labels from the caller's dict
        rows = inputs.pop(ROW, None)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits  # (batch, num_labels)
        if model.training:
            if rows is None:
                raise KdistillError(
                    f"a training batch came without its {ROW!r} column; pass the data set to "
                    "DistillationTrainer(train_dataset=...) so it can add it"
                )
            targets = self.teacher_logits.index_select(0, rows.cpu()).to(logits.device)
            loss = kd_loss(logits, targets, labels, self.args.temperature, self.args.alpha).loss
        else:
            labelled = labels >= 0
            loss = torch.nn.functional.cross_entropy(logits[labelled].float(), labels[labelled])
        return (loss, outputs) if return_outputs else loss

    def save_run(self, dataset: str = "data") -> Path:
        """Write the student as a `kdistill distill` run directory under args.output_dir:
        `<dataset>_T<T>_A<alpha>_<time>/` with config.json, history.json, best_model/ (the
        student as it is now, with its tokenizer and model card; the best checkpoint's weights
        with load_best_model_at_end) and training_curves.png, so `kdistill predict`, `compare`
        and `runs` read it. The validation numbers are measured here on eval_dataset."""
        return save_trainer_run(self, dataset)


def teacher_from_arguments(
    args: DistillationArguments, label_names: list[str], train_dataset: Dataset
) -> Teacher:
    """The teacher args.teacher_model names, loaded for the student's classes."""
    if args.teacher_model is None:
        raise KdistillError(
            "DistillationTrainer: no teacher; pass teacher=kdistill.load_teacher(...), "
            "teacher_logits=, or DistillationArguments(teacher_model=...)"
        )
    return load_teacher(
        args.teacher_model,
        label_names,
        mode=args.teacher_mode,
        dtype=args.teacher_dtype,
        prompt_template=args.prompt_template,
        label_words=args.label_words,
        few_shot=args.few_shot,
        examples=train_dataset if args.few_shot else None,
        calibrate=args.calibrate,
        chat_template=args.chat_template,
        max_length=args.teacher_max_length,
        seed=args.seed,
        allow_untrained=args.allow_untrained_teacher,
    )


def with_row_index(ds: Dataset, text_column: str, needs_text: bool) -> Dataset:
    """The training set with `kd_row` = its row index (replacing one already there)."""
    from datasets import Dataset

    if not isinstance(ds, Dataset):
        raise KdistillError("DistillationTrainer: train_dataset must be a datasets.Dataset")
    if needs_text and text_column not in ds.column_names:
        raise KdistillError(
            f"train_dataset has no {text_column!r} column for the teacher to read; keep the raw "
            f"text beside the tokenised columns (or set DistillationArguments(text_column=...))"
        )
    if ROW in ds.column_names:
        ds = ds.remove_columns(ROW)
    return ds.add_column(ROW, list(range(len(ds))))
