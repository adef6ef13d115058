"""Few labels, lots of text: distill --unlabeled-data on tiny real models. Batches mix the two
kinds of row as asked, unlabelled rows reach the teacher (cached or online) and the loss
history, a run without labels trains with --alpha 1 and is refused otherwise, and bad input
ends in one line."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import CLASSES

from kdistill.cli import main
from kdistill.data.unlabeled import UNLABELED, load_unlabeled, with_unlabeled
from kdistill.errors import KdistillError
from kdistill.teachers import cache as kcache
from kdistill.training.samplers import MixedBatchSampler


@pytest.fixture()
def workdir(tmp_path, monkeypatch, labelled_csv):
    """The toy data prepared twice: data/toy0 with no labelled training rows (96 unlabelled),
    data/toy with a quarter of train labelled (24 labelled, 72 unlabelled)."""
    monkeypatch.chdir(tmp_path)
    for name, fraction in (("toy0", "0"), ("toy", "0.25")):
        argv = [
            "prepare-data",
            "--dataset",
            str(labelled_csv),
            "--name",
            name,
            "--labeled-fraction",
            fraction,
        ]
        assert main(argv) == 0
    return tmp_path


def distill_args(teacher: Path, student: Path, dataset: str, *extra: str) -> list[str]:
    return [
        "--dataset",
        dataset,
        "--teacher-model",
        str(teacher),
        "--student-model",
        str(student),
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--mixed-precision",
        "no",
        "--learning-rate",
        "3e-3",
        "--allow-weak-teacher",
        *extra,
    ]


def run(argv: list[str]) -> Path:
    parent = Path("outputs/student_soft_distill")
    before = set(parent.iterdir()) if parent.is_dir() else set()
    assert main(argv, command="distill") == 0
    (new,) = set(parent.iterdir()) - before
    return new


def error_line(argv: list[str], capsys) -> str:
    assert main(argv, command="distill") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


# --------------------------------------------------------------------------- batch mixing


def test_natural_proportion_sees_every_row_once_and_spreads_the_labels():
    labeled, unlabeled, bs = 13, 70, 8
    sampler = MixedBatchSampler(labeled, unlabeled, bs, None, torch.Generator().manual_seed(0))
    assert len(sampler) == 11  # ceil(83 / 8)
    epochs = []
    for _ in range(2):
        batches = list(sampler)
        rows = [r for b in batches for r in b]
        assert sorted(rows) == list(range(labeled + unlabeled))  # each row exactly once
        assert [len(b) for b in batches] == [8] * 10 + [3]
        share = labeled / (labeled + unlabeled)
        for b in batches:  # in every batch, not only on average
            n_labeled = sum(r < labeled for r in b)
            assert abs(n_labeled - share * len(b)) < 1
        epochs.append(rows)
    assert epochs[0] != epochs[1]  # reshuffled every epoch


def test_explicit_ratio_fixes_each_batchs_counts_and_cycles_the_unlabelled_rows():
    labeled, unlabeled, bs = 20, 15, 4
    sampler = MixedBatchSampler(labeled, unlabeled, bs, 0.5, torch.Generator().manual_seed(0))
    assert len(sampler) == 10  # an epoch is one pass over the labelled rows, 2 per batch
    drawn: Counter = Counter()
    for _ in range(3):
        batches = list(sampler)
        assert sorted(r for b in batches for r in b if r < labeled) == list(range(labeled))
        for b in batches:
            assert sum(r < labeled for r in b) == 2 and sum(r >= labeled for r in b) == 2
            assert len(set(b)) == 4  # drawn without replacement
        drawn.update(r for b in batches for r in b if r >= labeled)
    # 60 draws from 15 rows, without replacement and cycling: each exactly 4 times.
    assert set(drawn) == set(range(labeled, labeled + unlabeled))
    assert set(drawn.values()) == {4}


def test_a_short_last_batch_keeps_the_ratio():
    sampler = MixedBatchSampler(9, 100, 8, 0.75, torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert [sum(r < 9 for r in b) for b in batches] == [2, 2, 2, 2, 1]
    assert [sum(r >= 9 for r in b) for b in batches] == [6, 6, 6, 6, 3]


def test_each_process_gets_whole_batches_under_accelerate():
    """Accelerate shards a batch sampler by handing out whole batches: every process builds
    the same batches from the seed, so together they see each row once and each batch's mix."""
    from accelerate.data_loader import BatchSamplerShard

    def sampler():
        return MixedBatchSampler(10, 30, 4, None, torch.Generator().manual_seed(3))

    whole = list(sampler())
    shards = [
        list(BatchSamplerShard(sampler(), num_processes=2, process_index=i)) for i in range(2)
    ]
    assert shards[0] == whole[0::2] and shards[1] == whole[1::2]
    assert sorted(r for s in shards for b in s for r in b) == list(range(40))


