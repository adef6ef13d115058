"""A teacher made of teachers: members' class distributions combined in log-probability space.

    log p_ens(y | x) = normalise( sum_k w_k * log softmax(z_k(x))_y ),   sum_k w_k = 1

a weighted geometric mean of the members' distributions (a product of experts, Hinton 2002).
Why the log space rather than averaging probabilities: members here are often prompt teachers,
whose scores are calibrated log-probabilities on different scales (a classifier's logits, a
prompt's mean token log-probability less its content-free prior). Averaging in log space is what
the loss sees anyway (the KL reads log-probabilities), a class one confident member rules out
stays unlikely instead of being propped up by the others, and the rule has the properties a
combination should have: identical members give back that member exactly, scaling all weights
changes nothing (they are normalised to sum 1), and a weight of 0 removes a member. The weights
sum to 1 so the ensemble is as sharp as its members, not k times sharper; sharpening is the
temperature's job.

Members: each `--teacher-model` (comma-separated or repeated), and for a prompt teacher each
`--prompt-template` x `--label-words` set given (repeated flags): a prompt ensemble of one LLM
shares its weights in memory. Each member is an ordinary teacher with its own logit-cache key
(`teachers.cache`), so adding a member to an ensemble reruns only the new one.

The ensemble's own inputs are each text's UTF-8 bytes (`ByteTokenizer`): every member tokenises
the text its own way when it is asked online (`--teacher-cache off`); with a cache, every member
runs its own length-sorted pass over the texts (`ensemble_logits_for`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset

    from kdistill.config import TeacherOptions
    from kdistill.teachers.classifier import Teacher

logger = logging.getLogger(__name__)

COMBINE = "log-linear/1"  # weighted geometric mean of the members' distributions
AGREEMENT = "agreement"  # --teacher-weights agreement: weights from the members' agreement


def combine(member_logits: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """(batch, C) log-probabilities: normalise(sum_k w_k log softmax(z_k)), w scaled to sum 1.

    `member_logits` are (batch, C) each, in the data set's class order."""
    if len(member_logits) != len(weights):
        raise KdistillError(
            f"--teacher-weights: {len(weights)} weights for {len(member_logits)} members"
        )
    total = float(sum(weights))
    mixed = sum(
        (w / total) * z.float().log_softmax(-1) for w, z in zip(weights, member_logits, strict=True)
    )
    return mixed.log_softmax(-1)  # (batch, C)


def agreement_weights(member_logits: list[torch.Tensor]) -> list[float]:
    """--teacher-weights agreement: each member weighted by how often its class is the one the
    other members' consensus gives, on the rows scored, no label read:

        a_k = mean_i [ argmax z_k(x_i) == argmax combine(z_j for j != k, equal weights)(x_i) ]
        w_k = a_k / sum_j a_j

    A member that disagrees with the others gets less say. With two members each one's 'others'
    is the other, so the agreement is shared and the weights equal: agreement can only tell
    members apart from three on. (Equal weights if no member agrees with any consensus.)"""
    n = len(member_logits)
    preds = [z.argmax(-1) for z in member_logits]
    agree = []
    for k in range(n):
        others = [z for j, z in enumerate(member_logits) if j != k]
        consensus = combine(others, [1.0] * len(others)).argmax(-1)
        agree.append(float((preds[k] == consensus).float().mean()))
    total = sum(agree)
    return [a / total for a in agree] if total > 0 else [1.0 / n] * n


def parse_weights(spec: str | None, n_members: int) -> list[float]:
    """--teacher-weights '2,1' -> [2.0, 1.0]; None -> equal weights. One weight per member,
    each >= 0, not all 0."""
    if spec is None or not str(spec).strip():
        return [1.0] * n_members
    try:
        weights = [float(w) for w in str(spec).split(",") if w.strip()]
    except ValueError as e:
        raise KdistillError(f"--teacher-weights {spec}: comma-separated numbers, e.g. 2,1") from e
    if len(weights) != n_members:
        raise KdistillError(
            f"--teacher-weights {spec}: {len(weights)} weights for {n_members} ensemble members "
            "(one per --teacher-model, times each --prompt-template x --label-words set)"
        )
    if any(not w >= 0 or w == float("inf") for w in weights) or sum(weights) <= 0:
        raise KdistillError(f"--teacher-weights {spec}: weights must be finite, >= 0 and not all 0")
    return weights


def as_list(value: str | list[str] | None) -> list[str | None]:
    """A flag given once (a string), several times (a list) or not at all (None)."""
    if isinstance(value, list):
        return list(value) or [None]
    return [value]


def split_models(value: str | list[str]) -> list[str]:
    """--teacher-model 'A,B' or repeated -> ['A', 'B']."""
    models = []
    for item in as_list(value):
        models += [m.strip() for m in (item or "").split(",") if m.strip()]
    return models


