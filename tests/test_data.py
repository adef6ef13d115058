import json
import re
from collections import Counter

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from kdistill.config import PrepareDataConfig
from kdistill.data import prepare as kdata
from kdistill.data import sampling as ksampling
from kdistill.data import sources as ksources
from kdistill.errors import KdistillError


def test_stratified_indices_keep_class_proportions():
    labels = [0] * 600 + [1] * 300 + [2] * 100
    idx = ksampling.stratified_indices(labels, 100, seed=0)
    assert len(idx) == 100 and len(set(idx)) == 100
    assert Counter(labels[i] for i in idx) == {0: 60, 1: 30, 2: 10}
    assert idx == sorted(idx)
    assert idx != ksampling.stratified_indices(labels, 100, seed=1)  # the seed matters
    assert idx == ksampling.stratified_indices(labels, 100, seed=0)  # and is reproducible


def test_stratified_indices_give_every_class_a_row():
    labels = [0] * 97 + [1] * 2 + [2]
    idx = ksampling.stratified_indices(labels, 10, seed=0)
    assert set(labels[i] for i in idx) == {0, 1, 2} and len(idx) == 10


def test_stratified_sampling_needs_one_row_per_class():
    with pytest.raises(KdistillError, match="--max-train-samples 3 is smaller than the 4 classes"):
        ksampling.stratified_indices([0, 1, 2, 3] * 10, 3, 0, "--max-train-samples")


def test_validation_split_is_stratified_and_disjoint():
    ds = Dataset.from_dict(
        {"text": [f"t{i}" for i in range(500)], "label": [i % 5 for i in range(500)]}
    )
    train, val = ksampling.split_off_validation(ds, 0.2, seed=42)
    assert len(val) == 100 and len(train) == 400
    assert Counter(val["label"]) == {c: 20 for c in range(5)}
    assert not set(train["text"]) & set(val["text"])


def write_csv(path, rows, header=("text", "label")):
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_prepare_data_writes_splits_and_info(labelled_csv, tmp_path):
    cfg = PrepareDataConfig(dataset=str(labelled_csv), data_dir=str(tmp_path / "data"))
    path, summary = kdata.prepare(cfg)
    assert path == tmp_path / "data" / "toy"
    assert sorted(p.name for p in path.iterdir()) == [
        "dataset_info.json",
        "train.parquet",
        "validation.parquet",
    ]
    info = json.loads((path / "dataset_info.json").read_text())
    assert info["label_names"] == ["Animal", "Building", "Company", "Film"]
    assert info["splits"]["train"]["rows"] == 96 and info["splits"]["validation"]["rows"] == 24
    assert info["splits"]["validation"]["class_counts"] == {c: 6 for c in info["label_names"]}
    assert info["splits"]["train"]["words"]["p50"] > 0
    assert "Animal" in summary and "validation" in summary
    again = kdata.load_prepared(path)
    assert again.label_names == info["label_names"]
    assert len(again.splits["train"]) == 96
    assert set(again.splits["validation"]["label"]) == {0, 1, 2, 3}


def test_test_split_is_stratified_held_out_and_disjoint(labelled_csv, tmp_path):
    cfg = PrepareDataConfig(
        dataset=str(labelled_csv),
        data_dir=str(tmp_path / "data"),
        test_split=0.2,
        validation_split=0.25,
    )
    path, _ = kdata.prepare(cfg)
    info = json.loads((path / "dataset_info.json").read_text())
    rows = {s: info["splits"][s]["rows"] for s in ("train", "validation", "test")}
    assert rows == {"train": 72, "validation": 24, "test": 24}  # 120 rows: 20% test, then 25%
    assert info["splits"]["test"]["class_counts"] == {c: 6 for c in info["label_names"]}
    data = kdata.load_prepared(path)
    texts = {s: set(data.splits[s]["text"]) for s in data.splits}
    assert not texts["test"] & texts["train"] and not texts["test"] & texts["validation"]
    assert sum(len(t) for t in texts.values()) == 120


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"test_split": 1.0}, "--test-split must be in [0, 1)"),
        ({"test_split": -0.1}, "--test-split must be in [0, 1)"),
        ({"test_split": 0.5, "validation_split": 0.5}, "must leave rows to train on"),
    ],
)
def test_test_split_range(kwargs, message):
    with pytest.raises(KdistillError, match=re.escape(message)):
        PrepareDataConfig(dataset="x.csv", **kwargs)


