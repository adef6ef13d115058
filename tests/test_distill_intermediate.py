"""distill with intermediate-layer losses and a calibrated teacher, end to end on tiny models:
a 64-wide, 4-head BERT teacher and a 32-wide, 2-head random student sharing its tokenizer."""

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from test_distill import run_distill, seed_quick_test


@pytest.fixture()
def narrow_student(tmp_path, tiny_models) -> Path:
    """A config-only folder (random weights) with the teacher's own tokenizer files (training
    a WordPiece again gives other ids)."""
    from transformers import AutoTokenizer, BertConfig

    path = tmp_path / "narrow-student"
    tok = AutoTokenizer.from_pretrained(tiny_models["bert_teacher"])
    tok.save_pretrained(path)
    BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
    ).save_pretrained(path)
    return path


def _weights(folder: Path) -> set[str]:
    with safe_open(folder / "model.safetensors", "pt") as f:
        return set(f.keys())


def test_hidden_and_relation_losses_end_to_end(workdir, tiny_models, narrow_student):
    run = run_distill(
        seed_quick_test(
            tiny_models["bert_teacher"],
            narrow_student,
            "--hidden-loss",
            "mse",
            "--attention-loss",
            "relation",
            "--hidden-weight",
            "0.5",
            "--attention-weight",
            "2",
        )
    )
    config = json.loads((run / "config.json").read_text())
    record = config["resolved"]["intermediate"]
    assert record["layer_map"] == "emb:emb,0:0,1:1"  # 2 blocks to 2 blocks, uniformly
    assert record["hidden_over"] == "tokens"  # one tokenizer
    assert record["relation_layers"] == "1:1" and record["relation_heads"] == 2
    assert record["projection_parameters"] == 3 * (32 * 64 + 64)  # one Linear per pair
    history = json.loads((run / "history.json").read_text())
    for e in history["epochs"]:
        assert e["train_hidden"] > 0 and e["train_relation"] > 0
        # All rows labelled: loss = 0.7 KL + 0.3 CE + 0.5 L_hidden + 2 L_rel, row means.
        expected = (0.7 * e["train_kl"] + 0.3 * e["train_ce"] + 0.5 * e["train_hidden"]) + 2 * e[
            "train_relation"
        ]
        assert e["train_loss"] == pytest.approx(expected, rel=1e-4)
    # The saved student is a plain BERT classifier: no projection, nothing unexpected.
    from transformers import AutoModelForSequenceClassification

    for name in ("best_model", "final_model"):
        assert not any("maps." in k or "projection" in k for k in _weights(run / name))
        model, info = AutoModelForSequenceClassification.from_pretrained(
            run / name, output_loading_info=True
        )
        assert not info["missing_keys"] and not info["unexpected_keys"]
        assert model.config.hidden_size == 32


def test_teacher_calibration_and_auto_temperature_are_recorded(workdir, tiny_models):
    """Also an online teacher (--teacher-cache off) and a student with its own tokenizer folder."""
    run = run_distill(
        seed_quick_test(
            tiny_models["bert_teacher"],
            tiny_models["bert_student"],
            "--teacher-calibration",
            "auto",
            "--temperature",
            "auto",
            "--epochs",
            "1",
            "--hidden-loss",
            "cosine",
            "--teacher-cache",
            "off",
        )
    )
    assert "_Tauto_" in run.name
    config = json.loads((run / "config.json").read_text())
    resolved = config["resolved"]
    assert config["temperature"] == "auto"  # the flag as given; a resume passes it again
    assert resolved["teacher_calibration_temperature"] > 0
    assert 1.0 <= resolved["temperature"] <= 20.0
    history = json.loads((run / "history.json").read_text())
    assert (
        history["teacher"]["calibration_temperature"] == resolved["teacher_calibration_temperature"]
    )
    assert history["teacher"]["temperature"] == resolved["temperature"]
    card = (run / "best_model" / "README.md").read_text()
    assert "(auto)" in card and "T_cal" in card
    # The toy BERTs share one written-out WordPiece vocabulary (tests/conftest.py), so their
    # tokenizers split every text alike: token by token. Different tokenizers, compared
    # mean-pooled, are tested in test_intermediate_losses.py.
    assert resolved["intermediate"]["hidden_over"] == "tokens"
    assert resolved["intermediate"]["projection_parameters"] == 0  # both 64 wide
    assert history["epochs"][0]["train_hidden"] > 0