def is_ensemble(options: TeacherOptions, name: str | list[str]) -> bool:
    """Several models, prompts or label-word sets. Templates with a class-description slot ({})
    are one embedding teacher's and do not make an ensemble."""
    prompts = [t for t in as_list(options.prompt_template) if t is None or "{text}" in t]
    return len(split_models(name)) > 1 or len(prompts) > 1 or len(as_list(options.label_words)) > 1


class ByteTokenizer:
    """The ensemble's own 'tokenizer': a text's UTF-8 bytes, padded with 0 on the right. Just
    enough of a tokenizer for the data pipeline (pad, identity); members tokenise for real."""

    pad_token_id = 0
    padding_side = "right"
    truncation_side = "right"
    is_fast = False

    def get_vocab(self) -> dict[str, int]:
        return {}

    def pad(self, encoded: dict[str, list[list[int]]], return_tensors: str = "pt") -> dict:
        rows = encoded["input_ids"]
        width = max((len(r) for r in rows), default=0)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class EnsembleModels(torch.nn.ModuleList):
    """The members' distinct models, for parameter counts and device moves; `config` is the
    first member's (run records read the attention implementation off it)."""

    def __init__(self, models: list[torch.nn.Module]) -> None:
        super().__init__(models)
        self.config = getattr(models[0], "config", None)


