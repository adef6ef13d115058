"""--generate: a causal LM writes transfer text from the class names alone (ZeroGen, SuperGen),
for the teacher to label. Sampling with temperature and top-p, batched, with the KV cache
(`model.generate`), seeded batch by batch so a seed writes the same texts again.

A text is what the LLM writes after the class's prompt up to its first line break, kept when it
has a few words and is not a duplicate or a held-out text (data.augment.Deduper).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from kdistill.data.augment import Deduper, MadeTexts
from kdistill.data.model_files import load_tokenizer
from kdistill.data.model_paths import check_model_path

if TYPE_CHECKING:
    from collections.abc import Iterable

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

FLAG = "--generator-model"
MIN_WORDS = 3  # shorter is a title or a stray token, not a text to classify
ROUNDS = 3  # passes over the classes still short of N before giving up on them


@dataclass(frozen=True)
class Sampling:
    """How the LLM samples: --generate-temperature, --generate-top-p,
    --generate-max-new-tokens, and the batch size and seed."""

    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int
    seed: int


def load_generator(
    name: str, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The --generator-model causal LM (a folder, Hub id or .gguf), frozen, and its tokenizer."""
    from kdistill.teachers.prompt import load_frozen_causal_lm

    return load_frozen_causal_lm(check_model_path(name, FLAG), FLAG, dtype)


def generator_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The --generator-model's tokenizer alone (its prompts are part of the cache key)."""
    return load_tokenizer(check_model_path(name, FLAG), FLAG)


CHAT_PROMPT = "Write a short text about {label}."
PLAIN_PROMPT = "Here is a short text about {label}:\n"


def class_prompts(
    template: str | None,
    label_names: list[str],
    descriptions: dict[str, list[str]],
    tokenizer: PreTrainedTokenizerBase,
    chat: str = "auto",
) -> list[str]:
    """One prompt per class: `template` (by default an instruction for a chat model, a lead-in
    to continue for a base model) with its {label} slot filled by the class's first
    description; as a user turn in the tokenizer's chat template where `chat` asks (auto: where
    it has one)."""
    from kdistill.errors import KdistillError

    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if chat == "on" and not has_chat:
        raise KdistillError(
            "--generate-chat-template on: the generator's tokenizer has no chat template; "
            "pass auto or off"
        )
    use_chat = has_chat and chat != "off"
    template = template or (CHAT_PROMPT if use_chat else PLAIN_PROMPT)
    prompts = [template.replace("{label}", descriptions[name][0]) for name in label_names]
    if not use_chat:
        return prompts
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]


def first_text(continuation: str) -> str:
    """The LLM's continuation up to its first line break, stripped."""
    text = continuation.strip().split("\n", 1)[0]
    return " ".join(text.split())


def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    n: int,
    sampling: Sampling,
    held_out: Iterable[str] = (),
) -> MadeTexts:
    """`n` texts per prompt (class), in class order: origins are the class indices. A class
    the LLM keeps answering with duplicates or fragments may end with fewer (counted in
    `dropped`)."""
    from tqdm.auto import tqdm

    dedupe, per_class = Deduper((), held_out), [[] for _ in prompts]
    bar = tqdm(total=n * len(prompts), desc="generate", unit="rows")
    start, batch_no = time.perf_counter(), 0
    for _ in range(ROUNDS):
        wanted = [c for c in range(len(prompts)) for _ in range(n - len(per_class[c]))]
        for i in range(0, len(wanted), sampling.batch_size):
            classes = wanted[i : i + sampling.batch_size]
            outs = _sample(model, tokenizer, [prompts[c] for c in classes], sampling, batch_no)
            batch_no += 1
            for c, out in zip(classes, outs, strict=True):
                text = first_text(out)
                if len(per_class[c]) >= n:
                    continue
                if len(text.split()) < MIN_WORDS:
                    dedupe.dropped["empty"] += 1
                elif dedupe.accept(text):
                    per_class[c].append(text)
                    bar.update(1)
        if all(len(p) >= n for p in per_class):
            break
    bar.close()
    made = MadeTexts(dropped=dedupe.dropped)
    for c, texts in enumerate(per_class):
        made.texts += texts
        made.methods += ["generate"] * len(texts)
        made.origins += [c] * len(texts)
    rate = len(made.texts) / max(time.perf_counter() - start, 1e-9)
    logger.info("--generate: %d texts written (%.1f rows/s)", len(made.texts), rate)
    return made


@torch.inference_mode()
def _sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    sampling: Sampling,
    batch_no: int,
) -> list[str]:
    """One batch of sampled continuations. Left padding, so every row's new tokens start at
    the same position; seeded by batch so the seed alone fixes what is written."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    finally:
        tokenizer.padding_side = side
    torch.manual_seed(sampling.seed * 100_003 + batch_no)
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=0,
        max_new_tokens=sampling.max_new_tokens,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new, skip_special_tokens=True)
