"""The distillation gain: each student's accuracy and macro-F1 minus a cross-entropy-only
baseline's, with paired 95% bootstrap intervals, counted only when the baseline is a fair one:
cross-entropy only, the same student on the same data, trained for at least as many optimizer
steps with the same learning rate, batch size, schedule and tokenizer. What was matched and what
still differs (seed, epochs, rows seen) is named beside each gain.
"""

from __future__ import annotations

from typing import Any

import torch

ARCHITECTURE_KEYS = ("student_model", "student_layers", "student_num_layers")
# What the baseline must share with a student for the gain to measure distillation alone:
# (key in config.json's "data"/"resolved" or None for its top level, key, what to call it).
TRAINING_KEYS = (
    ("data", "source", "data set"),
    ("data", "train_rows", "labelled rows"),
    (None, "max_length", "max length"),
    (None, "student_tokenizer", "tokenizer"),
    (None, "learning_rate", "learning rate"),
    ("resolved", "effective_batch_size", "batch size"),
    (None, "lr_scheduler", "schedule"),
    (None, "warmup_ratio", "warm-up ratio"),
    (None, "weight_decay", "weight decay"),
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


def training_budget(model: dict[str, Any]) -> dict[str, int | None]:
    """How much training a run had: optimizer steps (config.json's resolved
    total_optimizer_steps), rows seen (history.json's train_samples summed over its epochs,
    labelled and unlabelled) and epochs; None where the run does not record it."""
    run_config = model.get("run_config") or {}
    epochs = (model.get("history") or {}).get("epochs") or []
    seen = [e.get("train_samples") for e in epochs]
    return {
        "optimizer_steps": (run_config.get("resolved") or {}).get("total_optimizer_steps"),
        "rows_seen": sum(seen) if seen and None not in seen else None,
        "epochs": run_config.get("epochs"),
    }


def _section(run_config: dict[str, Any], section: str | None) -> dict[str, Any]:
    return (run_config.get(section) or {}) if section else run_config


def baseline_differences(
    student: dict[str, Any], baseline: dict[str, Any]
) -> tuple[list[str], list[str], list[str]]:
    """How a student's run stands against the baseline's: (differences that make the gain
    unfair, differences named beside it, what matched).

    Unfair: another student architecture, data set, labelled rows, max length, tokenizer,
    learning rate, batch size or schedule, or fewer optimizer steps for the baseline (the gain
    would take in the extra training: 3 epochs over 3,800 rows of text are ten times the steps
    of 3 epochs over its 380 labelled rows). Named: more steps for the baseline (a stronger
    baseline, so the gain can only be understated), other rows seen, epochs or seed (the paired
    interval covers the test rows, not a seed's spread)."""
    rs, rb = student.get("run_config"), baseline.get("run_config")
    if not rs:
        return (
            [
                "the student has no distill config.json, so its student and data cannot be "
                "matched to the baseline's"
            ],
            [],
            [],
        )
    if not rb:
        return [], [], []  # said once, in baseline_problems
    unfair, named, matched = [], [], []
    for key in ARCHITECTURE_KEYS:
        if rs.get(key) != rb.get(key):
            unfair.append(f"{key} {rs.get(key)} vs the baseline's {rb.get(key)}")
    if not unfair:
        matched.append("student")
    for section, key, what in TRAINING_KEYS:
        a, b = _section(rs, section).get(key), _section(rb, section).get(key)
        if a != b:
            unfair.append(f"{what} {a} vs the baseline's {b}")
        elif a is not None:
            matched.append(f"{what} {a}")
    budget = _compare_budgets(training_budget(student), training_budget(baseline))
    unfair, named, matched = unfair + budget[0], named + budget[1], matched + budget[2]
    if rs.get("seed") != rb.get("seed"):
        named.append(
            f"seed {rs.get('seed')} vs the baseline's {rb.get('seed')} (the interval covers "
            "the test rows, not the seeds' spread)"
        )
    elif rs.get("seed") is not None:
        matched.append(f"seed {rs.get('seed')}")
    return unfair, named, matched


def _compare_budgets(
    student: dict[str, int | None], baseline: dict[str, int | None]
) -> tuple[list[str], list[str], list[str]]:
    """(unfair, named, matched) in optimizer steps, rows seen and epochs: fewer steps for the
    baseline, or steps not recorded, are unfair; the rest is named or matched."""
    unfair, named, matched = [], [], []
    s, b = student["optimizer_steps"], baseline["optimizer_steps"]
    if s is None or b is None:
        unfair.append(
            "optimizer steps not recorded (a config.json without resolved "
            "total_optimizer_steps); retrain with this kdistill"
        )
    elif b < s:
        unfair.append(
            f"optimizer steps {s} vs the baseline's {b} (a fair baseline trains for at least "
            "as many: give it more --epochs)"
        )
    elif b > s:
        named.append(f"optimizer steps {s} vs the baseline's {b} ({100 * (b / s - 1):+.1f}%)")
    else:
        matched.append(f"optimizer steps {s}")
    for key, what in (("rows_seen", "rows seen"), ("epochs", "epochs")):
        s, b = student[key], baseline[key]
        if s == b and s is not None:
            matched.append(f"{what} {s}")
        elif s != b:
            named.append(f"{what} {s} vs the baseline's {b}")
    return unfair, named, matched


def run_recipe(run_config: dict[str, Any] | None) -> str | None:
    """How a run made its student, in one line: layers, loss (alpha, T, intermediate losses)
    and training rows, e.g. 'layers 0,5; KD alpha 0.7 T 3 + hidden mse; 380 labelled + 3,420
    unlabelled rows; 714 steps'. Two students whose run names differ only by a timestamp are
    told apart by this. None without a run config."""
    if not run_config:
        return None
    resolved, data = run_config.get("resolved") or {}, run_config.get("data") or {}
    if run_config.get("student_layers"):
        layers = f"layers {run_config['student_layers']}"
    elif run_config.get("student_num_layers"):
        layers = f"{run_config['student_num_layers']} layers"
    else:
        layers = "all layers"
    loss = _loss_recipe(run_config.get("alpha"), run_config.get("temperature"), resolved)
    rows = f"{data.get('train_rows', 0) or 0:,} labelled"
    if data.get("unlabeled_rows"):
        rows += f" + {data['unlabeled_rows']:,} unlabelled"
    steps = resolved.get("total_optimizer_steps")
    epochs = run_config.get("epochs")
    parts = [layers, loss, f"{rows} rows", f"{epochs} epoch{'' if epochs == 1 else 's'}"]
    if steps is not None:
        parts.append(f"{steps} steps")
    return "; ".join(parts)


def _loss_recipe(alpha: Any, temperature: Any, resolved: dict[str, Any]) -> str:
    """'CE only', or 'KD alpha 0.7 T 3' with any hidden-state and attention terms."""
    if alpha == 0:
        return "CE only"
    # --temperature auto: the T the run picked on validation.
    t = resolved.get("temperature") or temperature
    loss = f"KD alpha {alpha} T {t}"
    intermediate = resolved.get("intermediate") or {}
    for kind in ("hidden", "attention"):
        name = intermediate.get(f"{kind}_loss")
        if name not in (None, "none"):
            loss += f" + {kind} {name} x{intermediate.get(f'{kind}_weight', 1)}"
    return loss


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
    student: dict[str, Any],
    baseline: dict[str, Any],
    boot: dict[str, dict[str, Any]],
    named: list[str],
    matched: list[str],
) -> dict[str, Any]:
    """student - baseline in percentage points, with a paired 95% bootstrap interval: the
    difference on each resample of the same rows; with what the two runs matched and what
    still differs."""
    from kdistill.evaluation.metrics import interval

    out: dict[str, Any] = {"student": student["name"]}
    for metric in ("accuracy", "macro_f1"):
        diff = (boot[student["name"]][metric] - boot[baseline["name"]][metric]) * 100
        low, high = interval(diff)
        out[f"{metric}_points"] = (student[metric] - baseline[metric]) * 100
        out[f"{metric}_points_ci"] = [low, high]
        out[f"{metric}_within_noise"] = low <= 0.0 <= high
    out["matched"], out["differs"] = matched, named
    out["budget"] = {"student": training_budget(student), "baseline": training_budget(baseline)}
    return out


