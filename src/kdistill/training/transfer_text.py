"""Made transfer text in a distill run: --augment (new texts from the labelled training texts)
and --generate (texts an LLM writes from the class names). They join the --unlabeled-data rows,
so each gets the KD term alone with the teacher's soft targets; no made text carries a label.

What was made is written to the run folder as transfer_text.json: counts by method, what was
dropped (duplicates, held-out copies), the teacher's class histogram over the made texts, its
agreement with the class each generated text was written for, and a sample of texts.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.data.augment import MadeTexts, augment_texts, cache_key, cached_made
from kdistill.data.digests import texts_digest
from kdistill.errors import KdistillError
from kdistill.files import atomic_write_json

if TYPE_CHECKING:
    from datasets import Dataset

    from kdistill.config import DistillConfig
    from kdistill.teachers.classifier import Teacher
    from kdistill.training.runtime import RunSetup

logger = logging.getLogger(__name__)

RECORD_FILE = "transfer_text.json"
SAMPLE = 20  # made texts shown per kind in the record


@dataclass
class TransferText:
    """What a run made: by kind ('augment', 'generate'), and how it was made."""

    made: dict[str, MadeTexts] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    from_cache: dict[str, bool] = field(default_factory=dict)

    def texts(self) -> list[str]:
        return [t for m in self.made.values() for t in m.texts]


def held_out_texts(run: RunSetup) -> list[str]:
    """Every validation and test text: no made text may copy one."""
    return [
        t
        for s in ("validation", "test")
        if s in run.data.splits
        for t in run.data.splits[s]["text"]
    ]


def add_transfer_text(
    config: DistillConfig, run: RunSetup, teacher: Teacher | None, unlabeled: Dataset | None
) -> tuple[Dataset | None, TransferText | None]:
    """The transfer set with the made texts after its own rows, and what was made (None when
    nothing is asked for)."""
    from datasets import Dataset

    if not (config.augment or config.generate) or teacher is None:
        return unlabeled, None
    held_out, made = held_out_texts(run), TransferText()
    if config.augment:
        made.made["augment"] = augment_run(config, run, held_out, made)
    if config.generate:
        made.made["generate"] = generate_run(config, run, teacher, held_out, made)
    extra = made.texts()
    for kind, m in made.made.items():
        logger.info("transfer text: %s made %d texts (%s dropped)", kind, len(m.texts), m.dropped)
    before = list(unlabeled["text"]) if unlabeled is not None else []
    return Dataset.from_dict({"text": before + extra}), made


def augment_run(
    config: DistillConfig, run: RunSetup, held_out: list[str], record: TransferText
) -> MadeTexts:
    """--augment N: N made texts per labelled training text, from the cache when it has them."""
    texts, labels = list(run.train["text"]), list(run.train["label"])
    if not texts:
        raise KdistillError(
            "--augment makes texts from the labelled training rows, and there are none; "
            "use --generate"
        )
    methods = config.augment_methods()
    parts = {
        "kind": "augment",
        "methods": methods,
        "n": config.augment,
        "seed": config.seed,
        "rate": config.augment_rate,
        "labels": texts_digest([str(label) for label in labels]),  # swap reads the classes
        "mlm": _model_identity(config.augment_model) if "mlm" in methods else None,
    }
    record.settings["augment"] = {k: v for k, v in parts.items() if k not in ("kind", "labels")}

    def make() -> MadeTexts:
        mlm = None
        if "mlm" in methods:
            from kdistill.data.augment_mlm import load_masked_lm

            mlm = load_masked_lm(config.augment_model, config.augment_rate, run.accelerator.device)
        return augment_texts(
            texts, labels, methods, config.augment, config.seed, config.augment_rate, held_out, mlm
        )

    made, record.from_cache["augment"] = cached_made(cache_key(parts, texts, held_out), make)
    return made


def generate_run(
    config: DistillConfig,
    run: RunSetup,
    teacher: Teacher,
    held_out: list[str],
    record: TransferText,
) -> MadeTexts:
    """--generate N: N texts per class written by the generator (the prompt teacher's LLM, or
    --generator-model), from the cache when it has them."""
    from kdistill.teachers.generate import Sampling, class_prompts, generator_tokenizer

    names = run.data.label_names
    source = config.generator_model or _teacher_generator_name(teacher)
    tokenizer = generator_tokenizer(source) if config.generator_model else teacher.tokenizer
    prompts = class_prompts(
        config.generate_prompt,
        names,
        _descriptions(config, names),
        tokenizer,
        config.generate_chat_template,
    )
    sampling = Sampling(
        config.generate_temperature,
        config.generate_top_p,
        config.generate_max_new_tokens,
        min(config.teacher_batch_size, 32),
        config.seed,
    )
    identity = _model_identity(source)
    parts = {"kind": "generate", "n": config.generate, "prompts": prompts, "generator": identity}
    parts.update(sampling.__dict__)  # the batch size too: how many rows a pass holds moves draws
    record.settings["generate"] = {"generator": source, "prompts": prompts, **sampling.__dict__}

    def make() -> MadeTexts:
        from kdistill.teachers.generate import generate_texts, load_generator

        if config.generator_model:
            model, tok = load_generator(config.generator_model)
            model.to(run.accelerator.device)
        else:
            model, tok = teacher.model, teacher.tokenizer
        return generate_texts(model, tok, prompts, config.generate, sampling, held_out)

    made, record.from_cache["generate"] = cached_made(cache_key(parts, [], held_out), make)
    return made


def _descriptions(config: DistillConfig, names: list[str]) -> dict[str, list[str]]:
    """Each class's descriptions: --label-descriptions' sentences, else its name split into
    words, lower-cased to read as a noun in a sentence ('a mean of transportation')."""
    from kdistill.teachers.embedding import read_descriptions

    given = read_descriptions(config.label_descriptions, None, names)
    if config.label_descriptions:
        return given
    return {name: [d.lower() for d in ds] for name, ds in given.items()}


def _teacher_generator_name(teacher: Teacher) -> str:
    """The prompt teacher's LLM writes the texts when no --generator-model is named."""
    if teacher.mode != "prompt":
        raise KdistillError(
            f"--generate needs a causal LM to write texts, and the teacher is a {teacher.mode} "
            "teacher; pass --generator-model (a causal LM folder, Hub id or .gguf)"
        )
    return teacher.name


