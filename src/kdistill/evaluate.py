"""Classification metrics over a data loader, gathered across processes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, num_labels: int
) -> dict[str, float]:
    """accuracy, macro-F1 (over every class, absent ones scoring 0 as sklearn does) and mean CE.

    logits (n, num_labels), labels (n,).
    """
    from sklearn.metrics import f1_score

    preds = logits.argmax(-1)
    y, p = labels.cpu().numpy(), preds.cpu().numpy()
    return {
        "accuracy": float((preds == labels).float().mean()),
        "macro_f1": float(
            f1_score(y, p, labels=list(range(num_labels)), average="macro", zero_division=0)
        ),
        "loss": float(F.cross_entropy(logits.float(), labels)),
        "n": int(labels.numel()),
    }


@torch.no_grad()
def collect_logits(
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    loader: DataLoader,
    accelerator: Accelerator,
    desc: str = "eval",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `forward` over every batch; logits and labels of every row exactly once, on CPU.

    `gather_for_metrics` drops the rows a distributed sampler repeats to even out shards.
    """
    from tqdm.auto import tqdm

    all_logits, all_labels = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_main_process):
        with accelerator.autocast():
            logits = forward(batch)
        logits, labels = accelerator.gather_for_metrics((logits.float(), batch["labels"]))
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    loader: DataLoader,
    accelerator: Accelerator,
    num_labels: int,
    desc: str = "eval",
) -> dict[str, Any]:
    logits, labels = collect_logits(forward, loader, accelerator, desc)
    return classification_metrics(logits, labels, num_labels)
