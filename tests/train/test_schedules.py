import math

import numpy as np
import pytest

from facekit.train.schedules import constant, cosine_schedule, linear_schedule, step_schedule


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


def test_step_schedule_multiplies_by_gamma_at_each_milestone_after_the_warm_up() -> None:
    s = step_schedule(0.1, [6, 8], 0.1, 10, warmup_steps=4, warmup_start=0.02)
    assert s.shape == (10,) and s.dtype == np.float64
    np.testing.assert_allclose(s, [0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-12)
    np.testing.assert_allclose(step_schedule(1.0, [2, 2], 0.5, 4), [1.0, 1.0, 0.25, 0.25])  # a repeat counts twice
    assert step_schedule(2.0, [], 0.1, 3).tolist() == [2.0, 2.0, 2.0]  # no milestone: constant
    assert step_schedule(2.0, [3], 0.1, 3).tolist() == [2.0, 2.0, 2.0]  # at total_steps: never reached
    assert step_schedule(1.0, [2], 0.1, 4, warmup_steps=2).tolist() == pytest.approx([0.0, 0.5, 0.1, 0.1])


def test_step_schedule_rejects_bad_milestones() -> None:
    with pytest.raises(ValueError, match="sorted"):
        step_schedule(1.0, [8, 6], 0.1, 10)
    with pytest.raises(ValueError, match=r"\[warmup_steps=4, total_steps=10\], got \[3, 8\]"):
        step_schedule(1.0, [3, 8], 0.1, 10, warmup_steps=4)
    with pytest.raises(ValueError, match="total_steps=10"):
        step_schedule(1.0, [11], 0.1, 10)


def test_schedules_reject_bad_lengths() -> None:
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(1.0, 0.0, 10, warmup_steps=11)
    with pytest.raises(ValueError, match="total_steps"):
        constant(1.0, 0)
