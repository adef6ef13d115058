"""Run directories and atomic writes.

A crash must never leave a half-written file or model where a good one was, so everything is
written under a temporary name beside its destination and renamed into place (a rename within one
file system is atomic). A run directory carries the `.partial` suffix until the run completes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.errors import KdistillError
from kdistill.files import is_run_config

if TYPE_CHECKING:
    from kdistill.config import RunsConfig

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


def format_float(x: float) -> str:
    """3 -> '3.0', 0.70 -> '0.7': the seed's run names (T3.0_A0.7)."""
    return repr(float(x))


def run_name(dataset: str, temperature: float, alpha: float) -> str:
    return f"{dataset}_T{format_float(temperature)}_A{format_float(alpha)}"


def new_run_dir(parent: Path, name: str, now: datetime | None = None) -> tuple[Path, Path]:
    """Reserve `<parent>/<name>_<YYYYMMDD_HHMMSS>` and create its `.partial` working folder.

    Returns (final_path, partial_path). Never reuses a name: a second run in the same second, or
    one whose partial folder survives from a crash, gets a `_2`, `_3`... suffix.
    """
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    parent.mkdir(parents=True, exist_ok=True)
    base = f"{name}_{stamp}"
    for i in range(1, 1000):
        final = parent / (base if i == 1 else f"{base}_{i}")
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        if final.exists() or partial.exists():
            continue
        try:
            partial.mkdir()
        except FileExistsError:  # another process took it between the check and mkdir
            continue
        return final, partial
    raise RuntimeError(f"could not reserve a run directory for {base} under {parent}")


# What a run directory holds before its training writes anything: the resolved configuration,
# the trackers' folder, and atomic writes' temporary files.
UNSTARTED_FILES = {"config.json", "logs"}


def discard_unstarted(partial: Path) -> bool:
    """Remove a `.partial` run directory whose run failed before training wrote anything: bad
    input found late (a weak teacher, a full disk) should leave no trace, and there is nothing to
    resume or look at. A run that got further writes history.json (each epoch, and on failure),
    models or checkpoints, and is kept. Returns whether it was removed."""
    if not partial.is_dir():
        return False
    entries = [p.name for p in partial.iterdir()]
    if any(n not in UNSTARTED_FILES and not n.startswith(".") for n in entries):
        return False
    shutil.rmtree(partial, ignore_errors=True)
    return True


def finish_run_dir(partial: Path, final: Path) -> Path:
    os.replace(partial, final)
    return final


# --------------------------------------------------------------------------- listing runs

# Model folders inside a run hold a Hugging Face config.json, which is not a run's.
MODEL_FOLDERS = ("best_model", "final_model")
# (row key, header, right-aligned) in table order.
TABLE_COLUMNS = (
    ("name", "name", False),
    ("status", "status", False),
    ("dataset", "dataset", False),
    ("teacher", "teacher", False),
    ("student", "student", False),
    ("temperature", "T", True),
    ("alpha", "alpha", True),
    ("best_val_accuracy", "best acc", True),
    ("best_epoch", "best ep", True),
    ("epochs", "epochs", True),
    ("duration_s", "duration", True),
    ("started", "started", False),
    ("path", "path", False),
)


def _read_json(path: Path) -> Any:
    """The parsed file, None when it does not exist; ValueError when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: {e}") from e


def process_alive(process: Any) -> bool:
    """Whether the process that wrote a run is still running here. Another host's process
    cannot be checked, so its unfinished run counts as crashed."""
    if not isinstance(process, dict) or process.get("host") != socket.gethostname():
        return False
    pid = process.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # os.kill(0 or -n) would signal a whole process group
    try:
        os.kill(pid, 0)
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _number(x: Any) -> float | None:
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


def _basename(model: Any) -> str | None:
    return Path(str(model).rstrip("/")).name if model else None


def _config_cells(config: dict[str, Any]) -> dict[str, Any]:
    """A `kdistill runs` row's cells that config.json holds."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    student = _basename(config.get("student_model"))
    if student and config.get("student_layers"):
        student += f" layers {config['student_layers']}"
    elif student and config.get("student_num_layers"):
        student += f" {config['student_num_layers']} layers"
    return {
        "dataset": data.get("name") or config.get("dataset"),
        "teacher": _basename(config.get("teacher_model")),
        "student": student,
        "temperature": _number(config.get("temperature")),
        "alpha": _number(config.get("alpha")),
        "epochs_total": config.get("epochs"),
        "started": config.get("started"),
    }


def _history_cells(history: dict[str, Any]) -> dict[str, Any]:
    """A `kdistill runs` row's cells that history.json holds: the best epoch and progress."""
    epochs = [e for e in history.get("epochs") or [] if isinstance(e, dict)]
    scored = [e for e in epochs if _number(e.get("val_accuracy")) is not None]
    # history.json records the best epoch; a crashed run's may predate that key.
    best = history.get("best") if isinstance(history.get("best"), dict) else {}
    if best.get("epoch") is None and scored:
        top = max(scored, key=lambda e: e["val_accuracy"])
        best = {"epoch": top.get("epoch"), "val_accuracy": top["val_accuracy"]}
    at_best = next((e for e in epochs if e.get("epoch") == best.get("epoch")), {})
    duration = history.get("total_time_s", epochs[-1].get("wall_time_s") if epochs else None)
    return {
        "best_val_accuracy": _number(best.get("val_accuracy")),
        "best_epoch": best.get("epoch"),
        "best_val_macro_f1": _number(at_best.get("val_macro_f1")),
        "epochs_done": len(epochs),
        "duration_s": _number(duration),
    }


