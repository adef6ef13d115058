"""What the intermediate-layer losses read from the two models, and one training step's loss.

The student's forward pass asks for its hidden states (`output_hidden_states`) and, for the
attention-relation loss, forward hooks keep the outputs of one block's query, key and value
projections (the Linear layers, before the heads split them and before any rotary embedding).
The teacher runs the same way under no_grad. `IntermediateLoss.loss` then hands both to
`distill_loss`, the one loss function.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from kdistill.errors import KdistillError
from kdistill.students.vocab import source_ids
from kdistill.training.layer_losses import HiddenProjection
from kdistill.training.layer_map import LayerPair, format_layer_map, resolve_layer_map
from kdistill.training.losses import DistillLoss, IntermediateStates, distill_loss

if TYPE_CHECKING:
    from kdistill.config import DistillConfig
from typing import TYPE_CHECKING

from kdistill.config import DistillConfig

if TYPE_CHECKING:
    from datasets import Dataset

    from kdistill.teachers.classifier import Teacher

logger = logging.getLogger(__name__)

# Names of a block's query/key/value Linear layers, by family.
QKV_NAMES = (
    (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
    ),  # BERT, RoBERTa, ELECTRA
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),  # Qwen2/3, Llama, Mistral, Gemma
    ("attention.q_lin", "attention.k_lin", "attention.v_lin"),  # DistilBERT
)


def _config_int(model: Any, *names: str) -> int:
    for name in names:
        value = getattr(model.config, name, None)
        if isinstance(value, int):
            return value
    raise KdistillError(f"{type(model).__name__}: its config gives no {names[0]}")


def hidden_width(model: Any) -> int:
    return _config_int(model, "hidden_size", "dim", "d_model")


def attention_heads(model: Any) -> int:
    return _config_int(model, "num_attention_heads", "n_heads")


def num_blocks(model: Any) -> int:
    from kdistill.students.layers import layer_stack

    return len(layer_stack(model)[0])


def qkv_modules(model: Any, block: int, flag: str = "--attention-loss") -> list[torch.nn.Module]:
    """The query, key and value Linear layers of transformer block `block` (from 0)."""
    from kdistill.students.layers import layer_stack

    layer = layer_stack(model)[0][block]
    for names in QKV_NAMES:
        try:
            modules = [layer.get_submodule(n) for n in names]
        except AttributeError:
            continue
        if all(isinstance(m, torch.nn.Linear) for m in modules):
            return modules
    raise KdistillError(
        f"{flag} relation: cannot find the query/key/value layers of a "
        f"{model.config.model_type} block ({type(layer).__name__}); supported: BERT-like "
        "(attention.self.query) and Qwen2/Llama-like (self_attn.q_proj) models"
    )


class QKVRecorder:
    """Forward hooks that keep the latest outputs of a block's query, key and value layers."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.outputs: list[torch.Tensor | None] = [None] * len(modules)
        self.handles = [m.register_forward_hook(self._keep(i)) for i, m in enumerate(modules)]

    def _keep(self, i: int) -> Any:
        def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self.outputs[i] = output

        return hook

    def take(self) -> tuple[torch.Tensor, ...]:
        """The outputs of the last forward pass (each (batch, seq, width)), forgotten here."""
        outputs = tuple(o for o in self.outputs if o is not None)
        self.outputs = [None] * len(self.outputs)
        if len(outputs) != len(self.handles):
            raise RuntimeError("the attention hooks did not fire in the forward pass")
        return outputs

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def tokens_agree(student_ids: list[list[int]], teacher_ids: list[list[int]]) -> bool:
    """Whether both models see the same tokens for every row (the same tokenizer, in effect):
    then hidden states compare position by position, else only as mean-pooled vectors."""
    return len(student_ids) == len(teacher_ids) and all(
        s == t for s, t in zip(student_ids, teacher_ids, strict=True)
    )


