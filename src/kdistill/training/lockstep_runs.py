"""One lockstep group of a sweep: each seed's cohort set up, the stack trained, each point's run.

Each point gets the run folder `kdistill distill` would write for it (config.json, history.json,
best_model/, final_model/, training_curves.png, model cards), built from distill's own pieces:
make_loaders, the teacher cache, make_scheduler, save_model, failure_recorded. What differs is
only that the K students share each step (training.lockstep). A point whose loss goes NaN fails
alone, as it would in a sequential sweep; the others train on.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.config import DistillConfig, SweepConfig
from kdistill.data.prepare import split_record
from kdistill.distill import (
    CE_LOSS,
    MAX_GRAD_NORM,
    TrainState,
    failure_recorded,
    library_versions,
    make_loaders,
    make_scheduler,
    run_name,
    save_model,
    save_training_curves,
    teacher_record,
)
from kdistill.errors import KdistillError
from kdistill.training.lockstep import (
    CannotStack,
    Slice,
    StackedStudents,
    clip_per_point,
    keep_freed_memory,
    rng_state,
    set_rng_state,
    stacked_kd_loss,
    stacked_optimizer,
)
from kdistill.training.runs import atomic_write_json, finish_run_dir, new_run_dir

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "kl", "ce", "labeled_loss", "unlabeled_loss")


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


def train_group(
    config: SweepConfig, members: list[tuple[int, float, float]], sweep_dir: Path
) -> list[Point]:
    """Train the (seed, T, alpha) students of `members` together; returns their points, each
    with a completed run folder or an error. Raises CannotStack before any folder exists when
    the student cannot be stacked."""
    from kdistill.distill import pick_device, pick_mixed_precision

    device = pick_device(config.device)
    precision = pick_mixed_precision(config.mixed_precision, device)
    accelerator = _accelerator(config, device, precision)
    if device == "cpu":
        keep_freed_memory()
    seeds = list(dict.fromkeys(seed for seed, _, _ in members))
    cohorts, lo = [], 0
    for seed in seeds:
        points = [
            Point(t, a, s, config.run_config(t, a, str(sweep_dir), s))
            for s, t, a in members
            if s == seed
        ]
        cohorts.append(open_cohort(points, lo, accelerator, device, precision))
        lo += len(points)
    if len({len(c.train_loader) for c in cohorts}) > 1:
        raise CannotStack("its seeds' training sets have different numbers of batches")
    students = [copy.deepcopy(c.student) for c in cohorts for _ in c.points]
    stack = StackedStudents([s.to(accelerator.device) for s in students])
    del students
    first = cohorts[0].points[0].config
    optimizer = stacked_optimizer(stack, first.learning_rate, first.weight_decay)
    scheduler, total_steps = make_scheduler(optimizer, len(cohorts[0].train_loader), first)
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    points = [p for c in cohorts for p in c.points]
    for c in cohorts:
        for p in c.points:
            start_run(p, c, total_steps, len(points))
    with contextlib.ExitStack() as failures:
        for p in points:
            failures.enter_context(
                failure_recorded(p.history, p.partial_dir / "history.json", accelerator)
            )
        train_epochs(stack, cohorts, optimizer, scheduler, accelerator, first.epochs)
    for c in cohorts:
        for p in c.points:
            if p.error is None:
                finish_run(p, stack, c, accelerator)
    return points


def _accelerator(config: SweepConfig, device: str, precision: str) -> Accelerator:
    from kdistill.data.model_files import quiet_transformers, set_load_policy
    from kdistill.distill import make_accelerator

    quiet_transformers()
    set_load_policy(config.allow_pickle, config.trust_remote_code)
    return make_accelerator(device, precision, 1)


def open_cohort(
    points: list[Point], lo: int, accelerator: Accelerator, device: str, precision: str
) -> Cohort:
    """What distill does before its first step, for one seed: data, teacher, student, loaders,
    the teacher's validation accuracy and its cached logits."""
    from accelerate.utils import set_seed

    from kdistill.distill import (
        apply_gradient_checkpointing,
        chance_accuracy,
        check_teacher_strength,
        check_training_rows,
        pick_teacher_dtype,
    )
    from kdistill.evaluation.metrics import classification_metrics
    from kdistill.students.load import load_student
    from kdistill.teachers.cache import teacher_logits_for
    from kdistill.teachers.classifier import load_teacher

    config = points[0].config
    set_seed(config.seed)
    data, train, val, unlabeled = load_cohort_data(config)
    n_unlabeled = len(unlabeled) if unlabeled is not None else 0
    for p in points:
        check_training_rows(config.dataset, len(train), n_unlabeled, p.config)
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
    train_all = _with_unlabeled(train, unlabeled)
    train_loader, val_loader, train_tok = make_loaders(
        train_all,
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
    val_logits, _ = teacher_logits_for(
        config.teacher_cache,
        teacher,
        val_loader.dataset,
        list(val["text"]),
        config,
        accelerator,
        data.num_labels,
        t_dtype_name,
    )
    metrics = classification_metrics(val_logits, torch.tensor(list(val["label"])), data.num_labels)
    chance = chance_accuracy(list(val["label"]), data.num_labels)
    check_teacher_strength(metrics["accuracy"], chance, config.allow_weak_teacher)
    texts = list(train_tok.select_columns(["text"])[:]["text"])
    cache, cache_record = teacher_logits_for(
        config.teacher_cache,
        teacher,
        train_tok,
        texts,
        config,
        accelerator,
        data.num_labels,
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
    resolved = shared_config(
        config,
        data,
        (len(train), len(val), n_unlabeled),
        teacher,
        t_dtype_name,
        student,
        accelerator,
        precision,
        eval_bs,
    )
    teacher.to(torch.device("cpu"))
    del teacher
    set_seed(config.seed)  # as distill reseeds before its first step
    cohort = Cohort(
        config.seed,
        points,
        lo,
        lo + len(points),
        student,
        s_tok,
        train_loader,
        val_loader,
        cache.to(accelerator.device),
        resolved,
        history,
    )
    cohort.rng = rng_state(accelerator.device)
    return cohort


def load_cohort_data(config: DistillConfig) -> tuple[Any, Any, Any, Any]:
    """distill.setup_run's data, without its Accelerator: labelled data, train and validation
    subsamples, and the unlabelled rows (or None), all seeded by this cohort's seed."""
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
    if config.unlabeled_data:
        from kdistill.distill import warn_unlabeled_overlap

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


def train_epochs(
    stack: StackedStudents,
    cohorts: list[Cohort],
    optimizer: Any,
    scheduler: Any,
    accelerator: Accelerator,
    epochs: int,
) -> None:
    """distill's epoch loop for every point: train, evaluate, keep the best, write history."""
    points = [p for c in cohorts for p in c.points]
    device = accelerator.device
    temps = torch.tensor([p.temperature for p in points], device=device)
    alphas = torch.tensor([p.alpha for p in points], device=device)
    run_start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        lr = scheduler.get_last_lr()[0]
        stats = train_one_epoch(
            stack,
            cohorts,
            optimizer,
            scheduler,
            accelerator,
            temps,
            alphas,
            f"lockstep epoch {epoch}/{epochs}",
        )
        metrics = evaluate_points(stack, cohorts, accelerator)
        for k, p in enumerate(points):
            if p.error is None:
                end_epoch(
                    p,
                    stack,
                    k,
                    cohorts,
                    epoch,
                    stats[k],
                    metrics[k],
                    lr,
                    time.perf_counter() - run_start,
                    accelerator,
                )
        alive = [p for p in points if p.error is None]
        if not alive:
            raise KdistillError(f"every point failed; the first: {points[0].error}")
        logger.info(
            "lockstep epoch %d: %d students, val acc %s",
            epoch,
            len(alive),
            " ".join(f"{m['accuracy']:.3f}" for m in metrics),
        )
    for p in points:
        p.history["total_time_s"] = time.perf_counter() - run_start


def train_one_epoch(
    stack: StackedStudents,
    cohorts: list[Cohort],
    optimizer: Any,
    scheduler: Any,
    accelerator: Accelerator,
    temps: torch.Tensor,
    alphas: torch.Tensor,
    desc: str,
) -> list[dict[str, Any]]:
    """One pass over each cohort's batches, every student stepping together. Returns each
    point's means, as distill.train_one_epoch reports them."""
    from tqdm.auto import tqdm

    points = [p for c in cohorts for p in c.points]
    sums = [dict.fromkeys(LOSS_KEYS, 0.0) for _ in points]
    counts = [[0, 0] for _ in points]  # labelled, unlabelled rows
    params = list(stack.parameters().values())
    stack.train()
    start = time.perf_counter()
    iters = []
    for c in cohorts:
        with c.stream(accelerator.device):
            iters.append(iter(c.train_loader))
    sizes = [c.hi - c.lo for c in cohorts]
    for step in tqdm(range(len(cohorts[0].train_loader)), desc=desc, dynamic_ncols=True):
        batches = []
        for c, it in zip(cohorts, iters, strict=True):
            with c.stream(accelerator.device):  # as the run alone draws its next batch
                batches.append(next(it))
        slices = stack.split(batches, sizes)
        parts = [
            cohort_loss(stack, c, part, temps, alphas, accelerator)
            for c, part in zip(cohorts, slices, strict=True)
        ]
        loss = torch.cat([q.loss for q in parts])  # (K,)
        values = torch.stack(
            [loss.detach(), *(torch.cat([getattr(q, key) for q in parts]) for key in LOSS_KEYS[1:])]
        )
        table = values.tolist()  # (5, K), one device sync
        alive = mark_failures(points, table[0], optimizer, desc, step)
        accelerator.backward(torch.where(alive.to(loss.device), loss, 0.0).sum())
        accelerator.unscale_gradients()
        clip_per_point(params, MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        k = 0
        for c, q in zip(cohorts, parts, strict=True):
            n_l, n_u = q.num_labeled, q.num_unlabeled
            for point in c.points:
                counts[k][0] += n_l
                counts[k][1] += n_u
                rows = (n_l + n_u, n_l + n_u, n_l, n_l, n_u)
                for i, key in enumerate(LOSS_KEYS):
                    # alpha 0 trains without a teacher, as distill does: no KL is measured.
                    if point.alpha == 0.0 and key in ("kl", "unlabeled_loss"):
                        continue
                    sums[k][key] += table[i][k] * rows[i]
                k += 1
    elapsed = time.perf_counter() - start
    return [epoch_means(s, c[0], c[1], elapsed) for s, c in zip(sums, counts, strict=True)]


def cohort_loss(
    stack: StackedStudents,
    cohort: Cohort,
    part: Slice,
    temps: torch.Tensor,
    alphas: torch.Tensor,
    accelerator: Accelerator,
) -> Any:
    """The cohort's students on its batch, dropout drawn from the cohort's own stream."""
    with cohort.stream(accelerator.device), accelerator.autocast():
        logits = stack.logits(part)  # (k, batch, num_labels)
    teacher_logits = cohort.cache.index_select(0, part.batch["row"])  # (batch, num_labels)
    lo, hi = cohort.lo, cohort.hi
    labels = part.batch["labels"]
    return stacked_kd_loss(logits, teacher_logits, labels, temps[lo:hi], alphas[lo:hi])


def mark_failures(
    points: list[Point], losses: list[float], optimizer: Any, desc: str, step: int
) -> torch.Tensor:
    """A point whose loss is NaN or inf stops there, with distill's message; the others go on.
    Returns the (K,) mask of points still training."""
    lr = optimizer.param_groups[0]["lr"]
    for p, value in zip(points, losses, strict=True):
        if p.error is None and not math.isfinite(value):
            p.error = (
                f"{desc}: the loss became {value} at step {step} (batch {step + 1} of the "
                "epoch); the learning rate is the likely cause: lower --learning-rate "
                f"(now {lr:.3g})"
            )
            fail_point(p)
    return torch.tensor([p.error is None for p in points])


def fail_point(point: Point) -> None:
    logger.error(
        "sweep point T=%g alpha=%g seed %d failed: %s",
        point.temperature,
        point.alpha,
        point.seed,
        point.error,
    )
    point.history["failed"] = f"KdistillError: {point.error}"
    atomic_write_json(point.partial_dir / "history.json", point.history)


def epoch_means(
    sums: dict[str, float], labeled: int, unlabeled: int, elapsed: float
) -> dict[str, Any]:
    """distill.train_one_epoch's return value; the time is the group's, shared by its points."""
    rows = labeled + unlabeled

    def mean(key: str, n: int) -> float | None:
        return sums[key] / n if n else None

    return {
        "train_loss": mean("loss", rows),
        "train_kl": mean("kl", rows),
        "train_ce": mean("ce", labeled),
        "train_loss_labeled": mean("labeled_loss", labeled),
        "train_loss_unlabeled": mean("unlabeled_loss", unlabeled),
        "train_samples": rows,
        "train_labeled_samples": labeled,
        "train_unlabeled_samples": unlabeled,
        "samples_per_second": rows / max(elapsed, 1e-9),
        "epoch_time_s": elapsed,
    }


def evaluate_points(
    stack: StackedStudents, cohorts: list[Cohort], accelerator: Accelerator
) -> list[dict[str, Any]]:
    """Validation metrics of every point (dropout off), each cohort on its own validation rows."""
    from kdistill.evaluation.metrics import classification_metrics, collect_logits

    stack.eval()
    metrics = []
    for c in cohorts:
        with c.stream(accelerator.device):
            logits, labels = collect_logits(
                lambda b, c=c: stack.eval_logits(b, c.lo, c.hi),
                c.val_loader,
                accelerator,
                "validation",
            )
        num_labels = logits.shape[-1]
        metrics += [
            classification_metrics(logits[:, k], labels, num_labels) for k in range(c.hi - c.lo)
        ]
    return metrics


def end_epoch(
    point: Point,
    stack: StackedStudents,
    k: int,
    cohorts: list[Cohort],
    epoch: int,
    stats: dict[str, Any],
    metrics: dict[str, Any],
    lr: float,
    wall: float,
    accelerator: Accelerator,
) -> None:
    """distill's end of epoch for one point: its record, best model and history.json."""
    record = {
        "epoch": epoch,
        **stats,
        "val_loss": metrics["loss"],
        "val_accuracy": metrics["accuracy"],
        "val_macro_f1": metrics["macro_f1"],
        "val_rows": metrics["n"],
        "learning_rate": lr,
        "wall_time_s": wall,
    }
    state = point.state
    state.epochs.append(record)
    if not math.isfinite(metrics["loss"]):
        point.error = (
            f"epoch {epoch}: the validation loss is {metrics['loss']}; lower --learning-rate"
        )
        point.history["epochs"] = state.epochs
        fail_point(point)
        return
    if metrics["accuracy"] > state.best_accuracy:
        state.best_accuracy, state.best_epoch = metrics["accuracy"], epoch
        cohort = next(c for c in cohorts if c.lo <= k < c.hi)
        save_model(point.partial_dir / "best_model", stack.export(k), cohort.tokenizer, accelerator)
    point.history["epochs"] = state.epochs
    point.history["best"] = {"epoch": state.best_epoch, "val_accuracy": state.best_accuracy}
    atomic_write_json(point.partial_dir / "history.json", point.history)


def finish_run(
    point: Point, stack: StackedStudents, cohort: Cohort, accelerator: Accelerator
) -> None:
    """final_model, the completed history, curves and cards; then the folder takes its name."""
    from kdistill.shipping.model_card import write_run_cards

    points = [p for p in cohort.points]
    k = cohort.lo + points.index(point)
    save_model(point.partial_dir / "final_model", stack.export(k), cohort.tokenizer, accelerator)
    point.history["completed"] = datetime.now().isoformat(timespec="seconds")
    atomic_write_json(point.partial_dir / "history.json", point.history)
    save_training_curves(point.history, point.partial_dir / "training_curves.png")
    write_run_cards(point.partial_dir, None)
    finish_run_dir(point.partial_dir, point.final_dir)
    logger.info(
        "done: T=%g alpha=%g seed %d, best validation accuracy %.4f at epoch %d; %s",
        point.temperature,
        point.alpha,
        point.seed,
        point.state.best_accuracy,
        point.state.best_epoch,
        point.final_dir,
    )