def read_run(run_dir: Path) -> dict[str, Any]:
    """One row of `kdistill runs`: what the run's config.json and history.json say, and its
    status. Never raises for a damaged run: it is listed as "unreadable" with the reason."""
    partial = run_dir.name.endswith(PARTIAL_SUFFIX)
    row: dict[str, Any] = {
        "name": run_dir.name.removesuffix(PARTIAL_SUFFIX),
        "status": "unreadable",
        "dataset": None,
        "teacher": None,
        "student": None,
        "temperature": None,
        "alpha": None,
        "best_val_accuracy": None,
        "best_val_macro_f1": None,
        "best_epoch": None,
        "epochs_done": None,
        "epochs_total": None,
        "duration_s": None,
        "started": None,
        "path": str(run_dir),
        "error": None,
    }
    try:
        config, history = _read_json(run_dir / "config.json"), _read_json(run_dir / "history.json")
        if not isinstance(config, dict) or not isinstance(history, dict | None):
            raise ValueError(f"{run_dir}: config.json or history.json is not a JSON object")
        row.update(_config_cells(config))
        history = history or {}
        row.update(_history_cells(history))
    except (ValueError, AttributeError, TypeError) as e:
        logger.warning("listed as unreadable: %s", e)
        row["error"] = str(e)
        return row
    if partial:
        # "failed" is written by a run that caught its own error: its process may live on (a
        # sweep, a notebook) but the run is over.
        alive = not history.get("failed") and process_alive(config.get("process"))
        row["status"] = "running" if alive else "crashed"
        if history.get("stopped") and not alive:  # on request, resumable
            row["status"] = "stopped"
    else:  # renamed from .partial only after "completed" is written
        row["status"] = "completed" if history.get("completed") else "incomplete"
    return row


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every distill run under `root` (any depth, e.g. sweeps/<sweep>/<run>), in path order.

    A folder is a run when its config.json is a distill run's; one whose config.json cannot be
    parsed is listed as unreadable rather than hidden. Model folders and hidden temporary folders
    (atomic writes in progress) are not searched, nor is anything inside a run.
    """
    rows = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in MODEL_FOLDERS)
        if "config.json" not in files:
            continue
        try:
            is_run = is_run_config(_read_json(Path(folder) / "config.json"))
        except ValueError:
            is_run = True  # damaged: say so rather than drop a run silently
        if is_run:
            rows.append(read_run(Path(folder)))
            subdirs[:] = []
    return rows


def sort_runs(rows: list[dict[str, Any]], key: str, reverse: bool = False) -> list[dict[str, Any]]:
    """Sorted by one column; runs without a value go last in either direction. Numbers sort as
    numbers, anything else (a hand-edited config) as text after them."""

    def order(row: dict[str, Any]) -> tuple[int, Any]:
        value = row[key]
        return (0, value) if _number(value) is not None else (1, str(value))

    have = [r for r in rows if r.get(key) is not None]
    return sorted(have, key=order, reverse=reverse) + [r for r in rows if r.get(key) is None]


def format_duration(seconds: float) -> str:
    """92 -> '1m32s', 3725 -> '1h02m05s'."""
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _cell(row: dict[str, Any], key: str) -> str:
    if key == "epochs":  # done/total
        done, total = row["epochs_done"], row["epochs_total"]
        return "-" if done is None else f"{done}/{'?' if total is None else total}"
    value = row.get(key)
    if value is None:
        return "-"
    if key == "best_val_accuracy":
        return f"{value * 100:.2f}%"
    if key == "duration_s":
        return format_duration(value)
    if key == "started":
        return str(value).replace("T", " ")[:16]
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_runs_table(rows: list[dict[str, Any]]) -> str:
    """Aligned columns, a header, and a last line counting the runs by status."""
    table = [[header for _, header, _ in TABLE_COLUMNS]]
    table += [[_cell(row, key) for key, _, _ in TABLE_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(TABLE_COLUMNS))]
    lines = [
        "  ".join(
            text.rjust(w) if right else text.ljust(w)
            for text, w, (_, _, right) in zip(line, widths, TABLE_COLUMNS, strict=True)
        ).rstrip()
        for line in table
    ]
    # The three states a user asks about always show; the rare ones only when present.
    statuses = [row["status"] for row in rows]
    summary = ", ".join(
        f"{statuses.count(s)} {s}"
        for s in ("completed", "running", "crashed", "stopped", "incomplete", "unreadable")
        if s in ("completed", "running", "crashed") or s in statuses
    )
    lines.append(f"{len(rows)} run{'s' * (len(rows) != 1)} ({summary})")
    return "\n".join(lines) + "\n"


def show_runs(config: RunsConfig) -> str:
    """The `kdistill runs` command: the text to print, a table or (--json) a JSON list."""
    root = Path(config.output_dir)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise KdistillError(f"--output-dir {root} {what}; pass the folder that holds your runs")
    rows = sort_runs(list_runs(root), config.sort_by, config.reverse)
    if config.json:
        return json.dumps(rows, indent=2) + "\n"
    if not rows:
        return f"no runs under {root}/; train one with kdistill distill\n"
    return format_runs_table(rows)