class EnsembleTeacher:
    """Members' distributions combined by `combine`; `logits(batch)` is (batch, C) ensemble
    log-probabilities from the `teacher_*` byte inputs."""

    mode = "ensemble"

    def __init__(
        self,
        members: list[Teacher],
        weights: list[float],
        max_length: int,
        weight_rule: str | None = None,
    ) -> None:
        if len(members) < 2:
            raise KdistillError("an ensemble needs at least 2 members")
        self.members = members
        self.weights = parse_weights(",".join(str(w) for w in weights), len(members))
        # AGREEMENT: the weights are refitted on the rows of each cached pass (None: as given).
        self.weight_rule = weight_rule
        self.weights_fitted_on: int | None = None  # rows of the pass that fitted them
        self.max_length = max_length
        self.name = "ensemble(" + ",".join(m.name for m in members) + ")"
        self.tokenizer = ByteTokenizer()
        distinct: dict[int, torch.nn.Module] = {}
        for m in members:
            distinct.setdefault(id(m.model), m.model)
        self.model = EnsembleModels(list(distinct.values()))
        # Each member's logits from the latest cached pass (`ensemble_logits_for`), for reports.
        self.member_logits: list[torch.Tensor] = []

    def encode(self, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
        ids = [list(t.encode("utf-8")) for t in texts]
        return {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]}

    def settings(self) -> dict[str, Any]:
        rule = {"weight_rule": self.weight_rule, "weights_fitted_on": self.weights_fitted_on}
        return {
            "combine": COMBINE,
            "weights": self.weights,
            **(rule if self.weight_rule else {}),
            "members": [member_record(m) for m in self.members],
        }

    def to(self, device: torch.device | str) -> EnsembleTeacher:
        for m in self.members:
            m.to(device)
        return self

    def member_batch(self, member: Teacher, texts: list[str], device: torch.device) -> dict:
        """`texts` encoded and padded for one member, as its `logits` reads them."""
        enc = member.encode(texts, self.max_length)
        tok = member.tokenizer
        width = max(len(r) for r in enc["input_ids"])
        ids = torch.full((len(texts), width), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(texts), width), dtype=torch.long)
        for i, r in enumerate(enc["input_ids"]):
            cols = slice(width - len(r), width) if tok.padding_side == "left" else slice(0, len(r))
            ids[i, cols] = torch.tensor(r, dtype=torch.long)
            mask[i, cols] = 1
        return {"teacher_input_ids": ids.to(device), "teacher_attention_mask": mask.to(device)}

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, C) ensemble log-probabilities; each member reads the texts its own way."""
        ids, mask = batch["teacher_input_ids"].cpu(), batch["teacher_attention_mask"].cpu()
        texts = [
            bytes(row[m.bool()].tolist()).decode("utf-8", errors="replace")
            for row, m in zip(ids, mask, strict=True)
        ]
        device = batch["teacher_input_ids"].device
        outs = [m.logits(self.member_batch(m, texts, device)) for m in self.members]
        return combine(outs, self.weights)


def member_label(teacher: Teacher) -> str:
    """A short description of a member: its model's file name, and for a prompt teacher what
    sets it apart (template, label words, shots)."""
    from pathlib import Path

    label = Path(teacher.name).name or teacher.name
    settings = getattr(teacher, "prompt_settings", None)
    if settings is not None:
        extra = []
        if settings.template is not None:
            extra.append("template " + repr(settings.template[:40]))
        if settings.label_words:
            extra.append("words " + ",".join(list(settings.label_words.values())[:3]))
        if settings.few_shot:
            extra.append(f"{len(settings.few_shot)}-shot")
        label += f" [{'; '.join(extra) or 'default prompt'}]"
    return label


def member_record(teacher: Teacher) -> dict[str, Any]:
    """What a run records of one member: enough to tell members apart and rebuild the key."""
    return {"model": teacher.name, "mode": teacher.mode, "settings": teacher.settings()}


def load_ensemble(
    load_member: Callable[..., Teacher],
    options: TeacherOptions,
    name: str | list[str],
    label_names: list[str],
    dtype: torch.dtype | None,
    examples: Dataset | None,
    max_length: int,
    seed: int,
    shots: list[tuple[str, int]] | None = None,
) -> EnsembleTeacher:
    """One member per model, and per prompt model one per (template, label-words) set. The
    variants of one LLM share its loaded weights. `load_member` loads one teacher
    (`teachers.classifier.load_teacher`, passed in so this module does not import its caller)."""
    from kdistill.teachers.label_words import parse_label_words
    from kdistill.teachers.prompt import PromptTeacher

    # Templates with a {text} slot are prompts; the others (a {} slot) describe classes to an
    # embedding member, which takes the first of them.
    given = as_list(options.prompt_template)
    prompts = [t for t in given if t is None or "{text}" in t] or [None]
    described = [t for t in given if t is not None and "{text}" not in t]
    templates = prompts
    word_sets = as_list(options.label_words)
    members: list[Teacher] = []
    for model_name in split_models(name):
        single = dataclasses.replace(
            options,
            prompt_template=[t for t in (templates[0], *described[:1]) if t] or None,
            label_words=word_sets[0],
        )
        first = load_member(
            single, model_name, label_names, dtype, examples, max_length, seed, shots
        )
        members.append(first)
        if not isinstance(first, PromptTeacher):
            continue  # a classifier has no prompt to vary
        variants = [(t, w) for t in templates for w in word_sets]
        for template, words in variants[1:]:  # the first is `first`
            settings = dataclasses.replace(
                first.prompt_settings,
                template=template,
                label_words=parse_label_words(words, label_names),
            )
            members.append(
                PromptTeacher(
                    first.model,
                    first.tokenizer,
                    label_names,
                    first.name,
                    settings,
                    options.prefix_cache,
                )
            )
    rule = AGREEMENT if str(options.teacher_weights).strip() == AGREEMENT else None
    weights = [1.0] * len(members) if rule else parse_weights(options.teacher_weights, len(members))
    logger.info(
        "teacher ensemble of %d: %s%s",
        len(members),
        "; ".join(f"{member_label(m)} (w {w:g})" for m, w in zip(members, weights, strict=True)),
        " (weights from agreement, fitted on each pass)" if rule else "",
    )
    return EnsembleTeacher(members, weights, max_length, rule)


def ensemble_logits_for(
    member_logits_for: Callable[..., tuple[torch.Tensor, dict[str, Any]]],
    mode: str,
    teacher: EnsembleTeacher,
    texts: list[str],
    config: Any,
    accelerator: Accelerator,
    num_labels: int,
    precision: str,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """`teachers.cache.teacher_logits_for` for an ensemble: each member's logits through the
    cache under the member's own key (its own pass over `texts`, tokenised its own way), then
    combined. The record lists each member's. `member_logits_for` is
    `teachers.cache.teacher_logits_for`, passed in by it."""
    from datasets import Dataset

    start = time.perf_counter()
    outs, records = [], []
    for member in teacher.members:
        member_start = time.perf_counter()
        ids = member.encode(texts, config.max_length)["input_ids"]  # the member's own inputs
        encoded = Dataset.from_dict({"text": texts, "teacher_input_ids": ids})
        logits, record = member_logits_for(
            mode, member, encoded, texts, config, accelerator, num_labels, precision
        )
        outs.append(logits)
        # The member's time includes tokenising its inputs, as a single teacher's pass does:
        # eval-teacher's rows/s of a partly cached ensemble is made of these.
        took = time.perf_counter() - member_start
        records.append({"member": member_label(member), **record, "time_s": took})
    teacher.member_logits = outs
    if teacher.weight_rule == AGREEMENT:
        teacher.weights, teacher.weights_fitted_on = agreement_weights(outs), len(texts)
        logger.info(
            "ensemble weights from agreement on %d texts: %s",
            len(texts),
            ", ".join(f"{w:.3f}" for w in teacher.weights),
        )
    record = {
        "mode": mode,
        "key": "+".join(r["key"] for r in records),
        "hit": all(r["hit"] for r in records),
        "weights": teacher.weights,
        "weight_rule": teacher.weight_rule or "given",
        "members": records,
        "time_s": time.perf_counter() - start,
    }
    return combine(outs, teacher.weights), record
