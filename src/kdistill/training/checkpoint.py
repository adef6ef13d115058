"""Resumable training state, and stopping cleanly on SIGINT/SIGTERM.

A checkpoint is `<run>/checkpoints/epoch-<E>-step-<S>/`: what `accelerator.save_state` writes
(the student's weights, optimizer, scheduler, every process's RNG states) plus `state.json`, the
loop's own position: the epoch and how many of its batches are done, the running sums of the
epoch's means, the history so far, the sampler's state at the start of the epoch (replayed, then
the done batches skipped), and digests of the data and teacher logits the run trained on.

It is written under a hidden name and renamed into place; the older one is deleted only after,
so at every instant one complete checkpoint exists. The teacher is not in it: it is frozen, and
is loaded again from --teacher-model (its logits from the cache, or recomputed).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.errors import KdistillError
from kdistill.training.runs import PARTIAL_SUFFIX, atomic_write_json, process_alive

if TYPE_CHECKING:
    from accelerate import Accelerator

    from kdistill.config import DistillConfig

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
STATE_FORMAT = "kdistill-checkpoint/1"
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
        "eval_batch_size",
        "prefix_cache",
    }
)


# --------------------------------------------------------------------------- writing and reading


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: dict[str, Any]) -> Path:
    """Every process calls this at the same step (save_state writes each one's RNG states);
    the main process writes state.json, renames the folder into place and drops older ones."""
    root = run_dir / CHECKPOINTS
    name = f"epoch-{state['epoch']}-step-{state['step']}"
    tmp, final = root / f".{name}.tmp", root / name
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, {"format": STATE_FORMAT, **state})  # last: complete
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in root.iterdir():
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (one with state.json) of a run, None when it has none."""
    root = run_dir / CHECKPOINTS
    found = []
    for folder in root.iterdir() if root.is_dir() else []:
        state = read_state(folder) if not folder.name.startswith(".") else None
        if state is not None:
            found.append(((state["epoch"], state["step"]), folder))
    return max(found)[1] if found else None


def read_state(checkpoint: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("format") == STATE_FORMAT else None


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> dict[str, Any]:
    """Restore the student, optimizer, scheduler and RNG states; return state.json."""
    accelerator.load_state(str(checkpoint))
    state = read_state(checkpoint)
    if state is None:
        raise KdistillError(f"{checkpoint}: {STATE_FILE} is missing or unreadable")
    return state


def encode_generator(generator: torch.Generator) -> str:
    return base64.b64encode(generator.get_state().numpy().tobytes()).decode("ascii")


def decode_generator(generator: torch.Generator, text: str) -> None:
    raw = bytearray(base64.b64decode(text))
    generator.set_state(torch.frombuffer(raw, dtype=torch.uint8).clone())


# --------------------------------------------------------------------------- what to resume


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


# --------------------------------------------------------------------------- stopping on a signal


class GracefulStop:
    """SIGINT and SIGTERM during training set a flag instead of killing the run; the loop reads
    it after each optimiser step, saves a checkpoint and stops. A second SIGINT stops at once
    (KeyboardInterrupt), for when saving hangs.

    Under `accelerate launch` the processes may see the signal at different steps, so the flag is
    agreed across them (any process's request stops all) before anyone starts saving."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():  # signals go to the main one
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return  # the launcher passing the same stop on as SIGTERM
        self.signum = signum
        logger.warning(
            "%s: finishing this step, then saving a checkpoint (Ctrl-C again to stop "
            "at once, without one)",
            signal.Signals(signum).name,
        )

    def requested(self, accelerator: Accelerator) -> bool:
        local = self.signum is not None
        if accelerator.num_processes == 1:
            return local
        flag = torch.tensor([float(local)], device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item() > 0)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name
