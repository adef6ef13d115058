"""One seed's share of a lockstep group: what distill does before its first step (data,
teacher, student, loaders, the teacher check and its cached logits), kept per seed so that each
point of the stack trains on exactly the data order and random stream its run alone would.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.config import DistillConfig, SweepConfig
from kdistill.data.prepare import split_record
from kdistill.files import atomic_write_json
from kdistill.training.loaders import make_loaders
from kdistill.training.lockstep import CannotStack
from kdistill.training.records import CE_LOSS, TrainState, teacher_record
from kdistill.training.runs import new_run_dir, run_name
from kdistill.training.runtime import library_versions

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from kdistill.teachers.classifier import Teacher

logger = logging.getLogger(__name__)


@dataclass
class Point:
    """One (T, alpha, seed) student of the group and its run folder."""

    temperature: float
    alpha: float
    seed: int
    config: DistillConfig
    final_dir: Path | None = None
    partial_dir: Path | None = None
    history: dict[str, Any] = field(default_factory=dict)
    state: TrainState = field(default_factory=TrainState)
    error: str | None = None


@dataclass
class Cohort:
    """One seed's share of the stack (students lo..hi-1): its data order, teacher logits and
    random-number stream, and what its points' config.json records."""

    seed: int
    points: list[Point]
    lo: int
    hi: int
    student: Any
    tokenizer: Any
    train_loader: Any
    val_loader: Any
    cache: torch.Tensor  # (train rows, num_labels) teacher logits
    resolved: dict[str, Any]  # config.json's shared part
    history: dict[str, Any]  # history.json's teacher part
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    # The validation texts and labels, which --calibrate-student fits each saved model's T on.
    val_rows: tuple[list[str], list[int]] = field(default_factory=lambda: ([], []))

    @contextlib.contextmanager
    def stream(self, device: torch.device) -> Iterator[None]:
        """Run with the cohort's own global random state. Its run alone draws from it for
        dropout and for each loader pass's base seed (an iter() of a prepared loader); doing
        every such draw inside this block, in the same order, reproduces that run's stream."""
        set_rng_state(self.rng, device)
        try:
            yield
        finally:
            self.rng = rng_state(device)


def group_accelerator(config: SweepConfig, device: str, precision: str) -> Accelerator:
    """The group's Accelerator, with the load policy every command sets first."""
    from kdistill.data.model_files import quiet_transformers, set_load_policy
    from kdistill.training.runtime import make_accelerator

    quiet_transformers()
    set_load_policy(config.allow_pickle, config.trust_remote_code)
    return make_accelerator(device, precision, 1)


def open_cohort(
    points: list[Point], lo: int, accelerator: Accelerator, device: str, precision: str
) -> Cohort:
    """What distill does before its first step, for one seed: data, teacher, student, loaders,
    the teacher's validation accuracy and its cached logits."""
    from accelerate.utils import set_seed

    from kdistill.students.vocab import trim_for_run
    from kdistill.training.loaders import check_training_rows

    config = points[0].config
    set_seed(config.seed)
    # As distill --alpha 0 drops them; sweep.same_batches keeps alpha 0 apart when they exist.
    with_unlabeled = any(p.alpha != 0.0 for p in points)
    if config.unlabeled_data and not with_unlabeled:
        logger.warning(
            "--alpha 0 trains on the labels alone: the --unlabeled-data rows have no "
            "labels and nothing to learn from, so they are not used"
        )
    data, train, val, unlabeled = load_cohort_data(config, with_unlabeled)
    n_unlabeled = len(unlabeled) if unlabeled is not None else 0
    for p in points:
        check_training_rows(config.dataset, len(train), n_unlabeled, p.config)
    teacher, t_dtype_name, student, s_tok = load_cohort_models(
        config, data, train, device, precision
    )
    seen = list(train["text"]) + (list(unlabeled["text"]) if unlabeled is not None else [])
    s_tok, _ = trim_for_run(student, s_tok, config, seen, list(val["text"]))
    train_loader, val_loader, train_tok = make_loaders(
        _with_unlabeled(train, unlabeled),
        val,
        {"student": s_tok, "teacher": teacher.tokenizer},
        config,
        accelerator,
        ("student",),
        {"teacher": teacher},
        n_unlabeled,
    )
    eval_bs = val_loader.batch_size  # before prepare, as distill records it
    train_loader, val_loader = accelerator.prepare(train_loader, val_loader)
    teacher.to(accelerator.device)
    history, cache = cohort_teacher_pass(
        config,
        teacher,
        val_loader.dataset,
        val,
        train_tok,
        accelerator,
        data.num_labels,
        t_dtype_name,
    )
    rows = (len(train), len(val), n_unlabeled)
    resolved = shared_config(
        config, data, rows, teacher, t_dtype_name, student, accelerator, precision, eval_bs
    )
    teacher.to(torch.device("cpu"))
    del teacher
    set_seed(config.seed)  # as distill reseeds before its first step
    cache = cache.to(accelerator.device)
    span, loaders = (lo, lo + len(points)), (train_loader, val_loader)
    cohort = Cohort(config.seed, points, *span, student, s_tok, *loaders, cache, resolved, history)
    cohort.rng = rng_state(accelerator.device)
    cohort.val_rows = (list(val["text"]), list(val["label"]))
    return cohort


