"""The distillation run: an Accelerate loop that reads like the seed's pseudo-code.

    for epoch in epochs:
        for batch in data:
            with no_grad: teacher_logits = teacher(batch)       # frozen, eval mode
            student_logits = student(batch)
            loss = alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(student, labels)
            loss.backward(); optimizer.step()                    # only the student learns

With --unlabeled-data the batches also hold rows without labels, which get T^2 * KL alone.
--alpha 0 is the cross-entropy-only baseline: no teacher is loaded, and no unlabelled row used.

Accelerate supplies the device, mixed precision, gradient accumulation and `accelerate launch`;
the run directory, history and checkpoints are ours.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill import __version__
from kdistill.config import DistillConfig
from kdistill.errors import KdistillError, RunStopped
from kdistill.training.checkpoint import (
    CHECKPOINTS,
    GracefulStop,
    check_same_run,
    decode_generator,
    encode_generator,
    latest_checkpoint,
    load_checkpoint,
    resume_command,
    resume_dir,
    save_checkpoint,
)
from kdistill.training.losses import KDLoss, kd_loss
from kdistill.training.runs import (
    PARTIAL_SUFFIX,
    atomic_dir,
    atomic_write_json,
    discard_unstarted,
    finish_run_dir,
    format_float,
    new_run_dir,
)

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from kdistill.config import EvalTeacherConfig, FinetuneConfig
    from kdistill.data.prepare import LabelledData
    from kdistill.teachers.classifier import Teacher

logger = logging.getLogger(__name__)

# Students above this many parameters get gradient checkpointing under `auto`: below it the
# activations are small next to the weights and optimizer state, and recomputing them only costs.
CHECKPOINTING_MIN_PARAMS = 100_000_000
MAX_GRAD_NORM = 1.0  # the transformers Trainer's default clipping


# --------------------------------------------------------------------------- devices and precision


def pick_device(requested: str) -> str:
    """auto: cuda, then mps, then cpu. An explicit device that is absent is an error."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None
        and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if available[d])
    if not available[requested]:
        raise KdistillError(f"--device {requested}: not available on this machine; use auto or cpu")
    return requested


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_mixed_precision(requested: str, device: str) -> str:
    """auto: bf16 where the hardware does it natively (about 3x fp32 on AVX512-BF16/AMX CPUs),
    fp16 with loss scaling on GPUs without bf16, full precision elsewhere."""
    if requested == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device == "cpu":
            return "bf16" if cpu_supports_bf16() else "no"
        return "no"
    if requested == "fp16" and device == "cpu":
        raise KdistillError("--mixed-precision fp16 needs a GPU; use bf16 or no on CPU")
    return requested


def pick_teacher_dtype(requested: str, precision: str) -> tuple[torch.dtype, str]:
    """auto: the training run's mixed precision (bf16 or fp16 weights), fp32 when it has none."""
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if requested == "auto":
        requested = precision if precision in ("bf16", "fp16") else "fp32"
    return names[requested], requested


