import json
import os
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from conftest import write_toy_csv

from kdistill.cli import main
from kdistill.config import RunsConfig
from kdistill.files import atomic_dir, atomic_write_json
from kdistill.training.runs import (
    finish_run_dir,
    format_duration,
    list_runs,
    new_run_dir,
    show_runs,
    sort_runs,
)


def test_atomic_write_json_leaves_no_temp(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_dir_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "best_model"
    with atomic_dir(target) as tmp:
        (tmp / "w").write_text("good")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "w").write_text("half")
        raise RuntimeError("crash mid-save")
    assert (target / "w").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["best_model"]


def test_atomic_dir_replaces_on_success(tmp_path):
    target = tmp_path / "m"
    for text in ("one", "two"):
        with atomic_dir(target) as tmp:
            (tmp / "w").write_text(text)
    assert (target / "w").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_run_dirs_never_collide(tmp_path):
    now = datetime(2026, 1, 31, 13, 50, 45)
    final1, partial1 = new_run_dir(tmp_path, "dbpedia_T3.0_A0.7", now)
    final2, partial2 = new_run_dir(tmp_path, "dbpedia_T3.0_A0.7", now)
    assert final1.name == "dbpedia_T3.0_A0.7_20260131_135045"
    assert final2.name == "dbpedia_T3.0_A0.7_20260131_135045_2"
    assert partial1.is_dir() and partial1.name.endswith(".partial")
    finish_run_dir(partial1, final1)
    final3, _ = new_run_dir(tmp_path, "dbpedia_T3.0_A0.7", now)
    assert final3 not in (final1, final2)


# --------------------------------------------------------------------------- kdistill runs


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_run(
    folder: Path,
    accuracies: list[float] = (0.5, 0.875),
    *,
    done: bool = True,
    pid: int | None = None,
    host: str | None = None,
    history: bool = True,
    **config: object,
) -> Path:
    """A run directory as distill writes it (config.json, history.json, best_model/)."""
    folder.mkdir(parents=True)
    atomic_write_json(
        folder / "config.json",
        {
            "kind": "distill",
            "dataset": "data/toy",
            "teacher_model": "models/bert-teacher",
            "student_model": "prajjwal1/bert-tiny",
            "temperature": 3.0,
            "alpha": 0.7,
            "epochs": 3,
            "student_layers": None,
            "resolved": {"mixed_precision": "no"},
            "data": {"name": "toy", "train_rows": 96, "validation_rows": 24},
            "started": "2026-01-31T13:50:45",
            "process": {"pid": pid or dead_pid(), "host": host or socket.gethostname()},
            **config,
        },
    )
    epochs = [
        {"epoch": i, "val_accuracy": acc, "val_macro_f1": acc - 0.1, "wall_time_s": 30.0 * i}
        for i, acc in enumerate(accuracies, 1)
    ]
    record: dict = {"teacher": {"val_accuracy": 0.9}, "epochs": epochs}
    if done:
        best = max(epochs, key=lambda e: e["val_accuracy"])
        record |= {
            "best": {"epoch": best["epoch"], "val_accuracy": best["val_accuracy"]},
            "total_time_s": 92.4,
            "completed": "2026-01-31T13:52:17",
        }
    if history:
        atomic_write_json(folder / "history.json", record)
    (folder / "best_model").mkdir()
    (folder / "best_model" / "config.json").write_text('{"model_type": "bert"}')
    return folder


@pytest.fixture()
def outputs(tmp_path) -> Path:
    """One run of every kind, some nested as sweeps and the seed's scripts lay them out."""
    root = tmp_path / "outputs"
    make_run(root / "student_soft_distill/toy_T3.0_A0.7_20260131_135045", student_layers="0,5")
    make_run(
        root / "student_soft_distill/toy_T2.0_A0.5_20260131_140000.partial",
        [0.25, 0.5],
        done=False,
        temperature=2.0,
        alpha=0.5,
        started="2026-01-31T14:00:00",
    )
    make_run(
        root / "toy_T4.0_A0.9_20260131_150000.partial",
        history=False,
        pid=os.getpid(),
        temperature=4.0,
        alpha=0.9,
        started="2026-01-31T15:00:00",
    )
    make_run(
        root / "sweeps/toy_sweep_20260201_090000/toy_T2.0_A0.9_20260201_090001",
        [0.75],
        temperature=2.0,
        alpha=0.9,
        started="2026-02-01T09:00:01",
    )
    bad = root / "toy_T1.0_A0.1_20260101_000000"
    bad.mkdir()
    (bad / "config.json").write_text('{"kind": "distill", "temper')
    return root


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {row["name"]: row for row in rows}


