#!/usr/bin/env python
"""Little text: what made transfer text buys (distill --augment, --generate), on the DBpedia sample.

The sample is prepared once: a stratified 20% test split held out for scoring, 5% of the rest as
the labelled validation split (model selection). Every step is the real `kdistill` command in
its own process:

  (a), (b)  --max-train-samples 1,000 (a) or 360 (b) labelled rows and no other text; the
            teacher is the packaged all-MiniLM-L6-v2 fine-tuned on those rows alone. Per student:
              KD          distilled on the labelled rows alone
              KD+<method> the same, plus --augment N texts per row made by that method (no
                          label: the teacher's soft targets only)
              CE          --alpha 0 for at least as many optimizer steps as the longest KD run
                          (its epochs rounded up; best epoch on validation kept): step-matched,
                          so no gain is extra training
  (c)       no labelled training row and no text: SmolLM2-135M-Instruct (the packaged GGUF)
            writes --generate texts per class from the class names, the MiniLM embedding
            teacher (the no-labels issue's: Wikipedia template, balanced) labels them, and the
            layer-cut student learns from them (--alpha 1). The epoch is chosen on the labelled
            validation rows, the only labels this case reads before scoring.

Students: 2 layers (0 and 5) cut from MiniLM, and a random-init bert-tiny-shaped one. All are
scored on the same test rows by `kdistill compare`, each KD variant against its CE baseline
(--baseline): the gain with its paired 95% interval. mlm needs a masked LM (--augment-model); none
is packaged, so without it that method is left out. The table goes to
bench/results/transfer_text.txt; a rerun reuses the runs in --work.

    python bench/transfer_text.py                  # the full bench (hours on 2 CPU cores)
    python bench/transfer_text.py --quick          # a reduced version, meant for ~10 minutes
    python bench/transfer_text.py --rows 60 --epochs 1 --cases a --students tiny   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from few_labels import compare_pair, gain_text, optimizer_steps, rows_seen  # noqa: E402
from results_file import markdown_table, write_results  # noqa: E402
from teachers import BERT_TINY, minilm_path, prepare_data, smollm2_gguf  # noqa: E402
from teachers import kd_run as kd  # noqa: E402

WIKI_TEMPLATE = "A Wikipedia article about a {}."
GENERATE_PROMPT = "Write the first sentence of an encyclopedia article on one {label}."
BATCH_SIZE = 16
COMMON = ["--batch-size", str(BATCH_SIZE), "--max-length", "128", "--temperature", "3.0"]
STUDENTS = {  # bert-tiny's folder is a config alone: MiniLM's tokenizer, as in few_labels.py
    "tiny": [
        *("--student-model", str(BERT_TINY), "--student-tokenizer", minilm_path()),
        *("--learning-rate", "1e-3"),
    ],
    "cut": ["--student-model", minilm_path(), "--student-layers", "0,5", "--learning-rate", "1e-4"],
}
LABELS = {"cut": "2 layers cut from MiniLM", "tiny": "bert-tiny shape, random init"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--work", default=str(Path(__file__).resolve().parent / ".work" / "transfer_text"))
    add("--cases", default="a,b,c", help="Which cases to run: a, b, c.")
    add("--students", default="cut,tiny", help="Which students: cut, tiny.")
    add("--rows-a", type=int, default=1000, help="Labelled rows of case (a).")
    add("--rows-b", type=int, default=360, help="Labelled rows of case (b).")
    add("--rows", type=int, default=None, help="Labelled rows of (a) and (b) both (a slice).")
    add("--methods", default="mask,delete,swap", help="--augment methods, one KD run each.")
    add("--augment-model", default=None, help="A *ForMaskedLM folder: adds the mlm method.")
    add("--augment-n", type=int, default=4, help="--augment N: made texts per labelled row.")
    add("--epochs", type=int, default=3, help="Epochs of every KD run.")
    add("--generate-per-class", type=int, default=60, help="(c): --generate N per class.")
    add("--test-rows", type=int, default=None, help="Score on a stratified slice of the test.")
    add(
        "--quick",
        action="store_true",
        help="A reduced version (meant for about 10 minutes on 2 CPU cores; not timed yet): the "
        "bert-tiny student, (a) 240 and (b) 120 rows, 2 made texts per row, 2 epochs, (c) 6 "
        "texts per class, 300 test rows.",
    )
    args = parser.parse_args()
    if args.quick:
        args.students, args.rows_a, args.rows_b, args.augment_n = "tiny", 240, 120, 2
        args.epochs, args.generate_per_class, args.test_rows = 2, 6, args.test_rows or 300
    if args.rows:
        args.rows_a = args.rows_b = args.rows
    if args.augment_model:
        args.methods += ",mlm"
    return args


def main() -> None:
    args = parse_args()
    work = Path(args.work)
    data = prepare_data(work, "dbpedia", "--test-split", "0.2", "--validation-split", "0.05")
    nolabels = prepare_data(
        work,
        "nolabels",
        "--test-split",
        "0.2",
        "--validation-split",
        "0.05",
        "--labeled-fraction",
        "0",
    )
    test = ["--max-samples", str(args.test_rows)] if args.test_rows else []
    body, results = [], {}
    rows = {"a": args.rows_a, "b": args.rows_b}
    for case in (c for c in "ab" if c in args.cases.split(",")):
        results[case] = labelled_case(work, data, case, rows[case], test, args)
        body += case_table(case, rows[case], results[case], args)
    if "c" in args.cases.split(","):
        results["c"] = generate_case(work, data, nolabels, test, args)
        body += generate_table(results["c"], args)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    name = "transfer_text" if not (args.quick or args.rows) else "transfer_text_quick"
    write_results(body, name)


# --------------------------------------------------------------------------- (a), (b)


def labelled_case(
    work: Path, data: list[str], case: str, n_rows: int, test: list[str], args: argparse.Namespace
) -> dict:
    """The teacher on the case's rows, then per student the KD variants and the CE baseline,
    compared on the test rows."""
    sample = ["--max-train-samples", str(n_rows)]
    teacher, t_seconds = finetune(work, data, f"minilm-{case}{n_rows}", sample)
    out: dict = {"teacher_s": t_seconds, "students": {}}
    for student in args.students.split(","):
        flags = [*STUDENTS[student], *sample]
        runs, times = {}, {}
        variants = {"KD": []} | {
            f"KD+{m}": augment_flags(m, args) for m in args.methods.split(",") if m
        }
        for variant, extra in variants.items():
            key = f"{case}{n_rows}-{student}-{variant.replace('+', '-')}"
            kd_flags = [*flags, "--alpha", "0.7", "--epochs", str(args.epochs), *extra]
            times[variant], runs[variant] = distill_once(work, key, data, teacher, kd_flags)
        most = max(optimizer_steps(r) for r in runs.values())
        ce_epochs = math.ceil(most / math.ceil(n_rows / BATCH_SIZE))
        key = f"{case}{n_rows}-{student}-CE"
        ce_flags = [*flags, "--alpha", "0", "--epochs", str(ce_epochs)]
        times["CE"], runs["CE"] = distill_once(work, key, data, teacher, ce_flags)
        compared = compare_pair(work, [*data, *test], teacher, runs_list(runs), runs["CE"])
        out["students"][student] = summarise(runs, times, compared)
    return out


def augment_flags(method: str, args: argparse.Namespace) -> list[str]:
    flags = ["--augment", str(args.augment_n), "--augment-method", method]
    return flags + (["--augment-model", args.augment_model] if method == "mlm" else [])


def runs_list(runs: dict[str, str]) -> str:
    return ",".join(r for v, r in runs.items() if v != "CE")


def summarise(runs: dict[str, str], times: dict[str, float], compared: dict) -> dict:
    by_run = {m["run_dir"]: m for m in compared["models"] if m.get("run_dir")}
    gains = {
        g["student"]: gain_text({"distillation_gain": {"students": [g]}})
        for g in compared["distillation_gain"]["students"]
    }
    out = {"teacher_accuracy": compared["models"][0]["accuracy"], "variants": {}}
    for variant, run in runs.items():
        m = by_run[run]
        made = Path(run) / "transfer_text.json"
        out["variants"][variant] = {
            "accuracy": m["accuracy"],
            "gain": gains.get(m["name"], "-") if variant != "CE" else "baseline",
            "steps": optimizer_steps(run),
            "rows_seen": rows_seen(run),
            "made": json.loads(made.read_text()) if made.is_file() else None,
            "wall_s": times[variant],
            "run": run,
        }
    return out


def case_table(case: str, n_rows: int, result: dict, args: argparse.Namespace) -> list[str]:
    lines = [
        "",
        f"## ({case}) {n_rows} labelled rows, no other text; --augment {args.augment_n} "
        f"per row, {args.epochs} KD epochs",
        "",
    ]
    rows = []
    for student, r in result["students"].items():
        for variant, v in r["variants"].items():
            made = v["made"]["augment"]["count"] if v["made"] else 0
            rows.append(
                [
                    LABELS[student],
                    variant,
                    f"{100 * v['accuracy']:.1f}%",
                    v["gain"],
                    str(made),
                    str(v["steps"]),
                    str(v["rows_seen"]),
                    f"{v['wall_s']:.0f}",
                ]
            )
        rows.append([LABELS[student], "teacher", f"{100 * r['teacher_accuracy']:.1f}%"] + [""] * 5)
    columns = ["student", "run", "test accuracy", "gain over CE [paired 95%]", "made texts"]
    lines += markdown_table([*columns, "optimizer steps", "rows seen", "wall s"], rows)
    lines.append(
        f"teacher: MiniLM fine-tuned on the {n_rows} rows ({result['teacher_s']:.0f} s); CE "
        "trains at least as many steps as the longest KD run; wall s 0 = a reused run"
    )
    return lines


# --------------------------------------------------------------------------- (c)


def generate_case(
    work: Path, data: list[str], nolabels: list[str], test: list[str], args: argparse.Namespace
) -> dict:
    """(c): the LLM writes, the embedding teacher labels, the cut student learns."""
    teacher = ["--teacher-model", minilm_path(), "--prompt-template", WIKI_TEMPLATE]
    flags = [
        *teacher,
        *STUDENTS["cut"],
        "--alpha",
        "1",
        "--epochs",
        str(args.epochs),
        "--generate",
        str(args.generate_per_class),
        "--generator-model",
        smollm2_gguf(),
        "--generate-prompt",
        GENERATE_PROMPT,
    ]
    start = time.perf_counter()
    seconds, run = distill_once(work, f"c-generate{args.generate_per_class}", nolabels, None, flags)
    wall = time.perf_counter() - start
    _, folder = kd(
        "compare",
        *nolabels,
        *test,
        "--split",
        "test",
        *teacher,
        "--students",
        run,
        "--output-dir",
        str(work / "comparisons"),
        work=work,
    )
    compared = json.loads((Path(folder) / "comparison_results.json").read_text())
    by_run = {m["run_dir"]: m for m in compared["models"] if m.get("run_dir")}
    made = json.loads((Path(run) / "transfer_text.json").read_text())["generate"]
    return {
        "accuracy": by_run[run]["accuracy"],
        "teacher_accuracy": compared["models"][0]["accuracy"],
        "made": made,
        "wall_s": seconds or wall,
        "run": run,
    }


def generate_table(r: dict, args: argparse.Namespace) -> list[str]:
    made = r["made"]
    lines = [
        "",
        f"## (c) no labelled row, no text: --generate {args.generate_per_class} per class "
        "(SmolLM2-135M-Instruct), MiniLM embedding teacher, layer-cut student",
        "",
    ]
    lines += markdown_table(
        [
            "made texts",
            "teacher agrees with the class written for",
            "student test",
            "teacher test",
            "wall s",
        ],
        [
            [
                str(made["count"]),
                f"{100 * made.get('agreement', 0):.1f}%",
                f"{100 * r['accuracy']:.1f}%",
                f"{100 * r['teacher_accuracy']:.1f}%",
                f"{r['wall_s']:.0f}",
            ]
        ],
    )
    lines.append("sample: " + " | ".join(s["text"][:80] for s in made["sample"][:3]))
    return lines


def finetune(work: Path, data: list[str], name: str, sample: list[str]) -> tuple[Path, float]:
    """MiniLM fine-tuned on the case's labelled rows, once."""
    teacher = work / "models" / name
    if (teacher / "config.json").is_file():
        return teacher, 0.0
    print(f"teacher {name} ...", flush=True)
    seconds, _ = kd(
        "finetune-teacher",
        "--model",
        minilm_path(),
        *data,
        *sample,
        "--output-dir",
        str(work / "models"),
        "--name",
        name,
        "--epochs",
        "5",
        "--batch-size",
        "16",
        "--learning-rate",
        "1e-4",
        work=work,
    )
    return teacher, seconds


def distill_once(
    work: Path, key: str, data: list[str], teacher: Path | None, flags: list[str]
) -> tuple[float, str]:
    """One distill run into <work>/runs/<key>, or the completed run already there."""
    out = work / "runs" / key
    for d in sorted(out.glob("*")):
        history = d / "history.json"
        if history.is_file() and json.loads(history.read_text()).get("completed"):
            print(f"{key}: reusing {d}", flush=True)
            return 0.0, str(d)
    print(f"{key}: distill {' '.join(flags)} ...", flush=True)
    teacher_flags = ["--teacher-model", str(teacher)] if teacher else []
    return kd(
        "distill", *data, *teacher_flags, *flags, *COMMON, "--output-dir", str(out), work=work
    )


if __name__ == "__main__":
    main()
