"""export: the model as ONNX (optionally dynamic-int8 too), checked and timed before anyone
deploys it.

Optimum, the usual route, pins transformers below 5 (optimum-onnx 0.1.0 needs < 4.58), so the
graph comes from torch's own exporter, `torch.onnx.export` with dynamic batch and sequence axes
(the torch.export-based exporter, falling back to the TorchScript-based one where it fails);
onnxruntime runs it and quantises it (`quantize_dynamic`: int8 weights, activations quantised
on the fly).

An export is only as good as its agreement with the model it came from, so every exported file
is run on real rows next to the torch model: the largest absolute logit difference, the share of
rows where both predict the same class, and the accuracy of each. Then latency at batch 1 and
32 for torch, ONNX and ONNX-int8 on this CPU. All of it goes into export_report.json; an
export whose agreement falls below --min-agreement is refused (exit 2), its report kept.
"""

from __future__ import annotations

import logging
import platform
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdistill.config import ExportConfig
from kdistill.errors import KdistillError
from kdistill.training.runs import atomic_dir, atomic_write_json

if TYPE_CHECKING:
    from kdistill.shipping.predict import Predictor

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
REPORT_FILE = "export_report.json"
EXTRA_HINT = "pip install 'kdistill[onnx]'"
EXPORTERS = {  # both with dynamic batch and sequence axes
    "dynamo": "torch.onnx.export, torch.export-based (dynamo=True)",
    "torchscript": "torch.onnx.export, TorchScript-based (dynamo=False)",
}


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
        raise KdistillError(f"{flag} {path}: onnxruntime cannot load it: {_first_line(e)}") from e


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
                f"onnxruntime failed on a batch of shape {tuple(ids.shape)}: {_first_line(e)}"
            ) from e
        return torch.from_numpy(out).float()

    return forward


class LogitsOnly(torch.nn.Module):
    """(input_ids, attention_mask) -> logits: the graph's only inputs and output, positional, so
    the ONNX file's interface does not depend on a model class's optional arguments."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model: torch.nn.Module, path: Path, opset: int) -> str:
    """Write `model` as one ONNX file (weights inside) with dynamic batch and sequence axes;
    returns which exporter wrote it.

    The torch.export-based exporter first; where it fails, or quietly fixes an axis to the
    example's size, the TorchScript-based one (deprecated in torch, still shipped)."""
    wrapper = LogitsOnly(model).eval()
    # batch 2, length 8: a dimension of size 1 would be specialised away by torch.export.
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["logits"]}
    try:
        dynamic = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
        program = _quietly(
            torch.onnx.export,
            wrapper,
            example,
            dynamo=True,
            **names,
            opset_version=opset,
            dynamic_shapes=(dynamic, dynamic),
            external_data=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)
        if dynamic_inputs(path):
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
            _first_line(e),
        )
    axes = {0: "batch", 1: "sequence"}
    try:
        _quietly(
            torch.onnx.export,
            wrapper,
            example,
            str(path),
            dynamo=False,
            **names,
            opset_version=opset,
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}},
        )
    except Exception as e:  # noqa: BLE001
        raise KdistillError(
            f"--format onnx: torch.onnx.export failed for {type(model).__name__}: {_first_line(e)}"
        ) from e
    if not dynamic_inputs(path):
        raise KdistillError(
            f"--format onnx: {type(model).__name__} exports only with fixed input shapes"
        )
    return EXPORTERS["torchscript"]


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


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


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


# --------------------------------------------------------------------------- what to export


def resolve_source(given: str) -> tuple[Path, Path | None]:
    """(model folder, run directory or None): a run gives its best_model/."""
    from kdistill.shipping.predict import _is_run

    path = Path(given).expanduser()
    if not path.is_dir():
        what = "a file" if path.exists() else "no such folder"
        raise KdistillError(
            f"--model {given}: {what}; pass a model folder or a distill run directory"
        )
    if _is_run(path) or ((path / "best_model").is_dir() and not (path / "config.json").is_file()):
        if not (path / "best_model").is_dir():
            raise KdistillError(f"--model {given}: the run has no best_model/ yet")
        return path / "best_model", path
    if path.name in ("best_model", "final_model") and _is_run(path.parent):
        return path, path.parent
    if not (path / "config.json").is_file():
        raise KdistillError(
            f"--model {given}: no config.json; pass a model folder or a distill run directory"
        )
    return path, None


