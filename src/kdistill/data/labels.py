"""One rule for matching class names across models and data sets.

A teacher trained elsewhere may spell a class "Educational Institution" where the data set says
"EducationalInstitution", so names also match loosely: compared by `loose_key`, which folds case
and width (NFKC, casefold) and keeps only letters, marks and digits of any script. Marks stay
because in Devanagari or Arabic they are part of the word ("कि" is not "क"); punctuation,
spaces and symbols go.

An exact match always wins. A loose match is only trusted when it is unique: a data-set class
whose key fits two labels (Sci/Tech and SciTech), or two classes whose keys fit one label, is
refused rather than guessed, since a wrong guess silently scores one class with another's logit.
"""

from __future__ import annotations

import unicodedata

from kdistill.errors import KdistillError


def loose_key(name: str) -> str:
    """'Educational Institution' -> 'educationalinstitution', 'Спорт' -> 'спорт'. A name with no
    letter or digit ('?', '-') has the empty key, which matches nothing loosely."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] in "LMN")


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
                f"{known[hits[1]]!r} when case, spaces and punctuation are ignored; rename one so "
                "the names tell them apart, or use the exact name"
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
