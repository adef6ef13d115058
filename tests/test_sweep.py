"""sweep on tiny models: one run per grid point, the teacher run once, sweep.json and heatmap."""

import json
from pathlib import Path

import pytest

from kdistill.cli import main


def sweep_args(tiny_models, *extra: str) -> list[str]:
    return [
        "sweep",
        "--dataset",
        "toy",
        "--teacher-model",
        str(tiny_models["bert_teacher"]),
        "--student-model",
        str(tiny_models["bert_student"]),
        "--max-train-samples",
        "60",
        "--max-val-samples",
        "40",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--mixed-precision",
        "no",
        "--allow-weak-teacher",
        *extra,
    ]


@pytest.mark.parametrize("lockstep", ["off", "auto"])
def test_sweep_runs_the_grid_once_each_and_names_the_best(workdir, tiny_models, capsys, lockstep):
    argv = sweep_args(
        tiny_models, "--temperature", "2,4", "--alpha", "0.5,1", "--lockstep", lockstep
    )
    assert main(argv) == 0
    sweep_dir = Path(capsys.readouterr().out.strip().splitlines()[-1]).resolve()
    assert sweep_dir.parent == workdir / "outputs" / "sweeps"
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert record["temperatures"] == [2.0, 4.0] and record["alphas"] == [0.5, 1.0]
    assert "completed" in record
    points = [(r["temperature"], r["alpha"]) for r in record["runs"]]
    assert points == [(2.0, 0.5), (2.0, 1.0), (4.0, 0.5), (4.0, 1.0)]
    run_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert len(run_dirs) == 4 and not any(p.name.endswith(".partial") for p in run_dirs)
    for entry in record["runs"]:
        assert entry["status"] == "completed" and entry["error"] is None
        run = Path(entry["run_dir"]).resolve()
        assert run.parent == sweep_dir
        config = json.loads((run / "config.json").read_text())
        history = json.loads((run / "history.json").read_text())
        # each run trained with its own point, and sweep.json reports what its history says
        assert (config["temperature"], config["alpha"]) == (entry["temperature"], entry["alpha"])
        assert entry["best_val_accuracy"] == history["best"]["val_accuracy"]
        assert (run / "training_curves.png").stat().st_size > 5000
    caches = [
        json.loads((Path(e["run_dir"]) / "history.json").read_text())["teacher_cache"]
        for e in record["runs"]
    ]
    assert len({c["key"] for c in caches}) == 1
    if lockstep == "off":
        # the teacher ran for the first point only; the other three read its logits from disk
        assert [c["hit"] for c in caches] == [False, True, True, True]
        assert record["lockstep"]["group_size"] is None
    else:
        # one pass of the teacher for the four students trained together
        assert [c["hit"] for c in caches] == [False] * 4
        assert record["lockstep"]["groups"][0]["students"] == 4
    best = max(record["runs"], key=lambda r: r["best_val_accuracy"])
    assert record["best"]["run_dir"] == best["run_dir"]
    assert record["teacher_val_accuracy"] is not None
    heatmap = sweep_dir / "sweep_heatmap.png"
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and heatmap.stat().st_size > 5000


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature", "2,x"], "--temperature must be comma-separated numbers"),
        (["--temperature", "2,0"], "--temperature values must be > 0"),
        (["--alpha", "0.5,1.5"], "--alpha values must be in [0, 1]"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--text-column", "nope", "--dataset", "missing.csv"], "missing.csv"),
    ],
)
def test_sweep_bad_input_is_one_line_and_leaves_nothing(
    workdir, tiny_models, capsys, extra, message
):
    assert main(sweep_args(tiny_models, "--temperature", "2,3", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (workdir / "outputs" / "sweeps").exists() or not any(
        (workdir / "outputs" / "sweeps").iterdir()
    )
