"""A teacher turns texts into class logits over the data set's classes, frozen.

The correctness core: the data set's class names define the label space. A classifier
teacher's logits are reordered onto it by name (`kdistill.data.labels.map_labels`), and a teacher
whose head was never trained is refused: its soft targets would be noise.

Two kinds: a sequence classifier whose logit columns are reordered onto the data set's classes
(`ClassifierTeacher`), and a causal LM that scores each class's label words after a prompt
(`kdistill.teachers.prompt.PromptTeacher`). Both `encode(texts, max_length)` into the inputs they
read back in `logits(batch)`, so the data pipeline and the logit cache treat them alike.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import torch

from kdistill.data.labels import map_labels
from kdistill.data.model_files import (
    head_keys,
    hf_kwargs,
    load_classifier,
    load_tokenizer,
    set_pad_token,
)
from kdistill.data.model_paths import check_model_path
from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from kdistill.config import TeacherOptions

logger = logging.getLogger(__name__)


class Teacher(Protocol):
    mode: str
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    def encode(self, texts: list[str], max_length: int) -> dict[str, list[list[int]]]: ...
    def settings(self) -> dict[str, Any]: ...
    def to(self, device: torch.device) -> Teacher: ...
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...


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
        # The temperature finetune-teacher folded into the head, multiplied back for distilling
        # (training.calibration.logits_as_trained); None when the head is as saved.
        self.head_temperature_undone: float | None = None

    def encode(self, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
        enc = self.tokenizer(texts, truncation=True, max_length=max_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def settings(self) -> dict[str, Any]:
        """What, besides weights and tokenizer, decides the logits (part of the cache key)."""
        undone = self.head_temperature_undone
        return {
            "label_columns": self.columns.tolist(),
            "dtype": str(self.model.dtype),
            **({"head_temperature_undone": undone} if undone is not None else {}),
        }

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


def resolve_mode(requested: str, path: str) -> str:
    """auto: a model whose config names a sequence-classification head is a classifier; a causal
    LM (the seed's DeepSeek download, SmolLM2) is asked by prompt; a sentence-transformers
    folder or an encoder with no head (BertModel: the packaged MiniLM) is an embedding teacher;
    anything else goes the classifier way, where the untrained-head guard explains what is
    wrong."""
    if requested != "auto":
        return requested
    from transformers import AutoConfig

    from kdistill.teachers.embedding import is_sentence_encoder

    try:
        architectures = AutoConfig.from_pretrained(path, **hf_kwargs()).architectures or []
    except Exception:
        return "classifier"  # the classifier loader reports the load error in one line
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "classifier"
    if any(a.endswith("ForCausalLM") for a in architectures):
        return "prompt"
    if is_sentence_encoder(path, architectures):
        return "embedding"
    return "classifier"


def load_teacher_classifier(
    name: str, label_names: list[str], allow_untrained: bool, dtype: Any = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[int]]:
    """Load a frozen teacher; returns (model, tokenizer, logit columns in data-set class order).

    `dtype` (torch.bfloat16, say) loads the weights in that precision: the teacher only runs
    inference, so half-precision weights halve its memory and time where the device supports it.
    """
    flag = "--teacher-model"
    name = check_model_path(name, flag)
    tokenizer = load_tokenizer(name, flag)
    extra = {"dtype": dtype} if dtype is not None else {}
    model, info = load_classifier(name, flag, **extra)
    untrained = head_keys(model, info.get("missing_keys", [])) + head_keys(
        model, info.get("mismatched_keys", [])
    )
    n = len(label_names)
    if untrained:
        if not allow_untrained:
            raise KdistillError(
                f"{flag} {name}: the teacher has no trained classification head for these {n} "
                f"labels (newly initialised: {', '.join(sorted(untrained)[:2])}), so its soft "
                "targets would be noise; fine-tune it on this data set first, or pass "
                "--allow-untrained-teacher to use it anyway"
            )
        logger.warning("%s: the teacher's head is untrained; its logits are noise", name)
        model, _ = load_classifier(
            name,
            flag,
            num_labels=n,
            id2label=dict(enumerate(label_names)),
            label2id={k: i for i, k in enumerate(label_names)},
            ignore_mismatched_sizes=True,
            **extra,
        )
        columns = list(range(n))
    else:
        columns = map_labels(model.config.id2label, label_names, flag)
    set_pad_token(model, tokenizer)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer, columns


def load_teacher(
    options: TeacherOptions,
    name: str,
    label_names: list[str],
    dtype: torch.dtype | None,
    examples: Dataset | None,
    max_length: int,
    seed: int,
    shots: list[tuple[str, int]] | None = None,
) -> Teacher:
    """The teacher `options` describe, frozen, in eval mode. `examples` (the training split,
    `text` and `label` columns) is where few-shot examples come from; it is read only then.
    `shots` (a run's recorded examples) are shown instead of picking new ones."""
    from kdistill.teachers.ensemble import is_ensemble, load_ensemble

    if is_ensemble(options, name):  # several models, templates or label-word sets
        args = (options, name, label_names, dtype, examples, max_length, seed, shots)
        return load_ensemble(load_teacher, *args)
    path = check_model_path(name, "--teacher-model")
    mode = resolve_mode(options.teacher_mode, path)
    if mode == "classifier":
        _warn_prompt_flags(options)
        model, tokenizer, columns = load_teacher_classifier(
            path, label_names, options.allow_untrained_teacher, dtype
        )
        return ClassifierTeacher(model, tokenizer, columns, path)
    if mode == "embedding":
        return _load_embedding(options, path, label_names, dtype)
    return _load_prompt(options, name, path, label_names, dtype, examples, max_length, seed, shots)


def _load_embedding(
    options: TeacherOptions, path: str, label_names: list[str], dtype: torch.dtype | None
) -> Teacher:
    """A sentence encoder scoring each text against its class descriptions."""
    from kdistill.teachers.embedding import (
        DEFAULT_SCALE,
        check_embedding_template,
        load_embedding_teacher,
        read_descriptions,
    )
    from kdistill.teachers.ensemble import as_list

    # The templates with a description slot are this teacher's; those with a {text} slot
    # belong to the prompt teachers of a mixed ensemble.
    templates = [t for t in as_list(options.prompt_template) if t and "{text}" not in t]
    template = templates[0] if templates else None
    check_embedding_template(template)
    for flag, value in (("--label-words", options.label_words), ("--few-shot", options.few_shot)):
        if value:
            logger.warning("%s applies to prompt teachers only; this teacher is an encoder", flag)
    descriptions = read_descriptions(options.label_descriptions, template, label_names)
    auto = str(options.embedding_scale) == "auto"
    scale = DEFAULT_SCALE if auto else float(options.embedding_scale)
    teacher = load_embedding_teacher(path, label_names, descriptions, dtype, scale)
    teacher.fit_scale = auto  # refitted on the texts of each cache pass (teachers.label_free)
    return teacher


def _warn_prompt_flags(options: TeacherOptions) -> None:
    """Prompt flags given to a classifier teacher do nothing; say so rather than ignore them."""
    prompt_flags = [
        f
        for f, v in (
            ("--prompt-template", options.prompt_template),
            ("--label-words", options.label_words),
            ("--few-shot", options.few_shot),
        )
        if v
    ]
    if prompt_flags:
        logger.warning(
            "%s apply to prompt teachers only; this teacher is a classifier",
            ", ".join(prompt_flags),
        )


def _load_prompt(
    options: TeacherOptions,
    name: str,
    path: str,
    label_names: list[str],
    dtype: torch.dtype | None,
    examples: Dataset | None,
    max_length: int,
    seed: int,
    shots: list[tuple[str, int]] | None,
) -> Teacher:
    """A prompt teacher with its label words and few-shot examples (picked from `examples`
    unless a run recorded `shots`)."""
    from kdistill.teachers.ensemble import as_list
    from kdistill.teachers.few_shot import pick_few_shot
    from kdistill.teachers.label_words import check_template, parse_label_words
    from kdistill.teachers.prompt import PromptSettings, load_prompt_teacher

    # The first template with a {text} slot; one with a {} slot describes classes to the
    # embedding member of a mixed ensemble.
    prompts = [t for t in as_list(options.prompt_template) if t and "{text}" in t]
    template = prompts[0] if prompts else None
    check_template(template)
    words = parse_label_words(options.label_words, label_names)
    if shots is None and options.few_shot:
        if examples is None:
            raise KdistillError("--few-shot needs training examples; this split has none")
        shots = pick_few_shot(
            list(examples["text"]), list(examples["label"]), label_names, options.few_shot, seed
        )
    shots = shots or []
    settings = PromptSettings(
        template=template,
        label_words=words,
        few_shot=shots,
        calibrate=options.calibrate,
        chat=options.chat_template,
        max_text_tokens=max_length,
    )
    teacher = load_prompt_teacher(path, label_names, settings, dtype, options.prefix_cache)
    logger.info(
        "teacher %s: prompt mode (label words: %s; %d-shot; calibration %s)",
        name,
        ", ".join(words[n] for n in label_names[:4]) + ("..." if len(label_names) > 4 else ""),
        len(shots),
        "on" if options.calibrate else "off",
    )
    return teacher
