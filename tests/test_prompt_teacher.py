"""The LLM prompt teacher on the tiny random Qwen2 causal LM: its batched, KV-cached label-word
scores must equal the plain one-sequence-per-class computation, whatever the padding, label-word
lengths, chat template, few-shot examples and calibration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import CLASSES, make_texts

from kdistill.errors import KdistillError
from kdistill.teachers.few_shot import pick_few_shot
from kdistill.teachers.label_words import check_template, default_label_word, parse_label_words
from kdistill.teachers.prompt import (
    CONTENT_FREE,
    PromptSettings,
    PromptTeacher,
    load_prompt_teacher,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# In the tiny BPE, " the"/" and"/" of"/" with" are one token each, " church tower" is 11.
SINGLE = {"Animal": "the", "Building": "of", "Company": "and", "Film": "with"}
MIXED = {"Animal": "the", "Building": "church tower", "Company": "and", "Film": "zebra"}
DBPEDIA = [
    "Company",
    "EducationalInstitution",
    "Artist",
    "Athlete",
    "OfficeHolder",
    "MeanOfTransportation",
    "Building",
    "NaturalPlace",
    "Village",
    "Animal",
    "Plant",
    "Album",
    "Film",
    "WrittenWork",
]
TEXTS = [
    "a",
    "species bird fish insect genus family moth snail beetle native habitat " * 3,
    "film directed starring",
    "the company was founded by a firm and its brand",
]


@pytest.fixture(scope="module")
def lm(tiny_models) -> tuple[Path, torch.nn.Module]:
    """The tiny causal LM with a sharpened output layer: a random model's next-token
    distribution is nearly uniform, which would hide a wrong position or mask by a hair."""
    from transformers import AutoModelForCausalLM

    path = tiny_models["qwen_lm"]
    model = AutoModelForCausalLM.from_pretrained(path).eval().requires_grad_(False)
    model.lm_head.weight.mul_(30)
    return path, model


def make_teacher(
    lm: tuple[Path, torch.nn.Module], chat: bool = False, padding_side: str = "right", **kw
) -> PromptTeacher:
    from transformers import AutoTokenizer

    path, model = lm
    tokenizer = AutoTokenizer.from_pretrained(path)  # fresh: tests change its settings
    tokenizer.padding_side = padding_side
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return PromptTeacher(model, tokenizer, CLASSES, str(path), PromptSettings(chat=chat, **kw))


def batch_of(teacher: PromptTeacher, texts: list[str], max_length: int = 512) -> dict:
    padded = teacher.tokenizer.pad(teacher.encode(texts, max_length), return_tensors="pt")
    return {
        "teacher_input_ids": padded["input_ids"],
        "teacher_attention_mask": padded["attention_mask"],
    }


def direct_scores(teacher: PromptTeacher, text: str) -> torch.Tensor:
    """(num_labels,) mean log-probability of each label word, one unpadded sequence per class."""
    prompt = teacher.encode([text], 512)["input_ids"][0]
    scores = []
    for label in teacher.label_ids:
        logp = teacher.model(torch.tensor([prompt + label])).logits[0].float().log_softmax(-1)
        n = len(prompt)
        scores.append(sum(logp[n - 1 + j, t] for j, t in enumerate(label)) / len(label))
    return torch.stack(scores)


def direct_batch(teacher: PromptTeacher, texts: list[str]) -> torch.Tensor:
    return torch.stack([direct_scores(teacher, t) for t in texts])


@contextmanager
def count_forwards(teacher: PromptTeacher) -> Iterator[list[int]]:
    calls: list[int] = []
    # The decoder: every pass runs it, whether the model or only its decoder is called.
    handle = teacher.model.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


# --------------------------------------------------------------------------- scoring


def test_scores_equal_direct_computation(lm):
    teacher = make_teacher(lm, calibrate=False)
    got = teacher.logits(batch_of(teacher, TEXTS))
    assert got.dtype == torch.float32 and got.shape == (len(TEXTS), len(CLASSES))
    torch.testing.assert_close(got, direct_batch(teacher, TEXTS), atol=1e-4, rtol=1e-4)
    # The sharpened model tells texts and classes apart: equality above is not trivially true.
    assert got.std() > 0.5


def test_multi_token_label_words_equal_direct_computation(lm):
    teacher = make_teacher(lm, calibrate=False, label_words=MIXED)
    counts = [len(ids) for ids in teacher.label_ids]
    assert counts[0] == 1 and counts[1] >= 3 and len(set(counts)) >= 3
    torch.testing.assert_close(
        teacher.logits(batch_of(teacher, TEXTS)),
        direct_batch(teacher, TEXTS),
        atol=1e-4,
        rtol=1e-4,
    )


def test_label_tokens_are_the_prompts_continuation(lm):
    """Tokenising prompt + " word" together gives the prompt's tokens then the label's."""
    teacher = make_teacher(lm, label_words=MIXED)
    prompt = teacher.render("some text")
    prompt_ids = teacher.tokenizer(prompt)["input_ids"]
    for word, ids in zip(teacher.words, teacher.label_ids, strict=True):
        assert teacher.tokenizer.decode(ids) == " " + word
        assert teacher.tokenizer(prompt + " " + word)["input_ids"] == prompt_ids + ids


def test_one_forward_when_all_words_are_single_tokens(lm):
    single = make_teacher(lm, calibrate=False, label_words=SINGLE)
    assert all(len(ids) == 1 for ids in single.label_ids)
    batch = batch_of(single, TEXTS)
    expected = direct_batch(single, TEXTS)
    with count_forwards(single) as calls:
        got = single.logits(batch)
        single.logits(batch)
    assert len(calls) == 1 + 2  # the shared prompt prefix once, then one forward a batch
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("packed", [True, False])
def test_continuations_in_one_forward_or_in_chunks(lm, monkeypatch, packed):
    """Packed: the words of several tokens share one forward over one cache (a 4D mask keeps
    them apart); repeated (attention without custom masks): the cache is copied per class."""
    if not packed:
        monkeypatch.setattr(
            "kdistill.teachers.prompt_scoring.packed_continuations", lambda *a: None
        )
    teacher = make_teacher(lm, calibrate=False, label_words=MIXED)
    batch = batch_of(teacher, TEXTS)
    expected = direct_batch(teacher, TEXTS)
    teacher.logits(batch)  # the shared prompt prefix runs once, in the first batch
    with count_forwards(teacher) as calls:
        whole = teacher.logits(batch)
    assert len(calls) == 2  # the prompts, then every continuation of every prompt
    teacher.chunk_bytes = 1  # one class per chunk
    with count_forwards(teacher) as calls:
        chunked = teacher.logits(batch)
    multi = sum(len(ids) > 1 for ids in teacher.label_ids)
    assert len(calls) == 1 + (multi if packed else len(CLASSES))
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_equals_one_at_a_time(lm, padding_side):
    teacher = make_teacher(lm, padding_side=padding_side, label_words=MIXED)
    batch = batch_of(teacher, TEXTS)
    lengths = batch["teacher_attention_mask"].sum(1)
    assert lengths.max() - lengths.min() > 30  # real padding in the batch
    first_column_real = batch["teacher_attention_mask"][:, 0].bool()
    assert first_column_real.all() == (padding_side == "right")
    batched = teacher.logits(batch)
    alone = torch.cat([teacher.logits(batch_of(teacher, [t])) for t in TEXTS])
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)


def test_text_truncated_not_the_prompt(lm):
    teacher = make_teacher(lm)
    long_text = TEXTS[1]
    short = teacher.encode([long_text], max_length=5)["input_ids"][0]
    cut = teacher.tokenizer.decode(teacher.tokenizer(long_text)["input_ids"][:5])
    assert short == teacher.encode([cut], 512)["input_ids"][0]
    assert teacher.tokenizer.decode(short).endswith("\nCategory:")
    # max_text_tokens caps it as well.
    capped = make_teacher(lm, max_text_tokens=5).encode([long_text], 512)["input_ids"][0]
    assert capped == short


# --------------------------------------------------------------------------- prompts


def test_chat_template_only_when_asked(lm):
    """A tokenizer with a chat template still gets the plain prompt unless --chat-template."""
    path, model = lm
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    plain = PromptTeacher(model, tokenizer, CLASSES, str(path), PromptSettings())
    assert not plain.chat and "<|im_start|>" not in plain.render("some text")
    assert plain.settings()["chat_template"] is None


def test_chat_template_applied_when_present(lm):
    chat = make_teacher(lm, chat=True, calibrate=False)
    text = chat.tokenizer.decode(chat.encode(["film directed"], 64)["input_ids"][0])
    assert text.startswith("<|im_start|>user\nClassify the text into one of these categories:")
    assert text.endswith("Category:<|im_end|>\n<|im_start|>assistant\nCategory:")
    # The reply begins "Category:", so the label word follows a space as in the raw prompt.
    assert [chat.tokenizer.decode(ids) for ids in chat.label_ids] == [f" {c}" for c in CLASSES]
    torch.testing.assert_close(
        chat.logits(batch_of(chat, TEXTS)), direct_batch(chat, TEXTS), atol=1e-4, rtol=1e-4
    )

    raw = make_teacher(lm)
    text = raw.tokenizer.decode(raw.encode(["film directed"], 64)["input_ids"][0])
    assert "<|im_start|>" not in text and text.endswith("Text: film directed\nCategory:")
    assert [raw.tokenizer.decode(ids) for ids in raw.label_ids] == [" " + c for c in CLASSES]

    # A template override is used raw, even when the tokenizer has a chat template.
    custom = make_teacher(lm, chat=True, template="Topic of {text}? Options: {labels}. Answer:")
    text = custom.tokenizer.decode(custom.encode(["a film"], 64)["input_ids"][0])
    assert text == "Topic of a film? Options: Animal, Building, Company, Film. Answer:"
    assert custom.settings()["chat_template"] is None and chat.settings()["chat_template"]


def test_few_shot_examples_in_the_prompt(lm):
    rows = make_texts(5, seed=3)
    texts = [t for t, _ in rows]
    labels = [CLASSES.index(y) for _, y in rows]
    shots = pick_few_shot(texts, labels, CLASSES, 3, seed=0)
    raw = make_teacher(lm, few_shot=shots, calibrate=False, label_words=MIXED)
    prompt = raw.tokenizer.decode(raw.encode(["query words"], 64)["input_ids"][0])
    for text, y in shots:
        assert f"Text: {text}\nCategory: {raw.words[y]}\n\n" in prompt
    assert prompt.endswith("Text: query words\nCategory:")
    torch.testing.assert_close(
        raw.logits(batch_of(raw, TEXTS)), direct_batch(raw, TEXTS), atol=1e-4, rtol=1e-4
    )

    chat = make_teacher(lm, chat=True, few_shot=shots)
    prompt = chat.tokenizer.decode(chat.encode(["query words"], 64)["input_ids"][0])
    for text, y in shots:
        reply = f"<|im_start|>assistant\nCategory: {CLASSES[y]}<|im_end|>"
        turn = f"Text: {text}\nCategory:<|im_end|>\n{reply}"
        assert turn in prompt
    assert prompt.count("<|im_start|>user") == 4

    # Few-shot texts are cut to max_text_tokens too.
    short = make_teacher(lm, few_shot=shots, max_text_tokens=2)
    assert all(len(short.tokenizer(t)["input_ids"]) <= 2 for t, _ in short.few_shot)


def test_pick_few_shot_is_stratified_and_seeded():
    labels = [c for c in range(14) for _ in range(5)]
    texts = [f"row {i}" for i in range(len(labels))]
    four = pick_few_shot(texts, labels, DBPEDIA, 4, seed=1)
    assert len(four) == 4 and len({y for _, y in four}) == 4
    assert all(texts.index(t) // 5 == y for t, y in four)  # each text with its own label
    assert four == pick_few_shot(texts, labels, DBPEDIA, 4, seed=1)
    assert four != pick_few_shot(texts, labels, DBPEDIA, 4, seed=2)
    # The class order is random too, not always the first classes.
    classes = [{y for _, y in pick_few_shot(texts, labels, DBPEDIA, 4, s)} for s in range(5)]
    assert any(c != classes[0] for c in classes)
    many = pick_few_shot(texts, labels, DBPEDIA, 30, seed=0)
    counts = [sum(y == c for _, y in many) for c in range(14)]
    assert sorted(counts) == [2] * 12 + [3] * 2
    assert pick_few_shot(texts, labels, DBPEDIA, 0, seed=0) == []


@pytest.mark.parametrize(
    ("labels", "k"),
    [([0, 0, 1, 1], 5), ([0, 0, 0, 1], 4)],  # more than the rows; more than class 1 holds
)
def test_pick_few_shot_too_many(labels, k):
    with pytest.raises(KdistillError, match="--few-shot") as e:
        pick_few_shot([f"t{i}" for i in range(len(labels))], labels, ["a", "b"], k, seed=0)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- calibration


def test_calibration_subtracts_log_p_cf(lm):
    calibrated = make_teacher(lm, label_words=MIXED)
    raw = make_teacher(lm, label_words=MIXED, calibrate=False)
    p_cf = direct_batch(raw, list(CONTENT_FREE)).softmax(-1).mean(0)
    expected = direct_batch(raw, TEXTS) - p_cf.log()
    torch.testing.assert_close(
        calibrated.logits(batch_of(calibrated, TEXTS)), expected, atol=1e-4, rtol=1e-4
    )
    assert (p_cf.max() / p_cf.min()) > 1.5  # a real prior to remove, not a no-op


def test_calibration_makes_the_content_free_input_uniform(lm):
    teacher = make_teacher(lm, label_words=MIXED)
    teacher.content_free = ("N/A",)
    probs = teacher.logits(batch_of(teacher, ["N/A"])).softmax(-1)
    torch.testing.assert_close(probs, torch.full_like(probs, 1 / len(CLASSES)))
    uncalibrated = make_teacher(lm, label_words=MIXED, calibrate=False)
    assert uncalibrated.logits(batch_of(uncalibrated, ["N/A"])).softmax(-1).max() > 0.3
    assert list(teacher._log_p_cf) == ["cpu"]  # memoised per device


# --------------------------------------------------------------------------- inputs and key


def test_label_words_parsing(tmp_path):
    assert default_label_word("EducationalInstitution") == "Educational Institution"
    assert default_label_word("OfficeHolder") == "Office Holder"
    assert default_label_word("snake_case") == "snake case"
    assert default_label_word("HTTPServer") == "HTTP Server"
    words = parse_label_words(
        "EducationalInstitution=School, MeanOfTransportation = Vehicle", DBPEDIA
    )
    assert list(words) == DBPEDIA
    assert words["EducationalInstitution"] == "School"
    assert words["MeanOfTransportation"] == "Vehicle"
    assert words["OfficeHolder"] == "Office Holder" and words["Company"] == "Company"
    spec = tmp_path / "words.json"
    spec.write_text(json.dumps({"Animal": "creature"}))
    assert parse_label_words(str(spec), CLASSES)["Animal"] == "creature"


@pytest.mark.parametrize(
    "spec",
    [
        "Animals=beast",
        "Animal=,Film=movie",
        "Animal=movie,Film=Movie",
        "Animal:beast",
        "missing.json",
    ],
)
def test_bad_label_words(spec):
    with pytest.raises(KdistillError, match="^--label-words") as e:
        parse_label_words(spec, CLASSES)
    assert "\n" not in str(e.value)


def test_default_words_that_collide():
    with pytest.raises(KdistillError, match="--label-words"):
        parse_label_words(None, ["snake_case", "snake-case"])


def test_template_without_text_slot(lm):
    check_template(None)
    check_template("{labels}: {text} ->")
    with pytest.raises(KdistillError, match="^--prompt-template") as e:
        check_template("Classify: {labels}")
    assert "\n" not in str(e.value)
    with pytest.raises(KdistillError, match="--prompt-template"):
        make_teacher(lm, template="no slot")
    with pytest.raises(KdistillError, match="--label-words"):
        make_teacher(lm, label_words={"Animal": "x", "Film": "X"})


def test_settings_change_with_the_prompt(lm):
    base = make_teacher(lm).settings()
    json.dumps(base)
    assert base["dtype"] == "torch.float32" and base["calibrate"] is True
    variants = [
        make_teacher(lm, template="{text} is about"),
        make_teacher(lm, label_words={"Animal": "creature"}),
        make_teacher(lm, few_shot=[("a bird", 0)]),
        make_teacher(lm, calibrate=False),
        make_teacher(lm, max_text_tokens=16),
        make_teacher(lm, chat=True),
    ]
    keys = [json.dumps(v.settings(), sort_keys=True) for v in variants]
    assert json.dumps(base, sort_keys=True) not in keys and len(set(keys)) == len(keys)
    assert json.dumps(make_teacher(lm).settings(), sort_keys=True) == json.dumps(
        base, sort_keys=True
    )


# --------------------------------------------------------------------------- loading


def test_load_prompt_teacher(tiny_models):
    teacher = load_prompt_teacher(str(tiny_models["qwen_lm"]), CLASSES, PromptSettings())
    assert teacher.mode == "prompt" and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert teacher.tokenizer.pad_token == "<|endoftext|>"
    assert teacher.to(torch.device("cpu")) is teacher
    logits = teacher.logits(batch_of(teacher, TEXTS[:2]))
    assert logits.shape == (2, len(CLASSES)) and torch.isfinite(logits).all()
    bf16 = load_prompt_teacher(
        str(tiny_models["qwen_lm"]), CLASSES, PromptSettings(), dtype=torch.bfloat16
    )
    assert bf16.settings()["dtype"] == "torch.bfloat16"


def test_load_errors_are_one_line(tiny_models, tmp_path):
    with pytest.raises(KdistillError, match="^--teacher-model") as e:
        load_prompt_teacher(str(tmp_path / "nowhere"), CLASSES, PromptSettings())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(KdistillError, match="^--teacher-model .*cannot load it") as e:
        load_prompt_teacher(str(broken), CLASSES, PromptSettings())
    assert "\n" not in str(e.value)
