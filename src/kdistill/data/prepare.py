"""Labelled text data: load from an alias, a Hub id or local files; name the classes; split and
subsample with stratification; save and reload the prepared splits.

Every data set becomes splits with two columns, `text` (str) and `label` (int), plus the ordered
class names (`label_names`). Class names, not ids, are the label space: teachers are matched to
the data set by name, so a teacher trained with another label order still lines up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.data.hub import use_cache_if_offline
from kdistill.errors import KdistillError
from kdistill.training.runs import atomic_dir, atomic_write_json

if TYPE_CHECKING:
    from datasets import Dataset, Features
    from transformers import PreTrainedTokenizerBase

    from kdistill.config import PrepareDataConfig

logger = logging.getLogger(__name__)

INFO_FILE = "dataset_info.json"
FILE_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}
SPLIT_NAMES = ("train", "validation", "test")
# prepare-data --labeled-fraction: train rows whose labels are dropped. The text alone goes to
# UNLABELED_FILE (a transfer set for distill --unlabeled-data); the labels are kept aside in
# UNLABELED_LABELS_FILE, read only to evaluate on those rows (eval-teacher --split unlabeled),
# never by training.
UNLABELED_SPLIT = "unlabeled"
UNLABELED_FILE = "unlabeled.parquet"
UNLABELED_LABELS_FILE = "unlabeled_labels.parquet"
# The label of a training row without one: the transformers/PyTorch ignore index (kd_loss takes
# any negative label as "unlabelled").
UNLABELED = -100
# tokenize() cuts a text to max(max_length * CHARS_PER_TOKEN_BOUND, MIN_CHARS_KEPT) characters
# before tokenising it: real tokens average 3-6 characters, and even runs of whitespace, which
# some tokenizers drop, would have to fill most of 64k characters to move a kept token.
CHARS_PER_TOKEN_BOUND = 64
MIN_CHARS_KEPT = 65_536
SPLIT_ALIASES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}


@dataclass(frozen=True)
class Alias:
    hub_id: str
    text_columns: tuple[str, ...]
    label_column: str


# The seed's short names. DBpedia's `title` carries much of the class signal, so it is kept.
ALIASES = {
    "dbpedia": Alias("fancyzhx/dbpedia_14", ("title", "content"), "label"),
    "ag_news": Alias("fancyzhx/ag_news", ("text",), "label"),
}


@dataclass
class LabelledData:
    """Splits with `text` and integer `label` columns; `label_names[i]` names class i."""

    name: str
    label_names: list[str]
    splits: dict[str, Dataset]
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# --------------------------------------------------------------------------- loading sources


def dataset_name(dataset: str) -> str:
    """A folder-safe short name: the alias, the Hub id's last part, or the file's stem."""
    path = Path(dataset)
    if path.name in ("", ".", "..") and path.exists():  # `.`, `..`: the folder's own name
        path = path.resolve()
    base = path.stem if path.suffix.lower() in FILE_FORMATS else path.name
    if not base:
        base = dataset.rstrip("/").split("/")[-1]
    # One plain path component: never `.`, `..` or hidden, so <data-dir>/<name> stays inside.
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).lstrip(".") or "dataset"


# A file's split is read from its name's tokens: "dbpedia_train.csv", "train-00000-of-00001
# .parquet" and "my_test_data.jsonl" name a split, "contest.csv" and "develop.csv" do not.
SPLIT_TOKENS = {
    "train": "train",
    "training": "train",
    "test": "test",
    "testing": "test",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
}
# Files of text without labels (prepare-data --labeled-fraction writes unlabeled.parquet): not
# a labelled split, and read only by --unlabeled-data.
UNLABELED_TOKENS = ("unlabeled", "unlabelled", "unsupervised")
# JSON beside the data that describes it, not rows: prepare-data's and datasets' own.
METADATA_FILES = (INFO_FILE, "dataset_infos.json", "dataset_dict.json", "state.json")


def name_tokens(name: str) -> list[str]:
    """A file name's words, lowercased: split at every character that is not a letter or digit,
    between letters and digits, and where camelCase starts a word ("trainData" -> train, data)."""
    boundaries = r"[^0-9A-Za-z]+|(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])"
    return [w.lower() for w in re.split(boundaries, name) if w]


def split_of_file(name: str) -> set[str]:
    """The splits a file name's tokens name (its extension left out): usually none or one."""
    return {SPLIT_TOKENS[t] for t in name_tokens(Path(name).stem) if t in SPLIT_TOKENS}


