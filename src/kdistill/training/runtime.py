"""Where and how a training command runs: the device, the mixed precision, the teacher's dtype,
a fresh Accelerator, the tracker, the seed, and the labelled data every command starts from.

Accelerate supplies the device handling, mixed precision, accumulation and `accelerate launch`;
this module only chooses its settings from the flags, so every command chooses them alike.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill import __version__
from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset

    from kdistill.config import DistillConfig, EvalTeacherConfig, FinetuneConfig
    from kdistill.data.prepare import LabelledData

logger = logging.getLogger(__name__)


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
    """Whether this CPU does bf16 natively (AVX512-BF16, AMX); old torch builds lack the probe."""
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


def library_versions() -> dict[str, str]:
    """What config.json records, so that a number can be traced to the code that made it."""
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

    from kdistill.data.model_files import quiet_transformers, set_load_policy
    from kdistill.data.prepare import load_for_training

    quiet_transformers()
    # Safetensors only and no model code unless the flags ask: every load below reads this.
    set_load_policy(config.allow_pickle, config.trust_remote_code)
    device = pick_device(config.device)
    precision = pick_mixed_precision(config.mixed_precision, device)
    accelerator = make_accelerator(
        device, precision, accumulation, getattr(config, "report_to", "none")
    )
    set_seed(config.seed)
    # The data set's class names are the label space; with --label-names, those.
    if getattr(config, "label_names", None):
        from kdistill.training.no_labels import texts_only_data

        return device, precision, accelerator, texts_only_data(config.dataset, config.label_names)
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
    """start_command plus the (subsampled) train and validation splits: what distill and
    finetune-teacher train from."""
    from kdistill.data.sampling import subsample

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
