"""distill --rounds N: self-training from a zero-shot teacher (after Gera et al. 2022).

    round 1:  teacher                      labels the transfer set -> student 1
    round r:  ensemble(teacher, student r-1) relabels it            -> a fresh student r

Each round is an ordinary distill run (its own run folder, history.json, models), so predict,
compare and eval-teacher work on any of them. The student of round r-1 joins the teacher as an
equal-weight member of a teacher ensemble (a weighted geometric mean, `teachers.ensemble`): its
mistakes are not the teacher's, so where they agree the targets sharpen and where they differ
they soften. Each round's student trains with dropout on, so it is more than a copy of its
targets. --round-targets shapes the relabelled rounds' targets (`training.round_targets`): soft
(the default: every row at full weight), weighted by the relabeller's confidence, or filtered
to the rows it is confident on; round 1 learns from the teacher's soft targets whatever it is.

The rounds stop early when they stop changing anything: the share of transfer rows on which a
round's student gives the same class as the previous round's (round 1's: the teacher's, on the
held-out slice or the validation split) moves by under a point. The last round run is kept:
with no labels there is nothing to tell rounds apart by but agreement, which measures likeness,
not accuracy. rounds.json in the rounds folder records each round.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from kdistill.config import DistillConfig
from kdistill.files import atomic_write_json

logger = logging.getLogger(__name__)

STOP_CHANGE = 0.01  # stop when a round's agreement moves by less than a point


def run_rounds(config: DistillConfig, distill_once: Callable[[DistillConfig], Path]) -> Path:
    """Train `config.rounds` students in turn; returns the last round's run directory."""
    import json

    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    parent = Path(config.output_dir) / f"rounds_{stamp}"
    parent.mkdir(parents=True, exist_ok=False)
    teacher = config.teacher_model
    # The first teacher's logits are computed once and reused by every round's ensemble.
    cache = "disk" if config.teacher_cache == "auto" else config.teacher_cache
    base = dataclasses.replace(config, rounds=1, teacher_cache=cache)
    record: dict[str, Any] = {
        "rounds_asked": config.rounds,
        "teacher": teacher,
        "round_targets": config.round_targets,
        "round_min_confidence": config.round_min_confidence,
        "rounds": [],
    }
    previous: list[int] | None = None
    last_agreement: float | None = None
    run_dir = parent
    for r in range(1, config.rounds + 1):
        round_teacher = teacher if previous is None else f"{teacher},{run_dir / 'best_model'}"
        round_config = dataclasses.replace(
            base,
            output_dir=str(parent / f"round{r}"),
            teacher_model=round_teacher,
            # A student run is a classifier: each member's kind is found from its folder.
            teacher_mode=base.teacher_mode if previous is None else "auto",
            round_targets="soft" if previous is None else config.round_targets,
        )
        logger.info("self-training round %d/%d: teacher %s", r, config.rounds, round_teacher)
        run_dir = distill_once(round_config)
        history = json.loads((run_dir / "history.json").read_text())
        labels = student_labels(run_dir / "best_model", config)
        best = history.get("best") or {}
        if previous is None:  # the teacher's labels: its validation (or held-out) agreement
            agreement = best.get("val_accuracy")
        else:
            agreement = sum(a == b for a, b in zip(labels, previous, strict=True)) / len(labels)
        record["rounds"].append(round_record(r, run_dir, round_teacher, agreement, history))
        atomic_write_json(parent / "rounds.json", record)
        logger.info("round %d: agreement with the previous round's labels %s", r, agreement)
        if (
            last_agreement is not None
            and agreement is not None
            and abs(agreement - last_agreement) < STOP_CHANGE
        ):
            record["stopped"] = f"round {r}: agreement changed by under {STOP_CHANGE:.0%}"
            logger.info("self-training stops: %s", record["stopped"])
            break
        previous, last_agreement = labels, agreement
    record["final_run"] = str(run_dir)
    atomic_write_json(parent / "rounds.json", record)
    return run_dir


def round_record(
    r: int, run_dir: Path, teacher: str, agreement: float | None, history: dict[str, Any]
) -> dict[str, Any]:
    """What rounds.json records of one round."""
    best = history.get("best") or {}
    return {
        "round": r,
        "run": str(run_dir),
        "teacher": teacher,
        "agreement_with_previous": agreement,
        # kept rows, their relabeller's mean confidence (filtered: the class floor)
        "targets": history.get("targets"),
        "best_epoch": best.get("epoch"),
        "best_val_accuracy": best.get("val_accuracy"),
        "model_selection": history.get("model_selection"),
        "total_time_s": history.get("total_time_s"),
    }


def student_labels(model_dir: Path, config: DistillConfig) -> list[int]:
    """The student's class for every transfer row (the texts distill read, in order)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kdistill.data.unlabeled import load_unlabeled

    texts = list(
        load_unlabeled(
            config.unlabeled_data or config.dataset,
            config.unlabeled_text_column,
            config.max_unlabeled_samples,
            config.seed,
        )["text"]
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    out: list[int] = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            enc = tok(
                texts[i : i + 64],
                truncation=True,
                max_length=config.max_length,
                padding=True,
                return_tensors="pt",
            )
            out += model(**enc).logits.argmax(-1).tolist()
    return out