# --------------------------------------------------------------------------- loading


def test_unlabelled_rows_follow_the_labelled_ones_without_labels(workdir):
    from kdistill.data.prepare import load_prepared

    data = load_prepared(workdir / "data" / "toy")
    unlabeled = load_unlabeled("data/toy/unlabeled.parquet", "text", None, 0)
    assert unlabeled.column_names == ["text"] and len(unlabeled) == 72
    train = with_unlabeled(data.splits["train"], unlabeled)
    assert len(train) == 96
    assert train["text"][:24] == data.splits["train"]["text"]
    assert train["label"][:24] == data.splits["train"]["label"]
    assert train["label"][24:] == [UNLABELED] * 72 and train["text"][24:] == unlabeled["text"]
    # The prepared folder itself gives its unlabeled.parquet, not train or the aside labels.
    assert load_unlabeled("data/toy", "text", None, 0)["text"] == unlabeled["text"]


def test_text_columns_join_and_the_subsample_is_seeded(tmp_path):
    import csv

    path = tmp_path / "raw.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["title", "body"])
        w.writerows([(f"t{i}", f"b{i}") for i in range(50)] + [("", "")])
    full = load_unlabeled(str(path), "title,body", None, 0)
    assert len(full) == 50 and full["text"][0] == "t0. b0"  # the empty row is dropped
    sub = load_unlabeled(str(path), "title, body", 10, 0)
    assert len(sub) == 10 and set(sub["text"]) <= set(full["text"])
    assert sub["text"] == load_unlabeled(str(path), "title,body", 10, 0)["text"]
    assert sub["text"] != load_unlabeled(str(path), "title,body", 10, 1)["text"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("nothing_here.csv", None, "--unlabeled-data .*no such file or folder"),
        ("empty.csv", "", "--unlabeled-data: .*empty.csv is empty"),
        ("header.csv", "text\n", "--unlabeled-data: .*header.csv has no rows"),
        ("blank.csv", "text,id\n,1\n  ,2\n", "--unlabeled-data .*no row has text in text"),
        (
            "other.csv",
            "body\nhello\n",
            r"--unlabeled-data .*no column 'text' \(columns: body\); choose one with "
            "--unlabeled-text-column",
        ),
        ("notes.txt", "hi", "--unlabeled-data .*unsupported file type"),
    ],
)
def test_bad_unlabelled_sources_give_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(KdistillError, match=message) as e:
        load_unlabeled(str(path), "text", None, 0)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--unlabeled-ratio", "0.5"], "--unlabeled-ratio needs --unlabeled-data"),
        (["--max-unlabeled-samples", "5"], "--max-unlabeled-samples needs --unlabeled-data"),
        (["--unlabeled-data", "u.csv", "--unlabeled-ratio", "1"], "--unlabeled-ratio must be in"),
        (["--unlabeled-data", "u.csv", "--unlabeled-ratio", "0.01"], "gives 0 unlabelled rows"),
        (
            ["--unlabeled-data", "u.csv", "--max-unlabeled-samples", "0"],
            "--max-unlabeled-samples must be >= 1",
        ),
        (["--unlabeled-data", "u.csv", "--group-by-length"], "drop --group-by-length"),
    ],
)
def test_flag_combinations_are_checked_before_anything_loads(extra, message, capsys):
    line = error_line(["--dataset", "x", *extra], capsys)
    assert message in line


# --------------------------------------------------------------------------- refusals


