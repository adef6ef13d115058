"""Property-based: whatever texts and label names a user's file holds (any Unicode, quotes,
commas, newlines, empty cells, numbers as text), the CSV and JSONL loaders give back the same
rows with the same labels, or refuse with a KdistillError; they never fail another way.

Rows the loader may drop are modelled, not ignored: a text or label that is empty after
stripping is missing, and so, in CSV only, is a cell holding one of the usual missing-value
markers (NA, null, NaN...), as pandas and spreadsheets write them.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdistill.data import labels as klabels
from kdistill.data import sources as ksources
from kdistill.errors import KdistillError

# pandas' default missing-value markers: a CSV cell that is exactly one of these is missing.
CSV_MISSING = {
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
}

# Text that once broke loaders somewhere: separators, quotes, line breaks, numbers and booleans
# that a type-guessing reader turns into something else, missing-value markers, padding, and
# digits int() refuses (a superscript two crashed the class sort).
TRICKY = [
    "",
    " ",
    "a,b",
    'say "hi"',
    '"',
    "line\nbreak",
    "cr\r\nlf",
    "\t",
    "01",
    "007",
    "1.0",
    "1e5",
    "True",
    "NA",
    "null",
    "nan",
    " padded ",
    "é",
    "日本語",
    "🙂",
    "#",
    "=1+1",
    "²",
    "x²3",
]
# Surrogates cannot be written as UTF-8; NUL is not text.
CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
TEXTS = st.one_of(st.sampled_from(TRICKY), st.text(CHARS, max_size=30))
LABELS = st.one_of(st.sampled_from(TRICKY), st.text(CHARS, min_size=1, max_size=10))


@st.composite
def labelled_rows(draw) -> list[tuple[str, str]]:
    names = draw(st.lists(LABELS, min_size=1, max_size=4, unique=True))
    n = draw(st.integers(1, 12))
    return [(draw(TEXTS), draw(st.sampled_from(names))) for _ in range(n)]


def write_rows(folder: Path, fmt: str, rows: list[tuple[str, str]]) -> Path:
    if fmt == "csv":
        path = folder / "rows.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    else:
        path = folder / "rows.jsonl"
        path.write_text(
            "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8"
        )
    return path


def cell(value: str, fmt: str) -> str | None:
    """What the loader should make of one cell: None when missing."""
    if fmt == "csv" and value in CSV_MISSING:
        return None
    return value if value.strip() else None


def expected(rows: list[tuple[str, str]], fmt: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(class names, kept rows as (stripped text, label)) the loader should give."""
    labels = [cell(y, fmt) for _, y in rows]
    names = klabels.sort_class_names({y for y in labels if y is not None})
    kept = [
        (cell(t, fmt).strip(), y)
        for (t, _), y in zip(rows, labels, strict=True)
        if cell(t, fmt) is not None and y is not None
    ]
    return names, kept


def load(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    raw, _ = ksources.load_source(str(path))
    splits, names = klabels.to_labelled(raw, ["text"], "label", f"--dataset {path}")
    train = splits["train"]
    return names, [(t, names[y]) for t, y in zip(train["text"], train["label"], strict=True)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=labelled_rows(), fmt=st.sampled_from(["csv", "jsonl"]))
def test_files_round_trip_or_are_refused(rows, fmt):
    names, kept = expected(rows, fmt)
    # A fresh folder per example: datasets caches what it read by file name and time.
    with tempfile.TemporaryDirectory() as folder:
        path = write_rows(Path(folder), fmt, rows)
        try:
            got_names, got_rows = load(path)
        except KdistillError:
            # Refused: only when there is nothing to learn from (fewer than two classes, or no
            # row with both a text and a label).
            assert len(names) < 2 or not kept
            return
    assert got_names == names
    assert got_rows == kept


def test_a_missing_class_label_is_dropped_not_read_as_the_last_class():
    """datasets marks a missing ClassLabel value as -1, which names[-1] would read as a class."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["x", "y"])})
    ds = Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, -1]}, features=features)
    splits, names = klabels.to_labelled({"train": ds}, ["text"], "label", "--dataset t")
    assert names == ["x", "y"] and splits["train"]["text"] == ["a", "b"]
    assert splits["train"]["label"] == [0, 1]