def _local_files(path: Path, flag: str = "--dataset") -> dict[str, list[str]]:
    """Map split -> files. A folder's files are told apart by the split their names give
    (train.csv, dbpedia_test.csv, validation-00000-of-00001.parquet...); a folder where no name
    gives one is all train (shards of one set). A file whose name says test or validation is
    never merged into train: a folder mixing split-named files and others, a name giving two
    splits, or split files without a train one, is an error naming the files."""
    if path.is_file():
        if path.suffix.lower() not in FILE_FORMATS:
            raise KdistillError(
                f"{flag} {path}: unsupported file type {path.suffix!r}; "
                f"use one of {', '.join(sorted(FILE_FORMATS))}"
            )
        return {"train": [str(path)]}
    if not path.is_dir():
        raise KdistillError(f"{flag} {path}: not a regular file or folder")
    files = sorted(
        p
        for p in path.iterdir()
        if p.suffix.lower() in FILE_FORMATS and p.is_file() and p.name not in METADATA_FILES
    )
    unlabelled = [p for p in files if set(name_tokens(p.stem)) & set(UNLABELED_TOKENS)]
    if unlabelled and len(unlabelled) < len(files):  # a folder of them only is --unlabeled-data's
        logger.info(
            "%s %s: skipping %s (text without labels; pass it with --unlabeled-data)",
            flag,
            path,
            ", ".join(p.name for p in unlabelled),
        )
        files = [p for p in files if p not in unlabelled]
    if not files:
        raise KdistillError(f"{flag} {path}: the folder holds no CSV/TSV/JSON/JSONL/Parquet file")
    splits = {p: split_of_file(p.name) for p in files}
    two = [p for p, s in splits.items() if len(s) > 1]
    if two:
        raise KdistillError(
            f"{flag} {path}: cannot tell which split {two[0].name} is (its name says "
            f"{' and '.join(sorted(splits[two[0]]))}); rename it so its name gives one of "
            "train, validation or test"
        )
    named = {p: s.pop() for p, s in splits.items() if s}
    if not named:
        if len(files) > 1:
            logger.info(
                "%s %s: no file is named after a split; reading all %d as train",
                flag,
                path,
                len(files),
            )
        return {"train": [str(p) for p in files]}
    unnamed = [p.name for p in files if p not in named]
    if unnamed:
        shown = ", ".join(unnamed[:3]) + (" ..." if len(unnamed) > 3 else "")
        raise KdistillError(
            f"{flag} {path}: cannot tell which split {shown} belongs to (other files are named "
            f"after their split: {', '.join(p.name for p in named)}); put train, validation or "
            "test in each file's name, or move it out of the folder"
        )
    by_split: dict[str, list[str]] = {}
    for p, split in named.items():
        by_split.setdefault(split, []).append(str(p))
    if "train" not in by_split:
        raise KdistillError(
            f"{flag} {path}: no train file ({', '.join(p.name for p in named)} name other "
            "splits); add one with train in its name"
        )
    return by_split


def _load_local(path: Path, flag: str = "--dataset") -> dict[str, Dataset]:
    from datasets import load_dataset

    splits: dict[str, Dataset] = {}
    for split, files in _local_files(path, flag).items():
        suffixes = {Path(f).suffix.lower() for f in files}
        if len(suffixes) > 1:
            raise KdistillError(f"{flag} {path}: mixed file types for {split}: {sorted(suffixes)}")
        suffix = suffixes.pop()
        kwargs: dict[str, Any] = {"delimiter": "\t"} if suffix == ".tsv" else {}
        empty = [f for f in files if Path(f).stat().st_size == 0]
        if empty:
            raise KdistillError(f"{flag}: {empty[0]} is empty")
        try:
            if FILE_FORMATS[suffix] == "csv":
                kwargs["features"] = _csv_as_text(files[0], kwargs.get("delimiter", ","))
            with _quiet_datasets_errors():
                splits[split] = load_dataset(
                    FILE_FORMATS[suffix], data_files=files, split="train", **kwargs
                )
        except Exception as e:  # parser errors come in many types; the message is what matters
            raise _read_error(flag, files, suffix, e) from e
    return splits


def _csv_as_text(path: str, delimiter: str) -> Features:
    """Every CSV column read as text. pandas would guess types: a label column "01", "02" would
    become the classes 1 and 2, "1.0" class 1, a text "007" the text "7". Empty cells and the
    usual missing-value markers (NA, NaN, null) stay missing."""
    import pandas as pd
    from datasets import Features, Value

    columns = pd.read_csv(path, nrows=0, delimiter=delimiter).columns
    return Features({str(c): Value("string") for c in columns})


@contextlib.contextmanager
def _quiet_datasets_errors() -> Iterator[None]:
    """datasets logs a parser's error (twice, through its own handler too) before raising it;
    kdistill reports it once, in one line."""
    root = logging.getLogger("datasets")
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def _read_error(flag: str, files: list[str], suffix: str, e: BaseException) -> KdistillError:
    """One line saying what is wrong with the file, and where when that can be found."""
    chain = [e]  # datasets wraps the parser's error in "An error occurred while generating..."
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
        if len(chain) > 10:
            break
    if any("corresponds to no data" in str(x) for x in chain):  # a header and no rows
        return KdistillError(f"{flag}: {files[0]} has no rows")
    e = chain[-1]
    for f in files:
        if suffix != ".parquet":  # text that is not UTF-8 breaks parsers in many ways
            bad = _first_non_utf8_line(f)
            if bad is not None:
                return KdistillError(
                    f"{flag}: {f} is not UTF-8 text (line {bad}); save it as UTF-8 and try again"
                )
        if suffix in (".json", ".jsonl"):
            bad_json = _first_bad_json_line(f)
            if bad_json is not None:
                return KdistillError(
                    f"{flag}: {f} line {bad_json[0]} is not a JSON object: {bad_json[1]}"
                )
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    hint = "; is it a Parquet file?" if suffix == ".parquet" else ""
    if suffix == ".csv":
        with open(files[0], encoding="utf-8", errors="replace") as f:
            hint = _separator_hint([f.readline().strip()])
    return KdistillError(f"{flag}: cannot read {files[0]}: {first}{hint}")


