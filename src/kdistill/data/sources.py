"""Where labelled rows come from: an alias, a Hugging Face Hub data set, or local files.

Local files are CSV/TSV, JSON/JSONL or Parquet, one file or a folder of them; a folder's files
are told apart by the split their names give. Errors name the flag and the file, in one line,
because a bad file is the most common first-run failure and the parser's own traceback rarely
says which row or which separator is wrong.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.data.hub import use_cache_if_offline
from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from datasets import Dataset, Features

logger = logging.getLogger(__name__)

# What prepare-data writes beside the splits; listed here so a folder's reader skips it.
INFO_FILE = "dataset_info.json"
FILE_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}

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


def _folder_files(path: Path, flag: str) -> list[Path]:
    """The data files in a folder, less metadata and text-without-labels files (which only
    --unlabeled-data reads, unless the folder holds nothing else)."""
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
    return files


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
    files = _folder_files(path, flag)
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
    return _files_by_split(path, flag, files, named)


def _files_by_split(
    path: Path, flag: str, files: list[Path], named: dict[Path, str]
) -> dict[str, list[str]]:
    """Split -> files of a folder where some files name their split: every file must name one,
    and one must be train."""
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
            hint = separator_hint([f.readline().strip()])
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


def separator_hint(columns: list[str]) -> str:
    """A CSV header read as one column that holds another separator was written with it."""
    if len(columns) != 1 or "," in columns[0]:
        return ""
    for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'")):
        if sep in columns[0]:
            fix = "name it .tsv" if sep == "\t" else "save it with commas"
            return f"; the file looks separated by {name}, not commas: {fix}"
    return ""


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


def join_text(parts: list[Any]) -> str | None:
    """Several text columns (DBpedia's title and content) become one text: the non-empty parts
    joined by '. '; None when every part is empty."""
    kept = [str(p).strip() for p in parts if p is not None and str(p).strip()]
    return ". ".join(kept) if kept else None
