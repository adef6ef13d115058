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
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.config import SweepConfig
from kdistill.errors import KdistillError
from kdistill.files import atomic_write_json
from kdistill.training.checkpoint import save_model
from kdistill.training.lockstep import (
    CannotStack,
    Slice,
    StackedStudents,
    clip_per_point,
    keep_freed_memory,
    stacked_kd_loss,
    stacked_optimizer,
)
from kdistill.training.lockstep_cohort import (
    Cohort,
    Point,
    group_accelerator,
    open_cohort,
    start_run,
)
from kdistill.training.loop import MAX_GRAD_NORM, EpochProgress, epoch_means, make_scheduler
from kdistill.training.records import (
    failure_recorded,
    save_training_curves,
)
from kdistill.training.runs import finish_run_dir

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "kl", "ce", "labeled_loss", "unlabeled_loss")


def train_group(
    config: SweepConfig, members: list[tuple[int, float, float]], sweep_dir: Path
) -> list[Point]:
    """Train the (seed, T, alpha) students of `members` together; returns their points, each
    with a completed run folder or an error. Raises CannotStack before any folder exists when
    the student cannot be stacked."""
    from kdistill.training.runtime import pick_device, pick_mixed_precision

    device = pick_device(config.device)
    precision = pick_mixed_precision(config.mixed_precision, device)
    accelerator = group_accelerator(config, device, precision)
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
        add_sums(cohorts, parts, table, sums, counts)
    elapsed = time.perf_counter() - start
    return [
        epoch_means(EpochProgress(sums=s, counts={"labeled": c[0], "unlabeled": c[1]}), elapsed)
        for s, c in zip(sums, counts, strict=True)
    ]


def add_sums(
    cohorts: list[Cohort],
    parts: list[Any],
    table: list[list[float]],
    sums: list[dict[str, float]],
    counts: list[list[int]],
) -> None:
    """Add a step's loss parts to each point's epoch sums, each times the rows it is a mean
    over, as distill's EpochProgress does. `table` is (5 loss keys, K points)."""
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


def calibrate_point(point: Point, cohort: Cohort, accelerator: Accelerator) -> None:
    """distill's --calibrate-student for one point: a T fitted on the cohort's validation rows
    folded into each saved model's head (training.calibration)."""
    from kdistill.training.calibration import calibrate_run_models

    config = point.config
    texts, labels = cohort.val_rows
    args = (config.max_length, config.batch_size, accelerator.device)
    calibrate_run_models(point.partial_dir, config.calibrate_student, texts, labels, *args)


def finish_run(
    point: Point, stack: StackedStudents, cohort: Cohort, accelerator: Accelerator
) -> None:
    """final_model, the completed history, curves and cards; then the folder takes its name."""
    from kdistill.shipping.model_card import write_run_cards

    points = [p for p in cohort.points]
    k = cohort.lo + points.index(point)
    save_model(point.partial_dir / "final_model", stack.export(k), cohort.tokenizer, accelerator)
    calibrate_point(point, cohort, accelerator)
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