def make_accelerator(
    device: str, mixed_precision: str, accumulation: int, report_to: str = "none"
) -> Accelerator:
    """A fresh Accelerator per command. Accelerate keeps its settings in a process-wide
    singleton that refuses a second, different mixed precision; a program that runs several
    commands (a sweep, a notebook, the tests) needs each to start clean. The process group
    (PartialState) is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(
        cpu=device == "cpu",
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=accumulation,
        log_with=None if report_to == "none" else [report_to],
        # Where file-based trackers write until the run directory exists (start_tracking).
        project_dir="." if report_to != "none" else None,
    )


TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
}


def check_tracker(report_to: str) -> None:
    """Accelerate silently drops a tracker whose package is missing; say so instead."""
    import importlib.util

    if report_to == "none":
        return
    package = TRACKER_PACKAGES[report_to][0]
    if not any(importlib.util.find_spec(p) for p in TRACKER_PACKAGES[report_to]):
        raise KdistillError(
            f"--report-to {report_to}: the {package} package is not installed; "
            f"pip install {package} (or pass --report-to none)"
        )


def start_tracking(
    accelerator: Accelerator, report_to: str, run_dir: Path, run_name: str, config: dict[str, Any]
) -> None:
    """Start the Accelerate tracker: file-based ones (TensorBoard) write into <run>/logs/, so the
    event files move with the run directory; hyperparameters are the config's scalar fields."""
    if report_to == "none":
        return
    accelerator.project_configuration.logging_dir = str(run_dir / "logs")
    hparams = {
        k: ("none" if v is None else v)
        for k, v in config.items()
        if v is None or isinstance(v, (bool, int, float, str))
    }
    accelerator.init_trackers(
        "kdistill",
        config=hparams,
        init_kwargs={"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}},
    )


# --------------------------------------------------------------------------- training


@dataclass
class TrainState:
    """What the loop carries from epoch to epoch, and what history.json records."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_accuracy: float = -1.0


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


class ShuffledLengthGroupedSampler(torch.utils.data.Sampler[int]):
    """The Trainer's length grouping (random megabatches of 50 batches, each sorted by length),
    then the batches themselves shuffled.

    Without that last step training walks every megabatch from its longest batch to its
    shortest; where length goes with the class (DBpedia: villages are short, albums long),
    consecutive steps see the same few classes. Measured on the DBpedia sample (bert-tiny,
    batch 4, 3 epochs, seed 42): 47% validation accuracy with the Trainer's order, 74% with
    shuffled groups, 82% with plain random batches (seed 1: 62% vs 66%). Hence opt-in.
    """

    def __init__(self, batch_size: int, lengths: list[int], generator: torch.Generator) -> None:
        self.batch_size = batch_size
        self.lengths = lengths
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        order = get_length_grouped_indices(self.lengths, self.batch_size, generator=self.generator)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield from batches[b]


class MixedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of labelled rows (indices 0 .. L-1) and unlabelled rows (L .. L+U-1).

    ratio None, the natural proportion: every row once per epoch, both kinds shuffled, and each
    batch holds the labelled rows' share L / (L + U) of its rows (rounded so that the counts
    add up), not just on average: a 10%-labelled run never sees a batch without labels.
    ratio R: round(R * batch_size) unlabelled rows in every batch, the rest labelled; an epoch
    is one pass over the labelled rows, and the unlabelled rows are drawn without replacement,
    carrying on from where the last batch stopped and reshuffled once all have been drawn.

    Every process of a distributed run builds the same batches from the same seed; Accelerate
    then hands each process whole batches, so a batch's mix is kept.
    """

    def __init__(
        self,
        labeled: int,
        unlabeled: int,
        batch_size: int,
        ratio: float | None,
        generator: torch.Generator,
    ) -> None:
        self.labeled, self.unlabeled = labeled, unlabeled
        self.batch_size = batch_size  # read by Accelerate's sharding
        self.ratio = ratio
        self.generator = generator
        if ratio is not None:
            self.unlabeled_per_batch = round(ratio * batch_size)
            self.labeled_per_batch = batch_size - self.unlabeled_per_batch
        self._pool: list[int] = []  # unlabelled rows not drawn yet (explicit ratio)

    def __len__(self) -> int:
        if self.ratio is None:
            return math.ceil((self.labeled + self.unlabeled) / self.batch_size)
        return math.ceil(self.labeled / self.labeled_per_batch)

    def _shuffled(self, n: int, offset: int = 0) -> list[int]:
        return (offset + torch.randperm(n, generator=self.generator)).tolist()

    def _draw_unlabeled(self, k: int) -> list[int]:
        rows: list[int] = []
        while len(rows) < k:
            if not self._pool:
                self._pool = self._shuffled(self.unlabeled, self.labeled)
            take = min(k - len(rows), len(self._pool))
            rows += self._pool[:take]
            del self._pool[:take]
        return rows

    def __iter__(self) -> Iterator[list[int]]:
        labeled = self._shuffled(self.labeled)
        if self.ratio is None:
            unlabeled = self._shuffled(self.unlabeled, self.labeled)
            total = self.labeled + self.unlabeled
            for b in range(len(self)):
                start, end = b * self.batch_size, min((b + 1) * self.batch_size, total)
                # Labelled rows among the first `end` of the epoch: their share, rounded down.
                l0, l1 = start * self.labeled // total, end * self.labeled // total
                yield labeled[l0:l1] + unlabeled[start - l0 : end - l1]
            return
        per_l, per_u = self.labeled_per_batch, self.unlabeled_per_batch
        for b in range(len(self)):
            rows = labeled[b * per_l : (b + 1) * per_l]
            # A short last batch keeps the ratio.
            yield rows + self._draw_unlabeled(
                per_u if len(rows) == per_l else round(len(rows) * per_u / per_l)
            )


def make_loaders(
    train: Dataset,
    val: Dataset,
    tokenizers: dict[str, PreTrainedTokenizerBase],
    config: DistillConfig | FinetuneConfig,
    accelerator: Accelerator,
    train_prefixes: tuple[str, ...] | None = None,
    encoders: dict[str, Any] | None = None,
    unlabeled_rows: int = 0,
) -> tuple[DataLoader, DataLoader, Dataset]:
    """Tokenise once per model (`student_*`, `teacher_*` columns), pad per batch.

    `encoders` replaces a prefix's tokenizer for encoding (a prompt teacher builds its prompts);
    the tokenizers still pad.

    With --group-by-length, training batches group examples of similar student length
    (shuffled groups of batches), so little compute goes to padding; every example is seen once
    per epoch either way. The last `unlabeled_rows` rows of `train` are unlabelled: a
    MixedBatchSampler then decides each batch's mix. `train_prefixes` limits which models'
    inputs the training batches carry (with cached teacher logits, only the student's). Each
    row keeps its index in `row`, to find its cached teacher logits. Returns the loaders and
    the tokenised training set.
    """
    from torch.utils.data import DataLoader

    from kdistill.data.prepare import PairCollator, tokenize

    with accelerator.main_process_first():
        encoders = {**tokenizers, **(encoders or {})}
        train_tok = tokenize(train, encoders, config.max_length)
        val_tok = tokenize(val, encoders, config.max_length)
    train_tok = train_tok.add_column("row", list(range(len(train_tok))))
    val_tok = val_tok.add_column("row", list(range(len(val_tok))))
    keep = [c for c in train_tok.column_names if c != "text"]
    train_tokenizers = {p: tokenizers[p] for p in (train_prefixes or tuple(tokenizers))}
    generator = torch.Generator().manual_seed(config.seed)
    batching: dict[str, Any]
    # Every training loader draws only from this generator (the sampler's shuffle and the
    # loader's base seed), never from the global RNG that dropout uses: a resume sets its state
    # at the start of the epoch and replays the order exactly.
    if unlabeled_rows:
        ratio = getattr(config, "unlabeled_ratio", None)
        batching = {
            "batch_sampler": MixedBatchSampler(
                len(train_tok) - unlabeled_rows, unlabeled_rows, config.batch_size, ratio, generator
            ),
            "generator": generator,
        }
    elif getattr(config, "group_by_length", False):
        lengths = [
            len(ids)
            for ids in train_tok.select_columns(["student_input_ids"])[:]["student_input_ids"]
        ]
        batching = {
            "batch_size": config.batch_size,
            "sampler": ShuffledLengthGroupedSampler(config.batch_size, lengths, generator),
            "generator": generator,
        }
    else:
        batching = {"batch_size": config.batch_size, "shuffle": True, "generator": generator}
    train_loader = DataLoader(
        train_tok.with_format(columns=keep), collate_fn=PairCollator(train_tokenizers), **batching
    )
    eval_bs = config.eval_batch_size or config.batch_size * 4
    val_loader = DataLoader(
        val_tok.with_format(columns=keep),
        batch_size=eval_bs,
        shuffle=False,
        collate_fn=PairCollator(tokenizers),
    )
    return train_loader, val_loader, train_tok


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
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
    return on


def student_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
            ("loss", "kl", "ce", "labeled_loss", "unlabeled_loss"), 0.0
        )
    )
    counts: dict[str, int] = field(default_factory=lambda: {"labeled": 0, "unlabeled": 0})
    elapsed_s: float = 0.0

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


