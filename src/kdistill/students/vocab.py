"""Vocabulary trimming: cut a student's vocabulary to the tokens its data uses (`--trim-vocab`).

Most of a small student is its embedding table: a bert-tiny shape holds 30,522 x 128 = 3.9M of
its 4.4M parameters, and a text classifier for one data set uses a fraction of those rows. As
TextPruner does, the student keeps the tokens that occur in its training, transfer and
validation text, the special tokens, and optionally `--keep-top-tokens N` of the tokenizer's
own most frequent ones; embedding rows and tokenizer are remapped together (new id i is old id
`kept_ids[i]`, ascending), so the saved student is an ordinary Hugging Face folder whose
tokenizer produces the new ids.

Why this leaves training unchanged for WordPiece: it splits each word greedily, longest
vocabulary prefix first. Every piece chosen for a text of the data is kept, and no longer piece
existed in the full vocabulary, so the cut vocabulary splits that text into the same tokens.
Unseen text may split differently; a word it cannot split maps to the unknown token, as it
would have with the full vocabulary. BPE vocabularies are not trimmed: their merges build tokens
from intermediate tokens that the data may never show, so cutting those changes the splits.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

TRIM_FLAG = "--trim-vocab"
TOP_FLAG = "--keep-top-tokens"
# BERT's vocabulary reserves [unused0]..[unused993] near the top: placeholders no text produces,
# which --keep-top-tokens should not spend its budget on.
PLACEHOLDER = re.compile(r"^[\[<]unused\d+[\]>]$")


@dataclass(frozen=True)
class VocabTrim:
    """A cut vocabulary: `kept_ids[new_id] = old_id` (ascending), and what the cut keeps.

    `heldout_coverage` is the share of validation token occurrences (special tokens aside) that
    a vocabulary built from the training and transfer text alone covers: an estimate of how
    often text the student has not seen hits a token the cut removed. The saved vocabulary also
    holds the validation tokens, so validation itself is covered in full.
    """

    kept_ids: tuple[int, ...]
    source_size: int
    from_data: int
    from_top: int
    heldout_coverage: float | None

    def record(self) -> dict[str, Any]:
        """config.json's and the model card's account of the cut (without the id list)."""
        out = asdict(self)
        out.pop("kept_ids")
        return {"kept": len(self.kept_ids), **out}


def trim_supported(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """None when the tokenizer can be trimmed, else why not (a fast WordPiece tokenizer can)."""
    if not getattr(tokenizer, "is_fast", False):
        return "it is not a fast (tokenizers) tokenizer"
    kind = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["type"]
    if kind != "WordPiece":
        return f"its model is {kind}; only WordPiece vocabularies (BERT family) are trimmed"
    return None


def should_trim(mode: str, random_init: bool, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether `--trim-vocab mode` trims this student. `on` trims any student whose tokenizer
    allows it (else a one-line error). `auto` trims a random-init student, whose unused rows are
    noise; a pretrained student, layer-cut or whole, keeps its vocabulary: the held-out accuracy
    of a trimmed layer-cut student against its full-vocabulary twin has not been measured yet
    (docs/lean-students.md), and `on` opts in. A tokenizer that cannot be trimmed is said in
    the log, and left whole."""
    if mode == "off" or (mode == "auto" and not random_init):
        return False
    why = trim_supported(tokenizer)
    if why is not None and mode == "on":
        raise KdistillError(f"{TRIM_FLAG} on: cannot trim the student's tokenizer: {why}")
    if why is not None:
        logger.info("%s auto: the student's vocabulary is kept whole: %s", TRIM_FLAG, why)
        return False
    return True


def token_counts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> dict[int, int]:
    """How often each token id occurs in `texts`, each cut to `max_length` tokens as training
    cuts it (tokens past it are never seen)."""
    counts: dict[int, int] = {}
    for start in range(0, len(texts), 1000):
        chunk = list(texts[start : start + 1000])
        for ids in tokenizer(chunk, truncation=True, max_length=max_length)["input_ids"]:
            for i in ids:
                counts[i] = counts.get(i, 0) + 1
    return counts


