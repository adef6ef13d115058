"""Load teachers and students as sequence classifiers over the data set's classes.

The correctness core: the data set's class names define the label space. A teacher's logits are
reordered onto it by name, a teacher whose head was never trained is refused, the student gets a
fresh head named after the data set's classes, and decoder-only models get a pad token (their
classification head reads the last non-pad token, so batching is wrong without one).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.data.hub import use_cache_if_offline
from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

GENERIC_LABEL = re.compile(r"^LABEL_\d+$")
LOCAL_ROOTS = {"models", "outputs", "data"}  # the folders kdistill writes
# Weight files that are pickles: loading one can run arbitrary code.
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


@dataclass(frozen=True)
class LoadPolicy:
    """What loading a model may execute. Safe by default: safetensors weights only, never the
    model's own Python code. A command sets it from its flags (`set_load_policy`); every loader
    here reads it, so a load added later is safe without remembering to pass anything."""

    allow_pickle: bool = False
    trust_remote_code: bool = False


_policy = LoadPolicy()


def set_load_policy(allow_pickle: bool = False, trust_remote_code: bool = False) -> None:
    global _policy
    _policy = LoadPolicy(allow_pickle, trust_remote_code)


def hf_kwargs(weights: bool = False) -> dict[str, Any]:
    """from_pretrained keyword arguments for the policy: trust_remote_code always explicit (None
    would ask on the terminal), use_safetensors=True for weights unless pickles are allowed."""
    kwargs: dict[str, Any] = {"trust_remote_code": _policy.trust_remote_code}
    if weights and not _policy.allow_pickle:
        kwargs["use_safetensors"] = True
    return kwargs


def check_no_pickle_only(path: Path, flag: str) -> None:
    """A local model whose only weights are pickles is refused, by name, unless --allow-pickle."""
    if _policy.allow_pickle or any(path.glob("*.safetensors*")):
        return
    pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
    if pickles:
        raise KdistillError(
            f"{flag} {path}: its only weights are pickle files ({', '.join(pickles[:2])}), which "
            "can run code when loaded; convert them to safetensors, or pass --allow-pickle if you "
            "trust their source"
        )


def quiet_transformers() -> None:
    """Loading reports and weight-loading bars are noise here: kdistill checks the loading info
    itself and says what matters in one line."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def check_model_path(name: str, flag: str) -> str:
    """A local folder, a Hub id, or a one-line error naming the flag.

    A .gguf file (or a folder holding one and no config.json) is dequantised once into a cached
    Hugging Face folder, whose path is returned: everything downstream loads a plain checkpoint.
    """
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return str(gguf_to_folder(path, flag))
        if path.is_dir() and not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return str(gguf_to_folder(ggufs[0], flag))
            if len(ggufs) > 1:
                raise KdistillError(
                    f"{flag} {name}: the folder holds {len(ggufs)} .gguf files "
                    f"({', '.join(g.name for g in ggufs[:3])}); pass the one to use"
                )
            raise KdistillError(f"{flag} {name}: the folder has no config.json; is it a model?")
        if not path.is_dir():
            raise KdistillError(f"{flag} {name}: a file; pass a model folder, a .gguf or a Hub id")
        check_no_pickle_only(path, flag)
        return str(path)
    # An installed wheel carries the checkout's examples/ as kdistill/examples/.
    packaged = Path(__file__).parent.parent / name
    if name.startswith("examples/") and packaged.is_dir():
        return check_model_path(str(packaged), flag)
    # `models/X` reads like a Hub id `org/X`, but when `models/` is a local folder (or one of our
    # own output folders) the user means a path: say it is missing instead of asking the Hub.
    first = path.parts[0] if path.parts else ""
    looks_local = (
        name.startswith((".", "/", "~"))
        or name.count("/") != 1
        or first in LOCAL_ROOTS
        or Path(first).is_dir()
    )
    if looks_local:
        hint = " (download it first: kdistill download-model)" if flag == "--teacher-model" else ""
        raise KdistillError(f"{flag} {name}: no such folder{hint}")
    if not use_cache_if_offline():
        logger.info("%s %s: the Hub is unreachable; looking in the local cache", flag, name)
    return name  # a Hub id


