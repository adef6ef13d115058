"""sweep: one distill run per (temperature, alpha) pair, then the best of them.

The seed's advice is to "experiment with temperature (2.0-4.0) and alpha (0.5-0.8)". Every run of
a grid uses the same teacher on the same data, so the teacher's logits are computed once and read
back from the disk cache (`--teacher-cache auto` becomes `disk`). With `--lockstep` (auto: where
it fits in memory) the grid's students also train together, their weights stacked, one launch per
operator for all of them (training.lockstep); otherwise one point after another, each a distill
run. Either way each point gets the run folder distill would give it.

`--seeds 1,2,3` repeats the grid once per seed (one more stacked axis in lockstep) and reports
each point's mean and spread: a lead smaller than the seeds' spread is not a finding.
`distill --seeds` is the one-point case (distill_seeds).

Layout: <output-dir>/<dataset>_sweep_<YYYYMMDD_HHMMSS>/ holding one run directory per point (and
seed), sweep.json (rewritten after every point, so a stopped sweep still says what it found) and
sweep_heatmap.png.
"""

from __future__ import annotations

import logging
import resource
import shutil
import time
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

from kdistill.config import DistillConfig, SweepConfig
from kdistill.errors import KdistillError
from kdistill.files import atomic_write_json
from kdistill.training.runs import finish_run_dir, format_float, new_run_dir
from kdistill.training.seed_stats import best_by_mean, seed_summary

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def point_result(
    temperature: float,
    alpha: float,
    run_dir: Path | None,
    error: str | None,
    duration: float,
    seed: int | None = None,
) -> dict[str, Any]:
    """One grid point (one seed of it) as sweep.json records it, read back from its
    history.json."""
    import json

    entry: dict[str, Any] = {
        "temperature": temperature,
        "alpha": alpha,
        "seed": seed,
        "status": "failed" if error else "completed",
        "run_dir": str(run_dir) if run_dir else None,
        "best_val_accuracy": None,
        "best_epoch": None,
        "best_val_macro_f1": None,
        "duration_s": duration,
        "error": error,
    }
    if run_dir is not None:
        history = json.loads((run_dir / "history.json").read_text())
        best = history["best"]
        at_best = next(e for e in history["epochs"] if e["epoch"] == best["epoch"])
        entry.update(
            best_val_accuracy=best["val_accuracy"],
            best_epoch=best["epoch"],
            best_val_macro_f1=at_best["val_macro_f1"],
            teacher_val_accuracy=history["teacher"]["val_accuracy"],
        )
    return entry


