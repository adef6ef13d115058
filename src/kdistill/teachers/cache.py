"""Teacher-logit cache: a frozen teacher in eval mode gives the same logits for the same text
every epoch, so compute them once, in one length-sorted inference pass, and reuse them.

Class logits are tiny (N x C floats: 560k DBpedia rows x 14 classes = 31 MB), so memory is the
default. On disk they live in a safetensors file named after a key made of everything the logits
depend on: the teacher's weights (the content of the files read, an adapter's base model's too:
`data.model_identity`), how it is used, its tokenizer and max_length, its precision
(weights dtype and autocast mode: bf16 autocast over fp32 weights gives other logits than fp32),
and the exact training texts in order. The key is stored inside the file as well and compared in
full on load, so a stale or mismatched cache is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.data.digests import texts_digest, tokenizer_identity
from kdistill.data.model_files import cache_root
from kdistill.data.model_identity import model_identity
from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset

    from kdistill.teachers.classifier import Teacher

logger = logging.getLogger(__name__)

CACHE_FORMAT = "kdistill-teacher-logits/1"


def default_cache_dir() -> Path:
    """Teacher logits, under the shared cache root (`data.model_files.cache_root`)."""
    return cache_root() / "teacher_logits"


@dataclass(frozen=True)
class CacheKey:
    parts: dict[str, Any]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.parts, sort_keys=True).encode()).hexdigest()[:32]

    def to_json(self) -> str:
        return json.dumps(self.parts, sort_keys=True)


def make_key(
    teacher: Teacher, texts: list[str], max_length: int, precision: str, autocast: str = "no"
) -> CacheKey:
    """Everything the logits depend on. `precision` is the teacher's weights dtype, `autocast`
    the mixed-precision mode the pass runs under (Accelerate's: no, bf16, fp16)."""
    return CacheKey(
        {
            "format": CACHE_FORMAT,
            "teacher": model_identity(teacher.name),
            "mode": teacher.mode,
            "settings": teacher.settings(),
            "tokenizer": tokenizer_identity(teacher.tokenizer),
            "max_length": max_length,
            "precision": precision,
            "autocast": autocast,
            "rows": len(texts),
            "texts": texts_digest(texts),
        }
    )


def load_disk(path: Path, key: CacheKey, num_labels: int) -> torch.Tensor | None:
    """The cached logits if `path` holds exactly this key's, else None (and why, in the log)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get("key")
            if stored != key.to_json():
                logger.warning("teacher cache %s: made for other inputs; recomputing", path.name)
                return None
            logits = f.get_tensor("logits")
    except Exception as e:  # a truncated or foreign file is a miss, never a crash
        logger.warning("teacher cache %s unreadable (%s); recomputing", path.name, e)
        return None
    if tuple(logits.shape) != (key.parts["rows"], num_labels):
        logger.warning("teacher cache %s: shape %s is wrong; recomputing", path.name, logits.shape)
        return None
    return logits


def save_disk(path: Path, key: CacheKey, logits: torch.Tensor) -> None:
    """Atomic: written beside the target, then renamed over it."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({"logits": logits.contiguous().cpu()}, str(tmp), metadata={"key": key.to_json()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@torch.inference_mode()
def compute_teacher_logits(
    teacher: Teacher,
    ds: Dataset,
    batch_size: int,
    accelerator: Accelerator,
    num_labels: int,
) -> torch.Tensor:
    """(len(ds), num_labels) fp32 logits on CPU, row i for example i.

    Longest first, in batches of similar length (little padding, an out-of-memory error shows at
    once); under `accelerate launch` each process takes a share and the results are gathered.
    """
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    ids = ds.select_columns(["teacher_input_ids"])[:]["teacher_input_ids"]  # honours select()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pad_id = teacher.tokenizer.pad_token_id
    results: list[tuple[list[int], torch.Tensor]] = []
    with accelerator.split_between_processes(batches) as mine:
        for rows in tqdm(mine, desc="teacher logits", disable=not accelerator.is_main_process):
            width = max(len(ids[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, i in enumerate(rows):
                row = ids[i]
                if teacher.tokenizer.padding_side == "left":
                    input_ids[j, width - len(row) :] = torch.tensor(row)
                    mask[j, width - len(row) :] = 1
                else:
                    input_ids[j, : len(row)] = torch.tensor(row)
                    mask[j, : len(row)] = 1
            batch = {
                "teacher_input_ids": input_ids.to(accelerator.device),
                "teacher_attention_mask": mask.to(accelerator.device),
            }
            with accelerator.autocast():
                logits = teacher.logits(batch)
            results.append((rows, logits.float().cpu()))
    if accelerator.num_processes > 1:
        results = gather_object(results)
    out = torch.full((len(ids), num_labels), float("nan"))
    for rows, logits in results:
        out[torch.tensor(rows)] = logits
    if torch.isnan(out).any():
        raise KdistillError("teacher logits: some rows were not computed (a distributed error?)")
    return out


def teacher_logits_for(
    mode: str,
    teacher: Teacher,
    ds: Dataset,
    texts: list[str],
    config: Any,
    accelerator: Accelerator,
    num_labels: int,
    precision: str,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Resolve --teacher-cache (auto, memory, disk) into logits plus a record for history.json.

    auto: a matching disk entry is reused when there is one, else the logits stay in memory.
    An ensemble caches each member under the member's own key.
    """
    if teacher.mode == "ensemble":
        from kdistill.teachers.ensemble import ensemble_logits_for

        args = (mode, teacher, texts, config, accelerator, num_labels, precision)
        return ensemble_logits_for(teacher_logits_for, *args)
    key = make_key(teacher, texts, config.max_length, precision, accelerator.mixed_precision)
    cache_dir = Path(config.teacher_cache_dir) if config.teacher_cache_dir else default_cache_dir()
    path = cache_dir / f"{key.digest}.safetensors"
    record: dict[str, Any] = {"mode": mode, "key": key.digest, "hit": False}
    start = time.perf_counter()
    logits = load_disk(path, key, num_labels) if mode in ("auto", "disk") else None
    if logits is not None:
        record.update(hit=True, path=str(path))
        logger.info("teacher logits: reusing %s", path)
    else:
        logits = compute_teacher_logits(
            teacher, ds, config.teacher_batch_size, accelerator, num_labels
        )
        if mode == "disk" and accelerator.is_main_process:
            save_disk(path, key, logits)
            record["path"] = str(path)
            logger.info("teacher logits: saved to %s", path)
    record["time_s"] = time.perf_counter() - start
    # Cached raw; corrected on these texts each time (the correction reads no label).
    logits, corrections = label_free_corrections(teacher, logits, config)
    if corrections:
        record["label_free"] = corrections
    return logits, record


def balancing(teacher: Teacher, config: Any) -> bool:
    """Whether --class-balance corrects this teacher: auto = embedding teachers only."""
    choice = getattr(config, "class_balance", "off")
    return choice == "on" or (choice == "auto" and teacher.mode == "embedding")


def label_free_corrections(
    teacher: Teacher, logits: torch.Tensor, config: Any
) -> tuple[torch.Tensor, dict[str, Any]]:
    """`teachers.label_free.correct` as the config asks: the embedding scale fitted and the
    class prior balanced on the rows just scored."""
    from kdistill.teachers.label_free import correct, parse_class_prior

    mode = "balance" if balancing(teacher, config) else "off"
    if mode == "off" and not getattr(teacher, "fit_scale", False):
        return logits, {}
    names = getattr(teacher, "label_names", None) or [str(i) for i in range(logits.shape[1])]
    prior = parse_class_prior(getattr(config, "class_prior", None), names)
    return correct(teacher, logits, mode, prior)
