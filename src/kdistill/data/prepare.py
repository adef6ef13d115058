"""prepare-data and the prepared splits: build train/validation(/test) from any source, save
them under <data-dir>/<name>/ with a summary, and reload them for training.

Every data set becomes splits with two columns, `text` (str) and `label` (int), plus the ordered
class names (`label_names`). Preparing once and reloading keeps every later run on the same
rows: the held-out splits stay held out whatever command reads them.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.data.digests import texts_digest
from kdistill.data.labels import to_labelled
from kdistill.data.sampling import split_off_unlabeled, split_off_validation
from kdistill.data.sources import (
    ALIASES,
    INFO_FILE,
    Alias,
    dataset_name,
    load_source,
    no_load_count_ping,
)
from kdistill.data.unlabeled import UNLABELED_FILE, UNLABELED_LABELS_FILE, UNLABELED_SPLIT
from kdistill.errors import KdistillError
from kdistill.files import atomic_dir, atomic_write_json

if TYPE_CHECKING:
    from datasets import Dataset

    from kdistill.config import PrepareDataConfig

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")


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
    """`explore`'s summary as the table prepare-data prints: class counts per split, then text
    lengths, so a skewed or truncated data set shows before any training."""
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
