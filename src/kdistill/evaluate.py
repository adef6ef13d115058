"""Classification metrics over a data loader, gathered across processes, and the per-model
numbers `kdistill compare` reports: per-class scores, confusion, agreement and KL with the
teacher, latency and throughput."""

from __future__ import annotations

import statistics
import time
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


# --------------------------------------------------------------------------- comparing models


def per_class_scores(
    labels: torch.Tensor, preds: torch.Tensor, label_names: list[str]
) -> dict[str, dict[str, float | int]]:
    """Precision, recall, F1 and support of every class, as sklearn computes them (a class never
    predicted has precision 0, not NaN). labels, preds (n,)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        labels.cpu().numpy(), preds.cpu().numpy(), labels=list(range(len(label_names))),
        zero_division=0,
    )  # fmt: skip
    return {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                   "support": int(s[i])} for i, name in enumerate(label_names)}  # fmt: skip


def confusion(labels: torch.Tensor, preds: torch.Tensor, num_labels: int) -> list[list[int]]:
    """Rows are true classes, columns predicted ones, every class present even when empty."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(labels.cpu().numpy(), preds.cpu().numpy(),
                              labels=list(range(num_labels)))  # fmt: skip
    return matrix.tolist()


def agreement(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """Share of rows where both models name the same class. (n, num_labels) each."""
    return float((reference.argmax(-1) == logits.argmax(-1)).float().mean())


def mean_kl(teacher_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over rows of KL(softmax(teacher) || softmax(model)) at T = 1, in nats: how far the
    model's whole distribution is from the teacher's, not just its top class."""
    log_p, log_q = F.log_softmax(teacher_logits.float(), -1), F.log_softmax(logits.float(), -1)
    return float(F.kl_div(log_q, log_p, log_target=True, reduction="batchmean"))


def _clock(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work (CUDA and MPS run
    asynchronously: without the sync the clock would time the launch, not the kernels)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()


@torch.inference_mode()
def measure_speed(
    forward: Callable[[dict[str, torch.Tensor]], Any],
    singles: list[dict[str, torch.Tensor]],
    batch: dict[str, torch.Tensor],
    repeats: int,
    device: torch.device,
) -> dict[str, float]:
    """Latency at batch 1 and throughput at a larger batch, as someone serving the model sees
    them (inputs already tokenised and on the device).

    `singles` are one-row batches of real rows, `batch` one batch of rows padded to its longest.
    One untimed pass of each first (lazy initialisation, kernel selection, caches), then
    `repeats` timed passes. Returns latency_ms_batch_1, the median time of one row over every
    timed row (each call waits for its result, as a request would), and throughput_per_s, the
    median over repeats of rows per second at the batch: medians, so a hiccup from another
    process does not move the numbers.
    """
    for b in [*singles, batch]:
        forward(b)
    latencies, rates = [], []
    n = next(iter(batch.values())).shape[0]
    for _ in range(repeats):
        for b in singles:
            start = _clock(device)
            forward(b)
            latencies.append((_clock(device) - start) * 1000)
        start = _clock(device)
        forward(batch)
        rates.append(n / max(_clock(device) - start, 1e-9))
    return {"latency_ms_batch_1": statistics.median(latencies),
            "throughput_per_s": statistics.median(rates)}  # fmt: skip
