"""Class names: where a data set's come from, their order, and the one rule that matches them
across models and data sets.

Class names, not ids, are the label space: a teacher trained with another label order still
lines up, because its columns are matched to the data set's classes by name (`map_labels`).
Every comparison of class names across a model and a data set goes through `match_names`.

A teacher trained elsewhere may spell a class "Educational Institution" where the data set says
"EducationalInstitution" or "educational_institution", so names also match loosely: compared by
`loose_key`, which folds case and width (NFKC, casefold) in any script and drops only what
separates words: spaces and `_ - / .` (and the other dashes). Every letter, mark, digit and other
symbol is kept, since it can be all that tells two classes apart: "C#" is not "C++", "R&D" is not
"RD", and in Devanagari or Arabic a mark is part of the word ("कि" is not "क").

An exact match always wins. A loose match is only trusted when it is unique: a data-set class
whose key fits two labels (Sci/Tech and SciTech), or two classes whose keys fit one label, is
refused rather than guessed, since a wrong guess silently scores one class with another's logit.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from typing import TYPE_CHECKING, Any

from kdistill.data.sources import join_text, separator_hint
from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

# transformers' names for classes nobody named: such labels cannot be matched to a data set.
GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


# Besides these, every dash (Unicode Pd) and connector (Pc) is a word separator too: "Sci–Tech"
# with an en dash is the same name as "Sci-Tech".
WORD_SEPARATORS = frozenset("_-/.")


def loose_key(name: str) -> str:
    """'Educational Institution' -> 'educationalinstitution', 'Спорт' -> 'спорт', 'C#' -> 'c#'.

    Only case, width, spaces and word separators are ignored: dropping any other symbol would
    let a class match a different one ('C#' and 'C++' would both become 'c'). A name of
    separators only ('-', ' ') has the empty key, which matches nothing loosely."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(ch for ch in folded if not _separates_words(ch))


def _separates_words(ch: str) -> bool:
    return ch.isspace() or ch in WORD_SEPARATORS or unicodedata.category(ch) in ("Pd", "Pc")


def match_names(known: list[str], wanted: list[str], flag: str) -> list[int | None]:
    """For each name in `wanted`, the index in `known` of the same class, None when `known` has
    none. Exact equality first, else the unique `known` name with the same `loose_key`.

    Raises a one-line KdistillError naming both labels when a loose match is ambiguous: the
    wanted name's key fits two known names, or two wanted names end on one known name.
    """
    exact = {n: i for i, n in enumerate(known)}
    by_key: dict[str, list[int]] = {}
    for i, n in enumerate(known):
        key = loose_key(n)
        if key:
            by_key.setdefault(key, []).append(i)
    out: list[int | None] = []
    for name in wanted:
        if name in exact:
            out.append(exact[name])
            continue
        hits = by_key.get(loose_key(name), [])
        if len(hits) > 1:
            raise KdistillError(
                f"{flag}: the class {name!r} matches both {known[hits[0]]!r} and "
                f"{known[hits[1]]!r} when case, spaces and _ - / . are ignored; rename one so the "
                "names tell them apart, or use the exact name"
            )
        out.append(hits[0] if hits else None)
    taken: dict[int, str] = {}
    for name, i in zip(wanted, out, strict=True):
        if i is None:
            continue
        other = taken.setdefault(i, name)
        if other != name:
            raise KdistillError(
                f"{flag}: the classes {other!r} and {name!r} both match the label "
                f"{known[i]!r}; rename one so the names tell them apart"
            )
    return out


def unnamed(names: list[str]) -> bool:
    """True when no label has a real name (LABEL_0, LABEL_1... or none at all): a model saved
    without id2label, whose classes cannot be matched to any data set's by name."""
    return all(GENERIC_LABEL.match(n) for n in names)


def map_labels(teacher_id2label: dict[int, str], label_names: list[str], flag: str) -> list[int]:
    """For each data-set class, the teacher logit column with the same name.

    Names match by `match_names`: exactly, else uniquely ignoring case, spaces and word
    separators in any script ("Educational Institution" = "educational_institution", but "C#" is
    not "C++"); an ambiguous loose match is an error. The teacher may know extra classes (their
    columns are dropped); a data-set class the teacher lacks is an error that lists the
    differences.
    """
    teacher = {int(i): str(n) for i, n in teacher_id2label.items()}
    if unnamed(list(teacher.values())):
        raise KdistillError(
            f"{flag}: the teacher's labels are unnamed "
            f"({', '.join(list(teacher.values())[:3])}...), "
            "so they cannot be matched to the data set's classes; set id2label in its config.json "
            "to the class names"
        )
    ids, names = list(teacher), list(teacher.values())
    found = match_names(names, label_names, flag)
    missing = [n for n, i in zip(label_names, found, strict=True) if i is None]
    if missing:
        used = {i for i in found if i is not None}
        extra = sorted(n for i, n in enumerate(names) if i not in used)
        raise KdistillError(
            f"{flag}: the teacher's labels do not cover the data set's classes; missing from the "
            f"teacher: {', '.join(missing)}; teacher-only: {', '.join(extra) or 'none'}; use a "
            "teacher trained on these classes"
        )
    return [ids[i] for i in found if i is not None]


