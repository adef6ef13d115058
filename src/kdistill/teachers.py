"""A teacher turns texts into class logits over the data set's classes, frozen.

Today: a sequence classifier whose logit columns are reordered onto the data set's classes.
This is the seam for the LLM prompt teacher and the logit cache: anything with `logits(batch)`
returning (batch, num_labels) can teach.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class ClassifierTeacher:
    """A frozen `*ForSequenceClassification` model; its own tokenizer, its own inputs."""

    mode = "classifier"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        columns: list[int],
        name: str,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        # Logit column of each data-set class; identity when the teacher's order already matches.
        self.columns = torch.tensor(columns, dtype=torch.long)
        self._identity = columns == list(range(model.config.num_labels))

    def settings(self) -> dict[str, Any]:
        """What, besides weights and tokenizer, decides the logits (part of the cache key)."""
        return {"label_columns": self.columns.tolist(), "dtype": str(self.model.dtype)}

    def to(self, device: torch.device) -> ClassifierTeacher:
        self.model.to(device)
        self.columns = self.columns.to(device)
        return self

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, num_labels) logits in the data set's class order, from the `teacher_*` inputs.

        no_grad rather than inference_mode: the result is a loss target, and autograd may save it
        for the backward pass, which inference tensors forbid.
        """
        out = self.model(
            input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
        ).logits
        return out if self._identity else out.index_select(-1, self.columns)
