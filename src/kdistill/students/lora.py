"""LoRA adapters (peft) for a model being trained: finetune-teacher --method lora and
distill --student-lora.

Why: full fine-tuning keeps AdamW's two moments and a gradient for every weight, 16 bytes a
parameter in fp32, so a 0.5B student needs about 8 GB before any activation. Adapters on the
attention projections train well under 1% of that, while the new classification head stays
fully trainable (peft's SEQ_CLS task keeps `classifier`/`score` in modules_to_save). What is
saved is always a plain transformers model with the adapters folded in, so `predict`, export
and a later distill read it with no peft at all.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

from kdistill.errors import KdistillError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# Adapter targets by layout, first match wins: attention projections, as in the LoRA paper.
DEFAULT_TARGETS = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Qwen2, Llama, Mistral, Gemma
    ("query", "key", "value"),  # BERT, RoBERTa, ELECTRA, MiniLM
    ("q_lin", "k_lin", "v_lin"),  # DistilBERT
    ("c_attn",),  # GPT-2
)


def linear_names(model: torch.nn.Module) -> set[str]:
    import torch

    linear = torch.nn.Linear
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, linear)}


def lora_targets(model: torch.nn.Module, requested: str | None, flag: str) -> list[str]:
    """The module names to adapt: the user's (each must exist) or the first known layout."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if requested:
        wanted = [t.strip() for t in requested.split(",") if t.strip()]
        missing = [t for t in wanted if t not in present]
        if missing or not wanted:
            raise KdistillError(
                f"--target-modules: the model has no modules named {', '.join(missing) or '?'}; "
                f"its linear layers include {', '.join(sorted(linear_names(model))[:8])}"
            )
        return wanted
    for layout in DEFAULT_TARGETS:
        if all(t in present for t in layout):
            return list(layout)
    raise KdistillError(
        f"{flag}: no known attention projections in this model; name them with "
        f"--target-modules (its linear layers include {', '.join(sorted(linear_names(model))[:8])})"
    )


def add_lora(
    model: torch.nn.Module,
    r: int,
    alpha: float,
    dropout: float,
    targets: list[str],
) -> torch.nn.Module:
    """The model wrapped in rank-`r` adapters on `targets`; only they and the head train."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
    )
    peft_model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info(
        "LoRA r=%d on %s: %.2fM of %.1fM parameters trainable",
        r,
        ",".join(targets),
        trainable / 1e6,
        total / 1e6,
    )
    return peft_model


def is_lora(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model: LoRA deltas folded into the weights, wrappers gone. In place:
    the adapters are gone afterwards, so call it once training is over."""
    return model.merge_and_unload() if is_lora(model) else model


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """What `merged` gives, leaving `model` training on: a best epoch is saved mid-run. The copy
    costs one set of weights for as long as the save takes."""
    return copy.deepcopy(model).merge_and_unload() if is_lora(model) else model
