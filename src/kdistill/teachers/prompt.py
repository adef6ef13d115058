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

import copy
import json
import logging
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.errors import KdistillError
from kdistill.teachers.prefix_cache import (
    MIN_PREFIX_TOKENS,
    PrefixCache,
    common_prefix,
    packed_continuations,
    suffix_batch,
)

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


# --------------------------------------------------------------------------- label words


def default_label_word(name: str) -> str:
    """'EducationalInstitution' -> 'Educational Institution', 'snake_case' -> 'snake case':
    a language model has seen the words, rarely the identifier."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    return " ".join(re.sub(r"[_\-]+", " ", spaced).split())


def _read_spec(spec: str) -> dict[str, str]:
    """A JSON file mapping class names to words, or `Name=word,Name=word`."""
    path = Path(spec).expanduser()
    if path.is_file() or spec.endswith(".json"):
        try:
            mapping = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise KdistillError(f"--label-words {spec}: cannot read it as JSON ({e})") from e
        if not isinstance(mapping, dict):
            raise KdistillError(
                f"--label-words {spec}: the JSON must be an object mapping class names to words"
            )
        return {str(k): "" if v is None else str(v) for k, v in mapping.items()}
    mapping = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise KdistillError(
                f"--label-words: {item.strip()!r} has no '='; write Class=word pairs separated by "
                "commas, e.g. EducationalInstitution=School"
            )
        name, word = item.split("=", 1)
        mapping[name.strip()] = word
    return mapping


def parse_label_words(spec: str | None, label_names: list[str]) -> dict[str, str]:
    """A word for every class: the spec's where it names one, else the class name split into
    words. Unknown classes, empty words and shared words are errors: two classes with one word
    would get one score, and a typo in a class name would silently keep the default."""
    return resolve_label_words(_read_spec(spec) if spec else {}, label_names)


def resolve_label_words(given: dict[str, str], label_names: list[str]) -> dict[str, str]:
    """`given` completed with default words and checked (see `parse_label_words`)."""
    unknown = [n for n in given if n not in label_names]
    if unknown:
        shown = ", ".join(label_names[:6]) + (" ..." if len(label_names) > 6 else "")
        raise KdistillError(
            f"--label-words: unknown class {unknown[0]!r}; the classes are: {shown}"
        )
    words = {
        n: " ".join(given[n].split()) if n in given else default_label_word(n) for n in label_names
    }
    empty = [n for n, w in words.items() if not w]
    if empty:
        raise KdistillError(f"--label-words: class {empty[0]!r} has an empty word; give it one")
    seen: dict[str, str] = {}
    for name, word in words.items():
        other = seen.setdefault(word.lower(), name)
        if other != name:
            raise KdistillError(
                f"--label-words: {other!r} and {name!r} both have the word {word!r}; give each "
                "class its own word"
            )
    return words


def check_template(template: str | None) -> None:
    """A template needs the {text} slot; {labels} (the comma-separated label words) is
    optional. Slots are replaced literally, so other braces need no escaping."""
    if template is not None and "{text}" not in template:
        raise KdistillError(
            "--prompt-template: it has no {text} slot; put {text} where the example goes, e.g. "
            '"Text: {text}\\nCategory:"'
        )


def pick_few_shot(
    texts: list[str], labels: list[int], label_names: list[str], k: int, seed: int
) -> list[tuple[str, int]]:
    """K (text, label) examples, stratified: round-robin over the classes in a seeded random
    order, so K <= number of classes gives K different classes, and the prompt does not show
    one class several times in a row."""
    if k < 0:
        raise KdistillError(f"--few-shot {k}: must be 0 or more")
    if k == 0:
        return []
    if k > len(texts):
        raise KdistillError(
            f"--few-shot {k}: larger than the {len(texts)} training rows; use {len(texts)} or fewer"
        )
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    classes = sorted(by_class)
    rng.shuffle(classes)
    for c in classes:
        rng.shuffle(by_class[c])
    # Class at position j of the order gets ceil((k - j) / C) examples.
    for j, c in enumerate(classes):
        need = math.ceil((k - j) / len(classes)) if j < k else 0
        if need > len(by_class[c]):
            raise KdistillError(
                f"--few-shot {k}: larger than a class: {k} examples need {need} of class "
                f"{label_names[c]!r}, which has {len(by_class[c])} rows; use --few-shot "
                f"{len(classes)} or fewer"
            )
    picked = [by_class[classes[j % len(classes)]][j // len(classes)] for j in range(k)]
    return [(texts[i], labels[i]) for i in picked]


def few_shot_record(teacher: Any, seed: int) -> dict[str, Any] | None:
    """The few-shot examples a prompt teacher shows, whole (before the prompt cuts them), for
    the run's config.json: compare and eval-teacher given the run show the same ones, rather
    than picking their own from another train split. None for a teacher without any."""
    settings = getattr(teacher, "prompt_settings", None)
    if settings is None or not settings.few_shot:
        return None
    return {
        "k": len(settings.few_shot),
        "seed": seed,
        "picked_from": "train after --max-train-samples",
        "rows": [[text, teacher.label_names[y]] for text, y in settings.few_shot],
    }


def shots_from_record(
    record: dict[str, Any], label_names: list[str], where: str
) -> list[tuple[str, int]]:
    """`few_shot_record`'s rows back as (text, label index) over `label_names`."""
    index = {n: i for i, n in enumerate(label_names)}
    shots = []
    for text, name in record.get("rows") or []:
        if name not in index:
            raise KdistillError(
                f"{where}: its few-shot example of class {name!r} is not a class of this data "
                "set; pass the --dataset the run used"
            )
        shots.append((str(text), index[name]))
    return shots


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
            # As models.load_tokenizer: decoder-only tokenizers ship without one.
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
        """`_scores` of left-aligned rows; with `prefix`, every row starts with its tokens and
        only what follows them runs, over a copy of the prefix's keys and values."""
        if prefix is None:
            lengths = mask.sum(1)  # (B,)
            # Positions count real tokens only, so a padded row sees what it would see alone.
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
            )
        else:
            suffix = suffix_batch(ids, mask, len(prefix), self.tokenizer.pad_token_id or 0)
            mask, lengths = suffix["attention_mask"], suffix["lengths"]  # mask: (B, P + S)
            out = self.model(
                input_ids=suffix["input_ids"],
                attention_mask=mask,
                position_ids=suffix["position_ids"],
                cache=prefix.expanded(self.model, ids.shape[0]),
                use_cache=True,
                logits_to_keep=1,
            )
        device = ids.device
        first = out.logits[:, -1].float().log_softmax(-1)  # (B, V)
        labels = [torch.tensor(r, device=device) for r in self.label_ids]
        n_tokens = torch.tensor([len(r) for r in self.label_ids], device=device)  # (C,)
        scores = first[:, torch.stack([r[0] for r in labels])]  # (B, C)
        longest = int(n_tokens.max())
        if longest > 1:
            scores = scores + self._continuations(
                out.cache, mask, lengths, labels, longest, vocab=first.shape[-1]
            )
        return scores / n_tokens

    def _continuations(
        self,
        cache: Any,
        mask: torch.Tensor,
        lengths: torch.Tensor,
        labels: list[torch.Tensor],
        longest: int,
        vocab: int,
    ) -> torch.Tensor:
        """(B, C) summed log-probabilities of label tokens 2..n: all words packed over one copy
        of the prompt cache (`packed_continuations`), or, where the model's attention takes no
        custom mask, one forward over the cache repeated per class (in chunks of classes that
        fit `chunk_bytes`)."""
        packed = packed_continuations(self.model, cache, mask, lengths, labels, self.chunk_bytes)
        if packed is not None:
            return packed
        device = mask.device
        batch, num_labels, steps = mask.shape[0], len(labels), longest - 1
        pad = self.tokenizer.pad_token_id or 0
        # (C, longest) label tokens padded on the right; a row's inputs are its tokens but the
        # last, its targets all tokens but the first.
        tokens = torch.full((num_labels, longest), pad, dtype=torch.long, device=device)
        real = torch.zeros((num_labels, longest), dtype=torch.long, device=device)
        for c, r in enumerate(labels):
            tokens[c, : len(r)] = r
            real[c, : len(r)] = 1
        inputs, targets, target_real = tokens[:, :-1], tokens[:, 1:], real[:, 1:]

        cache_bytes = sum(
            t.numel() * t.element_size() for kv in cache for t in kv[:2] if t is not None
        )
        per_row = cache_bytes / batch + 4 * steps * vocab * 2  # cache + logits + log-softmax
        per_chunk = max(1, min(num_labels, int(self.chunk_bytes // (per_row * batch))))
        result = torch.empty((batch, num_labels), device=device)
        for start in range(0, num_labels, per_chunk):
            cs = slice(start, min(start + per_chunk, num_labels))
            k = cs.stop - cs.start
            last = cs.stop == num_labels
            # Row b * k + j is prompt b with class start + j; the last chunk may consume the cache.
            rep = cache if last else copy.deepcopy(cache)
            rep.batch_repeat_interleave(k)
            out = self.model(
                input_ids=inputs[cs].repeat(batch, 1),
                attention_mask=torch.cat(
                    [mask.repeat_interleave(k, 0), real[cs, :-1].repeat(batch, 1)], dim=1
                ),
                position_ids=(
                    lengths[:, None] + torch.arange(steps, device=device)
                ).repeat_interleave(k, 0),
                cache=rep,
                use_cache=True,
            )
            logp = out.logits.float().log_softmax(-1)  # (B * k, steps, V)
            picked = logp.gather(-1, targets[cs].repeat(batch, 1)[..., None])[..., 0]
            summed = (picked * target_real[cs].repeat(batch, 1)).sum(-1)
            result[:, cs] = summed.view(batch, k)
        return result


# --------------------------------------------------------------------------- loading


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
    from transformers import AutoModelForCausalLM

    from kdistill.students.load import _load_error, check_model_path, hf_kwargs, load_tokenizer

    flag = "--teacher-model"
    check_template(settings.template)
    name = check_model_path(name, flag)
    tokenizer = load_tokenizer(name, flag)
    extra = {"dtype": dtype} if dtype is not None else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **hf_kwargs(weights=True), **extra)
    except Exception as e:
        raise _load_error(flag, name, e) from e
    model.eval()
    model.requires_grad_(False)
    return PromptTeacher(model, tokenizer, label_names, name, settings, prefix_cache)
