"""One plain dataclass per command, split by stage. Field `help` metadata is the `--help` text;
`__post_init__` checks ranges so a bad value fails before any model is loaded, with one line
naming the flag. Everything is importable from `kdistill.config`."""

from kdistill.config.common import (
    DEFAULT_TEACHER_REPO,
    HUB_PUBLIC_HELP,
    LR_SCHEDULERS,
    NO_LABEL_RECIPE,
    PUSH_HELP,
    LoadOptions,
    TeacherOptions,
    _check,
    _check_finite,
    _check_folder_name,
    _check_push_to_hub,
    _check_training,
    _check_validation_split,
    _lr_scheduler_opt,
    _opt,
    no_label_recipe,
    parse_floats,
)
from kdistill.config.data import DownloadConfig, PrepareDataConfig
from kdistill.config.distill import DistillConfig
from kdistill.config.evaluation import CompareConfig, EvalTeacherConfig, RunsConfig
from kdistill.config.finetune import FinetuneConfig
from kdistill.config.shipping import ExportConfig, PredictConfig
from kdistill.config.sweep import SweepConfig

__all__ = [
    "DEFAULT_TEACHER_REPO",
    "LR_SCHEDULERS",
    "_opt",
    "_lr_scheduler_opt",
    "_check",
    "_check_finite",
    "_check_folder_name",
    "_check_validation_split",
    "PUSH_HELP",
    "HUB_PUBLIC_HELP",
    "_check_push_to_hub",
    "_check_training",
    "LoadOptions",
    "TeacherOptions",
    "parse_floats",
    "NO_LABEL_RECIPE",
    "no_label_recipe",
    "DownloadConfig",
    "PrepareDataConfig",
    "DistillConfig",
    "FinetuneConfig",
    "SweepConfig",
    "EvalTeacherConfig",
    "CompareConfig",
    "RunsConfig",
    "PredictConfig",
    "ExportConfig",
]