def distillation_gain(
    models: list[dict[str, Any]], boot: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """Each student's accuracy and macro-F1 minus the baseline's, in percentage points, with a
    paired bootstrap interval (`boot`: add_intervals' resampled scores).

    Only a fair baseline counts: cross-entropy only (alpha 0, no teacher on any row), the same
    student architecture, data set, labelled rows, max length, tokenizer, learning rate, batch
    size and schedule as the student, and at least as many optimizer steps. Anything else
    would fold that difference into the "gain" (more training, another student, a baseline
    that saw the teacher), so such a student gets no gain, and the differences are listed
    instead. A fair gain names what matched and what still differs (seed, epochs, rows seen)."""
    baseline = next((m for m in models if m["role"] == "baseline"), None)
    if baseline is None:
        return None
    problems = baseline_problems(baseline)
    gains, not_comparable = [], []
    for m in (m for m in models if m["role"] == "student"):
        unfair, named, matched = baseline_differences(m, baseline)
        differences = [*problems, *unfair]
        if differences:
            not_comparable.append({"student": m["name"], "differences": differences})
        else:
            gains.append(_gain(m, baseline, boot, named, matched))
    return {
        "baseline": baseline["name"],
        "baseline_valid": not problems,
        "baseline_problems": problems,
        "students": gains,
        "not_comparable": not_comparable,
    }