def default_output(model_dir: Path, run_dir: Path | None) -> Path:
    if run_dir is not None and model_dir.name == "best_model":
        return run_dir / "onnx"
    return model_dir.with_name(f"{model_dir.name}-onnx")


def check_output_dir(target: Path, model_dir: Path) -> None:
    """The export replaces its folder whole: never the model itself, a folder holding it, or
    a folder that is not an earlier export."""
    resolved = target.resolve()
    if resolved == model_dir.resolve() or resolved in model_dir.resolve().parents:
        raise KdistillError(
            f"--output-dir {target} would replace the model being exported; pass a new folder"
        )
    if target.exists() and not (target / REPORT_FILE).is_file():
        what = "a file" if target.is_file() else "a folder that is not an earlier export"
        raise KdistillError(
            f"--output-dir {target} is {what}; pass a new folder (an earlier "
            "export there is replaced)"
        )


def parity_source(config: ExportConfig, model_dir: Path, run_dir: Path | None) -> tuple[str, str]:
    """(--dataset, --data-dir) for the parity rows: the flag, else what the run or the teacher
    was trained on."""
    import json

    if config.dataset:
        return config.dataset, config.data_dir
    for f in ([run_dir / "config.json"] if run_dir else []) + [model_dir / "teacher_eval.json"]:
        try:
            saved = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        saved = saved.get("config", saved) if f.name == "teacher_eval.json" else saved
        if saved.get("dataset"):
            return str(saved["dataset"]), str(saved.get("data_dir") or config.data_dir)
    raise KdistillError(
        f"--model {config.model}: not a distill run or a finetune-teacher folder, "
        "so the rows to check it on are unknown; pass --dataset"
    )


def parity_rows(
    config: ExportConfig, model_dir: Path, run_dir: Path | None
) -> tuple[list[str], torch.Tensor, list[str], str]:
    """Texts, labels (in the data set's class order), class names and the data set's name."""
    from kdistill.data.prepare import load_for_training, subsample

    dataset, data_dir = parity_source(config, model_dir, run_dir)
    data = load_for_training(
        dataset,
        data_dir,
        config.text_column,
        config.label_column,
        config.validation_split,
        config.seed,
    )
    if config.split not in data.splits or len(data.splits[config.split]) == 0:
        raise KdistillError(
            f"--split {config.split}: {data.name} has no {config.split} rows "
            f"(it has {', '.join(data.splits)})"
        )
    rows = subsample(data.splits[config.split], config.max_samples, config.seed, "--max-samples")
    return list(rows["text"]), torch.tensor(list(rows["label"])), data.label_names, data.name


# --------------------------------------------------------------------------- checking and timing


def accuracy(logits: torch.Tensor, labels: torch.Tensor, columns: list[int] | None) -> float | None:
    if columns is None:
        return None
    return float((logits[:, columns].argmax(-1) == labels).float().mean())


def parity(reference: torch.Tensor, logits: torch.Tensor) -> dict[str, float]:
    """How far an exported model's logits are from the torch model's. (n, num_labels) each."""
    diff = (reference - logits).abs()
    same = (reference.argmax(-1) == logits.argmax(-1)).float()
    return {
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "agreement": float(same.mean()),
    }


def time_all(
    predictors: dict[str, Predictor], texts: list[str], config: ExportConfig, threads: int
) -> dict[str, dict[str, Any]]:
    """Latency at batch 1 (median over the first --latency-rows rows, one at a time) and at
    --batch-size (one padded batch of the first rows), throughput at that batch size, and the
    IQR of each, for every predictor: timed interleaved (evaluate.measure_speeds), on `threads`
    threads, so the torch/bf16/ONNX/int8 ratios are measured under the same conditions."""
    from kdistill.evaluation.metrics import measure_speeds

    def enc(tok: Any, rows: list[str]) -> dict[str, torch.Tensor]:
        b = tok(
            rows, truncation=True, max_length=config.max_length, padding=True, return_tensors="pt"
        )
        return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}

    batch_rows = texts[: config.batch_size]
    models = {}
    for variant, p in predictors.items():
        singles = [enc(p.tokenizer, [t]) for t in texts[: config.latency_rows]]
        models[variant] = (p.forward, singles, enc(p.tokenizer, batch_rows))
    out = measure_speeds(models, config.repeats, torch.device("cpu"), threads)
    for s in out.values():
        s[f"latency_ms_batch_{config.batch_size}"] = 1000 * len(batch_rows) / s["throughput_per_s"]
    return out