def train_one_epoch(
    student: torch.nn.Module,
    teacher: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Accelerator,
    temperature: float,
    alpha: float,
    desc: str,
    progress: EpochProgress | None = None,
    after_step: Callable[[EpochProgress], None] | None = None,
) -> dict[str, Any]:
    """One pass over the training data. `teacher(batch)` gives the batch's teacher logits
    (online or from the cache); without one (fine-tuning) the loss is plain CE.

    `progress` resumes an epoch: its first `progress.step` batches are skipped (the loader must
    replay the same order) and its sums carried on. `after_step(progress)` runs after every
    batch: checkpoints and stop requests live there.

    Returns the epoch's means: train_loss and train_kl over all rows, train_ce and
    train_loss_labeled over the labelled rows, train_loss_unlabeled (T^2 * KL) over the
    unlabelled ones; None where there were no such rows."""
    from tqdm.auto import tqdm

    progress = progress or EpochProgress()
    sums, counts = progress.sums, progress.counts
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
        with accelerator.accumulate(student):
            student_logits = student(**student_inputs(batch)).logits  # (batch, num_labels)
            if teacher is not None:
                teacher_logits = teacher(batch)  # (batch, num_labels), no grad
                parts = kd_loss(student_logits, teacher_logits, batch["labels"], temperature, alpha)
            else:
                ce = torch.nn.functional.cross_entropy(student_logits.float(), batch["labels"])
                zero = torch.zeros((), device=ce.device)
                parts = KDLoss(ce, zero, ce.detach(), ce.detach(), zero, len(batch["labels"]), 0)
            loss = parts.loss
            check_finite(loss, accelerator, optimizer, desc, step)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(student.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        n_l, n_u = parts.num_labeled, parts.num_unlabeled
        counts["labeled"] += n_l
        counts["unlabeled"] += n_u
        # One device sync for the five numbers.
        values = torch.stack(
            [loss.detach(), parts.kl, parts.ce, parts.labeled_loss, parts.unlabeled_loss]
        ).tolist()
        weights = (n_l + n_u, n_l + n_u, n_l, n_l, n_u)
        for key, value, rows in zip(sums, values, weights, strict=True):
            sums[key] += value * rows
        progress.step, progress.elapsed_s = step + 1, time.perf_counter() - start
        if step % 10 == 0:
            seen = max(counts["labeled"] + counts["unlabeled"], 1)
            rate = seen * accelerator.num_processes / max(progress.elapsed_s, 1e-9)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}", samples_s=f"{rate:.1f}")
        if after_step is not None:
            after_step(progress)
    elapsed = time.perf_counter() - start
    totals = progress.totals(accelerator)
    labeled, unlabeled = totals.counts["labeled"], totals.counts["unlabeled"]
    rows = labeled + unlabeled

    def mean(key: str, n: int) -> float | None:
        return totals.sums[key] / n if n else None

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


def save_model(
    path: Path,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
) -> None:
    """save_pretrained (safetensors) + tokenizer into a temp folder, renamed over `path`.

    Every process calls it: under FSDP and DeepSpeed each holds a shard, and gathering the whole
    student takes them all."""
    from accelerate.utils import DistributedType

    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    state_dict = accelerator.get_state_dict(model) if sharded else None
    if not accelerator.is_main_process:
        return
    with atomic_dir(path) as tmp:
        accelerator.unwrap_model(model, keep_torch_compile=False).save_pretrained(
            tmp, state_dict=state_dict
        )
        tokenizer.save_pretrained(tmp)


@contextlib.contextmanager
def failure_recorded(
    history: dict[str, Any], path: Path, accelerator: Accelerator
) -> Iterator[None]:
    try:
        yield
    except RunStopped as e:  # on request, with a checkpoint: not a failure
        if accelerator.is_main_process:
            history["stopped"] = str(e)
            atomic_write_json(path, history)
        raise
    except BaseException as e:
        if accelerator.is_main_process:
            history["failed"] = f"{type(e).__name__}: {e}"
            atomic_write_json(path, history)
        raise


def save_training_curves(history: dict[str, Any], path: Path) -> None:
    """The curves are a view of history.json: failing to draw them must not fail a run whose
    models are saved, so a plotting error is a warning."""
    from kdistill.evaluation.report import plot_training_curves

    try:
        plot_training_curves(history, path)
    except Exception as e:  # noqa: BLE001
        logger.warning("could not draw %s: %s", path.name, e)


def library_versions() -> dict[str, str]:
    import accelerate
    import datasets
    import transformers

    return {
        "kdistill": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
    }


def chance_accuracy(labels: list[int], num_labels: int) -> float:
    """What a teacher that knows nothing scores: uniform guessing, or always naming the
    validation split's most common class, whichever is higher."""
    counts = torch.bincount(torch.tensor(labels), minlength=num_labels)
    return max(1.0 / num_labels, float(counts.max()) / max(len(labels), 1))


