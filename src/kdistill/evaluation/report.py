"""Plots and the HTML report: pure functions, dict in, file out.

Each function reads one of the JSON documents described in the run/comparison schemas (history.json,
comparison_results.json, sweep.json) and writes one file atomically, so a report can be redrawn
from saved results at any time without a model or a GPU. Figures are built with
`matplotlib.figure.Figure` rather than pyplot: no global figure registry to leak or close, and no
display backend is ever touched (PNGs are rendered with Agg).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import LogLocator, MaxNLocator

from kdistill.training.runs import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

ROLE_COLOURS = {"teacher": "#3b6ea8", "student": "#e07b39", "baseline": "#8a8a8a"}
DPI = 110


def _save(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())


def _tex_safe(text: str) -> str:
    """Two '$' in a model or class name would switch matplotlib into maths mode."""
    return str(text).replace("$", r"\$")


def _short(text: str, width: int, middle: bool = False) -> str:
    """Run names differ in their tails (timestamp, `_2`), so cut those in the middle."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2 if middle else width - 1
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def _who(model: dict[str, Any], sep: str = " ") -> str:
    """'name (role)' for plots, or just 'teacher' when the name already says the role."""
    name = _tex_safe(_short(model["name"], 40, middle=True))
    return name if model["name"] == model["role"] else f"{name}{sep}({model['role']})"


def _colour(model: dict[str, Any]) -> str:
    return ROLE_COLOURS.get(model.get("role", "student"), ROLE_COLOURS["student"])


# ---------------------------------------------------------------------------- training curves


def plot_training_curves(history: dict[str, Any], path: Path) -> None:
    """Loss and validation scores per epoch of one distill run; works while the run is going."""
    epochs = history.get("epochs") or []
    xs = [e["epoch"] for e in epochs]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, score_ax = fig.subplots(1, 2)

    curves = [
        ("train_loss", "total loss", "-"),
        ("train_kl", "KL term (× T², as in the loss)", "--"),
        ("train_ce", "cross-entropy term", ":"),
    ]
    # With --unlabeled-data, each kind of row's own loss too.
    if any(e.get("train_unlabeled_samples") for e in epochs):
        curves += [
            ("train_loss_labeled", "loss on labelled rows", "-."),
            ("train_loss_unlabeled", "loss on unlabelled rows (× T² KL)", "-."),
        ]
    for key, label, style in curves:
        points = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
        if points:
            loss_ax.plot(*zip(*points, strict=True), style, marker="o", label=label)
    loss_ax.set_title("Training loss per epoch (KL term scaled by T²)")
    loss_ax.set_ylabel("loss (nats per example)")

    scores = []
    for key, label in (
        ("val_accuracy", "validation accuracy"),
        ("val_macro_f1", "validation macro-F1"),
    ):
        points = [(e["epoch"], 100 * e[key]) for e in epochs if e.get(key) is not None]
        if points:
            score_ax.plot(*zip(*points, strict=True), marker="o", label=label)
            scores += [y for _, y in points]
    teacher_acc = (history.get("teacher") or {}).get("val_accuracy")
    if teacher_acc is not None:
        score_ax.axhline(
            100 * teacher_acc,
            color="black",
            ls="--",
            lw=1,
            label=f"teacher accuracy ({100 * teacher_acc:.1f}%)",
        )
        scores.append(100 * teacher_acc)
    # Zoom on the scores and the teacher so epoch-to-epoch changes show; chance (often far
    # below) stays on the axis only when it is near, and its legend entry says where it went.
    lo, hi = (min(scores), max(scores)) if scores else (0.0, 100.0)
    pad = max(1.0, 0.15 * (hi - lo))
    chance = history.get("chance_accuracy")
    if chance is not None:
        near = 100 * chance >= lo - 3 * pad
        lo = min(lo, 100 * chance) if near else lo
        where = "" if near else ", below the axis"
        score_ax.axhline(
            100 * chance,
            color="grey",
            ls=":",
            lw=1,
            label=f"chance accuracy ({100 * chance:.1f}%{where})",
        )
    score_ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad) + 0.5)
    best = history.get("best") or {}
    if best.get("epoch") in xs and best.get("val_accuracy") is not None:
        score_ax.plot(
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
    score_ax.set_title(f"Validation scores per epoch{status}")
    score_ax.set_ylabel("accuracy / macro-F1 (%)")

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
    _save(fig, path)


# ---------------------------------------------------------------------------- comparison figure


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
                color=_colour(m),
                hatch=hatch,
                alpha=0.55 if hatch else 1.0,
                edgecolor="white",
            )
            ax.text(v, i + offset, f" {v:.1f}", va="center", fontsize=8)
    ax.set_yticks(y, [_who(m, sep="\n") for m in models], fontsize=8)
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
    ax.barh(range(len(models)), values, color=[_colour(m) for m in models], height=0.6)
    for i, m in enumerate(models):
        ax.text(
            values[i],
            i,
            f" {values[i]:.1f} ms (×{m['speedup_vs_teacher']:.1f})",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(models)), [_who(m, sep="\n") for m in models], fontsize=8)
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
    ax.barh(range(len(models)), values, color=[_colour(m) for m in models], height=0.6)
    for i, m in enumerate(models):
        ax.text(
            values[i],
            i,
            f" {values[i]:.1f} {unit} (×{m['compression_vs_teacher']:.1f})",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(models)), [_who(m, sep="\n") for m in models], fontsize=8)
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
        ax.scatter(x, y, s=60, color=_colour(m), edgecolor="black", zorder=3)
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
            _who(m),
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
        [_tex_safe(_short(s, 13)) for s in names],
        rotation=50,
        ha="right",
        rotation_mode="anchor",
        fontsize=size + 1,
    )
    ax.set_yticks(range(n), [_tex_safe(s) for s in names] if first_col else [], fontsize=size + 1)
    ax.set_xlabel("predicted class", fontsize=9)
    if first_col:
        ax.set_ylabel("true class", fontsize=9)
    title = textwrap.fill(_who(model), 50)
    ax.set_title(
        f"{title}\naccuracy {100 * model['accuracy']:.1f}%", fontsize=9, color=_colour(model)
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
        _tex_safe(
            f"Teacher vs students on {ds['name']} / {ds['split']} ({ds['rows']} rows, "
            f"{len(names)} classes, device {results.get('device', '?')})"
        ),
        fontsize=13,
        fontweight="bold",
    )
    _save(fig, path)


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
    for r in range(len(temps)):
        for c in range(len(alphas)):
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
    teacher = sweep.get("teacher_val_accuracy")
    title = f"Sweep on {sweep.get('dataset', '?')}: {what}"
    if teacher is not None:
        title += f"\nteacher {100 * teacher:.1f}%"
    title += (" — " if teacher is not None else "\n") + "red box = best cell"
    if unclear:
        title += ", dashed: its lead over the runner-up is within one std"
    ax.set_title(_tex_safe(title), fontsize=10)
    _save(fig, path)


