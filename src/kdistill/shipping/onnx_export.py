"""Writing ONNX: torch's own exporter with dynamic batch and sequence axes, and onnxruntime's
dynamic-int8 quantiser.

Optimum, the usual route, pins transformers below 5 (optimum-onnx 0.1.0 needs < 4.58), so the
graph comes from `torch.onnx.export` (the torch.export-based exporter, falling back to the
TorchScript-based one where it fails); onnxruntime quantises it (`quantize_dynamic`: int8
weights, activations quantised on the fly).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdistill.errors import KdistillError
from kdistill.shipping.onnx_runtime import first_line

logger = logging.getLogger(__name__)

EXPORTERS = {  # both with dynamic batch and sequence axes
    "dynamo": "torch.onnx.export, torch.export-based (dynamo=True)",
    "torchscript": "torch.onnx.export, TorchScript-based (dynamo=False)",
}


class LogitsOnly(torch.nn.Module):
    """(input_ids, attention_mask) -> logits: the graph's only inputs and output, positional, so
    the ONNX file's interface does not depend on a model class's optional arguments."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


# batch 2, length 8: a dimension of size 1 would be specialised away by torch.export.
EXAMPLE_SHAPE = (2, 8)
IO_NAMES = {"input_names": ["input_ids", "attention_mask"], "output_names": ["logits"]}


def export_onnx(model: torch.nn.Module, path: Path, opset: int) -> str:
    """Write `model` as one ONNX file (weights inside) with dynamic batch and sequence axes;
    returns which exporter wrote it.

    The torch.export-based exporter first; where it fails, or quietly fixes an axis to the
    example's size, the TorchScript-based one (deprecated in torch, still shipped)."""
    wrapper = LogitsOnly(model).eval()
    example = (
        torch.ones(*EXAMPLE_SHAPE, dtype=torch.long),
        torch.ones(*EXAMPLE_SHAPE, dtype=torch.long),
    )
    try:
        if _export_dynamo(wrapper, example, path, opset):
            return EXPORTERS["dynamo"]
        logger.warning(
            "the torch.export-based exporter fixed the batch or sequence length; "
            "exporting with the TorchScript-based one instead"
        )
    except Exception as e:  # noqa: BLE001  (export failures come in many types)
        logger.warning(
            "the torch.export-based exporter failed (%s: %s); exporting with the "
            "TorchScript-based one",
            type(e).__name__,
            first_line(e),
        )
    _export_torchscript(wrapper, example, path, opset, type(model).__name__)
    return EXPORTERS["torchscript"]


def _export_dynamo(
    wrapper: LogitsOnly, example: tuple[torch.Tensor, ...], path: Path, opset: int
) -> bool:
    """The torch.export-based exporter; whether the file it wrote kept both axes dynamic."""
    dynamic = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    program = _quietly(
        torch.onnx.export,
        wrapper,
        example,
        dynamo=True,
        **IO_NAMES,
        opset_version=opset,
        dynamic_shapes=(dynamic, dynamic),
        external_data=False,
        verbose=False,
    )
    program.save(str(path), external_data=False)
    return dynamic_inputs(path)


def _export_torchscript(
    wrapper: LogitsOnly, example: tuple[torch.Tensor, ...], path: Path, opset: int, what: str
) -> None:
    """The TorchScript-based exporter, the fallback; a one-line error when it fails or fixes an
    axis (`what`: the model class, for the message)."""
    axes = {0: "batch", 1: "sequence"}
    try:
        _quietly(
            torch.onnx.export,
            wrapper,
            example,
            str(path),
            dynamo=False,
            **IO_NAMES,
            opset_version=opset,
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}},
        )
    except Exception as e:  # noqa: BLE001
        raise KdistillError(
            f"--format onnx: torch.onnx.export failed for {what}: {first_line(e)}"
        ) from e
    if not dynamic_inputs(path):
        raise KdistillError(f"--format onnx: {what} exports only with fixed input shapes")


# Loggers of the exporter and quantiser: their INFO and WARNING lines are about graph rewrites
# (and onnxruntime's quantiser logs through the root logger).
NOISY_LOGGERS = ("", "torch.onnx", "torch.export", "onnx_ir", "onnxscript")


def _quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an exporter or the quantiser without its deprecation and tracer warnings and graph
    rewrite logs (the report says what ran), and without the progress lines it prints to
    stdout, which is the command's output. Errors still show."""
    import contextlib
    import io
    import warnings

    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            return fn(*args, **kwargs)
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def dynamic_inputs(path: Path) -> bool:
    """Whether the batch and sequence axes of every graph input are symbolic, not fixed."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return all(
        all(d.dim_param and not d.HasField("dim_value") for d in i.type.tensor_type.shape.dim[:2])
        for i in graph.input
    )


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8: weights stored as int8, activations quantised per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    external = source.with_name(source.name + ".data").exists()  # over 2 GB: weights beside it
    _quietly(
        quantize_dynamic,
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        use_external_data_format=external,
    )