def plan_trim(
    tokenizer: PreTrainedTokenizerBase,
    seen_texts: Sequence[str],
    val_texts: Sequence[str],
    max_length: int,
    keep_top: int = 0,
) -> VocabTrim:
    """The cut vocabulary for a student trained on `seen_texts` (training and transfer rows)
    and validated on `val_texts`: the tokens of both, every special and added token, and the
    `keep_top` lowest-id regular tokens (BERT-style vocabularies list words by corpus frequency
    after the single characters; placeholders such as [unused0] are skipped)."""
    if keep_top < 0:
        raise KdistillError(f"{TOP_FLAG} must be >= 0 (got {keep_top})")
    seen = set(token_counts(tokenizer, seen_texts, max_length))
    val = token_counts(tokenizer, val_texts, max_length)
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    from_data = seen | set(val) | special
    val_regular = {i: n for i, n in val.items() if i not in special}
    total = sum(val_regular.values())
    coverage = sum(n for i, n in val_regular.items() if i in seen) / total if total else None
    top: list[int] = []
    if keep_top:
        for token, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
            if len(top) == keep_top:
                break
            if i not in from_data and not PLACEHOLDER.match(token):
                top.append(i)
    kept = tuple(sorted(from_data | set(top)))
    return VocabTrim(kept, len(tokenizer), len(from_data), len(top), coverage)


# --------------------------------------------------------------------------- the surgery


