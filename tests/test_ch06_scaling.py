"""Chapter 6: the IsoFLOP fit recovers a known power law."""

import math

import numpy as np
import pytest

from chapters.ch06_pretraining.scaling import fit_isoflop


def synthetic_results(exponent: float) -> list[dict]:
    # Each budget's loss is a parabola in log10(N) centred on N_opt = 0.1 * C^exponent.
    results = []
    for compute in (1e10, 1e11, 1e12):
        center = math.log10(0.1 * compute**exponent)
        for offset in (-0.6, -0.3, 0.0, 0.3, 0.6):
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
