"""The finetune-teacher command's config."""

from __future__ import annotations

from dataclasses import dataclass

from kdistill.config.common import (
    HUB_PUBLIC_HELP,
    PUSH_HELP,
    ConfigBase,
    DataOptions,
    DeviceOptions,
    LoadOptions,
    TrainingOptions,
    _check,
    _check_folder_name,
    _check_push_to_hub,
    _check_training,
    _lr_scheduler_opt,
    _opt,
)


@dataclass
class FinetuneConfig(LoadOptions, TrainingOptions, DataOptions, DeviceOptions, ConfigBase):
    """Fine-tune a checkpoint as a sequence classifier on a data set, to serve as a teacher."""

    model: str = _opt(
        "models/DeepSeek-R1-Distill-Qwen-1.5B", "Checkpoint to fine-tune: a local folder or Hub id."
    )
    dataset: str = _opt("dbpedia", "Prepared data, or anything prepare-data accepts.")
    output_dir: str = _opt("models", "Parent folder; the teacher lands in <output-dir>/<name>/.")
    name: str | None = _opt(None, "Folder name (default: <model name>-<dataset name>).")
    epochs: int = _opt(1, "Training epochs.")
    batch_size: int = _opt(16, "Examples per step per device.")
    max_length: int = _opt(128, "Maximum tokens per text.")
    learning_rate: float | None = _opt(
        None,
        "Peak AdamW learning rate, warm-up then --lr-scheduler (default: 5e-5 full, 5e-4 LoRA).",
    )
    lr_scheduler: str = _lr_scheduler_opt()
    seed: int = _opt(42, "Seed for sampling, shuffling and the new head.")
    method: str = _opt(
        "full",
        "full trains every weight; lora trains low-rank adapters (peft) and the new head, then "
        "merges them into the weights on save, so the result loads as a plain classifier.",
        choices=["full", "lora"],
    )
    lora_r: int = _opt(8, "LoRA rank.")
    lora_alpha: float = _opt(16.0, "LoRA scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = _opt(0.05, "Dropout on the LoRA branch, in [0, 1).")
    target_modules: str | None = _opt(
        None,
        "Comma-separated module names that get adapters (default: q_proj,k_proj,v_proj,o_proj "
        "for Qwen2/Llama, query,key,value for BERT-family).",
    )
    gradient_checkpointing: str = _opt(
        "auto", "auto: on for models over 100M parameters.", choices=["auto", "on", "off"]
    )
    calibrate_teacher: str = _opt(
        "auto",
        "auto: after training, fit one temperature T on the validation split by NLL (bounded to "
        "[0.05, 20]) and fold it into the saved classifier's head (its last linear layer's "
        "weight and bias divided by T): the same predictions, probabilities that mean what they "
        "say, and soft targets that are calibrated before distill's --temperature softens them. "
        "T and the validation ECE before and after go into teacher_eval.json and the card. off: "
        "the logits as trained.",
        choices=["auto", "off"],
    )
    push_to_hub: str | None = _opt(None, PUSH_HELP)
    hub_public: bool = _opt(False, HUB_PUBLIC_HELP)

    def __post_init__(self) -> None:
        _check_push_to_hub(self.push_to_hub)
        if self.learning_rate is None:
            # Adapters start at zero and move few weights: they need a larger step than full
            # fine-tuning to learn in the same epochs.
            self.learning_rate = 5e-4 if self.method == "lora" else 5e-5
        _check_training(self)
        _check_folder_name(self.name, "--name", "--output-dir")
        _check(
            self.calibrate_teacher in ("auto", "off"),
            f"--calibrate-teacher must be auto or off (got {self.calibrate_teacher})",
        )
        _check(self.lora_r >= 1, f"--lora-r must be >= 1 (got {self.lora_r})")
        _check(self.lora_alpha > 0, f"--lora-alpha must be > 0 (got {self.lora_alpha})")
        _check(
            0.0 <= self.lora_dropout < 1.0,
            f"--lora-dropout must be in [0, 1) (got {self.lora_dropout})",
        )
