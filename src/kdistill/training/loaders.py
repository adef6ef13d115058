"""The training data as batches: what a run can learn from, and the loaders that tokenise once
per model and pad per batch, in the order the samplers give."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from kdistill.errors import KdistillError
from kdistill.training.samplers import MixedBatchSampler, ShuffledLengthGroupedSampler

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import PreTrainedTokenizerBase

    from kdistill.config import FinetuneConfig
    from kdistill.data.prepare import LabelledData
    from kdistill.teachers.classifier import Teacher

from kdistill.config import DistillConfig, no_label_recipe
from kdistill.training.runtime import RunSetup

logger = logging.getLogger(__name__)


def check_training_rows(dataset: str, labeled: int, unlabeled: int, config: DistillConfig) -> None:
    """What a run can learn from: cross-entropy needs labelled rows, the KD term any row."""
    if labeled + unlabeled == 0:
        raise KdistillError(
            f"--dataset {dataset} has no training rows; pass labelled data, or text to learn "
            "from the teacher alone with --unlabeled-data and --alpha 1"
        )
    if labeled == 0 and config.alpha < 1.0:
        raise KdistillError(
            f"--dataset {dataset} has no labelled training rows, so the cross-entropy term "
            "(1 - alpha) has nothing to learn from; pass --alpha 1 or labelled data"
        )
    if labeled == 0 and config.unlabeled_ratio is not None:
        raise KdistillError(
            "--unlabeled-ratio sets the unlabelled share next to labelled rows in each batch, "
            f"and --dataset {dataset} has no labelled training rows; drop --unlabeled-ratio"
        )


def warn_unlabeled_overlap(unlabeled: Dataset, data: LabelledData) -> None:
    """Unlabelled text that is also in validation or test lets the student copy the teacher on
    the rows it is measured on: allowed (it is how transductive setups work) but said."""
    texts = set(unlabeled["text"])
    for split in ("validation", "test"):
        if split in data.splits:
            shared = len(texts.intersection(data.splits[split]["text"]))
            if shared:
                logger.warning(
                    "%d --unlabeled-data texts are also in %s: the student learns the teacher's "
                    "answers on rows it is measured on",
                    shared,
                    split,
                )


def make_loaders(
    train: Dataset,
    val: Dataset,
    tokenizers: dict[str, PreTrainedTokenizerBase],
    config: DistillConfig | FinetuneConfig,
    accelerator: Accelerator,
    train_prefixes: tuple[str, ...] | None = None,
    encoders: dict[str, Any] | None = None,
    unlabeled_rows: int = 0,
) -> tuple[DataLoader, DataLoader, Dataset]:
    """Tokenise once per model (`student_*`, `teacher_*` columns), pad per batch.

    `encoders` replaces a prefix's tokenizer for encoding (a prompt teacher builds its prompts);
    the tokenizers still pad.

    With --group-by-length, training batches group examples of similar student length
    (shuffled groups of batches), so little compute goes to padding; every example is seen once
    per epoch either way. The last `unlabeled_rows` rows of `train` are unlabelled: a
    MixedBatchSampler then decides each batch's mix. `train_prefixes` limits which models'
    inputs the training batches carry (with cached teacher logits, only the student's). Each
    row keeps its index in `row`, to find its cached teacher logits. Returns the loaders and
    the tokenised training set.
    """
    from torch.utils.data import DataLoader

    from kdistill.data.batches import PairCollator, tokenize

    with accelerator.main_process_first():
        encoders = {**tokenizers, **(encoders or {})}
        train_tok = tokenize(train, encoders, config.max_length)
        val_tok = tokenize(val, encoders, config.max_length)
    train_tok = train_tok.add_column("row", list(range(len(train_tok))))
    val_tok = val_tok.add_column("row", list(range(len(val_tok))))
    keep = [c for c in train_tok.column_names if c != "text"]
    train_tokenizers = {p: tokenizers[p] for p in (train_prefixes or tuple(tokenizers))}
    batching = train_batching(train_tok, config, unlabeled_rows)
    train_loader = DataLoader(
        train_tok.with_format(columns=keep), collate_fn=PairCollator(train_tokenizers), **batching
    )
    eval_bs = config.eval_batch_size or config.batch_size * 4
    val_loader = DataLoader(
        val_tok.with_format(columns=keep),
        batch_size=eval_bs,
        shuffle=False,
        collate_fn=PairCollator(tokenizers),
    )
    return train_loader, val_loader, train_tok


def make_run_loaders(
    config: DistillConfig,
    run: RunSetup,
    s_tok: PreTrainedTokenizerBase,
    teacher: Teacher | None,
    unlabeled: Dataset | None,
) -> tuple[DataLoader, DataLoader, Dataset]:
    """Training batches (labelled then unlabelled rows) and validation batches, tokenised for
    the student and, when it runs online, the teacher (which builds its own prompts)."""
    from kdistill.data.unlabeled import with_unlabeled

    # Cached logits: the teacher's inputs are not needed, unless the intermediate losses run it.
    cached = teacher is not None and config.teacher_cache != "off"
    cached = cached and not config.uses_intermediate()
    tokenizers, encoders = {"student": s_tok}, None
    if teacher is not None:
        tokenizers["teacher"], encoders = teacher.tokenizer, {"teacher": teacher}
    return make_loaders(
        with_unlabeled(run.train, unlabeled),
        run.val,
        tokenizers,
        config,
        run.accelerator,
        ("student",) if cached else None,
        encoders,
        len(unlabeled) if unlabeled is not None else 0,
    )


def train_batching(
    train_tok: Dataset, config: DistillConfig | FinetuneConfig, unlabeled_rows: int
) -> dict[str, Any]:
    """The training DataLoader's order: mixed labelled/unlabelled batches, length-grouped
    batches, or plain shuffled ones.

    Every training loader draws only from its own generator (the sampler's shuffle and the
    loader's base seed), never from the global RNG that dropout uses: a resume sets its state
    at the start of the epoch and replays the order exactly."""
    generator = torch.Generator().manual_seed(config.seed)
    if unlabeled_rows:
        ratio = getattr(config, "unlabeled_ratio", None)
        labeled = len(train_tok) - unlabeled_rows
        sampler = MixedBatchSampler(labeled, unlabeled_rows, config.batch_size, ratio, generator)
        return {"batch_sampler": sampler, "generator": generator}
    if getattr(config, "group_by_length", False):
        column = train_tok.select_columns(["student_input_ids"])[:]["student_input_ids"]
        lengths = [len(ids) for ids in column]
        return {
            "batch_size": config.batch_size,
            "sampler": ShuffledLengthGroupedSampler(config.batch_size, lengths, generator),
            "generator": generator,
        }
    return {"batch_size": config.batch_size, "shuffle": True, "generator": generator}


def digest_rows(ds: Dataset) -> str:
    """The training rows (texts and labels, in order): a resume must train on the same ones."""
    from kdistill.data.digests import texts_digest

    rows = ds.select_columns(["text", "label"])[:]
    return texts_digest(
        [f"{label}\t{text}" for text, label in zip(rows["text"], rows["label"], strict=True)]
    )


def with_no_label_recipe(config: DistillConfig, labeled_rows: int) -> DistillConfig:
    """With no labelled training rows, the no-label recipe (`config.NO_LABEL_RECIPE`) in place
    of the flags left at their defaults; said in the log."""
    config, changes = no_label_recipe(config, labeled_rows)
    if changes:
        logger.info(
            "no labelled rows: the no-label recipe sets %s (--no-label-recipe off keeps the flags)",
            ", ".join(
                f"--{k.replace('_', '-')} {new} (not {old})" for k, (old, new) in changes.items()
            ),
        )
    return config


def load_transfer_set(config: DistillConfig, run: RunSetup) -> Dataset | None:
    """--unlabeled-data: text the student learns from the teacher alone (a transfer set), placed
    after the labelled rows. None without it, or with --alpha 0 (nothing to learn there)."""
    from kdistill.data.unlabeled import load_unlabeled

    unlabeled = None
    if config.unlabeled_data and config.alpha <= 0:
        logger.warning(
            "--alpha 0 trains on the labels alone: the --unlabeled-data rows have no "
            "labels and nothing to learn from, so they are not used"
        )
    elif config.unlabeled_data:
        unlabeled = load_unlabeled(
            config.unlabeled_data,
            config.unlabeled_text_column,
            config.max_unlabeled_samples,
            config.seed,
        )
        warn_unlabeled_overlap(unlabeled, run.data)
        logger.info("%s: %d unlabelled rows", config.unlabeled_data, len(unlabeled))
    n_unlabeled = len(unlabeled) if unlabeled is not None else 0
    n_unlabeled += config.generate * run.data.num_labels  # texts to be written (--generate)
    check_training_rows(config.dataset, len(run.train), n_unlabeled, config)
    return unlabeled
