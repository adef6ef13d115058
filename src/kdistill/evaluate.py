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


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): the gap between confidence and accuracy, averaged over equal-width
    confidence bins weighted by their share of rows. 0 is perfectly calibrated.

    probs (n, num_labels) rows summing to 1, labels (n,).
    """
    confidence, preds = probs.max(-1)
    correct = (preds == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            gap = (confidence[in_bin].mean() - correct[in_bin].mean()).abs()
            ece += gap * in_bin.float().mean()
    return float(ece)


def per_class_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, label_names: list[str]
) -> dict[str, dict[str, float]]:
    """Recall of each class (the share of its rows predicted right) and its row count."""
    preds = logits.argmax(-1)
    out = {}
    for i, name in enumerate(label_names):
        rows = labels == i
        n = int(rows.sum())
        out[name] = {"accuracy": float((preds[rows] == i).float().mean()) if n else float("nan"),
                     "n": n}  # fmt: skip
    return out


def soft_target_stats(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> dict[str, float]:
    """How softmax(logits / T) looks as a distillation target: its ECE and its mean entropy in
    nats (0 = one-hot; log(num_labels) = uniform, no information)."""
    probs = F.softmax(logits.float() / temperature, dim=-1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
    return {"temperature": temperature, "ece": expected_calibration_error(probs, labels),
            "mean_entropy": float(entropy)}  # fmt: skip
