"""The distillation gain: each student's accuracy and macro-F1 minus a cross-entropy-only
baseline's, with paired 95% bootstrap intervals, counted only when the baseline is a fair one
(cross-entropy only, the same student on the same data, for at least as long).
"""

from __future__ import annotations

from typing import Any

import torch

ARCHITECTURE_KEYS = ("student_model", "student_layers", "student_num_layers")
# What the baseline must share with a student for the gain to measure distillation alone:
# (key in config.json's "data" or None for its top level, key, what to call it).
TRAINING_KEYS = (
    ("data", "source", "data set"),
    ("data", "train_rows", "labelled rows"),
    (None, "max_length", "max length"),
)


def baseline_problems(baseline: dict[str, Any]) -> list[str]:
    """Why the baseline is not a cross-entropy-only run (none when it is): alpha 0 and no
    teacher on any row. Runs written before alpha 0 meant that gave unlabelled rows T^2 * KL."""
    run_config = baseline.get("run_config")
    if not run_config:
        return [
            "the baseline has no distill config.json, so nothing shows it was trained on "
            "labels alone; pass the run directory of a distill --alpha 0 run"
        ]
    problems = []
    if run_config.get("alpha") != 0:
        problems.append(
            f"the baseline was trained with alpha {run_config.get('alpha')}, not 0: "
            "it learned from the teacher"
        )
    unlabeled = (run_config.get("data") or {}).get("unlabeled_rows")
    if unlabeled:
        problems.append(
            f"the baseline had {unlabeled} unlabelled rows, which learned from the teacher"
        )
    return problems


def baseline_differences(student: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """How a student's run differs from the baseline's in what the gain must hold fixed: the
    student architecture, the data set, its labelled rows and max length, and at least as many
    epochs for the baseline."""
    rs, rb = student.get("run_config"), baseline.get("run_config")
    if not rs:
        return [
            "the student has no distill config.json, so its student and data cannot be "
            "matched to the baseline's"
        ]
    if not rb:
        return []  # said once, in baseline_problems
    out = []
    for key in ARCHITECTURE_KEYS:
        if rs.get(key) != rb.get(key):
            out.append(f"{key} {rs.get(key)} vs the baseline's {rb.get(key)}")
    for section, key, what in TRAINING_KEYS:
        a = (rs.get(section) or {}) if section else rs
        b = (rb.get(section) or {}) if section else rb
        if a.get(key) != b.get(key):
            out.append(f"{what} {a.get(key)} vs the baseline's {b.get(key)}")
    # A baseline trained longer (best epoch kept) is a stronger one, so the gain over it can
    # only be understated; a shorter one would credit distillation with the extra epochs. With
    # few labels this matters: 3 epochs of 400 labelled rows are a tenth of the steps the
    # student takes over 4,000 rows of text, so a fair baseline gets more epochs.
    se, be = rs.get("epochs"), rb.get("epochs")
    if se != be and not (isinstance(se, int) and isinstance(be, int) and be > se):
        out.append(f"epochs {se} vs the baseline's {be} (a baseline needs at least as many)")
    return out


def add_intervals(
    models: list[dict[str, Any]],
    preds: dict[str, torch.Tensor],
    labels: torch.Tensor,
    num_labels: int,
    resamples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Each model's 95% bootstrap intervals (accuracy_ci, macro_f1_ci), every model scored on
    the same resamples of the rows; returns the resampled scores, for the paired gains."""
    from kdistill.evaluation.metrics import bootstrap_scores, interval

    y = labels.cpu().numpy()
    boot = bootstrap_scores(
        y, {n: p.cpu().numpy() for n, p in preds.items()}, num_labels, resamples, seed
    )
    for m in models:
        m["accuracy_ci"] = interval(boot[m["name"]]["accuracy"])
        m["macro_f1_ci"] = interval(boot[m["name"]]["macro_f1"])
    return boot


def _gain(
    student: dict[str, Any], baseline: dict[str, Any], boot: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """student - baseline in percentage points, with a paired 95% bootstrap interval: the
    difference on each resample of the same rows."""
    from kdistill.evaluation.metrics import interval

    out: dict[str, Any] = {"student": student["name"]}
    for metric in ("accuracy", "macro_f1"):
        diff = (boot[student["name"]][metric] - boot[baseline["name"]][metric]) * 100
        low, high = interval(diff)
        out[f"{metric}_points"] = (student[metric] - baseline[metric]) * 100
        out[f"{metric}_points_ci"] = [low, high]
        out[f"{metric}_within_noise"] = low <= 0.0 <= high
    return out


def distillation_gain(
    models: list[dict[str, Any]], boot: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """Each student's accuracy and macro-F1 minus the baseline's, in percentage points, with a
    paired bootstrap interval (`boot`: add_intervals' resampled scores).

    Only a fair baseline counts: cross-entropy only (alpha 0, no teacher on any row), the same
    student architecture, data set, labelled rows and max length as the student, and at least
    as many epochs. Anything else would fold that difference into the "gain" (more epochs,
    another student, a baseline that saw the teacher), so such a student gets no gain, and the
    differences are listed instead."""
    baseline = next((m for m in models if m["role"] == "baseline"), None)
    if baseline is None:
        return None
    problems = baseline_problems(baseline)
    gains, not_comparable = [], []
    for m in (m for m in models if m["role"] == "student"):
        differences = [*problems, *baseline_differences(m, baseline)]
        if differences:
            not_comparable.append({"student": m["name"], "differences": differences})
        else:
            gains.append(_gain(m, baseline, boot))
    return {
        "baseline": baseline["name"],
        "baseline_valid": not problems,
        "baseline_problems": problems,
        "students": gains,
        "not_comparable": not_comparable,
    }
