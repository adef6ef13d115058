"""--report-to: TensorBoard event files written into the run directory and readable offline."""

import json
from pathlib import Path

import pytest

from kdistill.cli import main


def distill_args(tiny_models, *extra: str) -> list[str]:
    return [
        "distill",
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
        "2",
        "--mixed-precision",
        "no",
        "--allow-weak-teacher",
        *extra,
    ]


def test_tensorboard_events_hold_the_history(workdir, tiny_models, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(distill_args(tiny_models, "--report-to", "tensorboard")) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    history = json.loads((run / "history.json").read_text())
    events = list((run / "logs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file in the run directory"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/kl", "train/ce", "val/accuracy", "val/macro_f1"):
        assert tag in scalars, (tag, scalars)
    val = acc.Scalars("val/accuracy")
    assert [e.step for e in val] == [1, 2]
    expected = [e["val_accuracy"] for e in history["epochs"]]
    assert [e.value for e in val] == pytest.approx(expected, abs=1e-6)
    loss = [e.value for e in acc.Scalars("train/loss")]
    assert loss == pytest.approx([e["train_loss"] for e in history["epochs"]], rel=1e-5)


def test_no_tracker_writes_no_logs(workdir, tiny_models, capsys):
    assert main(distill_args(tiny_models)) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert not (run / "logs").exists()
    assert (run / "training_curves.png").is_file()


def test_missing_tracker_package_is_one_line(workdir, tiny_models, capsys):
    import importlib.util

    if importlib.util.find_spec("wandb"):
        pytest.fail("this test needs an environment without wandb")
    assert main(distill_args(tiny_models, "--report-to", "wandb")) == 2
    err = capsys.readouterr().err.strip()
    assert "--report-to wandb" in err and "pip install wandb" in err
    assert len(err.splitlines()) == 1
    assert not (workdir / "outputs").exists()
