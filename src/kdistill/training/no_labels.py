"""Distillation with no labelled row anywhere: texts and class names are all a run is given.

`kdistill distill --dataset texts.csv --label-names "A,B,C" --teacher-model <encoder or LLM>
--student-model <student>`: the texts are the transfer set; there is no labelled training row
(the no-label recipe applies) and no labelled validation row. Model selection then needs
something that reads no label: a held-out slice of the transfer set, which the student does
not train on, labelled by the teacher. The epoch kept is the one whose student agrees best with
the teacher there. A user who has labelled validation rows (a prepared data set) keeps them:
they measure the student itself, agreement only its likeness to the teacher.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from datasets import Dataset

    from kdistill.config import DistillConfig
    from kdistill.data.prepare import LabelledData
    from kdistill.teachers.classifier import Teacher
    from kdistill.training.runtime import RunSetup

logger = logging.getLogger(__name__)

# The held-out slice that stands in for validation: a tenth of the transfer set, at most 500
# rows (agreement on 500 rows is known to about +-2 points; more would only take rows from the
# student).
SELECTION_SHARE = 0.1
SELECTION_MAX_ROWS = 500


def parse_label_names(spec: str) -> list[str]:
    """--label-names: 'A,B,C', or a JSON file holding a list of names or an object whose keys
    are the names (a --label-descriptions file serves)."""
    path = Path(spec).expanduser()
    if path.is_file() or spec.endswith(".json"):
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise KdistillError(f"--label-names {spec}: cannot read it as JSON ({e})") from e
        names = list(value) if isinstance(value, (list, dict)) else None
        if names is None or not all(isinstance(n, str) for n in names):
            raise KdistillError(
                f"--label-names {spec}: the JSON must be a list of class names or an object "
                "whose keys are the class names"
            )
    else:
        names = spec.split(",")
    names = [n.strip() for n in names if n.strip()]
    if len(names) < 2:
        raise KdistillError(
            f"--label-names {spec!r}: give at least two class names, e.g. 'Sports,Politics'"
        )
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise KdistillError(f"--label-names: {twice!r} is given twice; name each class once")
    return names


def with_texts_only(config: DistillConfig) -> DistillConfig:
    """--label-names: --dataset is text without labels, the transfer set itself."""
    if not config.label_names:
        return config
    from kdistill.data.prepare import is_prepared, prepared_under

    path = Path(config.dataset).expanduser()
    if (path.is_dir() and is_prepared(path)) or prepared_under(config.data_dir, config.dataset):
        raise KdistillError(
            f"--label-names: --dataset {config.dataset} is prepared, with its own classes; "
            "drop --label-names (or pass the raw texts as --dataset)"
        )
    if config.unlabeled_data and config.unlabeled_data != config.dataset:
        raise KdistillError(
            "--label-names makes --dataset the transfer set; drop --unlabeled-data (or pass "
            "those texts as --dataset)"
        )
    parse_label_names(config.label_names)  # a bad spec fails before anything loads
    column = config.text_column or config.unlabeled_text_column
    return dataclasses.replace(config, unlabeled_data=config.dataset, unlabeled_text_column=column)


def texts_only_data(dataset: str, label_names: str) -> LabelledData:
    """The label space and empty labelled splits: every text is in the transfer set."""
    from datasets import Dataset, Features, Value

    from kdistill.data.prepare import LabelledData

    features = Features({"text": Value("string"), "label": Value("int64")})
    empty = Dataset.from_dict({"text": [], "label": []}, features=features)
    name = Path(dataset).stem or "texts"
    splits = {"train": empty, "validation": empty}
    return LabelledData(name, parse_label_names(label_names), splits, dataset)


def teacher_validation(
    config: DistillConfig,
    run: RunSetup,
    teacher: Teacher | None,
    unlabeled: Dataset | None,
    t_dtype: str,
) -> tuple[RunSetup, Dataset | None, dict[str, Any]]:
    """With no labelled validation row: hold out a seeded slice of the transfer set and label
    it with the teacher's answers (after its label-free corrections). Returns the run with that
    slice as its validation split, the rest of the transfer set, and what history.json records
    of the choice. With labelled validation rows, all three as they were."""
    if len(run.val) > 0:
        return run, unlabeled, {"model_selection": "labelled validation rows"}
    if teacher is None or unlabeled is None or len(unlabeled) < 2:
        raise KdistillError(
            "no labelled validation rows and no transfer set to hold a slice of: pass "
            "labelled data or text with --unlabeled-data"
        )
    from datasets import Dataset

    from kdistill.teachers.cache import teacher_logits_for

    teacher.to(run.accelerator.device)
    n = len(unlabeled)
    k = max(1, min(SELECTION_MAX_ROWS, round(n * SELECTION_SHARE)))
    held = sorted(random.Random(config.seed).sample(range(n), k))
    held_set = set(held)
    rest = [i for i in range(n) if i not in held_set]
    texts = [unlabeled[i]["text"] for i in held]
    encoded = Dataset.from_dict(
        {"text": texts, "teacher_input_ids": teacher.encode(texts, config.max_length)["input_ids"]}
    )
    mode = "memory" if config.teacher_cache == "off" else config.teacher_cache
    logits, _ = teacher_logits_for(
        mode, teacher, encoded, texts, config, run.accelerator, run.data.num_labels, t_dtype
    )
    labels = logits.argmax(-1).tolist()
    val = Dataset.from_dict({"text": texts, "label": labels}, features=run.val.features)
    why = (
        f"agreement with the teacher on {k} held-out transfer rows (no labelled validation "
        "rows; the student does not train on them)"
    )
    logger.info("model selection: %s", why)
    return dataclasses.replace(run, val=val), unlabeled.select(rest), {"model_selection": why}
