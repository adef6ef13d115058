"""Teacher-logit cache, length-grouped batches and precision choices: faster, never different."""

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CLASSES

from kdistill.cli import main
from kdistill.data.model_files import load_tokenizer
from kdistill.teachers import cache as kcache
from kdistill.teachers.classifier import ClassifierTeacher, load_teacher_classifier
from kdistill.training.loaders import make_loaders
from kdistill.training.runtime import make_accelerator, pick_mixed_precision, pick_teacher_dtype


def quick(teacher, student, *extra):
    return [
        "--dataset",
        "toy",
        "--teacher-model",
        str(teacher),
        "--student-model",
        str(student),
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--mixed-precision",
        "no",
        "--learning-rate",
        "1e-3",
        "--allow-weak-teacher",
        *extra,
    ]


def run(argv) -> Path:
    parent = Path("outputs/student_soft_distill")
    before = set(parent.iterdir()) if parent.is_dir() else set()
    assert main(argv, command="distill") == 0
    (new,) = set(parent.iterdir()) - before
    return new


def toy_texts(n=40):
    from conftest import make_texts

    return [t for t, _ in make_texts(10)][:n]


def teacher_and_data(tiny_models, key="qwen_teacher"):
    from datasets import Dataset

    from kdistill.data.batches import tokenize

    model, tok, columns = load_teacher_classifier(str(tiny_models[key]), CLASSES, False)
    teacher = ClassifierTeacher(model, tok, columns, str(tiny_models[key]))
    texts = toy_texts()
    ds = Dataset.from_dict({"text": texts, "label": [0] * len(texts)})
    return teacher, tokenize(ds, {"teacher": tok}, 64), texts


@pytest.mark.parametrize("key", ["qwen_teacher", "bert_teacher"])
def test_cached_logits_equal_online_logits(tiny_models, key):
    """The sorted pass pads differently from training batches: the logits must not care."""
    teacher, ds, _ = teacher_and_data(tiny_models, key)
    accelerator = make_accelerator("cpu", "no", 1)
    cached = kcache.compute_teacher_logits(teacher, ds, 7, accelerator, len(CLASSES))
    tok = teacher.tokenizer
    for i in range(0, len(ds), 5):  # online: batches in data order, padded to their own longest
        rows = ds[i : i + 5]
        enc = tok.pad({"input_ids": rows["teacher_input_ids"]}, return_tensors="pt")
        online = teacher.logits(
            {"teacher_input_ids": enc["input_ids"], "teacher_attention_mask": enc["attention_mask"]}
        )
        torch.testing.assert_close(cached[i : i + 5], online, atol=1e-5, rtol=1e-4)


def test_cache_key_changes_with_every_part(tiny_models, tmp_path):
    teacher, _, texts = teacher_and_data(tiny_models)
    base = kcache.make_key(teacher, texts, 64, "fp32")
    assert base == kcache.make_key(teacher, list(texts), 64, "fp32")  # deterministic
    variants = {
        "max_length": kcache.make_key(teacher, texts, 32, "fp32"),
        "precision": kcache.make_key(teacher, texts, 64, "bf16"),
        "texts": kcache.make_key(teacher, texts[:-1] + ["another text"], 64, "fp32"),
        "order": kcache.make_key(teacher, texts[::-1], 64, "fp32"),
    }
    other_tok = load_tokenizer(str(tiny_models["bert_teacher"]), "--teacher-model")
    variants["tokenizer"] = kcache.make_key(
        SimpleNamespace(
            **{**vars(teacher), "tokenizer": other_tok},
            mode=teacher.mode,
            settings=teacher.settings,
        ),
        texts,
        64,
        "fp32",
    )
    variants["labels"] = kcache.make_key(
        SimpleNamespace(
            **vars(teacher), mode=teacher.mode, settings=lambda: {"label_columns": [3, 2, 1, 0]}
        ),
        texts,
        64,
        "fp32",
    )
    # New weights in the same folder (a re-fine-tuned teacher): a new key.
    import shutil

    folder = tmp_path / "teacher"
    shutil.copytree(tiny_models["qwen_teacher"], folder)
    copy = ClassifierTeacher(
        teacher.model, teacher.tokenizer, teacher.columns.tolist(), str(folder)
    )
    before = kcache.make_key(copy, texts, 64, "fp32")
    with torch.no_grad():
        teacher.model.score.weight.add_(1.0)
    teacher.model.save_pretrained(folder)
    variants["weights"] = kcache.make_key(copy, texts, 64, "fp32")
    assert before.parts["teacher"] != variants["weights"].parts["teacher"]
    digests = {name: key.digest for name, key in variants.items()}
    assert base.digest not in digests.values()
    assert len(set(digests.values())) == len(digests)


