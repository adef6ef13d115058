"""The training order: length-grouped batches and batches that mix labelled and unlabelled
rows, and the state a checkpoint keeps so that a resumed epoch replays the same order."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch.utils.data import DataLoader


def encode_generator(generator: torch.Generator) -> str:
    """A torch.Generator's state as text, for a checkpoint's state.json."""
    return base64.b64encode(generator.get_state().numpy().tobytes()).decode("ascii")


def decode_generator(generator: torch.Generator, text: str) -> None:
    """Set `generator` to a state `encode_generator` wrote."""
    raw = bytearray(base64.b64decode(text))
    generator.set_state(torch.frombuffer(raw, dtype=torch.uint8).clone())


class ShuffledLengthGroupedSampler(torch.utils.data.Sampler[int]):
    """The Trainer's length grouping (random megabatches of 50 batches, each sorted by length),
    then the batches themselves shuffled.

    Without that last step training walks every megabatch from its longest batch to its
    shortest; where length goes with the class (DBpedia: villages are short, albums long),
    consecutive steps see the same few classes. Measured on the DBpedia sample (bert-tiny,
    batch 4, 3 epochs, seed 42): 47% validation accuracy with the Trainer's order, 74% with
    shuffled groups, 82% with plain random batches (seed 1: 62% vs 66%). Hence opt-in.
    """

    def __init__(self, batch_size: int, lengths: list[int], generator: torch.Generator) -> None:
        self.batch_size = batch_size
        self.lengths = lengths
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        order = get_length_grouped_indices(self.lengths, self.batch_size, generator=self.generator)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield from batches[b]


class MixedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of labelled rows (indices 0 .. L-1) and unlabelled rows (L .. L+U-1).

    ratio None, the natural proportion: every row once per epoch, both kinds shuffled, and each
    batch holds the labelled rows' share L / (L + U) of its rows (rounded so that the counts
    add up), not just on average: a 10%-labelled run never sees a batch without labels.
    ratio R: round(R * batch_size) unlabelled rows in every batch, the rest labelled; an epoch
    is one pass over the labelled rows, and the unlabelled rows are drawn without replacement,
    carrying on from where the last batch stopped and reshuffled once all have been drawn.

    Every process of a distributed run builds the same batches from the same seed; Accelerate
    then hands each process whole batches, so a batch's mix is kept.
    """

    def __init__(
        self,
        labeled: int,
        unlabeled: int,
        batch_size: int,
        ratio: float | None,
        generator: torch.Generator,
    ) -> None:
        self.labeled, self.unlabeled = labeled, unlabeled
        self.batch_size = batch_size  # read by Accelerate's sharding
        self.ratio = ratio
        self.generator = generator
        if ratio is not None:
            self.unlabeled_per_batch = round(ratio * batch_size)
            self.labeled_per_batch = batch_size - self.unlabeled_per_batch
        self._pool: list[int] = []  # unlabelled rows not drawn yet (explicit ratio)

    def __len__(self) -> int:
        if self.ratio is None:
            return math.ceil((self.labeled + self.unlabeled) / self.batch_size)
        return math.ceil(self.labeled / self.labeled_per_batch)

    def _shuffled(self, n: int, offset: int = 0) -> list[int]:
        return (offset + torch.randperm(n, generator=self.generator)).tolist()

    def _draw_unlabeled(self, k: int) -> list[int]:
        rows: list[int] = []
        while len(rows) < k:
            if not self._pool:
                self._pool = self._shuffled(self.unlabeled, self.labeled)
            take = min(k - len(rows), len(self._pool))
            rows += self._pool[:take]
            del self._pool[:take]
        return rows

    def __iter__(self) -> Iterator[list[int]]:
        labeled = self._shuffled(self.labeled)
        if self.ratio is None:
            unlabeled = self._shuffled(self.unlabeled, self.labeled)
            total = self.labeled + self.unlabeled
            for b in range(len(self)):
                start, end = b * self.batch_size, min((b + 1) * self.batch_size, total)
                # Labelled rows among the first `end` of the epoch: their share, rounded down.
                l0, l1 = start * self.labeled // total, end * self.labeled // total
                yield labeled[l0:l1] + unlabeled[start - l0 : end - l1]
            return
        per_l, per_u = self.labeled_per_batch, self.unlabeled_per_batch
        for b in range(len(self)):
            rows = labeled[b * per_l : (b + 1) * per_l]
            # A short last batch keeps the ratio.
            yield rows + self._draw_unlabeled(
                per_u if len(rows) == per_l else round(len(rows) * per_u / per_l)
            )


def _mixed_sampler(loader: Any) -> MixedBatchSampler | None:
    """The loader's MixedBatchSampler, under Accelerate's wrapping, or None."""
    sampler = getattr(loader, "batch_sampler", None)
    while sampler is not None and not isinstance(sampler, MixedBatchSampler):
        sampler = getattr(sampler, "batch_sampler", None)  # Accelerate's shard wraps it
    return sampler


def sampler_state(loader: DataLoader) -> dict[str, Any]:
    """The training order's state: the loader's generator and the unlabelled rows a
    MixedBatchSampler has not drawn yet."""
    mixed = _mixed_sampler(loader)
    return {
        "generator": encode_generator(loader.generator),
        "pool": list(mixed._pool) if mixed is not None else None,
    }


def restore_sampler(loader: DataLoader, saved: dict[str, Any]) -> None:
    """Put the training order back as `sampler_state` saved it."""
    decode_generator(loader.generator, saved["generator"])
    mixed = _mixed_sampler(loader)
    if mixed is not None:
        mixed._pool = list(saved["pool"] or [])
