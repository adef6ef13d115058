"""A sentence encoder as a zero-shot teacher: each text against embeddings of each class.

    e(x)  = normalise(pool(encoder(x)))                            # (d,)
    c_k   = normalise(mean_j normalise(pool(encoder(d_kj))))       # class k's descriptions
    z_k(x) = s * cos(e(x), c_k)                                    # (C,) logits

The descriptions d_kj are the class names (split into words, as the prompt teacher's label
words), sentences from --label-descriptions, or either put into --prompt-template's `{}` slot
("A Wikipedia article about a {}."). Measured on the DBpedia sample with the packaged
all-MiniLM-L6-v2 (bench/no_labels.py): a teacher that costs seconds, as good as a 14-shot prompt
to a 135M LLM.

The scale s turns cosines (all within a few hundredths of each other) into logits. It needs no
labels: by default it is the one contrastive sentence encoders are trained at (1 / 0.05, the
MultipleNegativesRankingLoss scale of sentence-transformers); `--embedding-scale auto` instead
fits it on the texts being scored (`teachers.label_free`), a number fixes it.

Pooling and normalisation are the encoder's own: the sentence-transformers library reads a
sentence-transformers folder's modules.json, and gives any other encoder (a plain BERT folder)
mean pooling, which is how all-MiniLM-L6-v2 was trained.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# sentence-transformers' MultipleNegativesRankingLoss default: cosines are multiplied by 20
# (a softmax temperature of 0.05) when all-MiniLM-L6-v2 and its kin are trained.
DEFAULT_SCALE = 20.0
DESCRIPTION_BATCH = 64


def read_descriptions(
    spec: str | None, template: str | None, label_names: list[str]
) -> dict[str, list[str]]:
    """Class name -> the sentences that describe it, in class order.

    `spec` is a JSON file mapping class names to a sentence or a list of them; classes it leaves
    out are described by their name split into words. `template` (a `{}` or `{label}` slot)
    wraps every description. Unknown classes and empty descriptions are one-line errors."""
    from kdistill.teachers.label_words import (
        check_known_classes,
        default_label_word,
        read_class_map,
    )

    given: dict[str, Any] = {}
    if spec:
        what = 'a sentence or a list of sentences, e.g. {"Company": ["a business", "a firm"]}'
        given = read_class_map(spec, "--label-descriptions", what)
        check_known_classes(given, label_names, f"--label-descriptions {spec}")
    out: dict[str, list[str]] = {}
    for name in label_names:
        value = given.get(name, default_label_word(name))
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise KdistillError(
                f"--label-descriptions {spec}: {name!r} must be a sentence or a list of sentences"
            )
        items = [" ".join(s.split()) for s in items if s.strip()]
        if not items:
            raise KdistillError(
                f"--label-descriptions {spec}: class {name!r} has no description; give it one"
            )
        out[name] = [fill_template(template, s) for s in items]
    return out


def fill_template(template: str | None, description: str) -> str:
    """'A Wikipedia article about a {}.' + 'Company' -> 'A Wikipedia article about a Company.'"""
    if template is None:
        return description
    return template.replace("{label}", description).replace("{}", description)


def check_embedding_template(template: str | None) -> None:
    """An embedding teacher's --prompt-template wraps each class description: it needs a slot."""
    if template is not None and "{}" not in template and "{label}" not in template:
        raise KdistillError(
            f"--prompt-template {template!r}: an embedding teacher puts each class description "
            "into the template's {} (or {label}) slot, e.g. 'A Wikipedia article about a {}.'"
        )


class EmbeddingTeacher:
    """A frozen sentence encoder; `logits(batch)` is (batch, C) scaled cosine similarities."""

    mode = "embedding"

    def __init__(
        self,
        encoder: Any,
        label_names: list[str],
        descriptions: dict[str, list[str]],
        name: str,
        scale: float = DEFAULT_SCALE,
    ) -> None:
        self.model = encoder  # a SentenceTransformer (an nn.Sequential: transformer, pooling..)
        self.tokenizer: PreTrainedTokenizerBase = encoder.tokenizer
        self.name = name
        self.label_names = label_names
        self.descriptions = descriptions
        self.scale = float(scale)
        self.classes = self._class_embeddings()  # (C, d), unit rows

    def _class_embeddings(self) -> torch.Tensor:
        """Each class's descriptions embedded, averaged on the unit sphere, renormalised."""
        flat = [d for n in self.label_names for d in self.descriptions[n]]
        with torch.no_grad():
            emb = self.model.encode(
                flat,
                batch_size=DESCRIPTION_BATCH,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            ).float()
        rows, start = [], 0
        for n in self.label_names:
            k = len(self.descriptions[n])
            rows.append(emb[start : start + k].mean(0))
            start += k
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1).cpu()

    def encode(self, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
        enc = self.tokenizer(texts, truncation=True, max_length=max_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def settings(self) -> dict[str, Any]:
        """What, besides weights and tokenizer, decides the logits (part of the cache key)."""
        return {
            "descriptions": self.descriptions,
            "scale": self.scale,
            "modules": [type(m).__name__ for m in self.model],
            "dtype": str(next(self.model.parameters()).dtype),
        }

    def to(self, device: torch.device | str) -> EmbeddingTeacher:
        self.model.to(device)
        self.classes = self.classes.to(device)
        return self

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, d) unit-length sentence embeddings of the `teacher_*` inputs."""
        features = {
            "input_ids": batch["teacher_input_ids"],
            "attention_mask": batch["teacher_attention_mask"],
        }
        out = self.model(features)["sentence_embedding"].float()
        return torch.nn.functional.normalize(out, dim=-1)

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, C) s * cos(text, class); no_grad, not inference_mode (see ClassifierTeacher)."""
        return self.scale * self.embed(batch) @ self.classes.to(self.model.device).T


def is_sentence_encoder(path: str, architectures: list[str]) -> bool:
    """A sentence-transformers folder (modules.json), or a model with no classification or
    language-model head (a bare encoder such as BertModel): the embedding teacher's."""
    if (Path(path) / "modules.json").is_file():
        return True
    heads = ("ForSequenceClassification", "ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    return bool(architectures) and not any(a.endswith(heads) for a in architectures)


def load_embedding_teacher(
    path: str,
    label_names: list[str],
    descriptions: dict[str, list[str]],
    dtype: torch.dtype | None,
    scale: float = DEFAULT_SCALE,
) -> EmbeddingTeacher:
    """A frozen sentence encoder from a local folder, via the sentence-transformers library."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise KdistillError(
            "--teacher-mode embedding needs the sentence-transformers package: "
            "pip install sentence-transformers"
        ) from e
    from kdistill.data.model_files import quiet_transformers

    quiet_transformers()
    # Its own loggers say 'creating a new one with mean pooling' for a plain encoder folder,
    # which is exactly what is meant here.
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    extra = {"model_kwargs": {"dtype": dtype}} if dtype is not None else {}
    try:
        encoder = SentenceTransformer(path, device="cpu", local_files_only=True, **extra)
    except Exception as e:
        raise KdistillError(
            f"--teacher-model {path}: cannot load it as a sentence encoder "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    encoder.eval()
    encoder.requires_grad_(False)
    teacher = EmbeddingTeacher(encoder, label_names, descriptions, path, scale)
    logger.info(
        "teacher %s: embedding mode (%d descriptions, e.g. %r; scale %g)",
        path,
        sum(len(v) for v in descriptions.values()),
        descriptions[label_names[0]][0],
        scale,
    )
    return teacher