def test_the_autocast_mode_is_part_of_the_key_and_a_mismatch_recomputes(
    tiny_models, tmp_path, monkeypatch
):
    """bf16 autocast over fp32 weights gives other logits than a plain fp32 pass: a disk cache
    written under one must not be reused under the other."""
    teacher, ds, texts = teacher_and_data(tiny_models)
    passes = []

    def compute(teacher, ds, batch_size, accelerator, num_labels):
        passes.append(accelerator.mixed_precision)
        return torch.randn(len(ds), num_labels)

    monkeypatch.setattr(kcache, "compute_teacher_logits", compute)
    config = SimpleNamespace(max_length=64, teacher_cache_dir=str(tmp_path), teacher_batch_size=8)
    accelerator = make_accelerator("cpu", "no", 1)

    def under(mode):  # the same accelerator, run under another autocast mode
        return SimpleNamespace(
            mixed_precision=mode, is_main_process=True, device=accelerator.device
        )

    records = [
        kcache.teacher_logits_for("disk", teacher, ds, texts, config, under(mode), 4, "fp32")[1]
        for mode in ("no", "bf16", "no", "bf16")
    ]
    assert passes == ["no", "bf16"]  # each mode computed once, then read back from disk
    assert [r["hit"] for r in records] == [False, False, True, True]
    assert records[0]["key"] != records[1]["key"]
    assert kcache.make_key(teacher, texts, 64, "fp32", "bf16").parts["autocast"] == "bf16"


def test_a_mismatched_or_broken_cache_file_is_never_used(tiny_models, tmp_path):
    teacher, _, texts = teacher_and_data(tiny_models)
    key = kcache.make_key(teacher, texts, 64, "fp32")
    path = tmp_path / f"{key.digest}.safetensors"
    logits = torch.randn(len(texts), 4)
    kcache.save_disk(path, key, logits)
    assert torch.equal(kcache.load_disk(path, key, 4), logits)
    assert not list(tmp_path.glob(".*tmp"))  # written atomically
    # Same file name, other inputs (a hash collision or a hand-copied file): rejected.
    other = kcache.make_key(teacher, texts, 32, "fp32")
    kcache.save_disk(path, other, logits)
    assert kcache.load_disk(path, key, 4) is None
    # Right key, wrong shape: rejected.
    kcache.save_disk(path, key, torch.randn(len(texts) - 1, 4))
    assert kcache.load_disk(path, key, 4) is None
    # Truncated file: rejected, no crash.
    path.write_bytes(b"\x00\x01garbage")
    assert kcache.load_disk(path, key, 4) is None


