"""Model files and what loading them may do: the load policy (safetensors only, no remote code,
unless a flag says otherwise), tokenizers that can pad, classifiers with their loading report,
and one-line load errors that name the flag.

Teachers and students load through these same helpers, so a safety rule or an error message
added here holds for every model kdistill reads.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Weight files that are pickles: loading one can run arbitrary code.
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def cache_root() -> Path:
    """Where kdistill keeps what it can recompute: $KDISTILL_CACHE, else ~/.cache/kdistill."""
    return Path(
        os.environ.get("KDISTILL_CACHE")
        or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kdistill"
        )
    )


@dataclass(frozen=True)
class LoadPolicy:
    """What loading a model may execute. Safe by default: safetensors weights only, never the
    model's own Python code. A command sets it from its flags (`set_load_policy`); every loader
    here reads it, so a load added later is safe without remembering to pass anything."""

    allow_pickle: bool = False
    trust_remote_code: bool = False


_policy = LoadPolicy()


def set_load_policy(allow_pickle: bool = False, trust_remote_code: bool = False) -> None:
    """Set once by a command from its flags; module state so that no loader can forget it."""
    global _policy
    _policy = LoadPolicy(allow_pickle, trust_remote_code)


# What every model load pins rather than leaving to the transformers release. From 5.25,
# from_pretrained turns hub kernels on by default (`use_kernels=None` means yes when the
# `kernels` package is installed, and transformers 5.25 requires it): the model is kernelized
# at load, layers marked for it (Qwen2's RMSNorm, say) may run code fetched from the Hub on a
# GPU, and every train()/eval() re-kernelizes it for the new mode, which fails on a meta-device
# shell. kdistill's numbers should come from the model's own code on every release: off, as
# 5.24 and earlier had it.
MODEL_LOAD_KWARGS: dict[str, Any] = {"use_kernels": False}


def hf_kwargs(weights: bool = False) -> dict[str, Any]:
    """from_pretrained keyword arguments for the policy: trust_remote_code always explicit (None
    would ask on the terminal); for a model's weights, use_safetensors=True unless pickles are
    allowed, and MODEL_LOAD_KWARGS."""
    kwargs: dict[str, Any] = {"trust_remote_code": _policy.trust_remote_code}
    if weights:
        kwargs.update(MODEL_LOAD_KWARGS)
        if not _policy.allow_pickle:
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


def load_error(flag: str, name: str, e: BaseException) -> KdistillError:
    """transformers' load failure as one line naming the flag, with the flag that fixes it when
    the policy refused the model (remote code, pickle weights)."""
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
    """The model's tokenizer, refused when it has no vocabulary, given a pad token when it
    has none (batches are padded)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name, **hf_kwargs())
    except Exception as e:
        raise load_error(flag, name, e) from e
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


def head_keys(model: PreTrainedModel, keys: list[Any]) -> list[str]:
    """Keys outside the base model: the task head."""
    prefix = f"{model.base_model_prefix}."
    names = [k if isinstance(k, str) else str(k[0]) for k in keys]
    return [k for k in names if not k.startswith(prefix)]


def load_classifier(
    name: str, flag: str, **kwargs: Any
) -> tuple[PreTrainedModel, dict[str, list[Any]]]:
    """A sequence classifier under the load policy, with transformers' loading report (its
    missing and mismatched keys tell a trained head from a fresh one)."""
    from transformers import AutoModelForSequenceClassification

    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            name, output_loading_info=True, **hf_kwargs(weights=True), **kwargs
        )
    except KdistillError:
        raise
    except Exception as e:
        raise load_error(flag, name, e) from e
    return model, info


def has_weights(path: str) -> bool:
    """False for a local folder with a config and no weights: an architecture to start from."""
    folder = Path(path)
    return not folder.is_dir() or any(
        any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.gguf")
    )
