"""DistillationTrainer: a kdistill teacher inside a transformers.Trainer. Its loss is kd_loss on
the same batch, it trains a student while the teacher stays bit-identical, and what it saves is
a run directory the CLI's predict, compare and runs read."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CLASSES, make_texts

from kdistill import DistillationArguments, DistillationTrainer, kd_loss, load_teacher
from kdistill.errors import KdistillError


def toy_split(tokenizer, n_per_class: int, seed: int):
    """The toy classes as a Trainer script would have them: raw text kept, the student's
    tokenisation beside it, integer labels in `label`."""
    from datasets import Dataset

    rows = make_texts(n_per_class, seed)
    ds = Dataset.from_dict(
        {"text": [t for t, _ in rows], "label": [CLASSES.index(y) for _, y in rows]}
    )
    return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=64), batched=True)


def student(tiny_models, seed: int = 0):
    from kdistill.students.load import load_student

    return load_student(str(tiny_models["bert_student"]), CLASSES, seed=seed)


def online_teacher_logits(teacher, texts: list[str]) -> torch.Tensor:
    """The teacher run on these texts now, one batch, no cache: what the cache must equal."""
    enc = teacher.encode(texts, 128)
    padded = teacher.tokenizer.pad(enc, return_tensors="pt")
    return teacher.logits(
        {
            "teacher_input_ids": padded["input_ids"],
            "teacher_attention_mask": padded["attention_mask"],
        }
    )


def args(tmp_path, **extra) -> DistillationArguments:
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=3e-3,
        report_to="none",
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        temperature=2.0,
        alpha=0.6,
        seed=0,
    )
    return DistillationArguments(**{**base, **extra})


@pytest.mark.parametrize(
    ("kind", "remove_unused_columns"),
    [("classifier", True), ("classifier", False), ("prompt", True)],
)
def test_loss_is_kd_loss_on_the_same_batch(tmp_path, tiny_models, kind, remove_unused_columns):
    model, tok = student(tiny_models)
    train = toy_split(tok, 6, seed=0)
    teacher_path = tiny_models["bert_teacher"] if kind == "classifier" else tiny_models["qwen_lm"]
    teacher = load_teacher(str(teacher_path), CLASSES, mode=kind)
    trainer = DistillationTrainer(
        model=model,
        teacher=teacher,
        train_dataset=train,
        processing_class=tok,
        args=args(tmp_path, remove_unused_columns=remove_unused_columns),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert "text" not in batch and batch["kd_row"].shape == batch["labels"].shape
    model.train()
    torch.manual_seed(0)  # the same dropout draw for both forward passes
    loss = trainer.compute_loss(model, batch)
    torch.manual_seed(0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rows = batch["kd_row"].tolist()
    for i, row in enumerate(rows):  # kd_row names the row the student's inputs came from
        kept = batch["attention_mask"][i].bool()
        assert batch["input_ids"][i][kept].tolist() == train[row]["input_ids"]
    texts = [train[row]["text"] for row in rows]
    with torch.no_grad():
        targets = online_teacher_logits(teacher, texts)
    expected = kd_loss(logits, targets, batch["labels"], 2.0, 0.6).loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # The cache is the teacher's logits row for row, in the student's class order.
    assert torch.allclose(trainer.teacher_logits[batch["kd_row"]], targets, atol=1e-5)


def test_it_trains_the_student_and_saves_a_run_the_cli_reads(
    workdir, tiny_models, trained_teacher, capsys
):
    from kdistill.cli import main

    model, tok = student(tiny_models)
    train, val = toy_split(tok, 30, seed=0), toy_split(tok, 10, seed=9)
    teacher = load_teacher(str(trained_teacher), CLASSES)
    teacher_before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = DistillationTrainer(
        model=model,
        teacher=teacher,
        train_dataset=train,
        eval_dataset=val,
        processing_class=tok,
        args=args(workdir, num_train_epochs=4, output_dir="outputs/kd"),
    )
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 4 * 15  # 120 rows, batch 8, 4 epochs
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert any(not torch.equal(student_before[k], v) for k, v in model.state_dict().items())
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(teacher_before[k], v), k

    run = trainer.save_run("toy")
    assert run.name.startswith("toy_T2.0_A0.6_") and not list(run.parent.glob("*.partial"))
    config = json.loads((run / "config.json").read_text())
    history = json.loads((run / "history.json").read_text())
    assert config["kind"] == "distill" and config["data"]["label_names"] == CLASSES
    assert config["teacher"]["mode"] == "classifier" and config["data"]["train_rows"] == 120
    assert 0.5 < history["best"]["val_accuracy"] <= 1.0  # measured on val, 4 classes
    assert history["teacher"]["val_accuracy"] > 0.5
    assert (run / "best_model" / "model.safetensors").is_file()
    assert (run / "best_model" / "README.md").is_file()  # the model card
    assert (run / "training_curves.png").stat().st_size > 0

    # The CLI takes it as it takes a distill run: predict, compare, runs.
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--text", "the film starring a cast"]) == 0
    assert (
        main(
            [
                "compare",
                "--dataset",
                "toy",
                "--teacher-model",
                str(trained_teacher),
                "--student-model",
                str(run),
                "--split",
                "validation",
                "--repeats",
                "1",
                "--mixed-precision",
                "no",
            ]
        )
        == 0
    )
    results = json.loads(next((workdir / "outputs").rglob("comparison_results.json")).read_text())
    mine = next(m for m in results["models"] if m["role"] == "student")
    assert mine["run_dir"] == str(run) and 0.0 <= mine["accuracy"] <= 1.0
    capsys.readouterr()
    assert main(["runs", "--output-dir", "outputs/kd", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["status"] == "completed"
    assert listed["best_val_accuracy"] == pytest.approx(history["best"]["val_accuracy"])


def test_the_teacher_comes_from_the_arguments_and_bad_input_is_one_line(tmp_path, tiny_models):
    model, tok = student(tiny_models)
    train = toy_split(tok, 3, seed=0)
    trainer = DistillationTrainer(
        model=model,
        train_dataset=train,
        processing_class=tok,
        args=args(tmp_path, teacher_model=str(tiny_models["bert_teacher"])),
    )
    assert trainer.teacher.mode == "classifier" and trainer.teacher_logits.shape == (12, 4)
    with pytest.raises(KdistillError, match="'text' column"):
        DistillationTrainer(
            model=model,
            teacher=trainer.teacher,
            processing_class=tok,
            train_dataset=train.remove_columns("text"),
            args=args(tmp_path),
        )
    with pytest.raises(KdistillError, match="no teacher"):
        DistillationTrainer(model=model, train_dataset=train, args=args(tmp_path))
    with pytest.raises(KdistillError, match="teacher_logits has shape"):
        DistillationTrainer(
            model=model, train_dataset=train, args=args(tmp_path), teacher_logits=torch.zeros(5, 4)
        )
    with pytest.raises(KdistillError, match=r"alpha must be in \[0, 1\]"):
        args(tmp_path, alpha=1.5)
    with pytest.raises(KdistillError, match="teacher_cache='sometimes'"):
        args(tmp_path, teacher_cache="sometimes")


def test_gradient_accumulation_takes_the_same_step_as_one_big_batch(tmp_path, tiny_models):
    """kd_loss is a per-batch mean: 2 micro-batches of 4 must move the student exactly as one
    batch of 8 (plain SGD, no clipping, no dropout, so the step is the gradient itself)."""
    teacher = load_teacher(str(tiny_models["bert_teacher"]), CLASSES)
    weights = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        model, tok = student(tiny_models)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        train = toy_split(tok, 4, seed=0)
        extra = dict(
            per_device_train_batch_size=batch_size,
            max_steps=1,
            optim="sgd",
            gradient_accumulation_steps=accumulation,
            max_grad_norm=0.0,
            lr_scheduler_type="constant",
            learning_rate=0.5,
        )
        trainer = DistillationTrainer(
            model=model,
            teacher=teacher,
            train_dataset=train,
            processing_class=tok,
            args=args(tmp_path, **extra),
        )
        trainer.train()
        weights.append(model.classifier.weight.detach().clone())
    before = student(tiny_models)[0].classifier.weight
    assert not torch.allclose(weights[0], before)  # the step is not nothing
    assert torch.allclose(weights[0], weights[1], atol=1e-6)