def gguf_cache_dir() -> Path:
    from kdistill.teachers.cache import cache_root

    return cache_root() / "gguf"


def gguf_to_folder(gguf: Path, flag: str) -> Path:
    """The dequantised Hugging Face copy of a GGUF file, made on first use.

    transformers dequantises GGUF tensors on every load (about 20 s for SmolLM2-135M here) and
    refuses to save a GGUF-loaded model; the copy is written as plain safetensors with the
    tokenizer and chat template, so later loads take a fraction of a second. Named by the file's
    resolved path, size and modification time: an edited or replaced file gets a new copy.
    """
    st = gguf.stat()
    ident = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    target = gguf_cache_dir() / f"{gguf.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
    if (target / "config.json").is_file():
        logger.info("%s: using the dequantised copy %s", gguf.name, target)
        return target
    try:
        import gguf as _gguf_reader  # noqa: F401  (transformers needs it to read the file)
    except ImportError as e:
        raise KdistillError(
            f"{flag} {gguf}: reading GGUF needs the gguf package: pip install gguf"
        ) from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.training.runs import atomic_dir

    logger.info("%s: dequantising to %s (once; later loads reuse it)", gguf.name, target)
    try:
        kwargs = {"gguf_file": gguf.name, **hf_kwargs()}
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    except Exception as e:
        raise _load_error(flag, str(gguf), e) from e
    # The weights are plain floats now; without the GGUF quantizer marks save_pretrained writes
    # them as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf.resolve()}\n")
    return target


