"""--augment-method mlm: TinyBERT's word replacement. Words are masked and a masked LM (any
*ForMaskedLM folder, --augment-model) proposes replacements; one of its top candidates is drawn
for each. Only words that are one token of the MLM's vocabulary are replaced (TinyBERT replaced
the others from GloVe neighbours, which are not packaged here).

No masked LM is packaged offline: the packaged all-MiniLM-L6-v2 is a sentence encoder saved
without its MLM head. A model whose head would be random is refused.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import torch

from kdistill.data.model_files import hf_kwargs, load_error, load_tokenizer
from kdistill.data.model_paths import check_model_path
from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

FLAG = "--augment-model"
TOP_K = 15  # TinyBERT's candidate set size
BATCH = 32


class MaskedLMReplacer:
    """Callable on a batch of word lists: each list with about `rate` of its words replaced."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rate: float
    ) -> None:
        self.model, self.tokenizer, self.rate = model, tokenizer, rate
        # Candidates must be whole words: no '##' pieces, special tokens or punctuation.
        self.banned = torch.ones(model.config.vocab_size, dtype=torch.bool)
        for token, i in tokenizer.get_vocab().items():
            if i < len(self.banned) and token.isalpha():
                self.banned[i] = False

    def __call__(self, batch: list[list[str]], rng: random.Random) -> list[list[str]]:
        out: list[list[str]] = []
        for start in range(0, len(batch), BATCH):
            out.extend(self._replace(batch[start : start + BATCH], rng))
        return out

    def _single_token_words(self, words: list[str]) -> list[int]:
        ids = [self.tokenizer.convert_tokens_to_ids(w.lower()) for w in words]
        unk = self.tokenizer.unk_token_id
        return [i for i, t in enumerate(ids) if t is not None and t != unk and words[i].isalpha()]

    @torch.inference_mode()
    def _replace(self, batch: list[list[str]], rng: random.Random) -> list[list[str]]:
        masked, picks = [], []
        for words in batch:
            eligible = self._single_token_words(words)
            chosen = [i for i in eligible if rng.random() < self.rate]
            if not chosen and eligible:
                chosen = [rng.choice(eligible)]
            picks.append(chosen)
            mask = self.tokenizer.mask_token
            masked.append(" ".join(mask if i in chosen else w for i, w in enumerate(words)))
        enc = self.tokenizer(
            masked, padding=True, truncation=True, max_length=256, return_tensors="pt"
        )
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        logits = self.model(**enc).logits.float().cpu()  # (batch, seq, vocab)
        logits[..., self.banned[: logits.shape[-1]]] = float("-inf")
        top = logits.topk(TOP_K, dim=-1).indices  # (batch, seq, TOP_K)
        out = []
        for row, (words, chosen) in enumerate(zip(batch, picks, strict=True)):
            new = list(words)
            positions = (enc["input_ids"][row] == self.tokenizer.mask_token_id).nonzero().flatten()
            for i, pos in zip(chosen, positions.tolist(), strict=False):
                candidates = self.tokenizer.convert_ids_to_tokens(top[row, pos].tolist())
                others = [c for c in candidates if c != words[i].lower()]
                new[i] = rng.choice(others) if others else words[i]
            out.append(new)
        return out


def load_masked_lm(name: str, rate: float, device: torch.device | str = "cpu") -> MaskedLMReplacer:
    """The --augment-model masked LM, frozen; refused where its MLM head would be random or its
    tokenizer has no mask token."""
    from transformers import AutoModelForMaskedLM

    path = check_model_path(name, FLAG)
    tokenizer = load_tokenizer(path, FLAG)
    if tokenizer.mask_token is None:
        raise KdistillError(f"{FLAG} {name}: its tokenizer has no mask token; pass a masked LM")
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            path, output_loading_info=True, **hf_kwargs(weights=True)
        )
    except Exception as e:
        raise load_error(FLAG, name, e) from e
    base = f"{model.base_model_prefix}."
    fresh = [k for k in info.get("missing_keys", []) if not str(k).startswith(base)]
    if fresh:
        raise KdistillError(
            f"{FLAG} {name}: the folder has no trained MLM head ({fresh[0]} missing), so its "
            "word candidates would be random; pass a *ForMaskedLM model, or use "
            "--augment-method mask,delete,swap"
        )
    model.eval().requires_grad_(False).to(device)
    return MaskedLMReplacer(model, tokenizer, rate)
