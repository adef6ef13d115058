"""The comparison figure: teacher and students side by side in quality, latency, size, the
accuracy-speed trade-off, and each model's confusion matrix, from comparison_results.json alone
(it can be redrawn from saved results without a model or a GPU).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import LogLocator

from kdistill.evaluation.plotting import ROLE_COLOURS, colour, save_png, short, tex_safe, who


def _plot_scores(ax: Any, models: list[dict[str, Any]]) -> None:
    """(a) Accuracy (solid) and macro-F1 (hatched) per model, horizontal so long names fit."""
    y = np.arange(len(models))
    values = [100 * m[k] for m in models for k in ("accuracy", "macro_f1")]
    # Zoom in when every score is high, and say so on the axis: a bar chart from 0 would hide
    # the differences that matter, one from 90 without a note would exaggerate them.
    lo = 0.0 if min(values) < 50 else math.floor((min(values) - 10) / 10) * 10
    for i, m in enumerate(models):
        for offset, key, hatch in ((-0.2, "accuracy", None), (0.2, "macro_f1", "///")):
            v = 100 * m[key]
            ax.barh(
                i + offset,
                v - lo,
                left=lo,
                height=0.38,
                color=colour(m),
                hatch=hatch,
                alpha=0.55 if hatch else 1.0,
                edgecolor="white",
            )
            ax.text(v, i + offset, f" {v:.1f}", va="center", fontsize=8)
    ax.set_yticks(y, [who(m, sep="\n") for m in models], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(lo, 100 + (100 - lo) * 0.1)
    note = "" if lo == 0 else f" — axis starts at {lo:.0f}%, not 0"
    ax.set_xlabel(f"score (%){note}")
    ax.set_title("(a) Accuracy and macro-F1")
    roles = dict.fromkeys(m["role"] for m in models)
    handles = [Patch(color=ROLE_COLOURS.get(r, ROLE_COLOURS["student"]), label=r) for r in roles]
    handles += [
        Patch(facecolor="lightgrey", label="accuracy (solid)"),
        Patch(facecolor="white", edgecolor="grey", hatch="///", label="macro-F1 (hatched)"),
    ]
    ax.legend(
        handles=handles,
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=len(handles),
        frameon=False,
        handlelength=1.5,
        columnspacing=1,
    )
    ax.grid(axis="x", alpha=0.3)


def _plot_latency(ax: Any, models: list[dict[str, Any]]) -> None:
    """(b) Median latency at batch 1, annotated with the speed-up over the teacher."""
    values = [m["latency_ms_batch_1"] for m in models]
    ax.barh(range(len(models)), values, color=[colour(m) for m in models], height=0.6)
    for i, m in enumerate(models):
        ax.text(
            values[i],
            i,
            f" {values[i]:.1f} ms (×{m['speedup_vs_teacher']:.1f})",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(models)), [who(m, sep="\n") for m in models], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) * 1.45)
    ax.set_xlabel("median latency per example at batch 1 (ms)")
    ax.set_title("(b) Latency (× = speed-up vs teacher)")
    ax.grid(axis="x", alpha=0.3)


def _plot_size(ax: Any, models: list[dict[str, Any]]) -> None:
    """(c) Size on disk, or parameter count where the weight files were not found."""
    on_disk = all(m.get("size_on_disk_bytes") for m in models)
    values = [m["size_on_disk_bytes"] / 1e6 if on_disk else m["parameters"] / 1e6 for m in models]
    unit = "MB" if on_disk else "M params"
    ax.barh(range(len(models)), values, color=[colour(m) for m in models], height=0.6)
    for i, m in enumerate(models):
        ax.text(
            values[i],
            i,
            f" {values[i]:.1f} {unit} (×{m['compression_vs_teacher']:.1f})",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(models)), [who(m, sep="\n") for m in models], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) * 1.45)
    ax.set_xlabel("weights on disk (MB)" if on_disk else "parameters (millions)")
    ax.set_title("(c) Size (× = compression: teacher's parameters / model's)")
    ax.grid(axis="x", alpha=0.3)


def _plot_tradeoff(ax: Any, models: list[dict[str, Any]]) -> None:
    """(d) Accuracy against latency: up and to the left is better."""
    xs = [m["latency_ms_batch_1"] for m in models]
    ys = [100 * m["accuracy"] for m in models]
    for m, x, y in zip(models, xs, ys, strict=True):
        ax.scatter(x, y, s=60, color=colour(m), edgecolor="black", zorder=3)
    if min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(LogLocator(subs=(2, 5)))
        ax.xaxis.set_major_formatter("{x:g}")  # 5, 10, 200 rather than 10^1
        ax.xaxis.set_minor_formatter("{x:g}")
        ax.set_xlabel("latency at batch 1 (ms, log scale)")
    else:
        ax.set_xlabel("latency at batch 1 (ms)")
    lo, hi = min(xs), max(xs)
    if ax.get_xscale() == "log":
        ax.set_xlim(lo / 1.5, hi * 4)
    else:
        span = (hi - lo) or max(hi, 1.0) * 0.5  # room for the labels right of the points
        ax.set_xlim(max(0, lo - 0.15 * span), hi + 0.6 * span)
    spread = max(ys) - min(ys)
    ax.set_ylim(min(ys) - max(spread * 0.25, 1), max(ys) + max(spread * 0.25, 1))
    ax.set_ylabel("accuracy (%)")
    ax.set_title("(d) Accuracy vs latency (up-left is better)")
    # Students of one architecture sit close together: stack their labels at least one line
    # apart (in axes coordinates), each linked to its point when it had to move.
    to_axes = ax.transData + ax.transAxes.inverted()
    points = [(tuple(to_axes.transform((x, y))), m) for x, y, m in zip(xs, ys, models, strict=True)]
    points.sort(key=lambda p: p[0][1])
    label_y = []
    for (_, py), _ in points:
        label_y.append(max(py, label_y[-1] + 0.075) if label_y else py)
    excess = max(label_y[-1] - 0.95, 0)
    for ((px, py), m), ly in zip(points, label_y, strict=True):
        moved = abs(ly - excess - py) > 0.01
        ax.annotate(
            who(m),
            (px, py),
            xycoords="axes fraction",
            xytext=(px + 0.04, ly - excess),
            textcoords="axes fraction",
            va="center",
            fontsize=8,
            arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.7} if moved else None,
        )
    ax.grid(alpha=0.3)


def _plot_confusion(ax: Any, model: dict[str, Any], names: list[str], first_col: bool) -> Any:
    """(e) Row-normalised confusion matrix: each row shows where one true class went."""
    cm = np.asarray(model["confusion_matrix"], dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    pct = 100 * np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    n = len(names)
    size = 8 if n <= 6 else 7 if n <= 10 else 6
    for r in range(n):
        for c in range(n):
            if pct[r, c] >= 0.5:  # blank cells keep the off-diagonal mistakes easy to spot
                ax.text(
                    c,
                    r,
                    f"{pct[r, c]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if pct[r, c] > 60 else "black",
                )
    ax.set_xticks(
        range(n),
        [tex_safe(short(s, 13)) for s in names],
        rotation=50,
        ha="right",
        rotation_mode="anchor",
        fontsize=size + 1,
    )
    ax.set_yticks(range(n), [tex_safe(s) for s in names] if first_col else [], fontsize=size + 1)
    ax.set_xlabel("predicted class", fontsize=9)
    if first_col:
        ax.set_ylabel("true class", fontsize=9)
    title = textwrap.fill(who(model), 50)
    ax.set_title(
        f"{title}\naccuracy {100 * model['accuracy']:.1f}%", fontsize=9, color=colour(model)
    )
    return im


def plot_comparison(results: dict[str, Any], path: Path) -> None:
    """The comparison at a glance: scores, speed, size, confusion and the trade-off."""
    models = results["models"]
    names = results["dataset"]["label_names"]
    # Balanced rows of matrices (4 models: 2 + 2, not 3 + 1), and only two a row when the classes
    # are many, so the figure stays narrow enough to be read at the width of a browser window.
    n_rows = math.ceil(len(models) / (2 if len(names) > 8 else 3))
    n_cols = math.ceil(len(models) / n_rows)
    cm_side = 2.2 + 0.28 * len(names)  # inches per confusion matrix, grows with the classes
    width = max(13.0, n_cols * cm_side + 2.5)
    bar_height = max(3.8, 0.75 * len(models) + 1.5)
    fig = Figure(
        figsize=(width, 2 * bar_height + n_rows * (cm_side + 0.6) + 0.8), layout="constrained"
    )
    top, bottom = fig.subfigures(2, 1, height_ratios=[2 * bar_height, n_rows * (cm_side + 0.6)])
    (a, b1), (b2, d) = top.subplots(2, 2)
    _plot_scores(a, models)
    _plot_latency(b1, models)
    _plot_size(b2, models)
    _plot_tradeoff(d, models)

    axes = bottom.subplots(n_rows, n_cols, squeeze=False).ravel()
    for i, (ax, m) in enumerate(zip(axes, models, strict=False)):  # spare axes hidden below
        im = _plot_confusion(ax, m, names, first_col=i % n_cols == 0)
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    bottom.colorbar(
        im, ax=list(axes[: len(models)]), shrink=0.6, label="share of the true class (%)"
    )
    bottom.suptitle("(e) Confusion matrices, row-normalised (% of each true class)", fontsize=11)

    ds = results["dataset"]
    fig.suptitle(
        tex_safe(
            f"Teacher vs students on {ds['name']} / {ds['split']} ({ds['rows']} rows, "
            f"{len(names)} classes, device {results.get('device', '?')})"
        ),
        fontsize=13,
        fontweight="bold",
    )
    save_png(fig, path)