def _load_error(flag: str, name: str, e: BaseException) -> KdistillError:
    text = str(e)
    if "trust_remote_code" in text:
        return KdistillError(
            f"{flag} {name}: the model needs its own Python code (auto_map in its config.json), "
            "which kdistill does not run unless asked; pass --trust-remote-code if you trust its "
            "source"
        )
    if "use_safetensors" in text or "cannot be loaded with `safetensors`" in text:
        return KdistillError(
            f"{flag} {name}: no safetensors weights; pass --allow-pickle to load its pickle "
            "weights (only from a source you trust)"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return KdistillError(f"{flag} {name}: cannot load it: {first}")


def load_tokenizer(name: str, flag: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name, **hf_kwargs())
    except Exception as e:
        raise _load_error(flag, name, e) from e
    if len(tok) <= len(set(tok.all_special_ids)):
        # transformers builds a tokenizer from config.json alone when the folder has no
        # tokenizer files: its vocabulary is its special tokens, every word becomes [UNK].
        hint = " or pass --student-tokenizer" if flag == "--student-model" else ""
        raise KdistillError(
            f"{flag} {name}: the tokenizer has no vocabulary ({len(tok)} tokens, all special); "
            f"its files (tokenizer.json, vocab.txt...) are missing: copy them in{hint}"
        )
    if tok.pad_token is None:
        # Decoder-only tokenizers (Qwen2, Llama) ship without one; eos is the usual stand-in.
        fallback = tok.eos_token or tok.unk_token
        if fallback is None:
            raise KdistillError(f"{flag} {name}: the tokenizer has no pad, eos or unk token")
        tok.pad_token = fallback
    return tok


def set_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """The sequence-classification heads of decoder-only models pool the last token that is not
    `config.pad_token_id`; without it they refuse batches > 1 or pool padding."""
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def map_labels(teacher_id2label: dict[int, str], label_names: list[str], flag: str) -> list[int]:
    """For each data-set class, the teacher logit column with the same name.

    Names match by `kdistill.data.labels.match_names`: exactly, else uniquely ignoring case, spaces
    and punctuation in any script ("Educational Institution" = "EducationalInstitution"); an
    ambiguous loose match is an error. The teacher may know extra classes (their columns are
    dropped); a data-set class the teacher lacks is an error that lists the differences.
    """
    from kdistill.data.labels import match_names

    teacher = {int(i): str(n) for i, n in teacher_id2label.items()}
    if all(GENERIC_LABEL.match(n) for n in teacher.values()):
        raise KdistillError(
            f"{flag}: the teacher's labels are unnamed "
            f"({', '.join(list(teacher.values())[:3])}...), "
            "so they cannot be matched to the data set's classes; set id2label in its config.json "
            "to the class names"
        )
    ids, names = list(teacher), list(teacher.values())
    found = match_names(names, label_names, flag)
    missing = [n for n, i in zip(label_names, found, strict=True) if i is None]
    if missing:
        used = {i for i in found if i is not None}
        extra = sorted(n for i, n in enumerate(names) if i not in used)
        raise KdistillError(
            f"{flag}: the teacher's labels do not cover the data set's classes; missing from the "
            f"teacher: {', '.join(missing)}; teacher-only: {', '.join(extra) or 'none'}; use a "
            "teacher trained on these classes"
        )
    return [ids[i] for i in found if i is not None]


def _head_keys(model: PreTrainedModel, keys: list[Any]) -> list[str]:
    """Keys outside the base model: the task head."""
    prefix = f"{model.base_model_prefix}."
    names = [k if isinstance(k, str) else str(k[0]) for k in keys]
    return [k for k in names if not k.startswith(prefix)]


def load_classifier(
    name: str, flag: str, **kwargs: Any
) -> tuple[PreTrainedModel, dict[str, list[Any]]]:
    from transformers import AutoModelForSequenceClassification

    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            name, output_loading_info=True, **hf_kwargs(weights=True), **kwargs
        )
    except KdistillError:
        raise
    except Exception as e:
        raise _load_error(flag, name, e) from e
    return model, info


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
    untrained = _head_keys(model, info.get("missing_keys", [])) + _head_keys(
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


def has_weights(path: str) -> bool:
    folder = Path(path)
    return not folder.is_dir() or any(
        any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.gguf")
    )


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
    from transformers import AutoConfig, AutoModelForSequenceClassification

    flag = "--student-model"
    name = check_model_path(name, flag)
    tok_source = check_model_path(tokenizer_name, "--student-tokenizer") if tokenizer_name else name
    tokenizer = load_tokenizer(tok_source, "--student-tokenizer" if tokenizer_name else flag)
    try:
        original = AutoConfig.from_pretrained(name, **hf_kwargs())
    except Exception as e:
        raise _load_error(flag, name, e) from e
    if getattr(original, "vocab_size", None) and len(tokenizer) > original.vocab_size:
        raise KdistillError(
            f"{flag} {name}: its vocabulary has {original.vocab_size} tokens but the tokenizer "
            f"{tok_source} has {len(tokenizer)}; pass the tokenizer it was built for "
            "(--student-tokenizer)"
        )
    same_labels = [original.id2label[i] for i in sorted(original.id2label)] == label_names
    set_seed(seed)
    if not has_weights(name):
        original.num_labels = len(label_names)
        original.id2label = dict(enumerate(label_names))
        original.label2id = {k: i for i, k in enumerate(label_names)}
        try:
            model = AutoModelForSequenceClassification.from_config(original, **hf_kwargs())
        except Exception as e:
            raise _load_error(flag, name, e) from e
        logger.info("student %s: no weights in the folder; starting from random weights", name)
        cut_student(model, layers, num_layers)
        set_pad_token(model, tokenizer)
        return model, tokenizer
    model, info = load_classifier(
        name,
        flag,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={k: i for i, k in enumerate(label_names)},
        ignore_mismatched_sizes=True,
    )
    fresh = _head_keys(model, info.get("missing_keys", [])) + _head_keys(
        model, info.get("mismatched_keys", [])
    )
    if not fresh and not same_labels:
        reset_head(model)
        logger.info("student %s: its head was trained for other labels; re-initialised", name)
    elif not fresh:
        logger.info("student %s: keeping its head, trained for these labels", name)
    cut_student(model, layers, num_layers)
    set_pad_token(model, tokenizer)
    return model, tokenizer


def cut_student(model: PreTrainedModel, layers: str | None, num_layers: int | None) -> None:
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


def count_parameters(model: torch.nn.Module) -> int:  # noqa: F821
    return sum(p.numel() for p in model.parameters())


def is_decoder_only(model: PreTrainedModel) -> bool:
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
