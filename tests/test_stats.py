"""reports/stats.py against hand-worked values, scipy, and independent simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from reports.stats import (
    bootstrap_ci,
    bootstrap_means,
    holm,
    mcnemar_exact,
    min_detectable_difference,
    paired_bootstrap_pvalue,
    percentile_ci,
    wilcoxon_pvalue,
)


def test_percentile_ci_hand_worked():
    # 0..100: the 2.5th and 97.5th percentiles with linear interpolation are 2.5 and 97.5.
    assert percentile_ci(np.arange(101.0), 0.95) == pytest.approx((2.5, 97.5))
    assert percentile_ci(np.arange(101.0), 0.90) == pytest.approx((5.0, 95.0))


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    x = np.random.default_rng(1).exponential(size=150)
    est = bootstrap_ci(x, 0.95, n_boot=4000, seed=3)
    ref = sps.bootstrap((x,), np.mean, confidence_level=0.95, n_resamples=4000, method="percentile",
                        random_state=np.random.default_rng(5)).confidence_interval
    assert est.value == pytest.approx(x.mean())
    assert est.n == 150
    width = ref.high - ref.low
    assert est.ci_low == pytest.approx(ref.low, abs=0.08 * width)
    assert est.ci_high == pytest.approx(ref.high, abs=0.08 * width)


def test_bootstrap_is_seeded_and_one_seed_row_equals_prompt_bootstrap():
    x = np.random.default_rng(0).normal(size=40)
    assert np.array_equal(bootstrap_means(x, 500, 7), bootstrap_means(x[None, :], 500, 7))
    assert bootstrap_ci(x, n_boot=500, seed=7) == bootstrap_ci(x, n_boot=500, seed=7)
    assert not np.array_equal(bootstrap_means(x, 500, 7), bootstrap_means(x, 500, 8))


def test_hierarchical_bootstrap_variance_matches_two_stage_formula():
    # values[s, p] = seed effect + prompt noise. The two-stage bootstrap's variance of the grand mean is
    # (S-1)/S * var_between_seed_means / S + (P-1)/P * mean within-seed variance / (S * P) (hand-derived).
    rng = np.random.default_rng(0)
    S, P = 5, 60
    values = rng.normal(0, 1.0, size=(S, 1)) + rng.normal(0, 2.0, size=(S, P))
    reps = bootstrap_means(values, 20000, seed=1)
    seed_means = values.mean(axis=1)
    var_between = seed_means.var(ddof=0)
    var_within = values.var(axis=1, ddof=0).mean()
    expected = var_between / S + var_within / (S * P)
    assert reps.var() == pytest.approx(expected, rel=0.05)
    # Ignoring seeds (pooling S*P cells as if independent) would understate the spread here.
    pooled = bootstrap_means(values.reshape(1, -1), 20000, seed=1)
    assert reps.std() > 1.3 * pooled.std()


def test_paired_bootstrap_pvalue_close_to_t_test():
    rng = np.random.default_rng(2)
    for shift in (0.0, 0.15, 0.3):
        d = rng.normal(shift, 1.0, size=300)
        p_boot = paired_bootstrap_pvalue(d, n_boot=20000, seed=0)
        p_t = sps.ttest_1samp(d, 0.0).pvalue
        assert p_boot == pytest.approx(p_t, abs=0.02 + 0.15 * p_t), (shift, p_boot, p_t)


def test_paired_bootstrap_pvalue_extremes():
    assert paired_bootstrap_pvalue(np.zeros(30), n_boot=999) == 1.0
    # A large consistent difference: no centred replicate reaches it, p = 1 / (B + 1).
    d = 5.0 + np.random.default_rng(0).normal(0, 0.1, size=50)
    assert paired_bootstrap_pvalue(d, n_boot=999) == pytest.approx(1 / 1000)


def test_wilcoxon_matches_scipy_and_handles_all_zero():
    d = np.array([0.5, -0.2, 1.1, 0.7, 0.3, -0.4, 0.9, 1.3, 0.2, 0.6])
    assert wilcoxon_pvalue(d) == pytest.approx(sps.wilcoxon(d).pvalue)
    # Hand-worked: 10 positive differences, no ties -> exact two-sided p = 2 / 2**10.
    assert wilcoxon_pvalue(np.arange(1, 11, dtype=float)) == pytest.approx(2 / 1024)
    assert wilcoxon_pvalue(np.zeros(8)) == 1.0


def test_mcnemar_exact_hand_worked():
    # 6 pairs where only a is safe, 1 where only b is safe, 3 concordant:
    # p = 2 * P(X <= 1 | Bin(7, 1/2)) = 2 * (1 + 7) / 128 = 0.125.
    a = np.array([1, 1, 1, 1, 1, 1, 0, 1, 0, 1], dtype=bool)
    b = np.array([0, 0, 0, 0, 0, 0, 1, 1, 0, 1], dtype=bool)
    assert mcnemar_exact(a, b) == pytest.approx(0.125)
    assert mcnemar_exact(b, a) == pytest.approx(0.125)
    assert mcnemar_exact(a, a) == 1.0


def test_holm_hand_worked():
    # Sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.02, 0.03, 0.06, 0.06.
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]).size == 0


def test_min_detectable_difference_large_n_matches_normal_formula():
    # (z_0.975 + z_0.8) * sd / sqrt(n) = (1.959964 + 0.841621) * 2 / 100 = 0.0560317.
    assert min_detectable_difference(2.0, 10000) == pytest.approx(0.0560317, rel=1e-3)
    assert min_detectable_difference(0.0, 50) == 0.0
    assert min_detectable_difference(1.0, 1) == float("inf")


def test_min_detectable_difference_has_power_080_by_simulation():
    # Independent check: simulate paired t-tests at the returned difference and count rejections.
    sd, n = 1.5, 12
    mdd = min_detectable_difference(sd, n)
    rng = np.random.default_rng(0)
    d = rng.normal(mdd, sd, size=(40000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(n))
    rejected = np.abs(t) > sps.t.ppf(0.975, n - 1)
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)
    # Small samples need a larger difference than the normal approximation says.
    assert mdd > 2.801585 * sd / np.sqrt(n)
