import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.training.losses import kd_loss


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(8, 5, generator=g, requires_grad=True)
    teacher = torch.randn(8, 5, generator=g) * 3
    labels = torch.randint(0, 5, (8,), generator=g)
    return student, teacher, labels


def manual_kl(student, teacher, T):
    """sum_c p_t (log p_t - log p_s), averaged over the batch, times T^2."""
    p_t = torch.softmax(teacher / T, -1)
    return (p_t * (torch.log(p_t) - torch.log_softmax(student / T, -1))).sum(-1).mean() * T * T


def test_alpha_zero_is_exactly_cross_entropy(batch):
    s, t, y = batch
    out = kd_loss(s, t, y, temperature=3.0, alpha=0.0)
    assert torch.equal(out.loss, F.cross_entropy(s, y))


def test_alpha_one_is_t_squared_kl(batch):
    s, t, y = batch
    for T in (1.0, 2.0, 4.0):
        out = kd_loss(s, t, y, temperature=T, alpha=1.0)
        assert torch.allclose(out.loss, manual_kl(s, t, T), atol=1e-6)


def test_mixture_weights(batch):
    s, t, y = batch
    out = kd_loss(s, t, y, temperature=3.0, alpha=0.7)
    expected = 0.7 * manual_kl(s, t, 3.0) + 0.3 * F.cross_entropy(s, y)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert torch.allclose(out.kl, manual_kl(s, t, 3.0), atol=1e-6)
    assert torch.allclose(out.ce, F.cross_entropy(s, y))


def test_identical_logits_give_zero_kl(batch):
    s, _, y = batch
    out = kd_loss(s, s.detach().clone(), y, temperature=2.5, alpha=1.0)
    assert out.loss.abs().item() < 1e-6


def test_t_squared_keeps_gradient_scale():
    """Hinton's argument: for high T the soft-target gradient shrinks as 1/T^2; the T^2 factor
    cancels it, so gradient norms stay within a small factor from T=2 to T=8."""
    g = torch.Generator().manual_seed(1)
    t = torch.randn(64, 10, generator=g)
    s0 = torch.randn(64, 10, generator=g)
    norms = []
    for T in (2.0, 8.0):
        s = s0.clone().requires_grad_(True)
        kd_loss(s, t, torch.zeros(64, dtype=torch.long), T, 1.0).loss.backward()
        norms.append(s.grad.norm().item())
    # Without T^2 the ratio would be about (8/2)^2 * ... = 16x smaller; with it, the same order.
    assert 0.25 < norms[1] / norms[0] < 4


def test_gradients_reach_only_the_student(batch):
    s, t, y = batch
    t = t.clone().requires_grad_(True)
    kd_loss(s, t, y, temperature=3.0, alpha=0.5).loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_bf16_inputs_are_computed_in_fp32(batch):
    s, t, y = batch
    full = kd_loss(s, t, y, 3.0, 0.7).loss
    half = kd_loss(s.bfloat16(), t.bfloat16(), y, 3.0, 0.7).loss
    assert half.dtype == torch.float32
    assert math.isclose(full.item(), half.item(), rel_tol=0.05)


# --------------------------------------------------------------------------- unlabelled rows


