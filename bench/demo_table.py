#!/usr/bin/env python
"""The demo's results table, written by `make demo` as its last step into bench/results/demo.txt.

The README's first table is copied from that file (and `make check-docs` holds it to it), so the
numbers a user reads are the ones the demo printed on the code as it is. It reads what the demo
made, nothing else: the prepared data's split sizes, each run's config.json (its recipe, rows
and optimizer steps) and the two `compare` outputs (accuracy with its interval, the paired gain
over each student's cross-entropy baseline, calibration error, speed, size).

    python bench/demo_table.py --demo-out outputs/demo --command "make demo DATASET=..." \
        --started 1733500000 --output bench/results/demo.txt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def comparison(demo_out: Path, which: str) -> dict[str, Any]:
    """comparison_results.json of the compare step whose folder `<which>.path` names."""
    folder = Path((demo_out / f"{which}.path").read_text(encoding="utf-8").strip())
    return load(folder / "comparison_results.json")


def recipe(run_config: dict[str, Any] | None) -> str:
    """What tells two students apart: layers, losses, alpha, T, epochs and learning rate."""
    if not run_config:
        return ""
    path = Path(str(run_config.get("student_model", "")))
    # A packaged model sits in a generic `model` folder: its package names it.
    student = path.parent.name if path.name == "model" else path.name
    layers = run_config.get("student_layers")
    parts = [f"{student} layers {layers}" if layers else student]
    if run_config.get("alpha", 0) == 0:
        parts.append("CE only")
    else:
        t = run_config.get("resolved", {}).get("temperature", run_config.get("temperature"))
        parts.append(f"KD alpha {run_config['alpha']} T {t}")
    if run_config.get("hidden_loss", "none") not in (None, "none"):
        parts.append(f"hidden {run_config['hidden_loss']}")
    if run_config.get("attention_loss", "none") not in (None, "none"):
        parts.append(f"attention {run_config['attention_loss']}")
    parts.append(f"{run_config.get('epochs')} epochs, lr {run_config.get('learning_rate')}")
    return ", ".join(parts)


def rows_and_steps(run_config: dict[str, Any] | None) -> tuple[str, str]:
    if not run_config:
        return "", ""
    data = run_config.get("data", {})
    rows = f"{data.get('train_rows', 0):,} + {data.get('unlabeled_rows', 0):,}"
    steps = run_config.get("resolved", {}).get("total_optimizer_steps")
    return rows, f"{steps:,}" if isinstance(steps, int) else ""


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def interval(ci: list[float]) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def count(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def table(comparisons: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The markdown rows, and one line per student: its share of the teacher's accuracy."""
    header = [
        "| model | recipe | labelled + unlabelled rows | optimizer steps | test accuracy [95% CI] "
        "| gain over its CE baseline, points [paired 95%] | ECE | speed-up vs teacher, batch 1 "
        "| parameters |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows: list[str] = []
    shares: list[str] = []
    seen: set[str] = set()
    for results in comparisons:
        models = results["models"]
        teacher = next(m for m in models if m["role"] == "teacher")
        gain = results.get("distillation_gain") or {}
        gains = {g["student"]: g for g in gain.get("students", [])}
        refused = {n["student"]: n for n in gain.get("not_comparable", [])}
        for m in models:
            key = m.get("run_dir") or m["path"]
            if key in seen:
                continue
            seen.add(key)
            config = m.get("run_config")
            label = {"teacher": "teacher", "baseline": "baseline"}.get(m["role"], "student")
            g = gains.get(m["name"])
            if g:
                low, high = g["accuracy_points_ci"]
                gained = f"{g['accuracy_points']:+.1f} [{low:+.1f}, {high:+.1f}]"
            elif m["name"] in refused:
                gained = "not comparable: " + "; ".join(refused[m["name"]]["differences"])
            else:
                gained = ""
            n_rows, steps = rows_and_steps(config)
            rows.append(
                f"| {label}: {m['name']} | {recipe(config)} | {n_rows} | {steps} "
                f"| {pct(m['accuracy'])} {interval(m['accuracy_ci'])} | {gained} "
                f"| {m['ece']:.3f} | {m['speedup_vs_teacher']:.1f}x | {count(m['parameters'])} |"
            )
            if m["role"] == "student":
                share = m["accuracy"] / teacher["accuracy"]
                shares.append(f"{m['name']}: {100 * share:.1f}% of its teacher's test accuracy")
    return header + rows, shares


def machine() -> str:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-out", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="The prepared data folder.")
    parser.add_argument("--command", required=True, help="The make command that ran the demo.")
    parser.add_argument("--started", type=float, required=True, help="Unix time the demo began.")
    parser.add_argument(
        "--finished",
        type=float,
        default=None,
        help="Unix time the demo's last step ended (default: now); to rewrite the table of a "
        "finished demo without counting the time since",
    )
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    steps = [w for w in ("compare_tiny", "compare_cut") if (args.demo_out / f"{w}.path").is_file()]
    if not steps:
        raise SystemExit(f"demo_table: no compare output under {args.demo_out}")
    comparisons = [comparison(args.demo_out, w) for w in steps]
    # A demo stopped part way (or its steps rerun by hand) gives the rows it has, and says so.
    missing = [w for w in ("compare_tiny", "compare_cut") if w not in steps]
    info = load(args.data / "dataset_info.json")
    splits = {name: s["rows"] for name, s in info["splits"].items()}
    test_rows = comparisons[0]["dataset"]["rows"]
    lines, shares = table(comparisons)
    wall = (args.finished or time.time()) - args.started
    text = "\n".join(
        [
            f"# {args.command}",
            f"# written by bench/demo_table.py at the end of the demo, "
            f"{time.strftime('%Y-%m-%d %H:%M')}; {machine()}",
            f"data: {info['source']}; prepared splits: {splits.get('train', 0):,} labelled train, "
            f"{info.get('unlabeled_rows', 0):,} unlabelled, "
            f"{splits.get('validation', 0):,} validation, {splits.get('test', 0):,} test rows",
            f"compare scored every model on {test_rows:,} test rows "
            f"(95% bootstrap intervals over those rows; gains paired)",
            "",
            *lines,
            "",
            *shares,
            *(
                [f"not in this table: {', '.join(missing)} (the demo stopped before it)"]
                if missing
                else [f"make demo ran end to end in {int(wall // 60)} min {int(wall % 60)} s"]
            ),
            "",
        ]
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(args.output)
    print(text)


if __name__ == "__main__":
    main()
