"""What a command given a distill run takes from it: the run's data split and its teacher.

`compare --students RUN` and `eval-teacher --teacher-model RUN` (or `compare --teacher-model
RUN`) score on held-out rows of the run's data with the teacher the run learned from. Both
would otherwise be their own: data that is not prepared is split in memory by each command's
--seed and --validation-split, so `compare --split validation` after `distill --seed 1` could
score rows the student trained on; and a prompt teacher picks its few-shot examples from the
train split each command sees, so eval-teacher's accuracy and compare's agreement would describe
another prompt than the one that taught.

So the run's config.json is read back: its data settings split unprepared data the same way,
the digest of the run's train rows (`data.split.train_digest`) proves the split is the same (or
the command refuses), and its teacher flags and recorded few-shot examples rebuild its teacher.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from datasets import Dataset

    from kdistill.config import TeacherOptions
    from kdistill.data.prepare import LabelledData

logger = logging.getLogger(__name__)

# The data a run read; a command's own value is kept when it sets one (the digest then checks).
DATA_KEYS = ("dataset", "data_dir", "text_column", "label_column")
# How unprepared data is split in memory: always the run's.
SPLIT_KEYS = ("seed", "validation_split")
# How the teacher was asked: what makes its logits, besides the weights.
TEACHING_KEYS = (
    "teacher_mode",
    "prompt_template",
    "label_words",
    "few_shot",
    "chat_template",
    "calibrate",
    "label_descriptions",
    "embedding_scale",
    "class_balance",
    "class_prior",
)

C = TypeVar("C")


@dataclass
class Run:
    """A distill run a command was given, and the flag that gave it."""

    flag: str
    given: str
    config: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.flag} {self.given}"

    @property
    def split(self) -> dict[str, Any]:
        """How the run's data was split (absent in runs written before it was recorded)."""
        return (self.config.get("data") or {}).get("split") or {}

    @property
    def teacher_model(self) -> str | None:
        return (self.config.get("teacher") or {}).get("model") or self.config.get("teacher_model")


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _default(config: Any, key: str) -> Any:
    field = next(f for f in fields(config) if f.name == key)
    return field.default