def test_runs_are_found_at_any_depth_with_their_status(outputs):
    rows = by_name(list_runs(outputs))
    assert {name: row["status"] for name, row in rows.items()} == {
        "toy_T3.0_A0.7_20260131_135045": "completed",
        "toy_T2.0_A0.5_20260131_140000": "crashed",  # .partial, its process gone
        "toy_T4.0_A0.9_20260131_150000": "running",  # .partial, this test's process
        "toy_T2.0_A0.9_20260201_090001": "completed",  # inside a sweep folder
        "toy_T1.0_A0.1_20260101_000000": "unreadable",
    }  # the best_model/config.json inside each run is not a run


def test_a_completed_run_reads_its_config_and_history(outputs):
    row = by_name(list_runs(outputs))["toy_T3.0_A0.7_20260131_135045"]
    assert row == {
        "name": "toy_T3.0_A0.7_20260131_135045",
        "status": "completed",
        "dataset": "toy",
        "teacher": "bert-teacher",
        "student": "bert-tiny layers 0,5",
        "temperature": 3.0,
        "alpha": 0.7,
        "best_val_accuracy": 0.875,
        "best_val_macro_f1": 0.775,
        "best_epoch": 2,
        "epochs_done": 2,
        "epochs_total": 3,
        "duration_s": 92.4,
        "started": "2026-01-31T13:50:45",
        "path": str(outputs / "student_soft_distill/toy_T3.0_A0.7_20260131_135045"),
        "error": None,
    }


def test_unfinished_runs_fall_back_on_their_epochs(outputs):
    rows = by_name(list_runs(outputs))
    crashed = rows["toy_T2.0_A0.5_20260131_140000"]  # no "best" or total time yet
    assert (crashed["best_val_accuracy"], crashed["best_epoch"]) == (0.5, 2)
    assert crashed["duration_s"] == 60.0 and crashed["epochs_done"] == 2
    assert crashed["path"].endswith(".partial")
    running = rows["toy_T4.0_A0.9_20260131_150000"]  # no history.json yet
    assert (running["epochs_done"], running["best_val_accuracy"], running["duration_s"]) == (
        0,
        None,
        None,
    )
    unreadable = rows["toy_T1.0_A0.1_20260101_000000"]
    assert "config.json" in unreadable["error"] and unreadable["temperature"] is None
    assert unreadable["epochs_done"] is None


def test_status_edge_cases(tmp_path):
    make_run(tmp_path / "elsewhere.partial", pid=os.getpid(), host="another-host")
    make_run(tmp_path / "failed.partial", pid=os.getpid(), done=False)
    history = json.loads((tmp_path / "failed.partial/history.json").read_text())
    atomic_write_json(tmp_path / "failed.partial/history.json", {**history, "failed": "boom"})
    make_run(tmp_path / "renamed_by_hand", done=False)
    old = make_run(tmp_path / "old_format")
    config = json.loads((old / "config.json").read_text())
    del config["kind"]
    atomic_write_json(old / "config.json", config)
    make_run(tmp_path / ".toy.123.tmp")  # an atomic write in progress
    atomic_write_json(tmp_path / "finetuned/config.json", {"kind": "finetune", "resolved": {}})
    atomic_write_json(tmp_path / "model/config.json", {"model_type": "bert"})
    make_run(tmp_path / "copied/best_model/inner")  # nothing under a model folder is searched
    assert {row["name"]: row["status"] for row in list_runs(tmp_path)} == {
        "elsewhere": "crashed",  # its pid is not ours to check
        "failed": "crashed",
        "renamed_by_hand": "incomplete",
        "old_format": "completed",
    }


def test_corrupt_history_is_listed_as_unreadable(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "history.json").write_text("[1, 2")
    (row,) = list_runs(tmp_path)
    assert row["status"] == "unreadable" and "history.json" in row["error"]


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("temperature", ["T1", "T2", "T3", "none"]),
        ("best_val_accuracy", ["T2", "T3", "T1", "none"]),
        ("started", ["T3", "T1", "T2", "none"]),
    ],
)
@pytest.mark.parametrize("reverse", [False, True])
def test_sort_by_any_column_missing_values_last(column, expected, reverse):
    rows = [
        {
            "name": "T2",
            "status": "completed",
            "temperature": 2.0,
            "best_val_accuracy": 0.5,
            "started": "2026-01-31T13:00:00",
        },
        {
            "name": "T1",
            "status": "completed",
            "temperature": 1.0,
            "best_val_accuracy": 0.75,
            "started": "2026-01-30T13:00:00",
        },
        {
            "name": "none",
            "status": "crashed",
            "temperature": None,
            "best_val_accuracy": None,
            "started": None,
        },
        {
            "name": "T3",
            "status": "completed",
            "temperature": 3.0,
            "best_val_accuracy": 0.625,
            "started": "2026-01-29T13:00:00",
        },
    ]
    if reverse:
        expected = [*reversed(expected[:-1]), "none"]
    assert [row["name"] for row in sort_runs(rows, column, reverse)] == expected