# --------------------------------------------------------------------------- a data set's classes


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
    raw = _checked_splits(raw, text_columns, label_column, where, drop_unlabelled)
    names = _class_names(raw["train"], label_column, where)
    out: dict[str, Dataset] = {}
    for split, ds in raw.items():
        conv = _text_and_names(ds, split, text_columns, label_column, where, drop_unlabelled)
        if conv is None:
            continue
        out[split] = _to_ids(conv, split, names, where)
    return out, names


def _checked_splits(
    raw: dict[str, Dataset],
    text_columns: list[str],
    label_column: str,
    where: str,
    drop_unlabelled: bool,
) -> dict[str, Dataset]:
    """The splits that have the columns asked for; a missing column or an empty split is an
    error, except a Hub split other than train without labels, which is dropped."""
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
            hint = separator_hint(ds.column_names)
            raise KdistillError(
                f"{where}: {split} has no column {missing[0]!r} (columns: "
                f"{', '.join(ds.column_names)}); choose one with {flag}{hint}"
            )
        if len(ds) == 0 and not (drop_unlabelled and split != "train"):
            raise KdistillError(f"{where}: the {split} split is empty")
    return raw


def _class_names(train: Dataset, label_column: str, where: str) -> list[str]:
    """The ClassLabel names of train's label column, else its distinct values sorted."""
    names = _label_names_of(train, label_column)
    if names is None:
        values = {label_value(v) for v in train[label_column]} - {None}
        if not values:
            raise KdistillError(f"{where}: the label column {label_column!r} is empty in train")
        names = sort_class_names(values)  # type: ignore[arg-type]
    if len(names) < 2:
        raise KdistillError(
            f"{where}: the label column {label_column!r} has one class ({names[0]}); a "
            "classifier needs at least 2 classes"
        )
    return names


def _text_and_names(
    ds: Dataset,
    split: str,
    text_columns: list[str],
    label_column: str,
    where: str,
    drop_unlabelled: bool,
) -> Dataset | None:
    """`text` and `label_name` columns, rows missing either dropped (with a warning). None for
    a split to drop: no row left, in a Hub split other than train (labels hidden).

    A split with a ClassLabel of its own is decoded through its own names, never train's: two
    files written with different class orders (train.parquet says 0 = Film, test.parquet says
    0 = Animal) would otherwise score every test row as the wrong class, silently. `_to_ids` then
    gives every split train's ids, by name.
    """
    own_names = _label_names_of(ds, label_column)

    def convert(batch: dict[str, list]) -> dict[str, list]:
        texts, labels = [], []
        for i in range(len(batch[label_column])):
            value = batch[label_column][i]
            texts.append(join_text([batch[c][i] for c in text_columns]))
            if own_names is not None:
                labels.append(_class_of(value, own_names, split, where))
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
        return None
    if len(conv) < before:
        logger.warning(
            "%s: dropped %d %s rows with empty text or label", where, before - len(conv), split
        )
    return conv


def _class_of(value: int | None, names: list[str], split: str, where: str) -> str | None:
    """The name a ClassLabel id stands for; None for a hidden label (-1, GLUE's test splits)."""
    if value is None or value < 0:
        return None
    if value >= len(names):
        raise KdistillError(
            f"{where}: {split} has the label id {value}, but its class names stop at "
            f"{len(names) - 1} ({names[-1]}); fix the file's labels or its class names"
        )
    return names[value]


def _to_ids(conv: Dataset, split: str, names: list[str], where: str) -> Dataset:
    """Class names replaced by their index; a split with no labelled row, or with a class that
    train does not have, is an error."""
    if len(conv) == 0:
        why = (
            ": validation needs labels, for model selection and reporting"
            if split == "validation"
            else ""
        )
        raise KdistillError(f"{where}: the {split} split has no row with both text and label{why}")
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(conv["label_name"]) - set(index), key=_natural_key)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise KdistillError(
            f"{where}: {split} has labels that train does not have: {shown}; fix or drop those rows"
        )
    return conv.map(
        lambda b: {"label": [index[n] for n in b["label_name"]]},
        batched=True,
        remove_columns=["label_name"],
    )


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


def _natural_key(s: str) -> tuple[list[Any], str]:
    """Sort '2' before '10' so integer labels keep their numeric order; '1' and '01', equal as
    numbers, by their text, so the class order never depends on set iteration order."""
    parts = re.split(r"(\d+)", s)  # digit runs at the odd positions
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], s


def sort_class_names(values: set[str]) -> list[str]:
    """Class names in natural order ('2' before '10'): the order ids are given in."""
    return sorted(values, key=_natural_key)
