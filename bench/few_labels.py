#!/usr/bin/env python
"""Few labels, lots of text: what distilling on unlabelled text buys, on the DBpedia sample.

The sample is prepared once with a stratified 20% test split held out for evaluation, 5% of the
rest as a labelled validation split (model selection), and of the training rows a stratified 10%
keeps its labels while the other 90% become unlabelled text (`--labeled-fraction 0.1`). Every
step is the real `kdistill` command in its own process:

  teacher      the packaged all-MiniLM-L6-v2 fine-tuned on the labelled 10% only
  (a) CE       each student trained on the labelled 10% alone (--alpha 0), for as many
               optimizer steps as (b) took (its epochs rounded up): step-matched, so the gain
               is what the teacher and the unlabelled text give, not extra training
  (b) KD       each student distilled on the labelled 10% plus the unlabelled 90%
               (labelled rows: alpha * T^2 * KL + (1 - alpha) * CE; unlabelled rows: T^2 * KL)
  (c) no labels  the SmolLM2-135M prompt teacher (zero-shot, calibrated) labels unlabelled text
               alone and a layer-cut student learns from it (--alpha 1; the data set prepared
               with --labeled-fraction 0, same splits)

Students: 2 layers (0 and 5) cut from MiniLM, and a random-init bert-tiny-shaped one. All are
scored on the same held-out test rows by `kdistill compare`, each (b) against its (a) as the
--baseline: the gain comes with its paired 95% interval, and compare checks that the two runs
match in optimizer steps, rows seen, learning rate, batch size, schedule and seed. The table is
written to bench/results/few_labels.txt; a rerun reuses the trained runs in --work.

    python bench/few_labels.py                       # about 40 minutes on 2 CPU cores
    python bench/few_labels.py --skip-no-labels      # without (c), the slow LLM teacher
    python bench/few_labels.py --smol-rows 300       # fewer rows for the slow LLM teacher
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teachers import BERT_TINY, minilm_path, prepare_data, smollm2_gguf  # noqa: E402
from teachers import kd_run as kd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BATCH_SIZE = 16
KD_EPOCHS = 3
COMMON = ["--batch-size", str(BATCH_SIZE), "--max-length", "128", "--temperature", "3.0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(REPO / "bench" / ".work" / "few_labels"))
    parser.add_argument("--labeled-fraction", type=float, default=0.1)
    parser.add_argument(
        "--smol-rows",
        type=int,
        default=1000,
        help="Unlabelled rows the SmolLM2 teacher labels for (c).",
    )
    parser.add_argument(
        "--students",
        default="tiny,cut",
        help="Which students to train and compare, comma-separated: tiny, cut.",
    )
    parser.add_argument(
        "--skip-no-labels",
        action="store_true",
        help="Leave out (c), the SmolLM2 prompt teacher (the slow part on CPU).",
    )
    args = parser.parse_args()
    work = Path(args.work)
    splits = ["--test-split", "0.2", "--validation-split", "0.05"]
    data, nolabels = (
        prepare_data(work, name, *splits, "--labeled-fraction", str(fraction))
        for name, fraction in (("few", args.labeled_fraction), ("nolabels", 0.0))
    )
    info = json.loads((work / "data" / "few" / "dataset_info.json").read_text())
    rows = {s: info["splits"][s]["rows"] for s in info["splits"]}
    print(f"data: {rows}", flush=True)
    unlabeled = str(work / "data" / "few" / "unlabeled.parquet")

    times: dict[str, float] = {}
    teacher = work / "models" / "minilm-few"
    if not (teacher / "config.json").is_file():
        print("teacher: MiniLM on the labelled rows ...", flush=True)
        times["teacher"], _ = kd(
            "finetune-teacher",
            "--model",
            minilm_path(),
            *data,
            "--output-dir",
            str(work / "models"),
            "--name",
            "minilm-few",
            "--epochs",
            "5",
            "--batch-size",
            "16",
            "--learning-rate",
            "1e-4",
            work=work,
        )

    students = {
        "tiny": [
            "--student-model",
            str(BERT_TINY),
            "--student-tokenizer",
            minilm_path(),
            "--learning-rate",
            "1e-3",
        ],
        "cut": [
            "--student-model",
            minilm_path(),
            "--student-layers",
            "0,5",
            "--learning-rate",
            "1e-4",
        ],
    }
    runs: dict[str, str] = {}
    steps: dict[str, int] = {}
    cut_flags = students["cut"]  # (c)'s student
    students = {k: v for k, v in students.items() if k in args.students.split(",")}
    for student, flags in students.items():
        # (b) first: (a) then gets as many optimizer steps as (b) took, over the labelled rows
        # alone (epochs rounded up), so the gain is distillation's and not extra training.
        key = f"b-{student}"
        extra = ["--alpha", "0.7", "--epochs", str(KD_EPOCHS), "--unlabeled-data", unlabeled]
        times[key], runs[key] = distill_once(work, key, data, teacher, [*flags, *extra])
        steps[key] = optimizer_steps(runs[key])
        per_epoch = math.ceil(rows["train"] / BATCH_SIZE)
        ce_epochs = math.ceil(steps[key] / per_epoch)
        key = f"a-{student}"
        extra = ["--alpha", "0", "--epochs", str(ce_epochs)]
        times[key], runs[key] = distill_once(work, key, data, teacher, [*flags, *extra])
        steps[key] = optimizer_steps(runs[key])

    if not args.skip_no_labels:
        print("(c) SmolLM2, no labels -> cut ...", flush=True)
        smol = smollm2_gguf()
        times["c-cut"], runs["c-cut"] = kd(
            "distill",
            *nolabels,
            "--teacher-model",
            smol,
            *cut_flags,
            *COMMON,
            "--alpha",
            "1",
            "--epochs",
            "3",
            "--unlabeled-data",
            str(work / "data" / "nolabels" / "unlabeled.parquet"),
            "--max-unlabeled-samples",
            str(args.smol_rows),
            "--output-dir",
            str(work / "runs" / "c-cut"),
            work=work,
        )

    print("compare on the test split, each KD student against its CE baseline ...", flush=True)
    compared = {
        student: compare_pair(work, data, teacher, runs[f"b-{student}"], runs[f"a-{student}"])
        for student in students
    }
    acc = {}
    for student, results in compared.items():
        by_run = {m["run_dir"]: m for m in results["models"] if m["run_dir"]}
        for variant in "ab":
            acc[f"{variant}-{student}"] = by_run[runs[f"{variant}-{student}"]]["accuracy"]
        acc["teacher"] = results["models"][0]["accuracy"]
    results = next(iter(compared.values()))
    if not args.skip_no_labels:
        _, folder = kd(
            "compare",
            *data,
            "--teacher-model",
            str(teacher),
            "--split",
            "test",
            "--students",
            runs["c-cut"],
            "--output-dir",
            str(work / "comparisons"),
            work=work,
        )
        c_results = json.loads((Path(folder) / "comparison_results.json").read_text())
        acc["c-cut"] = c_results["models"][1]["accuracy"]
        kd(
            "eval-teacher",
            "--teacher-model",
            smol,
            *nolabels,
            "--split",
            "test",
            "--max-samples",
            "280",
            "--output",
            str(work / "smol_test.json"),
            work=work,
        )
        acc["smol"] = json.loads((work / "smol_test.json").read_text())["accuracy"]

    lines = [
        f"DBpedia sample: {rows.get('train', 0)} labelled train rows, "
        f"{rows.get('unlabeled', 0)} unlabelled, {rows.get('validation', 0)} validation, "
        f"{results['dataset']['rows']} test; accuracy on the test rows "
        f"(mixed precision {results['mixed_precision']}, {os.cpu_count()} CPUs)",
        "",
        f"teacher: MiniLM fine-tuned on the labelled rows, {100 * acc['teacher']:.1f}%",
    ]
    if "smol" in acc:
        lines.append(f"SmolLM2-135M zero-shot, calibrated (280 rows): {100 * acc['smol']:.1f}%")
    lines += [
        "",
        "| student | CE on the labelled rows | KD on labelled + unlabelled "
        "| gain [paired 95%] | optimizer steps CE / KD | rows seen CE / KD |",
        "|---|---|---|---|---|---|",
    ]
    labels = {"cut": "2 layers cut from MiniLM", "tiny": "bert-tiny shape, random init"}
    for student, label in labels.items():
        if student not in compared:
            continue
        a, b = (100 * acc[f"{v}-{student}"] for v in "ab")
        seen = "{} / {}".format(*(rows_seen(runs[f"{v}-{student}"]) for v in "ab"))
        lines.append(
            f"| {label} | {a:.1f}% | {b:.1f}% | {gain_text(compared[student])} "
            f"| {steps[f'a-{student}']} / {steps[f'b-{student}']} | {seen} |"
        )
    lines.append("")
    lines.append(
        f"CE: --alpha 0 for as many optimizer steps as KD took (KD: {KD_EPOCHS} epochs over the "
        "labelled and unlabelled rows; CE: its epochs rounded up over the labelled rows alone); "
        "best epoch on validation kept for each; same learning rate, batch size, schedule, seed"
    )
    if "c-cut" in acc:
        lines.append(f"(c) layer-cut student from SmolLM2, no labels: {100 * acc['c-cut']:.1f}%")
    else:
        lines.append("(c) the no-label SmolLM2 row was skipped (--skip-no-labels)")
    lines.append("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    text = "\n".join(lines)
    print("\n" + text)
    out = REPO / "bench" / "results" / "few_labels.txt"
    out.write_text(text + "\n")
    print(f"\nwritten to {out}")
    (work / "results.json").write_text(
        json.dumps(
            {"accuracy": acc, "times": times, "rows": rows, "runs": runs, "steps": steps},
            indent=2,
        )
    )


def distill_once(
    work: Path, key: str, data: list[str], teacher: Path, flags: list[str]
) -> tuple[float, str]:
    """One distill run into <work>/runs/<key>, or the completed run already there (a rerun
    after a change to compare or this script reuses the trained students)."""
    out = work / "runs" / key
    done = [d for d in out.glob("*") if (d / "history.json").is_file() and not is_partial(d)]
    done = [d for d in done if json.loads((d / "history.json").read_text()).get("completed")]
    if done:
        print(f"{key}: reusing {done[-1]}", flush=True)
        return 0.0, str(done[-1])
    print(f"{key}: distill {' '.join(flags)} ...", flush=True)
    return kd(
        "distill",
        *data,
        "--teacher-model",
        str(teacher),
        *flags,
        *COMMON,
        "--output-dir",
        str(out),
        work=work,
    )


def is_partial(run: Path) -> bool:
    return run.name.endswith(".partial")


def optimizer_steps(run: str) -> int:
    config = json.loads((Path(run) / "config.json").read_text())
    return config["resolved"]["total_optimizer_steps"]


def rows_seen(run: str) -> int:
    history = json.loads((Path(run) / "history.json").read_text())
    return sum(e["train_samples"] for e in history["epochs"])


def compare_pair(work: Path, data: list[str], teacher: Path, student: str, baseline: str) -> dict:
    """compare on the test split, `student` against its cross-entropy `baseline`."""
    _, folder = kd(
        "compare",
        *data,
        "--teacher-model",
        str(teacher),
        "--split",
        "test",
        "--students",
        student,
        "--baseline",
        baseline,
        "--output-dir",
        str(work / "comparisons"),
        work=work,
    )
    return json.loads((Path(folder) / "comparison_results.json").read_text())


def gain_text(results: dict) -> str:
    """'+3.1 [+1.9, +4.4]' from compare's gain, or why compare gave none."""
    gain = results["distillation_gain"]
    if gain and gain["students"]:
        g = gain["students"][0]
        low, high = g["accuracy_points_ci"]
        return f"{g['accuracy_points']:+.1f} [{low:+.1f}, {high:+.1f}]"
    reasons = "; ".join(n for x in (gain or {}).get("not_comparable", []) for n in x["differences"])
    return f"none: {reasons}"


if __name__ == "__main__":
    main()
