"""The words a prompt teacher scores, one per class, and the prompt template they go into.

A language model has seen words, rarely identifiers: "EducationalInstitution" is asked as
"Educational Institution" unless --label-words names another word. Two classes with one word
would get one score, so shared, empty and unknown entries are errors, not guesses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kdistill.errors import KdistillError


def default_label_word(name: str) -> str:
    """'EducationalInstitution' -> 'Educational Institution', 'snake_case' -> 'snake case':
    a language model has seen the words, rarely the identifier."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    return " ".join(re.sub(r"[_\-]+", " ", spaced).split())


def read_class_map(spec: str, flag: str, what: str) -> dict[str, Any]:
    """A JSON file holding one object keyed by class name (--label-words, --label-descriptions):
    unreadable JSON or any other shape is a one-line error naming the flag and what it maps to."""
    try:
        mapping = json.loads(Path(spec).expanduser().read_text())
    except (OSError, ValueError) as e:
        raise KdistillError(f"{flag} {spec}: cannot read it as JSON ({e})") from e
    if not isinstance(mapping, dict):
        raise KdistillError(f"{flag} {spec}: the JSON must map class names to {what}")
    return mapping


def check_known_classes(given: dict[str, Any], label_names: list[str], flag: str) -> None:
    """A class the data does not have is a typo: its entry would be silently ignored."""
    unknown = [n for n in given if n not in label_names]
    if unknown:
        shown = ", ".join(label_names[:6]) + (" ..." if len(label_names) > 6 else "")
        raise KdistillError(f"{flag}: unknown class {unknown[0]!r}; the classes are: {shown}")


def _read_spec(spec: str) -> dict[str, str]:
    """A JSON file mapping class names to words, or `Name=word,Name=word`."""
    if Path(spec).expanduser().is_file() or spec.endswith(".json"):
        mapping = read_class_map(spec, "--label-words", "words")
        return {str(k): "" if v is None else str(v) for k, v in mapping.items()}
    mapping = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise KdistillError(
                f"--label-words: {item.strip()!r} has no '='; write Class=word pairs separated by "
                "commas, e.g. EducationalInstitution=School"
            )
        name, word = item.split("=", 1)
        mapping[name.strip()] = word
    return mapping


def parse_label_words(spec: str | None, label_names: list[str]) -> dict[str, str]:
    """A word for every class: the spec's where it names one, else the class name split into
    words. Unknown classes, empty words and shared words are errors: two classes with one word
    would get one score, and a typo in a class name would silently keep the default."""
    return resolve_label_words(_read_spec(spec) if spec else {}, label_names)


def resolve_label_words(given: dict[str, str], label_names: list[str]) -> dict[str, str]:
    """`given` completed with default words and checked (see `parse_label_words`)."""
    check_known_classes(given, label_names, "--label-words")
    words = {
        n: " ".join(given[n].split()) if n in given else default_label_word(n) for n in label_names
    }
    empty = [n for n, w in words.items() if not w]
    if empty:
        raise KdistillError(f"--label-words: class {empty[0]!r} has an empty word; give it one")
    seen: dict[str, str] = {}
    for name, word in words.items():
        other = seen.setdefault(word.lower(), name)
        if other != name:
            raise KdistillError(
                f"--label-words: {other!r} and {name!r} both have the word {word!r}; give each "
                "class its own word"
            )
    return words


def check_template(template: str | None) -> None:
    """A template needs the {text} slot; {labels} (the comma-separated label words) is
    optional. Slots are replaced literally, so other braces need no escaping."""
    if template is not None and "{text}" not in template:
        raise KdistillError(
            "--prompt-template: it has no {text} slot; put {text} where the example goes, e.g. "
            '"Text: {text}\\nCategory:"'
        )
