"""Surviving interruption: checkpoints, --resume after SIGKILL, a graceful stop on SIGINT and
SIGTERM, and a NaN loss that stops the run without touching the last good checkpoint or the best
model. The interrupted runs are real subprocesses; each step is slowed down in them (a driver
script wraps the loss) so that a signal lands mid-epoch."""

import importlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_toy_csv

from kdistill.cli import main

REPO = Path(__file__).resolve().parent.parent

# Runs distill like `kdistill`, with every training step slowed to STEP_DELAY seconds.
DRIVER = """\
import importlib, os, sys, time
kd = importlib.import_module("kdistill.training.loop")  # the step calls kd_loss from here
from kdistill.cli import main

real = kd.kd_loss
delay = float(os.environ.get("STEP_DELAY", "0"))


def slow(*args, **kwargs):
    time.sleep(delay)
    return real(*args, **kwargs)


kd.kd_loss = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models):
    """Toy data, the driver script, and the history and final weights of an uninterrupted run:
    the numbers every resumed run must reproduce."""
    root = tmp_path_factory.mktemp("resume")
    csv = write_toy_csv(root / "toy.csv", 30)
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    argv = [
        "distill",
        "--dataset",
        str(csv),
        "--teacher-model",
        str(tiny_models["bert_teacher"]),
        "--student-model",
        str(tiny_models["bert_student"]),
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--learning-rate",
        "3e-3",
        "--mixed-precision",
        "no",
        "--allow-weak-teacher",
        "--save-steps",
        "5",
    ]
    out = root / "reference"
    assert main([*argv, "--output-dir", str(out)]) == 0
    (run,) = out.iterdir()
    return {"root": root, "argv": argv, "driver": driver, "reference": run}


def start(setup, out: Path, delay: float) -> subprocess.Popen:
    env = {
        **os.environ,
        "STEP_DELAY": str(delay),
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, str(setup["driver"]), *setup["argv"], "--output-dir", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(out: Path, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> Path:
    """The first path under `out` matching `pattern`, waiting for the run to write it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(out.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {pattern} appeared: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{pattern} did not appear in {timeout} s")


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "final_model" / "model.safetensors")


