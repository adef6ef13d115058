"""Issue 30's rows of bench/no_labels.py: no labelled row anywhere, validation included.

Every student comes from the one command, `kdistill distill --dataset texts.csv --label-names
names.json ...`: a CSV of the DBpedia sample's transfer texts (text column only) and the 14 class
names. distill holds a tenth of the texts out for model selection (agreement with the teacher).
Teacher and student are scored on the same held-out test rows (labels read only to score);
teachers are balanced (where a row says so) on the test rows themselves, no label read.

  embedding  all-MiniLM-L6-v2 as an embedding teacher: class names and the template "A Wikipedia
             article about a {}.", each raw and balanced; the student from the template, balanced
  smol       SmolLM2-135M-Instruct zero-shot: raw, contextual calibration (the default),
             balancing (Sinkhorn, --class-balance on) without calibration, and both; students
             from the variants in --smol-students (default: calibrated)
  ensemble   SmolLM2 (calibrated, --ensemble-prompts templates) + MiniLM (template, balanced),
             weighted by --ensemble-weights (equal, or agreement: no labels read)
  rounds     --rounds N from --rounds-teacher (embedding or ensemble), once per mode in
             --round-targets (soft, weighted, filtered), each its own result file

Each row writes <work>/result-z-<row>.json, so rows run in separate processes; the table of
every row run so far goes to bench/results/<--results-name>.txt.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from teachers import kd_run, minilm_path, smollm2_gguf

WIKI_TEMPLATE = "A Wikipedia article about a {}."
MINILM_VARIANTS = {
    "class names": ["--class-balance", "off"],
    "class names, balanced": [],
    "template": ["--prompt-template", WIKI_TEMPLATE, "--class-balance", "off"],
    "template, balanced": ["--prompt-template", WIKI_TEMPLATE],
}
# The prompt teacher's label-free corrections: contextual calibration (on by default) against
# Sinkhorn balancing on the texts scored.
SMOL_VARIANTS = {
    "raw": ["--no-calibrate"],
    "calibrated": [],
    "balanced": ["--no-calibrate", "--class-balance", "on"],
    "calibrated, balanced": ["--class-balance", "on"],
}
SECOND_PROMPT = "Choose the category of the text from: {labels}.\n\nText: {text}\nThe category is:"
DEFAULT_PROMPT = (
    "Classify the text into one of these categories: {labels}\n\nText: {text}\nCategory:"
)


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of an accuracy p measured on n rows."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def texts_only(work: Path, data: list[str], rows: int) -> tuple[Path, Path]:
    """The transfer set as a CSV with a text column and nothing else, and the class names as a
    JSON list: all the one command is given."""
    import pandas as pd

    folder = work / "data" / data[1]
    csv, names = work / f"texts_{rows}.csv", work / "label_names.json"
    if csv.is_file() and names.is_file():  # another row's process may be reading them
        return csv, names
    texts = pd.read_parquet(folder / "unlabeled.parquet")[["text"]].head(rows)
    info = json.loads((folder / "dataset_info.json").read_text())
    for path, write in (
        (csv, lambda tmp: texts.to_csv(tmp, index=False)),
        (names, lambda tmp: tmp.write_text(json.dumps(info["label_names"]))),
    ):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write(tmp)
        os.replace(tmp, path)  # whole or absent, for a row running beside this one
    return csv, names


def test_flags(args: argparse.Namespace) -> list[str]:
    return ["--split", "test", "--max-samples", str(args.test_rows), "--teacher-cache", "disk"]


def eval_teacher(work: Path, data: list[str], out: Path, *flags: str) -> tuple[dict, float]:
    seconds, _ = kd_run("eval-teacher", *data, *flags, "--output", str(out), work=work)
    return json.loads(out.read_text()), seconds


def score_teachers(
    work: Path, data: list[str], row: str, variants: dict, base: list[str], args
) -> dict:
    """Each teacher variant on the test rows: accuracy, predicted-class counts, seconds."""
    scores = {}
    for label, flags in variants.items():
        out = work / f"z-{row}-{label.replace(' ', '').replace(',', '-')}.json"
        rep, seconds = eval_teacher(work, data, out, *base, *flags, *test_flags(args))
        scores[label] = {"accuracy": rep["accuracy"], "predicted": rep["predicted"], "s": seconds}
        print(f"  {row} teacher {label}: {100 * rep['accuracy']:.1f}%", flush=True)
    return scores


def one_command(work: Path, out: Path, teacher: list[str], args, *extra: str) -> Path:
    """The one command on texts and class names; returns the run (or rounds) folder made."""
    csv, names = texts_only(work, args.data, args.transfer_rows)
    if not args.score_only:
        kd_run(
            "distill",
            "--dataset",
            str(csv),
            "--label-names",
            str(names),
            *teacher,
            "--student-model",
            minilm_path(),
            "--student-layers",
            "0,5",
            "--epochs",
            str(args.epochs),
            "--teacher-cache",
            "disk",
            *extra,
            "--output-dir",
            str(out),
            work=work,
        )
    return sorted(out.iterdir(), key=lambda p: p.stat().st_mtime)[-1]


def student_row(work: Path, run: Path, label: str, teacher_test: float, args) -> dict:
    """A finished run's student on the test rows, with what taught it."""
    rep, _ = eval_teacher(
        work,
        args.data,
        work / f"z-student-{run.name}.json",
        "--teacher-model",
        str(run / "best_model"),
        *test_flags(args)[:4],
        "--teacher-cache",
        "off",
    )
    config = json.loads((run / "config.json").read_text())
    history = json.loads((run / "history.json").read_text())
    targets = history.get("targets") or {}
    print(f"  {label}: student {100 * rep['accuracy']:.1f}%", flush=True)
    return {
        "teacher": label,
        "teacher_test": teacher_test,
        "student_test": rep["accuracy"],
        "test_rows": rep["rows"],
        "transfer_rows": config["data"]["unlabeled_rows"],
        "labelled_rows": config["data"]["train_rows"],  # 0: the held-out slice is teacher-labelled
        "epochs": config["epochs"],
        "round": 1,
        "targets": targets.get("mode", "soft"),
        "kept_rows": targets.get("kept_rows"),
        "mean_confidence": targets.get("mean_confidence"),
        "distill_s": history.get("total_time_s"),
        "run": str(run),
    }


