"""Students cut from a pretrained model: keep some of its transformer layers (DistilBERT-style).

A student that starts from real weights learns far faster than a random one, and the cheapest
way to get a small one is to drop layers from a model that already knows the language:
`--student-layers 0,5` keeps layers 0 and 5 of a 6-layer MiniLM, `--student-num-layers 2` picks
the same two. Embeddings, final norm and task head are kept as they are; only the list of blocks
shrinks, and the config is rewritten so that `save_pretrained` gives an ordinary checkpoint of a
smaller model that `from_pretrained` reloads with no missing or unexpected keys.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kdistill.errors import KdistillError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

LAYERS_FLAG = "--student-layers"
NUM_LAYERS_FLAG = "--student-num-layers"
# Config lists with one entry per layer (Qwen2/Qwen3/Gemma2/Gemma3 attention types, hybrid MLP
# types): sliced with the blocks, or the reloaded config fails validation or mislabels layers.
PER_LAYER_LISTS = ("layer_types", "mlp_layer_types")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def resolve_layers(layers: str | None, num_layers: int | None, total: int) -> list[int] | None:
    """The layer indices to keep, ascending; None when neither flag is given.

    `layers` is `--student-layers`: comma-separated indices into the model's `total` layers,
    negative ones counting from the end (-1 = the last), in any order.

    `num_layers` is `--student-num-layers N`: N layers evenly spaced from the first to the last,
    index i (0 <= i < N) being round(i * (total - 1) / (N - 1)) with halves rounded up. The
    first layer sits on the embeddings and the last feeds the head, so keeping both keeps the
    input and output interfaces the pretrained weights were trained for: 6 -> 2 gives [0, 5],
    12 -> 3 gives [0, 6, 11], 12 -> 4 gives [0, 4, 7, 11]. N = 1 keeps layer 0, whose input
    (the embeddings) is the one the single remaining block was trained on.
    """
    if layers is not None and num_layers is not None:
        raise KdistillError(f"{LAYERS_FLAG} and {NUM_LAYERS_FLAG}: pass one of them, not both")
    if num_layers is not None:
        if not 1 <= num_layers <= total:
            raise KdistillError(
                f"{NUM_LAYERS_FLAG} {num_layers}: must be between 1 and {total} "
                f"(the model has {total} layers)"
            )
        if num_layers == 1:
            return [0]
        # Integer form of round-half-up of i * (total - 1) / (num_layers - 1): no float ties.
        # The step is >= 1 since num_layers <= total, so the indices are distinct.
        span, steps = total - 1, num_layers - 1
        return [(2 * i * span + steps) // (2 * steps) for i in range(num_layers)]
    if layers is None:
        return None

    shown = _one_line(layers)
    allowed = f"allowed: {-total}..{total - 1} for a model with {total} layers"
    parts = [p.strip() for p in layers.split(",")]
    if not any(parts):
        raise KdistillError(
            f"{LAYERS_FLAG} {shown!r}: empty; pass comma-separated layer indices ({allowed})"
        )
    kept: list[int] = []
    for part in parts:
        try:
            index = int(part)
        except ValueError:
            raise KdistillError(
                f"{LAYERS_FLAG} {shown}: {part!r} is not an integer layer index ({allowed})"
            ) from None
        if not -total <= index < total:
            raise KdistillError(f"{LAYERS_FLAG} {shown}: layer {index} is out of range ({allowed})")
        positive = index % total
        if positive in kept:
            raise KdistillError(
                f"{LAYERS_FLAG} {shown}: layer {positive} is given twice; each layer can be "
                f"kept once ({allowed})"
            )
        kept.append(positive)
    return sorted(kept)


def _base_model(model: Any) -> Any:
    """The model without its head: `PreTrainedModel.base_model` for *For... classes, the model
    itself for a bare base model."""
    base = getattr(model, "base_model", None)
    return base if base is not None else model


def layer_stack(model: Any) -> tuple[torch.nn.ModuleList, str]:
    """The model's list of transformer blocks and the config attribute that counts them.

    BERT family (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM): `<base>.encoder.layer`,
    `num_hidden_layers`. DistilBERT: `<base>.transformer.layer`, `n_layers`. Decoder-only
    (Qwen2, Qwen3, Llama, Mistral, Gemma): `<base>.layers`, `num_hidden_layers`. The count in the
    config must equal the list's length, which guards against a look-alike attribute that is not
    the block list. Anything else is a KdistillError naming --student-layers.
    """
    import torch

    base = _base_model(model)
    config = getattr(model, "config", None)
    encoder = getattr(base, "encoder", None)
    transformer = getattr(base, "transformer", None)
    candidates: list[tuple[Any, str]] = [
        (getattr(encoder, "layer", None), "num_hidden_layers"),
        (getattr(transformer, "layer", None), "n_layers"),
        (getattr(base, "layers", None), "num_hidden_layers"),
    ]
    for stack, attr in candidates:
        if (
            isinstance(stack, torch.nn.ModuleList)
            and config is not None
            and isinstance(getattr(config, attr, None), int)
            and getattr(config, attr) == len(stack)
        ):
            if getattr(config, "is_heterogeneous", False):
                # Per-layer sub-configs (per_layer_config) would need re-keying too; refuse
                # rather than save a config that describes other layers.
                raise KdistillError(
                    f"{LAYERS_FLAG}: {type(model).__name__} has per-layer configs "
                    "(per_layer_config), which cutting layers does not support"
                )
            return stack, attr
    kind = getattr(config, "model_type", None) or type(model).__name__
    raise KdistillError(
        f"{LAYERS_FLAG}: cannot cut layers from a {kind} model ({type(model).__name__}); "
        "supported: BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT, Qwen2, Qwen3, Llama, Mistral, Gemma"
    )


def _configs(model: Any) -> list[Any]:
    """The distinct config objects of the model and its base (usually one shared object;
    updating a shared one twice would slice its lists twice)."""
    found: list[Any] = []
    for owner in (model, _base_model(model)):
        config = getattr(owner, "config", None)
        if config is not None and all(config is not c for c in found):
            found.append(config)
    return found


def keep_layers(model: Any, indices: list[int]) -> None:
    """Keep only the blocks at `indices` (ascending, non-negative, as resolve_layers returns
    them), in place.

    Updates, on every config object the model holds:
    - the layer count (`num_hidden_layers`, or `n_layers` for DistilBERT, plus DistilBERT's
      `Transformer.n_layers` attribute);
    - per-layer lists (`layer_types`, `mlp_layer_types`) to the kept layers' entries, so each
      block keeps the attention kind it was trained with;
    - `max_window_layers` (Qwen2/Qwen3: layers at or past it use sliding attention) to the number
      of kept layers below it, so rebuilding `layer_types` from it gives the same list;
    and renumbers every `layer_idx` inside a kept block (attention's index into the KV cache,
    which has one slot per remaining layer).
    """
    import torch

    stack, count_attr = layer_stack(model)
    total = len(stack)
    if (
        not indices
        or list(indices) != sorted(set(indices))
        or not all(0 <= i < total for i in indices)
    ):
        raise KdistillError(
            f"{LAYERS_FLAG}: layer indices {list(indices)} must be distinct, ascending and within "
            f"0..{total - 1}"
        )
    blocks = [stack[i] for i in indices]
    for new, (old, block) in enumerate(zip(indices, blocks, strict=True)):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int) and module.layer_idx == old:
                module.layer_idx = new

    # Put the new list where the old one was: its parent module under the same attribute name.
    parent = next(m for m in model.modules() if any(c is stack for c in m.children()))
    name = next(n for n, c in parent.named_children() if c is stack)
    setattr(parent, name, torch.nn.ModuleList(blocks))
    if isinstance(getattr(parent, "n_layers", None), int):  # DistilBERT's Transformer
        parent.n_layers = len(blocks)

    for config in _configs(model):
        for attr in PER_LAYER_LISTS:
            values = getattr(config, attr, None)
            if isinstance(values, list) and len(values) == total:
                setattr(config, attr, [values[i] for i in indices])
        window = getattr(config, "max_window_layers", None)
        if isinstance(window, int):
            config.max_window_layers = sum(i < window for i in indices)
        setattr(config, count_attr, len(blocks))

    base = _base_model(model)
    if hasattr(base, "has_sliding_layers") and hasattr(base.config, "layer_types"):
        # Qwen2/Qwen3 decide at init whether to build a sliding-window mask at all.
        base.has_sliding_layers = "sliding_attention" in base.config.layer_types
    logger.info("student: kept layers %s of %d", ", ".join(map(str, indices)), total)