def assert_same_run(run: Path, reference: Path) -> None:
    """The same epochs, metrics and final weights as the uninterrupted run (summation order
    differs a little across the interruption, hence the tolerance)."""
    got = json.loads((run / "history.json").read_text())
    want = json.loads((reference / "history.json").read_text())
    assert len(got["epochs"]) == len(want["epochs"]) == 2
    for g, w in zip(got["epochs"], want["epochs"], strict=True):
        assert g["val_accuracy"] == w["val_accuracy"]
        assert g["train_samples"] == w["train_samples"] == 96
        for key in ("train_loss", "train_kl", "train_ce", "val_loss", "learning_rate"):
            assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-7), key
    assert got["best"] == want["best"]
    a, b = final_weights(run), final_weights(reference)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_reaches_the_same_result(setup):
    out = setup["root"] / "killed"
    proc = start(setup, out, delay=0.15)
    # Mid-epoch 2: epoch 1's best model exists, and the kill lands a few batches after a
    # checkpoint, so the resumed run redoes them.
    wait_for(out, "*.partial/checkpoints/epoch-2-step-10", proc)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    (partial,) = out.glob("*.partial")
    (checkpoint,) = (partial / "checkpoints").iterdir()  # only the latest is kept
    assert checkpoint.name.startswith("epoch-2-step-")
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]["epochs"]) == 1
    # best_model/ is whole (it is written under a temporary name and renamed).
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(partial / "best_model")
    assert not [p for p in partial.iterdir() if p.name.startswith(".")]

    assert main([*setup["argv"], "--output-dir", str(out), "--resume"]) == 0
    (run,) = out.iterdir()
    assert run.name == partial.name.removesuffix(".partial")
    assert not (run / "checkpoints").exists()  # complete: the optimizer state is gone
    assert_same_run(run, setup["reference"])
    config = json.loads((run / "config.json").read_text())
    assert config["resumed"][0]["checkpoint"] == checkpoint.name


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_says_how_to_resume(setup):
    out = setup["root"] / "interrupted"
    proc = start(setup, out, delay=0.1)
    wait_for(out, "*.partial/checkpoints/epoch-1-step-5", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert last.startswith("kdistill: stopped by SIGINT at epoch 1, batch "), last
    batch = int(last.split("batch ")[1].split(",")[0])
    (partial,) = out.glob("*.partial")
    assert [p.name for p in (partial / "checkpoints").iterdir()] == [f"epoch-1-step-{batch}"]
    assert "stopped by SIGINT" in json.loads((partial / "history.json").read_text())["stopped"]
    from kdistill.training.runs import list_runs

    assert [row["status"] for row in list_runs(out)] == ["stopped"]
    # The exact command it printed, run as printed (the driver's path is its program).
    command = shlex.split(last.split("resume with: ", 1)[1])
    assert command[0] == str(setup["driver"]) and command[-2:] == ["--resume-from", str(partial)]
    assert main(command[1:]) == 0
    (run,) = out.iterdir()
    assert_same_run(run, setup["reference"])


def test_sigterm_sets_the_stop_flag_and_a_second_sigint_stops_at_once():
    from kdistill.training.checkpoint import GracefulStop

    accelerator = type("A", (), {"num_processes": 1})()
    with GracefulStop() as stop:
        assert not stop.requested(accelerator)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.requested(accelerator) and stop.exit_code == 143 and stop.name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher repeating it: still a clean stop
        time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back


def test_nan_loss_keeps_the_last_checkpoint_and_the_best_model(setup, monkeypatch, capsys):
    kd = importlib.import_module("kdistill.training.loop")

    real = kd.kd_loss
    steps_per_epoch = 24  # 96 rows, batch 4

    def nan_at_epoch_2_step_7(*args, **kwargs):
        out = real(*args, **kwargs)
        nan_at_epoch_2_step_7.calls += 1
        bad = nan_at_epoch_2_step_7.calls == steps_per_epoch + 8
        return out._replace(loss=out.loss * float("nan")) if bad else out

    nan_at_epoch_2_step_7.calls = 0
    monkeypatch.setattr(kd, "kd_loss", nan_at_epoch_2_step_7)
    out = setup["root"] / "nan"
    assert main([*setup["argv"], "--output-dir", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "epoch 2/2: the loss became nan at step 7 (batch 8 of the epoch)" in last, last
    assert "learning rate is the likely cause: lower --learning-rate" in last
    (partial,) = out.glob("*.partial")
    history = json.loads((partial / "history.json").read_text())
    assert "loss became nan" in history["failed"] and history["best"]["epoch"] == 1
    # The checkpoint before the bad step is kept, its weights finite.
    (checkpoint,) = (partial / "checkpoints").iterdir()
    assert checkpoint.name == "epoch-2-step-5"
    from safetensors.torch import load_file

    saved = load_file(checkpoint / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())
    # best_model/ is epoch 1's, as the reference run's is after its first epoch.
    best = load_file(partial / "best_model" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in best.values())
    assert not (partial / "final_model").exists()

    # Resuming with other flags is refused in one line; with the same ones it goes on.
    monkeypatch.setattr(kd, "kd_loss", real)
    assert (
        main(
            [
                *setup["argv"],
                "--output-dir",
                str(out),
                "--resume-from",
                str(partial),
                "--temperature",
                "2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "started with --temperature 3.0, this command has --temperature 2.0" in err[0]
    )
    assert main([*setup["argv"], "--output-dir", str(out), "--resume-from", str(partial)]) == 0
    (run,) = out.iterdir()
    assert_same_run(run, setup["reference"])


def test_nan_message_names_fp16_overflow_under_fp16():
    from types import SimpleNamespace

    from kdistill.errors import KdistillError
    from kdistill.training.loop import check_finite

    accelerator = SimpleNamespace(num_processes=1, mixed_precision="fp16")
    optimizer = SimpleNamespace(param_groups=[{"lr": 5e-5}])
    check_finite(torch.tensor(1.5), accelerator, optimizer, "epoch 1/3", 0)  # finite: no error
    with pytest.raises(KdistillError, match=r"became inf at step 4 .*fp16 overflow"):
        check_finite(torch.tensor(float("inf")), accelerator, optimizer, "epoch 1/3", 4)


def test_resume_flags_are_checked(setup, capsys, tmp_path):
    argv = [*setup["argv"], "--output-dir", str(tmp_path)]
    assert main([*argv, "--resume", "--resume-from", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*argv, "--resume-from", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main([*argv, "--resume-from", str(setup["reference"])]) == 2
    assert "complete; nothing to resume" in capsys.readouterr().err
    assert main([*argv, "--save-steps", "-1"]) == 2
    assert "--save-steps must be >= 0" in capsys.readouterr().err