def _model_identity(name: str | None) -> Any:
    from kdistill.data.model_identity import model_identity

    return model_identity(name) if name else None


# --------------------------------------------------------------------------- the record


def record_transfer_text(
    made: TransferText | None,
    teacher_targets: Any,
    train_tok: Dataset,
    label_names: list[str],
    run_dir: Path | None,
    seed: int = 0,
) -> dict[str, Any] | None:
    """transfer_text.json in `run_dir` (and the log): counts, drops, the teacher's class
    histogram over the made texts, for generated texts its agreement with the class each was
    written for, and a sample. The teacher's answers are read from its cached logits of the
    training rows, `teacher_targets.logits` (rows, classes), in `train_tok`'s row order; with
    --teacher-cache off there are none, and only counts and the sample are recorded."""
    if made is None:
        return None
    teacher_logits = getattr(teacher_targets, "logits", None)
    row_of = {t: i for i, t in enumerate(train_tok["text"])}
    record: dict[str, Any] = {"settings": made.settings, "from_cache": made.from_cache}
    for kind, m in made.made.items():
        entry = record[kind] = summarise(kind, m, teacher_logits, row_of, label_names, seed)
        if "agreement" in entry:
            logger.info(
                "--generate: the teacher agrees with the class written for on %.1f%% of %d texts",
                100 * entry["agreement"],
                entry["labelled_by_teacher"],
            )
    if run_dir is not None:
        atomic_write_json(run_dir / RECORD_FILE, record)
    return record


def summarise(
    kind: str,
    m: MadeTexts,
    teacher_logits: Any,
    row_of: dict[str, int],
    label_names: list[str],
    seed: int,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "count": len(m.texts),
        "by_method": dict(Counter(m.methods)),
        "dropped": m.dropped,
    }
    rows = [(row_of[t], o) for t, o in zip(m.texts, m.origins, strict=True) if t in row_of]
    answers: list[int | None] = [None] * len(m.texts)
    if teacher_logits is not None and rows:
        argmax = teacher_logits.argmax(-1).tolist()
        lookup = {t: argmax[row_of[t]] for t in m.texts if t in row_of}
        answers = [lookup.get(t) for t in m.texts]
        seen = [a for a in answers if a is not None]
        entry["labelled_by_teacher"] = len(seen)
        entry["teacher_histogram"] = {label_names[c]: n for c, n in sorted(Counter(seen).items())}
        if kind == "generate":
            agree = [a == o for a, o in zip(answers, m.origins, strict=True) if a is not None]
            entry["agreement"] = sum(agree) / len(agree)
            entry["written_for_histogram"] = {
                label_names[c]: n for c, n in sorted(Counter(m.origins).items())
            }
    picks = sorted(random.Random(seed).sample(range(len(m.texts)), min(SAMPLE, len(m.texts))))
    entry["sample"] = [
        {
            "text": m.texts[i],
            "method": m.methods[i],
            **({"written_for": label_names[m.origins[i]]} if kind == "generate" else {}),
            **({"teacher": label_names[answers[i]]} if answers[i] is not None else {}),
        }
        for i in picks
    ]
    return entry
