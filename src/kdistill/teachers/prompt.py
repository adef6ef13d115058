"""The LLM prompt teacher: a causal LM without a classification head teaches by scoring words.

Each class gets a label word ("School" for EducationalInstitution). A prompt lists the words and
ends where the answer begins ("...\\nCategory:" raw, or the assistant turn of a chat template);
the class's score is the mean per-token log-probability of its word as the continuation. Mean
rather than sum, so a three-token word is not penalised against a one-token word for its length.

Calibration (Zhao et al. 2021, "Calibrate Before Use"): a prompt alone prefers some words
whatever the text says (SmolLM2 answers "Company" for almost anything). Scoring content-free
inputs ("N/A", "", "[MASK]") with the same prompt measures that prior, p_cf; subtracting
log p_cf from every score makes the content-free input's own distribution uniform, so what is
left is what the text adds.

Efficiency: the prompts run once (batch B) with the KV cache kept; the later tokens of all C
label words of all B prompts are then scored in one more forward over that cache, packed into
one sequence per prompt under a mask that keeps the words apart (in chunks when B * C is
large). The first label token's log-probability comes from the prompt pass, so when every label
word is a single token the second pass is skipped. The tokens every prompt starts with
(few-shot examples, instruction, label list) run once and their keys and values are reused by
every batch; the text comes last in the prompt so that share is long (`teachers.prefix_cache`).

Reasoning models: a chat template whose generation prompt opens a thinking block (the
DeepSeek-R1 distills end it with "<think>\n") gets the block closed empty before the answer
cue, so the label word is read where the model answers, not inside its thinking.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from kdistill.data.model_files import hf_kwargs, load_error, load_tokenizer
from kdistill.data.model_paths import check_model_path
from kdistill.errors import KdistillError
from kdistill.teachers.label_words import check_template, resolve_label_words
from kdistill.teachers.prefix_cache import MIN_PREFIX_TOKENS, PrefixCache, common_prefix
from kdistill.teachers.prompt_scoring import score_aligned

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. 2021, "Calibrate Before Use"
DEFAULT_TEMPLATE = (
    "Classify the text into one of these categories: {labels}\n\nText: {text}\nCategory:"
)
# Bumped when the scoring changes in a way the settings do not show, so cached logits go stale.
SCORING = "mean-token-logprob/2"
ANSWER_PREFIX = "Category:"  # how a chat reply begins, before the label word
THINK_OPEN = "<think>"
# What R1-style templates write for a reply without thinking.
EMPTY_THINK = "<think>\n\n</think>\n\n"


# --------------------------------------------------------------------------- the teacher


@dataclass
class PromptSettings:
    """How the causal LM is prompted; everything here goes into the logit-cache key."""

    template: str | None = None
    """None: the default prompt (in the tokenizer's chat template with `chat`). A string with
    {text} and optional {labels} slots is used raw, never chat-wrapped."""
    label_words: dict[str, str] = field(default_factory=dict)
    """Class name -> word scored as the answer; empty: the class names split into words."""
    few_shot: list[tuple[str, int]] = field(default_factory=list)
    """(text, label index) examples shown before the query, with their label words."""
    calibrate: bool = True
    """Subtract the log-probabilities the prompt gives content-free inputs (Zhao et al. 2021)."""
    chat: bool = False
    """Wrap the default prompt in the tokenizer's chat template. Off by default: measured on
    140 DBpedia validation rows with SmolLM2-135M-Instruct (calibrated), 45% plain vs 19% chat."""
    max_text_tokens: int = 128
    """Texts (query and few-shot) are cut to this many tokens before they enter the prompt."""


class PromptTeacher:
    """A frozen causal LM scoring label words; `logits(batch)` is (batch, num_labels)."""

    mode = "prompt"
    # Upper bound on the memory of one continuation chunk: the repeated KV cache plus the fp32
    # log-probabilities over the vocabulary. Tests lower it to force several chunks.
    chunk_bytes: int = 1 << 30

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        label_names: list[str],
        name: str,
        settings: PromptSettings,
        prefix_cache: str = "auto",
    ) -> None:
        check_template(settings.template)
        self.model = model
        self.tokenizer = tokenizer
        self.label_names = list(label_names)
        self.name = name
        self.prompt_settings = settings
        self.content_free: tuple[str, ...] = CONTENT_FREE
        if tokenizer.pad_token is None:
            # As data.model_files.load_tokenizer: decoder-only tokenizers ship without one.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        words = resolve_label_words(settings.label_words, self.label_names)
        self.words = [words[n] for n in self.label_names]
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if settings.chat and not has_chat:
            logger.warning("--chat-template: the tokenizer has none; using the plain prompt")
        if settings.chat and settings.template is not None:
            logger.warning("--chat-template does not apply to a --prompt-template (used raw)")
        self.chat = settings.chat and settings.template is None and has_chat
        self.think_close = self._think_close() if self.chat else ""
        self.template = DEFAULT_TEMPLATE if settings.template is None else settings.template
        for _, y in settings.few_shot:
            if not 0 <= y < len(self.label_names):
                raise KdistillError(f"--few-shot: label index {y} is out of range")
        self.few_shot = [
            (self._truncate([t], settings.max_text_tokens)[0], y) for t, y in settings.few_shot
        ]
        self.label_ids = self._label_token_ids()
        self._log_p_cf: dict[str, list[float]] = {}
        if prefix_cache not in ("auto", "off"):
            raise KdistillError(f"--prefix-cache {prefix_cache}: use auto or off")
        self.prefix_cache_mode = prefix_cache
        self._prefix: PrefixCache | None = None  # decided at the first batch (needs the model)
        self._prefix_resolved = prefix_cache == "off"

    # ------------------------------------------------------------------ prompts and tokens

    def _fill(self, text: str) -> str:
        # {labels} first: a text that happens to contain "{labels}" stays as written.
        return self.template.replace("{labels}", ", ".join(self.words)).replace("{text}", text)

    def _think_close(self) -> str:
        """What closes the thinking block the chat template's generation prompt leaves open
        ("" when it leaves none). Read off the generation prompt alone, so a text that happens
        to contain "<think>" changes nothing."""
        messages = [{"role": "user", "content": "x"}]
        with_prompt = self._apply_chat(messages)
        without = self.tokenizer.apply_chat_template(messages, tokenize=False)
        generation = with_prompt[len(without) :] if with_prompt.startswith(without) else with_prompt
        start = generation.rfind(THINK_OPEN)
        if start < 0 or "</think>" in generation[start:]:
            return ""
        opened = generation[start:]
        if EMPTY_THINK.startswith(opened):
            return EMPTY_THINK[len(opened) :]
        return "\n</think>\n\n"

    def _apply_chat(self, messages: list[dict[str, str]]) -> str:
        # enable_thinking=False: Qwen3-style templates then write the empty thinking block
        # themselves; templates that do not read the variable ignore it.
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, enable_thinking=False
        )

    def _continuation(self, word: str, prompt: str) -> str:
        """The label word as the model would write it next. After "Category:" a word starts
        with a space (byte-level BPE has " School" as one token, "School" after ":" is rare)."""
        if not prompt or prompt[-1].isspace():
            return word
        return " " + word

    def render(self, text: str) -> str:
        """The full prompt string for one (already truncated) text."""
        if self.chat:
            messages = []
            for shot, y in self.few_shot:
                messages.append({"role": "user", "content": self._fill(shot)})
                messages.append(
                    {"role": "assistant", "content": f"{ANSWER_PREFIX} {self.words[y]}"}
                )
            messages.append({"role": "user", "content": self._fill(text)})
            # The reply starts with "Category:", so the label word follows a colon and a space as
            # in the raw prompt. At the very start of a reply, words split into rare pieces
            # ("Al|b|um"), whose near-certain later pieces squash the length-normalised scores:
            # measured on 100 DBpedia rows with SmolLM2-135M, 13% calibrated without the prefix.
            return self._apply_chat(messages) + self.think_close + ANSWER_PREFIX
        parts = []
        for shot, y in self.few_shot:
            filled = self._fill(shot)
            parts.append(filled + self._continuation(self.words[y], filled) + "\n\n")
        return "".join(parts) + self._fill(text)

    def _tokenize(self, prompts: list[str]) -> list[list[int]]:
        # A chat template writes its own BOS and role markers; a raw prompt gets the tokenizer's
        # usual special tokens (a BOS for Llama-style tokenizers, nothing for Qwen's).
        return self.tokenizer(prompts, add_special_tokens=not self.chat)["input_ids"]

    def _truncate(self, texts: list[str], max_tokens: int) -> list[str]:
        """Each text cut to its first `max_tokens` tokens, as a string (the prompt is tokenised
        whole, so the text's tokens merge with the template's as they would in use)."""
        enc = self.tokenizer(
            texts,
            add_special_tokens=False,
            return_offsets_mapping=bool(getattr(self.tokenizer, "is_fast", False)),
        )
        out = []
        for i, text in enumerate(texts):
            ids = enc["input_ids"][i]
            if len(ids) <= max_tokens:
                out.append(text)
            elif "offset_mapping" in enc:  # cut the original string: no decode artefacts
                out.append(text[: enc["offset_mapping"][i][max_tokens - 1][1]])
            else:
                out.append(self.tokenizer.decode(ids[:max_tokens]))
        return out

    def _label_token_ids(self) -> list[list[int]]:
        """Each label word's tokens as they follow the prompt.

        The prompt for a content-free text and the prompt plus the continuation are tokenised
        together and the prompt's tokens taken off, so BPE merges and SentencePiece's word
        boundaries come out as the model sees them at the end of any prompt (the end of the
        prompt, after {text}, is the same for every text). Should the joint tokenisation not
        start with the prompt's own tokens (a merge across the boundary), the continuation is
        tokenised alone and a warning says so.
        """
        prompt = self.render(self.content_free[0])
        prompt_ids = self._tokenize([prompt])[0]
        result = []
        for name, word in zip(self.label_names, self.words, strict=True):
            cont = self._continuation(word, prompt)
            joint = self._tokenize([prompt + cont])[0]
            if joint[: len(prompt_ids)] == prompt_ids and len(joint) > len(prompt_ids):
                ids = joint[len(prompt_ids) :]
            else:
                logger.warning("label word %r merges with the prompt's end; tokenised alone", word)
                ids = self.tokenizer(cont, add_special_tokens=False)["input_ids"]
            if not ids:
                raise KdistillError(f"--label-words: the word for {name!r} has no tokens")
            result.append(list(ids))
        return result

    def encode(self, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
        """Unpadded `input_ids` / `attention_mask` of each text's full prompt. The text, not
        the prompt, is cut to min(max_length, max_text_tokens) tokens: the prompt must keep
        its ending, where the answer is read."""
        limit = min(max_length, self.prompt_settings.max_text_tokens)
        ids = self._tokenize([self.render(t) for t in self._truncate(texts, limit)])
        return {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]}

    def settings(self) -> dict[str, Any]:
        """What, besides weights and tokenizer, decides the logits (part of the cache key)."""
        return {
            "scoring": SCORING,
            "template": self.template,
            "chat_template": self.tokenizer.chat_template if self.chat else None,
            "label_words": self.words,
            "label_token_ids": self.label_ids,
            "few_shot": [[t, self.label_names[y]] for t, y in self.few_shot],
            "calibrate": self.prompt_settings.calibrate,
            "content_free": list(self.content_free),
            "max_text_tokens": self.prompt_settings.max_text_tokens,
            "dtype": str(self.model.dtype),
            # Only where a template mentions thinking, so other teachers' cached logits stay valid.
            **({"think": self.think_close or "template"} if self._mentions_think() else {}),
        }

    def _mentions_think(self) -> bool:
        template = self.tokenizer.chat_template if self.chat else None
        if not isinstance(template, str):
            return False
        return THINK_OPEN in template or "enable_thinking" in template

    def to(self, device: torch.device | str) -> PromptTeacher:
        self.model.to(device)
        return self

    # ------------------------------------------------------------------ scoring

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, num_labels) float32 logits from `teacher_input_ids` / `teacher_attention_mask`
        (padded on either side).

        no_grad rather than inference_mode: the result is a loss target, and autograd may save
        it for the backward pass, which inference tensors forbid.
        """
        scores = self._scores(batch["teacher_input_ids"], batch["teacher_attention_mask"])
        if self.prompt_settings.calibrate:
            scores = scores - torch.tensor(self._calibration(), device=scores.device)
        return scores

    def _calibration(self) -> list[float]:
        """log p_cf per class, memoised per device. Kept as floats, not a tensor: one made under
        inference_mode (the cache pass) must not leak into training steps."""
        key = str(self.device)
        if key not in self._log_p_cf:
            texts = list(self.content_free)
            enc = self.encode(texts, max_length=self.prompt_settings.max_text_tokens)
            width = max(len(r) for r in enc["input_ids"])
            pad = self.tokenizer.pad_token_id
            ids = [[pad] * (width - len(r)) + r for r in enc["input_ids"]]
            mask = [[0] * (width - len(r)) + [1] * len(r) for r in enc["input_ids"]]
            scores = self._scores(
                torch.tensor(ids, device=self.device), torch.tensor(mask, device=self.device)
            )
            # Averaged in probability space: each content-free input is one estimate of the prior.
            p_cf = scores.softmax(-1).mean(0)
            self._log_p_cf[key] = p_cf.log().tolist()
        return self._log_p_cf[key]

    def _scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, num_labels) mean log-probability of each label word after each prompt."""
        device = self.device
        mask = attention_mask.to(device)
        # Left-align every batch (a stable sort puts the pad positions first, real tokens keep
        # their order): the last real token is then always the last column.
        order = torch.argsort(mask, dim=1, stable=True)
        ids = input_ids.to(device).gather(1, order)
        mask = mask.gather(1, order)
        prefix = self._shared_prefix()
        hits = prefix.match(ids, mask) if prefix is not None else torch.zeros_like(mask[:, 0])
        if bool(hits.all()):
            return self._scores_aligned(ids, mask, prefix)
        if not bool(hits.any()):
            return self._scores_aligned(ids, mask, None)
        # Some rows tokenised the prefix differently: each group its own way, same logits.
        hits = hits.bool()
        scores = torch.empty((ids.shape[0], len(self.label_ids)), device=device)
        for rows, cached in ((hits, prefix), (~hits, None)):
            sub_ids, sub_mask = ids[rows], mask[rows]
            first = int((sub_mask.sum(0) > 0).nonzero()[0])  # drop columns of pads only
            scores[rows] = self._scores_aligned(sub_ids[:, first:], sub_mask[:, first:], cached)
        return scores

    def _shared_prefix(self) -> PrefixCache | None:
        """The prefix cache, or None when it is off or there is no shared prefix worth one.

        The prefix is the token ids that the prompts of probe texts with different first
        characters all start with: everything before the text, less any token the text could
        merge with. Rows are still checked one by one (`PrefixCache.match`)."""
        if not self._prefix_resolved:
            self._prefix_resolved = True
            probes = [*self.content_free, "a", "1 2", "Zebra", "(x)"]
            prefix = PrefixCache(common_prefix(self._tokenize([self.render(t) for t in probes])))
            full = len(self._tokenize([self.render(self.content_free[0])])[0])
            why = None
            if len(prefix) < MIN_PREFIX_TOKENS:
                why = f"the prompts share only {len(prefix)} leading tokens"
            else:
                why = prefix.usable(self.model)
            if why:
                logger.info("prefix cache: off (%s)", why)
            else:
                self._prefix = prefix
                logger.info(
                    "prefix cache: the first %d tokens of every prompt (of %d in a content-free "
                    "one) are computed once and reused",
                    len(prefix),
                    full,
                )
        return self._prefix

    def _scores_aligned(
        self, ids: torch.Tensor, mask: torch.Tensor, prefix: PrefixCache | None
    ) -> torch.Tensor:
        """`_scores` of left-aligned rows (`prompt_scoring.score_aligned`)."""
        pad = self.tokenizer.pad_token_id or 0
        return score_aligned(self.model, ids, mask, prefix, self.label_ids, pad, self.chunk_bytes)


# --------------------------------------------------------------------------- loading


def load_frozen_causal_lm(
    path: str, flag: str, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM for inference only (a prompt teacher, a --generate writer), in `dtype` where
    given, under the load policy; a failure is a one-line error naming `flag`."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(path, flag)
    extra = {"dtype": dtype} if dtype is not None else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **hf_kwargs(weights=True), **extra)
    except Exception as e:
        raise load_error(flag, path, e) from e
    model.eval().requires_grad_(False)
    return model, tokenizer


def load_prompt_teacher(
    name: str,
    label_names: list[str],
    settings: PromptSettings,
    dtype: Any = None,
    prefix_cache: str = "auto",
) -> PromptTeacher:
    """A frozen causal LM and its tokenizer as a prompt teacher. `dtype` (torch.bfloat16, say)
    loads the weights in that precision: the teacher only runs inference. `prefix_cache` (auto,
    off): reuse the keys and values of the tokens all prompts share."""
    flag = "--teacher-model"
    check_template(settings.template)
    name = check_model_path(name, flag)
    model, tokenizer = load_frozen_causal_lm(name, flag, dtype)
    return PromptTeacher(model, tokenizer, label_names, name, settings, prefix_cache)
