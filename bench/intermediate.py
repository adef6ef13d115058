#!/usr/bin/env python
"""Defaults and intermediate-layer losses: held-out test accuracy against CE-only, and wall time.

The DBpedia sample is prepared once with a stratified 20% test split (1,000 rows, never trained
or selected on) and 10% of the rest as validation (400 rows, best-epoch selection), leaving
3,600 training rows; "few" is the same split with a stratified 10% of the training rows
labelled and the other 90% kept as unlabelled text (`prepare-data --labeled-fraction 0.1`).
Every step is the real `kdistill` command in its own process.

  job   issue 20's point-1 job: 1,000 training rows, 3 epochs, batch 32, lr 1e-4, T=3,
        alpha 0.7, a 2-layer student cut from MiniLM (layers 0 and 5), the MiniLM teacher
        fine-tuned on the training rows. CE-only, kdistill's defaults, and TextBrewer's
        BasicDistiller (`../shared/tools/peer-textbrewer`) on the same rows.
  all   all training rows labelled;
  few   10% labelled + 90% unlabelled text (the teacher fine-tuned on the labelled 10%);
        each for a random-init bert-tiny-shaped student (lr 1e-3) and the cut student
        (lr 1e-4), four runs each: CE only (--alpha 0), logit KD, + hidden-state MSE
        (--hidden-loss mse), + hidden + MiniLMv2 attention relations (--attention-loss relation).
        In "few" the CE-only run gets 10x the epochs: the same optimizer steps on the labelled
        tenth as the others take over all the text (compare accepts a longer baseline).

Each accuracy has a 95% bootstrap interval over the test rows, and each gain over CE-only a
paired one (`kdistill compare --baseline`: both scored on the same resampled rows). The peer
prints accuracy only, so its interval is the binomial one and its gap to kdistill is unpaired.

    python bench/intermediate.py                          # everything (about 2 hours here)
    python bench/intermediate.py --sections job           # the point-1 job only
    python bench/intermediate.py --sections all,few --students cut --train-rows 2000

Finished runs under --work are reused (delete the folder to rerun), so a stopped bench resumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teachers import BERT_TINY, minilm_path, prepare_data  # noqa: E402
from teachers import kd_run as kd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PEER = REPO.parent / "shared" / "tools" / "peer-textbrewer"
SPLITS = ["--test-split", "0.2", "--validation-split", "0.1"]
JOB = ["--epochs", "3", "--batch-size", "32", "--temperature", "3.0"]
RUNS = {
    "ce": ["--alpha", "0"],
    "kd": ["--alpha", "0.7"],
    "hidden": ["--alpha", "0.7", "--hidden-loss", "mse"],
    "relation": ["--alpha", "0.7", "--hidden-loss", "mse", "--attention-loss", "relation"],
}
RUN_NAMES = {"ce": "CE only", "kd": "logit KD", "hidden": "+ hidden", "relation": "+ hid + rel"}


def student_flags(student: str) -> list[str]:
    if student == "cut":
        return [
            "--student-model",
            minilm_path(),
            "--student-layers",
            "0,5",
            "--learning-rate",
            "1e-4",
        ]
    return [
        "--student-model",
        str(BERT_TINY),
        "--student-tokenizer",
        minilm_path(),
        "--learning-rate",
        "1e-3",
    ]


def distill_flags() -> str:
    """distill's --help: which of the optional flags this checkout has."""
    proc = subprocess.run(
        [sys.executable, "-m", "kdistill", "distill", "--help"], capture_output=True, text=True
    )
    return proc.stdout


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work)
        self.walls_file = self.work / "walls.json"
        self.walls = json.loads(self.walls_file.read_text()) if self.walls_file.is_file() else {}

    def data(self, name: str) -> list[str]:
        return ["--dataset", name, "--data-dir", str(self.work / "data")]

    def prepare(self) -> None:
        for name, fraction in (("all", "1"), ("few", "0.1")):
            prepare_data(self.work, name, *SPLITS, "--labeled-fraction", fraction)

    def teacher(self, name: str) -> str:
        """MiniLM fine-tuned on the training rows of `name` (all: 1 epoch as bench/teachers.py;
        few: the 360 labelled rows, 5 epochs as bench/few_labels.py)."""
        out = self.work / "models" / f"minilm-{name}"
        if not (out / "config.json").is_file():
            epochs, batch = ("1", "32") if name == "all" else ("5", "16")
            rows = (
                ["--max-train-samples", str(self.args.teacher_rows)]
                if name == "all" and self.args.teacher_rows
                else []
            )
            rows += ["--max-length", str(self.args.teacher_max_length)]
            print(f"teacher: MiniLM fine-tuned on {name} ...", flush=True)
            self.walls[f"teacher-{name}"], _ = kd(
                "finetune-teacher",
                "--model",
                minilm_path(),
                *self.data(name),
                *rows,
                "--output-dir",
                str(self.work / "models"),
                "--name",
                f"minilm-{name}",
                "--epochs",
                epochs,
                "--batch-size",
                batch,
                "--learning-rate",
                "1e-4",
                work=self.work,
            )
            self.save_walls()
        return str(out)

    def save_walls(self) -> None:
        self.walls_file.write_text(json.dumps(self.walls, indent=2))

    def distill(self, key: str, *argv: str) -> str:
        """One distill run under runs/<key>/, reused when it finished before; its run folder."""
        parent = self.work / "runs" / key
        done = sorted(p for p in parent.glob("*") if (p / "final_model").is_dir())
        if done and key in self.walls:
            return str(done[-1])
        print(f"  {key} ...", flush=True)
        self.walls[key], run = kd("distill", *argv, "--output-dir", str(parent), work=self.work)
        self.save_walls()
        return run

    def compare(self, data: str, teacher: str, runs: dict[str, str], baseline: str) -> dict:
        rows = ["--max-samples", str(self.args.test_rows)] if self.args.test_rows else []
        _, folder = kd(
            "compare",
            *self.data(data),
            "--teacher-model",
            teacher,
            "--students",
            ",".join(runs.values()),
            "--baseline",
            baseline,
            "--split",
            "test",
            *rows,
            "--repeats",
            "1",
            "--latency-rows",
            "8",
            "--output-dir",
            str(self.work / "comparisons"),
            work=self.work,
        )
        return json.loads((Path(folder) / "comparison_results.json").read_text())

    def peer(self, teacher: str) -> dict:
        """TextBrewer's BasicDistiller on the job's rows: the same stratified training rows
        distill picks, the same test rows compare scores."""
        from kdistill.data.prepare import load_prepared
        from kdistill.data.sampling import subsample

        data = load_prepared(self.work / "data" / "all")
        names = data.label_names
        train = subsample(data.splits["train"], self.args.job_rows, 42, "--max-train-samples")
        test = subsample(data.splits["test"], self.args.test_rows, 42, "--max-samples")
        files = {}
        for split, ds in (("train", train), ("test", test)):
            files[split] = self.work / f"peer_{split}.csv"
            with files[split].open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["text", "label"])
                writer.writerows(
                    [t, names[y]] for t, y in zip(ds["text"], ds["label"], strict=True)
                )
        start = time.perf_counter()
        proc = subprocess.run(
            [
                str(PEER),
                str(files["train"]),
                str(files["test"]),
                teacher,
                minilm_path(),
                "3",
                str(len(train)),
                "32",
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"peer-textbrewer failed:\n{proc.stderr[-3000:]}")
        _, _, accuracy = proc.stdout.split()[-3:]
        acc, n = float(accuracy), len(test)
        half = 1.96 * math.sqrt(acc * (1 - acc) / n)
        return {
            "accuracy": acc,
            "ci": [acc - half, acc + half],
            "wall": time.perf_counter() - start,
        }


def rows_of(results: dict, runs: dict[str, str], walls: dict[str, float], prefix: str) -> list:
    """(label, accuracy, ci, gain, gain ci, wall) per run, from a comparison."""
    by_run = {m["run_dir"]: m for m in results["models"] if m.get("run_dir")}
    gains = {g["student"]: g for g in (results.get("distillation_gain") or {}).get("students", [])}
    out = []
    for key, run in runs.items():
        m = by_run[run]
        g = gains.get(m["name"])
        out.append(
            (
                RUN_NAMES.get(key, key),
                m["accuracy"],
                m.get("accuracy_ci"),
                g["accuracy_points"] if g else None,
                g["accuracy_points_ci"] if g else None,
                walls.get(f"{prefix}{key}"),
            )
        )
    return out


def fmt(label: str, acc: float, ci, gain, gain_ci, wall) -> str:
    ci_s = f"[{100 * ci[0]:5.1f}, {100 * ci[1]:5.1f}]" if ci else " " * 14
    if gain is None:
        gain_s = f"{'':>24}"
    else:
        gain_s = f"{gain:+6.2f} [{gain_ci[0]:+6.2f}, {gain_ci[1]:+6.2f}]"
    wall_s = f"{wall:7.0f}" if wall is not None else f"{'':>7}"
    return f"  {label:<26}{100 * acc:7.2f}% {ci_s}  {gain_s}  {wall_s}"


HEADER = "  " + "  ".join(
    [f"{'run':<24}", "test acc   95% interval", "vs CE, points [paired 95%]", " wall s"]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(REPO / "bench" / ".work" / "intermediate"))
    parser.add_argument("--sections", default="job,all,few", help="job, all, few: in this order.")
    parser.add_argument("--students", default="tiny,cut", help="For all and few: tiny, cut.")
    parser.add_argument("--runs", default="ce,kd,hidden,relation", help="For all and few.")
    parser.add_argument("--job-rows", type=int, default=1000, help="Training rows of the job.")
    parser.add_argument("--train-rows", type=int, default=None, help="all/few: training rows.")
    parser.add_argument(
        "--teacher-rows", type=int, default=None, help="Training rows of the all-labels teacher."
    )
    parser.add_argument(
        "--teacher-max-length", type=int, default=128, help="Tokens per text in its fine-tuning."
    )
    parser.add_argument("--test-rows", type=int, default=None, help="Stratified test subsample.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="Skip TextBrewer in the job.")
    args = parser.parse_args()
    bench = Bench(args)
    bench.prepare()
    have = distill_flags()
    sections = [s for s in args.sections.split(",") if s]
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    job = [*JOB[:1], str(args.epochs), *JOB[2:]]
    if "job" in sections:
        teacher = bench.teacher("all")
        rows = ["--max-train-samples", str(args.job_rows)]
        runs = {
            key: bench.distill(
                f"job-{key}",
                *bench.data("all"),
                "--teacher-model",
                teacher,
                *student_flags("cut"),
                *job,
                *rows,
                *RUNS[key],
            )
            for key in ("ce", "kd")
        }
        results = bench.compare("all", teacher, {"kd": runs["kd"]}, runs["ce"])
        table = rows_of(results, runs, bench.walls, "job-")
        say(
            f"\n(i) the point-1 job: {args.job_rows} rows, {args.epochs} epochs, batch 32, "
            f"lr 1e-4, T=3, alpha 0.7, 2 layers cut from MiniLM; "
            f"{results['dataset']['rows']} test rows"
        )
        say(f"  teacher (MiniLM fine-tuned)  {100 * results['models'][0]['accuracy']:6.2f}%")
        say(HEADER)
        table[1] = ("kdistill defaults", *table[1][1:])
        for row in table:
            say(fmt(*row))
        if not args.no_peer:
            print("  peer: TextBrewer ...", flush=True)
            p = bench.peer(teacher)
            say(fmt("TextBrewer BasicDistiller", p["accuracy"], p["ci"], None, None, p["wall"]))
            gap = 100 * (table[1][1] - p["accuracy"])
            say(f"  kdistill - TextBrewer: {gap:+.2f} points (unpaired; target >= 0)")

    wanted = [r for r in args.runs.split(",") if r]
    missing = [r for r in wanted if any(f.startswith("--") and f not in have for f in RUNS[r])]
    if missing:
        say(f"\n  not in this checkout's distill (skipped): {', '.join(missing)}")
    wanted = [r for r in wanted if r not in missing]
    rows = ["--max-train-samples", str(args.train_rows)] if args.train_rows else []
    for section in (s for s in sections if s in ("all", "few")):
        teacher = bench.teacher(section)
        unlabeled = str(bench.work / "data" / "few" / "unlabeled.parquet")
        for student in (s for s in args.students.split(",") if s):
            runs = {}
            for key in wanted:
                extra = ["--unlabeled-data", unlabeled] if section == "few" and key != "ce" else []
                if section == "few" and key == "ce":
                    # The labelled tenth alone: ten times the epochs for the same optimizer
                    # steps as the distilled runs over all the text (best epoch kept).
                    extra = ["--epochs", str(10 * args.epochs)]
                runs[key] = bench.distill(
                    f"{section}-{student}-{key}",
                    *bench.data(section),
                    "--teacher-model",
                    teacher,
                    *student_flags(student),
                    *job,
                    *rows,
                    *RUNS[key],
                    *extra,
                )
            if "ce" not in runs:
                raise SystemExit("--runs must include ce: the baseline")
            students = {k: v for k, v in runs.items() if k != "ce"}
            results = bench.compare(section, teacher, students, runs["ce"])
            t_acc = results["models"][0]["accuracy"]
            what = "all labels" if section == "all" else "10% labels + 90% unlabelled text"
            kind = "bert-tiny, random init" if student == "tiny" else "2 layers cut from MiniLM"
            say(f"\n({section}) {what}; {kind}; {results['dataset']['rows']} test rows")
            say(f"  teacher (MiniLM fine-tuned)  {100 * t_acc:6.2f}%")
            say(HEADER)
            for row in rows_of(results, runs, bench.walls, f"{section}-{student}-"):
                say(fmt(*row) + f"  {100 * row[1] / t_acc:5.1f}% of teacher")
    (bench.work / "table.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
