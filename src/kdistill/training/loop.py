"""The step and the epoch: teacher logits (cached or `no_grad`), student logits, the loss,
backward, step; and what the step needs around it: the optimiser, the schedule, gradient
checkpointing, a check that the loss is a number, and the epoch's running sums."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from kdistill.errors import KdistillError
from kdistill.training.losses import DistillLoss, KDLoss, kd_loss
from kdistill.training.round_targets import WeightedTargets

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import PreTrainedModel

    from kdistill.config import DistillConfig, FinetuneConfig
    from kdistill.teachers.classifier import Teacher
    from kdistill.training.intermediate import IntermediateLoss

logger = logging.getLogger(__name__)

# (batch) -> (batch, num_labels): the teacher's logits for a batch, cached or computed online.
TeacherLogits = Callable[[dict[str, torch.Tensor]], torch.Tensor]

# Students above this many parameters get gradient checkpointing under `auto`: below it the
# activations are small next to the weights and optimizer state, and recomputing them only costs.
CHECKPOINTING_MIN_PARAMS = 100_000_000
MAX_GRAD_NORM = 1.0  # the transformers Trainer's default clipping


def make_optimizer(
    model: PreTrainedModel, lr: float, weight_decay: float, head_lr_scale: float = 1.0
) -> torch.optim.Optimizer:
    """AdamW without decay on biases and norm weights, as BERT and the Trainer do. The head
    (every parameter outside the base model: `classifier`, `score`) learns at lr * head_lr_scale:
    it starts from random weights while the body it reads from is pretrained."""
    prefix = model.base_model_prefix + "."
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = name.removeprefix("base_model.model.")  # a LoRA student's (peft) names
        no_decay = p.ndim < 2 or "norm" in name.lower()
        head = head_lr_scale != 1.0 and not name.startswith(prefix)
        groups.setdefault((head, no_decay), []).append(p)
    params = [p for ps in groups.values() for p in ps]
    # Sorted: body before head, decay before no decay (param_groups[0] is the body's lr).
    param_groups = [
        {
            "params": ps,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "lr": lr * head_lr_scale if head else lr,
        }
        for (head, no_decay), ps in sorted(groups.items())
    ]
    # torch's default AdamW on CPU is a Python loop over tensors (a third of a bert-tiny step
    # here); the fused kernel does the update in one pass on CPU and CUDA.
    device = next(model.parameters()).device.type
    fused = device in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(param_groups, lr=lr, fused=fused or None)


def make_scheduler(
    optimizer: torch.optim.Optimizer, batches_per_epoch: int, config: DistillConfig | FinetuneConfig
) -> tuple[Any, int]:
    """Warm-up then `--lr-scheduler` (default linear decay to zero), in optimiser steps.

    Counted on the unsharded loader: Accelerate steps a prepared scheduler once per process.
    transformers' own schedules, so the names mean what they mean in a Trainer script.
    """
    from transformers import get_scheduler

    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    total = steps_per_epoch * config.epochs
    warmup = math.ceil(config.warmup_ratio * total)
    schedule = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total
    )
    return schedule, total


def near_memory_limit(model: torch.nn.Module, device: str) -> bool:
    """Whether training state alone (fp32 weights, grads and two AdamW moments: 16 bytes per
    parameter) would take over half the accelerator's free memory, leaving little for
    activations. Only CUDA reports free memory; elsewhere the parameter count decides."""
    if device != "cuda" or not torch.cuda.is_available():
        return False
    free, _total = torch.cuda.mem_get_info()
    return 16 * sum(p.numel() for p in model.parameters()) > free / 2


def apply_gradient_checkpointing(model: PreTrainedModel, setting: str, device: str = "cpu") -> bool:
    """auto: on above CHECKPOINTING_MIN_PARAMS parameters or near the device's memory limit."""
    from kdistill.students.load import count_parameters

    on = setting == "on" or (
        setting == "auto"
        and (count_parameters(model) > CHECKPOINTING_MIN_PARAMS or near_memory_limit(model, device))
    )
    if on:
        # Non-reentrant: also correct when the embeddings are frozen (LoRA), where the reentrant
        # variant would see no input that needs a gradient and drop the adapters' gradients.
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
    return on


