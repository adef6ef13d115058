"""--trim-vocab: the student's vocabulary cut to its data, embedding rows and tokenizer remapped
together, and the saved student still an ordinary Hugging Face classifier."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import make_texts
from test_distill import run_distill, seed_quick_test

from kdistill.cli import main


def arch_student(tmp_path: Path, vocab_size: int) -> Path:
    """A config-only BERT (random init, like examples/students/bert-tiny)."""
    from transformers import BertConfig

    arch = tmp_path / "arch"
    BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    ).save_pretrained(arch)
    return arch


def test_trim_keeps_the_datas_tokens_and_their_rows(tiny_models):
    """New id i is old id kept_ids[i]: the data tokenises to the same tokens, the embedding
    keeps exactly those rows (pretrained values intact), unseen words map to [UNK]."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kdistill.students.vocab import trim_student

    path = tiny_models["bert_teacher"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    rows = torch.nn.Embedding.from_pretrained(model.get_input_embeddings().weight.clone())
    # Only two classes' words: a real cut, not the whole toy vocabulary.
    seen = [t for t, label in make_texts(20, seed=3) if label in ("Animal", "Film")]
    val = seen[:5]
    new_tok, trim = trim_student(model, tok, seen, val, 128)

    assert len(new_tok) == len(trim.kept_ids) < len(tok)
    assert model.config.vocab_size == len(trim.kept_ids)
    assert model.get_input_embeddings().weight.shape[0] == len(trim.kept_ids)
    kept = list(trim.kept_ids)
    assert torch.equal(model.get_input_embeddings().weight, rows.weight[kept])
    for text in seen:
        new_ids = new_tok(text)["input_ids"]
        assert [kept[i] for i in new_ids] == tok(text)["input_ids"]
    # special tokens keep their roles under their new ids
    assert new_tok.pad_token_id == model.config.pad_token_id == kept.index(tok.pad_token_id)
    pieces = new_tok.convert_ids_to_tokens(new_tok(seen[0])["input_ids"])
    assert pieces == tok.convert_ids_to_tokens(tok(seen[0])["input_ids"])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    # "q" occurs only in the Company class's words: a word with it cannot be split any more
    assert new_tok("headquartered")["input_ids"][1] == new_tok.unk_token_id
    assert tok("headquartered")["input_ids"][1] != tok.unk_token_id
    assert model.config.kdistill_vocabulary["kept"] == len(kept)


def test_keep_top_tokens_adds_the_lowest_ids_after_the_data(tiny_models):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kdistill.students.vocab import trim_student

    path = tiny_models["bert_teacher"]
    tok = AutoTokenizer.from_pretrained(path)
    texts = ["bird bird fish"]
    plain = trim_student(
        AutoModelForSequenceClassification.from_pretrained(path), tok, texts, texts, 128
    )[1]
    topped = trim_student(
        AutoModelForSequenceClassification.from_pretrained(path), tok, texts, texts, 128, 10
    )[1]
    extra = sorted(set(topped.kept_ids) - set(plain.kept_ids))
    assert len(extra) == topped.from_top == 10
    lowest_free = [i for i in range(len(tok)) if i not in plain.kept_ids][:10]
    assert extra == lowest_free


def test_dbpedia_cut_of_the_minilm_vocabulary_splits_every_text_the_same(minilm_path, dbpedia_csv):
    """The real vocabulary on the real sample: every text splits into the same tokens, the cut
    keeps well under the full 30,522, and the held-out coverage is what the card reports."""
    from transformers import AutoTokenizer

    from kdistill.students.vocab import plan_trim, trim_tokenizer

    with dbpedia_csv.open() as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    tok = AutoTokenizer.from_pretrained(minilm_path)
    train, val = texts[:4000], texts[4000:]
    trim = plan_trim(tok, train, val, 128)
    assert len(trim.kept_ids) < 0.7 * len(tok)
    assert 0.9 < trim.heldout_coverage < 1.0
    trimmed = trim_tokenizer(tok, trim.kept_ids)
    old = tok(texts, truncation=True, max_length=128)["input_ids"]
    new = trimmed(texts, truncation=True, max_length=128)["input_ids"]
    kept = trim.kept_ids
    assert all([kept[i] for i in n] == o for n, o in zip(new, old, strict=True))


def test_random_init_student_ships_a_trimmed_vocabulary_that_predicts_and_exports(
    workdir, tiny_models, trained_teacher, tmp_path, capsys
):
    """distill's default (auto) on a random-init student: best_model/ is a normal folder whose
    tokenizer produces the new ids; pipeline(), predict, export --format onnx and the card all
    work on it; --trim-vocab off keeps the full table."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    tokenizer = str(tiny_models["bert_student"])
    full = len(AutoTokenizer.from_pretrained(tokenizer))
    arch = arch_student(tmp_path, full)
    argv = seed_quick_test(trained_teacher, arch, "--epochs", "1", "--student-tokenizer", tokenizer)
    run = run_distill(argv)
    best = run / "best_model"
    model = AutoModelForSequenceClassification.from_pretrained(best)
    tok = AutoTokenizer.from_pretrained(best)
    vocab = json.loads((run / "config.json").read_text())["student"]["vocabulary"]
    assert model.config.vocab_size == len(tok) == vocab["kept"] < full
    assert vocab["source_size"] == full and 0 < vocab["heldout_coverage"] <= 1
    card = (best / "README.md").read_text()
    assert f"cut to {vocab['kept']:,} of {full:,} tokens" in card
    assert "maps to the unknown token" in card

    text = "the bird was a native species of the genus"
    logits = model(**tok(text, return_tensors="pt")).logits
    top = model.config.id2label[int(logits.argmax())]
    assert pipeline("text-classification", model=str(best))(text)[0]["label"] == top

    (tmp_path / "in.txt").write_text(text + "\n")
    capsys.readouterr()
    assert main(["predict", "--model", str(best), "--input", str(tmp_path / "in.txt")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["label"] == top

    pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    export = ["export", "--model", str(best), "--output-dir", str(out), "--dataset", "toy"]
    assert main([*export, "--max-samples", "20", "--latency-rows", "4", "--repeats", "1"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["onnx"]["agreement"] == 1.0

    off = run_distill([*argv, "--trim-vocab", "off"])
    assert json.loads((off / "config.json").read_text())["student"]["vocabulary"] is None
    assert AutoTokenizer.from_pretrained(off / "best_model").vocab_size == full


def test_layer_cut_student_keeps_its_pretrained_rows_and_token_level_hidden_loss(
    workdir, trained_teacher
):
    """A student cut from the teacher shares its tokenizer: trimmed, it keeps the teacher's rows
    for the kept tokens, and the hidden-state loss still compares token by token (the teacher
    keeps the full tokenizer)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # A learning rate of 1e-9 leaves the rows where the cut put them (to ~1e-9).
    extra = ("--student-layers", "1", "--hidden-loss", "mse", "--learning-rate", "1e-9")
    extra += ("--trim-vocab", "on")  # auto keeps a layer-cut student's vocabulary
    run = run_distill(seed_quick_test(trained_teacher, trained_teacher, "--epochs", "1", *extra))
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["intermediate"]["hidden_over"] == "tokens"
    student = AutoModelForSequenceClassification.from_pretrained(run / "best_model")
    teacher = AutoModelForSequenceClassification.from_pretrained(trained_teacher)
    assert config["student"]["vocabulary"]["kept"] == student.config.vocab_size
    assert student.config.vocab_size < teacher.config.vocab_size
    # Each trimmed id's token, looked up in the full vocabulary: the row it came from.
    new_tok = AutoTokenizer.from_pretrained(run / "best_model")
    full_vocab = AutoTokenizer.from_pretrained(trained_teacher).get_vocab()
    kept = [full_vocab[t] for t in new_tok.convert_ids_to_tokens(list(range(len(new_tok))))]
    assert kept == sorted(kept)
    torch.testing.assert_close(
        student.get_input_embeddings().weight,
        teacher.get_input_embeddings().weight[kept],
        atol=1e-6,
        rtol=0,
    )


def test_a_bpe_student_is_left_whole_and_said(workdir, tiny_models, caplog, tmp_path):
    """auto would trim a random-init student, but a BPE vocabulary's merges need tokens the data
    never shows: the student keeps its vocabulary, and the log says why."""
    from transformers import AutoConfig

    arch = tmp_path / "qwen-arch"
    AutoConfig.from_pretrained(tiny_models["qwen_lm"]).save_pretrained(arch)
    tokenizer = str(tiny_models["qwen_lm"])
    argv = seed_quick_test(tiny_models["qwen_teacher"], arch, "--epochs", "1")
    with caplog.at_level("INFO"):
        run = run_distill([*argv, "--student-tokenizer", tokenizer])
    assert json.loads((run / "config.json").read_text())["student"]["vocabulary"] is None
    assert "vocabulary is kept whole: its model is BPE" in caplog.text


def test_auto_keeps_a_pretrained_students_vocabulary(workdir, tiny_models):
    """auto trims random-init students only: a pretrained one (layer-cut here) keeps its
    vocabulary, since trimming it was not measured against the full one."""
    argv = seed_quick_test(tiny_models["bert_teacher"], tiny_models["bert_teacher"])
    run = run_distill([*argv, "--epochs", "1", "--student-layers", "1"])
    assert json.loads((run / "config.json").read_text())["student"]["vocabulary"] is None


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [("--keep-top-tokens", "-1", "--keep-top-tokens must be >= 0"), ("--trim-vocab", "x", "")],
)
def test_bad_trim_flags_are_one_line(workdir, tiny_models, capsys, flag, value, expected):
    argv = seed_quick_test(tiny_models["bert_teacher"], tiny_models["bert_student"], flag, value)
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv, command="distill"))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expected in err[-1] and flag in err[-1]


def test_trim_on_with_a_bpe_student_is_one_line(workdir, tiny_models, capsys):
    argv = seed_quick_test(tiny_models["qwen_teacher"], tiny_models["qwen_lm"], "--epochs", "1")
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main([*argv, "--trim-vocab", "on"], command="distill"))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kdistill: error: --trim-vocab on: cannot trim"), err
    assert "BPE" in err[-1]
