"""The models compare is given: each --student-model, --students and --baseline resolved to the
folder to load, with its distill run's config and history when it came from one, and checked to
be a classifier over the data set's classes before anything is loaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdistill.config import CompareConfig
from kdistill.errors import KdistillError
from kdistill.files import is_run_config

logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    """A student or baseline as given on the command line, resolved to the folder to load."""

    role: str  # "student" | "baseline"
    flag: str  # the flag that named it, for error messages
    given: str
    model_dir: Path
    run_dir: Path | None = None
    run_config: dict[str, Any] | None = None
    history: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """How reports name it: the run directory (plus the model folder when not best_model/),
        else the model folder."""
        if self.run_dir is None:
            return self.model_dir.name
        # The run directory says what the model is (dataset, T, alpha); best_model is implied.
        return self.run_dir.name + (
            "" if self.model_dir.name == "best_model" else f"/{self.model_dir.name}"
        )


def read_json(path: Path) -> Any:
    """A JSON file's content, None when missing or unreadable (a model folder need not be a
    run's, and a crashed run may have no history yet)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def resolve_candidate(given: str, role: str, flag: str) -> Candidate:
    """A model folder, a distill run directory (its best_model/ is compared), or a model folder
    inside one (best_model/, final_model/: the run's config and history come along)."""
    path = Path(given).expanduser()
    if not path.exists():
        raise KdistillError(
            f"{flag} {given}: no such folder; pass a model folder or a distill run directory"
        )
    if not path.is_dir():
        raise KdistillError(
            f"{flag} {given}: a file; pass a model folder or a distill run directory"
        )
    run_dir, model_dir = None, path
    if is_run_config(read_json(path / "config.json")) or (path / "best_model").is_dir():
        run_dir, model_dir = path, path / "best_model"
        if not model_dir.is_dir():
            raise KdistillError(
                f"{flag} {given}: the run has no best_model/ yet (did it stop "
                "before its first epoch ended?)"
            )
    elif path.name in ("best_model", "final_model") and is_run_config(
        read_json(path.parent / "config.json")
    ):
        run_dir = path.parent
    if not (model_dir / "config.json").is_file():
        raise KdistillError(
            f"{flag} {given}: no config.json in {model_dir}; pass a model folder "
            "or a distill run directory"
        )
    candidate = Candidate(role, flag, given, model_dir, run_dir)
    if run_dir is not None:
        candidate.run_config = read_json(run_dir / "config.json")
        candidate.history = read_json(run_dir / "history.json")
        if run_dir.name.endswith(".partial"):
            logger.warning(
                "%s %s: the run is still going or crashed; comparing its best model so far",
                flag,
                given,
            )
    return candidate


def resolve_candidates(config: CompareConfig) -> list[Candidate]:
    """Students in the order given, then the baseline."""
    if config.baseline and config.baseline in config.student_paths():
        raise KdistillError(
            f"--baseline {config.baseline} is also passed as a student; pass it once, as --baseline"
        )
    out = [
        resolve_candidate(
            p, "student", "--student-model" if p == config.student_model else "--students"
        )
        for p in config.student_paths()
    ]
    if config.baseline:
        out.append(resolve_candidate(config.baseline, "baseline", "--baseline"))
    return out


def check_labels(candidate: Candidate, label_names: list[str]) -> None:
    """A student must be a classifier over exactly the data set's classes (by name, in any
    order, matched by `kdistill.data.labels.match_names`); one trained on other labels cannot be
    scored against these, whatever its accuracy."""
    from kdistill.data.labels import match_names, unnamed

    cfg = read_json(candidate.model_dir / "config.json") or {}
    id2label = cfg.get("id2label") or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if unnamed(names):
        raise KdistillError(
            f"{candidate.flag} {candidate.given}: its classes are unnamed "
            f"({', '.join(names[:3]) or 'none'}), so it is not a classifier "
            "trained on this data set; pass a distill run directory or its "
            "best_model/"
        )
    found = match_names(names, label_names, f"{candidate.flag} {candidate.given}")
    used = {i for i in found if i is not None}
    if None in found or len(names) != len(label_names):
        missing = [n for n, i in zip(label_names, found, strict=True) if i is None]
        extra = [n for i, n in enumerate(names) if i not in used]
        raise KdistillError(
            f"{candidate.flag} {candidate.given}: its labels differ from the data "
            f"set's and the teacher's; missing: {', '.join(missing) or 'none'}; "
            f"extra: {', '.join(extra) or 'none'}; compare students trained on "
            "this data set"
        )
