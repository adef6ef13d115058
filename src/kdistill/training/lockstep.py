"""lockstep: a sweep's students trained together, their weights stacked, one launch per operator.

Every point of a T x alpha grid trains the same student from the same start on the same batches;
only the loss's T and alpha differ. One after another, a small student repeats the same tiny
kernels once per point (AdamW, zeroing, clipping, small matmuls) and is bound by per-operator
overhead, not arithmetic. Here the K students' weights are stacked (torch.func.stack_module_state),
the forward is vmapped over the stack (torch.func.functional_call) and T and alpha are (K,)
tensors:

    for batch in data:                                     # the same batch for every point
        teacher_logits = cache[batch.rows]                 # (batch, C), computed once
        logits = vmap(student)(stacked_weights, batch)     # (K, batch, C)
        loss = stacked_kd_loss(logits, teacher_logits, labels, T, alpha)    # (K,)
        loss.sum().backward()                              # point k's gradient is its own loss's
        clip_per_point(grads, 1.0)                         # each point's norm over its own slice
        optimizer.step()                                   # AdamW is elementwise: stacking is exact

Each point stays the run it would be alone: the same initial weights, batches, clipping and
learning rate, and the same dropout masks (vmap's randomness="same" draws the single run's mask
for every point of a seed). How equal: in fp32 (--mixed-precision no) its losses and accuracies
match its run alone within 1e-5 and its weights within 5e-5, dropout on or off, under the
default schedule. In bf16 every layer computes in the run alone's dtype, but the batched
matmuls and attention round in another order, and those one-ulp differences grow through
training as any perturbation does: the points are runs of the same recipe, not copies.

Several seeds are cohorts of one stack: each has its own data order, teacher logits and
random-number stream (restored around its forward), and all of them share the optimiser step.
sweep.py writes each point's run folder from the results.
"""

from __future__ import annotations

import copy
import logging
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from kdistill.config import SweepConfig

logger = logging.getLogger(__name__)

# Head room left for what the estimate does not count (the teacher, the data, the allocator).
MEMORY_SHARE = 0.7


class CannotStack(Exception):  # noqa: N818 (a reason, not an error: the sweep falls back)
    """Why these students cannot train in lockstep; the sweep then trains them in turn."""


def unsupported_reason(config: SweepConfig, num_processes: int = 1) -> str | None:
    """The options lockstep does not carry over from distill, or None when it can run."""
    reasons = [
        (config.teacher_cache == "off", "--teacher-cache off runs the teacher on every batch"),
        (config.gradient_accumulation_steps > 1, "--gradient-accumulation-steps > 1"),
        (config.gradient_checkpointing == "on", "--gradient-checkpointing on"),
        (config.compile, "--compile"),
        (config.student_lora > 0, "--student-lora"),
        (config.save_steps > 0, "--save-steps (mid-epoch checkpoints)"),
        (config.report_to != "none", f"--report-to {config.report_to}"),
        (num_processes > 1, f"{num_processes} processes (accelerate launch)"),
        (config.uses_intermediate(), "--hidden-loss/--attention-loss (an online teacher pass)"),
        (config.teacher_calibration != "off", "--teacher-calibration auto"),
        (config.head_learning_rate_scale != 1.0, "--head-learning-rate-scale"),
        (config.augment > 0 or config.generate > 0, "--augment/--generate (made transfer text)"),
    ]
    found = [why for bad, why in reasons if bad]
    return ", ".join(found) if found else None


# --------------------------------------------------------------------------- memory


def bytes_per_student(model_config: Any, n_params: int, batch_size: int, max_length: int) -> int:
    """Training state and activations of one student, in bytes.

    State: fp32 weights, gradients and two AdamW moments, 16 bytes per parameter. Activations per
    layer: batch * seq * (34 * hidden + 5 * heads * seq) bytes at 16 bits (Korthikanti et al.
    2022), doubled for fp32."""
    hidden = getattr(model_config, "hidden_size", 0) or 0
    layers = getattr(model_config, "num_hidden_layers", 0) or 0
    heads = getattr(model_config, "num_attention_heads", 1) or 1
    per_layer = batch_size * max_length * (34 * hidden + 5 * heads * max_length)
    return 16 * n_params + 2 * layers * per_layer


