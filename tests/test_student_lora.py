"""distill --student-lora: adapters train, the body does not, and what is saved is a plain
classifier with the adapters folded in, whose accuracy is the one history.json records."""

import json

import pytest
import torch
from conftest import CLASSES
from safetensors.torch import load_file
from test_cli import one_line_error
from test_distill import run_distill, seed_quick_test


def test_lora_student_trains_adapters_and_saves_them_merged(workdir, tiny_models):
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    student = tiny_models["bert_student"]
    extra = ["--student-lora", "4", "--learning-rate", "5e-3", "--epochs", "3"]
    run = run_distill(seed_quick_test(tiny_models["bert_teacher"], student, *extra))
    saved = load_file(run / "final_model" / "model.safetensors")
    # The student's own file may name its weights with or without the "bert." prefix.
    before = {
        f"bert.{k.removeprefix('bert.')}": v
        for k, v in load_file(student / "model.safetensors").items()
    }
    assert not [k for k in saved if "lora" in k or "base_layer" in k]
    assert not (run / "final_model" / "adapter_config.json").exists()
    query = "bert.encoder.layer.0.attention.self.query.weight"
    ffn = "bert.encoder.layer.0.intermediate.dense.weight"
    # The adapted projection moved (B @ A folded in); the rest of the body is the student's own.
    assert not torch.equal(saved[query], before[query])
    assert torch.equal(saved[ffn], before[ffn])
    assert torch.equal(
        saved["bert.embeddings.word_embeddings.weight"],
        before["bert.embeddings.word_embeddings.weight"],
    )
    config = json.loads((run / "config.json").read_text())
    assert config["student_lora"] == 4

    # The number in history.json is the saved (merged) model's.
    history = json.loads((run / "history.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(run / "best_model").eval()
    tok = AutoTokenizer.from_pretrained(run / "best_model")
    val = load_dataset("parquet", data_files=str(workdir / "data/toy/validation.parquet"))["train"]
    with torch.no_grad():
        enc = tok(list(val["text"]), padding=True, truncation=True, return_tensors="pt")
        preds = model(**enc).logits.argmax(-1)
    labels = torch.tensor([CLASSES.index(name) for name in val["label"]])
    accuracy = (preds == labels).float().mean().item()
    assert accuracy == pytest.approx(history["best"]["val_accuracy"], abs=1e-6)


def test_only_adapters_and_the_head_are_trainable(tiny_models):
    from transformers import AutoModelForSequenceClassification

    from kdistill.students.lora import add_lora, lora_targets, merged_copy
    from kdistill.training.loop import make_optimizer

    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_models["bert_student"], num_labels=len(CLASSES)
    )
    wrapped = add_lora(model, 4, 8.0, 0.0, lora_targets(model, None, "--student-lora"))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert any("classifier" in n for n in trainable)
    optimizer = make_optimizer(wrapped, 1e-3, 0.01, head_lr_scale=10.0)
    head = [g for g in optimizer.param_groups if g["lr"] == pytest.approx(1e-2)]
    head_ids = {id(p) for g in head for p in g["params"]}
    assert head_ids == {
        id(p) for n, p in wrapped.named_parameters() if p.requires_grad and "classifier" in n
    }  # peft's name prefix does not make the body look like the head
    copy = merged_copy(wrapped)
    assert not [n for n, _ in copy.named_parameters() if "lora_" in n]
    assert [n for n, _ in wrapped.named_parameters() if "lora_" in n]  # still training


def test_bad_rank_is_one_line(capsys):
    err = one_line_error(capsys, ["distill", "--student-lora", "-1"])
    assert "--student-lora must be >= 0" in err


def test_lockstep_names_student_lora():
    from kdistill.config import SweepConfig
    from kdistill.training.lockstep import unsupported_reason

    assert "--student-lora" in unsupported_reason(SweepConfig(student_lora=8))


def test_a_bf16_checkpoint_trains_on_float32_master_weights(tmp_path, tiny_models):
    """Qwen2.5-0.5B is published in bf16, and transformers 5 loads a checkpoint in its own
    dtype. On bf16 weights AdamW's small updates round away; the student must train in float32
    (mixed precision computes in bf16 from those weights)."""
    from transformers import AutoModelForCausalLM

    from kdistill.students.load import load_student

    folder = tmp_path / "bf16-lm"
    AutoModelForCausalLM.from_pretrained(tiny_models["qwen_lm"]).to(torch.bfloat16).save_pretrained(
        folder
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_models["qwen_lm"] / name).read_bytes())
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    model, _ = load_student(str(folder), CLASSES, 0)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # What bf16 would have lost: an update of a quarter of a bf16 step leaves the weight as it
    # was in bf16 and moves it in float32.
    w = torch.tensor([0.02])
    step = 0.25 * 0.02 * 2**-7
    assert (w.bfloat16() - step).item() == w.bfloat16().item()
    assert (w - step).item() != w.item()