# A teacher that closes less than this share of the gap between chance and a perfect score is
# "near chance". A ratio of accuracy to chance cannot say it: 2x chance is 100% on a binary task.
NEAR_CHANCE_SKILL = 0.25


def skill_over_chance(accuracy: float, chance: float) -> float:
    """Where accuracy sits between chance (0) and a perfect score (1): (acc - chance) /
    (1 - chance), the same scale for 2 classes and 200. 0 when chance is already perfect (every
    validation row one class), since no teacher can show anything there."""
    return 0.0 if chance >= 1.0 else (accuracy - chance) / (1.0 - chance)


def check_teacher_strength(accuracy: float, chance: float, allow_weak: bool) -> None:
    """Refuse a teacher at or below chance (skill 0): its soft targets carry no knowledge of the
    task, and distilling from them teaches the student noise (a raw zero-shot LLM can land below
    chance). Warn below NEAR_CHANCE_SKILL of the way from chance to a perfect score."""
    skill = skill_over_chance(accuracy, chance)
    if skill <= 0.0:
        message = (
            f"the teacher's validation accuracy {accuracy:.3f} is at or below chance "
            f"({chance:.3f}), so distilling from it would teach noise; check it with kdistill "
            "eval-teacher, fine-tune it (finetune-teacher), try --calibrate, --few-shot or "
            "--label-words for a prompt teacher, or pass --allow-weak-teacher"
        )
        if not allow_weak:
            raise KdistillError(message)
        logger.warning("%s (allowed by --allow-weak-teacher)", message.split(", so")[0])
    elif skill < NEAR_CHANCE_SKILL:
        share, limit = 100 * skill, 100 * NEAR_CHANCE_SKILL
        logger.warning(
            "the teacher's validation accuracy %.3f is near chance (%.3f): it closes only %.0f%% "
            "of the gap from chance to 100%% (below %.0f%%), so distilling from it will help the "
            "student little",
            accuracy,
            chance,
            share,
            limit,
        )
    else:
        logger.info("teacher validation accuracy %.4f (chance %.4f)", accuracy, chance)


def loss_parts(stats: dict[str, Any]) -> str:
    """'KL 0.41, CE 0.12' for the log line, plus each kind of row's loss when both are there."""
    parts = [f"KL {stats['train_kl']:.4f}"]
    if stats["train_ce"] is not None:
        parts.append(f"CE {stats['train_ce']:.4f}")
    if stats["train_unlabeled_samples"] and stats["train_labeled_samples"]:
        parts.append(
            f"labelled rows {stats['train_loss_labeled']:.4f}, unlabelled rows "
            f"{stats['train_loss_unlabeled']:.4f}"
        )
    return ", ".join(parts)


def check_training_rows(dataset: str, labeled: int, unlabeled: int, config: DistillConfig) -> None:
    """What a run can learn from: cross-entropy needs labelled rows, the KD term any row."""
    if labeled + unlabeled == 0:
        raise KdistillError(
            f"--dataset {dataset} has no training rows; pass labelled data, or text to learn "
            "from the teacher alone with --unlabeled-data and --alpha 1"
        )
    if labeled == 0 and config.alpha < 1.0:
        raise KdistillError(
            f"--dataset {dataset} has no labelled training rows, so the cross-entropy term "
            "(1 - alpha) has nothing to learn from; pass --alpha 1 or labelled data"
        )
    if labeled == 0 and config.unlabeled_ratio is not None:
        raise KdistillError(
            "--unlabeled-ratio sets the unlabelled share next to labelled rows in each batch, "
            f"and --dataset {dataset} has no labelled training rows; drop --unlabeled-ratio"
        )


def warn_unlabeled_overlap(unlabeled: Dataset, data: LabelledData) -> None:
    """Unlabelled text that is also in validation or test lets the student copy the teacher on
    the rows it is measured on: allowed (it is how transductive setups work) but said."""
    texts = set(unlabeled["text"])
    for split in ("validation", "test"):
        if split in data.splits:
            shared = len(texts.intersection(data.splits[split]["text"]))
            if shared:
                logger.warning(
                    "%d --unlabeled-data texts are also in %s: the student learns the teacher's "
                    "answers on rows it is measured on",
                    shared,
                    split,
                )


# --------------------------------------------------------------------------- resuming


def open_run_dir(
    config: DistillConfig, name: str, accelerator: Accelerator
) -> tuple[Path, Path, Path | None]:
    """(final, partial, checkpoint): a new run directory, or with --resume/--resume-from the
    unfinished one to continue and its latest checkpoint. The main process decides; the others
    are told, since they write their part of each checkpoint there too."""
    from accelerate.utils import broadcast_object_list

    chosen: list[Any] = [None, None, None, None]
    if accelerator.is_main_process:
        try:
            run = resume_dir(config, name)
            if run is None:
                final, partial = new_run_dir(Path(config.output_dir), name)
                chosen = [final, partial, None, None]
            else:
                final = run.with_name(run.name.removesuffix(PARTIAL_SUFFIX))
                chosen = [final, run, latest_checkpoint(run), None]
        except KdistillError as e:
            chosen[3] = str(e)
    if accelerator.num_processes > 1:
        broadcast_object_list(chosen)
    if chosen[3] is not None:
        raise KdistillError(chosen[3])
    return chosen[0], chosen[1], chosen[2]


def note_resume(run_dir: Path, checkpoint: Path) -> None:
    """config.json says who is writing the run now (`kdistill runs` shows it running) and
    keeps a line per resume."""
    path = run_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["process"] = {"pid": os.getpid(), "host": socket.gethostname()}
    config.setdefault("resumed", []).append(
        {
            "at": datetime.now().isoformat(timespec="seconds"),
            "checkpoint": checkpoint.name,
            "command": sys.argv,
        }
    )
    atomic_write_json(path, config)


