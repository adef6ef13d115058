"""sweep: one distill run per (temperature, alpha) pair, then the best of them.

The seed's advice is to "experiment with temperature (2.0-4.0) and alpha (0.5-0.8)". Every run of
a grid uses the same teacher on the same data, so the teacher's logits are computed by the first
run and read back from the disk cache by the others (`--teacher-cache auto` becomes `disk`):
after the first point a sweep costs what its students cost.

Layout: <output-dir>/<dataset>_sweep_<YYYYMMDD_HHMMSS>/ holding one run directory per point,
sweep.json (rewritten after every point, so a stopped sweep still says what it found) and
sweep_heatmap.png.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from kdistill.config import SweepConfig
from kdistill.errors import KdistillError
from kdistill.runs import atomic_write_json, finish_run_dir, format_float, new_run_dir

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def point_result(temperature: float, alpha: float, run_dir: Path | None, error: str | None,
                 duration: float) -> dict[str, Any]:  # fmt: skip
    """One grid point as sweep.json records it, read back from the run's history.json."""
    import json

    entry: dict[str, Any] = {
        "temperature": temperature, "alpha": alpha, "status": "failed" if error else "completed",
        "run_dir": str(run_dir) if run_dir else None, "best_val_accuracy": None,
        "best_epoch": None, "best_val_macro_f1": None, "duration_s": duration, "error": error,
    }  # fmt: skip
    if run_dir is not None:
        history = json.loads((run_dir / "history.json").read_text())
        best = history["best"]
        at_best = next(e for e in history["epochs"] if e["epoch"] == best["epoch"])
        entry.update(best_val_accuracy=best["val_accuracy"], best_epoch=best["epoch"],
                     best_val_macro_f1=at_best["val_macro_f1"],
                     teacher_val_accuracy=history["teacher"]["val_accuracy"])  # fmt: skip
    return entry


def best_point(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest validation accuracy; ties go to the point run first (grid order)."""
    done = [p for p in points if p["status"] == "completed"]
    return max(done, key=lambda p: p["best_val_accuracy"]) if done else None


def sweep(config: SweepConfig) -> Path:
    """The sweep command. Returns the sweep directory."""
    from kdistill.data import dataset_name
    from kdistill.distill import distill
    from kdistill.report import plot_sweep_heatmap

    temperatures, alphas = config.temperature_list(), config.alpha_list()
    grid = [(t, a) for t in temperatures for a in alphas]
    name = dataset_name(config.dataset)
    # The sweep folder only groups runs (each run guards itself with `.partial`), so it takes its
    # final name at once and sweep.json says whether the sweep finished.
    final, partial = new_run_dir(Path(config.output_dir), f"{name}_sweep")
    sweep_dir = finish_run_dir(partial, final)
    cache = "disk" if config.teacher_cache == "auto" else config.teacher_cache
    if cache in ("memory", "off"):
        logger.warning("--teacher-cache %s: every point of the sweep runs the teacher again; "
                       "auto or disk computes its logits once", cache)  # fmt: skip
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "dataset": name,
        "teacher_model": config.teacher_model,
        "student_model": config.student_model,
        "temperatures": temperatures,
        "alphas": alphas,
        "teacher_val_accuracy": None,
        "runs": [],
        "best": None,
        "started": datetime.now().isoformat(timespec="seconds"),
        "config": {**config.to_dict(), "teacher_cache": cache},
        "files": {"json": "sweep.json", "heatmap": "sweep_heatmap.png"},
    }
    logger.info("sweep: %d runs (T in %s x alpha in %s) into %s", len(grid),
                ", ".join(map(format_float, temperatures)), ", ".join(map(format_float, alphas)),
                sweep_dir)  # fmt: skip
    for i, (t, a) in enumerate(grid, 1):
        logger.info("== sweep %d/%d: T=%s alpha=%s", i, len(grid), format_float(t),
                    format_float(a))  # fmt: skip
        run_config = config.run_config(t, a, str(sweep_dir))
        run_config.teacher_cache = cache
        start = time.perf_counter()
        try:
            run_dir, error = distill(run_config), None
        except KdistillError as e:
            if not record["runs"]:
                # The first point failing means the input is wrong, not the point: leave nothing.
                shutil.rmtree(sweep_dir, ignore_errors=True)
                raise
            run_dir, error = None, str(e)
            logger.error("sweep point T=%s alpha=%s failed: %s", t, a, e)
        entry = point_result(t, a, run_dir, error, time.perf_counter() - start)
        record["teacher_val_accuracy"] = entry.pop("teacher_val_accuracy",
                                                   record["teacher_val_accuracy"])  # fmt: skip
        record["runs"].append(entry)
        record["best"] = best_point(record["runs"])
        atomic_write_json(sweep_dir / "sweep.json", record)

    record["completed"] = datetime.now().isoformat(timespec="seconds")
    atomic_write_json(sweep_dir / "sweep.json", record)
    plot_sweep_heatmap(record, sweep_dir / "sweep_heatmap.png")
    best = record["best"]
    if best is None:
        raise KdistillError(f"every point of the sweep failed; see {sweep_dir / 'sweep.json'}")
    logger.info("best: T=%s alpha=%s, validation accuracy %.4f (epoch %d): %s",
                format_float(best["temperature"]), format_float(best["alpha"]),
                best["best_val_accuracy"], best["best_epoch"], best["run_dir"])  # fmt: skip
    return sweep_dir
