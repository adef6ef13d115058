"""Classification metrics over a data loader, gathered across processes, and the per-model
numbers `kdistill compare` reports: per-class scores, confusion, agreement and KL with the
teacher, latency and throughput."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from kdistill.evaluation.calibration import expected_calibration_error
from kdistill.evaluation.calibration import fit_temperature as fit_bounded

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, num_labels: int
) -> dict[str, float]:
    """accuracy, macro-F1, mean CE, and the rows and classes they were counted over.

    macro-F1 is the mean F1 over the classes present in `labels` (macro_f1_classes of them): a
    class with no row in the split has no F1 to measure, and scoring it 0 (sklearn's default
    over a fixed label list) would pull every model down by the share of absent classes.
    logits (n, num_labels), labels (n,).
    """
    preds = logits.argmax(-1)
    y, p = labels.cpu().numpy(), preds.cpu().numpy()
    present = present_classes(y)
    return {
        "accuracy": float((preds == labels).float().mean()),
        "macro_f1": macro_f1(y, p, present),
        "macro_f1_classes": len(present),
        "loss": float(F.cross_entropy(logits.float(), labels)),
        "n": int(labels.numel()),
    }


def present_classes(y: np.ndarray) -> list[int]:
    """The classes with at least one row in `y`, ascending: the ones macro-F1 averages over."""
    return sorted(int(c) for c in np.unique(y))


def macro_f1(y: np.ndarray, p: np.ndarray, classes: list[int]) -> float:
    """Mean F1 over `classes` (sklearn's `labels=`); a class never predicted scores F1 0."""
    from sklearn.metrics import f1_score

    return float(f1_score(y, p, labels=classes, average="macro", zero_division=0))


# At most this many (resample, row) cells at once: 1,000 resamples of a 70k-row test split
# would otherwise hold 70M indices.
BOOTSTRAP_CELLS = 2_000_000


def bootstrap_scores(
    labels: np.ndarray, preds: dict[str, np.ndarray], num_labels: int, resamples: int, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """Accuracy and macro-F1 of each model on `resamples` bootstrap resamples of the rows:
    {name: {"accuracy": (resamples,), "macro_f1": (resamples,)}}.

    Every model is scored on the same resampled rows, so the difference of two models' arrays
    is a paired bootstrap of their difference (the rows' difficulty cancels out). Each
    resample's macro-F1 averages over the classes present in that resample, as
    classification_metrics does on the split. Vectorised: one bincount builds every
    resample's confusion matrix. labels and each preds (n,) integer class ids.
    """
    rng = np.random.default_rng(seed)
    n, c = len(labels), num_labels
    out = {
        name: {"accuracy": np.empty(resamples), "macro_f1": np.empty(resamples)} for name in preds
    }
    chunk = max(1, min(resamples, BOOTSTRAP_CELLS // max(n, c * c)))
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(b, n))  # (b, n) row ids
        y = labels[idx]
        offset = np.arange(b)[:, None] * c  # (b, 1): each resample its own block of counts
        support = np.bincount((offset + y).ravel(), minlength=b * c).reshape(b, c)
        present = support > 0
        for name, p in preds.items():
            pp = p[idx]
            cm = np.bincount(((offset + y) * c + pp).ravel(), minlength=b * c * c)
            cm = cm.reshape(b, c, c)  # (resample, true, predicted)
            tp, predicted = np.diagonal(cm, axis1=1, axis2=2), cm.sum(1)
            denom = support + predicted  # 2TP + FP + FN
            f1 = np.divide(2 * tp, denom, out=np.zeros((b, c)), where=denom > 0)
            out[name]["accuracy"][start : start + b] = (pp == y).mean(1)
            out[name]["macro_f1"][start : start + b] = (f1 * present).sum(1) / present.sum(1)
    return out


def interval(samples: np.ndarray, confidence: float = 0.95) -> list[float]:
    """[low, high]: the percentile interval holding `confidence` of the bootstrap samples."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return [float(low), float(high)]


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
    """Accuracy, macro-F1 and loss of `forward` over a loader (collect_logits, then the scores)."""
    logits, labels = collect_logits(forward, loader, accelerator, desc)
    return classification_metrics(logits, labels, num_labels)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The one temperature T in [0.05, 20] that minimises the NLL of softmax(logits / T) on
    labelled rows: temperature scaling (Guo et al. 2017), bounded so that logits with no signal
    cannot run it away (evaluation.calibration has the fit and its bounds). It changes no
    prediction, only how sure they are. logits (n, num_labels), labels (n,).
    """
    return fit_bounded(logits, labels).fitted


def calibration_report(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """A classifier's calibration as a teacher: ECE and NLL at T=1, the fitted temperature, and
    both again after dividing the logits by it."""
    z, y = logits.float(), labels.long()
    t = fit_temperature(z, y)
    return {
        "ece": expected_calibration_error(F.softmax(z, -1), y),
        "nll": float(F.cross_entropy(z, y)),
        "fitted_temperature": t,
        "ece_calibrated": expected_calibration_error(F.softmax(z / t, -1), y),
        "nll_calibrated": float(F.cross_entropy(z / t, y)),
    }


def per_class_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, label_names: list[str]
) -> dict[str, dict[str, float]]:
    """Recall of each class (the share of its rows predicted right) and its row count."""
    preds = logits.argmax(-1)
    out = {}
    for i, name in enumerate(label_names):
        rows = labels == i
        n = int(rows.sum())
        out[name] = {
            "accuracy": float((preds[rows] == i).float().mean()) if n else float("nan"),
            "n": n,
        }
    return out


def soft_target_stats(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> dict[str, float]:
    """How softmax(logits / T) looks as a distillation target: its ECE and its mean entropy in
    nats (0 = one-hot; log(num_labels) = uniform, no information)."""
    probs = F.softmax(logits.float() / temperature, dim=-1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
    return {
        "temperature": temperature,
        "ece": expected_calibration_error(probs, labels),
        "mean_entropy": float(entropy),
    }


# --------------------------------------------------------------------------- comparing models


def per_class_scores(
    labels: torch.Tensor, preds: torch.Tensor, label_names: list[str]
) -> dict[str, dict[str, float | int]]:
    """Precision, recall, F1 and support of every class, as sklearn computes them (a class never
    predicted has precision 0, not NaN). labels, preds (n,)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        labels.cpu().numpy(),
        preds.cpu().numpy(),
        labels=list(range(len(label_names))),
        zero_division=0,
    )
    return {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, name in enumerate(label_names)
    }


def confusion(labels: torch.Tensor, preds: torch.Tensor, num_labels: int) -> list[list[int]]:
    """Rows are true classes, columns predicted ones, every class present even when empty."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(
        labels.cpu().numpy(), preds.cpu().numpy(), labels=list(range(num_labels))
    )
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
def measure_speeds(
    models: dict[
        str,
        tuple[
            Callable[[dict[str, torch.Tensor]], Any],
            list[dict[str, torch.Tensor]],
            dict[str, torch.Tensor],
        ],
    ],
    repeats: int,
    device: torch.device,
    threads: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Latency at batch 1 and throughput at a larger batch of several models, as someone
    serving them sees them (inputs already tokenised and on the device), timed interleaved.

    `models` maps a name to (forward, singles, batch): one-row batches of real rows, and one
    batch of rows padded to its longest. One untimed pass of each first (lazy initialisation,
    kernel selection, caches), then `repeats` rounds, each timing every model in turn, in
    ABBA order (A B, then B A, ...). Timed one after another, a model would meet whatever
    the machine was doing while it ran (another process, a clock change): run to run this
    moves one model's latency 15-30%. Interleaved, every model sees the same conditions, so
    their ratios hold. With `threads` torch runs on that many threads throughout.

    Per model: latency_ms_batch_1, the median time of one row over every timed row (each call
    waits for its result, as a request would) and latency_ms_batch_1_iqr, their [25th, 75th]
    percentiles; throughput_per_s, the median over repeats of rows per second at the batch,
    and throughput_per_s_iqr. Medians, so a hiccup does not move the numbers; the IQR says how
    far one measurement can be trusted.
    """
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for forward, singles, batch in models.values():
            for b in [*singles, batch]:
                forward(b)
        latencies: dict[str, list[float]] = {name: [] for name in models}
        rates: dict[str, list[float]] = {name: [] for name in models}
        names = list(models)
        for r in range(repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                forward, singles, batch = models[name]
                for b in singles:
                    start = _clock(device)
                    forward(b)
                    latencies[name].append((_clock(device) - start) * 1000)
                n = next(iter(batch.values())).shape[0]
                start = _clock(device)
                forward(batch)
                rates[name].append(n / max(_clock(device) - start, 1e-9))
    finally:
        torch.set_num_threads(saved_threads)
    return {name: _speed_summary(latencies[name], rates[name]) for name in models}


def _speed_summary(latencies: list[float], rates: list[float]) -> dict[str, Any]:
    """Medians of the repeats with their interquartile ranges: one slow repeat moves neither."""
    return {
        "latency_ms_batch_1": statistics.median(latencies),
        "latency_ms_batch_1_iqr": _iqr(latencies),
        "throughput_per_s": statistics.median(rates),
        "throughput_per_s_iqr": _iqr(rates),
    }


def _iqr(values: list[float]) -> list[float]:
    """[25th, 75th] percentile: how much the repeats spread."""
    low, high = np.percentile(values, [25, 75])
    return [float(low), float(high)]


def measure_speed(
    forward: Callable[[dict[str, torch.Tensor]], Any],
    singles: list[dict[str, torch.Tensor]],
    batch: dict[str, torch.Tensor],
    repeats: int,
    device: torch.device,
) -> dict[str, Any]:
    """measure_speeds of one model."""
    return measure_speeds({"model": (forward, singles, batch)}, repeats, device)["model"]