def test_no_labels_and_alpha_below_one_is_refused_in_one_line(workdir, tiny_models, capsys):
    args = distill_args(
        tiny_models["bert_teacher"],
        tiny_models["bert_student"],
        "toy0",
        "--unlabeled-data",
        "data/toy0/unlabeled.parquet",
    )
    line = error_line(args, capsys)  # --alpha 0.7 by default
    assert (
        "--dataset toy0 has no labelled training rows, so the cross-entropy term "
        "(1 - alpha) has nothing to learn from; pass --alpha 1 or labelled data"
    ) in line
    line = error_line([*args, "--alpha", "1", "--unlabeled-ratio", "0.5"], capsys)
    assert "--unlabeled-ratio" in line and "no labelled training rows" in line
    line = error_line(
        distill_args(
            tiny_models["bert_teacher"], tiny_models["bert_student"], "toy0", "--alpha", "1"
        ),
        capsys,
    )
    assert "has no training rows" in line and "--unlabeled-data" in line
    assert not Path("outputs").exists()  # refused before any run directory


def test_validation_without_rows_is_refused_clearly(workdir, tiny_models, capsys):
    from datasets import Dataset

    Dataset.from_dict({"text": [], "label": []}).to_parquet("data/toy/validation.parquet")
    line = error_line(
        distill_args(tiny_models["bert_teacher"], tiny_models["bert_student"], "toy"), capsys
    )
    assert "validation.parquet has no rows" in line and "model selection" in line


# --------------------------------------------------------------------------- runs


def test_no_labels_at_all_trains_from_the_teacher_on_unlabelled_text(
    workdir, tiny_models, trained_teacher, monkeypatch
):
    """--labeled-fraction 0 and --alpha 1: everything the student learns comes from the
    teacher's logits on the unlabelled rows, which the disk cache holds, keyed by those rows."""
    args = distill_args(
        trained_teacher,
        tiny_models["bert_student"],
        "toy0",
        "--alpha",
        "1",
        "--unlabeled-data",
        "data/toy0/unlabeled.parquet",
        "--epochs",
        "8",
        "--teacher-cache",
        "disk",
    )
    run_dir = run(args)
    history = json.loads((run_dir / "history.json").read_text())
    epochs = history["epochs"]
    for e in epochs:
        assert (e["train_labeled_samples"], e["train_unlabeled_samples"]) == (0, 96)
        assert e["train_loss"] == e["train_loss_unlabeled"] == e["train_kl"]
        assert e["train_ce"] is None and e["train_loss_labeled"] is None
    # The KL falls (the tiny student's loss is noisy from epoch to epoch at this learning rate,
    # so the best later epoch is compared with the first, not the last).
    later = min(e["train_loss_unlabeled"] for e in epochs[1:])
    assert later < 0.7 * epochs[0]["train_loss_unlabeled"]
    assert history["teacher"]["val_accuracy"] >= 0.9
    assert history["best"]["val_accuracy"] >= 0.5  # chance is 0.25; no label was seen
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["train_rows"] == 0 and config["data"]["unlabeled_rows"] == 96
    assert config["data"]["unlabeled_source"] == "data/toy0/unlabeled.parquet"
    assert config["resolved"]["unlabeled_share"] == 1.0
    cache_file = Path(history["teacher_cache"]["path"])
    from safetensors import safe_open

    with safe_open(str(cache_file), framework="pt") as f:
        assert f.get_tensor("logits").shape == (96, len(CLASSES))

    # compare reads which data the student saw from the run's config.json.
    from kdistill.evaluation.candidates import resolve_candidate
    from kdistill.evaluation.scoring import load_student_model, model_record

    candidate = resolve_candidate(str(run_dir), "student", "--student-model")
    wrapper = load_student_model(candidate, CLASSES, torch.float32)
    logits, labels = torch.randn(4, 4), torch.tensor([0, 1, 2, 3])
    record = model_record("s", "student", wrapper, logits, labels, logits, {}, CLASSES, candidate)
    assert record["training_data"] == {"labeled_rows": 0, "unlabeled_rows": 96}

    # The cache key covers the unlabelled rows: the same ones hit, others miss.
    def no_teacher(*a, **k):
        raise AssertionError("the teacher ran")

    monkeypatch.setattr(kcache, "compute_teacher_logits", no_teacher)
    again = json.loads((run([*args, "--epochs", "1"]) / "history.json").read_text())
    assert again["teacher_cache"]["hit"] is True
    assert again["teacher_cache"]["key"] == history["teacher_cache"]["key"]
    with pytest.raises(AssertionError, match="the teacher ran"):
        main([*args, "--epochs", "1", "--max-unlabeled-samples", "50"], command="distill")


