"""kdistill's components for use from Python, with signatures that stay put as the package's
modules move: load a frozen teacher, get its (cached) logits for some texts, and the loss.

    teacher = load_teacher("models/minilm-dbpedia", ["Album", "Animal", ...])
    targets = teacher_logits(teacher, texts)                # (len(texts), num_labels), cached
    loss = kd_loss(student_logits, targets[rows], labels, temperature=3.0, alpha=0.7).loss

They are the functions `kdistill distill` runs, not copies: `teacher_logits` keys its cache as
the command does, so a script and the CLI share cached teacher passes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch

from kdistill.errors import KdistillError
from kdistill.teachers.classifier import Teacher
from kdistill.training.losses import KDLoss, kd_loss

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset

__all__ = ["KDLoss", "Teacher", "kd_loss", "load_teacher", "num_labels", "teacher_logits"]

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("auto", "classifier", "prompt")
CACHE_MODES = ("auto", "memory", "disk")


def _one_of(value: str, allowed: Sequence[str], argument: str) -> None:
    if value not in allowed:
        raise KdistillError(f"{argument}={value!r}: pass one of {', '.join(allowed)}")


def load_teacher(
    model: str,
    label_names: Sequence[str],
    *,
    mode: str = "auto",
    dtype: str = "fp32",
    prompt_template: str | None = None,
    label_words: str | None = None,
    few_shot: int = 0,
    examples: Dataset | None = None,
    calibrate: bool = True,
    chat_template: bool = False,
    max_length: int = 128,
    seed: int = 42,
    allow_untrained: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Teacher:
    """The frozen teacher `kdistill distill --teacher-model model` uses, in eval mode, on CPU.

    `label_names` are the data set's classes, in the order the student's logits are: a
    classifier's logit columns are matched to them by name, a prompt teacher scores a label word
    per class. The keyword arguments are the CLI's teacher flags (`mode` is --teacher-mode,
    `dtype` --teacher-dtype without auto, `max_length` the prompt teacher's text budget);
    `examples` (a datasets.Dataset with `text` and integer `label` columns) is where --few-shot
    draws from. Bad values raise KdistillError with one line naming the fix.

    `teacher.logits(batch)` gives (batch, num_labels) logits from `teacher_input_ids` and
    `teacher_attention_mask`; `teacher.encode(texts, max_length)` makes those inputs. A head that
    finetune-teacher calibrated gives its logits as trained, as distill teaches them (and caches
    them), so the soft targets and the cache entries here are distill's.
    """
    from kdistill.config import TeacherOptions
    from kdistill.data.model_files import quiet_transformers, set_load_policy
    from kdistill.teachers.classifier import load_teacher as load

    _one_of(mode, MODES, "mode")
    _one_of(dtype, tuple(DTYPES), "dtype")
    if not label_names:
        raise KdistillError("label_names is empty: pass the data set's class names")
    options = TeacherOptions(
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        teacher_mode=mode,
        prompt_template=prompt_template,
        label_words=label_words,
        few_shot=few_shot,
        chat_template=chat_template,
        calibrate=calibrate,
        teacher_dtype=dtype,
        allow_untrained_teacher=allow_untrained,
    )
    options._check_teacher()  # the CLI's range checks, the CLI's one-line errors
    quiet_transformers()
    set_load_policy(allow_pickle, trust_remote_code)
    from kdistill.training.calibration import logits_as_trained

    teacher = load(options, model, list(label_names), DTYPES[dtype], examples, max_length, seed)
    logits_as_trained(teacher)
    return teacher


def num_labels(teacher: Teacher) -> int:
    """How many logit columns `teacher.logits` gives."""
    names = getattr(teacher, "label_names", None)  # a prompt teacher
    return len(names) if names is not None else len(teacher.columns)  # type: ignore[attr-defined]


def dtype_name(teacher: Teacher) -> str:
    """fp32, bf16 or fp16: the precision part of the cache key, as the CLI writes it."""
    names = {v: k for k, v in DTYPES.items()}
    return names.get(teacher.model.dtype, str(teacher.model.dtype))


def default_accelerator(teacher: Teacher, device: str) -> Accelerator:
    """An Accelerator that runs the teacher as `kdistill distill` would: autocast in the
    teacher's own half precision, none for fp32 weights. When one exists already (a Trainer
    made it), it is reused: Accelerate's state is process-wide, and a new one would reset it."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from kdistill.training.runtime import make_accelerator, pick_device

    if AcceleratorState._shared_state:
        return Accelerator()
    precision = {"bf16": "bf16", "fp16": "fp16"}.get(dtype_name(teacher), "no")
    return make_accelerator(pick_device(device), precision, 1)


def teacher_logits(
    teacher: Teacher,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    batch_size: int = 64,
    cache: str = "auto",
    cache_dir: str | None = None,
    device: str = "auto",
    accelerator: Accelerator | None = None,
) -> torch.Tensor:
    """(len(texts), num_labels) float32 logits on CPU, row i for texts[i], in one length-sorted
    inference pass.

    `cache` is --teacher-cache: memory computes them; disk also saves them under `cache_dir`
    (default $KDISTILL_CACHE/teacher_logits or ~/.cache/kdistill/teacher_logits); auto reuses a
    matching disk entry, else computes. The key is the CLI's (teacher weights, mode and
    settings, tokenizer, `max_length`, the teacher's precision and the texts in order), so
    logits cached by `kdistill distill --teacher-cache disk` for the same training texts are
    found here, and the other way round. `device` is --device; pass `accelerator` to run under
    one you already have (under `accelerate launch` each process takes a share of the texts).
    """
    from datasets import Dataset

    from kdistill.data.batches import tokenize
    from kdistill.teachers.cache import teacher_logits_for

    _one_of(cache, CACHE_MODES, "cache")
    if max_length < 2 or batch_size < 1:
        raise KdistillError(
            f"max_length must be >= 2 and batch_size >= 1 (got {max_length}, {batch_size})"
        )
    texts = [str(t) for t in texts]
    if not texts:
        return torch.empty(0, num_labels(teacher))
    accelerator = accelerator or default_accelerator(teacher, device)
    teacher.to(accelerator.device)
    encoded = tokenize(Dataset.from_dict({"text": texts}), {"teacher": teacher}, max_length)
    # The three fields of the distill config that teacher_logits_for reads.
    settings = SimpleNamespace(
        max_length=max_length, teacher_cache_dir=cache_dir, teacher_batch_size=batch_size
    )
    logits, record = teacher_logits_for(
        cache,
        teacher,
        encoded,
        texts,
        settings,
        accelerator,
        num_labels(teacher),
        dtype_name(teacher),
    )
    logger.info(
        "teacher logits for %d texts: %s in %.1fs",
        len(texts),
        "reused from disk" if record["hit"] else "computed",
        record["time_s"],
    )
    return logits
