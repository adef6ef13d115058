"""Load the student: a trainable classifier over the data set's classes.

The student gets a fresh head named after the data set's classes (a head trained for other
classes is re-initialised: its rows mean other things), decoder-only models get a pad token
(their classification head reads the last non-pad token, so batching is wrong without one), and
layers can be cut from a bigger model so the student starts from real weights.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kdistill.data.model_files import (
    has_weights,
    head_keys,
    hf_kwargs,
    load_classifier,
    load_error,
    load_tokenizer,
    set_pad_token,
)
from kdistill.data.model_paths import check_model_path
from kdistill.errors import KdistillError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def load_student(
    name: str,
    label_names: list[str],
    seed: int,
    tokenizer_name: str | None = None,
    layers: str | None = None,
    num_layers: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A trainable classifier with the data set's id2label/label2id and a fresh head.

    A student checkpoint whose head already has exactly these class names keeps it (continued
    training); any other head is re-initialised, since its rows mean other classes. A local
    folder with a config.json and no weights is an architecture: the student starts from random
    weights (a from-scratch bert-tiny, say), with the tokenizer from `tokenizer_name` if its
    folder has none. `layers` ("0,5") or `num_layers` keeps only those transformer blocks of the
    loaded model (a DistilBERT-style student that starts from real weights).
    """
    from accelerate.utils import set_seed

    flag = "--student-model"
    name = check_model_path(name, flag)
    tok_source = check_model_path(tokenizer_name, "--student-tokenizer") if tokenizer_name else name
    tokenizer = load_tokenizer(tok_source, "--student-tokenizer" if tokenizer_name else flag)
    original = _student_config(name, flag, tokenizer, tok_source)
    same_labels = [original.id2label[i] for i in sorted(original.id2label)] == label_names
    set_seed(seed)
    if not has_weights(name):
        model = _from_config(original, name, flag, label_names)
    else:
        model = _from_weights(name, flag, label_names, same_labels)
    cut_student(model, layers, num_layers)
    set_pad_token(model, tokenizer)
    return model, tokenizer


def _student_config(
    name: str, flag: str, tokenizer: PreTrainedTokenizerBase, tok_source: str
) -> PretrainedConfig:
    """The student's config, refused when the tokenizer has ids its embedding lacks."""
    from transformers import AutoConfig

    try:
        original = AutoConfig.from_pretrained(name, **hf_kwargs())
    except Exception as e:
        raise load_error(flag, name, e) from e
    if getattr(original, "vocab_size", None) and len(tokenizer) > original.vocab_size:
        raise KdistillError(
            f"{flag} {name}: its vocabulary has {original.vocab_size} tokens but the tokenizer "
            f"{tok_source} has {len(tokenizer)}; pass the tokenizer it was built for "
            "(--student-tokenizer)"
        )
    return original


def _from_config(
    config: PretrainedConfig, name: str, flag: str, label_names: list[str]
) -> PreTrainedModel:
    """Random weights for an architecture-only folder, with the data set's classes."""
    from transformers import AutoModelForSequenceClassification

    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {k: i for i, k in enumerate(label_names)}
    try:
        model = AutoModelForSequenceClassification.from_config(config, **hf_kwargs())
    except Exception as e:
        raise load_error(flag, name, e) from e
    logger.info("student %s: no weights in the folder; starting from random weights", name)
    return model


def _from_weights(
    name: str, flag: str, label_names: list[str], same_labels: bool
) -> PreTrainedModel:
    """The checkpoint with a head for the data set's classes: kept when it was trained for
    exactly these class names, else fresh.

    In float32 whatever the checkpoint's dtype: transformers 5 loads a bf16 checkpoint (as
    Qwen2.5 is published) in bf16, and AdamW on bf16 weights drops every update smaller than
    half a bf16 step of the weight (at lr 5e-5 most of them). Mixed precision computes in bf16
    from these float32 master weights."""
    import torch

    model, info = load_classifier(
        name,
        flag,
        dtype=torch.float32,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={k: i for i, k in enumerate(label_names)},
        ignore_mismatched_sizes=True,
    )
    fresh = head_keys(model, info.get("missing_keys", [])) + head_keys(
        model, info.get("mismatched_keys", [])
    )
    if not fresh and not same_labels:
        reset_head(model)
        logger.info("student %s: its head was trained for other labels; re-initialised", name)
    elif not fresh:
        logger.info("student %s: keeping its head, trained for these labels", name)
    return model


def cut_student(model: PreTrainedModel, layers: str | None, num_layers: int | None) -> None:
    """Keep only the chosen transformer blocks (`--student-layers`, `--student-num-layers`)."""
    if layers is None and num_layers is None:
        return
    from kdistill.students.layers import keep_layers, layer_stack, resolve_layers

    stack, _ = layer_stack(model)
    total = len(stack)
    kept = resolve_layers(layers, num_layers, total)
    if kept is None or len(kept) == total:
        return
    before = count_parameters(model)
    keep_layers(model, kept)
    after = count_parameters(model)
    logger.info(
        "student: kept layers %s of %d (%.1fM -> %.1fM parameters)",
        ",".join(map(str, kept)),
        total,
        before / 1e6,
        after / 1e6,
    )


def reset_head(model: PreTrainedModel) -> None:
    """Re-initialise every Linear outside the base model, as a fresh head would be."""
    import torch

    std = getattr(model.config, "initializer_range", 0.02)
    for child_name, child in model.named_children():
        if child_name == model.base_model_prefix:
            continue
        for module in child.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def is_decoder_only(model: PreTrainedModel) -> bool:
    """Decoder-only models pool the last non-pad token, so their pad token matters."""
    return not getattr(model.config, "is_encoder_decoder", False) and (
        model.config.model_type
        in {
            "qwen2",
            "qwen3",
            "llama",
            "mistral",
            "gemma",
            "gemma2",
            "phi3",
            "gpt2",
            "gpt_neox",
            "smollm3",
        }
        or "CausalLM" in " ".join(getattr(model.config, "architectures", None) or [])
    )