def student_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's columns of a batch that also carries the teacher's inputs."""
    return {
        "input_ids": batch["student_input_ids"],
        "attention_mask": batch["student_attention_mask"],
    }


@dataclass
class EpochProgress:
    """How far an epoch has got: batches done on this process and, for the epoch's means, each
    loss part summed over the rows it is a mean over. A checkpoint stores it (summed over the
    processes, on the main one) so a resumed epoch reports the numbers an uninterrupted one would.
    """

    step: int = 0
    sums: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("loss", "kl", "ce", "labeled_loss", "unlabeled_loss", "hidden", "relation"), 0.0
        )
    )
    counts: dict[str, int] = field(default_factory=lambda: {"labeled": 0, "unlabeled": 0})
    elapsed_s: float = 0.0

    def add(self, parts: KDLoss | DistillLoss) -> None:
        """Count a batch's rows and add each loss part times the rows it is a mean over; a
        DistillLoss (intermediate losses) adds its hidden and relation terms, over all rows."""
        extra: list[torch.Tensor] = []
        if isinstance(parts, DistillLoss):
            extra = [parts.hidden, parts.relation]
            parts = parts.kd._replace(loss=parts.loss)
        n_l, n_u = parts.num_labeled, parts.num_unlabeled
        self.counts["labeled"] += n_l
        self.counts["unlabeled"] += n_u
        # One device sync for the five (seven) numbers.
        values = torch.stack(
            [parts.loss.detach(), parts.kl, parts.ce, parts.labeled_loss, parts.unlabeled_loss]
            + [e.to(parts.kl.device) for e in extra]
        ).tolist()
        values += [0.0, 0.0][len(extra) :]
        weights = (n_l + n_u, n_l + n_u, n_l, n_l, n_u, n_l + n_u, n_l + n_u)
        for key, value, rows in zip(self.sums, values, weights, strict=True):
            self.sums[key] += value * rows

    def totals(self, accelerator: Accelerator) -> EpochProgress:
        """Sums and counts over every process (every process must call this)."""
        local = torch.tensor(
            [*self.sums.values(), *self.counts.values()],
            dtype=torch.float32 if accelerator.device.type == "mps" else torch.float64,
            device=accelerator.device,
        )
        values = accelerator.reduce(local, "sum").tolist()
        sums = dict(zip(self.sums, values[: len(self.sums)], strict=True))
        counts = {k: int(v) for k, v in zip(self.counts, values[len(self.sums) :], strict=True)}
        return EpochProgress(self.step, sums, counts, self.elapsed_s)


def check_finite(
    loss: torch.Tensor,
    accelerator: Accelerator,
    optimizer: torch.optim.Optimizer,
    desc: str,
    step: int,
) -> None:
    """Stop on a NaN or inf loss, naming the step and the likely cause. Every process learns of
    a bad loss on any of them, so none is left waiting in the backward pass's all-reduce."""
    bad = ~torch.isfinite(loss.detach())
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad.float().reshape(1), "sum") > 0
    if not bad.any():
        return
    lr = optimizer.param_groups[0]["lr"]
    if accelerator.mixed_precision == "fp16":
        cause = (
            "fp16 overflow is the likely cause: use --mixed-precision bf16 or no, or lower "
            f"--learning-rate (now {lr:.3g})"
        )
    else:
        cause = f"the learning rate is the likely cause: lower --learning-rate (now {lr:.3g})"
    raise KdistillError(
        f"{desc}: the loss became {loss.item()} at step {step} (batch {step + 1} "
        f"of the epoch); {cause}"
    )


def train_step(
    student: torch.nn.Module,
    teacher: TeacherLogits | None,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Accelerator,
    temperature: float,
    alpha: float,
    where: tuple[str, int],
    intermediate: IntermediateLoss | None = None,
) -> KDLoss | DistillLoss:
    """The seed's loop body: student logits, teacher logits, loss, backward, step. Accelerate
    holds the step back while gradients accumulate; `where` (epoch label, step) names a bad
    loss. Without a teacher (fine-tuning, alpha 0) the loss is plain cross-entropy. With
    `intermediate`, both forward passes and the whole distill_loss are its, and its projection
    is clipped with the student."""
    with accelerator.accumulate(student):
        if intermediate is not None:
            _, parts = intermediate(batch, temperature, alpha)
            clipped = [*student.parameters(), *intermediate.parameters()]
            return _finish_step(parts, clipped, optimizer, scheduler, accelerator, where)
        student_logits = student(**student_inputs(batch)).logits  # (batch, num_labels)
        if teacher is None:
            parts = cross_entropy_parts(student_logits, batch["labels"])
        else:
            teacher_logits = teacher(batch)  # (batch, num_labels): cached, or under no_grad
            # --round-targets weighted: each row's KD term times its relabeller's confidence.
            w = teacher.weights(batch) if isinstance(teacher, WeightedTargets) else None
            parts = kd_loss(student_logits, teacher_logits, batch["labels"], temperature, alpha, w)
        return _finish_step(parts, student.parameters(), optimizer, scheduler, accelerator, where)


