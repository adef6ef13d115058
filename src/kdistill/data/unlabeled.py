"""Text without labels: a transfer set for distillation (`--unlabeled-data`), and the rows that
prepare-data --labeled-fraction keeps aside. Training sees such rows with label UNLABELED, so the
loss knows to use only the teacher's soft targets there.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

from kdistill.data.sources import FILE_FORMATS, join_text, load_source
from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

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
