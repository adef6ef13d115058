import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import kd_loss


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
