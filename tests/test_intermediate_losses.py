"""The intermediate-layer terms of distill_loss, checked analytically: identical states give
0, projections bridge widths, padding contributes nothing, weights 0 give kd_loss exactly."""

import pytest
import torch

from kdistill.training.layer_losses import (
    HiddenProjection,
    attention_relation_loss,
    hidden_state_loss,
)
from kdistill.training.losses import IntermediateStates, distill_loss, kd_loss


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mask(lengths: list[int], seq: int) -> torch.Tensor:
    return (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()


@pytest.mark.parametrize("kind", ["mse", "cosine"])
@pytest.mark.parametrize("token_level", [True, False])
def test_identical_states_give_zero(kind, token_level):
    h = torch.randn(3, 7, 16, generator=_g())
    mask = _mask([7, 4, 2], 7)
    proj = HiddenProjection(16, 16, 2)
    loss = hidden_state_loss([h, h * 2], [h, h * 2], mask, mask, proj, kind, token_level)
    assert loss.abs().item() < 1e-6
    qkv = tuple(torch.randn(3, 7, 16, generator=_g(i)) for i in range(3))
    assert attention_relation_loss(qkv, qkv, mask, heads=4).abs().item() < 1e-6


def test_mse_and_cosine_values():
    """Known values: s = 0, t = 1 everywhere: mse 1; s = -t: cosine distance 2."""
    mask = _mask([3, 1], 3)
    proj = HiddenProjection(4, 4, 1)
    ones = torch.ones(2, 3, 4)
    assert hidden_state_loss([ones * 0], [ones], mask, mask, proj, "mse", True).item() == 1.0
    t = torch.randn(2, 3, 4, generator=_g())
    loss = hidden_state_loss([-t], [t], mask, mask, proj, "cosine", True)
    assert loss.item() == pytest.approx(2.0, abs=1e-6)


def test_projection_handles_widths_and_learns():
    """Student width 8, teacher 32: a Linear per pair, and gradients reach it and the student."""
    s = torch.randn(2, 5, 8, generator=_g(), requires_grad=True)
    t = torch.randn(2, 5, 32, generator=_g(1))
    mask = _mask([5, 3], 5)
    proj = HiddenProjection(8, 32, 1)
    assert isinstance(proj.maps[0], torch.nn.Linear)
    for kind in ("mse", "cosine"):
        proj.zero_grad()
        s.grad = None
        hidden_state_loss([s], [t], mask, mask, proj, kind, True).backward()
        assert proj.maps[0].weight.grad is not None and proj.maps[0].weight.grad.abs().sum() > 0
        assert s.grad is not None and s.grad.abs().sum() > 0
    # Equal widths: no parameters at all (nothing to train, nothing to drop).
    assert not list(HiddenProjection(8, 8, 3).parameters())


def test_projection_can_fit_a_linear_teacher():
    """A teacher that is a linear map of the student is matched exactly by training the
    projection alone: the loss falls to near 0."""
    s = torch.randn(4, 6, 8, generator=_g())
    w = torch.randn(8, 12, generator=_g(1))
    t = s @ w
    mask = _mask([6, 6, 3, 5], 6)
    proj = HiddenProjection(8, 12, 1)
    opt = torch.optim.Adam(proj.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        loss = hidden_state_loss([s], [t], mask, mask, proj, "mse", True)
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3


@pytest.mark.parametrize("kind", ["mse", "cosine"])
@pytest.mark.parametrize("token_level", [True, False])
def test_padding_contributes_nothing(kind, token_level):
    s = torch.randn(3, 6, 8, generator=_g())
    t = torch.randn(3, 6, 8, generator=_g(1))
    mask = _mask([6, 3, 1], 6)
    proj = HiddenProjection(8, 8, 1)
    before = hidden_state_loss([s], [t], mask, mask, proj, kind, token_level)
    pad = ~mask.bool()
    s2 = s.masked_fill(pad[..., None], 1e3)
    t2 = t.masked_fill(pad[..., None], -7.0)
    after = hidden_state_loss([s2], [t2], mask, mask, proj, kind, token_level)
    assert torch.allclose(before, after, atol=1e-6)


def test_mean_pooling_allows_different_lengths():
    """Different tokenizers: different sequence lengths and masks, compared mean-pooled."""
    s = torch.randn(2, 5, 8, generator=_g())
    t = torch.randn(2, 9, 16, generator=_g(1))
    loss = hidden_state_loss(
        [s], [t], _mask([5, 2], 5), _mask([9, 4], 9), HiddenProjection(8, 16, 1), "mse", False
    )
    assert torch.isfinite(loss) and loss > 0


def test_relation_padding_contributes_nothing():
    mask = _mask([6, 4, 2], 6)
    s = tuple(torch.randn(3, 6, 8, generator=_g(i)) for i in range(3))
    t = tuple(torch.randn(3, 6, 12, generator=_g(10 + i)) for i in range(3))
    before = attention_relation_loss(s, t, mask, heads=2)
    pad = ~mask.bool()[..., None]
    s2 = tuple(x.masked_fill(pad, 50.0) for x in s)
    t2 = tuple(x.masked_fill(pad, -3.0) for x in t)
    after = attention_relation_loss(s2, t2, mask, heads=2)
    assert torch.isfinite(before) and before > 0
    assert torch.allclose(before, after, atol=1e-6)


def test_relation_with_different_head_counts_and_widths():
    """Student 2 heads x 16 = 32 wide, teacher 3 heads x 16 = 48 wide (and GQA-narrow keys):
    split both into the same number of relation heads, the relations are (seq x seq) alike."""
    mask = _mask([5, 5], 5)
    s = tuple(
        torch.randn(2, 5, w, generator=_g(i), requires_grad=True)
        for i, w in enumerate((32, 16, 16))
    )
    t = tuple(torch.randn(2, 5, w, generator=_g(9 + i)) for i, w in enumerate((48, 24, 24)))
    loss = attention_relation_loss(s, t, mask, heads=8)
    loss.backward()
    assert loss > 0 and all(x.grad is not None for x in s)
    with pytest.raises(ValueError, match="relation heads"):
        attention_relation_loss(s, t, mask, heads=5)


def test_relation_matches_a_direct_computation():
    """One row, one head: KL between softmax(q q^T / sqrt(d)) rows, written out."""
    mask = _mask([4], 4)
    s = tuple(torch.randn(1, 4, 6, generator=_g(i)) for i in range(3))
    t = tuple(torch.randn(1, 4, 10, generator=_g(5 + i)) for i in range(3))
    expected = 0.0
    for a, b in zip(s, t, strict=True):
        ps = torch.softmax(a[0] @ a[0].T / 6**0.5, -1)
        pt = torch.softmax(b[0] @ b[0].T / 10**0.5, -1)
        expected += (pt * (pt.log() - ps.log())).sum(-1).mean()
    got = attention_relation_loss(s, t, mask, heads=1)
    assert got.item() == pytest.approx(float(expected), rel=1e-5)


def _logits():
    g = _g(3)
    return (
        torch.randn(6, 4, generator=g),
        torch.randn(6, 4, generator=g),
        torch.tensor([0, 1, -100, 3, 2, -100]),
    )


def _states(token_level: bool = True) -> IntermediateStates:
    mask = _mask([5, 5, 3, 2, 4, 1], 5)
    return IntermediateStates(
        [torch.randn(6, 5, 8, generator=_g(1))],
        [torch.randn(6, 5, 16, generator=_g(2))],
        tuple(torch.randn(6, 5, 8, generator=_g(i)) for i in range(3)),
        tuple(torch.randn(6, 5, 16, generator=_g(4 + i)) for i in range(3)),
        mask,
        mask,
        token_level,
    )


@pytest.mark.parametrize("alpha", [0.0, 0.7, 1.0])
def test_weights_zero_give_kd_loss_exactly(alpha):
    s, t, y = _logits()
    expected = kd_loss(s, t, y, 2.0, alpha)
    for kwargs in (
        {},
        {"states": _states(), "hidden_kind": "none", "hidden_weight": 1.0},
        {"states": _states(), "hidden_kind": "mse", "hidden_weight": 0.0},
        {"states": _states(), "attention_weight": 0.0, "relation_heads": 2},
    ):
        out = distill_loss(s, t, y, 2.0, alpha, projection=HiddenProjection(8, 16, 1), **kwargs)
        assert torch.equal(out.loss, expected.loss)
        assert all(
            torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            for a, b in zip(out.kd, expected, strict=True)
        )
        assert out.hidden.item() == 0.0 and out.relation.item() == 0.0


def test_composed_loss_is_the_weighted_sum():
    s, t, y = _logits()
    states = _states()
    proj = HiddenProjection(8, 16, 1)
    out = distill_loss(s, t, y, 2.0, 0.5, states, "cosine", 0.3, proj, 0.2, relation_heads=4)
    hidden = hidden_state_loss(
        states.student_hidden,
        states.teacher_hidden,
        states.student_mask,
        states.teacher_mask,
        proj,
        "cosine",
        True,
    )
    relation = attention_relation_loss(
        states.student_qkv, states.teacher_qkv, states.student_mask, 4
    )
    expected = kd_loss(s, t, y, 2.0, 0.5).loss + 0.3 * hidden + 0.2 * relation
    assert torch.allclose(out.loss, expected)
    assert torch.allclose(out.hidden, hidden) and torch.allclose(out.relation, relation)


def test_relation_refuses_different_tokens():
    s, t, y = _logits()
    with pytest.raises(ValueError, match="same tokens"):
        distill_loss(s, t, y, 2.0, 0.5, _states(token_level=False), attention_weight=1.0)