def load_cohort_models(
    config: DistillConfig, data: Any, train: Any, device: str, precision: str
) -> tuple[Teacher, str, torch.nn.Module, PreTrainedTokenizerBase]:
    """(teacher, its dtype's name, student, student tokenizer), as distill loads them. A
    student that needs gradient checkpointing cannot be stacked."""
    from kdistill.students.load import load_student
    from kdistill.teachers.classifier import load_teacher
    from kdistill.training.calibration import logits_as_trained
    from kdistill.training.loop import apply_gradient_checkpointing
    from kdistill.training.runtime import pick_teacher_dtype

    t_dtype, t_dtype_name = pick_teacher_dtype(config.teacher_dtype, precision)
    teacher = load_teacher(
        config,
        config.teacher_model,
        data.label_names,
        t_dtype,
        train,
        config.max_length,
        config.seed,
    )
    logits_as_trained(teacher)  # as distill does: a calibrated head's logits as trained
    student, s_tok = load_student(
        config.student_model,
        data.label_names,
        config.seed,
        config.student_tokenizer,
        config.student_layers,
        config.student_num_layers,
    )
    if apply_gradient_checkpointing(student, config.gradient_checkpointing, device):
        raise CannotStack(
            "it needs gradient checkpointing (over 100M parameters or near the memory limit)"
        )
    return teacher, t_dtype_name, student, s_tok


def cohort_teacher_pass(
    config: DistillConfig,
    teacher: Teacher,
    val_tok: Any,
    val: Any,
    train_tok: Any,
    accelerator: Accelerator,
    num_labels: int,
    t_dtype_name: str,
) -> tuple[dict[str, Any], torch.Tensor]:
    """The teacher checked on validation (cached logits, as distill with a cache) and its logits
    for every training row: (history.json's teacher part, logits (train rows, num_labels))."""
    from kdistill.evaluation.metrics import classification_metrics
    from kdistill.teachers.cache import teacher_logits_for
    from kdistill.teachers.guards import chance_accuracy, check_teacher_strength

    val_logits, _ = teacher_logits_for(
        config.teacher_cache,
        teacher,
        val_tok,
        list(val["text"]),
        config,
        accelerator,
        num_labels,
        t_dtype_name,
    )
    metrics = classification_metrics(val_logits, torch.tensor(list(val["label"])), num_labels)
    chance = chance_accuracy(list(val["label"]), num_labels)
    check_teacher_strength(metrics["accuracy"], chance, config.allow_weak_teacher)
    texts = list(train_tok.select_columns(["text"])[:]["text"])
    cache, cache_record = teacher_logits_for(
        config.teacher_cache,
        teacher,
        train_tok,
        texts,
        config,
        accelerator,
        num_labels,
        t_dtype_name,
    )
    history = {
        "teacher": {
            "used": True,
            "val_accuracy": metrics["accuracy"],
            "val_macro_f1": metrics["macro_f1"],
            "val_loss": metrics["loss"],
            "val_rows": metrics["n"],
        },
        "chance_accuracy": chance,
        "epochs": [],
        "teacher_cache": cache_record,
    }
    return history, cache