def _first_non_utf8_line(path: str) -> int | None:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _first_bad_json_line(path: str) -> tuple[int, str] | None:
    """(line number, why) of the first line of a JSON Lines file that is not a JSON object, None
    when every line is one (or the file is one JSON document, not JSON Lines)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        json.loads("\n".join(lines))
        return None  # one JSON document: its own error stands
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            return number, err.msg
        if not isinstance(obj, dict):
            return number, f"a {type(obj).__name__}, not an object"
    return None


def _load_hub(hub_id: str, flag: str = "--dataset") -> dict[str, Dataset]:
    from datasets import load_dataset

    try:
        use_cache_if_offline()
        dsd = load_dataset(hub_id)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if _looks_offline(e):
            example = "path/to/labelled.csv" if flag == "--dataset" else "path/to/texts.csv"
            raise KdistillError(
                f"{flag} {hub_id}: cannot reach the Hugging Face Hub ({msg}); offline, pass a "
                f"local CSV/JSONL/Parquet file or folder instead, e.g. {flag} {example}"
            ) from e
        raise KdistillError(f"{flag} {hub_id}: could not load it from the Hub: {msg}") from e
    return {SPLIT_ALIASES.get(k, k): v for k, v in dsd.items()}


def _looks_offline(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(
        s in text
        for s in (
            "connect",
            "offline",
            "resolve",
            "network",
            "timed out",
            "timeout",
            "couldn't reach",
            "name or service",
            "localentrynotfound",
        )
    )


def no_load_count_ping() -> None:
    """datasets sends a HEAD request to S3 (a download counter, with a 3 s timeout) every time
    it loads even a local CSV or Parquet file; local data must not touch the network."""
    import datasets.config

    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False


def load_source(dataset: str, flag: str = "--dataset") -> tuple[dict[str, Dataset], Alias | None]:
    """Raw splits of an alias, a local file/folder, or a Hub data set id; errors name `flag`."""
    import datasets

    # datasets draws a bar for every tiny split generation, map and cast; kdistill draws its own.
    datasets.disable_progress_bars()
    no_load_count_ping()
    path = Path(dataset).expanduser()
    if path.exists():
        return _load_local(path, flag), None
    if dataset in ALIASES:
        alias = ALIASES[dataset]
        return _load_hub(alias.hub_id, flag), alias
    if "/" in dataset and not dataset.startswith((".", "/")) and dataset.count("/") == 1:
        return _load_hub(dataset, flag), None
    raise KdistillError(
        f"{flag} {dataset}: no such file or folder, and not an alias "
        f"({', '.join(ALIASES)}) or a Hub id (org/name)"
    )


# --------------------------------------------------------------------------- labels and text


def _label_names_of(ds: Dataset, column: str) -> list[str] | None:
    feature = ds.features[column]
    names = getattr(feature, "names", None)
    return [str(n) for n in names] if names else None


def to_labelled(
    raw: dict[str, Dataset],
    text_columns: list[str],
    label_column: str,
    where: str,
    drop_unlabelled: bool = False,
) -> tuple[dict[str, Dataset], list[str]]:
    """Reduce every split to (`text`: str, `label`: int) and name the classes.

    Class names come from a ClassLabel feature when the source has one (its order is kept);
    otherwise they are the sorted distinct values of train's label column. A validation or test
    label that train never shows is an error, not a silently dropped row.

    `drop_unlabelled` (Hub data sets): a split other than train without one labelled row is
    dropped with a warning. GLUE-style test splits hide their labels (all -1, or no label
    column): nothing there can be scored, and the rest of the data set is still good. A local
    file without labels is the user's own mistake and stays an error.
    """
    if "train" not in raw:
        raise KdistillError(f"{where}: no train split (found: {', '.join(raw) or 'none'})")
    raw = dict(raw)
    for split, ds in list(raw.items()):
        if drop_unlabelled and split != "train" and label_column not in ds.column_names:
            logger.warning(
                "%s: the %s split has no label column %r; dropped it", where, split, label_column
            )
            del raw[split]
            continue
        missing = [c for c in [*text_columns, label_column] if c not in ds.column_names]
        if missing:
            flag = "--label-column" if label_column in missing else "--text-column"
            hint = _separator_hint(ds.column_names)
            raise KdistillError(
                f"{where}: {split} has no column {missing[0]!r} (columns: "
                f"{', '.join(ds.column_names)}); choose one with {flag}{hint}"
            )
        if len(ds) == 0 and not (drop_unlabelled and split != "train"):
            raise KdistillError(f"{where}: the {split} split is empty")

    names = _label_names_of(raw["train"], label_column)
    if names is None:
        values = {label_value(v) for v in raw["train"][label_column]} - {None}
        if not values:
            raise KdistillError(f"{where}: the label column {label_column!r} is empty in train")
        names = sort_class_names(values)  # type: ignore[arg-type]
    if len(names) < 2:
        raise KdistillError(
            f"{where}: the label column {label_column!r} has one class ({names[0]}); a "
            "classifier needs at least 2 classes"
        )
    index = {n: i for i, n in enumerate(names)}

    out: dict[str, Dataset] = {}
    for split, ds in raw.items():
        has_names = _label_names_of(ds, label_column) is not None

        def convert(batch: dict[str, list], has_names: bool = has_names) -> dict[str, list]:
            texts, labels = [], []
            for i in range(len(batch[label_column])):
                value = batch[label_column][i]
                texts.append(join_text([batch[c][i] for c in text_columns]))
                if has_names:
                    labels.append(None if value is None or value < 0 else names[value])
                else:
                    labels.append(label_value(value))
            return {"text": texts, "label_name": labels}

        conv = ds.map(convert, batched=True, remove_columns=ds.column_names, desc=f"{split} rows")
        before = len(conv)
        conv = conv.filter(lambda r: r["text"] is not None and r["label_name"] is not None)
        if len(conv) == 0 and drop_unlabelled and split != "train":
            logger.warning(
                "%s: the %s split has no row with both text and label (%d rows, "
                "labels hidden as in GLUE's test splits); dropped it",
                where,
                split,
                before,
            )
            continue
        if len(conv) < before:
            logger.warning(
                "%s: dropped %d %s rows with empty text or label", where, before - len(conv), split
            )
        if len(conv) == 0:
            why = (
                ": validation needs labels, for model selection and reporting"
                if split == "validation"
                else ""
            )
            raise KdistillError(
                f"{where}: the {split} split has no row with both text and label{why}"
            )
        unknown = sorted(set(conv["label_name"]) - set(index), key=_natural_key)
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise KdistillError(
                f"{where}: {split} has labels that train does not have: {shown}; "
                f"fix or drop those rows"
            )
        conv = conv.map(
            lambda b: {"label": [index[n] for n in b["label_name"]]},
            batched=True,
            remove_columns=["label_name"],
        )
        out[split] = conv
    return out, names


def _separator_hint(columns: list[str]) -> str:
    """A CSV header read as one column that holds another separator was written with it."""
    if len(columns) != 1 or "," in columns[0]:
        return ""
    for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'")):
        if sep in columns[0]:
            fix = "name it .tsv" if sep == "\t" else "save it with commas"
            return f"; the file looks separated by {name}, not commas: {fix}"
    return ""


def label_value(value: Any) -> str | None:
    """A label cell as a class name; None for a missing one. An integer column with a gap is
    stored as floats (1.0, nan) in Parquet or JSON from pandas: nan is missing and 1.0 is class
    "1", not a class "1.0"."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value)
    return text if text.strip() else None


