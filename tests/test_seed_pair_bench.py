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


@pytest.mark.slow
def test_real_shape_pair_runs_a_few_steps(tmp_path, dbpedia_csv, monkeypatch):
    """The seed's pair at its published shapes (random weights): the 1.78B prompt teacher scores
    28 rows (one per class, train and validation) and the 0.49B student takes 2 optimizer steps
    with checkpointing on, within this machine's memory, and saves a float32 classifier of the
    real vocabulary."""
    import json

    from safetensors import safe_open

    from kdistill.cli import main

    teacher, student = seed_pair.build_models(tmp_path / "models", "real")
    monkeypatch.chdir(tmp_path)
    assert main(["prepare-data", "--dataset", str(dbpedia_csv), "--name", "dbpedia"]) == 0
    argv = ["distill", "--dataset", "dbpedia", "--teacher-model", str(teacher)]
    argv += ["--student-model", str(student), "--max-train-samples", "14"]
    argv += ["--max-val-samples", "14", "--batch-size", "7", "--epochs", "1"]
    assert main([*argv, "--max-length", "128", "--allow-weak-teacher"]) == 0
    (run,) = (tmp_path / "outputs" / "student_soft_distill").iterdir()
    history = json.loads((run / "history.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["gradient_checkpointing"] is True
    assert config["resolved"]["total_optimizer_steps"] == 2
    (epoch,) = history["epochs"]
    assert epoch["train_loss"] == epoch["train_loss"] and epoch["train_loss"] > 0  # finite
    with safe_open(run / "best_model" / "model.safetensors", "pt") as f:
        embedding = f.get_tensor("model.embed_tokens.weight")
    assert embedding.shape == (151936, 896) and str(embedding.dtype) == "torch.float32"