def best_point(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest validation accuracy; ties go to the point run first (grid order)."""
    done = [p for p in points if p["status"] == "completed"]
    return max(done, key=lambda p: p["best_val_accuracy"]) if done else None


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def sweep(config: SweepConfig) -> Path:
    """The sweep command. Returns the sweep directory."""
    from kdistill.data.sources import dataset_name
    from kdistill.evaluation.report import plot_sweep_heatmap

    temperatures, alphas = config.temperature_list(), config.alpha_list()
    name = dataset_name(config.dataset)
    # The sweep folder only groups runs (each run guards itself with `.partial`), so it takes its
    # final name at once and sweep.json says whether the sweep finished.
    final, partial = new_run_dir(Path(config.output_dir), f"{name}_sweep")
    sweep_dir = finish_run_dir(partial, final)
    record = new_record(config, name, temperatures, alphas)
    record["files"] = {"json": "sweep.json", "heatmap": "sweep_heatmap.png"}
    logger.info(
        "sweep: %d runs (T in %s x alpha in %s%s) into %s",
        len(temperatures) * len(alphas) * len(config.seed_list()),
        ", ".join(map(format_float, temperatures)),
        ", ".join(map(format_float, alphas)),
        f" x seeds {config.seeds}" if config.seeds else "",
        sweep_dir,
    )
    run_grid(config, record, sweep_dir, sweep_dir / "sweep.json")
    plot_sweep_heatmap(record, sweep_dir / "sweep_heatmap.png")
    best = record["best"]
    if best is None:
        raise KdistillError(f"every point of the sweep failed; see {sweep_dir / 'sweep.json'}")
    if config.seeds:
        logger.info(
            "best: T=%s alpha=%s, mean validation accuracy %.4f over seeds %s%s",
            format_float(best["temperature"]),
            format_float(best["alpha"]),
            best["val_accuracy_mean"],
            config.seeds,
            ""
            if best.get("clear_lead", True)
            else " (its lead over the runner-up is within the seeds' spread)",
        )
    else:
        logger.info(
            "best: T=%s alpha=%s, validation accuracy %.4f (epoch %d): %s",
            format_float(best["temperature"]),
            format_float(best["alpha"]),
            best["best_val_accuracy"],
            best["best_epoch"],
            best["run_dir"],
        )
    return sweep_dir


def new_record(
    config: SweepConfig, name: str, temperatures: list[float], alphas: list[float]
) -> dict[str, Any]:
    cache = "disk" if config.teacher_cache == "auto" else config.teacher_cache
    if cache in ("memory", "off"):
        logger.warning(
            "--teacher-cache %s: every point of the sweep runs the teacher again; "
            "auto or disk computes its logits once",
            cache,
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": name,
        "teacher_model": config.teacher_model,
        "student_model": config.student_model,
        "temperatures": temperatures,
        "alphas": alphas,
        "seeds": config.seed_list() if config.seeds else None,
        "teacher_val_accuracy": None,
        "runs": [],
        "best": None,
        "started": datetime.now().isoformat(timespec="seconds"),
        "config": {**config.to_dict(), "teacher_cache": cache},
    }


def run_grid(config: SweepConfig, record: dict[str, Any], group_dir: Path, json_path: Path) -> None:
    """Train every (seed, T, alpha) student into `group_dir`, in lockstep where it can, and keep
    `record` (written to `json_path` after every point) up to date."""
    config.teacher_cache = record["config"]["teacher_cache"]
    members = [
        (s, t, a)
        for s in config.seed_list()
        for t in record["temperatures"]
        for a in record["alphas"]
    ]
    group_size, reason = lockstep_plan(config, len(members))
    record["lockstep"] = {
        "mode": config.lockstep,
        "group_size": group_size,
        "reason": reason,
        "groups": [],
    }
    for part in same_batches(config, members):
        start = 0
        while start < len(part):
            group = part[start : start + (group_size or 1)]
            if group_size:
                try:
                    train_lockstep(config, group, record, group_dir, json_path)
                except _Fallback as e:
                    group_size, record["lockstep"]["reason"] = None, str(e)
                    record["lockstep"]["group_size"] = None
                    continue  # the same members, in turn
            else:
                train_in_turn(config, group[0], record, group_dir, json_path)
            start += len(group)
    record["completed"] = datetime.now().isoformat(timespec="seconds")
    record["peak_rss_mb"] = round(peak_rss_mb(), 1)
    finish_record(record, config)
    atomic_write_json(json_path, record)


def same_batches(
    config: SweepConfig, members: list[tuple[int, float, float]]
) -> list[list[tuple[int, float, float]]]:
    """The members in parts whose runs alone draw the same batches, in grid order: a lockstep
    group never spans two parts. With --unlabeled-data the alpha-0 points are a part of their
    own: distill --alpha 0 drops the unlabelled rows (nothing there for cross-entropy), so its
    batches and step count are not the other points'."""
    if not config.unlabeled_data:
        return [members]
    zero = [m for m in members if m[2] == 0.0]
    rest = [m for m in members if m[2] != 0.0]
    parts = [p for p in (zero, rest) if p]
    return sorted(parts, key=lambda p: members.index(p[0]))


class _Fallback(Exception):  # noqa: N818
    """Lockstep cannot train this student: train the points in turn."""


def lockstep_plan(config: SweepConfig, students: int) -> tuple[int | None, str | None]:
    """(students per lockstep group, None) or (None, why not): auto falls back with a warning,
    on raises where the options rule lockstep out, off trains in turn."""
    from kdistill.training.lockstep import students_that_fit, unsupported_reason

    if config.lockstep == "off" or students < 2:
        return None, "--lockstep off" if config.lockstep == "off" else "a single student"
    reason = unsupported_reason(config, _num_processes())
    if reason is not None:
        return _no_lockstep(config, f"{reason} is not supported in lockstep")
    try:
        from kdistill.training.runtime import pick_device

        device = pick_device(config.device)
        fit, each = students_that_fit(config, 2, device)
    except Exception as e:  # noqa: BLE001 (a student the estimate cannot read: distill will say)
        return _no_lockstep(config, f"could not estimate the student's memory ({e})")
    if fit < 2 and config.lockstep == "auto":
        return _no_lockstep(
            config,
            f"{students} students need {students * each / 2**30:.1f} GiB "
            f"and not even 2 fit in the memory free",
        )
    if fit < students:
        logger.info(
            "lockstep: %d of the %d students fit in memory at once (%.2f GiB each); "
            "training them in groups",
            max(fit, 2),
            students,
            each / 2**30,
        )
    return min(max(fit, 2), students), None


def _no_lockstep(config: SweepConfig, reason: str) -> tuple[None, str]:
    if config.lockstep == "on":
        raise KdistillError(f"--lockstep on: {reason}; use --lockstep auto or off")
    logger.warning("lockstep off, training the points in turn: %s", reason)
    return None, reason


def _num_processes() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def train_lockstep(
    config: SweepConfig,
    group: list[tuple[int, float, float]],
    record: dict[str, Any],
    group_dir: Path,
    json_path: Path,
) -> None:
    from kdistill.sweep_lockstep import train_group
    from kdistill.training.lockstep import CannotStack

    logger.info(
        "== lockstep: %d students (%s)",
        len(group),
        ", ".join(f"T={format_float(t)} alpha={format_float(a)} seed {s}" for s, t, a in group),
    )
    start = time.perf_counter()
    try:
        points = train_group(config, group, group_dir)
    except CannotStack as e:
        if config.lockstep == "on":
            raise KdistillError(f"--lockstep on: the student cannot be stacked: {e}") from None
        logger.warning(
            "lockstep off, training the points in turn: the student cannot be stacked: %s", e
        )
        raise _Fallback(f"the student cannot be stacked: {e}") from None
    except KdistillError:
        if not record["runs"]:  # the first group failing means the input is wrong: leave nothing
            shutil.rmtree(group_dir, ignore_errors=True)
        raise
    wall = time.perf_counter() - start
    record["lockstep"]["groups"].append({"students": len(group), "duration_s": wall})
    for p in points:
        done = p.final_dir if p.error is None else None
        # Each point's share of its group's time.
        add_entry(
            record,
            point_result(p.temperature, p.alpha, done, p.error, wall / len(points), p.seed),
            json_path,
        )


def train_in_turn(
    config: SweepConfig,
    member: tuple[int, float, float],
    record: dict[str, Any],
    group_dir: Path,
    json_path: Path,
) -> None:
    """One point as today's sweep trains it: a distill run."""
    from kdistill.distill import distill

    seed, t, a = member
    logger.info("== sweep: T=%s alpha=%s seed %d", format_float(t), format_float(a), seed)
    run_config = config.run_config(t, a, str(group_dir), seed)
    start = time.perf_counter()
    try:
        run_dir, error = distill(run_config), None
    except KdistillError as e:
        if not record["runs"]:
            # The first point failing means the input is wrong, not the point: leave nothing.
            shutil.rmtree(group_dir, ignore_errors=True)
            raise
        run_dir, error = None, str(e)
        logger.error("sweep point T=%s alpha=%s seed %d failed: %s", t, a, seed, e)
    add_entry(
        record, point_result(t, a, run_dir, error, time.perf_counter() - start, seed), json_path
    )


def add_entry(record: dict[str, Any], entry: dict[str, Any], json_path: Path) -> None:
    record["teacher_val_accuracy"] = entry.pop(
        "teacher_val_accuracy", record["teacher_val_accuracy"]
    )
    record["runs"].append(entry)
    record["best"] = best_point(record["runs"])
    atomic_write_json(json_path, record)


def finish_record(record: dict[str, Any], config: SweepConfig) -> None:
    """With --seeds, each point's mean and spread, and the best point by its mean."""
    if not config.seeds:
        return
    record["points"] = [
        seed_summary(record["runs"], t, a) for t in record["temperatures"] for a in record["alphas"]
    ]
    record["best"] = best_by_mean(record["points"])


def distill_seeds(config: DistillConfig) -> Path:
    """`distill --seeds`: one run per seed of one (T, alpha), in one folder
    <output-dir>/<dataset>_T<T>_A<alpha>_seeds_<stamp>/ with seeds.json (each seed's best
    validation accuracy, their mean and standard deviation). Returns that folder."""
    from kdistill.data.sources import dataset_name
    from kdistill.training.runs import run_name

    values = {f.name: getattr(config, f.name) for f in fields(DistillConfig)}
    values.update(temperature=str(config.temperature), alpha=str(config.alpha))
    sweep_config = SweepConfig(**values, lockstep="auto")
    name = dataset_name(config.dataset)
    final, partial = new_run_dir(
        Path(config.output_dir), f"{run_name(name, config.temperature, config.alpha)}_seeds"
    )
    group_dir = finish_run_dir(partial, final)
    record = new_record(sweep_config, name, [config.temperature], [config.alpha])
    record["kind"] = "seeds"
    record["files"] = {"json": "seeds.json"}
    run_grid(sweep_config, record, group_dir, group_dir / "seeds.json")
    summary = record["points"][0]
    if summary["val_accuracy_mean"] is None:
        raise KdistillError(f"every seed failed; see {group_dir / 'seeds.json'}")
    spread = summary["val_accuracy_std"]
    logger.info(
        "seeds %s: best validation accuracy %.4f mean, %s std; %s",
        config.seeds,
        summary["val_accuracy_mean"],
        "n/a" if spread is None else f"{spread:.4f}",
        group_dir,
    )
    return group_dir