def join_text(parts: list[Any]) -> str | None:
    """Several text columns (DBpedia's title and content) become one text: the non-empty parts
    joined by '. '; None when every part is empty."""
    kept = [str(p).strip() for p in parts if p is not None and str(p).strip()]
    return ". ".join(kept) if kept else None


def _natural_key(s: str) -> tuple[list[Any], str]:
    """Sort '2' before '10' so integer labels keep their numeric order; '1' and '01', equal as
    numbers, by their text, so the class order never depends on set iteration order."""
    parts = re.split(r"(\d+)", s)  # digit runs at the odd positions
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], s


def sort_class_names(values: set[str]) -> list[str]:
    return sorted(values, key=_natural_key)


# --------------------------------------------------------------------------- sampling


def stratified_indices(labels: list[int], n: int, seed: int, what: str = "sample") -> list[int]:
    """Pick `n` row indices keeping each class's share (largest-remainder rounding).

    Every class present gets at least one row, so `n` must be at least the number of classes.
    Returns indices in their original order.
    """
    total = len(labels)
    if n >= total:
        return list(range(total))
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    classes = sorted(by_class)
    if n < len(classes):
        raise KdistillError(
            f"{what} {n} is smaller than the {len(classes)} classes; stratified sampling needs at "
            f"least one example per class, so use {len(classes)} or more"
        )
    exact = {c: n * len(by_class[c]) / total for c in classes}
    quota = {c: max(1, int(exact[c])) for c in classes}
    # Hand out (or take back) rows by largest (smallest) fractional part until the sum is n.
    order = sorted(classes, key=lambda c: exact[c] - int(exact[c]), reverse=True)
    k = 0
    while sum(quota.values()) < n:
        c = order[k % len(order)]
        if quota[c] < len(by_class[c]):
            quota[c] += 1
        k += 1
    k = 0
    while sum(quota.values()) > n:
        c = order[::-1][k % len(order)]
        if quota[c] > 1:
            quota[c] -= 1
        k += 1
    rng = random.Random(seed)
    chosen: list[int] = []
    for c in classes:
        chosen.extend(rng.sample(by_class[c], quota[c]))
    return sorted(chosen)


