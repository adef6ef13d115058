"""Continuing a run: which unfinished run directory --resume and --resume-from mean, whether
it is the same run (flags, processes, data, teacher logits), the command that continues it, and
the glue the distill command uses to checkpoint as it trains and to pick up where it stopped.

The checkpoint format itself is in `checkpoint.py`; this module decides when to write one and
what a resumed loop must restore from it.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.errors import KdistillError, RunStopped
from kdistill.files import atomic_write_json
from kdistill.training.checkpoint import (
    GracefulStop,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    weights_finite,
)
from kdistill.training.loop import EpochProgress
from kdistill.training.records import TrainState
from kdistill.training.runs import PARTIAL_SUFFIX, new_run_dir, process_alive
from kdistill.training.samplers import restore_sampler, sampler_state

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from kdistill.config import DistillConfig

logger = logging.getLogger(__name__)

# Flags that do not change what a run computes, so a resume may pass other values.
RESUME_FREE_FLAGS = frozenset(
    {
        "resume",
        "resume_from",
        "save_steps",
        "output_dir",
        "data_dir",
        "report_to",
        "device",
        "teacher_cache",
        "teacher_cache_dir",
        "teacher_batch_size",
        "calibrate_student",  # acts after the last epoch: the weights trained are the same
        "eval_batch_size",
        "prefix_cache",
    }
)


def resume_dir(config: DistillConfig, run_name: str) -> Path | None:
    """The `.partial` run directory to continue: --resume-from's (checked), or with --resume the
    newest unfinished run of this configuration under --output-dir (None: start a new run)."""
    if config.resume_from:
        path = Path(config.resume_from)
        if not path.is_dir() and path.with_name(path.name + PARTIAL_SUFFIX).is_dir():
            path = path.with_name(path.name + PARTIAL_SUFFIX)  # the name without .partial
        if not path.is_dir():
            raise KdistillError(f"--resume-from {config.resume_from}: no such run directory")
        if not path.name.endswith(PARTIAL_SUFFIX):
            raise KdistillError(f"--resume-from {path}: this run is complete; nothing to resume")
        check_resumable(path, config)
        return path
    if not config.resume:
        return None
    candidates = []
    for path in Path(config.output_dir).glob(f"{run_name}_*{PARTIAL_SUFFIX}"):
        try:
            check_resumable(path, config)
        except KdistillError as e:
            logger.debug("not resuming %s: %s", path, e)
            continue
        candidates.append((path.stat().st_mtime, path))
    if not candidates:
        logger.info(
            "--resume: no unfinished run of this configuration under %s; starting a new one",
            config.output_dir,
        )
        return None
    return max(candidates)[1]


def check_resumable(run_dir: Path, config: DistillConfig) -> None:
    """A run can be continued by this command: it has a checkpoint, no process is still
    writing it, and it was started with the same flags (those in RESUME_FREE_FLAGS aside)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise KdistillError(f"--resume-from {run_dir}: cannot read its config.json ({e})") from e
    if latest_checkpoint(run_dir) is None:
        raise KdistillError(
            f"--resume-from {run_dir}: it has no checkpoint (it stopped before "
            "the first one); start a new run"
        )
    try:
        history = json.loads((run_dir / "history.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        history = {}  # none yet (it stopped before the first epoch ended), or torn
    if (
        not history.get("failed")
        and not history.get("stopped")
        and process_alive(saved.get("process"))
    ):
        raise KdistillError(
            f"--resume-from {run_dir}: process {saved['process']['pid']} is still running it"
        )
    ours = config.to_dict()
    for key, value in ours.items():
        if key in RESUME_FREE_FLAGS or key not in saved or saved[key] == value:
            continue
        flag = "--" + key.replace("_", "-")
        raise KdistillError(
            f"--resume-from {run_dir}: it was started with {flag} {saved[key]}, this command "
            f"has {flag} {value}; resume with the flags it was started with, or start a new run"
        )


def check_same_run(
    state: dict[str, Any], num_processes: int, data_digest: str, teacher_cache_key: str | None
) -> None:
    """What the flags cannot show: the process count (each one's data shard and RNG), the
    training data itself, and the teacher (its cache key covers weights, tokenizer, precision)."""
    if state["num_processes"] != num_processes:
        raise KdistillError(
            f"the checkpoint was written by {state['num_processes']} processes and this run has "
            f"{num_processes}; resume with the same number (accelerate launch --num_processes)"
        )
    if state["data_digest"] != data_digest:
        raise KdistillError(
            "the training data changed since the checkpoint was written (same "
            "flags, other rows); start a new run"
        )
    saved_key = state.get("teacher_cache_key")
    if saved_key and teacher_cache_key and saved_key != teacher_cache_key:
        raise KdistillError(
            "the teacher's logits differ from the checkpoint's (its weights, "
            "tokenizer or precision changed); start a new run"
        )


def resume_command(run_dir: Path, num_processes: int) -> str:
    """This process's command line with --resume-from <run_dir> in place of any resume flag."""
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg in ("--resume", "--no-resume") or arg.startswith("--resume-from="):
            continue
        if arg == "--resume-from":
            skip = True
            continue
        argv.append(arg)
    program = Path(sys.argv[0]).name
    if program in ("__main__.py", "kdistill"):
        head = ["kdistill"] if num_processes == 1 else ["accelerate", "launch", "-m", "kdistill"]
    else:
        head = [sys.argv[0]] if num_processes == 1 else ["accelerate", "launch", sys.argv[0]]
    if num_processes > 1:
        head[2:2] = ["--num_processes", str(num_processes)]
    return shlex.join([*head, *argv, "--resume-from", str(run_dir)])


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


def resumed_progress(saved: dict[str, Any], accelerator: Accelerator) -> EpochProgress:
    """The checkpoint's epoch sums are totals over the processes: the main process carries
    them on, the others start from zero, and the epoch's reduce adds them up again."""
    progress = EpochProgress(step=saved["step"], elapsed_s=saved["progress"]["elapsed_s"])
    if accelerator.is_main_process:
        progress.sums.update(saved["progress"]["sums"])
        progress.counts.update(saved["progress"]["counts"])
    return progress


@dataclass
class RunCheckpoints:
    """The distill run's checkpoints: when one is written, what goes in it, and stopping on
    SIGINT/SIGTERM with one saved. Every process calls these at the same step: under FSDP and
    ZeRO-3 each holds a shard of what is saved."""

    accelerator: Accelerator
    run_dir: Path
    student: torch.nn.Module
    data_digest: str
    cache_key: str | None
    save_steps: int | None
    state: TrainState = field(default_factory=TrainState)
    run_start: float = field(default_factory=time.perf_counter)
    stop: GracefulStop = field(default_factory=GracefulStop)

    def save(self, epoch: int, progress: EpochProgress, sampler: dict[str, Any], lr: float) -> None:
        """Weights gone NaN are never saved over a good checkpoint."""
        if not weights_finite(self.student, self.accelerator):
            raise KdistillError(
                f"epoch {epoch}, step {progress.step}: the student's weights "
                "became NaN or inf; lower --learning-rate"
            )
        totals = progress.totals(self.accelerator)
        state = self.state
        save_checkpoint(
            self.accelerator,
            self.run_dir,
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
                "wall_time_s": time.perf_counter() - self.run_start,
                "num_processes": self.accelerator.num_processes,
                "data_digest": self.data_digest,
                "teacher_cache_key": self.cache_key,
            },
        )

    def stopped(self, where: str) -> RunStopped:
        """The exception that ends a run stopped by a signal, with the command that resumes it."""
        return RunStopped(
            f"stopped by {self.stop.name} {where}, checkpoint saved; resume with: "
            f"{resume_command(self.run_dir, self.accelerator.num_processes)}",
            self.stop.exit_code,
        )

    def after_step(
        self, epoch: int, sampler: dict[str, Any], lr: float, progress: EpochProgress
    ) -> None:
        """Checkpoint every --save-steps batches, and stop when asked: both only where an
        optimiser step has just been taken (gradients mid-accumulation are not saved)."""
        if not self.accelerator.sync_gradients:
            return
        stopping = self.stop.requested(self.accelerator)
        if stopping or (self.save_steps and progress.step % self.save_steps == 0):
            self.save(epoch, progress, sampler, lr)
        if stopping:
            raise self.stopped(f"at epoch {epoch}, batch {progress.step}")

    def after_epoch(self, epoch: int, last: bool, loader: DataLoader, scheduler: Any) -> None:
        """The next epoch from its first batch, the sampler as that epoch will find it (after
        the last epoch only when stopping: the final model is moments away)."""
        stopping = self.stop.requested(self.accelerator)
        if not last or stopping:
            self.save(epoch + 1, EpochProgress(), sampler_state(loader), scheduler.get_last_lr()[0])
        if stopping:
            raise self.stopped(f"after epoch {epoch}")


def resume_training(
    run: RunCheckpoints, checkpoint: Path, history: dict[str, Any], loader: DataLoader
) -> tuple[int, EpochProgress, dict[str, Any]]:
    """Load weights, optimizer, scheduler and RNG from `checkpoint`, check it is this run, and
    put the loop back where it was. Returns the epoch to continue, its progress, and the saved
    state (its learning rate is the epoch's)."""
    accelerator = run.accelerator
    saved = load_checkpoint(accelerator, checkpoint)
    check_same_run(saved, accelerator.num_processes, run.data_digest, run.cache_key)
    run.run_start -= saved["wall_time_s"]
    run.state = TrainState(
        saved["history"]["epochs"], saved["best"]["epoch"], saved["best"]["val_accuracy"]
    )
    history["epochs"], history["best"] = run.state.epochs, saved["best"]
    progress = resumed_progress(saved, accelerator)
    restore_sampler(loader, saved["sampler"])
    if accelerator.is_main_process:
        note_resume(run.run_dir, checkpoint)
        atomic_write_json(run.run_dir / "history.json", history)
    logger.info(
        "resumed from %s: epoch %d, %d batches done", checkpoint, saved["epoch"], progress.step
    )
    return saved["epoch"], progress, saved