def test_cache_off_and_memory_train_the_same_student(workdir, tiny_models):
    runs = {}
    for mode in ("off", "memory"):
        run_dir = run(
            quick(tiny_models["bert_teacher"], tiny_models["bert_student"], "--teacher-cache", mode)
        )
        runs[mode] = json.loads((run_dir / "history.json").read_text())
    off, mem = runs["off"], runs["memory"]
    assert mem["teacher_cache"]["mode"] == "memory" and off["teacher_cache"]["mode"] == "off"
    for a, b in zip(off["epochs"], mem["epochs"], strict=True):
        assert a["val_accuracy"] == b["val_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["train_kl"] == pytest.approx(b["train_kl"], rel=1e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)


def test_disk_cache_is_reused_across_runs_without_the_teacher(workdir, tiny_models, monkeypatch):
    args = quick(
        tiny_models["bert_teacher"],
        tiny_models["bert_student"],
        "--teacher-cache",
        "disk",
        "--epochs",
        "1",
    )
    first = json.loads((run(args) / "history.json").read_text())["teacher_cache"]
    assert first["hit"] is False and Path(first["path"]).is_file()
    assert Path(first["path"]).parent == workdir / "cache" / "teacher_logits"

    def no_teacher(*a, **k):
        raise AssertionError("the teacher ran although its logits were on disk")

    monkeypatch.setattr(kcache, "compute_teacher_logits", no_teacher)
    # A sweep over T and alpha on the same teacher and data: all hits (auto reuses disk too).
    for extra in (["--temperature", "2"], ["--alpha", "0.5", "--teacher-cache", "auto"]):
        second = json.loads((run(args + extra) / "history.json").read_text())["teacher_cache"]
        assert second["hit"] is True and second["key"] == first["key"]
    # Other data (a different subsample): the key differs, so the teacher must run.
    with pytest.raises(AssertionError, match="the teacher ran"):
        main(args + ["--max-train-samples", "40"], command="distill")


def test_length_grouped_batches_cover_every_example_once_per_epoch(tiny_models):
    from datasets import Dataset

    texts = toy_texts(40)
    ds = Dataset.from_dict({"text": texts, "label": [i % 4 for i in range(len(texts))]})
    tok = load_tokenizer(str(tiny_models["bert_student"]), "--student-model")
    config = SimpleNamespace(
        max_length=64, batch_size=4, seed=0, eval_batch_size=None, group_by_length=True
    )
    loader, _, train_tok = make_loaders(
        ds, ds, {"student": tok}, config, make_accelerator("cpu", "no", 1)
    )
    lengths = [len(x) for x in train_tok["student_input_ids"]]
    orders, padded = [], 0
    for _epoch in range(2):
        rows = []
        for batch in loader:
            rows += batch["row"].tolist()
            padded += batch["student_input_ids"].numel()
        assert sorted(rows) == list(range(len(texts)))  # each example exactly once
        orders.append(rows)
    assert orders[0] != orders[1]  # reshuffled every epoch
    config.group_by_length = False
    plain, _, _ = make_loaders(ds, ds, {"student": tok}, config, make_accelerator("cpu", "no", 1))
    padded_plain = sum(b["student_input_ids"].numel() for _ in range(2) for b in plain)
    assert padded < padded_plain  # grouping spends less on padding
    assert padded >= 2 * sum(lengths)


def test_mixed_precision_auto_on_cpu(monkeypatch):
    runtime = importlib.import_module("kdistill.training.runtime")
    from kdistill.errors import KdistillError

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert pick_mixed_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    assert pick_mixed_precision("auto", "cpu") == "no"
    assert pick_mixed_precision("auto", "mps") == "no"
    assert pick_mixed_precision("no", "cpu") == "no"
    with pytest.raises(KdistillError, match="fp16 needs a GPU"):
        pick_mixed_precision("fp16", "cpu")
    assert pick_teacher_dtype("auto", "bf16") == (torch.bfloat16, "bf16")
    assert pick_teacher_dtype("auto", "no") == (torch.float32, "fp32")
    assert pick_teacher_dtype("fp32", "bf16") == (torch.float32, "fp32")


@pytest.mark.slow  # torch.compile takes minutes on two cores
def test_compiled_student_trains_and_saves_a_plain_classifier(workdir, tiny_models):
    from transformers import AutoModelForSequenceClassification

    run_dir = run(
        quick(
            tiny_models["bert_teacher"], tiny_models["bert_student"], "--compile", "--epochs", "1"
        )
    )
    model, info = AutoModelForSequenceClassification.from_pretrained(
        run_dir / "best_model", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]  # no `_orig_mod.` prefixes
    assert model.config.id2label[0] == "Animal"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["compile"] is True
    assert config["student"]["class"] == "BertForSequenceClassification"


def _weights(folder: Path, seed: int, name: str = "model.safetensors") -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {"w": torch.randn(4, 4, generator=torch.Generator().manual_seed(seed))}, folder / name
    )
    (folder / "config.json").write_text('{"model_type": "bert"}')


def _named(name: str, tokenizer) -> SimpleNamespace:
    """A teacher as make_key sees it: its name, a model whose config records no commit (as
    transformers 5 loads every model), its tokenizer and settings."""
    model = SimpleNamespace(config=SimpleNamespace())
    return SimpleNamespace(
        name=name, model=model, tokenizer=tokenizer, mode="classifier", settings=lambda: {}
    )


