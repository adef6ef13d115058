"""The run-time estimate logged before training: present, positive, in the right ballpark."""

from __future__ import annotations

import json
import logging
import re

from test_distill import run_distill, seed_quick_test

from kdistill.training.estimate import TimeEstimate, log_estimate

LINE = re.compile(
    r"estimated time on cpu: teacher pass (\S+) \(([\d.]+) s/row\), (\S+) per epoch "
    r"\((\d+) steps at ([\d.]+) s/step\), (\S+) in all for 2 epoch\(s\)"
)


def test_the_estimate_is_logged_before_training(workdir, tiny_models, caplog):
    caplog.set_level(logging.INFO)
    run = run_distill(seed_quick_test(tiny_models["bert_teacher"], tiny_models["bert_student"]))
    messages = [r.getMessage() for r in caplog.records]
    found = [i for i, m in enumerate(messages) if LINE.fullmatch(m)]
    assert len(found) == 1, [m for m in messages if "estimated" in m]
    # Before the teacher pass over the training rows and the first epoch.
    first_epoch = next(i for i, m in enumerate(messages) if m.startswith("epoch 1:"))
    assert found[0] < first_epoch
    history = json.loads((run / "history.json").read_text())
    estimate = history["time_estimate"]
    assert estimate["steps_per_epoch"] == 48  # 96 training rows, batch 2
    assert estimate["step_s"] > 0 and estimate["teacher_s_per_row"] > 0
    assert estimate["total_s"] > estimate["teacher_pass_s"] > 0
    # A sane factor of what the epochs took (a loaded 2-core machine: not a tight bound).
    trained = history["total_time_s"]
    assert trained / 20 < estimate["epochs"] * estimate["epoch_s"] < trained * 20, (
        estimate,
        trained,
    )


def test_a_long_run_is_warned_with_the_flags_that_shorten_it(caplog):
    caplog.set_level(logging.INFO)
    log_estimate(TimeEstimate(600.0, 1800.0, 3, 2.5, 700, 0.06), "cpu")
    info, warning = caplog.records
    assert info.getMessage() == (
        "estimated time on cpu: teacher pass 10m00s (0.060 s/row), 30m00s per epoch (700 steps "
        "at 2.500 s/step), 1h40m00s in all for 3 epoch(s)"
    )
    assert warning.levelname == "WARNING"
    for flag in ("--max-train-samples", "--epochs", "--max-length", "--student-model", "GPU"):
        assert flag in warning.getMessage()
    caplog.clear()
    log_estimate(TimeEstimate(0.0, 60.0, 2, 0.1, 600, None), "cuda")
    (only,) = caplog.records
    assert only.getMessage().startswith("estimated time on cuda: 1m00s per epoch")