def export(config: ExportConfig) -> Path:
    """The export command. Returns the export folder; raises (exit 2) after writing it when an
    exported model disagrees with the torch model too often."""
    from kdistill.shipping.model_card import write_export_card
    from kdistill.shipping.predict import (
        load_onnx_predictor,
        load_torch_predictor,
        predict_logits,
        torch_predictor,
    )
    from kdistill.students.load import map_labels
    from kdistill.training.runtime import cpu_supports_bf16, library_versions

    require_onnx()
    model_dir, run_dir = resolve_source(config.model)
    target = (
        Path(config.output_dir).expanduser()
        if config.output_dir
        else default_output(model_dir, run_dir)
    )
    check_output_dir(target, model_dir)
    texts, labels, label_names, data_name = parity_rows(config, model_dir, run_dir)
    # Export and time on CPU in fp32: the reference the exported files are held to.
    reference = load_torch_predictor(str(model_dir), "cpu", "no")
    try:
        columns = map_labels(dict(enumerate(reference.label_names)), label_names, "--model")
    except KdistillError as e:
        logger.warning("no accuracy in the report: %s", e)
        columns = None

    with atomic_dir(target) as tmp:
        logger.info("exporting %s to ONNX (opset %d)", model_dir, config.opset)
        exporter = export_onnx(reference.model, tmp / ONNX_FILE, config.opset)
        shutil.copy2(model_dir / "config.json", tmp / "config.json")
        reference.tokenizer.save_pretrained(tmp)
        files = {"onnx": tmp / ONNX_FILE}
        if config.quantize == "dynamic-int8":
            logger.info("quantising to dynamic int8")
            quantize_int8(tmp / ONNX_FILE, tmp / INT8_FILE)
            files["onnx-int8"] = tmp / INT8_FILE

        logger.info("parity check on %d %s rows of %s", len(texts), config.split, data_name)
        ref_logits = predict_logits(reference, texts, config.batch_size, config.max_length)
        report_parity: dict[str, Any] = {}
        predictors = {"torch": reference}
        torch_bf16 = None
        if cpu_supports_bf16():  # what predict runs by default here: timed beside fp32
            predictors["torch-bf16"] = torch_predictor(
                reference.model, reference.tokenizer, "cpu", "bf16", reference.name
            )
            logits = predict_logits(
                predictors["torch-bf16"], texts, config.batch_size, config.max_length
            )
            torch_bf16 = {
                **parity(ref_logits, logits),
                "accuracy": accuracy(logits, labels, columns),
            }
        for variant, f in files.items():
            predictor = load_onnx_predictor(f)
            predictors[variant] = predictor
            logits = predict_logits(predictor, texts, config.batch_size, config.max_length)
            report_parity[variant] = {
                "file": f.name,
                "size_bytes": f.stat().st_size,
                **parity(ref_logits, logits),
                "accuracy": accuracy(logits, labels, columns),
            }
        logger.info("timing %s at batch 1 and %d", ", ".join(predictors), config.batch_size)
        # One fixed thread count for every model (torch and each onnxruntime session alike):
        # --threads, else what torch runs on here.
        threads = config.threads or torch.get_num_threads()
        for variant, f in files.items():
            predictors[variant] = load_onnx_predictor(f, threads=threads)
        speeds = time_all(predictors, texts, config, threads)
        for s in speeds.values():
            s["speedup_vs_torch"] = speeds["torch"]["latency_ms_batch_1"] / s["latency_ms_batch_1"]
            s["throughput_ratio_vs_torch"] = (
                s["throughput_per_s"] / speeds["torch"]["throughput_per_s"]
            )
        failed = [v for v, p in report_parity.items() if p["agreement"] < config.min_agreement]
        report = {
            "model": str(model_dir),
            "run_dir": str(run_dir) if run_dir else None,
            "format": "onnx",
            "exporter": exporter,
            "opset": config.opset,
            "quantize": config.quantize,
            "dataset": data_name,
            "split": config.split,
            "rows": len(texts),
            "batch_size": config.batch_size,
            "max_length": config.max_length,
            "torch": {
                "dtype": "fp32",
                "accuracy": accuracy(ref_logits, labels, columns),
                "size_bytes": _weights_bytes(model_dir),
            },
            # bf16 autocast of the same torch model (where the CPU has it): not an export, so
            # not held to --min-agreement.
            "torch_bf16": torch_bf16,
            "parity": report_parity,
            "speed": speeds,
            "min_agreement": config.min_agreement,
            "passed": not failed,
            "failed": failed,
            "device_description": f"CPU ({platform.processor() or platform.machine()}, "
            f"{threads} threads per model)",
            "threads": threads,
            "timing": f"interleaved: {config.repeats} rounds, each timing every model in turn "
            "(ABBA order); medians with their interquartile range",
            "versions": {**library_versions(), **_onnx_versions()},
            "created": datetime.now().isoformat(timespec="seconds"),
        }
        atomic_write_json(tmp / REPORT_FILE, report)
        write_export_card(tmp, model_dir, report, target, None if failed else config.push_to_hub)
    logger.info("export written to %s:\n%s", target, format_report(report))
    if failed:
        worst = min(report_parity[v]["agreement"] for v in failed)
        raise KdistillError(
            f"export refused: {', '.join(failed)} agrees with the torch model on "
            f"{100 * worst:.2f}% of {len(texts)} rows, below --min-agreement "
            f"{config.min_agreement}; see {target / REPORT_FILE}"
        )
    if config.push_to_hub:
        from kdistill.shipping.publish import push_folder

        push_folder(target, config.push_to_hub, private=not config.hub_public, what="ONNX export")
    return target


