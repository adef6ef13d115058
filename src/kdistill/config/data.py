"""The configs of download-model and prepare-data."""

from __future__ import annotations

from dataclasses import dataclass

from kdistill.config.common import (
    DEFAULT_TEACHER_REPO,
    _check,
    _check_finite,
    _check_folder_name,
    _check_validation_split,
    _opt,
)


@dataclass
class DownloadConfig:
    """Download a model snapshot from the Hugging Face Hub into models/<name>/."""

    model: str = _opt(DEFAULT_TEACHER_REPO, "Hub repo id of the model to download.")
    output_dir: str = _opt("models", "Parent folder; the model lands in <output-dir>/<name>/.")
    revision: str | None = _opt(None, "Branch, tag or commit to download (default: main).")
    allow_pickle: bool = _opt(
        False, "Also download pickle weights (*.bin, *.pt): only for repos without safetensors."
    )

    def __post_init__(self) -> None:
        _check(bool(self.model.strip()), "--model must be a Hub repo id such as org/name")


@dataclass
class PrepareDataConfig:
    """Load a labelled data set, split it, explore it and save it under data/<name>/."""

    dataset: str = _opt(
        "dbpedia",
        "dbpedia, ag_news, a Hub data set id, or a local CSV/JSONL/Parquet file or folder.",
    )
    validation_split: float = _opt(
        0.2, "Share of train held out as a stratified validation split (0 < x < 1)."
    )
    text_column: str | None = _opt(
        None, "Text column (default: the alias's, else 'text'); comma-separated columns are joined."
    )
    label_column: str | None = _opt(None, "Label column (default: the alias's, else 'label').")
    test_split: float = _opt(
        0.0,
        "Share of train held out as a stratified test split when the source has none (0 = none): "
        "compare then reports on rows no model was trained or selected on.",
    )
    labeled_fraction: float = _opt(
        1.0,
        "Share of train that keeps its labels, stratified, in [0, 1] (after the validation and "
        "test splits are made): the rest is written as unlabeled.parquet (text only, for distill "
        "--unlabeled-data) with its labels aside in unlabeled_labels.parquet, for evaluation "
        "only. Simulates scarce labels; 0 = no labelled training rows.",
    )
    data_dir: str = _opt("data", "Parent folder; the prepared data lands in <data-dir>/<name>/.")
    name: str | None = _opt(None, "Folder name under --data-dir (default: from --dataset).")
    seed: int = _opt(42, "Seed of the validation, test and labelled-fraction splits.")

    def __post_init__(self) -> None:
        _check_finite(self)
        _check_folder_name(self.name, "--name", "--data-dir")
        _check_validation_split(self.validation_split)
        _check(
            0.0 <= self.labeled_fraction <= 1.0,
            f"--labeled-fraction must be in [0, 1] (got {self.labeled_fraction})",
        )
        _check(
            0.0 <= self.test_split < 1.0, f"--test-split must be in [0, 1) (got {self.test_split})"
        )
        _check(
            self.validation_split + self.test_split < 1.0,
            "--validation-split + --test-split must leave rows to train on (sum < 1)",
        )