def test_table_is_aligned_and_counts_by_status(outputs):
    text = show_runs(RunsConfig(output_dir=str(outputs), sort_by="temperature"))
    lines = text.splitlines()
    assert text.endswith("\n")
    assert lines[0].split()[:5] == ["name", "status", "dataset", "teacher", "student"]
    assert lines[-1] == "5 runs (2 completed, 1 running, 1 crashed, 1 unreadable)"
    body = lines[1:-1]
    assert [line.split()[0] for line in body] == [
        "toy_T2.0_A0.5_20260131_140000",
        "toy_T2.0_A0.9_20260201_090001",
        "toy_T3.0_A0.7_20260131_135045",
        "toy_T4.0_A0.9_20260131_150000",
        "toy_T1.0_A0.1_20260101_000000",  # no temperature: last
    ]
    path_column = lines[0].index("path")
    assert all(line[path_column:].startswith(str(outputs)) for line in body)
    completed = body[2]
    for cell in ("bert-tiny layers 0,5", "87.50%", "1m32s", "2/3", "2026-01-31 13:50", " 3 "):
        assert cell in completed, cell
    running = body[3]
    assert " - " in running and "0/3" in running


def test_durations_read_naturally():
    assert [format_duration(s) for s in (0.4, 59.6, 92.4, 3725)] == [
        "0s",
        "1m00s",
        "1m32s",
        "1h02m05s",
    ]


def test_json_lists_every_row_for_scripts(outputs):
    rows = json.loads(show_runs(RunsConfig(output_dir=str(outputs), sort_by="name", json=True)))
    assert rows == sort_runs(list_runs(outputs), "name")
    assert [r["name"] for r in rows] == sorted(r["name"] for r in rows)
    completed = by_name(rows)["toy_T3.0_A0.7_20260131_135045"]
    assert completed["best_val_accuracy"] == 0.875 and completed["duration_s"] == 92.4


def test_cli_runs(outputs, capsys):
    assert (
        main(["runs", "--output-dir", str(outputs), "--sort-by", "temperature", "--reverse"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[0] == "toy_T4.0_A0.9_20260131_150000"
    assert lines[-2].split()[0] == "toy_T1.0_A0.1_20260101_000000"  # no temperature: still last
    assert lines[-1].startswith("5 runs")
    assert main(["runs", "--output-dir", str(outputs), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5


def test_cli_runs_with_no_runs_or_no_folder(tmp_path, capsys):
    (tmp_path / "outputs").mkdir()
    assert main(["runs", "--output-dir", str(tmp_path / "outputs")]) == 0
    assert capsys.readouterr().out == (
        f"no runs under {tmp_path / 'outputs'}/; train one with kdistill distill\n"
    )
    assert main(["runs", "--output-dir", str(tmp_path / "outputs"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["runs", "--output-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--output-dir" in err and "does not exist" in err


def test_runs_lists_a_real_distill_run(tmp_path, monkeypatch, tiny_models, capsys):
    monkeypatch.chdir(tmp_path)
    data = write_toy_csv(tmp_path / "toy.csv", 12)
    assert (
        main(
            [
                "distill",
                "--dataset",
                str(data),
                "--teacher-model",
                str(tiny_models["bert_teacher"]),
                "--student-model",
                str(tiny_models["bert_student"]),
                "--temperature",
                "2.5",
                "--alpha",
                "0.6",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--max-length",
                "32",
                "--mixed-precision",
                "no",
                "--allow-weak-teacher",
            ]
        )
        == 0
    )
    run = Path(capsys.readouterr().out.strip())
    history = json.loads((run / "history.json").read_text())
    assert main(["runs", "--json"]) == 0  # default --output-dir outputs
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["status"], row["temperature"], row["alpha"]) == ("completed", 2.5, 0.6)
    assert (row["teacher"], row["student"], row["dataset"]) == (
        "bert-teacher",
        "bert-student",
        "toy",
    )
    assert row["best_val_accuracy"] == history["best"]["val_accuracy"]
    assert row["duration_s"] == history["total_time_s"] and row["path"] == str(run)


def test_atomic_writes_are_readable_by_others(tmp_path):
    atomic_write_json(tmp_path / "h.json", {"x": 1})
    with atomic_dir(tmp_path / "m") as tmp:
        (tmp / "w").write_text("x")
    assert (tmp_path / "h.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