def old_kd_loss(student, teacher, labels, T, alpha):
    """The loss before unlabelled rows existed, verbatim: every row labelled must give this."""
    log_p_s = F.log_softmax(student.float() / T, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / T, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T**2
    ce = F.cross_entropy(student.float(), labels)
    if alpha == 0.0:
        return ce
    if alpha == 1.0:
        return kl
    return alpha * kl + (1.0 - alpha) * ce


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
def test_all_labelled_equals_the_old_loss_exactly(batch, alpha):
    s, t, y = batch
    out = kd_loss(s, t, y, temperature=2.0, alpha=alpha)
    assert torch.equal(out.loss, old_kd_loss(s, t, y, 2.0, alpha))
    assert (out.num_labeled, out.num_unlabeled) == (8, 0)
    assert torch.equal(out.labeled_loss, out.loss.detach()) and out.unlabeled_loss == 0


def per_row_kl(student, teacher, T):
    p_t = torch.softmax(teacher / T, -1)
    return (p_t * (torch.log(p_t) - torch.log_softmax(student / T, -1))).sum(-1) * T * T


def test_unlabelled_rows_get_the_kd_term_only(batch):
    """Rows 5..7 unlabelled: the loss is the mean of alpha*kl_i + (1-alpha)*ce_i over the
    labelled rows and kl_i over the unlabelled ones, all divided by the batch size."""
    s, t, y = batch
    y = y.clone()
    y[5:] = -100
    T, alpha = 3.0, 0.6
    kl = per_row_kl(s, t, T)
    ce = F.cross_entropy(s[:5], y[:5], reduction="none")
    expected = ((alpha * kl[:5] + (1 - alpha) * ce).sum() + kl[5:].sum()) / 8
    out = kd_loss(s, t, y, T, alpha)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert (out.num_labeled, out.num_unlabeled) == (5, 3)
    assert torch.allclose(out.kl, kl.mean(), atol=1e-6)
    assert torch.allclose(out.ce, ce.mean(), atol=1e-6)
    assert torch.allclose(out.labeled_loss, (alpha * kl[:5] + (1 - alpha) * ce).mean(), atol=1e-6)
    assert torch.allclose(out.unlabeled_loss, kl[5:].mean(), atol=1e-6)


@pytest.mark.parametrize("marker", [-1, -7, -100])
def test_an_unlabelled_rows_label_value_changes_nothing(batch, marker):
    s, t, y = batch
    y = y.clone()
    y[5:] = -100
    reference = kd_loss(s, t, y, 3.0, 0.5).loss
    y[6] = marker
    assert torch.equal(kd_loss(s, t, y, 3.0, 0.5).loss, reference)


def test_no_cross_entropy_gradient_reaches_unlabelled_rows(batch):
    """The gradient at an unlabelled row is exactly that of its kl_i / batch, whatever alpha > 0:
    no CE part; a labelled row's gradient does carry CE (it changes with alpha)."""
    s0, t, y = batch
    y = y.clone()
    y[5:] = -100
    grads = {}
    for alpha in (0.3, 0.5, 1.0):
        s = s0.detach().clone().requires_grad_(True)
        kd_loss(s, t, y, 2.0, alpha).loss.backward()
        grads[alpha] = s.grad
    s = s0.detach().clone().requires_grad_(True)
    (per_row_kl(s, t, 2.0)[5:].sum() / 8).backward()
    for g in grads.values():
        torch.testing.assert_close(g[5:], s.grad[5:], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(grads[0.3][:5], grads[1.0][:5])


def test_alpha_zero_is_cross_entropy_only_with_unlabelled_rows_too(batch):
    """alpha 0 is the cross-entropy-only baseline: unlabelled rows contribute nothing (no KD on
    any row), so the loss is the labelled rows' CE and their gradient is zero."""
    s, t, y = batch
    y = y.clone()
    y[5:] = -100
    out = kd_loss(s, t, y, 3.0, 0.0)
    assert torch.equal(out.loss, F.cross_entropy(s[:5], y[:5]))
    out.loss.backward()
    assert torch.count_nonzero(s.grad[5:]) == 0 and torch.count_nonzero(s.grad[:5]) > 0
    # A batch of unlabelled rows alone teaches nothing, and still backpropagates.
    alone = kd_loss(s, t, torch.full((8,), -100), 3.0, 0.0)
    assert alone.loss == 0 and alone.loss.requires_grad


def test_a_batch_without_labels_is_pure_kd(batch):
    s, t, _ = batch
    none = torch.full((8,), -100)
    out = kd_loss(s, t, none, 3.0, 0.4)
    assert torch.allclose(out.loss, manual_kl(s, t, 3.0), atol=1e-6)
    assert out.ce == 0 and out.labeled_loss == 0 and out.num_labeled == 0
    assert torch.isfinite(out.loss)


def test_row_weights_multiply_each_rows_kd_term(batch):
    """--round-targets weighted: loss = mean_i of w_i * kl_i (unlabelled rows) and
    w_i * alpha * kl_i + (1 - alpha) * ce_i (labelled ones), by hand on a toy batch."""
    s, t, y = batch
    y = y.clone()
    y[5:] = -100
    T, alpha = 2.0, 0.6
    w = torch.tensor([0.5, 1.5, 1.0, 0.2, 1.8, 0.4, 1.6, 1.0])
    kl = per_row_kl(s, t, T)
    ce = F.cross_entropy(s[:5], y[:5], reduction="none")
    expected = (
        (alpha * (w[:5] * kl[:5]).mean() + (1 - alpha) * ce.mean()) * 5 + (w[5:] * kl[5:]).sum()
    ) / 8
    out = kd_loss(s, t, y, T, alpha, w)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert torch.allclose(out.unlabeled_loss, (w[5:] * kl[5:]).mean(), atol=1e-6)
    # Unlabelled rows only (the no-label case): the weighted mean of the rows' KD terms.
    out = kd_loss(s, t, torch.full_like(y, -100), T, 1.0, w)
    assert torch.allclose(out.loss, (w * kl).mean(), atol=1e-6)


def test_unit_row_weights_give_the_unweighted_loss(batch):
    s, t, y = batch
    for alpha in (0.0, 0.5, 1.0):
        plain = kd_loss(s, t, y, 3.0, alpha)
        ones = kd_loss(s, t, y, 3.0, alpha, torch.ones(len(y)))
        assert torch.allclose(plain.loss, ones.loss, atol=1e-6)
