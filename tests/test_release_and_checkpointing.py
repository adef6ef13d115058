"""What keeps the seed pair in memory: the teacher's weights are freed once its logits are
cached, before the student trains; gradient checkpointing is on when configured, and really
recomputes the student's layers in the backward pass."""

from __future__ import annotations

import importlib
from typing import Any

from test_distill import run_distill, seed_quick_test

from kdistill.training import loop

# The module, not the function `kdistill.distill` that the package exports under its name.
distill_module = importlib.import_module("kdistill.distill")


def spy_on_training(monkeypatch) -> dict[str, Any]:
    """Wraps the epoch loop to record, as the student starts training, whether the teacher
    still holds real weights and whether the student checkpoints; and, during the epoch, how
    often the student and its first layer run forward."""
    seen: dict[str, Any] = {"epochs": []}
    load_teacher, train = distill_module.load_frozen_teacher, distill_module.train_one_epoch

    def keep_teacher(*args, **kwargs):
        teacher, dtype = load_teacher(*args, **kwargs)
        seen["teacher"] = teacher
        return teacher, dtype

    def counted_epoch(student, *args, **kwargs):
        # A module inside the first layer: transformers checkpoints the layer's `forward`, so
        # the layer's own hooks fire once, but what it calls runs again in the backward pass.
        first = next(m for m in student.modules() if type(m).__name__.endswith("Layer"))
        layer = next(first.children())
        counts = {"student": 0, "layer": 0}
        hooks = [
            student.register_forward_hook(
                lambda *_: counts.__setitem__("student", counts["student"] + 1)
            ),
            layer.register_forward_hook(
                lambda *_: counts.__setitem__("layer", counts["layer"] + 1)
            ),
        ]
        weights = list(seen["teacher"].model.parameters())
        seen["epochs"].append(
            {
                "teacher_freed": all(p.is_meta for p in weights),
                "checkpointing": student.is_activation_checkpointing,
                "counts": counts,
            }
        )
        try:
            return train(student, *args, **kwargs)
        finally:
            for h in hooks:
                h.remove()

    monkeypatch.setattr(distill_module, "load_frozen_teacher", keep_teacher)
    monkeypatch.setattr(distill_module, "train_one_epoch", counted_epoch)
    return seen


def test_cached_teacher_is_freed_and_checkpointing_recomputes(workdir, tiny_models, monkeypatch):
    """auto over the (lowered) threshold: checkpointing on, each layer runs twice a step; the
    teacher's weights are gone (meta tensors) before the first student step."""
    monkeypatch.setattr(loop, "CHECKPOINTING_MIN_PARAMS", 0)
    seen = spy_on_training(monkeypatch)
    argv = seed_quick_test(tiny_models["bert_teacher"], tiny_models["bert_student"])
    argv[argv.index("--epochs") + 1] = "1"
    run_distill(argv)
    (epoch,) = seen["epochs"]
    assert epoch["teacher_freed"]
    assert epoch["checkpointing"] is True
    steps = epoch["counts"]["student"]
    assert steps > 0 and epoch["counts"]["layer"] == 2 * steps  # forward, then recomputed


def test_online_teacher_is_kept_and_checkpointing_off_is_off(workdir, tiny_models, monkeypatch):
    """--gradient-checkpointing off wins over auto's threshold; --teacher-cache off (the seed's
    online loop) needs the teacher every step, so its weights stay."""
    monkeypatch.setattr(loop, "CHECKPOINTING_MIN_PARAMS", 0)
    seen = spy_on_training(monkeypatch)
    argv = seed_quick_test(
        tiny_models["bert_teacher"],
        tiny_models["bert_student"],
        "--gradient-checkpointing",
        "off",
        "--teacher-cache",
        "off",
    )
    argv[argv.index("--epochs") + 1] = "1"
    run_distill(argv)
    (epoch,) = seen["epochs"]
    assert not epoch["teacher_freed"]
    assert epoch["checkpointing"] is False
    steps = epoch["counts"]["student"]
    assert steps > 0 and epoch["counts"]["layer"] == steps


def test_auto_leaves_small_students_alone(tiny_models):
    """auto at the real threshold (100M parameters): a tiny student trains without it."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert_student"])
    assert loop.apply_gradient_checkpointing(model, "auto") is False
    assert not model.is_activation_checkpointing
    assert loop.apply_gradient_checkpointing(model, "on") is True
    assert model.is_activation_checkpointing
