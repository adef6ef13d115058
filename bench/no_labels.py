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
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
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


# ---- issue 30: no labelled row anywhere, an embedding teacher, self-training rounds

WIKI_TEMPLATE = "A Wikipedia article about a {}."


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
    texts = pd.read_parquet(folder / "unlabeled.parquet")[["text"]].head(rows)
    csv, names = work / f"texts_{rows}.csv", work / "label_names.json"
    texts.to_csv(csv, index=False)
    info = json.loads((folder / "dataset_info.json").read_text())
    names.write_text(json.dumps(info["label_names"]))
    return csv, names


def embedding_rows(work: Path, data: list[str], args: argparse.Namespace) -> dict:
    """Teacher variants on the test rows (no labels read but for scoring), then the one
    command with --rounds; each round's student scored on the same test rows."""
    minilm = ["--teacher-model", minilm_path()]
    test = ["--split", "test", "--max-samples", str(args.test_rows), "--teacher-cache", "disk"]
    variants = {
        "class names": ["--class-balance", "off"],
        "class names, balanced": [],
        "template": ["--prompt-template", WIKI_TEMPLATE, "--class-balance", "off"],
        "template, balanced": ["--prompt-template", WIKI_TEMPLATE],
    }
    result: dict = {"teachers": {}, "rounds": []}
    for label, flags in variants.items():
        out = work / f"emb-{label.replace(' ', '').replace(',', '-')}.json"
        if args.score_only and out.is_file():  # measured by the interrupted run
            rep = json.loads(out.read_text())
            seconds = rep["time_s"]
        else:
            rep, seconds = eval_teacher(work, data, out, *minilm, *flags, *test)
        result["teachers"][label] = {
            "accuracy": rep["accuracy"],
            "predicted": rep["predicted"],
            "wall_s": seconds,
        }
        print(f"  teacher {label}: {100 * rep['accuracy']:.1f}%", flush=True)
    csv, names = texts_only(work, data, args.transfer_rows)
    start = time.perf_counter()
    out = work / "runs" / "embedding"
    if not args.score_only:
        distill_rounds(work, out, csv, names, minilm, args)
    result["wall_s"] = time.perf_counter() - start
    parent = sorted(out.glob("rounds_*"), key=lambda p: p.stat().st_mtime)[-1]
    return score_rounds(work, data, parent, test, result)


def distill_rounds(
    work: Path, out: Path, csv: Path, names: Path, minilm: list[str], args: argparse.Namespace
) -> None:
    """The one command: texts and class names, --rounds self-training."""
    kd(
        "distill",
        "--dataset",
        str(csv),
        "--label-names",
        str(names),
        *minilm,
        "--prompt-template",
        WIKI_TEMPLATE,
        "--student-model",
        minilm_path(),
        "--student-layers",
        "0,5",
        "--epochs",
        str(args.epochs),
        "--rounds",
        str(args.rounds),
        "--teacher-cache",
        "disk",
        "--output-dir",
        str(out),
        work=work,
    )


def score_rounds(work: Path, data: list[str], parent: Path, test: list[str], result: dict) -> dict:
    """Each finished round's student (and, after round 1, its teacher) on the test rows."""
    rounds = json.loads((parent / "rounds.json").read_text())
    for r in rounds["rounds"]:
        run = Path(r["run"])
        rep, _ = eval_teacher(
            work,
            data,
            work / f"emb-round{r['round']}-student.json",
            "--teacher-model",
            str(run / "best_model"),
            *test[:4],
            "--teacher-cache",
            "off",
        )
        config = json.loads((run / "config.json").read_text())
        teacher_test = result["teachers"]["template, balanced"]["accuracy"]
        if r["round"] > 1:  # the round's own teacher: MiniLM with the previous student
            t_rep, _ = eval_teacher(
                work,
                data,
                work / f"emb-round{r['round']}-teacher.json",
                "--teacher-model",
                r["teacher"],
                "--prompt-template",
                WIKI_TEMPLATE,
                *test,
            )
            teacher_test = t_rep["accuracy"]
        result["rounds"].append(
            {
                **r,
                "student_test": rep["accuracy"],
                "teacher_test": teacher_test,
                "test_rows": rep["rows"],
                "transfer_rows": config["data"]["unlabeled_rows"],
                "validation_rows": config["data"]["validation_rows"],
                "labelled_rows": config["data"]["train_rows"],
                "epochs": config["epochs"],
            }
        )
    result["stopped"] = rounds.get("stopped")
    return result


def embedding_table(r: dict, args: argparse.Namespace) -> str:
    """The markdown table the docs copy verbatim."""
    lines = [
        "| teacher (all-MiniLM-L6-v2, no labels) | teacher test | student test (95% CI) "
        "| round | transfer rows | epochs | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, v in r["teachers"].items():
        acc, wall = 100 * v["accuracy"], v["wall_s"]
        lines.append(f"| {label} | {acc:.1f}% | - | - | - | - | {wall:.0f} |")
    for x in r["rounds"]:
        lo, hi = wilson(x["student_test"], x["test_rows"])
        teacher = "template, balanced" if x["round"] == 1 else f"+ round-{x['round'] - 1} student"
        lines.append(
            f"| {teacher} | {100 * x['teacher_test']:.1f}% | {100 * x['student_test']:.1f}% "
            f"({100 * lo:.1f}-{100 * hi:.1f}) | {x['round']} | {x['transfer_rows']} "
            f"| {x['epochs']} | {x['total_time_s']:.0f} |"
        )
    return "\n".join(lines)


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
    parser.add_argument("--epochs", type=int, default=10, help="Embedding rows: epochs a round.")
    parser.add_argument("--rounds", type=int, default=2, help="Embedding rows: --rounds.")
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="Embedding rows: score the rounds an interrupted run finished (rounds.json).",
    )
    args = parser.parse_args()
    work = Path(args.work)
    data = prepare(work)
    if args.only == "embedding":  # issue 30's rows: no labelled row anywhere
        if not args.table_only:
            result = embedding_rows(work, data["nolabels"], args)
            (work / "result-embedding.json").write_text(json.dumps(result, indent=2))
        result = json.loads((work / "result-embedding.json").read_text())
        table = embedding_table(result, args)
        print(table)
        (REPO / "bench" / "results" / "no_labels_embedding.txt").write_text(
            f"# python bench/no_labels.py --only embedding --transfer-rows {args.transfer_rows} "
            f"--test-rows {args.test_rows} --epochs {args.epochs} --rounds {args.rounds}"
            f"{' --score-only' if args.score_only else ''}\n"
            "# DBpedia sample: no labelled row anywhere (the one command: texts + class names); "
            "student = MiniLM layers 0,5; teacher accuracy balanced on the test rows themselves; "
            f"distill time over the rounds {sum(x['total_time_s'] for x in result['rounds']):.0f} s"
            f"\n\n{table}\n"
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
    for key in [k.strip() for k in args.only.split(",") if k.strip() and not args.table_only]:
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


if __name__ == "__main__":
    main()
