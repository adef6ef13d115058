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

import json
import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.errors import KdistillError
from kdistill.files import atomic_dir, atomic_write_json

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase


logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
STATE_FORMAT = "kdistill-checkpoint/1"

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
    """A checkpoint's state.json, or None when it is missing or unreadable."""
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


def weights_finite(model: torch.nn.Module, accelerator: Accelerator) -> bool:
    """Whether every weight is a number, on every process (FSDP and ZeRO-3 hold shards)."""
    bad = torch.tensor(
        [float(not all(bool(torch.isfinite(p).all()) for p in model.parameters()))],
        device=accelerator.device,
    )
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    return bad.item() == 0


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
    from kdistill.students.lora import merged_copy

    with atomic_dir(path) as tmp:  # a LoRA student is saved with its adapters folded in
        merged_copy(accelerator.unwrap_model(model, keep_torch_compile=False)).save_pretrained(
            tmp, state_dict=state_dict
        )
        tokenizer.save_pretrained(tmp)


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