def _remap_processor(node: Any, old_to_new: dict[int, int]) -> Any:
    """A post-processor's JSON with its special-token ids remapped: TemplateProcessing's
    `special_tokens[*].ids`, BertProcessing/RobertaProcessing's `sep`/`cls` [token, id] pairs,
    Sequence's nested processors."""
    if isinstance(node, list):
        return [_remap_processor(x, old_to_new) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "ids" and isinstance(value, list):
            out[key] = [old_to_new[i] for i in value]
        elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:
            out[key] = [value[0], old_to_new[value[1]]]
        else:
            out[key] = _remap_processor(value, old_to_new)
    return out


def trimmed_tokenizer_json(spec: dict[str, Any], kept_ids: Sequence[int]) -> dict[str, Any]:
    """A WordPiece tokenizer.json (as a dict) cut to `kept_ids`, ids renumbered in their order:
    the vocabulary, the added tokens, the post-processor's special ids and the padding id."""
    old_to_new = {old: new for new, old in enumerate(kept_ids)}
    by_id = {i: tok for tok, i in spec["model"]["vocab"].items()}
    out = dict(spec)
    out["model"] = {**spec["model"], "vocab": {by_id[old]: new for new, old in enumerate(kept_ids)}}
    out["added_tokens"] = [{**t, "id": old_to_new[t["id"]]} for t in spec.get("added_tokens") or []]
    out["post_processor"] = _remap_processor(spec.get("post_processor"), old_to_new)
    if out.get("padding"):
        out["padding"] = {**out["padding"], "pad_id": old_to_new[out["padding"]["pad_id"]]}
    return out


def trim_tokenizer(
    tokenizer: PreTrainedTokenizerBase, kept_ids: Sequence[int]
) -> PreTrainedTokenizerBase:
    """The same tokenizer class and settings over the cut vocabulary: saved, its tokenizer.json
    rewritten, loaded back, so that `save_pretrained` writes an ordinary folder."""
    from transformers import AutoTokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        folder = Path(tmp)
        for stale in ("vocab.txt", "special_tokens_map.json", "added_tokens.json"):
            (folder / stale).unlink(missing_ok=True)  # the full vocabulary's side files
        (folder / "tokenizer.json").write_text(json.dumps(trimmed_tokenizer_json(spec, kept_ids)))
        _remap_tokenizer_config(folder / "tokenizer_config.json", kept_ids)
        trimmed = AutoTokenizer.from_pretrained(tmp)
        trimmed.name_or_path = tokenizer.name_or_path
    if len(trimmed) != len(kept_ids):
        raise RuntimeError(f"trimmed tokenizer has {len(trimmed)} tokens, not {len(kept_ids)}")
    return trimmed


def _remap_tokenizer_config(path: Path, kept_ids: Sequence[int]) -> None:
    """tokenizer_config.json's `added_tokens_decoder` is keyed by id (older transformers)."""
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        old_to_new = {old: new for new, old in enumerate(kept_ids)}
        config["added_tokens_decoder"] = {str(old_to_new[int(k)]): v for k, v in decoder.items()}
        path.write_text(json.dumps(config))


def trim_embeddings(model: PreTrainedModel, kept_ids: Sequence[int]) -> None:
    """Keep only the input-embedding rows `kept_ids`, in order, in place; the config's
    vocab_size and special-token ids follow. Pretrained rows keep their values."""
    import torch

    old = model.get_input_embeddings()
    if model.get_output_embeddings() is not None:
        raise KdistillError(
            f"{TRIM_FLAG}: {type(model).__name__} has an output embedding (a language-model "
            f"head) that trimming does not cut; pass {TRIM_FLAG} off"
        )
    old_to_new = {o: n for n, o in enumerate(kept_ids)}
    index = torch.tensor(list(kept_ids), dtype=torch.long, device=old.weight.device)
    padding_idx = old_to_new.get(old.padding_idx) if old.padding_idx is not None else None
    new = torch.nn.Embedding(
        len(kept_ids),
        old.embedding_dim,
        padding_idx=padding_idx,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(old.weight.index_select(0, index))
    new.weight.requires_grad_(old.weight.requires_grad)
    model.set_input_embeddings(new)
    config = model.config
    config.vocab_size = len(kept_ids)
    for attr, value in list(vars(config).items()):
        if attr.endswith("_token_id") and isinstance(value, int) and value in old_to_new:
            setattr(config, attr, old_to_new[value])


def trim_student(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    seen_texts: Sequence[str],
    val_texts: Sequence[str],
    max_length: int,
    keep_top: int = 0,
) -> tuple[PreTrainedTokenizerBase, VocabTrim]:
    """Cut the student (in place) and its tokenizer to the data's vocabulary: (the new
    tokenizer, the cut). The record is also written into the model's config
    (`kdistill_vocabulary`), so the shipped folder says what it was cut to."""
    why = trim_supported(tokenizer)
    if why is not None:
        raise KdistillError(f"{TRIM_FLAG}: cannot trim the student's tokenizer: {why}")
    trim = plan_trim(tokenizer, seen_texts, val_texts, max_length, keep_top)
    trimmed = trim_tokenizer(tokenizer, trim.kept_ids)
    before = sum(p.numel() for p in model.parameters())
    trim_embeddings(model, trim.kept_ids)
    after = sum(p.numel() for p in model.parameters())
    model.config.kdistill_vocabulary = trim.record()
    coverage = trim.heldout_coverage
    logger.info(
        "%s: vocabulary %d -> %d tokens (%d from the data, %d top); %.1fM -> %.1fM parameters; "
        "a vocabulary from the training text alone covers %s of validation tokens",
        TRIM_FLAG,
        trim.source_size,
        len(trim.kept_ids),
        trim.from_data,
        trim.from_top,
        before / 1e6,
        after / 1e6,
        f"{100 * coverage:.2f}%" if coverage is not None else "n/a",
    )
    return trimmed, trim


def source_ids(ids: Iterable[list[int]], kept_ids: Sequence[int] | None) -> list[list[int]]:
    """Token ids of a trimmed student mapped back to the full vocabulary's (unchanged without a
    trim): a teacher that shares the tokenizer keeps the full one, and the hidden-state and
    relation losses compare the two token by token."""
    if kept_ids is None:
        return list(ids)
    return [[kept_ids[i] for i in row] for row in ids]


def trim_for_run(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: Any,
    seen_texts: Sequence[str],
    val_texts: Sequence[str],
) -> tuple[PreTrainedTokenizerBase, VocabTrim | None]:
    """distill's and the lockstep sweep's trim: (the tokenizer to train with, the cut or None).
    `config` is the run's DistillConfig (`trim_vocab`, `keep_top_tokens`, the student flags)."""
    from kdistill.data.model_files import has_weights
    from kdistill.data.model_paths import check_model_path

    random_init = not has_weights(check_model_path(config.student_model, "--student-model"))
    if not should_trim(config.trim_vocab, random_init, tokenizer):
        if config.keep_top_tokens:
            logger.warning("%s is ignored: the vocabulary is not trimmed", TOP_FLAG)
        return tokenizer, None
    return trim_student(
        model, tokenizer, seen_texts, val_texts, config.max_length, config.keep_top_tokens
    )
