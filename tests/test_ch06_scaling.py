"""Chapter 6: the IsoFLOP fit recovers a known power law."""

import math

import numpy as np
import pytest

from chapters.ch06_pretraining.scaling import bootstrap_params_exponent, fit_isoflop


def synthetic_results(
    exponent: float, offsets: tuple[float, ...] = (-0.6, -0.3, 0.0, 0.3, 0.6)
) -> list[dict]:
    # Each budget's loss is a parabola in log10(N) centred on N_opt = 0.1 * C^exponent.
    results = []
    for compute in (1e10, 1e11, 1e12):
        center = math.log10(0.1 * compute**exponent)
        for offset in offsets:
            x = center + offset
            results.append(
                {
                    "compute": compute,
                    "params": 10**x,
                    "val_loss": 3.0 - 0.1 * math.log10(compute) + 0.5 * (x - center) ** 2,
                }
            )
    return results


def test_isoflop_fit_recovers_the_exponent_of_the_optima():
    fit = fit_isoflop(synthetic_results(0.5))
    assert fit.params_exponent == pytest.approx(0.5, abs=1e-6)
    assert fit.tokens_exponent == pytest.approx(0.5, abs=1e-6)
    assert fit.optimal_params_for(1e11) == pytest.approx(0.1 * 1e11**0.5, rel=1e-5)


def test_isoflop_fit_tokens_follow_from_six_n_d():
    fit = fit_isoflop(synthetic_results(0.7))
    for compute, n, d in zip(fit.budgets, fit.optimal_params, fit.optimal_tokens, strict=True):
        assert 6 * n * d == pytest.approx(compute)
    assert np.isclose(fit.params_exponent, 0.7)


def test_isoflop_fit_needs_three_runs_per_budget():
    all_runs = synthetic_results(0.5)
    results = [r for r in all_runs if r["compute"] != 1e10] + all_runs[:2]  # 2 runs at 1e10
    with pytest.raises(ValueError, match="needs at\\s+least 3"):
        fit_isoflop(results)


def test_isoflop_fit_says_whether_each_vertex_lies_inside_its_sizes():
    assert fit_isoflop(synthetic_results(0.5)).vertex_inside == [True, True, True]
    # every size smaller than the optimum: the loss falls all the way to the largest size
    smaller = synthetic_results(0.5, offsets=(-0.9, -0.6, -0.3))
    assert fit_isoflop(smaller).vertex_inside == [False, False, False]
    concave = [dict(r, val_loss=-r["val_loss"]) for r in synthetic_results(0.5)]
    assert fit_isoflop(concave).vertex_inside == [False, False, False]


def test_bootstrap_interval_of_the_exponent_covers_the_truth_and_shrinks_without_noise():
    exact = bootstrap_params_exponent(synthetic_results(0.6), samples=50)
    assert exact == pytest.approx((0.6, 0.6), abs=1e-6)
    rng = np.random.default_rng(0)  # fixed: a 95% interval may miss on 1 draw in 20
    noisy = [dict(r, val_loss=r["val_loss"] + rng.normal(0, 0.02)) for r in synthetic_results(0.6)]
    low, high = bootstrap_params_exponent(noisy, samples=200)
    assert low < 0.6 < high and high - low < 0.5