def _weights_bytes(folder: Path) -> int:
    from kdistill.compare import weights_size

    return weights_size(str(folder))


def _onnx_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _iqr_text(s: dict[str, Any], key: str, digits: int) -> str:
    """'2.31-2.52': the interquartile range of a timing, '-' for a report written before it."""
    iqr = s.get(f"{key}_iqr")
    return "-" if not iqr else f"{iqr[0]:.{digits}f}-{iqr[1]:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """The table printed after an export: parity and speed per model, each timing's median with
    its interquartile range over the interleaved repeats."""
    bs = report["batch_size"]
    widths = {
        "max|dlogit|": 12,
        "agree": 9,
        "accuracy": 10,
        "ms@1": 9,
        "IQR ms@1": 14,
        f"ms@{bs}": 9,
        "rows/s": 9,
        "IQR rows/s": 14,
        "speed-up": 10,
        "MB": 8,
    }
    lines = [f"{'model':<12}" + "".join(f"{name:>{w}}" for name, w in widths.items())]
    torch_row = {"max_abs_logit_diff": 0.0, "agreement": 1.0, **report["torch"]}
    for variant, s in report["speed"].items():
        p = {"torch": torch_row, "torch-bf16": report["torch_bf16"]}.get(variant) or report[
            "parity"
        ][variant]
        acc = p.get("accuracy")
        lines.append(
            f"{variant:<12}{p['max_abs_logit_diff']:>12.2e}{100 * p['agreement']:>8.2f}%"
            f"{'-' if acc is None else f'{100 * acc:.2f}%':>10}{s['latency_ms_batch_1']:>9.2f}"
            f"{_iqr_text(s, 'latency_ms_batch_1', 2):>14}"
            f"{s[f'latency_ms_batch_{bs}']:>9.1f}{s['throughput_per_s']:>9.1f}"
            f"{_iqr_text(s, 'throughput_per_s', 0):>14}"
            f"{s['speedup_vs_torch']:>9.2f}x{(p.get('size_bytes') or 0) / 1e6:>8.1f}"
        )
    return "\n".join(lines)