def _finish_step(
    parts: KDLoss | DistillLoss,
    clipped: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Accelerator,
    where: tuple[str, int],
) -> KDLoss | DistillLoss:
    """Backward, clip, step (inside `accelerator.accumulate`)."""
    check_finite(parts.loss, accelerator, optimizer, *where)
    accelerator.backward(parts.loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(clipped, MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return parts


def cross_entropy_parts(student_logits: torch.Tensor, labels: torch.Tensor) -> KDLoss:
    """Plain CE in kd_loss's shape, so that one epoch loop records either: no KL, every row
    labelled."""
    ce = torch.nn.functional.cross_entropy(student_logits.float(), labels)
    zero = torch.zeros((), device=ce.device)
    return KDLoss(ce, zero, ce.detach(), ce.detach(), zero, len(labels), 0)


def train_one_epoch(
    student: torch.nn.Module,
    teacher: TeacherLogits | None,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Accelerator,
    temperature: float,
    alpha: float,
    desc: str,
    progress: EpochProgress | None = None,
    after_step: Callable[[EpochProgress], None] | None = None,
    intermediate: IntermediateLoss | None = None,
) -> dict[str, Any]:
    """One pass over the training data. `teacher(batch)` gives the batch's teacher logits
    (online or from the cache); without one (fine-tuning) the loss is plain CE. With
    `intermediate` (--hidden-loss, --attention-loss) the step is its distill_loss instead.

    `progress` resumes an epoch: its first `progress.step` batches are skipped (the loader must
    replay the same order) and its sums carried on. `after_step(progress)` runs after every
    batch: checkpoints and stop requests live there.

    Returns the epoch's means (`epoch_means`)."""
    from tqdm.auto import tqdm

    progress = progress or EpochProgress()
    student.train()
    start = time.perf_counter() - progress.elapsed_s
    total = len(loader)
    if progress.step:
        loader = accelerator.skip_first_batches(loader, progress.step)
    bar = tqdm(
        loader,
        desc=desc,
        disable=not accelerator.is_main_process,
        dynamic_ncols=True,
        initial=progress.step,
        total=total,
    )
    for step, batch in enumerate(bar, start=progress.step):
        args = (optimizer, scheduler, accelerator, temperature, alpha, (desc, step))
        parts = train_step(student, teacher, batch, *args, intermediate)
        progress.add(parts)
        progress.step, progress.elapsed_s = step + 1, time.perf_counter() - start
        if step % 10 == 0:
            seen = max(progress.counts["labeled"] + progress.counts["unlabeled"], 1)
            rate = seen * accelerator.num_processes / max(progress.elapsed_s, 1e-9)
            bar.set_postfix(loss=f"{progress.sums['loss'] / seen:.4f}", samples_s=f"{rate:.1f}")
        if after_step is not None:
            after_step(progress)
    totals = progress.totals(accelerator)
    return epoch_means(totals, time.perf_counter() - start, intermediate is not None)


def epoch_means(
    totals: EpochProgress, elapsed: float, intermediate: bool = False
) -> dict[str, Any]:
    """train_loss and train_kl over all rows, train_ce and train_loss_labeled over the labelled
    rows, train_loss_unlabeled (T^2 * KL) over the unlabelled ones; None where there were no
    such rows. With `intermediate`, also train_hidden and train_relation (unweighted, over all
    rows). `totals` are summed over every process."""
    labeled, unlabeled = totals.counts["labeled"], totals.counts["unlabeled"]
    rows = labeled + unlabeled

    def mean(key: str, n: int) -> float | None:
        return totals.sums[key] / n if n else None

    parts = ("hidden", "relation") if intermediate else ()
    return {
        "train_loss": mean("loss", rows),
        "train_kl": mean("kl", rows),
        **{f"train_{key}": mean(key, rows) for key in parts},
        "train_ce": mean("ce", labeled),
        "train_loss_labeled": mean("labeled_loss", labeled),
        "train_loss_unlabeled": mean("unlabeled_loss", unlabeled),
        "train_samples": rows,
        "train_labeled_samples": labeled,
        "train_unlabeled_samples": unlabeled,
        "samples_per_second": rows / max(elapsed, 1e-9),
        "epoch_time_s": elapsed,
    }


@dataclass
class Training:
    """The student and what trains it, after `accelerator.prepare`; the tokenised datasets
    (each row with its index in `row`) and sizes from before it, for config.json and the cache."""

    student: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    val_loader: DataLoader
    train_tok: Dataset
    val_tok: Dataset
    eval_batch_size: int
    total_steps: int
    checkpointing: bool
    intermediate: IntermediateLoss | None = None  # --hidden-loss, --attention-loss


def prepare_training(
    config: DistillConfig,
    accelerator: Accelerator,
    student: torch.nn.Module,
    teacher: Teacher | None,
    train_loader: DataLoader,
    val_loader: DataLoader,
    train_tok: Dataset,
    checkpointing: bool,
    intermediate: IntermediateLoss | None = None,
) -> Training:
    """AdamW and the schedule, everything through `accelerator.prepare`, the teacher on the
    device. The intermediate losses' projection, when it has weights, is optimised with the
    student and prepared after it (checkpoints hold it; the saved student does not)."""
    val_tok, eval_bs = val_loader.dataset, val_loader.batch_size
    optimizer = make_optimizer(
        student, config.learning_rate, config.weight_decay, config.head_learning_rate_scale
    )
    if intermediate is not None and intermediate.parameters():
        optimizer.add_param_group(
            {"params": intermediate.parameters(), "weight_decay": config.weight_decay}
        )
    scheduler, total_steps = make_scheduler(optimizer, len(train_loader), config)
    student, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        student, optimizer, train_loader, val_loader, scheduler
    )
    if intermediate is not None and intermediate.parameters():
        intermediate.projection = accelerator.prepare(intermediate.projection)
    if teacher is not None:
        teacher.to(accelerator.device)
    return Training(
        student,
        optimizer,
        scheduler,
        train_loader,
        val_loader,
        train_tok,
        val_tok,
        eval_bs,
        total_steps,
        checkpointing,
        intermediate,
    )
