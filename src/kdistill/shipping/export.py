"""export: the model as ONNX (optionally dynamic-int8 too), checked and timed before anyone
deploys it.

The graph comes from torch's own exporter and onnxruntime quantises it (shipping.onnx_export).
An export is only as good as its agreement with the model it came from, so every exported file
is run on real rows next to the torch model (shipping.parity). Then latency at batch 1 and 32
for torch, ONNX and ONNX-int8 on this CPU. All of it goes into export_report.json; an export
whose agreement falls below --min-agreement is refused (exit 2), its report kept.
"""

from __future__ import annotations

import logging
import platform
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from kdistill.config import ExportConfig
from kdistill.errors import KdistillError
from kdistill.files import atomic_dir, atomic_write_json
from kdistill.shipping.onnx_export import export_onnx, quantize_int8
from kdistill.shipping.onnx_runtime import require_onnx
from kdistill.shipping.parity import accuracy, parity, parity_rows, time_all
from kdistill.shipping.predictor import (
    Predictor,
    is_run_folder,
    load_onnx_predictor,
    load_torch_predictor,
    predict_logits,
    torch_predictor,
)

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
REPORT_FILE = "export_report.json"


def resolve_source(given: str) -> tuple[Path, Path | None]:
    """(model folder, run directory or None): a run gives its best_model/."""
    path = Path(given).expanduser()
    if not path.is_dir():
        what = "a file" if path.exists() else "no such folder"
        raise KdistillError(
            f"--model {given}: {what}; pass a model folder or a distill run directory"
        )
    bare_run = (path / "best_model").is_dir() and not (path / "config.json").is_file()
    if is_run_folder(path) or bare_run:
        if not (path / "best_model").is_dir():
            raise KdistillError(f"--model {given}: the run has no best_model/ yet")
        return path / "best_model", path
    if path.name in ("best_model", "final_model") and is_run_folder(path.parent):
        return path, path.parent
    if not (path / "config.json").is_file():
        raise KdistillError(
            f"--model {given}: no config.json; pass a model folder or a distill run directory"
        )
    return path, None


def default_output(model_dir: Path, run_dir: Path | None) -> Path:
    """Where an export goes without --output-dir: a run's onnx/, else beside the model folder."""
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


def export(config: ExportConfig) -> Path:
    """The export command. Returns the export folder; raises (exit 2) after writing it when an
    exported model disagrees with the torch model too often."""
    from kdistill.shipping.export_card import write_export_card
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
    columns = label_columns(reference, label_names)

    with atomic_dir(target) as tmp:
        exporter, files = write_files(reference, model_dir, tmp, config)
        logger.info("parity check on %d %s rows of %s", len(texts), config.split, data_name)
        rows = (texts, labels, columns)
        ref_logits, torch_bf16, report_parity, predictors = check_parity(
            reference, files, rows, config, cpu_supports_bf16()
        )
        # One fixed thread count for every model (torch and each onnxruntime session alike):
        # --threads, else what torch runs on here.
        threads = config.threads or torch.get_num_threads()
        speeds = time_variants(predictors, files, texts, config, threads)
        failed = [v for v, p in report_parity.items() if p["agreement"] < config.min_agreement]
        report = {
            **_what_ran(config, model_dir, run_dir, exporter, data_name, len(texts)),
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
            **_timing_settings(config, threads),
            "versions": {**library_versions(), **_onnx_versions()},
            "created": datetime.now().isoformat(timespec="seconds"),
        }
        atomic_write_json(tmp / REPORT_FILE, report)
        write_export_card(tmp, model_dir, report, target, None if failed else config.push_to_hub)
    logger.info("export written to %s:\n%s", target, format_report(report))
    if failed:
        raise refusal(report, target)
    if config.push_to_hub:
        from kdistill.shipping.publish import push_folder

        push_folder(target, config.push_to_hub, private=not config.hub_public, what="ONNX export")
    return target


def refusal(report: dict[str, Any], target: Path) -> KdistillError:
    """The one-line error of an export whose files disagree with the torch model too often,
    naming the worst agreement; its report stays in `target` to read."""
    failed = report["failed"]
    worst = min(report["parity"][v]["agreement"] for v in failed)
    return KdistillError(
        f"export refused: {', '.join(failed)} agrees with the torch model on "
        f"{100 * worst:.2f}% of {report['rows']} rows, below --min-agreement "
        f"{report['min_agreement']}; see {target / REPORT_FILE}"
    )


