"""ONNX at run time: the [onnx] extra's check, an onnxruntime CPU session and a torch-facing
forward over it.

predict (loading an exported model) and export (checking what it wrote) both run ONNX models
through these, so they live apart from either command: neither imports the other for them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdistill.errors import KdistillError

EXTRA_HINT = "pip install 'kdistill[onnx]'"


def require_onnx(flag: str = "--format onnx") -> None:
    """The [onnx] extra's packages, or one line that says how to install them."""
    import importlib.util

    missing = [
        p for p in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(p) is None
    ]
    if missing:
        raise KdistillError(
            f"{flag} needs the onnx extra ({', '.join(missing)} missing): {EXTRA_HINT}"
        )


def onnx_session(path: Path, flag: str = "--model", threads: int | None = None) -> Any:
    """An onnxruntime CPU session with every graph optimisation on (`threads` intra-op
    threads; default: one per core)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise KdistillError(
            f"{flag} {path}: running an ONNX model needs onnxruntime: {EXTRA_HINT}"
        ) from e
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings are about fused-away nodes
    # Idle worker threads sleep instead of spinning: on a shared CPU a spinning pool steals the
    # cores from whatever runs next (measured: torch 30x slower right after an ONNX pass).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
        raise KdistillError(f"{flag} {path}: onnxruntime cannot load it: {first_line(e)}") from e


def onnx_forward(session: Any) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """A forward function over torch batches (`input_ids`, `attention_mask`): the session gets
    the inputs its graph declares, token_type_ids as zeros when it asks for them."""
    import numpy as np

    names = [i.name for i in session.get_inputs()]

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"].cpu().numpy().astype(np.int64)
        feed = {
            "input_ids": ids,
            "attention_mask": batch["attention_mask"].cpu().numpy().astype(np.int64),
            "token_type_ids": np.zeros_like(ids),
        }
        try:
            out = session.run(None, {n: feed[n] for n in names})[0]
        except Exception as e:  # noqa: BLE001  (onnxruntime's own exception types)
            raise KdistillError(
                f"onnxruntime failed on a batch of shape {tuple(ids.shape)}: {first_line(e)}"
            ) from e
        return torch.from_numpy(out).float()

    return forward


def first_line(e: BaseException) -> str:
    """The first line of an error's message (its type when it has none): onnxruntime and the
    exporters raise pages of graph dumps, and the CLI prints one line."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
