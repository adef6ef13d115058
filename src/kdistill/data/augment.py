"""Made transfer text (--augment): new texts from the labelled training texts, for the teacher to
label. Distillation gains most where the student sees many texts the teacher answers for
(TinyBERT's augmented transfer set; Tang et al. 2019's masking, replacement and n-gram sampling).

Each made text keeps nothing of its source but words: no label goes with it (the teacher gives
its soft targets). Made texts are deduplicated, and none may equal a held-out (validation or
test) text once normalised, so the student never learns the teacher's answer on a row it is
measured on. The made texts are cached under a key of the source rows, methods, N, rate, seed
and the masked LM, like the teacher's logits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdistill.data.digests import texts_digest
from kdistill.data.model_files import cache_root
from kdistill.files import atomic_write_json

logger = logging.getLogger(__name__)

CACHE_FORMAT = "kdistill-transfer-text/1"
MASK = "[MASK]"  # Tang et al.'s mask: a special token for BERT-style students
# Tries per made text before a copy that keeps coming out as a duplicate is given up.
TRIES = 4

# A list of words -> a list of new words for copy number `copy` (an MLM batch is separate).
WordMethod = Callable[[list[str], random.Random, float, list[list[str]]], list[str]]


def normalise(text: str) -> str:
    """What two texts must differ in to count as different: case, punctuation and spacing
    aside."""
    return " ".join(re.sub(r"[^\w]+", " ", text.casefold()).split())


def mask_words(words: list[str], rng: random.Random, rate: float, _: list[list[str]]) -> list[str]:
    """Each word replaced by [MASK] with probability `rate` (at least one)."""
    picked = _pick(len(words), rng, rate)
    return [MASK if i in picked else w for i, w in enumerate(words)]


def delete_words(
    words: list[str], rng: random.Random, rate: float, _: list[list[str]]
) -> list[str]:
    """Each word dropped with probability `rate` (at least one, never all)."""
    if len(words) < 2:
        return words
    picked = _pick(len(words), rng, rate)
    return [w for i, w in enumerate(words) if i not in picked]


def swap_span(
    words: list[str], rng: random.Random, rate: float, donors: list[list[str]]
) -> list[str]:
    """A span of about `rate` of the words replaced by a span of another text of the same
    class (`donors`), so the made text still reads as that class."""
    donors = [d for d in donors if d and d != words]
    if not donors or not words:
        return words
    donor = rng.choice(donors)
    k = max(1, round(rate * len(words)))
    start = rng.randrange(len(words) - min(k, len(words)) + 1)
    d_k = min(max(1, round(rate * len(donor))), len(donor))
    d_start = rng.randrange(len(donor) - d_k + 1)
    return words[:start] + donor[d_start : d_start + d_k] + words[start + k :]


WORD_METHODS: dict[str, WordMethod] = {
    "mask": mask_words,
    "delete": delete_words,
    "swap": swap_span,
}


def _pick(n: int, rng: random.Random, rate: float) -> set[int]:
    picked = {i for i in range(n) if rng.random() < rate}
    return picked or ({rng.randrange(n)} if n else set())


@dataclass
class MadeTexts:
    """The made texts in order, with the method that made each and its source row (augment)
    or the class it was written for (generate)."""

    texts: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    origins: list[int] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "methods": self.methods,
            "origins": self.origins,
            "dropped": self.dropped,
        }


class Deduper:
    """Accepts a text once, and never one whose normalised form is a held-out or source text."""

    def __init__(self, blocked: Iterable[str], held_out: Iterable[str]) -> None:
        self.held_out = {normalise(t) for t in held_out}
        self.seen = {normalise(t) for t in blocked} | self.held_out
        self.dropped = {"duplicate": 0, "held_out": 0, "empty": 0}

    def accept(self, text: str) -> bool:
        key = normalise(text)
        if not key:
            self.dropped["empty"] += 1
            return False
        if key in self.seen:
            self.dropped["held_out" if key in self.held_out else "duplicate"] += 1
            return False
        self.seen.add(key)
        return True


def augment_texts(
    texts: list[str],
    labels: list[int],
    methods: list[str],
    n: int,
    seed: int,
    rate: float,
    held_out: Iterable[str] = (),
    mlm: Callable[[list[list[str]], random.Random], list[list[str]]] | None = None,
) -> MadeTexts:
    """`n` new texts per source text, the methods taking turns copy by copy. `mlm` replaces
    words in a batch of word lists (the masked LM's method; see data.augment_mlm). A copy
    that comes out empty, a duplicate or a held-out text is retried, then dropped."""
    rng = random.Random(seed)
    words = [t.split() for t in texts]
    by_class: dict[int, list[list[str]]] = {}
    for w, label in zip(words, labels, strict=True):
        by_class.setdefault(label, []).append(w)
    dedupe, made = Deduper(texts, held_out), MadeTexts()
    for copy in range(n):
        method = methods[copy % len(methods)]
        pending = list(range(len(texts)))
        for _ in range(TRIES):
            if not pending:
                break
            if method == "mlm":
                assert mlm is not None, "--augment-method mlm needs a masked LM"
                outs = mlm([words[i] for i in pending], rng)
            else:
                fn = WORD_METHODS[method]
                outs = [fn(words[i], rng, rate, by_class[labels[i]]) for i in pending]
            retry = []
            for i, out in zip(pending, outs, strict=True):
                text = " ".join(out)
                if dedupe.accept(text):
                    made.texts.append(text)
                    made.methods.append(method)
                    made.origins.append(i)
                else:
                    retry.append(i)
            pending = retry
    made.dropped = dedupe.dropped
    return made


# --------------------------------------------------------------------------- the cache


def cache_key(parts: dict[str, Any], texts: list[str], held_out: list[str]) -> dict[str, Any]:
    """Everything the made texts depend on: `parts` (methods, N, seed, rate, model) and the
    source and held-out texts, as digests."""
    return {
        "format": CACHE_FORMAT,
        **parts,
        "rows": len(texts),
        "texts": texts_digest(texts),
        "held_out": texts_digest(sorted(held_out)),
    }


def cache_path(key: dict[str, Any], cache_dir: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return (cache_dir or cache_root() / "transfer_text") / f"{digest}.json"


def load_cached(path: Path, key: dict[str, Any]) -> MadeTexts | None:
    """The cached made texts if `path` holds exactly this key's, else None."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    made = stored.get("made", {})
    return MadeTexts(made["texts"], made["methods"], made["origins"], made.get("dropped", {}))


def save_cached(path: Path, key: dict[str, Any], made: MadeTexts) -> None:
    """Atomic: a crash never leaves half a cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"key": key, "made": made.to_json()})


def cached_made(
    key: dict[str, Any], make: Callable[[], MadeTexts], cache_dir: Path | None = None
) -> tuple[MadeTexts, bool]:
    """(made texts, whether they came from the cache): from the cache when it holds this
    key's, else made and saved."""
    path = cache_path(key, cache_dir)
    made = load_cached(path, key)
    if made is not None:
        logger.info("transfer text: %d made texts from the cache %s", len(made.texts), path.name)
        return made, True
    made = make()
    save_cached(path, key, made)
    return made, False
