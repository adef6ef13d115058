"""How long the run will take, said before it starts: the teacher pass, each epoch, in all.

The seed's headline pair (a 1.5B teacher, a 0.5B student) runs for hours on a CPU, and nothing
said so until the first progress bar had crawled for a while. The estimate is measured, not
guessed from parameter counts: the teacher's rate is its validation pass (already run to check
the teacher is better than chance), the student's a few forward-backward passes on a real
training batch whose gradients are thrown away. The optimizer is not stepped and the caller
reseeds afterwards, so the warm-up changes nothing the run computes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from kdistill.training.runs import format_duration

if TYPE_CHECKING:
    from accelerate import Accelerator

    from kdistill.config import DistillConfig
    from kdistill.training.loop import Training

logger = logging.getLogger(__name__)

# Timed student passes after one untimed one (which pays for allocation and lazy set-up).
WARM_UP_STEPS = 2
# Above this a run gets a warning naming what shortens it.
LONG_RUN_S = 3600.0


@dataclass
class TimeEstimate:
    """Seconds, measured on this device before training (history.json's `time_estimate`)."""

    teacher_pass_s: float
    """The cached teacher pass over the training rows, once (0: online, or no teacher)."""
    epoch_s: float
    """Training steps, the online teacher if it runs every batch, and validation."""
    epochs: int
    step_s: float
    """One optimizer step of the student (forward and backward)."""
    steps_per_epoch: int
    teacher_s_per_row: float | None

    @property
    def total_s(self) -> float:
        return self.teacher_pass_s + self.epochs * self.epoch_s

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "total_s": self.total_s}


def estimate_run_time(
    config: DistillConfig,
    accelerator: Accelerator,
    t: Training,
    teacher_eval_s: float | None,
    val_rows: int,
) -> TimeEstimate:
    """The run's duration from the teacher's validation pass (`teacher_eval_s` over
    `val_rows`; None with no teacher) and timed student passes on the first training rows."""
    train_rows = len(t.train_tok)
    per_row = teacher_eval_s / max(1, val_rows) if teacher_eval_s is not None else None
    step_s, forward_s = time_student(t, accelerator, config.batch_size)
    steps = len(t.train_loader)
    # Validation: a forward per eval batch, as long as a training forward per row.
    val_s = forward_s * val_rows / max(1, config.batch_size)
    online = per_row is not None and config.teacher_cache == "off"
    epoch_s = steps * step_s + val_s + (train_rows * per_row if online else 0.0)
    teacher_pass_s = train_rows * per_row if per_row is not None and not online else 0.0
    return TimeEstimate(teacher_pass_s, epoch_s, config.epochs, step_s, steps, per_row)


def time_student(t: Training, accelerator: Accelerator, batch_size: int) -> tuple[float, float]:
    """(seconds per training step, per no-grad forward) of the student on the first
    `batch_size` training rows. Gradients are dropped and the optimizer never steps."""
    from kdistill.training.loop import student_inputs

    dataset = t.train_loader.dataset
    rows = [dataset[i] for i in range(min(batch_size, len(dataset)))]
    batch = {k: v.to(accelerator.device) for k, v in t.train_loader.collate_fn(rows).items()}
    student = t.student
    student.train()
    times = []
    for _ in range(1 + WARM_UP_STEPS):
        start = time.perf_counter()
        with accelerator.autocast():
            logits = student(**student_inputs(batch)).logits
        logits.float().logsumexp(-1).mean().backward()  # a loss with the real graph
        sync(accelerator)
        times.append(time.perf_counter() - start)
    student.zero_grad(set_to_none=True)
    student.eval()
    start = time.perf_counter()
    with torch.no_grad(), accelerator.autocast():
        student(**student_inputs(batch))
    sync(accelerator)
    forward_s = time.perf_counter() - start
    return sum(times[1:]) / WARM_UP_STEPS, forward_s


def sync(accelerator: Accelerator) -> None:
    """Wait for queued GPU work, so the clock reads what it cost."""
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize(accelerator.device)


def log_estimate(estimate: TimeEstimate, device: str) -> None:
    """One INFO line with the estimate; one WARNING line when it is over an hour."""
    teacher = ""
    if estimate.teacher_pass_s > 0:
        teacher = (
            f"teacher pass {format_duration(estimate.teacher_pass_s)} "
            f"({estimate.teacher_s_per_row:.3f} s/row), "
        )
    logger.info(
        "estimated time on %s: %s%s per epoch (%d steps at %.3f s/step), %s in all for %d epoch(s)",
        device,
        teacher,
        format_duration(estimate.epoch_s),
        estimate.steps_per_epoch,
        estimate.step_s,
        format_duration(estimate.total_s),
        estimate.epochs,
    )
    if estimate.total_s > LONG_RUN_S:
        logger.warning(
            "this run will take about %s on %s; shorten it with --max-train-samples, --epochs, "
            "--max-length, a smaller --student-model, or a GPU",
            format_duration(estimate.total_s),
            device,
        )
