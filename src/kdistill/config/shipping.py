"""The configs of predict and export."""

from __future__ import annotations

from dataclasses import dataclass

from kdistill.config.common import (
    HUB_PUBLIC_HELP,
    PUSH_HELP,
    ConfigBase,
    DataOptions,
    DeviceOptions,
    _check,
    _check_push_to_hub,
    _check_validation_split,
    _opt,
)


@dataclass
class PredictConfig(DeviceOptions, ConfigBase):
    """Label new text with a trained classifier: a student or teacher folder, a distill run
    directory (its best_model/), or an exported ONNX folder or .onnx file. One JSON line per
    row: the label, its probability and the class probabilities."""

    model: str | None = _opt(
        None,
        "Model folder, distill run directory, ONNX export folder or .onnx file (ONNX runs in "
        "fp32 on the CPU, whatever --device and --mixed-precision say).",
    )
    text: str | None = _opt(None, "One text to label (prints its prediction).")
    input: str | None = _opt(
        None,
        "File of texts: .csv/.tsv, .jsonl/.json, .parquet (--text-column) or .txt (one a line).",
    )
    output: str | None = _opt(
        None, "Write the predictions here as JSON lines (default: standard output)."
    )
    text_column: str = _opt(
        "text", "Text column of --input; comma-separated columns are joined, as in training."
    )
    batch_size: int = _opt(32, "Rows per forward pass (rows of similar length are batched).")
    top_k: int | None = _opt(None, "Keep only the K most probable classes per row (default: all).")
    max_length: int = _opt(
        128, "Maximum tokens per text; use the --max-length the model was trained with."
    )

    def __post_init__(self) -> None:
        _check(bool(self.model), "--model: pass the model folder to predict with")
        _check(
            (self.text is None) != (self.input is None),
            'pass --text "..." or --input FILE (one of them)',
        )
        _check(self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})")
        _check(self.top_k is None or self.top_k >= 1, f"--top-k must be >= 1 (got {self.top_k})")
        _check(self.max_length >= 2, f"--max-length must be >= 2 (got {self.max_length})")
        _check(bool(self.text_column.strip()), "--text-column must name a column")


@dataclass
class ExportConfig(DataOptions, ConfigBase):
    """Export a classifier to ONNX (and optionally a dynamic-int8 copy), check that the exported
    model predicts what the torch model does on real rows, and time each: export_report.json."""

    model: str | None = _opt(None, "Model folder or distill run directory (its best_model/).")
    format: str = _opt("onnx", "Export format.", choices=["onnx"])
    quantize: str | None = _opt(
        None,
        "Also write model_quantized.onnx: dynamic-int8 stores weights as int8 and quantises "
        "activations on the fly (smaller, usually faster on CPU; checked like the fp32 file).",
        choices=["dynamic-int8"],
    )
    output_dir: str | None = _opt(
        None, "Folder to write (default: <run>/onnx for a run, else <model folder>-onnx)."
    )
    min_agreement: float = _opt(
        0.99,
        "Refuse the export (exit 2, report kept) when an exported model's predictions agree with "
        "the torch model's on fewer than this share of the parity rows, in [0, 1].",
    )
    dataset: str | None = _opt(
        None,
        "Real rows for the parity check (prepared data, or anything prepare-data accepts); "
        "default: the data set the run or teacher was trained on.",
    )
    split: str = _opt(
        "validation", "Split whose rows are checked.", choices=["validation", "test", "train"]
    )
    max_samples: int = _opt(500, "Parity rows (a stratified subsample of the split).")
    max_length: int = _opt(128, "Maximum tokens per text.")
    opset: int = _opt(18, "ONNX opset version.")
    batch_size: int = _opt(32, "Batch size of the parity pass and of the throughput timing.")
    latency_rows: int = _opt(32, "Rows timed one at a time for latency at batch 1.")
    repeats: int = _opt(3, "Timed repeats of each speed measurement, after a warm-up.")
    threads: int | None = _opt(
        None,
        "Threads per model for the timing, the same for torch and onnxruntime (default: torch's, "
        "one per core); 1 gives steadier numbers on a CPU shared with other work.",
    )
    seed: int = _opt(42, "Seed for subsampling.")
    push_to_hub: str | None = _opt(None, PUSH_HELP + " export pushes the ONNX folder.")
    hub_public: bool = _opt(False, HUB_PUBLIC_HELP)

    def __post_init__(self) -> None:
        _check(bool(self.model), "--model: pass the model folder or run directory to export")
        _check(
            0.0 <= self.min_agreement <= 1.0,
            f"--min-agreement must be in [0, 1] (got {self.min_agreement})",
        )
        for flag, value in (
            ("--max-samples", self.max_samples),
            ("--batch-size", self.batch_size),
            ("--latency-rows", self.latency_rows),
            ("--repeats", self.repeats),
        ):
            _check(value >= 1, f"{flag} must be >= 1 (got {value})")
        _check(self.max_length >= 2, f"--max-length must be >= 2 (got {self.max_length})")
        _check(self.opset >= 14, f"--opset must be >= 14 (got {self.opset})")
        _check(
            self.threads is None or self.threads >= 1,
            f"--threads must be >= 1 (got {self.threads})",
        )
        _check_validation_split(self.validation_split)
        _check_push_to_hub(self.push_to_hub)