def label_columns(reference: Predictor, label_names: list[str]) -> list[int] | None:
    """The model's logit column of each of the data set's classes; None (the report then has no
    accuracy, only agreement) when its classes are not the data set's."""
    from kdistill.data.labels import map_labels

    try:
        return map_labels(dict(enumerate(reference.label_names)), label_names, "--model")
    except KdistillError as e:
        logger.warning("no accuracy in the report: %s", e)
        return None


def write_files(
    reference: Predictor, model_dir: Path, tmp: Path, config: ExportConfig
) -> tuple[str, dict[str, Path]]:
    """The ONNX file (and its int8 copy with --quantize dynamic-int8), the model's config.json
    and tokenizer into the export's temporary folder; (which exporter wrote it, the files by
    variant)."""
    logger.info("exporting %s to ONNX (opset %d)", model_dir, config.opset)
    exporter = export_onnx(reference.model, tmp / ONNX_FILE, config.opset)
    shutil.copy2(model_dir / "config.json", tmp / "config.json")
    reference.tokenizer.save_pretrained(tmp)
    files = {"onnx": tmp / ONNX_FILE}
    if config.quantize == "dynamic-int8":
        logger.info("quantising to dynamic int8")
        quantize_int8(tmp / ONNX_FILE, tmp / INT8_FILE)
        files["onnx-int8"] = tmp / INT8_FILE
    return exporter, files


def check_parity(
    reference: Predictor,
    files: dict[str, Path],
    rows: tuple[list[str], torch.Tensor, list[int] | None],
    config: ExportConfig,
    with_bf16: bool,
) -> tuple[torch.Tensor, dict[str, Any] | None, dict[str, dict[str, Any]], dict[str, Predictor]]:
    """Every exported file (and, `with_bf16`, the torch model under bf16 autocast) scored on the
    rows (texts, labels, label columns) next to the fp32 torch model: (the torch model's
    logits, the bf16 check or None, each file's check, the predictors to time)."""
    texts, labels, columns = rows
    ref_logits = predict_logits(reference, texts, config.batch_size, config.max_length)
    report_parity: dict[str, Any] = {}
    predictors = {"torch": reference}
    torch_bf16 = None
    if with_bf16:  # what predict runs by default here: timed beside fp32
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
    return ref_logits, torch_bf16, report_parity, predictors


def time_variants(
    predictors: dict[str, Predictor],
    files: dict[str, Path],
    texts: list[str],
    config: ExportConfig,
    threads: int,
) -> dict[str, dict[str, Any]]:
    """Each model's speed, on `threads` threads (the ONNX sessions reloaded with that many),
    with its speed-up and throughput ratio against the fp32 torch model."""
    logger.info("timing %s at batch 1 and %d", ", ".join(predictors), config.batch_size)
    for variant, f in files.items():
        predictors[variant] = load_onnx_predictor(f, threads=threads)
    speeds = time_all(predictors, texts, config, threads)
    for s in speeds.values():
        s["speedup_vs_torch"] = speeds["torch"]["latency_ms_batch_1"] / s["latency_ms_batch_1"]
        s["throughput_ratio_vs_torch"] = s["throughput_per_s"] / speeds["torch"]["throughput_per_s"]
    return speeds


def _what_ran(
    config: ExportConfig,
    model_dir: Path,
    run_dir: Path | None,
    exporter: str,
    data_name: str,
    rows: int,
) -> dict[str, Any]:
    """The report's head: what was exported, how, and on which rows it was checked."""
    return {
        "model": str(model_dir),
        "run_dir": str(run_dir) if run_dir else None,
        "format": "onnx",
        "exporter": exporter,
        "opset": config.opset,
        "quantize": config.quantize,
        "dataset": data_name,
        "split": config.split,
        "rows": rows,
        "batch_size": config.batch_size,
        "max_length": config.max_length,
    }


def _timing_settings(config: ExportConfig, threads: int) -> dict[str, Any]:
    """The report's description of where and how the models were timed."""
    return {
        "device_description": f"CPU ({platform.processor() or platform.machine()}, "
        f"{threads} threads per model)",
        "threads": threads,
        "timing": f"interleaved: {config.repeats} rounds, each timing every model in turn "
        "(ABBA order); medians with their interquartile range",
    }


def _weights_bytes(folder: Path) -> int:
    """The torch model's weight files on disk, the size the exports are compared with."""
    from kdistill.evaluation.scoring import weights_size

    return weights_size(str(folder))


def _onnx_versions() -> dict[str, str]:
    """The ONNX packages' versions, recorded beside torch's in the report."""
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
