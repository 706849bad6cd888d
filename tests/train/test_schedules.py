import math

import numpy as np
import pytest

from facekit.train.schedules import constant, cosine_schedule, linear_schedule


def test_cosine_schedule_follows_its_formula() -> None:
    s = cosine_schedule(1.0, 0.1, 111, warmup_steps=10, warmup_start=0.2)  # 101 cosine steps after warm-up
    assert s.shape == (111,) and s.dtype == np.float64
    assert s[0] == pytest.approx(0.2)  # warm-up start
    assert s[5] == pytest.approx(0.2 + 0.8 * 5 / 10)
    assert s[10] == pytest.approx(1.0)  # end of warm-up = base
    assert s[35] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert s[60] == pytest.approx(0.55)  # midpoint of the cosine
    assert s[110] == pytest.approx(0.1)  # last step = final


def test_ema_momentum_schedule_ends_at_one() -> None:
    s = cosine_schedule(0.996, 1.0, 5)
    assert s[0] == pytest.approx(0.996) and s[-1] == pytest.approx(1.0)
    assert np.all(np.diff(s) > 0)


def test_linear_and_constant_schedules() -> None:
    lin = linear_schedule(0.07, 0.04, 14, warmup_steps=3)
    assert lin[0] == 0.0 and lin[2] == pytest.approx(0.07 * 2 / 3)
    assert lin[3] == pytest.approx(0.07) and lin[8] == pytest.approx(0.055) and lin[13] == pytest.approx(0.04)
    temp = constant(0.04, 10, warmup_steps=4, warmup_start=0.07)  # DINO teacher temperature
    np.testing.assert_allclose(temp, [0.07, 0.0625, 0.055, 0.0475] + [0.04] * 6)
    assert cosine_schedule(2.0, 1.0, 1).tolist() == [2.0]


def test_schedules_reject_bad_lengths() -> None:
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(1.0, 0.0, 10, warmup_steps=11)
    with pytest.raises(ValueError, match="total_steps"):
        constant(1.0, 0)
