#!/usr/bin/env python
"""ONNX and ONNX-int8 against torch for the 2-layer student cut from MiniLM, on this CPU.

Every step is the real `kdistill` command in its own process (bench/teachers.py's steps, on the
shared DBpedia sample with a stratified 20% validation split, 4,000 train / 1,000 validation rows):

  teacher   all-MiniLM-L6-v2 fine-tuned one epoch (reused when bench/teachers.py's folder exists)
  student   layers 0 and 5 of MiniLM, distilled from it (--student-epochs, 2 by default)
  export    kdistill export --format onnx --quantize dynamic-int8 on the validation rows:
            parity (largest absolute logit difference, prediction agreement with torch fp32),
            accuracy of each, latency at batch 1 and 32 and throughput at 32; torch under bf16
            autocast too where the CPU has it (what kdistill predict runs there)

It prints one table and the ratios against torch fp32, measured in the same export run, with
the accuracy each reached so a speed-up never hides a quality loss, and writes the README's
table to bench/results/export.txt (its command and the machine first).

    python bench/export.py                          # about 10 minutes on 2 CPU cores
    python bench/export.py --work bench/.work/teachers   # reuse bench/teachers.py's models
    python bench/export.py --student outputs/student_cut/demo_T3.0_A0.7_... --dataset data/demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import markdown_table, short_e, write_results  # noqa: E402
from teachers import distill_student, finetune_minilm, kd, minilm_path, prepare  # noqa: E402

NAMES = {
    "torch": "torch fp32",
    "torch-bf16": "torch, bf16 autocast",
    "onnx": "ONNX fp32",
    "onnx-int8": "ONNX dynamic int8",
}

REPO = Path(__file__).resolve().parent.parent


def completed_run(folder: Path) -> Path | None:
    runs = (
        [
            p
            for p in folder.glob("*")
            if p.is_dir() and not p.name.endswith(".partial") and (p / "best_model").is_dir()
        ]
        if folder.is_dir()
        else []
    )
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def results_table(report: dict, run: Path, seconds: float) -> list[str]:
    """The README's table: one row per model, ratios in brackets against torch fp32."""
    bs = report["batch_size"]
    torch_row = report["torch"]
    rows = []
    for variant, s in report["speed"].items():
        if variant == "torch":
            p, ratios = {**torch_row, "agreement": None}, False
        elif variant == "torch-bf16":
            p, ratios = {**report["torch_bf16"], "size_bytes": torch_row["size_bytes"]}, True
        else:
            p, ratios = report["parity"][variant], True
        diff = p.get("max_abs_logit_diff")
        smaller = torch_row["size_bytes"] / p["size_bytes"]
        rows.append(
            [
                NAMES.get(variant, variant),
                f"{100 * p['accuracy']:.2f}%",
                "-" if p["agreement"] is None else f"{100 * p['agreement']:.2f}%",
                "-" if diff is None else f"{diff:.2f}" if diff >= 0.1 else short_e(diff),
                f"{s['latency_ms_batch_1']:.1f} ms"
                + (f" ({s['speedup_vs_torch']:.2f}x)" if ratios else ""),
                f"{s['throughput_per_s']:.0f} rows/s"
                + (f" ({s['throughput_ratio_vs_torch']:.2f}x)" if ratios else ""),
                f"{p['size_bytes'] / 1e6:.1f} MB"
                + (f" ({smaller:.1f}x smaller)" if smaller >= 1.5 else ""),
            ]
        )
    columns = [
        "model",
        "accuracy",
        "agreement with torch",
        "max abs logit diff",
        "latency, batch 1",
        f"throughput, batch {bs}",
        "size",
    ]
    return [
        f"# Student: {run.relative_to(REPO) if run.is_relative_to(REPO) else run}, checked on "
        f"{report['rows']} validation rows of {report['dataset']}; {report['device_description']}; "
        f"{report['timing']}; one export run (export + checks {seconds:.0f} s). Ratios in "
        "brackets are against torch fp32.",
        "",
        *markdown_table(columns, rows),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work" / "export")
    parser.add_argument("--student-epochs", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1000, help="Validation rows checked.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repeats per measurement.")
    parser.add_argument("--threads", type=int, default=None, help="export --threads.")
    parser.add_argument(
        "--student",
        type=Path,
        default=None,
        help="A distill run of the cut student to export instead of training one "
        "(make demo's outputs/student_cut/...), with --dataset, its prepared data.",
    )
    parser.add_argument("--dataset", default=None, help="Prepared data of --student's run.")
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    data_flags: list[str] = []
    run = args.student
    if run is not None:
        data_flags = ["--dataset", args.dataset] if args.dataset else []
    elif not (work / "models" / "minilm-dbpedia" / "teacher_eval.json").is_file():
        print("teacher: MiniLM fine-tuned 1 epoch ...", flush=True)
        finetune_minilm(work, prepare(work))
    if run is None:
        run = completed_run(work / "runs" / "cut-minilm")
    if run is None:
        data = prepare(work)
        print(f"student: layers 0,5 of MiniLM, {args.student_epochs} epochs ...", flush=True)
        distill_student(
            work,
            data,
            "cut-minilm",
            args,
            "--student-model",
            minilm_path(),
            "--student-layers",
            "0,5",
            "--learning-rate",
            "1e-4",
        )
        run = completed_run(work / "runs" / "cut-minilm")
    assert run is not None
    threads = ["--threads", str(args.threads)] if args.threads else []
    print(f"export: {run.name} ...", flush=True)
    out = work / "onnx"
    # --min-agreement 0: the bench reports every figure; the 0.99 verdict is printed below.
    seconds = kd(
        "export",
        "--format",
        "onnx",
        "--model",
        str(run),
        "--quantize",
        "dynamic-int8",
        "--output-dir",
        str(out),
        "--max-samples",
        str(args.rows),
        "--repeats",
        str(args.repeats),
        "--min-agreement",
        "0",
        *data_flags,
        *threads,
        work=work,
    )
    report = json.loads((out / "export_report.json").read_text())
    bs = report["batch_size"]

    print(
        f"\n2 of MiniLM's layers ({run.name}), {report['rows']} DBpedia validation rows, "
        f"{report['device_description']}; export + checks {seconds:.0f} s\n"
    )
    print(
        f"{'model':<11}{'accuracy':>9}{'agree':>9}{'max|dlogit|':>12}{'ms @1':>8}"
        f"{f'ms @{bs}':>9}{f'rows/s @{bs}':>12}{'x @1':>7}{f'x @{bs}':>7}{'MB':>7}"
    )
    torch_row = {"agreement": 1.0, "max_abs_logit_diff": 0.0, **report["torch"]}
    for variant, s in report["speed"].items():
        bf16 = {**(report["torch_bf16"] or {}), "size_bytes": torch_row["size_bytes"]}
        p = {"torch": torch_row, "torch-bf16": bf16}.get(variant) or report["parity"][variant]
        print(
            f"{variant:<11}{100 * p['accuracy']:>8.2f}%{100 * p['agreement']:>8.2f}%"
            f"{p['max_abs_logit_diff']:>12.2e}{s['latency_ms_batch_1']:>8.2f}"
            f"{s[f'latency_ms_batch_{bs}']:>9.1f}{s['throughput_per_s']:>12.1f}"
            f"{s['speedup_vs_torch']:>6.2f}x{s['throughput_ratio_vs_torch']:>6.2f}x"
            f"{p['size_bytes'] / 1e6:>7.1f}"
        )
    print()
    for variant in report["parity"]:
        p, s = report["parity"][variant], report["speed"][variant]
        verdict = "passes" if p["agreement"] >= 0.99 else "FAILS"
        print(
            f"{variant}: {s['speedup_vs_torch']:.2f}x torch's speed at batch 1, "
            f"{s['throughput_ratio_vs_torch']:.2f}x its throughput at batch {bs}, "
            f"{report['torch']['size_bytes'] / p['size_bytes']:.2f}x smaller; accuracy "
            f"{100 * (p['accuracy'] - torch_row['accuracy']):+.2f} points; agreement "
            f"{100 * p['agreement']:.2f}% ({verdict} --min-agreement 0.99)"
        )
    (work / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    verdicts = [
        f"{v}: agreement {100 * p['agreement']:.2f}%, "
        f"{'passes' if p['agreement'] >= 0.99 else 'FAILS'} --min-agreement 0.99."
        for v, p in report["parity"].items()
    ]
    write_results([*results_table(report, run, seconds), "", *verdicts])


if __name__ == "__main__":
    main()
