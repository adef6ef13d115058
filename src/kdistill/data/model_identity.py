"""Which weights a --*-model name stands for, as a string that two different models never share.

The teacher-logit cache is keyed by it, so two teachers with one identity would hand each other
their logits, silently. A name can hide what it loads in three ways, and each is resolved here
to the files that are read:

- a local folder: its weight files may be replaced in place (a re-fine-tuned teacher);
- a Hub id: transformers 5 no longer records the commit it loaded (`config._commit_hash` is
  gone), so the id alone names whatever the repository held at some time;
- a PEFT adapter (adapter_config.json, no config.json): transformers loads the base model its
  config names and applies the adapter, so identical adapter files over two bases (another
  checkout of `../base`, a Hub base that moved on) are two teachers.

Files are identified by their content (sha256, streamed), never by size and modification time
alone. Hashing a large model takes seconds, so digests are remembered in a small JSON file under
the cache root, per resolved path, size and modification time: a file that changes gets hashed
again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import uuid
from pathlib import Path

from kdistill.data.model_files import cache_root
from kdistill.files import atomic_write_json

logger = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")
# Besides the weights, what in a model folder changes its outputs: the architecture's settings,
# and an adapter's (rank, alpha, target modules, the base it applies to).
CONFIG_FILES = ("config.json", "adapter_config.json")
ADAPTER_CONFIG = "adapter_config.json"
DIGESTS_FILE = "file_digests.json"


def model_identity(name: str, revision: str | None = None) -> str:
    """'local:<path>:<sha256>' for a folder, 'hub:<id>:<sha256>' for a Hub id (its files in the
    local Hub cache, at `revision` or the default branch), each followed by '+base=<identity>'
    for an adapter. A Hub id whose files cannot be found gets a key of its own that no other run
    shares: its logits are never reused, rather than reused from the wrong model."""
    return _identity(name, revision, frozenset())


def _identity(name: str, revision: str | None, seen: frozenset[Path]) -> str:
    path = Path(name).expanduser()
    if path.is_dir():
        return _folder_identity(path, f"local:{path.resolve()}", seen)
    snapshot = hub_snapshot(name, revision)
    if snapshot is None:
        logger.warning(
            "%s: its files are not in the local Hub cache, so the teacher logits computed from "
            "it cannot be keyed by its weights and will not be reused",
            name,
        )
        return f"hub:{name}@unidentified-{uuid.uuid4().hex}"
    return _folder_identity(snapshot, f"hub:{name}", seen)


def _folder_identity(folder: Path, label: str, seen: frozenset[Path]) -> str:
    h = hashlib.sha256()
    for f in model_files(folder):
        h.update(f.name.encode() + b"\x00")
        h.update(file_digest(f).encode())
    identity = f"{label}:{h.hexdigest()}"
    base = adapter_base(folder)
    if base is not None and folder.resolve() not in seen:
        base_name, base_revision = base
        identity += f"+base={_identity(base_name, base_revision, seen | {folder.resolve()})}"
    return identity


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder that decide its outputs, sorted by name."""
    found = {f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern)}
    found |= {folder / n for n in CONFIG_FILES if (folder / n).is_file()}
    return sorted(found, key=lambda f: f.name)


def adapter_base(folder: Path) -> tuple[str, str | None] | None:
    """(base model, its revision) of a PEFT adapter folder, None for any other folder.

    As transformers decides: a folder with adapter_config.json and no config.json is applied to
    the base its adapter config names (a relative path is read from the working directory); one
    with both holds its own base, whose files are already part of the folder's identity.
    """
    config = folder / ADAPTER_CONFIG
    if not config.is_file() or (folder / "config.json").is_file():
        return None
    try:
        spec = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # loading it fails too, with transformers' own message
    base = spec.get("base_model_name_or_path") if isinstance(spec, dict) else None
    if not base:
        return None
    return str(base), spec.get("revision") or None


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The local Hub cache's folder of `repo_id` at `revision` (default branch when None): the
    files transformers loaded, since it resolves a branch to one commit and records it there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("config.json", ADAPTER_CONFIG):
            found = try_to_load_from_cache(repo_id, filename, revision=revision)
            if isinstance(found, str):
                return Path(found).parent
    except Exception as e:  # a malformed id or cache: unidentified, never a crash
        logger.debug("%s: no local Hub snapshot (%s)", repo_id, e)
    return None


def file_digest(path: Path) -> str:
    """sha256 of a file's content (a Hub cache's symlink followed to its blob)."""
    real = path.resolve()
    st = real.stat()
    return _digest(str(real), st.st_size, st.st_mtime_ns)


@functools.cache
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """Memoised in this process and in DIGESTS_FILE across processes, per (path, size, mtime):
    a sweep or a second run over a 15 GB teacher does not read it again."""
    memo_file = cache_root() / DIGESTS_FILE
    memo = _read_memo(memo_file)
    entry = f"{path}|{size}|{mtime_ns}"
    if entry in memo:
        return memo[entry]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    # Re-read before writing: another process may have added entries meanwhile. Entries for
    # older versions of this file, or for files gone, are dropped: one line per file there is.
    memo = {
        k: v
        for k, v in _read_memo(memo_file).items()
        if k.rsplit("|", 2)[0] != path and os.path.exists(k.rsplit("|", 2)[0])
    }
    memo[entry] = digest
    try:
        atomic_write_json(memo_file, memo)
    except OSError as e:  # a read-only cache only costs the hashing next time
        logger.debug("cannot record file digests in %s (%s)", memo_file, e)
    return digest


def _read_memo(memo_file: Path) -> dict[str, str]:
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}