def test_folder_with_named_splits_keeps_test(tmp_path):
    folder = tmp_path / "news"
    folder.mkdir()
    rows = [(f"text {i}", ["b", "a", "c"][i % 3]) for i in range(60)]
    write_csv(folder / "train.csv", rows)
    write_csv(folder / "test.csv", rows[:12])
    data = kdata.build(str(folder), None, None, 0.25, 0)
    assert list(data.splits) == ["train", "validation", "test"]
    assert data.label_names == ["a", "b", "c"]  # sorted names
    assert len(data.splits["test"]) == 12 and len(data.splits["validation"]) == 15


def test_jsonl_and_parquet_sources(tmp_path):
    rows = [{"sentence": f"s{i}", "y": i % 2} for i in range(20)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    data = kdata.build(str(jsonl), "sentence", "y", 0.2, 0)
    assert data.label_names == ["0", "1"]
    pq = tmp_path / "d.parquet"
    Dataset.from_list(rows).to_parquet(str(pq))
    assert kdata.build(str(pq), "sentence", "y", 0.2, 0).label_names == ["0", "1"]


def test_integer_labels_sort_numerically(tmp_path):
    csv = write_csv(tmp_path / "n.csv", [(f"t{i}", i % 12) for i in range(48)])
    assert kdata.build(str(csv), None, None, 0.25, 0).label_names == [str(i) for i in range(12)]


def test_unknown_label_in_test_is_an_error(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    write_csv(folder / "train.csv", [("x", "a"), ("y", "b")] * 5)
    write_csv(folder / "test.csv", [("z", "c")])
    with pytest.raises(KdistillError, match="test has labels that train does not have: c"):
        kdata.build(str(folder), None, None, 0.2, 0)


def test_missing_column_names_the_flag(labelled_csv):
    with pytest.raises(KdistillError, match=r"no column 'body'.*--text-column"):
        kdata.build(str(labelled_csv), "body", None, 0.2, 0)
    with pytest.raises(KdistillError, match=r"no column 'category'.*--label-column"):
        kdata.build(str(labelled_csv), None, "category", 0.2, 0)


def test_empty_and_header_only_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(KdistillError, match="empty"):
        kdata.build(str(empty), None, None, 0.2, 0)
    header = write_csv(tmp_path / "header.csv", [])
    with pytest.raises(KdistillError, match="empty|no row"):
        kdata.build(str(header), None, None, 0.2, 0)


def test_unknown_dataset_name():
    with pytest.raises(KdistillError, match="no such file or folder"):
        ksources.load_source("no_such_dataset_here")


def test_dbpedia_alias_joins_title_and_content(monkeypatch):
    """The Hub is mocked at datasets' boundary: the alias asks for fancyzhx/dbpedia_14."""
    import datasets

    features = Features(
        {
            "label": ClassLabel(names=["Company", "EducationalInstitution", "Artist"]),
            "title": Value("string"),
            "content": Value("string"),
        }
    )

    def split(n):
        return Dataset.from_dict(
            {
                "label": [i % 3 for i in range(n)],
                "title": [f"T{i}" for i in range(n)],
                "content": [f"body {i}" for i in range(n)],
            },
            features=features,
        )

    calls = []

    def fake_load_dataset(path, *args, **kwargs):
        calls.append(path)
        return DatasetDict({"train": split(30), "test": split(9)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = kdata.build("dbpedia", None, None, 0.2, 0)
    assert calls == ["fancyzhx/dbpedia_14"]
    assert data.name == "dbpedia"
    assert data.label_names == ["Company", "EducationalInstitution", "Artist"]  # ClassLabel order
    assert data.splits["test"][0]["text"] == "T0. body 0"
    assert set(data.splits) == {"train", "validation", "test"}


def test_offline_hub_gives_one_line_with_the_local_form(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'fancyzhx/ag_news' on the Hub (ConnectError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(KdistillError) as e:
        kdata.build("ag_news", None, None, 0.2, 0)
    assert "cannot reach the Hugging Face Hub" in str(e.value)
    assert "--dataset path/to/labelled.csv" in str(e.value)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- --labeled-fraction


def test_labeled_fraction_is_stratified_disjoint_and_keeps_the_labels_aside(tmp_path):
    from datasets import load_dataset

    rows = [(f"text {i}", ["a", "b", "c", "d"][i % 4]) for i in range(400)]
    csv = write_csv(tmp_path / "d.csv", rows)
    cfg = PrepareDataConfig(
        dataset=str(csv), data_dir=str(tmp_path / "data"), test_split=0.2, labeled_fraction=0.1
    )
    path, summary = kdata.prepare(cfg)
    assert sorted(p.name for p in path.iterdir()) == [
        "dataset_info.json",
        "test.parquet",
        "train.parquet",
        "unlabeled.parquet",
        "unlabeled_labels.parquet",
        "validation.parquet",
    ]
    info = json.loads((path / "dataset_info.json").read_text())
    # 400 rows: 80 test, then 64 validation of the 320 left, then 10% of 256 keep labels.
    assert info["labeled_fraction"] == 0.1
    assert (info["labeled_rows"], info["unlabeled_rows"]) == (26, 230)
    assert info["splits"]["unlabeled"]["rows"] == 230
    assert "unlabeled: 230 train rows without labels" in summary

    def read(name):
        return load_dataset("parquet", data_files=str(path / name))["train"]

    train, unlabeled, aside = (
        read("train.parquet"),
        read("unlabeled.parquet"),
        read("unlabeled_labels.parquet"),
    )
    assert unlabeled.column_names == ["text"]  # the labels are dropped from the split...
    assert aside["text"] == unlabeled["text"]  # ...and kept aside row for row
    truth = dict(rows)
    assert all(truth[t] == y for t, y in zip(aside["text"], aside["label"], strict=True))
    # Stratified: 26 labelled rows over 4 equal classes give 6 or 7 each.
    assert sorted(Counter(train["label"]).values()) == [6, 6, 7, 7]
    texts = {n: set(read(f"{n}.parquet")["text"]) for n in ("train", "validation", "test")}
    texts["unlabeled"] = set(unlabeled["text"])
    assert sum(len(t) for t in texts.values()) == 400  # disjoint and complete
    assert len(set().union(*texts.values())) == 400
    # Validation and test keep all their rows: only train loses labels.
    assert len(texts["validation"]) == 64 and len(texts["test"]) == 80
    data = kdata.load_prepared(path)
    assert len(data.splits["train"]) == 26
    assert data.splits["unlabeled"]["label"] == [data.label_names.index(y) for y in aside["label"]]


def test_labeled_fraction_zero_leaves_an_empty_train_that_loads(labelled_csv, tmp_path):
    cfg = PrepareDataConfig(
        dataset=str(labelled_csv), data_dir=str(tmp_path / "data"), labeled_fraction=0.0
    )
    path, summary = kdata.prepare(cfg)
    info = json.loads((path / "dataset_info.json").read_text())
    assert (info["labeled_rows"], info["unlabeled_rows"]) == (0, 96)
    assert info["splits"]["train"]["words"] is None
    data = kdata.load_prepared(path)
    assert len(data.splits["train"]) == 0 and len(data.splits["validation"]) == 24
    assert data.splits["train"].features["label"].dtype == "int64"
    assert "unlabeled: 96 train rows" in summary


def test_labeled_fraction_range_and_too_few_rows(labelled_csv, tmp_path):
    for bad in (-0.1, 1.5):
        with pytest.raises(KdistillError, match=re.escape("--labeled-fraction must be in [0, 1]")):
            PrepareDataConfig(dataset="x.csv", labeled_fraction=bad)
    cfg = PrepareDataConfig(
        dataset=str(labelled_csv), data_dir=str(tmp_path / "data"), labeled_fraction=0.02
    )
    with pytest.raises(
        KdistillError,
        match=r"--labeled-fraction 0.02 keeps 2 of 96 training rows, "
        r"fewer than the 4 classes",
    ):
        kdata.prepare(cfg)


def test_validation_without_labels_says_why_it_needs_them(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    write_csv(folder / "train.csv", [("x", "a"), ("y", "b")] * 5)
    write_csv(folder / "validation.csv", [("z", "")])
    with pytest.raises(KdistillError, match="validation needs labels, for model selection"):
        kdata.build(str(folder), None, None, 0.2, 0)


# --------------------------------------------------------------------------- folder splits


def _rows(n: int, tag: str) -> list[tuple[str, str]]:
    return [(f"{tag} text {i}", ["a", "b", "c"][i % 3]) for i in range(n)]


def test_train_data_and_test_data_files_keep_test_out_of_training(tmp_path):
    # The old rule read only the name before the first "-"/".", so train_data.csv and
    # test_data.csv were both unnamed and all 800 rows went into train and validation.
    folder = tmp_path / "news"
    folder.mkdir()
    write_csv(folder / "train_data.csv", _rows(600, "train"))
    write_csv(folder / "test_data.csv", _rows(200, "test"))
    data = kdata.build(str(folder), None, None, 0.2, 0)
    assert len(data.splits["test"]) == 200
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 600
    seen = list(data.splits["train"]["text"]) + list(data.splits["validation"]["text"])
    assert not any(t.startswith("test") for t in seen)


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("train.csv", {"train"}),
        ("training.csv", {"train"}),
        ("train_data.csv", {"train"}),
        ("dbpedia_train.csv", {"train"}),
        ("train-00000-of-00001.parquet", {"train"}),
        ("trainData.jsonl", {"train"}),
        ("my_test_data.jsonl", {"test"}),
        ("testing.tsv", {"test"}),
        ("test1.csv", {"test"}),
        ("ag_news.test.csv", {"test"}),
        ("val.csv", {"validation"}),
        ("valid.csv", {"validation"}),
        ("validation-00000-of-00001.parquet", {"validation"}),
        ("DBpedia-Dev.csv", {"validation"}),
        # Words that contain a split name are not one.
        ("contest.csv", set()),
        ("latest.csv", set()),
        ("develop.csv", set()),
        ("trains.csv", set()),
        ("retraining.csv", set()),
        ("interval.csv", set()),
        ("train_test_split.csv", {"train", "test"}),
    ],
)
def test_split_of_file_reads_name_tokens(name, split):
    assert ksources.split_of_file(name) == split


def test_prefixed_and_sharded_split_files(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    write_csv(folder / "train-00000-of-00002.csv", _rows(30, "t0"))
    write_csv(folder / "train-00001-of-00002.csv", _rows(30, "t1"))
    write_csv(folder / "dbpedia_validation.csv", _rows(12, "v"))
    write_csv(folder / "my_test_data.csv", _rows(9, "x"))
    data = kdata.build(str(folder), None, None, 0.2, 0)
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 60, "validation": 12, "test": 9}


def test_folder_of_unnamed_files_is_train(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_csv(folder / "part1.csv", _rows(30, "p1"))
    write_csv(folder / "part2.csv", _rows(30, "p2"))
    data = kdata.build(str(folder), None, None, 0.2, 0)
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 60


@pytest.mark.parametrize(
    ("files", "message"),
    [
        # A test file and one that names no split: which is train is a guess.
        (("test.csv", "news.csv"), r"cannot tell which split news\.csv belongs to"),
        (("train.csv", "extra.csv"), r"cannot tell which split extra\.csv belongs to"),
        (("train_test_split.csv",), r"cannot tell which split train_test_split\.csv is"),
        # Only held-out files: never train on them.
        (("test.csv", "validation.csv"), r"no train file \(test\.csv, validation\.csv"),
    ],
)
def test_folder_whose_files_cannot_be_told_apart_is_refused(tmp_path, files, message):
    folder = tmp_path / "d"
    folder.mkdir()
    for name in files:
        write_csv(folder / name, _rows(30, name))
    with pytest.raises(KdistillError, match=message) as e:
        kdata.build(str(folder), None, None, 0.2, 0)
    assert "\n" not in str(e.value)


def test_prepared_folder_rebuilds_without_its_unlabelled_file(labelled_csv, tmp_path):
    cfg = PrepareDataConfig(
        dataset=str(labelled_csv), data_dir=str(tmp_path / "data"), labeled_fraction=0.5
    )
    target, _ = kdata.prepare(cfg)
    data = kdata.build(str(target), None, None, 0.2, 0)
    assert set(data.splits) == {"train", "validation"}
    assert len(data.splits["train"]) == kdata.load_prepared(target).info["labeled_rows"]


# --------------------------------------------------------------------------- Hub splits


def test_hub_split_without_labels_is_dropped_with_a_warning(monkeypatch, caplog):
    """GLUE's test splits carry label -1 on every row: the Hub is mocked at datasets' boundary."""
    import datasets

    features = Features(
        {"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])}
    )

    def split(n, hidden=False):
        labels = [-1] * n if hidden else [i % 2 for i in range(n)]
        return Dataset.from_dict(
            {"sentence": [f"s{i}" for i in range(n)], "label": labels}, features=features
        )

    def fake_load_dataset(path, *args, **kwargs):
        assert path == "nyu-mll/glue-sst2"
        return DatasetDict(
            {"train": split(40), "validation": split(10), "test": split(8, hidden=True)}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with caplog.at_level("WARNING", logger="kdistill.data.labels"):
        data = kdata.build("nyu-mll/glue-sst2", "sentence", None, 0.2, 0)
    assert set(data.splits) == {"train", "validation"}
    assert len(data.splits["train"]) == 40 and len(data.splits["validation"]) == 10
    assert any(
        "test split has no row with both text and label" in r.getMessage()
        and "dropped it" in r.getMessage()
        for r in caplog.records
    )


def test_hub_validation_without_labels_is_carved_from_train(monkeypatch):
    import datasets

    def fake_load_dataset(path, *args, **kwargs):
        train = Dataset.from_dict({"text": [f"t{i}" for i in range(40)], "label": ["a", "b"] * 20})
        val = Dataset.from_dict({"text": ["v0", "v1"]})  # no label column at all
        return DatasetDict({"train": train, "validation": val})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = kdata.build("org/no-val-labels", None, None, 0.25, 0)
    assert len(data.splits["validation"]) == 10 and len(data.splits["train"]) == 30


def test_hub_train_without_labels_is_still_an_error(monkeypatch):
    import datasets

    def fake_load_dataset(path, *args, **kwargs):
        train = Dataset.from_dict(
            {"text": ["t0", "t1"], "label": [None, None]},
            features=Features({"text": Value("string"), "label": Value("string")}),
        )
        return DatasetDict({"train": train})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(KdistillError, match="empty in train"):
        kdata.build("org/no-labels", None, None, 0.25, 0)


def _classlabel_parquet(path, classes: list[str], rows: list[tuple[str, str]]) -> None:
    """A Parquet file as datasets writes it: the label column a ClassLabel over `classes`, in
    that order, stored as ids."""
    features = Features({"text": Value("string"), "label": ClassLabel(names=classes)})
    ids = {c: i for i, c in enumerate(classes)}
    data = {"text": [t for t, _ in rows], "label": [ids[c] for _, c in rows]}
    Dataset.from_dict(data, features=features).to_parquet(str(path))


def test_each_split_is_decoded_through_its_own_class_names(tmp_path):
    """train.parquet says 0 = Animal, test.parquet says 0 = Film: test's ids used to be read
    through train's names, so every test row was scored as another class."""
    classes = ["Animal", "Building", "Company", "Film"]
    rows = [(f"{c.lower()} row {i}", c) for i in range(6) for c in classes]
    folder = tmp_path / "mixed"
    folder.mkdir()
    _classlabel_parquet(folder / "train.parquet", classes, rows)
    _classlabel_parquet(folder / "test.parquet", list(reversed(classes)), rows[:8])
    data = kdata.build(str(folder), None, None, 0.25, 0)
    assert data.label_names == classes  # train's order names the ids
    for split in ("train", "validation", "test"):
        for row in data.splits[split]:
            assert row["text"].startswith(data.label_names[row["label"]].lower()), (split, row)


def test_a_label_id_past_its_class_names_is_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "bad"
    folder.mkdir()
    _classlabel_parquet(folder / "train.parquet", ["a", "b"], [("x", "a"), ("y", "b")] * 4)
    _classlabel_parquet(folder / "test.parquet", ["a", "b"], [("z", "a")])
    # The same file with id 5 written in: its ClassLabel (in the schema metadata) names 2.
    table = pq.read_table(folder / "test.parquet")
    column = table.schema.get_field_index("label")
    ids = pa.array([5], type=table.schema.field(column).type)
    table = table.set_column(column, "label", ids).replace_schema_metadata(table.schema.metadata)
    pq.write_table(table, folder / "test.parquet")
    with pytest.raises(KdistillError) as e:
        kdata.build(str(folder), None, None, 0.25, 0)
    assert "test has the label id 5, but its class names stop at 1 (b)" in str(e.value)
    assert "\n" not in str(e.value)
