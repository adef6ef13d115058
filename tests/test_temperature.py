import math

import pytest
import torch

from kdistill.training.temperature import auto_temperature, calibration_temperature, mean_entropy


def test_calibration_undoes_a_known_scale():
    """Labels drawn from softmax(z): the NLL-best temperature of 4 * z is about 4."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 5, generator=g) * 2
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)
    assert calibration_temperature(z * 4, y) == pytest.approx(4.0, rel=0.1)
    # Unlabelled rows (-100) are left out, not counted as a class.
    y_mixed = y.clone()
    y_mixed[::3] = -100
    assert calibration_temperature(z * 4, y_mixed) == pytest.approx(4.0, rel=0.15)


def test_auto_temperature_hits_the_entropy_target():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(200, 14, generator=g) * 8
    t = auto_temperature(z)
    assert 1.0 < t < 20.0
    assert mean_entropy(z, t) == pytest.approx(0.5 * math.log(14), abs=1e-4)
    # Sharper teacher, higher temperature; the rule is scale-equivariant inside the bounds.
    assert auto_temperature(z * 2) == pytest.approx(2 * t, rel=1e-4)


def test_auto_temperature_bounds():
    flat = torch.zeros(10, 4)  # already uniform: no softening needed
    assert auto_temperature(flat) == 1.0
    one_hot = torch.eye(4).repeat(3, 1) * 1e4  # too sharp for any T in range
    assert auto_temperature(one_hot) == 20.0


def test_teacher_temperatures():
    from kdistill.training.temperature import teacher_temperatures

    g = torch.Generator().manual_seed(2)
    z = torch.randn(2000, 6, generator=g) * 2
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)
    assert teacher_temperatures("off", 3.0, z, y) == (None, 3.0)
    fit, t = teacher_temperatures("auto", 3.0, z * 5, y)
    assert fit.temperature == pytest.approx(5.0, rel=0.1) and t == 3.0
    # auto picks T on the calibrated logits: the same T as for the unscaled ones.
    fit, t = teacher_temperatures("auto", "auto", z * 5, y)
    assert t == pytest.approx(auto_temperature(z * 5 / fit.temperature))
