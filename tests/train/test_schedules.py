import math

import numpy as np
import pytest

from facekit.train.schedules import constant, cosine_schedule, linear_schedule, step_schedule


def test_cosine_schedule_follows_its_formula() -> None:
    """Warm-up ``start + (base - start) i / W``; then ``final + (base - final) (1 + cos(pi j / n)) / 2`` over the
    n = 100 steps after it, j / n as DINO's ``cosine_scheduler`` and MAE's ``adjust_learning_rate``."""
    s = cosine_schedule(1.0, 0.1, 110, warmup_steps=10, warmup_start=0.2)
    assert s.shape == (110,) and s.dtype == np.float64
    assert s[0] == pytest.approx(0.2)  # warm-up start
    assert s[5] == pytest.approx(0.6)  # 0.2 + 0.8 * 5 / 10
    assert s[9] == pytest.approx(0.92)  # 0.2 + 0.8 * 9 / 10: base is reached after the warm-up, not on its last step
    assert s[10] == pytest.approx(1.0)  # j = 0: base
    assert s[35] == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)))  # j = 25: cos(pi / 4)
    assert s[60] == pytest.approx(0.55)  # j = 50: the midpoint
    assert s[109] == pytest.approx(0.1 + 0.45 * (1 + math.cos(0.99 * math.pi)))  # j = 99: final not reached
    assert s[109] == pytest.approx(0.100222, abs=1e-6) and s[109] > 0.1


def test_warm_up_reaches_base_after_its_last_step_as_mae_not_as_dino() -> None:
    """The one warm-up rule: MAE's ``base * i / W`` (also CAMD, MCF, BYOL/FRA). DINO, LAFS and FaceT use
    ``np.linspace(0, base, W)``, ``base * i / (W - 1)``: a documented deviation of at most ``base / W``."""
    s = cosine_schedule(0.8, 0.0, 20, warmup_steps=4)
    np.testing.assert_allclose(s[:5], [0.0, 0.2, 0.4, 0.6, 0.8], rtol=0, atol=1e-15)
    dino_like = [0.0, 0.8 / 3, 1.6 / 3, 0.8]  # np.linspace(0, 0.8, 4)
    assert max(abs(a - b) for a, b in zip(s[:4], dino_like, strict=True)) == pytest.approx(0.2)  # base / W


def test_ema_momentum_schedule_approaches_one() -> None:
    s = cosine_schedule(0.996, 1.0, 4)  # j / 4: cos 0, pi / 4, pi / 2, 3 pi / 4
    expected = [0.996, 1 - 0.002 * (1 + math.sqrt(0.5)), 0.998, 1 - 0.002 * (1 - math.sqrt(0.5))]
    np.testing.assert_allclose(s, expected, rtol=0, atol=1e-15)
    assert np.all(np.diff(s) > 0) and s[-1] < 1.0


def test_linear_and_constant_schedules() -> None:
    lin = linear_schedule(0.07, 0.04, 14, warmup_steps=4)  # 10 steps after the warm-up
    assert lin[0] == 0.0 and lin[2] == pytest.approx(0.035)
    assert lin[4] == pytest.approx(0.07) and lin[9] == pytest.approx(0.055) and lin[13] == pytest.approx(0.043)
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
