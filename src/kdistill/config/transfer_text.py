"""distill's transfer-text flags: texts made before distillation (--augment from the training
texts, --generate from the class names), which the teacher labels and no label comes with."""

from __future__ import annotations

from dataclasses import dataclass

from kdistill.config.common import _check, _opt

AUGMENT_METHODS = ("mlm", "mask", "delete", "swap")


@dataclass
class TransferTextOptions:
    """Made transfer text: it joins the --unlabeled-data rows (the KD term alone, T^2 * KL)."""

    augment: int = _opt(
        0,
        "Make this many new texts from each labelled training text before distillation; the "
        "teacher gives each its soft targets and none carries its source's label. Made texts "
        "are deduplicated, never copy a validation or test text, and are cached (keyed by the "
        "source rows, methods, N and --seed).",
    )
    augment_method: str = _opt(
        "mask,delete,swap",
        "How --augment makes a text, comma-separated to take turns: mlm replaces words with a "
        "masked LM's candidates (TinyBERT; needs --augment-model), mask replaces words with "
        "[MASK], delete drops words, swap puts in a span of another text of the same class.",
    )
    augment_model: str | None = _opt(
        None,
        "--augment-method mlm: a *ForMaskedLM folder (a BERT-style model with its MLM head). "
        "None is packaged: the packaged MiniLM sentence encoder has no MLM head.",
    )
    augment_rate: float = _opt(
        0.15, "Share of a text's words each --augment method changes, in (0, 1)."
    )
    generate: int = _opt(
        0,
        "A causal LM writes this many texts per class from the class names (and "
        "--label-descriptions), the teacher labels them; the agreement of the teacher with the "
        "class each was written for is reported in transfer_text.json, and disagreeing texts "
        "are kept with the teacher's soft targets.",
    )
    generator_model: str | None = _opt(
        None,
        "--generate: the causal LM (folder, Hub id or .gguf) that writes the texts (default: "
        "the prompt teacher's own LLM).",
    )
    generate_temperature: float = _opt(0.8, "--generate: sampling temperature, > 0.")
    generate_top_p: float = _opt(0.95, "--generate: nucleus sampling's top-p, in (0, 1].")
    generate_max_new_tokens: int = _opt(64, "--generate: most new tokens per text.")
    generate_prompt: str | None = _opt(
        None,
        "--generate: the instruction (or, without a chat template, the text the LLM continues), "
        "with a {label} slot for the class's description (its --label-descriptions sentence, "
        "else its name split into words, lower-cased). Default: 'Write a short text about "
        "{label}.' as a chat turn, 'Here is a short text about {label}:' continued otherwise. "
        "Naming the domain helps, e.g. 'Write the first sentence of an encyclopedia article "
        "about a {label}.'",
    )
    generate_chat_template: str = _opt(
        "auto",
        "--generate: put the prompt in the tokenizer's chat template as a user turn; auto: when "
        "the tokenizer has one (an instruct model).",
        choices=["auto", "on", "off"],
    )

    def _check_transfer_text(self, alpha: float) -> None:
        _check(self.augment >= 0, f"--augment must be >= 0 (got {self.augment})")
        _check(self.generate >= 0, f"--generate must be >= 0 (got {self.generate})")
        methods = self.augment_methods()
        bad = [m for m in methods if m not in AUGMENT_METHODS]
        _check(
            bool(methods) and not bad,
            f"--augment-method must be a comma list of {', '.join(AUGMENT_METHODS)} "
            f"(got {self.augment_method!r})",
        )
        _check(
            0 < self.augment_rate < 1, f"--augment-rate must be in (0, 1) (got {self.augment_rate})"
        )
        if self.augment and "mlm" in methods:
            _check(
                bool(self.augment_model),
                "--augment-method mlm needs --augment-model, a *ForMaskedLM folder (none is "
                "packaged: the packaged MiniLM has no MLM head); or use mask, delete or swap",
            )
        _check(
            self.generate_temperature > 0,
            f"--generate-temperature must be > 0 (got {self.generate_temperature})",
        )
        _check(
            0 < self.generate_top_p <= 1,
            f"--generate-top-p must be in (0, 1] (got {self.generate_top_p})",
        )
        _check(
            self.generate_max_new_tokens >= 1,
            f"--generate-max-new-tokens must be >= 1 (got {self.generate_max_new_tokens})",
        )
        _check(
            self.generate_prompt is None or "{label}" in self.generate_prompt,
            "--generate-prompt needs a {label} slot, e.g. 'Here is a short text about {label}:'",
        )
        for flag, n in (("--augment", self.augment), ("--generate", self.generate)):
            _check(
                not (n and alpha <= 0),
                f"{flag} makes texts without labels, which --alpha 0 cannot learn from; "
                "pass --alpha > 0 (or drop the flag)",
            )

    def augment_methods(self) -> list[str]:
        return [m.strip().lower() for m in self.augment_method.split(",") if m.strip()]
