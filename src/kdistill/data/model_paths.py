"""Where a --*-model flag points: a local folder, a Hub id, or a GGUF file.

A .gguf file (or a folder holding one and no config.json) is dequantised once into a cached
Hugging Face folder, and everything downstream loads that plain checkpoint. GGUF lives here, not
with the teachers, because a student or a predict model may be a GGUF file too, and the path
check that finds it is shared by every loader.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from kdistill.data.hub import use_cache_if_offline
from kdistill.data.model_files import (
    MODEL_LOAD_KWARGS,
    cache_root,
    check_no_pickle_only,
    hf_kwargs,
    load_error,
)
from kdistill.errors import KdistillError

logger = logging.getLogger(__name__)

LOCAL_ROOTS = {"models", "outputs", "data"}  # the folders kdistill writes


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
    """Dequantised copies live beside the teacher-logit cache: both can be recomputed."""
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

    from kdistill.files import atomic_dir

    logger.info("%s: dequantising to %s (once; later loads reuse it)", gguf.name, target)
    try:
        kwargs = {"gguf_file": gguf.name, **hf_kwargs()}
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs, **MODEL_LOAD_KWARGS)
    except Exception as e:
        raise load_error(flag, str(gguf), e) from e
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