def test_an_adapter_is_keyed_by_its_base_model_too(tiny_models, tmp_path, monkeypatch):
    """Identical adapter files over two bases (`base` read from the working directory, as
    transformers reads it) are two teachers; so is one base re-trained in place."""
    tok = load_tokenizer(str(tiny_models["bert_teacher"]), "--teacher-model")
    adapter = tmp_path / "adapter"
    _weights(adapter, seed=0, name="adapter_model.safetensors")
    (adapter / "config.json").unlink()  # an adapter folder: no config.json of its own
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "base_model_name_or_path": "base"})
    )
    keys = []
    for seed in (1, 2):
        project = tmp_path / f"project{seed}"
        _weights(project / "base", seed=seed)
        monkeypatch.chdir(project)
        keys.append(kcache.make_key(_named(str(adapter), tok), ["a text"], 64, "fp32"))
    assert keys[0].digest != keys[1].digest
    assert keys[0].parts["teacher"].startswith(f"local:{adapter.resolve()}:")
    assert f"+base=local:{(tmp_path / 'project1' / 'base').resolve()}:" in keys[0].parts["teacher"]

    _weights(tmp_path / "project2" / "base", seed=3)  # the base re-trained in place
    retrained = kcache.make_key(_named(str(adapter), tok), ["a text"], 64, "fp32")
    assert retrained.digest not in {k.digest for k in keys}
    # The adapter's own settings (alpha scales its update) are part of it as well.
    (adapter / "adapter_config.json").write_text(
        json.dumps(
            {"peft_type": "LORA", "r": 2, "lora_alpha": 32, "base_model_name_or_path": "base"}
        )
    )
    assert kcache.make_key(_named(str(adapter), tok), ["a text"], 64, "fp32") != retrained


def _hub_snapshot(cache: Path, repo: str, commit: str, seed: int) -> None:
    """A model in a Hub cache laid out as huggingface_hub lays it: refs/main names the commit
    whose snapshot the files are in."""
    root = cache / f"models--{repo.replace('/', '--')}"
    _weights(root / "snapshots" / commit, seed=seed)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)


def test_hub_models_without_a_commit_hash_are_keyed_by_their_weights(
    tiny_models, tmp_path, monkeypatch
):
    """transformers 5 records no `_commit_hash`, so every Hub teacher was 'org/x@unknown': the
    repository moving on (or another machine's copy) reused the old model's logits."""
    import huggingface_hub.constants

    tok = load_tokenizer(str(tiny_models["bert_teacher"]), "--teacher-model")
    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    _hub_snapshot(hub, "org/teacher", "a" * 40, seed=1)
    old = kcache.make_key(_named("org/teacher", tok), ["a text"], 64, "fp32")
    assert old == kcache.make_key(_named("org/teacher", tok), ["a text"], 64, "fp32")
    assert old.parts["teacher"].startswith("hub:org/teacher:")
    _hub_snapshot(hub, "org/teacher", "b" * 40, seed=2)  # main moved to new weights
    new = kcache.make_key(_named("org/teacher", tok), ["a text"], 64, "fp32")
    assert new.digest != old.digest
    # An adapter over a Hub base: the base's weights are part of its key.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "org/teacher"}')
    over_new = kcache.make_key(_named(str(adapter), tok), ["a text"], 64, "fp32")
    (hub / "models--org--teacher" / "refs" / "main").write_text("a" * 40)
    over_old = kcache.make_key(_named(str(adapter), tok), ["a text"], 64, "fp32")
    assert over_new.digest != over_old.digest
    # Files not in the cache at all: a key no other run shares, so nothing is ever reused.
    lost = [kcache.make_key(_named("org/gone", tok), ["a text"], 64, "fp32") for _ in range(2)]
    assert lost[0].digest != lost[1].digest


def test_file_digests_are_of_content_and_remembered_across_processes(tmp_path):
    from kdistill.data import model_identity as mid

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    first = mid.file_digest(f)
    memo = json.loads((tmp_path / "cache" / mid.DIGESTS_FILE).read_text())
    assert list(memo.values()) == [first]
    # Same size, other content: a new digest (the file's modification time moved on).
    f.write_bytes(b"b" * 1000)
    second = mid.file_digest(f)
    assert second != first
    memo = json.loads((tmp_path / "cache" / mid.DIGESTS_FILE).read_text())
    assert list(memo.values()) == [second]  # one entry per file
    # A file deleted since it was hashed is dropped at the next write.
    gone, other = tmp_path / "gone.bin", tmp_path / "other.bin"
    gone.write_bytes(b"c")
    mid.file_digest(gone)
    gone.unlink()
    other.write_bytes(b"d")
    mid.file_digest(other)
    memo = json.loads((tmp_path / "cache" / mid.DIGESTS_FILE).read_text())
    kept = sorted(k.rsplit("|", 2)[0] for k in memo)
    assert kept == sorted([str(f.resolve()), str(other.resolve())])
    memo = {k: v for k, v in memo.items() if k.startswith(str(f.resolve()))}
    # Another process (the in-process memo cleared) reads the recorded digest, not the file.
    mid._digest.cache_clear()
    (entry,) = memo
    memo[entry] = "recorded"
    (tmp_path / "cache" / mid.DIGESTS_FILE).write_text(json.dumps(memo))
    assert mid.file_digest(f) == "recorded"