# ---------------------------------------------------------------------------- HTML report

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1800px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .85em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; } td { white-space: nowrap; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
.role { display: inline-block; width: .8em; height: .8em; border-radius: 50%;
        margin-right: .3em; vertical-align: middle; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
details { margin: .4em 0; } summary { cursor: pointer; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
.meta { color: #555; }
"""


def _num(x: Any, fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return fmt.format(x if scale == 1 else x * scale)


def _table(header: list[str], rows: list[list[str]], text_cols: int = 1) -> str:
    """Cells arrive escaped (or built from escaped parts); the columns after the first
    `text_cols` hold numbers and are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i >= text_cols else ''}>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _summary_rows(models: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for m in models:
        data = m.get("training_data") or {}
        dot = f'<span class="role" style="background:{_colour(m)}"></span>'
        rows.append(
            [
                html.escape(m["name"]),
                dot + html.escape(m["role"]),
                _num(m.get("parameters"), "{:,.1f}M", 1e-6),
                _num(m.get("size_on_disk_bytes"), "{:.1f}", 1e-6),
                _num(m.get("accuracy"), "{:.2f}", 100),
                _interval(m.get("accuracy_ci")),
                _num(m.get("macro_f1"), "{:.2f}", 100),
                _interval(m.get("macro_f1_ci")),
                _num(m.get("ece"), "{:.3f}"),
                _num(m.get("agreement_with_teacher"), "{:.2f}", 100),
                _num(m.get("kl_to_teacher"), "{:.3f}"),
                _num(m.get("latency_ms_batch_1"), "{:.2f}"),
                _num(m.get("throughput_per_s"), "{:.0f}"),
                _num(m.get("speedup_vs_teacher"), "{:.2f}×"),
                _num(m.get("compression_vs_teacher"), "{:.2f}×"),
                _num(data.get("labeled_rows"), "{:,}"),
                _num(data.get("unlabeled_rows"), "{:,}"),
            ]
        )
    return rows


SUMMARY_HEADER = [
    "model",
    "role",
    "parameters",
    "size (MB)",
    "accuracy (%)",
    "95% interval",
    "macro-F1 (%)",
    "95% interval",
    "ECE",
    "agreement with teacher (%)",
    "KL to teacher (nats)",
    "latency, batch 1 (ms)",
    "throughput (/s)",
    "speed-up",
    "compression",
    "labelled train rows",
    "unlabelled train rows",
]


def _interval(ci: list[float] | None, scale: float = 100, signed: bool = False) -> str:
    """'88.1–94.0' (a 95% interval in percent), '—' for results written before intervals."""
    if not ci:
        return "—"
    sign = "+" if signed else ""
    return f"{ci[0] * scale:{sign}.1f} – {ci[1] * scale:{sign}.1f}"


def _points(g: dict[str, Any], metric: str, what: str) -> str:
    """'+3.1 accuracy points (95% interval +0.4 – +5.9)', and 'within noise' when it spans 0."""
    text = f"{g[f'{metric}_points']:+.1f} {what} points"
    ci = g.get(f"{metric}_points_ci")
    if ci:
        text += f" (95% interval {_interval(ci, 1, signed=True)}"
        text += ", <b>within noise</b>)" if g.get(f"{metric}_within_noise") else ")"
    return text


def _gain_html(gain: dict[str, Any] | None) -> str:
    if not gain:
        return ""
    base = html.escape(gain["baseline"])
    items = "".join(
        f"<li>student <b>{html.escape(g['student'])}</b>: {_points(g, 'accuracy', 'accuracy')}, "
        f"{_points(g, 'macro_f1', 'macro-F1')} over the cross-entropy-only baseline "
        f"<b>{base}</b></li>"
        for g in gain["students"]
    )
    for n in gain.get("not_comparable", []):
        reasons = "".join(f"<li>{html.escape(d)}</li>" for d in n["differences"])
        items += (
            f"<li>student <b>{html.escape(n['student'])}</b>: no gain reported, it is not a fair "
            f"comparison with the baseline <b>{base}</b>:<ul>{reasons}</ul></li>"
        )
    return (
        "<h2>Distillation gain</h2><p>What the teacher adds: each student against the same "
        "student architecture trained on labels alone (alpha = 0, no teacher on any row), on "
        "the same data set and labelled rows, for as many epochs, at the same max length. "
        "Intervals are paired bootstraps over the same rows; a gain whose interval spans 0 is "
        f"within noise.</p><ul>{items}</ul>"
    )


def _per_class_html(models: list[dict[str, Any]]) -> str:
    parts = ["<h2>Per-class scores</h2>"]
    for m in models:
        rows = [
            [
                html.escape(label),
                _num(c["precision"], "{:.1f}", 100),
                _num(c["recall"], "{:.1f}", 100),
                _num(c["f1"], "{:.1f}", 100),
                _num(c["support"], "{:d}"),
            ]
            for label, c in (m.get("per_class") or {}).items()
        ]
        table = _table(["class", "precision (%)", "recall (%)", "F1 (%)", "support"], rows)
        parts.append(
            f"<details><summary>{html.escape(m['name'])} ({html.escape(m['role'])})</summary>"
            f"{table}</details>"
        )
    return "".join(parts)


def _figures_html(figures: dict[str, Path]) -> str:
    parts = []
    for caption, fig_path in figures.items():
        fig_path = Path(fig_path)
        if not fig_path.is_file():
            logger.warning("figure %s not found; left out of the report", fig_path)
            continue
        data = base64.b64encode(fig_path.read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return "<h2>Figures</h2>" + "".join(parts) if parts else ""


def _configs_html(models: list[dict[str, Any]]) -> str:
    parts = ["<h2>Run configurations</h2>"]
    for m in models:
        config = m.get("run_config")
        text = json.dumps(config, indent=2, default=str) if config else "(no run directory)"
        parts.append(
            f"<details><summary>{html.escape(m['name'])}: {html.escape(str(m.get('path')))}"
            f"</summary><pre>{html.escape(text)}</pre></details>"
        )
    return "".join(parts)


def write_html_report(results: dict[str, Any], path: Path, figures: dict[str, Path]) -> None:
    """One self-contained HTML file (figures inlined) so the report survives being mailed or
    copied off the machine; every string from the results is escaped."""
    ds, models = results["dataset"], results["models"]
    title = f"kdistill comparison: {ds['name']} / {ds['split']}"
    speed = results.get("speed_settings") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (results.get("versions") or {}).items())
    meta = "<br>".join(
        html.escape(line)
        for line in (
            f"{ds['rows']:,} rows, {len(ds['label_names'])} classes · device "
            f"{results.get('device', '?')}, "
            f"mixed precision {results.get('mixed_precision', '?')} · "
            f"created {results.get('created', '?')}",
            f"latency: median (and IQR) over {speed.get('latency_rows', '?')} rows one at a time, "
            f"the models timed interleaved; throughput "
            f"at batch {speed.get('throughput_batch_size', '?')}; {speed.get('repeats', '?')} "
            f"repeats; max length {speed.get('max_length', '?')}",
            versions,
        )
    )
    doc = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{meta}</p>
<h2>Summary</h2>
<p>Accuracy, macro-F1 and agreement in percent, each score with its 95% bootstrap interval over
the rows; macro-F1 averages the classes present in the split; ECE = expected calibration error
(15 bins); KL to teacher at T = 1; speed-up and compression relative to the teacher.</p>
{_table(SUMMARY_HEADER, _summary_rows(models), text_cols=2)}
{_gain_html(results.get("distillation_gain"))}
{_figures_html(figures)}
{_per_class_html(models)}
{_configs_html(models)}
</body>
</html>
"""
    atomic_write_text(path, doc)