def split_off_validation(
    train: Dataset,
    share: float,
    seed: int,
    flag: str = "--validation-split",
    label_names: list[str] | None = None,
) -> tuple[Dataset, Dataset]:
    """A stratified `share` of train becomes validation (or test); the rest stays train."""
    labels = train["label"]
    n_val = max(1, round(share * len(labels)))
    if n_val >= len(labels):
        raise KdistillError(f"{flag} {share} leaves no training rows")
    counts = Counter(labels)
    single = sorted(c for c, k in counts.items() if k < 2)
    if single:
        # Stratification gives every class a held-out row: a class's only row would leave
        # train, and the model could never learn the class it is then scored on.
        name = label_names[single[0]] if label_names else single[0]
        more = f" (and {len(single) - 1} more)" if len(single) > 1 else ""
        raise KdistillError(
            f"{flag}: class {name!r}{more} has a single example; a stratified split needs at "
            "least 2 of each class (one to train on, one to hold out): add examples or drop "
            "those rows"
        )
    n_classes = len(counts)
    if n_val < n_classes:
        logger.warning(
            "validation has %d rows for %d classes: some classes are missing from it",
            n_val,
            n_classes,
        )
        rng = random.Random(seed)
        val_idx = sorted(rng.sample(range(len(labels)), n_val))
    else:
        val_idx = stratified_indices(labels, n_val, seed, flag)
    chosen = set(val_idx)
    train_idx = [i for i in range(len(labels)) if i not in chosen]
    return train.select(train_idx), train.select(val_idx)