class IntermediateLoss:
    """The run's intermediate losses: the resolved layer map, the projection (trained with the
    student, owned by the run, never saved with it), the attention hooks, and the step's loss."""

    def __init__(
        self,
        config: DistillConfig,
        student: Any,
        teacher: Any,
        token_level: bool,
        cut_from: list[int] | None = None,
        source_blocks: int | None = None,
    ) -> None:
        self.kind = config.hidden_loss if config.hidden_weight > 0 else "none"
        self.hidden_weight = config.hidden_weight if self.kind != "none" else 0.0
        relation = config.attention_loss == "relation" and config.attention_weight > 0
        self.attention_weight = config.attention_weight if relation else 0.0
        self.token_level = token_level
        # T_cal (--teacher-calibration): the online pass's logits are divided by it, as the
        # cached ones are.
        self.calibration = 1.0
        s_blocks, t_blocks = num_blocks(student), num_blocks(teacher)
        self.pairs: list[LayerPair] = resolve_layer_map(
            config.layer_map, s_blocks, t_blocks, cut_from, source_blocks
        )
        self.projection = HiddenProjection(
            hidden_width(student), hidden_width(teacher), len(self.pairs)
        )
        self.relation_pair: LayerPair | None = None
        self.relation_heads = 1
        self._recorders: tuple[QKVRecorder, QKVRecorder] | None = None
        if relation:
            self._setup_relation(student, teacher)

    def _setup_relation(self, student: Any, teacher: Any) -> None:
        if not self.token_level:
            raise KdistillError(
                "--attention-loss relation compares token-by-token relations, and the student and "
                "teacher tokenise the texts differently; use the teacher's tokenizer "
                "(--student-tokenizer) or drop --attention-loss"
            )
        blocks = [p for p in self.pairs if p[0] > 0 and p[1] > 0]
        if not blocks:
            raise KdistillError(
                "--attention-loss relation needs a block pair in --layer-map, not only emb:emb"
            )
        self.relation_pair = blocks[-1]
        s_mods = qkv_modules(student, self.relation_pair[0] - 1)
        t_mods = qkv_modules(teacher, self.relation_pair[1] - 1)
        widths = [m.out_features for m in s_mods + t_mods]
        self.relation_heads = math.gcd(attention_heads(student), attention_heads(teacher), *widths)
        self._recorders = (QKVRecorder(s_mods), QKVRecorder(t_mods))

    def describe(self) -> dict[str, Any]:
        """config.json's record of the resolved losses."""
        trained = sum(p.numel() for p in self.projection.parameters())
        return {
            "hidden_loss": self.kind,
            "hidden_weight": self.hidden_weight,
            "layer_map": format_layer_map(self.pairs),
            "hidden_over": "tokens" if self.token_level else "mean-pooled states",
            "projection_parameters": trained,
            "attention_loss": "relation" if self.attention_weight else "none",
            "attention_weight": self.attention_weight,
            "relation_layers": (
                format_layer_map([self.relation_pair]) if self.relation_pair else None
            ),
            "relation_heads": self.relation_heads if self.attention_weight else None,
        }

    def _hidden(self, states: tuple[torch.Tensor, ...], side: int) -> list[torch.Tensor]:
        if not self.hidden_weight:
            return []
        return [states[pair[side]] for pair in self.pairs]

    def teacher_outputs(
        self, teacher: Any, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor], tuple[torch.Tensor, ...] | None]:
        """(logits in the data set's class order, mapped hidden states, q/k/v or None)."""
        with torch.no_grad():
            out = teacher.model(
                input_ids=batch["teacher_input_ids"],
                attention_mask=batch["teacher_attention_mask"],
                output_hidden_states=bool(self.hidden_weight),
            )
        logits = out.logits.index_select(-1, teacher.columns.to(out.logits.device))
        if self.calibration != 1.0:
            logits = logits / self.calibration
        qkv = self._recorders[1].take() if self._recorders else None
        return logits, self._hidden(out.hidden_states or (), 1), qkv

    def loss(
        self,
        student: Any,
        teacher: Any,
        batch: dict[str, torch.Tensor],
        temperature: float,
        alpha: float,
        cached_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DistillLoss]:
        """One batch: both forward passes, then distill_loss. `cached_logits` (the logit
        cache's rows, already calibrated) stand in for the online pass's logits when given.
        Returns (student logits (batch, num_labels), the loss and its parts)."""
        online_logits, t_hidden, t_qkv = self.teacher_outputs(teacher, batch)
        out = student(
            input_ids=batch["student_input_ids"],
            attention_mask=batch["student_attention_mask"],
            output_hidden_states=bool(self.hidden_weight),
        )
        s_qkv = self._recorders[0].take() if self._recorders else None
        states = IntermediateStates(
            self._hidden(out.hidden_states or (), 0),
            t_hidden,
            s_qkv,
            t_qkv,
            batch["student_attention_mask"],
            batch["teacher_attention_mask"],
            self.token_level,
        )
        parts = distill_loss(
            out.logits,
            online_logits if cached_logits is None else cached_logits,
            batch["labels"],
            temperature,
            alpha,
            states,
            self.kind,
            self.hidden_weight,
            self.projection,
            self.attention_weight,
            self.relation_heads,
        )
        return out.logits, parts

    def bind(
        self,
        student: Any,
        teacher: Any,
        cached_logits: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None,
    ) -> None:
        """The prepared (wrapped) student, the teacher, and where the loop's logits come from:
        the cache's rows, or (None) the online pass this loss makes anyway."""
        self._bound = (student, teacher, cached_logits)

    def __call__(
        self, batch: dict[str, torch.Tensor], temperature: float, alpha: float
    ) -> tuple[torch.Tensor, DistillLoss]:
        """The training loop's step: `loss` with the bound models."""
        student, teacher, cached = self._bound
        logits = cached(batch) if cached is not None else None
        return self.loss(student, teacher, batch, temperature, alpha, logits)

    def parameters(self) -> list[torch.nn.Parameter]:
        """What trains besides the student (the projection): optimised and clipped with it."""
        return list(self.projection.parameters())

    def close(self) -> None:
        for r in self._recorders or ():
            r.remove()


