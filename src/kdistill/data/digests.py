"""Identities of what models read: a list of texts, a tokenizer. Two runs that agree on these
read the same inputs, so a cache keyed on them (teacher logits, tokenised splits) is safe to
reuse, and a run can check that its train rows are the ones another run held out from.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def tokenizer_identity(tokenizer: Any) -> str:
    """sha256 of what decides a tokenizer's ids: its vocabulary and rules, class and sides."""
    if getattr(tokenizer, "is_fast", False):
        # Canonical JSON: the serialised vocabulary's key order varies between loads, and the
        # truncation/padding entries are runtime state, not the tokenizer.
        spec_dict = json.loads(tokenizer.backend_tokenizer.to_str())
        spec_dict.pop("truncation", None)
        spec_dict.pop("padding", None)
        spec = json.dumps(spec_dict, sort_keys=True)
    else:
        spec = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = f"{type(tokenizer).__name__}|{tokenizer.padding_side}|{tokenizer.truncation_side}"
    return hashlib.sha256((spec + extra).encode()).hexdigest()


def texts_digest(texts: list[str]) -> str:
    """sha256 of the texts in order (NUL-separated, so ['ab'] and ['a', 'b'] differ)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\x00")
    return h.hexdigest()