def available_bytes(device: str) -> int:
    """Free accelerator memory on CUDA, available RAM elsewhere."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    import psutil

    return psutil.virtual_memory().available


def students_that_fit(config: SweepConfig, num_labels: int, device: str) -> tuple[int, int]:
    """(how many students fit at once, bytes each), from the student's config alone: its weights
    are built on the meta device, so nothing is loaded (layer cuts are not counted: an
    overestimate)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model_config = AutoConfig.from_pretrained(config.student_model, num_labels=num_labels)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    each = bytes_per_student(model_config, n_params, config.batch_size, config.max_length)
    return int(MEMORY_SHARE * available_bytes(device) // max(each, 1)), each


def keep_freed_memory() -> None:
    """Keep large freed blocks in the process (glibc only; elsewhere nothing to do).

    glibc hands allocations over 32 MiB straight to mmap and back to the kernel on free, so
    every step's dense word-embedding gradient over the stack (K x 15.6 MB for bert-tiny: 140 MB
    at K = 9) arrives as fresh pages, each faulted in on first write. Measured at K = 9 on two
    cores: the step's zero-fill took 15x longer than the same fill of reused memory, and the
    whole step 0.94 s instead of 0.07 s. Raising the thresholds lets the allocator reuse them."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, 1 << 31)
    except (OSError, AttributeError):  # not glibc (musl): its allocator decides
        pass


# --------------------------------------------------------------------------- the stacked model


class _Lookup(torch.nn.Module):
    """Stands in for the word embedding inside the vmapped forward and returns the rows looked up
    outside it. Under vmap an nn.Embedding over stacked weights falls back to a loop over the
    points, each building a dense vocabulary-sized gradient (measured: 3x slower than running the
    points in turn); one index_select over the stack does it in one pass. The model still gets
    its input_ids (a decoder classifier finds each row's last token from them)."""

    value: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.value


def _linear_as_autocast(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear's forward, in the precision autocast gives it outside vmap.

    Inside vmap, autocast runs the matmul in bf16 but adds the bias in fp32 and returns fp32
    (pytorch#192617), so a stacked bf16 student kept fp32 activations between layers where its
    run alone rounds each Linear's output to bf16: a more precise, different run. Casting the
    input, weight and bias here gives every Linear the single run's dtype. What still differs
    is rounding: vmap's matmul rounds before the bias is added, the single fused kernel after,
    and the batched matmuls and attention sum in their own order; in bf16 those one-ulp
    differences grow through training as any perturbation does (tests/test_lockstep.py)."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return torch.nn.functional.linear(x, self.weight, self.bias)
    dtype = torch.get_autocast_dtype(device)
    bias = None if self.bias is None else self.bias.to(dtype)
    return torch.nn.functional.linear(x.to(dtype), self.weight.to(dtype), bias)


@dataclass
class Slice:
    """One cohort's share of the stack for one step: its weights, buffers, looked-up word
    embeddings (k, batch, seq, hidden) and the batch."""

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    embeds: torch.Tensor
    batch: dict[str, torch.Tensor]


def _split_dict(
    tensors: dict[str, torch.Tensor], sizes: list[int]
) -> list[dict[str, torch.Tensor]]:
    pieces = {n: t.split(sizes) for n, t in tensors.items()}
    return [{n: pieces[n][c] for n in tensors} for c in range(len(sizes))]


class StackedStudents:
    """K copies of one architecture as stacked (K, ...) parameters, called as one model."""

    def __init__(self, students: list[PreTrainedModel]) -> None:
        from torch.func import stack_module_state

        template = students[0]
        embedding = template.get_input_embeddings()
        if type(embedding) is not torch.nn.Embedding or embedding.max_norm is not None:
            raise CannotStack(f"its input embedding is a {type(embedding).__name__}")
        names = [
            n for n, p in template.named_parameters(remove_duplicate=False) if p is embedding.weight
        ]
        if len(names) != 1:
            raise CannotStack("its word embedding is tied to another weight")
        if any(not p.is_floating_point() for p in template.parameters()):
            raise CannotStack("it has non-float (quantised) weights")
        self.embedding_name, self.padding_idx = names[0], embedding.padding_idx
        self.params, self.buffers = stack_module_state(students)
        self.size = len(students)
        self.template = copy.deepcopy(template)  # holds one point's weights for saving
        self.base = copy.deepcopy(template).to("meta")
        self.lookup = _Lookup()
        self.base.set_input_embeddings(self.lookup)
        for module in self.base.modules():
            if type(module) is torch.nn.Linear:
                module.forward = types.MethodType(_linear_as_autocast, module)

    def train(self, mode: bool = True) -> None:
        # The flag by hand, not `self.base.train(mode)`: from transformers 5.25, a model's
        # train() also re-kernelizes it (hub kernels, when the `kernels` package is present),
        # which fails on the meta-device shell and has nothing to do there.
        for module in self.base.modules():
            module.training = mode

    def eval(self) -> None:
        self.train(False)

    def parameters(self) -> dict[str, torch.Tensor]:
        return self.params

    def split(self, batches: list[dict[str, torch.Tensor]], sizes: list[int]) -> list[Slice]:
        """Each cohort's share of the stack for one step: `sizes[c]` students on `batches[c]`.

        The word embedding rows of every cohort come from one index_select over the flattened
        (K * vocab, hidden) stack, so its backward fills one dense gradient, as K single runs
        would; the other weights are split once (one copy back in the backward), not sliced
        per cohort (each slice's backward would fill a full-size zero gradient)."""
        weight = self.params[self.embedding_name]  # (K, vocab, hidden)
        vocab = weight.shape[1]
        rows, start = [], 0
        for batch, k in zip(batches, sizes, strict=True):
            ids = batch["student_input_ids"]
            offsets = torch.arange(start, start + k, device=ids.device) * vocab
            rows.append((ids.reshape(1, -1) + offsets[:, None]).reshape(-1))
            start += k
        flat = weight.reshape(-1, weight.shape[-1]).index_select(0, torch.cat(rows))
        parts = flat.split([r.numel() for r in rows])
        params = {n: p for n, p in self.params.items() if n != self.embedding_name}
        if len(sizes) == 1:  # one cohort: the whole stack, no split to copy back
            chunks, buffers = [params], [self.buffers]
        else:
            chunks = _split_dict(params, sizes)
            buffers = _split_dict(self.buffers, sizes)
        out = []
        for batch, k, part, p, b in zip(batches, sizes, parts, chunks, buffers, strict=True):
            ids = batch["student_input_ids"]
            embeds = part.view(k, *ids.shape, -1)  # (k, batch, seq, hidden)
            if self.padding_idx is not None:  # nn.Embedding gives the padding row no gradient
                pad = (ids == self.padding_idx).unsqueeze(-1)
                embeds = torch.where(pad, embeds.detach(), embeds)
            out.append(Slice(p, b, embeds, batch))
        return out

    def logits(self, part: Slice) -> torch.Tensor:
        """One cohort's students on its batch: (k, batch, num_labels)."""
        from torch.func import functional_call, vmap

        inputs = {
            "input_ids": part.batch["student_input_ids"],
            "attention_mask": part.batch["student_attention_mask"],
        }

        def one(
            p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], e: torch.Tensor
        ) -> torch.Tensor:
            self.lookup.value = e
            return functional_call(self.base, (p, b), (), inputs).logits

        # randomness="same": every point of the cohort draws the dropout mask its single run
        # would draw, from the same generator in the same order.
        return vmap(one, randomness="same")(part.params, part.buffers, part.embeds)

    @torch.no_grad()
    def eval_logits(self, batch: dict[str, torch.Tensor], lo: int, hi: int) -> torch.Tensor:
        """Students lo..hi-1 on a validation batch, rows first (batch, k, num_labels), as
        collect_logits gathers rows. Without gradients, slicing the stack copies nothing."""
        ids = batch["student_input_ids"]
        weight = self.params[self.embedding_name][lo:hi]  # (k, vocab, hidden)
        embeds = weight.index_select(1, ids.reshape(-1)).view(hi - lo, *ids.shape, -1)
        params = {n: p[lo:hi] for n, p in self.params.items() if n != self.embedding_name}
        buffers = {n: b[lo:hi] for n, b in self.buffers.items()}
        return self.logits(Slice(params, buffers, embeds, batch)).transpose(0, 1)

    def export(self, k: int) -> PreTrainedModel:
        """A model holding point k's weights (the same object each call: save it at once)."""
        with torch.no_grad():
            for name, p in self.template.named_parameters():
                p.copy_(self.params[name][k])
            for name, b in self.template.named_buffers():
                if name in self.buffers:
                    b.copy_(self.buffers[name][k])
        return self.template


def stacked_optimizer(
    stack: StackedStudents, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """distill.make_optimizer over the stack: AdamW, no decay on biases and norm weights (by the
    unstacked shape), fused where the device has the kernel. Elementwise, so point k's slice
    takes exactly the step its single run would."""
    decay, no_decay = [], []
    for name, p in stack.params.items():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim - 1 < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    device = next(iter(stack.params.values())).device.type
    return torch.optim.AdamW(groups, lr=lr, fused=device in ("cpu", "cuda") or None)


def clip_per_point(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ for each point over its own slice of every stacked gradient, as its single
    run clips: scale by max_norm / (norm + 1e-6) where that is below 1. Returns the (K,) norms."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, dim=0)  # (K,)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.ndim - 1)))
    return total


# --------------------------------------------------------------------------- the loss


@dataclass
class StackedLoss:
    """kdistill.training.losses.KDLoss with a (K,) tensor per part, one entry per point."""

    loss: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor
    labeled_loss: torch.Tensor
    unlabeled_loss: torch.Tensor
    num_labeled: int
    num_unlabeled: int


def stacked_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: torch.Tensor,
    alpha: torch.Tensor,
) -> StackedLoss:
    """losses.kd_loss for K points at once, each with its own T and alpha:

        loss_k = mean over rows of: alpha_k * T_k^2 * KL(p_t || p_s) + (1 - alpha_k) * CE
                 (a labelled row), T_k^2 * KL (an unlabelled row, label < 0);
        alpha_k = 0: the mean CE over the labelled rows only (unlabelled rows give nothing)

    with p = softmax(logits / T_k). alpha 0 and 1 select one term exactly, as kd_loss does.
    tests/test_lockstep.py holds it equal to kd_loss point by point.

    Shapes: student_logits (K, batch, C), teacher_logits (batch, C) shared by the points or
    (K, batch, C), labels (batch,), temperature and alpha (K,). Computed in float32.
    """
    s = student_logits.float()
    k, n = s.shape[0], s.shape[1]
    t = teacher_logits.detach().float().expand_as(s)
    temp = temperature.view(k, 1, 1)
    log_p_s = torch.log_softmax(s / temp, dim=-1)
    log_p_t = torch.log_softmax(t / temp, dim=-1)
    kl_rows = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * temp.view(k, 1) ** 2  # (K, batch)
    labeled = labels >= 0
    n_l = int(labeled.sum())
    n_u = n - n_l
    ce_rows = -torch.log_softmax(s, dim=-1).gather(-1, labels.clamp(min=0).expand(k, n)[..., None])
    lab, unl = labeled.float(), (~labeled).float()
    kl = kl_rows.mean(1)
    kl_lab = (kl_rows * lab).sum(1) / max(n_l, 1)
    kl_unl = (kl_rows * unl).sum(1) / max(n_u, 1)
    ce = (ce_rows.squeeze(-1) * lab).sum(1) / max(n_l, 1)
    mixed = alpha * kl_lab + (1.0 - alpha) * ce
    labeled_loss = torch.where(alpha == 0.0, ce, torch.where(alpha == 1.0, kl_lab, mixed))
    loss = (n_l * labeled_loss + n_u * kl_unl) / n
    if n_u == 0:
        loss = labeled_loss
    elif n_l == 0:
        loss = kl_unl
    # alpha 0 is cross-entropy only, as in kd_loss: unlabelled rows have nothing to give.
    ce_only = ce if n_l else s.sum((1, 2)) * 0.0
    loss = torch.where(alpha == 0.0, ce_only, loss)
    return StackedLoss(
        loss, kl.detach(), ce.detach(), labeled_loss.detach(), kl_unl.detach(), n_l, n_u
    )