def split_off_unlabeled(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Keep a stratified `fraction` of train labelled; the rest is returned as the unlabelled
    split (its labels still attached, for evaluation only). fraction 0: every row unlabelled."""
    labels = train["label"]
    n_keep = round(fraction * len(labels))
    n_classes = len(set(labels))
    if fraction > 0 and n_keep < n_classes:
        raise KdistillError(
            f"--labeled-fraction {fraction} keeps {n_keep} of {len(labels)} training rows, fewer "
            f"than the {n_classes} classes (stratified sampling keeps one of each); use at least "
            f"{n_classes / len(labels):.3g}, or 0 for no labelled rows"
        )
    keep = stratified_indices(labels, n_keep, seed, "--labeled-fraction") if n_keep else []
    kept = set(keep)
    rest = [i for i in range(len(labels)) if i not in kept]
    return train.select(keep), train.select(rest)


def subsample(ds: Dataset, n: int | None, seed: int, flag: str) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    return ds.select(stratified_indices(ds["label"], n, seed, flag))


# --------------------------------------------------------------------------- prepare and reload


def _resolve_columns(
    alias: Alias | None, text_column: str | None, label_column: str | None
) -> tuple[list[str], str]:
    if text_column:
        texts = [c.strip() for c in text_column.split(",") if c.strip()]
    else:
        texts = list(alias.text_columns) if alias else ["text"]
    label = label_column or (alias.label_column if alias else "label")
    return texts, label


def build(
    dataset: str,
    text_column: str | None,
    label_column: str | None,
    validation_split: float,
    seed: int,
    name: str | None = None,
    test_split: float = 0.0,
    labeled_fraction: float = 1.0,
) -> LabelledData:
    """Load any source and give it train/validation, and test where the source has one or
    `test_split` > 0 carves one out of train (held out from training and model selection).

    `labeled_fraction` < 1 then keeps that stratified share of train labelled and moves the
    rest to an `unlabeled` split (scarce labels, simulated); validation and test stay whole.
    """
    raw, alias = load_source(dataset)
    texts, label = _resolve_columns(alias, text_column, label_column)
    from_hub = not Path(dataset).expanduser().exists()
    splits, names = to_labelled(raw, texts, label, f"--dataset {dataset}", from_hub)
    if test_split > 0 and "test" in splits:
        logger.warning("%s has a test split of its own; --test-split is ignored", dataset)
    elif test_split > 0:
        splits["train"], splits["test"] = split_off_validation(
            splits["train"], test_split, seed, "--test-split", names
        )
    if "validation" not in splits:
        splits["train"], splits["validation"] = split_off_validation(
            splits["train"], validation_split, seed, "--validation-split", names
        )
    if labeled_fraction < 1.0:
        splits["train"], splits[UNLABELED_SPLIT] = split_off_unlabeled(
            splits["train"], labeled_fraction, seed
        )
    ordered = {s: splits[s] for s in (*SPLIT_NAMES, UNLABELED_SPLIT) if s in splits}
    info = {
        "name": name or dataset_name(dataset),
        "source": dataset,
        "hub_id": alias.hub_id if alias else None,
        "text_columns": texts,
        "label_column": label,
        "label_names": names,
        "validation_split": validation_split,
        "test_split": test_split,
        "labeled_fraction": labeled_fraction,
        "labeled_rows": len(splits["train"]),
        "unlabeled_rows": len(splits[UNLABELED_SPLIT]) if UNLABELED_SPLIT in splits else 0,
        "seed": seed,
    }
    return LabelledData(info["name"], names, ordered, source=dataset, info=info)


def _percentiles(values: list[int]) -> dict[str, float]:
    import numpy as np

    arr = np.asarray(values)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (5, 25, 50, 75, 95, 99)} | {
        "mean": float(arr.mean()),
        "max": int(arr.max()),
    }


def explore(data: LabelledData) -> dict[str, Any]:
    """Rows and class counts per split, and text length percentiles (characters and words;
    None for an empty split, such as train at --labeled-fraction 0)."""
    splits = {}
    for split, ds in data.splits.items():
        counts = Counter(ds["label"])
        texts = ds["text"]
        splits[split] = {
            "rows": len(ds),
            "class_counts": {data.label_names[i]: counts.get(i, 0) for i in range(data.num_labels)},
            "chars": _percentiles([len(t) for t in texts]) if texts else None,
            "words": _percentiles([len(t.split()) for t in texts]) if texts else None,
        }
    return {"num_labels": data.num_labels, "splits": splits}


def format_summary(data: LabelledData, summary: dict[str, Any]) -> str:
    split_names = list(summary["splits"])
    width = max(len(n) for n in data.label_names) + 2
    header = f"  {'class':<{width}}" + "".join(f"{s:>12}" for s in split_names)
    lines = [f"Data set {data.name} ({data.source}): {data.num_labels} classes", header]
    for name in data.label_names:
        row = "".join(f"{summary['splits'][s]['class_counts'][name]:>12}" for s in split_names)
        lines.append(f"  {name:<{width}}{row}")
    total = "".join(f"{summary['splits'][s]['rows']:>12}" for s in split_names)
    lines.append(f"  {'total':<{width}}{total}")
    lines.append("  text length (words)   p5     p50     p95     p99     max")
    for s in split_names:
        w = summary["splits"][s]["words"]
        if w is None:
            lines.append(f"  {s:<20}{'-':>5}")
            continue
        lines.append(
            f"  {s:<20}{w['p5']:>5.0f}{w['p50']:>8.0f}{w['p95']:>8.0f}{w['p99']:>8.0f}{w['max']:>8}"
        )
    if UNLABELED_SPLIT in summary["splits"]:
        rows, fraction = summary["splits"][UNLABELED_SPLIT]["rows"], data.info["labeled_fraction"]
        lines.append(
            f"  unlabeled: {rows} train rows without labels (--labeled-fraction "
            f"{fraction}), in {UNLABELED_FILE};"
        )
        lines.append(f"  their labels are aside in {UNLABELED_LABELS_FILE}, for evaluation only")
    return "\n".join(lines)


def prepare(config: PrepareDataConfig) -> tuple[Path, str]:
    """The prepare-data command: build, explore, save under <data-dir>/<name>/ atomically.

    Returns the folder and a printable summary.
    """
    from datasets import Features, Value

    data = build(
        config.dataset,
        config.text_column,
        config.label_column,
        config.validation_split,
        config.seed,
        config.name,
        config.test_split,
        config.labeled_fraction,
    )
    summary = explore(data)
    target = Path(config.data_dir) / data.name
    with atomic_dir(target) as tmp:
        for split, ds in data.splits.items():
            named = ds.cast_column("label", Value("int64")).map(
                lambda b: {"label": [data.label_names[i] for i in b["label"]]},
                batched=True,
                features=Features({"text": Value("string"), "label": Value("string")}),
            )
            if split == UNLABELED_SPLIT:
                named.select_columns(["text"]).to_parquet(str(tmp / UNLABELED_FILE))
                named.to_parquet(str(tmp / UNLABELED_LABELS_FILE))
            else:
                named.to_parquet(str(tmp / f"{split}.parquet"))
        info = data.info | summary | {"created": datetime.now().isoformat(timespec="seconds")}
        atomic_write_json(tmp / INFO_FILE, info)
    logger.info("saved %s", target)
    return target, format_summary(data, summary)


def rows_digest(ds: Dataset) -> str:
    """A split's rows (texts and labels, in order) as one hash: equal digests, equal rows."""
    from kdistill.teachers.cache import texts_digest

    rows = ds.select_columns(["text", "label"])[:]
    return texts_digest([f"{y}\t{t}" for t, y in zip(rows["text"], rows["label"], strict=True)])


def split_record(data: LabelledData) -> dict[str, Any]:
    """How `data` was split, for the run's config.json: a command given the run later checks
    that its own train rows are these (`train_digest`), so its held-out rows are held out."""
    keys = ("seed", "validation_split", "test_split", "labeled_fraction")
    return {
        "prepared": is_prepared(Path(data.source)),
        **{k: data.info.get(k) for k in keys},
        "train_rows": len(data.splits["train"]),
        "train_digest": rows_digest(data.splits["train"]),
    }


def is_prepared(path: Path) -> bool:
    return (path / INFO_FILE).is_file()


def _read_parquet(f: Path) -> Dataset:
    import pyarrow.parquet as pq
    from datasets import Dataset, load_dataset

    no_load_count_ping()
    if pq.read_metadata(f).num_rows == 0:  # load_dataset refuses a file without rows
        return Dataset(pq.read_table(f))
    return load_dataset("parquet", data_files=str(f), split="train")


def load_prepared(path: Path) -> LabelledData:
    """Reload what `prepare` saved; the class order is the one in dataset_info.json.

    train may be empty (--labeled-fraction 0). The `unlabeled` split, where prepare-data wrote
    one, carries the labels kept aside for evaluation; training never reads it.
    """
    import json

    from datasets import Dataset, Features, Value

    try:
        info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
        names: list[str] = [str(n) for n in info["label_names"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise KdistillError(
            f"{path / INFO_FILE}: unreadable ({type(e).__name__}: {e}); run prepare-data again"
        ) from e
    index = {n: i for i, n in enumerate(names)}
    splits = {}
    files = {s: f"{s}.parquet" for s in SPLIT_NAMES} | {UNLABELED_SPLIT: UNLABELED_LABELS_FILE}
    for split, filename in files.items():
        f = path / filename
        if not f.is_file():
            continue
        ds = _read_parquet(f)
        if "label" not in ds.column_names:
            raise KdistillError(
                f"{f}: no label column; {split} needs labels (validation is where models are "
                "selected and reported); pass unlabelled text to distill with --unlabeled-data"
            )
        if len(ds) == 0:
            features = Features({"text": Value("string"), "label": Value("int64")})
            splits[split] = Dataset.from_dict({"text": [], "label": []}, features=features)
            continue
        unknown = sorted({str(v) for v in ds["label"]} - set(index))
        if unknown:
            raise KdistillError(
                f"{f}: labels not in {INFO_FILE}: {', '.join(unknown[:5])}; run prepare-data again"
            )
        splits[split] = ds.map(
            lambda b: {"label": [index[str(v)] for v in b["label"]]},
            batched=True,
            features=None,
            desc=f"{split} labels",
        ).cast_column("label", Value("int64"))
    if "train" not in splits or "validation" not in splits:
        raise KdistillError(f"{path}: train.parquet and validation.parquet are both needed")
    if len(splits["validation"]) == 0:
        raise KdistillError(
            f"{path}: validation.parquet has no rows; it needs labelled rows, for model selection "
            "and reporting (prepare-data keeps a labelled --validation-split whatever "
            "--labeled-fraction)"
        )
    return LabelledData(info.get("name", path.name), names, splits, str(path), info)


def prepared_under(data_dir: str, name: str) -> Path | None:
    """<data-dir>/<name> when `name` is a plain folder name that prepare-data filled. A name
    with a separator, `.` or `..` is never looked up there: it could reach outside --data-dir
    (a path is what --dataset takes for that, and is read as one)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        return None
    under = Path(data_dir) / name
    return under if is_prepared(under) else None


def load_for_training(
    dataset: str,
    data_dir: str,
    text_column: str | None,
    label_column: str | None,
    validation_split: float,
    seed: int,
) -> LabelledData:
    """Prepared data (a path or <data-dir>/<name>) if there is one, else build it in memory."""
    path = Path(dataset).expanduser()
    if path.is_dir() and is_prepared(path):
        return load_prepared(path)
    under = prepared_under(data_dir, dataset)
    if under is not None:
        return load_prepared(under)
    if dataset in ALIASES and not path.exists():
        logger.info("%s is not prepared under %s/; loading it from the Hub", dataset, data_dir)
    return build(dataset, text_column, label_column, validation_split, seed)


# --------------------------------------------------------------------------- unlabelled text


def load_unlabeled(source: str, text_column: str, max_samples: int | None, seed: int) -> Dataset:
    """Text without labels, a transfer set for distillation (`--unlabeled-data`): one `text`
    column, rows with no text dropped, at most `max_samples` of them (seeded random rows).

    `source` is anything --dataset accepts. A folder with an unlabeled.* file (prepare-data
    --labeled-fraction) gives that file; otherwise a folder gives its train files. A source with
    several splits gives its `unlabeled` or `unsupervised` split (IMDB's), else train.
    """
    from datasets import Dataset

    flag = "--unlabeled-data"
    path = Path(source).expanduser()
    if path.is_dir():
        own = sorted(
            p
            for p in path.iterdir()
            if p.stem.lower() in ("unlabeled", "unlabelled")
            and p.is_file()
            and p.suffix.lower() in FILE_FORMATS
        )
        path = own[0] if own else path
    raw, _alias = load_source(str(path) if path.exists() else source, flag)
    split = next((s for s in (UNLABELED_SPLIT, "unsupervised", "train") if s in raw), None)
    ds = raw[split or next(iter(raw))]
    columns = [c.strip() for c in text_column.split(",") if c.strip()]
    missing = [c for c in columns if c not in ds.column_names]
    if not columns or missing:
        raise KdistillError(
            f"{flag} {source}: no column {(missing or [text_column])[0]!r} (columns: "
            f"{', '.join(ds.column_names)}); choose one with --unlabeled-text-column"
        )
    table = ds.select_columns(columns)[:]
    texts = [join_text([table[c][i] for c in columns]) for i in range(len(ds))]
    kept = [t for t in texts if t is not None]
    if not kept:
        raise KdistillError(
            f"{flag} {source}: no row has text in {', '.join(columns)} (--unlabeled-text-column)"
        )
    if len(kept) < len(texts):
        logger.warning("%s: dropped %d rows with empty text", flag, len(texts) - len(kept))
    if max_samples is not None and max_samples < len(kept):
        rows = sorted(random.Random(seed).sample(range(len(kept)), max_samples))
        kept = [kept[i] for i in rows]
    return Dataset.from_dict({"text": kept})


def with_unlabeled(train: Dataset, unlabeled: Dataset | None) -> Dataset:
    """The training set: the labelled rows, then the unlabelled ones with label UNLABELED."""
    from datasets import Dataset, Features, Value, concatenate_datasets

    if unlabeled is None or len(unlabeled) == 0:
        return train
    features = Features({"text": Value("string"), "label": Value("int64")})
    labelled = train.select_columns(["text", "label"])
    if labelled.features != features:
        labelled = labelled.cast(features)
    extra = Dataset.from_dict(
        {"text": list(unlabeled["text"]), "label": [UNLABELED] * len(unlabeled)}, features=features
    )
    return concatenate_datasets([labelled, extra])


# --------------------------------------------------------------------------- tokenisation


def tokenize(
    ds: Dataset,
    encoders: dict[str, Any],
    max_length: int,
) -> Dataset:
    """Add `<prefix>_input_ids` / `<prefix>_attention_mask` for each model's own encoder.

    An encoder is a tokenizer, or a teacher with `encode(texts, max_length)` (a prompt teacher
    wraps each text in its prompt). A Qwen BPE teacher and a WordPiece student see the same raw
    text, each split its own way; padding happens per batch in `PairCollator`.
    """
    from transformers import PreTrainedTokenizerBase

    # A tokenizer splits the whole text before it truncates: a 5 MB row (a book pasted into a
    # cell) costs seconds per tokenizer and pass. Cutting the text first, far beyond what
    # max_length tokens can cover, leaves the kept tokens as they were and the cost bounded.
    limit = max(max_length * CHARS_PER_TOKEN_BOUND, MIN_CHARS_KEPT)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {}
        texts = [t if len(t) <= limit else t[:limit] for t in batch["text"]]
        for prefix, encoder in encoders.items():
            if isinstance(encoder, PreTrainedTokenizerBase):
                enc = encoder(texts, truncation=True, max_length=max_length)
            else:
                enc = encoder.encode(texts, max_length)
            out[f"{prefix}_input_ids"] = enc["input_ids"]
            out[f"{prefix}_attention_mask"] = enc["attention_mask"]
        return out

    from datasets.utils.logging import disable_progress_bar, enable_progress_bar

    # datasets fingerprints the map function by pickling it, and a teacher encoder holds its
    # whole model: name the result by what decides it instead.
    from kdistill.teachers.cache import tokenizer_identity

    identity = [ds._fingerprint, max_length, limit]
    for prefix, encoder in sorted(encoders.items()):
        if isinstance(encoder, PreTrainedTokenizerBase):
            identity.append([prefix, tokenizer_identity(encoder)])
        else:
            identity.append(
                [
                    prefix,
                    type(encoder).__name__,
                    encoder.name,
                    encoder.settings(),
                    tokenizer_identity(encoder.tokenizer),
                ]
            )
    fingerprint = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:32]
    # A bar only where tokenising takes long enough to wonder about.
    (enable_progress_bar if len(ds) > 50_000 else disable_progress_bar)()
    try:
        return ds.map(encode, batched=True, desc="tokenising", new_fingerprint=fingerprint)
    finally:
        disable_progress_bar()


class PairCollator:
    """Pads each model's inputs to the longest row of the batch; `labels` as a tensor."""

    def __init__(self, tokenizers: dict[str, PreTrainedTokenizerBase]) -> None:
        self.tokenizers = tokenizers

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch: dict[str, Any] = {"labels": torch.tensor([r["label"] for r in rows])}
        if "row" in rows[0]:
            batch["row"] = torch.tensor([r["row"] for r in rows])
        for prefix, tok in self.tokenizers.items():
            padded = tok.pad(
                {
                    "input_ids": [r[f"{prefix}_input_ids"] for r in rows],
                    "attention_mask": [r[f"{prefix}_attention_mask"] for r in rows],
                },
                return_tensors="pt",
            )
            batch[f"{prefix}_input_ids"] = padded["input_ids"]
            batch[f"{prefix}_attention_mask"] = padded["attention_mask"]
        return batch
