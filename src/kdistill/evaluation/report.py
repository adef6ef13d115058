"""The figures of one run and one sweep: pure functions, dict in, PNG out.

Each reads a JSON document kdistill wrote (history.json, sweep.json) and writes one file
atomically, so a figure can be redrawn from saved results at any time without a model or a GPU.
The comparison's figure is in evaluation.comparison_figure, its HTML page in
evaluation.html_report; the helpers every figure shares are in evaluation.plotting.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from kdistill.evaluation.plotting import save_png, tex_safe

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- training curves


def plot_training_curves(history: dict[str, Any], path: Path) -> None:
    """Loss and validation scores per epoch of one distill run; works while the run is going."""
    epochs = history.get("epochs") or []
    xs = [e["epoch"] for e in epochs]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, score_ax = fig.subplots(1, 2)
    _plot_losses(loss_ax, epochs)
    _plot_val_scores(score_ax, history, xs)
    for ax in (loss_ax, score_ax):
        ax.set_xlabel("epoch")
        last = max(xs, default=1)
        # MaxNLocator falls back to fractions on a one-epoch axis: name the epochs while few.
        if last <= 20:
            ax.set_xticks(range(1, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, last + 0.5)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if not epochs:
        for ax in (loss_ax, score_ax):
            ax.text(
                0.5,
                0.5,
                "no epoch finished yet",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
            )
    save_png(fig, path)


def _plot_losses(ax: Any, epochs: list[dict[str, Any]]) -> None:
    """The training loss and its KL and cross-entropy terms per epoch (with --unlabeled-data,
    each kind of row's own loss too)."""
    curves = [
        ("train_loss", "total loss", "-"),
        ("train_kl", "KL term (× T², as in the loss)", "--"),
        ("train_ce", "cross-entropy term", ":"),
    ]
    if any(e.get("train_unlabeled_samples") for e in epochs):
        curves += [
            ("train_loss_labeled", "loss on labelled rows", "-."),
            ("train_loss_unlabeled", "loss on unlabelled rows (× T² KL)", "-."),
        ]
    for key, label, style in curves:
        points = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, marker="o", label=label)
    ax.set_title("Training loss per epoch (KL term scaled by T²)")
    ax.set_ylabel("loss (nats per example)")


def _plot_val_scores(ax: Any, history: dict[str, Any], xs: list[int]) -> None:
    """Validation accuracy and macro-F1 per epoch, the teacher's accuracy, chance, and a star on
    the best epoch."""
    scores = []
    for key, label in (
        ("val_accuracy", "validation accuracy"),
        ("val_macro_f1", "validation macro-F1"),
    ):
        points = [
            (e["epoch"], 100 * e[key])
            for e in history.get("epochs") or []
            if e.get(key) is not None
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
            scores += [y for _, y in points]
    teacher_acc = (history.get("teacher") or {}).get("val_accuracy")
    if teacher_acc is not None:
        ax.axhline(
            100 * teacher_acc,
            color="black",
            ls="--",
            lw=1,
            label=f"teacher accuracy ({100 * teacher_acc:.1f}%)",
        )
        scores.append(100 * teacher_acc)
    _zoom_with_chance(ax, scores, history.get("chance_accuracy"))
    best = history.get("best") or {}
    if best.get("epoch") in xs and best.get("val_accuracy") is not None:
        ax.plot(
            best["epoch"],
            100 * best["val_accuracy"],
            "*",
            ms=14,
            color="gold",
            mec="black",
            zorder=5,
            label=f"best (epoch {best['epoch']})",
        )
    status = "" if history.get("completed") else " — run in progress"
    ax.set_title(f"Validation scores per epoch{status}")
    ax.set_ylabel("accuracy / macro-F1 (%)")


def _zoom_with_chance(ax: Any, scores: list[float], chance: float | None) -> None:
    """Zoom on the scores and the teacher so epoch-to-epoch changes show; chance (often far
    below) stays on the axis only when it is near, and its legend entry says where it went."""
    lo, hi = (min(scores), max(scores)) if scores else (0.0, 100.0)
    pad = max(1.0, 0.15 * (hi - lo))
    if chance is not None:
        near = 100 * chance >= lo - 3 * pad
        lo = min(lo, 100 * chance) if near else lo
        where = "" if near else ", below the axis"
        ax.axhline(
            100 * chance,
            color="grey",
            ls=":",
            lw=1,
            label=f"chance accuracy ({100 * chance:.1f}%{where})",
        )
    ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad) + 0.5)


# ---------------------------------------------------------------------------- sweep heatmap