def test_cache_keys_include_the_unlabelled_set(workdir, tiny_models):
    from datasets import Dataset

    from kdistill.data.prepare import load_prepared
    from kdistill.teachers.classifier import ClassifierTeacher, load_teacher_classifier

    model, tok, columns = load_teacher_classifier(str(tiny_models["bert_teacher"]), CLASSES, False)
    teacher = ClassifierTeacher(model, tok, columns, str(tiny_models["bert_teacher"]))
    train = load_prepared(workdir / "data" / "toy").splits["train"]
    unlabeled = load_unlabeled("data/toy/unlabeled.parquet", "text", None, 0)

    def key(u: Dataset | None) -> str:
        return kcache.make_key(teacher, with_unlabeled(train, u)["text"], 64, "fp32").digest

    keys = [
        key(None),
        key(unlabeled),
        key(unlabeled.select(range(71))),
        key(Dataset.from_dict({"text": [*unlabeled["text"][:-1], "another text"]})),
    ]
    assert len(set(keys)) == 4
    assert key(unlabeled) == key(load_unlabeled("data/toy", "text", None, 0))


def test_mixed_batches_train_the_same_with_the_teacher_online_or_cached(workdir, tiny_models):
    """--teacher-cache off runs the teacher on each mixed batch, unlabelled rows included; the
    cache computes the same logits once. A quarter labelled, --unlabeled-ratio 0.5: an epoch is
    the 24 labelled rows, each batch 4 + 4."""
    runs = {}
    for mode in ("off", "memory"):
        args = distill_args(
            tiny_models["bert_teacher"],
            tiny_models["bert_student"],
            "toy",
            "--unlabeled-data",
            "data/toy/unlabeled.parquet",
            "--unlabeled-ratio",
            "0.5",
            "--teacher-cache",
            mode,
        )
        runs[mode] = json.loads((run(args) / "history.json").read_text())["epochs"][0]
    off, mem = runs["off"], runs["memory"]
    assert (off["train_labeled_samples"], off["train_unlabeled_samples"]) == (24, 24)
    for key in (
        "train_loss",
        "train_kl",
        "train_ce",
        "train_loss_labeled",
        "train_loss_unlabeled",
        "val_loss",
    ):
        assert off[key] == pytest.approx(mem[key], rel=1e-3), key
    # The epoch's loss is the mean per row: each kind's mean, weighted by its rows.
    assert off["train_loss"] == pytest.approx(
        (24 * off["train_loss_labeled"] + 24 * off["train_loss_unlabeled"]) / 48, rel=1e-5
    )


def test_eval_teacher_reports_on_the_rows_whose_labels_were_kept_aside(workdir, tiny_models):
    """The labels prepare-data took off the unlabelled rows serve one purpose: measuring a
    teacher there (how good are the soft labels the student will learn from?)."""
    from kdistill.config import EvalTeacherConfig
    from kdistill.eval_teacher import eval_teacher

    report = eval_teacher(
        EvalTeacherConfig(
            teacher_model=str(tiny_models["bert_teacher"]),
            dataset="toy",
            split="unlabeled",
            mixed_precision="no",
        )
    )
    assert report["split"] == "unlabeled" and report["rows"] == 72
    assert 0.0 <= report["accuracy"] <= 1.0


def test_a_folder_of_only_unsupervised_text_is_read_as_unlabelled(tmp_path):
    """Files named unlabeled/unsupervised are skipped beside labelled splits, but a folder of
    nothing else is what --unlabeled-data reads."""
    import csv

    from kdistill.data.unlabeled import load_unlabeled

    folder = tmp_path / "imdb"
    folder.mkdir()
    with (folder / "imdb_unsupervised.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["text"], *[[f"review {i}"] for i in range(5)]])
    assert list(load_unlabeled(str(folder), "text", None, 0)["text"]) == [
        f"review {i}" for i in range(5)
    ]