def cut_layers(config: DistillConfig) -> tuple[list[int] | None, int | None]:
    """(the blocks a --student-layers/--student-num-layers student was cut from, how many the
    model had), or (None, None) for a student used whole."""
    if config.student_layers is None and config.student_num_layers is None:
        return None, None
    from transformers import AutoConfig

    from kdistill.data.model_files import hf_kwargs
    from kdistill.data.model_paths import check_model_path
    from kdistill.students.layers import resolve_layers

    source = AutoConfig.from_pretrained(
        check_model_path(config.student_model, "--student-model"), **hf_kwargs()
    )
    total = getattr(source, "num_hidden_layers", None) or getattr(source, "n_layers", None)
    return resolve_layers(config.student_layers, config.student_num_layers, total), total


def setup_intermediate(
    config: DistillConfig,
    student: Any,
    teacher: Any,
    train_tok: Any,
    kept_ids: Sequence[int] | None = None,
) -> IntermediateLoss | None:
    """The run's IntermediateLoss, or None when the loss reads logits only. `train_tok` holds
    both models' token ids; they decide whether hidden states compare token by token. A student
    with a trimmed vocabulary (`kept_ids`: new id -> full-vocabulary id) is compared through the
    full vocabulary's ids, which a teacher sharing its tokenizer still uses."""
    if not config.uses_intermediate():
        return None
    if getattr(teacher, "mode", "classifier") != "classifier":
        raise KdistillError(
            "--hidden-loss and --attention-loss read a classifier teacher's layers; a prompt "
            "teacher's hidden states describe the prompt, not the text: drop them, or fine-tune "
            "the teacher (finetune-teacher)"
        )
    ids = train_tok.select_columns(["student_input_ids", "teacher_input_ids"])[:]
    student_ids = source_ids(ids["student_input_ids"], kept_ids)
    token_level = tokens_agree(student_ids, ids["teacher_input_ids"])
    cut_from, source_blocks = cut_layers(config)
    inter = IntermediateLoss(config, student, teacher.model, token_level, cut_from, source_blocks)
    record = inter.describe()
    logger.info(
        "intermediate losses: hidden %s (weight %g) on layers %s over %s; attention %s%s",
        record["hidden_loss"],
        record["hidden_weight"],
        record["layer_map"],
        record["hidden_over"],
        record["attention_loss"],
        f" on {record['relation_layers']}, {record['relation_heads']} relation heads"
        if record["relation_layers"]
        else "",
    )
    if record["projection_parameters"]:
        logger.info(
            "hidden-state projection: %d parameters, trained with the student and not saved with "
            "it (the saved student is a plain classifier)",
            record["projection_parameters"],
        )
    return inter


def setup_intermediate_losses(
    config: DistillConfig,
    student: torch.nn.Module,
    teacher: Teacher | None,
    train_tok: Dataset,
    kept_ids: Sequence[int] | None = None,
) -> IntermediateLoss | None:
    """--hidden-loss / --attention-loss: the layer map, projection and hooks; None when the
    loss reads logits only (or there is no teacher, alpha 0)."""
    if teacher is None or not config.uses_intermediate():
        return None

    return setup_intermediate(config, student, teacher, train_tok, kept_ids)


def bind_intermediate(
    intermediate: IntermediateLoss | None,
    config: DistillConfig,
    student: torch.nn.Module,
    teacher: Teacher | None,
    teacher_targets: Any,
    t_cal: float,
) -> None:
    """Hidden-state and relation losses: their step makes the online teacher pass (the logits
    may still come from the cache)."""
    if intermediate is None:
        return
    intermediate.calibration = t_cal
    cached = config.teacher_cache != "off"
    intermediate.bind(student, teacher, teacher_targets if cached else None)