def sweep_cells(sweep: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value %, std %, status) per (T, alpha) cell: each run's best validation accuracy, or with
    --seeds (sweep["points"]) the mean over the seeds and their standard deviation."""
    temps, alphas = sweep["temperatures"], sweep["alphas"]
    values = np.full((len(temps), len(alphas)), np.nan)
    stds = np.full(values.shape, np.nan)
    status = np.full(values.shape, "", dtype=object)
    for run in sweep["runs"]:
        r, c = temps.index(run["temperature"]), alphas.index(run["alpha"])
        status[r, c] = run["status"] if status[r, c] in ("", "failed") else status[r, c]
        if run["status"] == "completed" and run.get("best_val_accuracy") is not None:
            values[r, c] = 100 * run["best_val_accuracy"]
    for point in sweep.get("points") or []:
        r, c = temps.index(point["temperature"]), alphas.index(point["alpha"])
        mean, std = point["val_accuracy_mean"], point["val_accuracy_std"]
        values[r, c] = np.nan if mean is None else 100 * mean
        stds[r, c] = np.nan if std is None else 100 * std
    return values, stds, status


def plot_sweep_heatmap(sweep: dict[str, Any], path: Path) -> None:
    """Best validation accuracy over the temperature x alpha grid of one sweep; with --seeds the
    mean over the seeds (± their standard deviation), and the best cell drawn dashed when its
    lead over the runner-up is within one standard deviation: the seeds cannot tell them apart."""
    temps, alphas = sweep["temperatures"], sweep["alphas"]
    values, stds, status = sweep_cells(sweep)
    seeds = sweep.get("seeds")

    fig = Figure(
        figsize=(max(5.5, 1.3 * len(alphas) + 3), max(3.5, 0.8 * len(temps) + 2)),
        layout="constrained",
    )
    ax = fig.subplots()
    done = values[~np.isnan(values)]
    vmin, vmax = (done.min(), done.max()) if done.size else (0, 100)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d0d0d0")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    _label_cells(ax, values, stds, status, (vmin, vmax))

    best = sweep.get("best")
    if best is None and done.size:
        r, c = np.unravel_index(np.nanargmax(values), values.shape)
        best = {"temperature": temps[r], "alpha": alphas[c]}
    unclear = best is not None and best.get("clear_lead") is False
    if best is not None:
        r, c = temps.index(best["temperature"]), alphas.index(best["alpha"])
        ax.add_patch(
            Rectangle(
                (c - 0.5, r - 0.5), 1, 1, fill=False, ec="red", lw=3, ls="--" if unclear else "-"
            )
        )
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(temps)), [f"{t:g}" for t in temps])
    ax.set_xlabel("alpha (weight of the KL term; 0 = cross-entropy only)")
    ax.set_ylabel("temperature T")
    what = "best validation accuracy (%)"
    if seeds:
        what = f"mean best validation accuracy (%) over seeds {', '.join(map(str, seeds))}"
    fig.colorbar(im, ax=ax, label="mean validation accuracy (%)" if seeds else what)
    ax.set_title(tex_safe(_sweep_title(sweep, what, unclear)), fontsize=10)
    save_png(fig, path)


def _label_cells(
    ax: Any,
    values: np.ndarray,
    stds: np.ndarray,
    status: np.ndarray,
    limits: tuple[float, float],
) -> None:
    """Each cell's value (± std with --seeds) in a colour readable on it, or why it has none."""
    vmin, vmax = limits
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            v = values[r, c]
            if not np.isnan(v):
                light = (v - vmin) / (vmax - vmin) > 0.6  # viridis is light at the top
                text = f"{v:.1f}" if np.isnan(stds[r, c]) else f"{v:.1f}\n±{stds[r, c]:.1f}"
                ax.text(
                    c,
                    r,
                    text,
                    ha="center",
                    va="center",
                    fontsize=10,
                    color="black" if light else "white",
                )
            else:
                label = "failed" if status[r, c] == "failed" else "not run"
                ax.text(
                    c,
                    r,
                    label,
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="#555555",
                    style="italic",
                )


def _sweep_title(sweep: dict[str, Any], what: str, unclear: bool) -> str:
    """The data set and what the cells show; the teacher's accuracy; what the red box means."""
    teacher = sweep.get("teacher_val_accuracy")
    title = f"Sweep on {sweep.get('dataset', '?')}: {what}"
    if teacher is not None:
        title += f"\nteacher {100 * teacher:.1f}%"
    title += (" — " if teacher is not None else "\n") + "red box = best cell"
    if unclear:
        title += ", dashed: its lead over the runner-up is within one std"
    return title
