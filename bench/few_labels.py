#!/usr/bin/env python
"""Few labels, lots of text: what distilling on unlabelled text buys, on the DBpedia sample.

The sample is prepared once with a stratified 20% test split held out for evaluation, 5% of the
rest as a labelled validation split (model selection), and of the training rows a stratified 10%
keeps its labels while the other 90% become unlabelled text (`--labeled-fraction 0.1`). Every
step is the real `kdistill` command in its own process:

  teacher      the packaged all-MiniLM-L6-v2 fine-tuned on the labelled 10% only
  (a) CE       each student trained on the labelled 10% alone (--alpha 0)
  (b) KD       each student distilled on the labelled 10% plus the unlabelled 90%
               (labelled rows: alpha * T^2 * KL + (1 - alpha) * CE; unlabelled rows: T^2 * KL)
  (c) no labels  the SmolLM2-135M prompt teacher (zero-shot, calibrated) labels unlabelled text
               alone and a layer-cut student learns from it (--alpha 1; the data set prepared
               with --labeled-fraction 0, same splits)

Students: 2 layers (0 and 5) cut from MiniLM, and a random-init bert-tiny-shaped one. All are
scored on the same held-out test rows by `kdistill compare`. Targets: (b) beats (a) by at least
2 points for the layer-cut student and 10 points for the random-init one.

    python bench/few_labels.py                       # about 20 minutes on 2 CPU cores
    python bench/few_labels.py --smol-rows 300       # fewer rows for the slow LLM teacher
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teachers import BERT_TINY, minilm_path, prepare_data, smollm2_gguf  # noqa: E402
from teachers import kd_run as kd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMMON = ["--batch-size", "16", "--max-length", "128", "--temperature", "3.0"]


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
        "cut": [
            "--student-model",
            minilm_path(),
            "--student-layers",
            "0,5",
            "--learning-rate",
            "1e-4",
        ],
        "tiny": [
            "--student-model",
            str(BERT_TINY),
            "--student-tokenizer",
            minilm_path(),
            "--learning-rate",
            "1e-3",
        ],
    }
    runs: dict[str, str] = {}
    for student, flags in students.items():
        # (a) sees a tenth of the rows per epoch, so it gets more epochs; the best epoch on
        # validation is kept for both.
        for variant, extra in (
            ("a", ["--alpha", "0", "--epochs", "10"]),
            ("b", ["--alpha", "0.7", "--epochs", "3", "--unlabeled-data", unlabeled]),
        ):
            key = f"{variant}-{student}"
            print(f"({variant}) {student} ...", flush=True)
            out = str(work / "runs" / key)
            times[key], runs[key] = kd(
                "distill",
                *data,
                "--teacher-model",
                str(teacher),
                *flags,
                *COMMON,
                *extra,
                "--output-dir",
                out,
                work=work,
            )

    print("(c) SmolLM2, no labels -> cut ...", flush=True)
    smol = smollm2_gguf()
    times["c-cut"], runs["c-cut"] = kd(
        "distill",
        *nolabels,
        "--teacher-model",
        smol,
        *students["cut"],
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

    print("compare on the test split ...", flush=True)
    _, folder = kd(
        "compare",
        *data,
        "--teacher-model",
        str(teacher),
        "--split",
        "test",
        "--students",
        ",".join(runs.values()),
        "--output-dir",
        str(work / "comparisons"),
        work=work,
    )
    results = json.loads((Path(folder) / "comparison_results.json").read_text())
    by_run = {m["run_dir"]: m for m in results["models"] if m["run_dir"]}
    acc = {key: by_run[run]["accuracy"] for key, run in runs.items()}
    acc["teacher"] = results["models"][0]["accuracy"]
    _, smol_report = kd(
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

    n_test = results["dataset"]["rows"]
    print(
        f"\nDBpedia sample: {rows.get('train', 0)} labelled train rows, "
        f"{rows.get('unlabeled', 0)} unlabelled, {rows.get('validation', 0)} validation, "
        f"{n_test} test; accuracy on the test rows\n"
    )
    print(f"  teacher MiniLM fine-tuned on the labelled rows   {100 * acc['teacher']:6.2f}%")
    print(f"  SmolLM2-135M zero-shot, calibrated (280 rows)    {100 * acc['smol']:6.2f}%")
    print(f"\n  {'student':<34}{'(a) CE':>9}{'(b) KD':>9}{'gain':>8}{'target':>8}")
    targets = {"cut": 2.0, "tiny": 10.0}
    for student, label in (("cut", "2 layers cut from MiniLM"), ("tiny", "bert-tiny, random")):
        a, b = 100 * acc[f"a-{student}"], 100 * acc[f"b-{student}"]
        mark = "met" if b - a >= targets[student] else "MISSED"
        print(f"  {label:<34}{a:>8.2f}%{b:>8.2f}%{b - a:>+8.2f}{targets[student]:>6.0f} {mark}")
    print(f"\n  (c) layer-cut student from SmolLM2, no labels   {100 * acc['c-cut']:6.2f}%")
    print("\n  wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    (work / "results.json").write_text(
        json.dumps({"accuracy": acc, "times": times, "rows": rows, "runs": runs}, indent=2)
    )


if __name__ == "__main__":
    main()