def run_of(path: str, flag: str) -> Run | None:
    """The run when `path` is a distill run directory (its best_model/ is a model, not a run:
    a student may be evaluated as a teacher in its own right)."""
    import json

    from kdistill.files import is_run_config

    try:
        config = json.loads((Path(path).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Run(flag, path, config) if is_run_config(config) else None


def teacher_model_for(config: Any, teacher_run: Run | None, runs: list[Run]) -> str:
    """The teacher to score: a run's teacher when --teacher-model is the run, else the flag; a
    --teacher-model left at its default becomes the runs' teacher where they share one."""
    if teacher_run is not None:
        if not teacher_run.teacher_model:
            raise KdistillError(f"{teacher_run.where}: its config.json names no teacher model")
        return teacher_run.teacher_model
    models = {r.teacher_model for r in runs if r.teacher_model}
    if config.teacher_model == _default(config, "teacher_model") and len(models) == 1:
        model = models.pop()
        logger.info("--teacher-model: %s, the teacher of %s", model, runs[0].given)
        return model
    return config.teacher_model


def same_split(a: Run, b: Run) -> bool:
    """Whether two runs trained on the same rows: by the digests of their train rows where both
    recorded one, else by the flags that decide the split."""
    if "train_digest" in a.split and "train_digest" in b.split:
        return a.split["train_digest"] == b.split["train_digest"]
    return all(a.config.get(k) == b.config.get(k) for k in ("dataset", *SPLIT_KEYS))


def data_config(config: C, runs: list[Run]) -> C:
    """`config` with the runs' data settings, for loading the data: the run's --seed and
    --validation-split always (they decide which rows are held out), its --dataset, --data-dir
    and columns where `config` leaves them at their defaults. Runs that split differently
    cannot all be scored on held-out rows at once: refused."""
    if not runs:
        return config
    first = runs[0]
    for other in runs[1:]:
        if not same_split(other, first):
            raise KdistillError(
                f"{other.where}: its data was split differently from {first.given}'s (seed "
                f"{other.config.get('seed')} vs {first.config.get('seed')}, --dataset "
                f"{other.config.get('dataset')} vs {first.config.get('dataset')}), so no split is "
                "held out from both; compare them separately, or prepare the data once with "
                "prepare-data and distill each from it"
            )
    changes: dict[str, Any] = {}
    for key in DATA_KEYS:
        mine, theirs = getattr(config, key), first.config.get(key)
        if key in first.config and mine == _default(config, key) and theirs != mine:
            changes[key] = theirs
    for key in SPLIT_KEYS:
        mine, theirs = getattr(config, key), first.config.get(key)
        if key in first.config and theirs != mine:
            if mine != _default(config, key):
                logger.warning(
                    "%s %s: unprepared data is split as %s was (%s %s)",
                    flag_name(key),
                    mine,
                    first.given,
                    flag_name(key),
                    theirs,
                )
            changes[key] = theirs
    if changes:
        logger.info(
            "data as %s had it: %s",
            first.given,
            ", ".join(f"{flag_name(k)} {v}" for k, v in changes.items()),
        )
    return replace(config, **changes)  # type: ignore[type-var]


def check_same_split(data: LabelledData, runs: list[Run]) -> None:
    """Refuse data whose train rows are not the run's: its validation and test rows could then
    be ones the student trained on (the data was prepared again, or is another file)."""
    from kdistill.data.prepare import rows_digest

    digest = None
    for run in runs:
        recorded = run.split.get("train_digest")
        if recorded is None:
            continue
        digest = digest or rows_digest(data.splits["train"])
        if digest != recorded:
            raise KdistillError(
                f"{run.where}: the data here ({data.source}, {len(data.splits['train'])} train "
                f"rows) is not split as the run's was ({run.split.get('train_rows')} train rows, "
                f"seed {run.split.get('seed')}, validation share "
                f"{run.split.get('validation_split')}), so its held-out rows may be ones the "
                f"student trained on; pass --dataset {run.config.get('dataset')} as the run did "
                "(and prepare-data it again only with the run's --seed)"
            )


def same_model(a: str | None, b: str | None) -> bool:
    """Two model flags name one model: the same resolved folder, or the same Hub id."""
    if a is None or b is None:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() or pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


@dataclass
class RunTeacher:
    """The teacher to load: its model, the options to load it with, and the few-shot examples
    to show it (None: pick them as usual)."""

    model: str
    options: Any
    shots: list[tuple[str, int]] | None = None
    max_length: int | None = None
    """The run's --max-length: where a prompt teacher cuts its texts (None: the command's)."""


def run_teacher(
    config: TeacherOptions,
    model: str,
    runs: list[Run],
    label_names: list[str],
    train: Dataset,
) -> RunTeacher:
    """The teacher the runs learned from, when `model` is it: the runs' teacher flags and their
    recorded few-shot examples. A flag set here that differs from the run's is refused (it would
    score another teacher than the one that taught); runs taught differently cannot share one
    teacher row. `model` another teacher: `config`'s own flags, examples picked as usual."""
    taught = [r for r in runs if same_model(r.teacher_model, model)]
    if not taught:
        if runs:
            logger.info(
                "%s is not the teacher of %s; it is asked with this command's own flags",
                model,
                runs[0].given,
            )
        return RunTeacher(model, config)
    first = taught[0]
    for other in taught[1:]:
        diff = [k for k in TEACHING_KEYS if other.config.get(k) != first.config.get(k)]
        shots_differ = _recorded_shots(other) != _recorded_shots(first)
        if diff or shots_differ:
            what = f"{flag_name(diff[0])}" if diff else "few-shot examples"
            raise KdistillError(
                f"{other.where}: taught by {model} with other {what} than {first.given}, so "
                "one teacher cannot stand for both; compare them separately"
            )
    changes: dict[str, Any] = {}
    for key in TEACHING_KEYS:
        if key not in first.config:
            continue
        mine, theirs = getattr(config, key), first.config[key]
        if mine == theirs:
            continue
        if mine != _default(config, key):
            raise KdistillError(
                f"{flag_name(key)} {mine}: {first.given} was taught with {flag_name(key)} "
                f"{theirs}; drop the flag to score the teacher the student learned from, or pass "
                "another --teacher-model"
            )
        changes[key] = theirs
    options = replace(config, **changes)  # type: ignore[type-var]
    max_length = first.config.get("max_length")
    return RunTeacher(model, options, run_shots(first, label_names, train), max_length)


def _recorded_shots(run: Run) -> Any:
    return ((run.config.get("teacher") or {}).get("few_shot") or {}).get("rows")


def run_shots(run: Run, label_names: list[str], train: Dataset) -> list[tuple[str, int]] | None:
    """The few-shot examples the run's prompt teacher showed: as recorded in its config.json,
    or (runs from before they were recorded) picked again as distill picked them, from train
    after --max-train-samples with the run's seed."""
    from kdistill.teachers.few_shot import pick_few_shot, shots_from_record

    k = int(run.config.get("few_shot") or 0)
    if (run.config.get("teacher") or {}).get("mode") != "prompt" or k == 0:
        return None
    record = (run.config.get("teacher") or {}).get("few_shot")
    if record:
        return shots_from_record(record, label_names, run.where)
    from kdistill.data.sampling import subsample

    seed = int(run.config.get("seed", 42))
    rows = subsample(train, run.config.get("max_train_samples"), seed, "--max-train-samples")
    logger.info(
        "%s: its few-shot examples are not recorded; picked again as distill did", run.where
    )
    return pick_few_shot(list(rows["text"]), list(rows["label"]), label_names, k, seed)
