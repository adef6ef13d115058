"""distill's self-training flags (--rounds): after Gera et al. 2022, a zero-shot teacher's
labels refined by the students it teaches."""

from __future__ import annotations

from dataclasses import dataclass

from kdistill.config.common import _check, _opt


@dataclass
class SelfTrainingOptions:
    """Rounds of relabelling the transfer set, each training a fresh student."""

    rounds: int = _opt(
        1,
        "Self-training rounds: after a round, its student joins the teacher (an equal-weight "
        "ensemble) to relabel the transfer set, and a fresh student learns from that. Stops "
        "early when a round's agreement with the previous round's labels changes by under a "
        "point. Each round is a run folder under one rounds folder, with rounds.json.",
    )
    round_targets: str = _opt(
        "soft",
        "With --rounds: what the relabelled rounds (2 on) learn from. soft: every transfer row's "
        "soft targets at full weight; weighted: each row's KD term times the relabeller's "
        "confidence (its largest class probability), normalised to mean 1; filtered: rows under "
        "--round-min-confidence dropped, each class keeping at least its most confident fifth. "
        "Round 1 (the teacher alone) is always soft.",
        choices=["soft", "weighted", "filtered"],
    )
    round_min_confidence: float = _opt(
        0.5,
        "--round-targets filtered: the relabeller's largest class probability a transfer row "
        "needs to be kept, in (0, 1).",
    )

    def _check_round_targets(self) -> None:
        """--rounds, --round-targets and --round-min-confidence."""
        _check(1 <= self.rounds <= 10, f"--rounds must be in [1, 10] (got {self.rounds})")
        allowed = ("soft", "weighted", "filtered")
        _check(
            self.round_targets in allowed,
            f"--round-targets must be one of {', '.join(allowed)} (got {self.round_targets})",
        )
        _check(
            0.0 < self.round_min_confidence < 1.0,
            f"--round-min-confidence must be in (0, 1) (got {self.round_min_confidence})",
        )
        if self.round_targets == "soft":
            return
        _check(
            self.teacher_cache != "off",
            f"--round-targets {self.round_targets} reads the relabeller's answers on the whole "
            "transfer set before training; drop --teacher-cache off",
        )
        _check(
            not (self.round_targets == "weighted" and self.uses_intermediate()),
            "--round-targets weighted weights the KD term per row, which the --hidden-loss / "
            "--attention-loss step does not; use filtered or soft",
        )