def embedding_row(work: Path, args) -> dict:
    minilm = ["--teacher-model", minilm_path()]
    start = time.perf_counter()
    teachers = score_teachers(work, args.data, "embedding", MINILM_VARIANTS, minilm, args)
    run = one_command(
        work, work / "runs" / "z-embedding", [*minilm, "--prompt-template", WIKI_TEMPLATE], args
    )
    best = teachers["template, balanced"]["accuracy"]
    student = student_row(work, run, "MiniLM, template, balanced", best, args)
    return {"teachers": teachers, "students": [student], "wall_s": time.perf_counter() - start}


def smol_row(work: Path, args) -> dict:
    smol = ["--teacher-model", smollm2_gguf()]
    start = time.perf_counter()
    teachers = score_teachers(work, args.data, "smol", SMOL_VARIANTS, smol, args)
    students = []
    for label in [s.strip() for s in args.smol_students.split(",") if s.strip()]:
        out = work / "runs" / f"z-smol-{label.replace(' ', '').replace(',', '-')}"
        run = one_command(work, out, [*smol, *SMOL_VARIANTS[label]], args)
        acc = teachers[label]["accuracy"]
        students.append(student_row(work, run, f"SmolLM2, {label}", acc, args))
    return {"teachers": teachers, "students": students, "wall_s": time.perf_counter() - start}


def ensemble_teacher(args) -> list[str]:
    """SmolLM2 (default prompt, or two prompts) and MiniLM with the Wikipedia template."""
    flags = ["--teacher-model", f"{smollm2_gguf()},{minilm_path()}"]
    if args.ensemble_prompts == 2:
        flags += ["--prompt-template", DEFAULT_PROMPT, "--prompt-template", SECOND_PROMPT]
    flags += ["--prompt-template", WIKI_TEMPLATE]
    if args.ensemble_weights == "agreement":
        flags += ["--teacher-weights", "agreement"]
    return flags


def ensemble_row(work: Path, args) -> dict:
    start = time.perf_counter()
    teacher = ensemble_teacher(args)
    label = f"SmolLM2 x{args.ensemble_prompts} + MiniLM, {args.ensemble_weights} weights"
    teachers = score_teachers(work, args.data, "ensemble", {label: []}, teacher, args)
    run = one_command(work, work / "runs" / f"z-{ensemble_key(args)}", teacher, args)
    history = json.loads((run / "history.json").read_text())
    student = student_row(work, run, label, teachers[label]["accuracy"], args)
    student["weights"] = history["teacher_cache"].get("weights")
    return {"teachers": teachers, "students": [student], "wall_s": time.perf_counter() - start}


