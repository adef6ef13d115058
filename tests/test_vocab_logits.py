"""The prompt teacher's vocabulary logits: only at scored positions, in bounded row chunks.

Issue 32: with the seed's teacher (vocabulary 151,936) the prompt teacher's pass asked for a
29.9 GB matrix product. These tests use a model of that vocabulary but 64 wide and 2 layers deep,
so the output layer is real-sized and the rest is tiny.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CLASSES, build_bpe_tokenizer
from test_prompt_teacher import MIXED, TEXTS, batch_of

from kdistill.teachers import prompt_scoring, vocab_logits
from kdistill.teachers.prompt import PromptSettings, PromptTeacher

REAL_VOCAB = 151_936  # Qwen2.5 and DeepSeek-R1-Distill-Qwen's config.json


@pytest.fixture(scope="module")
def wide_vocab(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A 2-layer, 64-wide Qwen2 causal LM with the real vocabulary size, random weights, on the
    tiny byte-level BPE (its ids are a prefix of the vocabulary)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("wide-vocab")
    tok = build_bpe_tokenizer(path)
    torch.manual_seed(11)
    config = Qwen2Config(
        vocab_size=REAL_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    model = Qwen2ForCausalLM(config).eval().requires_grad_(False)
    model.lm_head.weight.mul_(30)  # sharpened: near-uniform logits would hide a wrong position
    return path, model


def make(lm: tuple[Path, torch.nn.Module], prefix_cache: str, padding_side: str, **kw):
    from transformers import AutoTokenizer

    path, model = lm
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = padding_side
    settings = PromptSettings(label_words=MIXED, max_text_tokens=200, **kw)
    return PromptTeacher(model, tokenizer, CLASSES, str(path), settings, prefix_cache)


def head_outputs(teacher: PromptTeacher, batch: dict) -> list[tuple[int, ...]]:
    """The shape of every output-layer result during one `logits` call."""
    shapes: list[tuple[int, ...]] = []
    head = teacher.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    try:
        teacher.logits(batch)
    finally:
        handle.remove()
    return shapes


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("prefix_cache", ["auto", "off"])
def test_same_logits_as_the_whole_model(
    wide_vocab, monkeypatch, prefix_cache, padding_side, packed
):
    """Decoder + output layer over the scored positions, in chunks of 3 rows, equals the logits
    the whole model computes at every position (the path taken before, and still taken by
    models whose output layer is not plain); label words packed in one sequence, or repeated
    per class (models whose attention takes no custom mask)."""
    if not packed:
        monkeypatch.setattr(prompt_scoring, "packed_continuations", lambda *a: None)
    teacher = make(wide_vocab, prefix_cache, padding_side)
    batch = batch_of(teacher, TEXTS)
    teacher.chunk_bytes = 3 * REAL_VOCAB * 8  # 3 rows of float32 logits + log-softmax
    got = teacher.logits(batch)
    assert max(s[0] for s in head_outputs(teacher, batch)) <= 3

    whole = make(wide_vocab, prefix_cache, padding_side)
    monkeypatch.setattr(vocab_logits, "plain_head", lambda model: None)
    expected = whole.logits(batch)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert expected.std() > 0.2  # the sharpened model tells rows apart
    assert (teacher._prefix is not None) == (prefix_cache == "auto")


@pytest.mark.parametrize("prefix_cache", ["auto", "off"])
def test_vocabulary_logits_do_not_grow_with_the_prompt(wide_vocab, prefix_cache):
    """The output layer sees a (rows, hidden) matrix of scored positions only: one row per
    prompt for the first label token, one per packed later label token, whatever the length of
    the prompt (the long texts make prompts over 3 times as long)."""
    short = make(wide_vocab, prefix_cache, "right", calibrate=False)
    texts = ["a b", "film", "the firm", "moth"]
    long_texts = [(t + " species bird fish insect genus family ") * 25 for t in texts]
    short_batch, long_batch = batch_of(short, texts), batch_of(short, long_texts)
    assert long_batch["teacher_input_ids"].shape[1] > 3 * short_batch["teacher_input_ids"].shape[1]

    rows, later = len(texts), sum(len(ids) - 1 for ids in short.label_ids)
    assert later > 0  # "church tower" has a second token: the packed pass runs
    for batch in (short_batch, long_batch):
        shapes = head_outputs(short, batch)
        assert all(len(s) == 2 and s[1] == REAL_VOCAB for s in shapes), shapes
        assert [s[0] for s in shapes] == [rows, rows * later], shapes