def digest_rows(ds: Dataset) -> str:
    """The training rows (texts and labels, in order): a resume must train on the same ones."""
    from kdistill.teachers.cache import texts_digest

    rows = ds.select_columns(["text", "label"])[:]
    return texts_digest(
        [f"{label}\t{text}" for text, label in zip(rows["text"], rows["label"], strict=True)]
    )


def _mixed_sampler(loader: Any) -> MixedBatchSampler | None:
    sampler = getattr(loader, "batch_sampler", None)
    while sampler is not None and not isinstance(sampler, MixedBatchSampler):
        sampler = getattr(sampler, "batch_sampler", None)  # Accelerate's shard wraps it
    return sampler


def sampler_state(loader: DataLoader) -> dict[str, Any]:
    """The training order's state: the loader's generator and the unlabelled rows a
    MixedBatchSampler has not drawn yet."""
    mixed = _mixed_sampler(loader)
    return {
        "generator": encode_generator(loader.generator),
        "pool": list(mixed._pool) if mixed is not None else None,
    }


def restore_sampler(loader: DataLoader, saved: dict[str, Any]) -> None:
    decode_generator(loader.generator, saved["generator"])
    mixed = _mixed_sampler(loader)
    if mixed is not None:
        mixed._pool = list(saved["pool"] or [])


def resumed_progress(saved: dict[str, Any], accelerator: Accelerator) -> EpochProgress:
    """The checkpoint's epoch sums are totals over the processes: the main process carries
    them on, the others start from zero, and the epoch's reduce adds them up again."""
    progress = EpochProgress(step=saved["step"], elapsed_s=saved["progress"]["elapsed_s"])
    if accelerator.is_main_process:
        progress.sums.update(saved["progress"]["sums"])
        progress.counts.update(saved["progress"]["counts"])
    return progress


def weights_finite(model: torch.nn.Module, accelerator: Accelerator) -> bool:
    """Whether every weight is a number, on every process (FSDP and ZeRO-3 hold shards)."""
    bad = torch.tensor(
        [float(not all(bool(torch.isfinite(p).all()) for p in model.parameters()))],
        device=accelerator.device,
    )
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    return bad.item() == 0


KD_LOSS = (
    "mean over rows of: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * "
    "CE(s, label) for a labelled row, T^2 * KL for an unlabelled row"
)
CE_LOSS = "CE(s, label), mean over the labelled rows (alpha 0: no teacher on any row)"


def teacher_record(config: DistillConfig, teacher: Teacher | None, dtype: str) -> dict[str, Any]:
    """config.json's teacher block; with no teacher (alpha 0) the same keys, None, and used
    false, so everything that parses a run's config reads it the same way."""
    from kdistill.students.load import count_parameters
    from kdistill.teachers.prompt import few_shot_record

    if teacher is None:
        return {
            "model": config.teacher_model,
            "used": False,
            "class": None,
            "parameters": None,
            "mode": None,
            "settings": None,
            "few_shot": None,
            "dtype": None,
            "attn_implementation": None,
        }
    model = teacher.model
    return {
        "model": config.teacher_model,
        "used": True,
        "class": type(model).__name__,
        "parameters": count_parameters(model),
        "mode": teacher.mode,
        "settings": teacher.settings(),
        "few_shot": few_shot_record(teacher, config.seed),
        "dtype": dtype,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }


def run_name(dataset: str, temperature: float, alpha: float) -> str:
    return f"{dataset}_T{format_float(temperature)}_A{format_float(alpha)}"


@dataclass
class RunSetup:
    """What every training command starts from: the resolved device and precision, a fresh
    Accelerator, the labelled data and its (subsampled) train and validation splits."""

    device: str
    precision: str
    accelerator: Accelerator
    data: LabelledData
    train: Dataset
    val: Dataset


def start_command(
    config: DistillConfig | FinetuneConfig | EvalTeacherConfig, accumulation: int = 1
) -> tuple[str, str, Accelerator, LabelledData]:
    """Device, precision, a fresh Accelerator, the seed, and the labelled data: what every
    command that runs a model starts from."""
    # Accelerate's, not transformers': the same seeding, without importing peft through the
    # Trainer's utilities (2.5 s of every command's start-up).
    from accelerate.utils import set_seed

    from kdistill.data.prepare import load_for_training
    from kdistill.students.load import quiet_transformers, set_load_policy

    quiet_transformers()
    # Safetensors only and no model code unless the flags ask: every load below reads this.
    set_load_policy(config.allow_pickle, config.trust_remote_code)
    device = pick_device(config.device)
    precision = pick_mixed_precision(config.mixed_precision, device)
    accelerator = make_accelerator(
        device, precision, accumulation, getattr(config, "report_to", "none")
    )
    set_seed(config.seed)
    # The data set's class names are the label space.
    data = load_for_training(
        config.dataset,
        config.data_dir,
        config.text_column,
        config.label_column,
        config.validation_split,
        config.seed,
    )
    return device, precision, accelerator, data


def setup_run(config: DistillConfig | FinetuneConfig) -> RunSetup:
    from kdistill.data.prepare import subsample

    check_tracker(getattr(config, "report_to", "none"))
    device, precision, accelerator, data = start_command(config, config.gradient_accumulation_steps)
    train = subsample(
        data.splits["train"], config.max_train_samples, config.seed, "--max-train-samples"
    )
    val = subsample(
        data.splits["validation"], config.max_val_samples, config.seed, "--max-val-samples"
    )
    logger.info(
        "%s: %d classes, %d train rows, %d validation rows",
        data.name,
        data.num_labels,
        len(train),
        len(val),
    )
    return RunSetup(device, precision, accelerator, data, train, val)


