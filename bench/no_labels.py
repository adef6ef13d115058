#!/usr/bin/env python
"""No labels: an LLM prompt teacher labels raw text, and a small student learns from it alone.

The DBpedia sample is prepared once with a stratified 20% test split (1,000 rows, held out), 5%
of the rest as a labelled validation split (200 rows, model selection) and every other row
(3,800) with its label removed: the transfer set. Every step is the real `kdistill` command in
its own process. Teachers, all SmolLM2-135M-Instruct (the packaged GGUF):

  (a) zero-shot    calibrated, the default prompt
  (b) ensemble     a prompt ensemble: the default prompt and a second template, combined as a
                   weighted geometric mean (its first member is (a): its logits are reused)
  (c) 1-shot       one labelled example per class (14 rows) as few-shot examples in the prompt;
                   those 14 rows also train the student (prepare-data --labeled-fraction)

Student: 2 layers (0 and 5) cut from MiniLM, distilled with the no-label defaults (distill
picks them when there are no labelled rows; (c) passes the same values). `(a) old recipe` is
the same teacher and transfer set with the recipe that reached 45% of its teacher before
(T=3, 3 epochs, linear decay), from the same cached teacher logits.

For each: the teacher's and the student's accuracy on the same held-out test rows, student /
teacher, the teacher's seconds per row with the prefix cache (the full transfer pass) and
without it (`--prefix-cache off` on a subsample of the transfer set, `--off-rows`), and the
row's wall time. Teacher logits are cached on disk (per member for the ensemble), so a rerun
skips every teacher pass already made.

    python bench/no_labels.py                                   # the full sizes: hours on 2 cores
    python bench/no_labels.py --transfer-rows 400 --test-rows 200 --only a,c,b

Issue 30's rows (bench/no_label_rows.py has what each does) use no labelled row anywhere, not
even for validation; each runs alone, at the full sizes by default (3,800 transfer texts,
1,000 test rows, 10 epochs), and writes bench/results/no_labels_zero.txt:

    python bench/no_labels.py --only embedding
    python bench/no_labels.py --only smol --smol-students calibrated,balanced
    python bench/no_labels.py --only ensemble --ensemble-weights agreement --ensemble-prompts 2
    python bench/no_labels.py --only rounds --round-targets filtered
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from no_label_rows import ROWS, SMOL_VARIANTS, run_rows  # noqa: E402
from results_file import write_results  # noqa: E402
from teachers import kd_run as kd  # noqa: E402
from teachers import minilm_path, prepare_data, smollm2_gguf  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# kdistill's default prompt, spelt out as the ensemble's first member: the same settings, so
# the same cache key as (a) (a changed default only costs a teacher pass, never a wrong reuse).
DEFAULT_TEMPLATE = (
    "Classify the text into one of these categories: {labels}\n\nText: {text}\nCategory:"
)
SECOND_TEMPLATE = (
    "Choose the category of the text from: {labels}.\n\nText: {text}\nThe category is:"
)
# The recipe of bench/few_labels.py (c), which reached 45% of its teacher.
OLD_RECIPE = ["--no-label-recipe", "off", "--alpha", "1", "--temperature", "3", "--epochs", "3"]
# distill's no-label recipe (config.NO_LABEL_RECIPE), spelt out for (c): with 14 labelled rows
# distill does not apply it by itself.
NO_LABEL_FLAGS = ["--temperature", "1", "--epochs", "10", "--lr-scheduler", "constant"]


def prepare(work: Path) -> dict[str, list[str]]:
    """Two preparations of the same splits: no labelled rows, and one labelled row per class."""
    splits = ["--test-split", "0.2", "--validation-split", "0.05"]
    # 14 of the 3,800 training rows, stratified: one per class.
    return {
        name: prepare_data(work, name, *splits, "--labeled-fraction", fraction)
        for name, fraction in (("nolabels", "0"), ("oneshot", str(14 / 3800)))
    }


def eval_teacher(work: Path, data: list[str], out: Path, *flags: str) -> tuple[dict, float]:
    seconds, _ = kd("eval-teacher", *data, *flags, "--output", str(out), work=work)
    return json.loads(out.read_text()), seconds


def teacher_row(
    work: Path, key: str, data: list[str], teacher: list[str], student: list[str], args
) -> dict:
    """Distil, then score teacher and student on the same test rows; time the teacher pass
    with and without the prefix cache."""
    start = time.perf_counter()
    out = work / "runs" / key
    test = ["--split", "test", "--max-samples", str(args.test_rows)]
    # The student first: its run caches the transfer set's teacher logits, timed in history.
    kd(
        "distill",
        *data,
        *teacher,
        "--student-model",
        minilm_path(),
        "--student-layers",
        "0,5",
        "--learning-rate",
        "1e-4",
        "--batch-size",
        "16",
        "--max-length",
        "128",
        "--unlabeled-data",
        str(work / "data" / data[1] / "unlabeled.parquet"),
        "--max-unlabeled-samples",
        str(args.transfer_rows),
        "--teacher-cache",
        "disk",
        *student,
        "--output-dir",
        str(out),
        work=work,
    )
    run = sorted(out.iterdir(), key=lambda p: p.stat().st_mtime)[-1]
    history = json.loads((run / "history.json").read_text())
    config = json.loads((run / "config.json").read_text())
    t_report, _ = eval_teacher(
        work, data, work / f"{key}-teacher.json", *teacher, *test, "--teacher-cache", "disk"
    )
    s_report, _ = eval_teacher(
        work,
        data,
        work / f"{key}-student.json",
        "--teacher-model",
        str(run / "best_model"),
        *test,
        "--teacher-cache",
        "off",
    )
    row = {
        "teacher_test": t_report["accuracy"],
        "student_test": s_report["accuracy"],
        "teacher_val": history["teacher"]["val_accuracy"],
        "members": t_report.get("members"),
        "test_rows": t_report["rows"],
        "transfer_rows": config["data"]["unlabeled_rows"],
        "labelled_rows": config["data"]["train_rows"],
        "temperature": config["temperature"],
        "epochs": config["epochs"],
        "cache": history["teacher_cache"],
        "run": str(run),
    }
    cache = history["teacher_cache"]
    if not cache.get("hit"):  # the transfer pass ran here: its time per row, prefix cache on
        row["s_per_row_on"] = cache["time_s"] / row["transfer_rows"]
    if args.off_rows and not args.skip_off:
        # The same teacher with and without the prefix cache, on the same transfer rows.
        sample = ["--split", "unlabeled", "--max-samples", str(args.off_rows)]
        for mode in ("auto", "off"):
            rep, _ = eval_teacher(
                work,
                data,
                work / f"{key}-prefix-{mode}.json",
                *teacher,
                *sample,
                "--teacher-cache",
                "off",
                "--prefix-cache",
                mode,
            )
            row[f"sample_s_per_row_{mode}"] = rep["time_s"] / rep["rows"]
        row["off_rows"] = args.off_rows
    row["wall_s"] = time.perf_counter() - start
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(REPO / "bench" / ".work" / "no_labels"))
    parser.add_argument("--transfer-rows", type=int, default=3800, help="Unlabelled rows used.")
    parser.add_argument("--test-rows", type=int, default=1000, help="Held-out rows scored.")
    parser.add_argument(
        "--off-rows",
        type=int,
        default=32,
        help="Transfer rows timed with and without the prefix cache (0: skip).",
    )
    parser.add_argument("--skip-off", action="store_true", help="Skip the prefix-cache timing.")
    parser.add_argument("--only", default="a,a-old,c,b", help="Rows to run, in this order.")
    parser.add_argument(
        "--table-only", action="store_true", help="Print the table of the rows already run."
    )
    zero_label_options(parser)
    args = parser.parse_args()
    work = Path(args.work)
    data = prepare(work)
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    if set(only) & set(ROWS):  # issue 30's rows: no labelled row anywhere
        args.data = data["nolabels"]
        lines = run_rows(work, [k for k in only if k in ROWS], args)
        write_results(
            [
                "# DBpedia sample, no labelled row anywhere (the one command: texts + class "
                "names); student = MiniLM layers 0,5; teachers balanced on the test rows "
                "themselves where the row says so; 95% Wilson intervals",
                "",
                *lines,
            ],
            name=args.results_name,
        )
        return
    smol = ["--teacher-model", smollm2_gguf()]
    rows = {
        "a": ("nolabels", smol, []),
        "a-old": ("nolabels", smol, OLD_RECIPE),
        "b": (
            "nolabels",
            [*smol, "--prompt-template", DEFAULT_TEMPLATE, "--prompt-template", SECOND_TEMPLATE],
            [],
        ),
        # The 14 labelled rows get the labels' cross-entropy as well (alpha 0.5 on them);
        # temperature and epochs as the no-label defaults.
        "c": ("oneshot", [*smol, "--few-shot", "14"], ["--alpha", "0.5", *NO_LABEL_FLAGS]),
    }
    # One file per row, so rows can run in separate processes (`--only a` and `--only c`).
    for key in [] if args.table_only else only:
        name, teacher, student = rows[key]
        print(f"({key}) ...", flush=True)
        # a-old reuses (a)'s cached teacher logits: nothing of the teacher to time again.
        ns = argparse.Namespace(**{**vars(args), "skip_off": args.skip_off or key == "a-old"})
        row = teacher_row(work, key, data[name], teacher, student, ns)
        (work / f"result-{key}.json").write_text(json.dumps(row, indent=2))
    results = {
        key: json.loads((work / f"result-{key}.json").read_text())
        for key in rows
        if (work / f"result-{key}.json").is_file()
    }
    print_table(results, args)


def print_table(results: dict, args: argparse.Namespace) -> None:
    labels = {
        "a": "(a) zero-shot calibrated",
        "a-old": "(a) old recipe T=3, 3 ep",
        "b": "(b) prompt ensemble (2)",
        "c": "(c) 1 shot per class (14)",
    }
    print(
        f"\nDBpedia sample, SmolLM2-135M teachers, student = MiniLM layers 0,5; "
        f"test accuracy on the same {args.test_rows} held-out rows\n"
    )
    head = (
        f"{'teacher':<28}{'rows':>6}{'T':>5}{'ep':>4}{'teacher':>9}{'student':>9}{'s/t':>7}"
        f"{'s/row on':>10}{'s/row off':>11}{'speed-up':>10}{'wall s':>8}"
    )
    print(head)
    for key, label in labels.items():
        r = results.get(key)
        if r is None:
            continue
        on, off = r.get("sample_s_per_row_auto"), r.get("sample_s_per_row_off")
        timing = (
            f"{on:>10.2f}{off:>11.2f}{off / on:>9.2f}x"
            if on and off
            else f"{'-':>10}{'-':>11}{'-':>10}"  # not timed in this run (--off-rows 0)
        )
        print(
            f"{label:<28}{r['transfer_rows']:>6}{r['temperature']:>5g}{r['epochs']:>4}"
            f"{100 * r['teacher_test']:>8.1f}%{100 * r['student_test']:>8.1f}%"
            f"{100 * r['student_test'] / r['teacher_test']:>6.0f}%{timing}{r['wall_s']:>8.0f}"
        )
        for m in r.get("members") or []:
            print(f"    member {m['member'][:50]:<50} test {100 * m['accuracy']:5.1f}%")
    print(
        "\n  rows: transfer rows (unlabelled) the student learnt from; s/row on/off: teacher "
        f"seconds per row with and without the prefix cache, on {args.off_rows} transfer rows"
    )


def zero_label_options(parser: argparse.ArgumentParser) -> None:
    """Options of issue 30's rows (bench/no_label_rows.py)."""
    parser.add_argument("--epochs", type=int, default=10, help="Student epochs (each round).")
    parser.add_argument(
        "--smol-students",
        default="calibrated",
        help="smol: the SmolLM2 variants to distil from, comma-separated: "
        + ", ".join(SMOL_VARIANTS),
    )
    parser.add_argument("--ensemble-weights", choices=["equal", "agreement"], default="equal")
    parser.add_argument(
        "--ensemble-prompts",
        type=int,
        choices=[1, 2],
        default=1,
        help="SmolLM2 prompts in the ensemble (2: three members, so agreement can differ).",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds: --rounds.")
    parser.add_argument("--rounds-teacher", choices=["embedding", "ensemble"], default="embedding")
    parser.add_argument("--round-targets", choices=["soft", "weighted", "filtered"], default="soft")
    parser.add_argument("--round-min-confidence", type=float, default=0.5)
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="Score the latest run (or rounds) folder of a row without distilling again.",
    )
    parser.add_argument(
        "--results-name",
        default="no_labels_zero",
        help="bench/results/<name>.txt for issue 30's table.",
    )


if __name__ == "__main__":
    main()