def load_cohort_data(config: DistillConfig, with_unlabeled: bool) -> tuple[Any, Any, Any, Any]:
    """distill.setup_run's data, without its Accelerator: labelled data, train and validation
    subsamples, and the unlabelled rows (None without --unlabeled-data, or when every point of
    the cohort is alpha 0), all seeded by this cohort's seed."""
    from kdistill.data.prepare import load_for_training
    from kdistill.data.sampling import subsample
    from kdistill.data.unlabeled import load_unlabeled

    data = load_for_training(
        config.dataset,
        config.data_dir,
        config.text_column,
        config.label_column,
        config.validation_split,
        config.seed,
    )
    train = subsample(
        data.splits["train"], config.max_train_samples, config.seed, "--max-train-samples"
    )
    val = subsample(
        data.splits["validation"], config.max_val_samples, config.seed, "--max-val-samples"
    )
    unlabeled = None
    if config.unlabeled_data and with_unlabeled:
        from kdistill.training.loaders import warn_unlabeled_overlap

        unlabeled = load_unlabeled(
            config.unlabeled_data,
            config.unlabeled_text_column,
            config.max_unlabeled_samples,
            config.seed,
        )
        warn_unlabeled_overlap(unlabeled, data)
    return data, train, val, unlabeled


def _with_unlabeled(train: Any, unlabeled: Any) -> Any:
    from kdistill.data.unlabeled import with_unlabeled

    return with_unlabeled(train, unlabeled)


def shared_config(
    config: DistillConfig,
    data: Any,
    rows: tuple[int, int, int],
    teacher: Any,
    t_dtype_name: str,
    student: Any,
    accelerator: Accelerator,
    precision: str,
    eval_bs: int,
) -> dict[str, Any]:
    """The parts of distill's config.json that every point of a cohort shares."""
    from kdistill.students.load import count_parameters

    n_train, n_val, n_unlabeled = rows
    share = (
        config.unlabeled_ratio
        if config.unlabeled_ratio is not None
        else n_unlabeled / (n_train + n_unlabeled)
    )
    return {
        "resolved": {
            "device": str(accelerator.device),
            "mixed_precision": precision,
            "gradient_checkpointing": False,
            "num_processes": accelerator.num_processes,
            "effective_batch_size": config.batch_size * accelerator.num_processes,
            "eval_batch_size": eval_bs,
            "teacher_dtype": t_dtype_name,
            "intermediate": None,  # lockstep trains logit distillation only (unsupported_reason)
            "unlabeled_share": share,
        },
        "data": {
            "name": data.name,
            "source": data.source,
            "label_names": data.label_names,
            "train_rows": n_train,
            "validation_rows": n_val,
            "unlabeled_rows": n_unlabeled,
            "unlabeled_source": config.unlabeled_data,
            "split": split_record(data),
        },
        "teacher": teacher_record(config, teacher, t_dtype_name),
        "student": {
            "model": config.student_model,
            "class": type(student).__name__,
            "parameters": count_parameters(student),
            "vocabulary": getattr(student.config, "kdistill_vocabulary", None),
        },
        "loss": "mean over rows of: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) "
        "+ (1 - alpha) * CE(s, label) for a labelled row, T^2 * KL for an unlabelled row",
    }


def start_run(point: Point, cohort: Cohort, total_steps: int, students: int) -> None:
    """The point's `.partial` run folder and its config.json, as distill writes them."""
    shared = copy.deepcopy(cohort.resolved)
    shared["resolved"]["total_optimizer_steps"] = total_steps
    shared["resolved"]["lockstep"] = {"students": students, "seeds": None}
    name = run_name(shared["data"]["name"], point.temperature, point.alpha)
    point.final_dir, point.partial_dir = new_run_dir(Path(point.config.output_dir), name)
    if point.alpha == 0.0:
        shared["teacher"] = teacher_record(point.config, None, "")
        shared["loss"] = CE_LOSS
        shared["resolved"]["teacher_dtype"] = None
    resolved = {
        "kind": "distill",
        **point.config.to_dict(),
        **shared,
        "command": sys.argv,
        "versions": library_versions(),
        "started": datetime.now().isoformat(timespec="seconds"),
        "process": {"pid": os.getpid(), "host": socket.gethostname()},
    }
    atomic_write_json(point.partial_dir / "config.json", resolved)
    point.history = copy.deepcopy(cohort.history)
    if point.alpha == 0.0:  # as distill: cross-entropy only, no teacher
        keys = ("val_accuracy", "val_macro_f1", "val_loss", "val_rows")
        point.history["teacher"] = {"used": False, **dict.fromkeys(keys)}
        point.history["teacher_cache"] = {"mode": "none", "reason": "--alpha 0: no teacher"}
    atomic_write_json(point.partial_dir / "history.json", point.history)


# --------------------------------------------------------------------------- random streams


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators dropout draws from: the CPU one, and the device's on CUDA."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
