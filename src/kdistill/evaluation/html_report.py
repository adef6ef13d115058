"""The comparison's HTML report: one self-contained page (figures inlined) with the summary
table, the distillation gain, per-class scores and each run's configuration, from
comparison_results.json alone. Every value from a file or a model's name is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from pathlib import Path
from typing import Any

from kdistill.evaluation.plotting import colour
from kdistill.files import atomic_write_text

logger = logging.getLogger(__name__)

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
    """A formatted number, '—' for a missing or NaN value (an untimed or unscored model)."""
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
    """The summary table's cells per model: quality with intervals, faithfulness, speed, size."""
    rows = []
    for m in models:
        data = m.get("training_data") or {}
        dot = f'<span class="role" style="background:{colour(m)}"></span>'
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
                _folded(m.get("calibration")),
                _num(m.get("agreement_with_teacher"), "{:.2f}", 100),
                _num(m.get("kl_to_teacher"), "{:.3f}"),
                _num(m.get("latency_ms_batch_1"), "{:.2f}"),
                _num(m.get("throughput_per_s"), "{:.0f}"),
                _num(m.get("speedup_vs_teacher"), "{:.2f}×"),
                _num(m.get("compression_vs_teacher"), "{:.2f}×"),
                _num(data.get("labeled_rows"), "{:,}"),
                _num(data.get("unlabeled_rows"), "{:,}"),
                html.escape(m.get("recipe") or "—"),
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
    "T folded in (validation ECE before → after)",
    "agreement with teacher (%)",
    "KL to teacher (nats)",
    "latency, batch 1 (ms)",
    "throughput (/s)",
    "speed-up",
    "compression",
    "labelled train rows",
    "unlabelled train rows",
    "recipe",
]


def _folded(record: dict[str, Any] | None) -> str:
    """The summary's calibration cell: the T folded into the head and the validation ECE before
    and after; 'off', or '—' for a model that predates calibration."""
    if not record:
        return "—"
    if record.get("mode") == "off":
        return "off"
    if "temperature" not in record:
        return "—"
    before, after = record.get("ece_at_1"), record.get("ece_fitted")
    t = f"{record['temperature']:.3g}" if record.get("applied") else "1 (left as trained)"
    return html.escape(f"{t} ({_num(before, '{:.3f}')} → {_num(after, '{:.3f}')})")


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


def _matched_html(g: dict[str, Any]) -> str:
    """What the student's and the baseline's runs matched and what differs, as a sub-list."""
    matched = ", ".join(html.escape(x) for x in g.get("matched") or []) or "nothing recorded"
    items = f"<li>matched: {matched}</li>"
    if g.get("differs"):
        items += f"<li>differs: {'; '.join(html.escape(x) for x in g['differs'])}</li>"
    return f"<ul>{items}</ul>"


def _gain_html(gain: dict[str, Any] | None) -> str:
    """The distillation gain section: each fair student's gain, or why there is none."""
    if not gain:
        return ""
    base = html.escape(gain["baseline"])
    items = "".join(
        f"<li>student <b>{html.escape(g['student'])}</b>: {_points(g, 'accuracy', 'accuracy')}, "
        f"{_points(g, 'macro_f1', 'macro-F1')} over the cross-entropy-only baseline "
        f"<b>{base}</b>{_matched_html(g)}</li>"
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
        "the same data set and labelled rows, with the same tokenizer, max length, learning "
        "rate, batch size and schedule, for at least as many optimizer steps (not epochs: a "
        "student that also learns from unlabelled text takes more steps per epoch). Each gain "
        "names what the two runs matched and what still differs. Intervals are paired "
        "bootstraps over the same rows; a gain whose interval spans 0 is "
        f"within noise.</p><ul>{items}</ul>"
    )


def _per_class_html(models: list[dict[str, Any]]) -> str:
    """Per-class F1 of every model side by side: where the students lose to the teacher."""
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
    """The figures inlined as base64 PNGs, so the page is one self-contained file."""
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
    """Each run's resolved config.json, folded away: how every student was made."""
    parts = ["<h2>Run configurations</h2>"]
    for m in models:
        config = m.get("run_config")
        text = json.dumps(config, indent=2, default=str) if config else "(no run directory)"
        parts.append(
            f"<details><summary>{html.escape(m['name'])}: {html.escape(str(m.get('path')))}"
            f"</summary><pre>{html.escape(text)}</pre></details>"
        )
    return "".join(parts)


def _transfer_text_html(models: list[dict[str, Any]]) -> str:
    """What each student learned from beyond its labelled rows: the texts --augment and
    --generate made (the run's transfer_text.json), counted, with the teacher's answers and a
    sample, folded away."""
    parts = []
    for m in models:
        record_path = Path(m["run_dir"]) / "transfer_text.json" if m.get("run_dir") else None
        if record_path is None or not record_path.is_file():
            continue
        record = json.loads(record_path.read_text())
        for kind in ("augment", "generate"):
            made = record.get(kind)
            if not made:
                continue
            line = f"{m['name']}: {kind} made {made['count']:,} texts"
            if "agreement" in made:
                agreement = _num(made["agreement"], "{:.1f}", 100)
                line += f", the teacher agreeing with the class written for on {agreement}%"
            histogram = ", ".join(f"{k} {v}" for k, v in made.get("teacher_histogram", {}).items())
            rows = [
                [html.escape(str(x)) for x in (s["text"], s.get("written_for") or s["method"])]
                + [html.escape(s.get("teacher", "-"))]
                for s in made.get("sample", [])
            ]
            parts.append(
                f"<details><summary>{html.escape(line)}</summary>"
                f"<p>teacher's classes: {html.escape(histogram or '-')}</p>"
                f"{_table(['text', 'method or class written for', 'teacher'], rows, 3)}"
                "</details>"
            )
    return "<h2>Made transfer text</h2>" + "".join(parts) if parts else ""


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
{_transfer_text_html(models)}
{_configs_html(models)}
</body>
</html>
"""
    atomic_write_text(path, doc)