def distill(config: DistillConfig) -> Path:
    """The distill command. Returns the completed run directory.

    A run that fails before its first epoch (bad input found late, a full disk) leaves no run
    directory behind; one that fails while training keeps its `.partial` folder."""
    created: list[Path] = []
    try:
        return _distill(config, created)
    except BaseException:
        for partial in created:
            discard_unstarted(partial)
        raise


def _distill(config: DistillConfig, created: list[Path]) -> Path:
    from accelerate.utils import set_seed

    from kdistill.data.prepare import load_unlabeled, split_record, with_unlabeled
    from kdistill.evaluation.metrics import evaluate
    from kdistill.students.load import count_parameters, load_student
    from kdistill.teachers.classifier import load_teacher

    run = setup_run(config)
    device, precision, accelerator = run.device, run.precision, run.accelerator
    data, train, val = run.data, run.train, run.val

    # alpha 0 is pure supervised training (the cross-entropy-only baseline): no row learns from
    # the teacher, so it is neither loaded nor run, and a weak one cannot stop the run.
    uses_teacher = config.alpha > 0
    # ---- unlabelled text (a transfer set): after the labelled rows, with label UNLABELED
    unlabeled = None
    if config.unlabeled_data and not uses_teacher:
        logger.warning(
            "--alpha 0 trains on the labels alone: the --unlabeled-data rows have no "
            "labels and nothing to learn from, so they are not used"
        )
    elif config.unlabeled_data:
        unlabeled = load_unlabeled(
            config.unlabeled_data,
            config.unlabeled_text_column,
            config.max_unlabeled_samples,
            config.seed,
        )
        warn_unlabeled_overlap(unlabeled, data)
        logger.info("%s: %d unlabelled rows", config.unlabeled_data, len(unlabeled))
    n_unlabeled = len(unlabeled) if unlabeled is not None else 0
    check_training_rows(config.dataset, len(train), n_unlabeled, config)

    # ---- models: teacher frozen in eval mode, student with a fresh head for these classes
    t_dtype, t_dtype_name = pick_teacher_dtype(config.teacher_dtype, precision)
    teacher = None
    if uses_teacher:
        teacher = load_teacher(
            config,
            config.teacher_model,
            data.label_names,
            t_dtype,
            train,
            config.max_length,
            config.seed,
        )
    else:
        logger.info(
            "--alpha 0: cross-entropy only; the teacher %s is not loaded", config.teacher_model
        )
    student, s_tok = load_student(
        config.student_model,
        data.label_names,
        config.seed,
        config.student_tokenizer,
        config.student_layers,
        config.student_num_layers,
    )
    n_student = count_parameters(student)
    checkpointing = apply_gradient_checkpointing(student, config.gradient_checkpointing, device)

    if config.compile:
        student = torch.compile(student)
    cached = teacher is not None and config.teacher_cache != "off"
    if cached:
        from kdistill.teachers.cache import teacher_logits_for
    tokenizers, encoders = {"student": s_tok}, None
    if teacher is not None:
        tokenizers["teacher"], encoders = teacher.tokenizer, {"teacher": teacher}
    train_loader, val_loader, train_tok = make_loaders(
        with_unlabeled(train, unlabeled),
        val,
        tokenizers,
        config,
        accelerator,
        ("student",) if cached else None,
        encoders,
        n_unlabeled,
    )
    val_tok, eval_bs = val_loader.dataset, val_loader.batch_size
    optimizer = make_optimizer(
        student, config.learning_rate, config.weight_decay, config.head_learning_rate_scale
    )
    scheduler, total_steps = make_scheduler(optimizer, len(train_loader), config)
    student, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        student, optimizer, train_loader, val_loader, scheduler
    )
    if teacher is not None:
        teacher.to(accelerator.device)

    # ---- run directory: `.partial` until complete; config.json first so a crash is explained.
    # A resume continues the unfinished run's directory from its latest checkpoint.
    final_dir, partial_dir, checkpoint = open_run_dir(
        config, run_name(data.name, config.temperature, config.alpha), accelerator
    )
    if accelerator.is_main_process and checkpoint is None:
        created.append(partial_dir)
        resolved = {
            "kind": "distill",
            **config.to_dict(),
            "resolved": {
                "device": str(accelerator.device),
                "mixed_precision": precision,
                "gradient_checkpointing": checkpointing,
                "num_processes": accelerator.num_processes,
                "effective_batch_size": config.batch_size
                * config.gradient_accumulation_steps
                * accelerator.num_processes,
                "total_optimizer_steps": total_steps,
                "eval_batch_size": eval_bs,
                "teacher_dtype": t_dtype_name if teacher is not None else None,
                # Share of unlabelled rows per batch: --unlabeled-ratio, else the natural one.
                "unlabeled_share": (
                    config.unlabeled_ratio
                    if config.unlabeled_ratio is not None
                    else n_unlabeled / (len(train) + n_unlabeled)
                ),
            },
            "data": {
                "name": data.name,
                "source": data.source,
                "label_names": data.label_names,
                "train_rows": len(train),  # labelled
                "validation_rows": len(val),
                "unlabeled_rows": n_unlabeled,
                "unlabeled_source": config.unlabeled_data,
                "split": split_record(data),
            },
            "teacher": teacher_record(config, teacher, t_dtype_name),
            "student": {
                "model": config.student_model,
                "class": type(accelerator.unwrap_model(student, keep_torch_compile=False)).__name__,
                "parameters": n_student,
            },
            "loss": KD_LOSS if teacher is not None else CE_LOSS,
            "command": sys.argv,
            "versions": library_versions(),
            "started": datetime.now().isoformat(timespec="seconds"),
            # `kdistill runs` tells a run still going from one that crashed by this process.
            "process": {"pid": os.getpid(), "host": socket.gethostname()},
        }
        atomic_write_json(partial_dir / "config.json", resolved)
        logger.info("run directory: %s (renamed on completion)", final_dir)
    start_tracking(accelerator, config.report_to, partial_dir, final_dir.name, config.to_dict())

    # ---- how good is the teacher? Distilling from a teacher at chance only adds noise.
    # With a cache, the validation logits are cached too: a sweep evaluates the teacher once.
    teacher_metrics: dict[str, Any] | None = None  # None: no teacher (alpha 0)
    if cached:
        from kdistill.evaluation.metrics import classification_metrics

        val_logits, _ = teacher_logits_for(
            config.teacher_cache,
            teacher,
            val_tok,
            list(val["text"]),
            config,
            accelerator,
            data.num_labels,
            t_dtype_name,
        )
        teacher_metrics = classification_metrics(
            val_logits, torch.tensor(list(val["label"])), data.num_labels
        )
    elif teacher is not None:
        teacher_metrics = evaluate(
            teacher.logits, val_loader, accelerator, data.num_labels, "teacher eval"
        )
    chance = chance_accuracy(list(val["label"]), data.num_labels)
    if teacher_metrics is not None:
        check_teacher_strength(teacher_metrics["accuracy"], chance, config.allow_weak_teacher)
    metric = (teacher_metrics or {}).get

    history: dict[str, Any] = {
        # Every key present either way (sweeps, runs and cards read them); None without a teacher.
        "teacher": {
            "used": teacher is not None,
            "val_accuracy": metric("accuracy"),
            "val_macro_f1": metric("macro_f1"),
            "val_loss": metric("loss"),
            "val_rows": metric("n"),
        },
        "chance_accuracy": chance,
        "epochs": [],
    }

    # ---- teacher targets: online every batch (--teacher-cache off, the seed's loop), or the
    # logits of every training example computed once in a length-sorted pass and looked up by row.
    # Either way unlabelled rows are covered; their texts are part of the cache key.
    if cached:
        texts = list(train_tok.select_columns(["text"])[:]["text"])
        cache, history["teacher_cache"] = teacher_logits_for(
            config.teacher_cache,
            teacher,
            train_tok,
            texts,
            config,
            accelerator,
            data.num_labels,
            t_dtype_name,
        )
        cache = cache.to(accelerator.device)
        # Its logits are all the run needs from the teacher now: give its memory to the student.
        teacher.to(torch.device("cpu"))
        if accelerator.device.type == "cuda":
            torch.cuda.empty_cache()

        def teacher_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return cache.index_select(0, batch["row"])
    elif teacher is None:  # alpha 0: train_one_epoch's plain cross-entropy
        history["teacher_cache"] = {"mode": "none", "reason": "--alpha 0: no teacher"}
        teacher_targets = None
    else:
        history["teacher_cache"] = {"mode": "off"}

        def teacher_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            with accelerator.autocast():
                return teacher.logits(batch)

    state = TrainState()
    # Reseed: what ran before (teacher evaluation or cache pass) must not shift dropout and
    # shuffling, so the same seed trains the same student with or without a cache.
    set_seed(config.seed)
    run_start = time.perf_counter()
    first_epoch, progress, saved = 1, None, {}
    data_digest = digest_rows(train_tok)
    if checkpoint is not None:  # weights, optimizer, scheduler, RNG, and where the loop was
        saved = load_checkpoint(accelerator, checkpoint)
        check_same_run(
            saved, accelerator.num_processes, data_digest, history["teacher_cache"].get("key")
        )
        first_epoch, run_start = saved["epoch"], run_start - saved["wall_time_s"]
        state = TrainState(
            saved["history"]["epochs"], saved["best"]["epoch"], saved["best"]["val_accuracy"]
        )
        history["epochs"], history["best"] = state.epochs, saved["best"]
        progress = resumed_progress(saved, accelerator)
        restore_sampler(train_loader, saved["sampler"])
        if accelerator.is_main_process:
            note_resume(partial_dir, checkpoint)
            atomic_write_json(partial_dir / "history.json", history)
        logger.info(
            "resumed from %s: epoch %d, %d batches done", checkpoint, first_epoch, progress.step
        )
    stop = GracefulStop()

    def save_checkpoint_at(
        epoch: int, progress: EpochProgress, sampler: dict[str, Any], lr: float
    ) -> None:
        """Every process, at the same step. Weights gone NaN are never saved over a good one."""
        if not weights_finite(student, accelerator):
            raise KdistillError(
                f"epoch {epoch}, step {progress.step}: the student's weights "
                "became NaN or inf; lower --learning-rate"
            )
        totals = progress.totals(accelerator)
        save_checkpoint(
            accelerator,
            partial_dir,
            {
                "epoch": epoch,
                "step": progress.step,
                "progress": {
                    "sums": totals.sums,
                    "counts": totals.counts,
                    "elapsed_s": progress.elapsed_s,
                },
                "sampler": sampler,
                "learning_rate": lr,
                "history": {"epochs": state.epochs},
                "best": {"epoch": state.best_epoch, "val_accuracy": state.best_accuracy},
                "wall_time_s": time.perf_counter() - run_start,
                "num_processes": accelerator.num_processes,
                "data_digest": data_digest,
                "teacher_cache_key": history["teacher_cache"].get("key"),
            },
        )

    def stopped(where: str) -> RunStopped:
        return RunStopped(
            f"stopped by {stop.name} {where}, checkpoint saved; resume with: "
            f"{resume_command(partial_dir, accelerator.num_processes)}",
            stop.exit_code,
        )

    def after_step(epoch: int, sampler: dict[str, Any], lr: float, progress: EpochProgress) -> None:
        """Checkpoint every --save-steps batches, and stop when asked: both only where an
        optimiser step has just been taken (gradients mid-accumulation are not saved)."""
        if not accelerator.sync_gradients:
            return
        stopping = stop.requested(accelerator)
        if stopping or (config.save_steps and progress.step % config.save_steps == 0):
            save_checkpoint_at(epoch, progress, sampler, lr)
        if stopping:
            raise stopped(f"at epoch {epoch}, batch {progress.step}")

    # A failure is written into history.json, so `kdistill runs` shows the run as crashed even
    # when the process goes on (a sweep, a notebook).
    with failure_recorded(history, partial_dir / "history.json", accelerator), stop:
        for epoch in range(first_epoch, config.epochs + 1):
            # As the epoch starts (a resume replays the sampler from here).
            lr = saved["learning_rate"] if progress else scheduler.get_last_lr()[0]
            sampler = sampler_state(train_loader)
            stats = train_one_epoch(
                student,
                teacher_targets,
                train_loader,
                optimizer,
                scheduler,
                accelerator,
                config.temperature,
                config.alpha,
                f"epoch {epoch}/{config.epochs}",
                progress,
                functools.partial(after_step, epoch, sampler, lr),
            )
            progress = None
            student.eval()  # dropout off: the numbers must be the model's, not one noisy draw
            metrics = evaluate(
                lambda b: student(**student_inputs(b)).logits,
                val_loader,
                accelerator,
                data.num_labels,
                "validation",
            )
            record = {
                "epoch": epoch,
                **stats,
                "val_loss": metrics["loss"],
                "val_accuracy": metrics["accuracy"],
                "val_macro_f1": metrics["macro_f1"],
                "val_rows": metrics["n"],  # gathered from every process, each row once
                "learning_rate": lr,
                "wall_time_s": time.perf_counter() - run_start,
            }
            state.epochs.append(record)
            logger.info(
                "epoch %d: loss %.4f (%s), val acc %.4f, macro-F1 %.4f, %.1f samples/s",
                epoch,
                stats["train_loss"],
                loss_parts(stats),
                metrics["accuracy"],
                metrics["macro_f1"],
                stats["samples_per_second"],
            )
            if not math.isfinite(metrics["loss"]):  # never a best model from broken weights
                raise KdistillError(
                    f"epoch {epoch}: the validation loss is {metrics['loss']}; "
                    "lower --learning-rate"
                )
            if metrics["accuracy"] > state.best_accuracy:
                state.best_accuracy, state.best_epoch = metrics["accuracy"], epoch
                save_model(partial_dir / "best_model", student, s_tok, accelerator)
            history["epochs"] = state.epochs
            history["best"] = {"epoch": state.best_epoch, "val_accuracy": state.best_accuracy}
            logged = {
                "train/loss": stats["train_loss"],
                "train/kl": stats["train_kl"],
                "train/ce": stats["train_ce"],
                "train/loss_labeled": stats["train_loss_labeled"],
                "train/loss_unlabeled": stats["train_loss_unlabeled"],
                "train/samples_per_second": stats["samples_per_second"],
                "val/loss": metrics["loss"],
                "val/accuracy": metrics["accuracy"],
                "val/macro_f1": metrics["macro_f1"],
                "learning_rate": lr,
                "teacher/val_accuracy": metric("accuracy"),
            }
            accelerator.log({k: v for k, v in logged.items() if v is not None}, step=epoch)
            if accelerator.is_main_process:
                atomic_write_json(partial_dir / "history.json", history)
            # The next epoch from its first batch, the sampler as that epoch will find it (after
            # the last epoch only when stopping: the final model is moments away).
            stopping = stop.requested(accelerator)
            if epoch < config.epochs or stopping:
                save_checkpoint_at(
                    epoch + 1,
                    EpochProgress(),
                    sampler_state(train_loader),
                    scheduler.get_last_lr()[0],
                )
            if stopping:
                raise stopped(f"after epoch {epoch}")

        save_model(partial_dir / "final_model", student, s_tok, accelerator)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        history["total_time_s"] = time.perf_counter() - run_start
        history["completed"] = datetime.now().isoformat(timespec="seconds")
        atomic_write_json(partial_dir / "history.json", history)
        save_training_curves(history, partial_dir / "training_curves.png")
        from kdistill.shipping.model_card import write_run_cards

        write_run_cards(partial_dir, config.push_to_hub)  # README.md in each model folder
    accelerator.end_training()  # closes the trackers' files before the folder is renamed
    if accelerator.is_main_process:
        # Complete: the models are saved, and the optimizer state is dead weight (16 bytes per
        # student parameter).
        shutil.rmtree(partial_dir / CHECKPOINTS, ignore_errors=True)
        finish_run_dir(partial_dir, final_dir)
        teacher_part = (
            f"teacher {metric('accuracy'):.4f}, {count_parameters(teacher.model) / 1e6:.1f}M "
            "parameters"
            if teacher is not None
            else "no teacher (alpha 0)"
        )
        logger.info(
            "done: best validation accuracy %.4f at epoch %d; %s; student %.1fM parameters; %s",
            state.best_accuracy,
            state.best_epoch,
            teacher_part,
            n_student / 1e6,
            final_dir,
        )
        if config.push_to_hub:  # after the rename: a failed upload leaves a complete run
            from kdistill.shipping.publish import push_folder

            push_folder(final_dir / "best_model", config.push_to_hub, not config.hub_public)
    return final_dir
