"""bench/seed_pair.py: the seed pair's shapes from their published configs, and the bench end
to end at tiny shapes (the real ones are a GPU's job: docs/seed-pair.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import seed_pair  # noqa: E402


@pytest.mark.slow
def test_real_shapes_have_the_published_parameter_counts():
    """On the meta device: 1.78B for the teacher (its untied output layer included), 0.49B for
    the student (tied), as the model cards say."""
    counts = seed_pair.parameter_counts("real")
    assert round(counts["teacher"] / 1e9, 2) == 1.78
    assert round(counts["student"] / 1e9, 2) == 0.49


@pytest.mark.slow
def test_tiny_bench_end_to_end(tmp_path, dbpedia_csv):
    out = tmp_path / "seed_pair.txt"
    argv = ["--shape", "tiny", "--rows", "40", "--max-val-samples", "20"]
    argv += ["--runs", "quick,quick-lora,full"]
    seed_pair.main([*argv, "--work", str(tmp_path / "work"), "--out", str(out)])
    lines = out.read_text().splitlines()
    assert (
        lines[0]
        == f"# python bench/seed_pair.py {' '.join(argv)} --work "
        + str(tmp_path / "work")
        + f" --out {out}"
    )
    for name in ("DeepSeek-R1-Distill-Qwen-1.5B-shape", "Qwen2.5-0.5B-shape"):
        folder = tmp_path / "work" / "models" / name
        assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    rows = {row[0]: row[1:] for row in cells if row[0] in ("quick", "quick-lora", "full")}
    assert set(rows) == {"quick", "quick-lora", "full"}
    for values in rows.values():
        wall, rss, step, per_row, estimate, measured, ratio, tokens, peak = map(float, values)
        assert wall > measured > 0 and rss > 0 and step > 0 and per_row > 0 and estimate > 0
        assert ratio == pytest.approx(estimate / measured, rel=0.05)
        assert tokens > 0 and 0 < peak < 100
    assert not seed_pair.RESULTS.with_name("seed_pair_tiny.txt").exists()