def rounds_row(work: Path, args) -> dict:
    """--rounds N with --round-targets MODE; every round's student and teacher on test rows."""
    start = time.perf_counter()
    if args.rounds_teacher == "ensemble":
        teacher = ensemble_teacher(args)
    else:
        teacher = ["--teacher-model", minilm_path(), "--prompt-template", WIKI_TEMPLATE]
    out = work / "runs" / f"z-rounds-{args.rounds_teacher}-{args.round_targets}"
    extra = ["--rounds", str(args.rounds), "--round-targets", args.round_targets]
    extra += ["--round-min-confidence", str(args.round_min_confidence)]
    parent = one_command(work, out, teacher, args, *extra)
    record = json.loads((parent / "rounds.json").read_text())
    students = []
    for r in record["rounds"]:
        # The round's own teacher: round 1's alone, later ones with the previous student.
        flags = ["--teacher-model", r["teacher"], *drop_models(teacher)]
        name = f"rounds-{args.rounds_teacher}-{args.round_targets}-r{r['round']}"
        t_rep, _ = eval_teacher(work, args.data, work / f"z-{name}.json", *flags, *test_flags(args))
        label = f"{args.rounds_teacher} rounds, {args.round_targets}"
        row = student_row(work, Path(r["run"]), label, t_rep["accuracy"], args)
        row.update(round=r["round"], agreement=r.get("agreement_with_previous"))
        students.append(row)
    result = {"teachers": {}, "students": students, "wall_s": time.perf_counter() - start}
    return {**result, "stopped": record.get("stopped")}


def drop_models(flags: list[str]) -> list[str]:
    """`flags` without their --teacher-model pairs."""
    out, skip = [], False
    for f in flags:
        if skip:
            skip = False
        elif f == "--teacher-model":
            skip = True
        else:
            out.append(f)
    return out


def ensemble_key(args) -> str:
    return f"ensemble-{args.ensemble_prompts}p-{args.ensemble_weights}"


def row_key(row: str, args) -> str:
    if row == "ensemble":
        return ensemble_key(args)
    if row == "rounds":
        return f"rounds-{args.rounds_teacher}-{args.round_targets}"
    return row


ROWS = {
    "embedding": embedding_row,
    "smol": smol_row,
    "ensemble": ensemble_row,
    "rounds": rounds_row,
}


def table(results: dict[str, dict]) -> list[str]:
    """Markdown: each teacher variant, then each student, of every row run."""
    lines = [
        "| row | teacher (no labels) | teacher test | student test (95% CI) | round | targets "
        "| kept rows | mean confidence | transfer rows | epochs | distill s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        for label, v in r["teachers"].items():
            acc = 100 * v["accuracy"]
            lines.append(f"| {key} | {label} | {acc:.1f}% | - | - | - | - | - | - | - | - |")
        for x in r["students"]:
            lo, hi = wilson(x["student_test"], x["test_rows"])
            conf = x.get("mean_confidence")
            weights = x.get("weights")  # an ensemble's, as fitted on the transfer set
            label = x["teacher"] + (
                f" ({'/'.join(f'{w:.2f}' for w in weights)})" if weights else ""
            )
            lines.append(
                f"| {key} | {label} | {100 * x['teacher_test']:.1f}% "
                f"| {100 * x['student_test']:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}) "
                f"| {x['round']} | {x['targets']} | {x['kept_rows'] or '-'} "
                f"| {f'{conf:.3f}' if conf is not None else '-'} | {x['transfer_rows']} "
                f"| {x['epochs']} | {x['distill_s'] or 0:.0f} |"
            )
    return lines


def run_rows(work: Path, only: list[str], args) -> list[str]:
    """Run the rows asked for (unless --table-only); the table of every row run so far."""
    for row in [] if args.table_only else only:
        print(f"({row}) ...", flush=True)
        result = ROWS[row](work, args)
        (work / f"result-z-{row_key(row, args)}.json").write_text(json.dumps(result, indent=2))
    order = list(ROWS)
    files = sorted(
        work.glob("result-z-*.json"),
        key=lambda p: (order.index(p.stem.split("-")[2]), p.name),
    )
    results = {p.stem.removeprefix("result-z-"): json.loads(p.read_text()) for p in files}
    walls = ", ".join(f"{k} {r['wall_s']:.0f} s" for k, r in results.items())
    return [
        *table(results),
        "",
        f"Each row's wall time (teacher passes, distill, scoring): {walls}",
    ]
