"""--round-targets: the relabeller's confidence weights or filters a self-training round's
transfer rows, and the weights reach the loss."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from kdistill.training.losses import kd_loss
from kdistill.training.round_targets import (
    WeightedTargets,
    confidence,
    confidence_weights,
    keep_confident,
)


def probs_logits(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows).log()


def test_confidence_weights_follow_the_largest_probability_with_mean_one():
    logits = probs_logits([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.5, 0.25, 0.25]])
    assert torch.allclose(confidence(logits), torch.tensor([0.9, 0.4, 0.5]))
    w = confidence_weights(logits)
    assert torch.allclose(w.mean(), torch.tensor(1.0))
    assert torch.allclose(w, torch.tensor([0.9, 0.4, 0.5]) / 0.6)


def test_filter_drops_unsure_rows_but_never_empties_a_class():
    # Class 0: two confident rows, one unsure; class 1: four rows, all unsure.
    logits = probs_logits(
        [
            [0.9, 0.1],
            [0.8, 0.2],
            [0.55, 0.45],
            [0.45, 0.55],
            [0.4, 0.6],
            [0.35, 0.65],
            [0.48, 0.52],
        ]
    )
    kept, record = keep_confident(logits, threshold=0.7, min_share=0.5)
    # Class 0 keeps its confident rows (2 >= its floor of 2); class 1 none over 0.7, so its
    # floor keeps its two most confident: rows 5 (0.65) and 4 (0.6).
    assert kept == [0, 1, 4, 5]
    assert record["kept_rows"] == 4 and record["kept_by_floor"] == {"1": 2}
    assert record["threshold"] == 0.7


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 3)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.emb(input_ids).mean(1))  # (batch, 3)


def test_the_step_trains_on_the_weighted_loss():
    """train_step reads WeightedTargets' weights: its loss is kd_loss with them."""
    from accelerate import Accelerator

    from kdistill.training.loop import train_step

    torch.manual_seed(0)
    student, accelerator = Toy(), Accelerator(cpu=True)
    logits = torch.randn(6, 3) * 2
    weights = torch.tensor([0.2, 1.8, 1.0, 0.5, 1.5, 1.0])
    batch = {
        "student_input_ids": torch.randint(0, 10, (4, 5)),
        "student_attention_mask": torch.ones(4, 5, dtype=torch.long),
        "labels": torch.full((4,), -100),
        "row": torch.tensor([5, 1, 3, 0]),
    }
    with torch.no_grad():
        s = student(batch["student_input_ids"], None).logits
    rows = batch["row"]
    expected = kd_loss(s, logits[rows], batch["labels"], 1.0, 1.0, weights[rows]).loss
    plain = kd_loss(s, logits[rows], batch["labels"], 1.0, 1.0).loss
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    targets = WeightedTargets(logits, weights)
    parts = train_step(
        student, targets, batch, optimizer, scheduler, accelerator, 1.0, 1.0, ("t", 0)
    )
    assert torch.allclose(parts.loss, expected, atol=1e-6)
    assert not torch.allclose(expected, plain, atol=1e-4)  # the weights changed the loss
