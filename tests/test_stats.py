"""reports/stats.py against hand-worked values, scipy, and simulated studies with known variances."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from reports.stats import (
    crossed_bootstrap_means,
    crossed_intervals,
    crossed_mean,
    holm,
    mcnemar_exact,
    min_detectable_difference,
    paired_t_pvalue,
    per_seed_t,
    percentile_ci,
    wilcoxon_pvalue,
)

HH = Path(__file__).resolve().parent.parent / "docs" / "results" / "hh-study"


def _study(rng: np.random.Generator, n_seeds: int, n_prompts: int, sd_seed: float, sd_prompt: float,
           sd_res: float, n_studies: int | None = None) -> np.ndarray:
    """values [S, P] (or [n_studies, S, P]) = seed effect + prompt effect + residual, mean 0."""
    lead = () if n_studies is None else (n_studies,)
    return (rng.normal(0, sd_seed, lead + (n_seeds, 1)) + rng.normal(0, sd_prompt, lead + (1, n_prompts))
            + rng.normal(0, sd_res, lead + (n_seeds, n_prompts)))


def test_percentile_ci_hand_worked():
    # 0..100: the 2.5th and 97.5th percentiles with linear interpolation are 2.5 and 97.5.
    assert percentile_ci(np.arange(101.0), 0.95) == pytest.approx((2.5, 97.5))
    assert percentile_ci(np.arange(101.0), 0.90) == pytest.approx((5.0, 95.0))


def test_one_seed_is_the_paired_t_interval():
    x = np.random.default_rng(1).normal(0.2, 1.0, size=60)
    est = crossed_mean(x, 0.95)
    ci = sps.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert est.value == pytest.approx(x.mean())
    assert (est.ci_low, est.ci_high) == pytest.approx((ci.low, ci.high))
    assert est.p_value == pytest.approx(sps.ttest_1samp(x, 0.0).pvalue)
    assert est.df == pytest.approx(59) and est.n_prompts == 60 and est.n_seeds == 1
    assert paired_t_pvalue(x) == pytest.approx(est.p_value)


def test_anova_components_hand_worked():
    # 2 seeds x 3 prompts. Grand mean 3; row means 2, 4; column means 2, 3, 4; the additive fit is exact
    # except the residuals +-0.5 in the first/last column: SS_res = 4 * 0.25 = 1, df 2 -> MS_res 0.5.
    x = np.array([[1.5, 2.0, 2.5], [2.5, 4.0, 5.5]])
    est = crossed_mean(x)
    ms_seed = 3 * ((2 - 3) ** 2 + (4 - 3) ** 2) / 1  # 6
    ms_prompt = 2 * ((2 - 3) ** 2 + 0 + (4 - 3) ** 2) / 2  # 2
    ms_res = 0.5
    assert est.var_residual == pytest.approx(ms_res)
    assert est.var_seed == pytest.approx((ms_seed - ms_res) / 3)
    assert est.var_prompt == pytest.approx((ms_prompt - ms_res) / 2)
    # Seed part MS_seed / (S P) = 1 with t_1; prompt part (MS_prompt - MS_res) / (S P) = 0.25 with t_2.
    half = np.sqrt(sps.t.ppf(0.975, 1) ** 2 * 1.0 + sps.t.ppf(0.975, 2) ** 2 * 0.25)
    assert (est.ci_low, est.ci_high) == pytest.approx((3 - half, 3 + half))
    assert est.se == pytest.approx(np.sqrt(1.25))
    assert est.df == pytest.approx(1.25 ** 2 / (1.0 ** 2 / 1 + 0.25 ** 2 / 2))
    # p inverts the interval: at level p the interval's edge touches 0.
    edge = np.sqrt(sps.t.isf(est.p_value / 2, 1) ** 2 + sps.t.isf(est.p_value / 2, 2) ** 2 * 0.25)
    assert edge == pytest.approx(3.0, rel=1e-6)


def test_components_recover_known_variances():
    rng = np.random.default_rng(0)
    comps = np.array([[c.var_seed, c.var_prompt, c.var_residual] for c in
                      (crossed_mean(_study(rng, 20, 300, 0.5, 1.0, 0.8)) for _ in range(40))])
    assert comps.mean(axis=0) == pytest.approx([0.25, 1.0, 0.64], rel=0.15)


def test_degenerate_inputs():
    est = crossed_mean(np.zeros((3, 10)))
    assert (est.value, est.ci_low, est.ci_high, est.p_value) == (0.0, 0.0, 0.0, 1.0)
    one = crossed_mean(np.array([[0.3], [0.5]]))
    assert one.ci_low is None and one.p_value is None and one.value == pytest.approx(0.4)


# Regimes of (seeds, prompts, sd_seed, sd_prompt, sd_residual): prompt-dominated, residual-dominated
# (the HH study's cost differences), seed-heavy (3, 5 and 2 seeds), and one seed.
REGIMES = [(3, 128, 0.02, 0.6, 0.6), (3, 128, 0.02, 0.1, 0.6), (3, 60, 0.25, 0.5, 0.5), (5, 60, 0.4, 0.5, 0.5),
           (2, 100, 0.2, 0.5, 0.5), (1, 50, 0.0, 1.0, 1.0)]
N_STUDIES = 2000


@pytest.mark.parametrize("regime", REGIMES)
def test_crossed_interval_covers_about_95_percent(regime):
    n_seeds, n_prompts, *sds = regime
    studies = _study(np.random.default_rng(42), n_seeds, n_prompts, *sds, n_studies=N_STUDIES) + 0.3
    _, lo, hi = crossed_intervals(studies, 0.95)
    coverage = np.mean((lo <= 0.3) & (0.3 <= hi))
    # Binomial SD at 2,000 studies: 0.005. The interval is built to err on the safe side (at most ~97.5%).
    assert 0.94 <= coverage <= 0.98, (regime, coverage)
    # The scalar function used by the reports gives the same intervals.
    for k in range(3):
        est = crossed_mean(studies[k])
        assert (est.ci_low, est.ci_high) == pytest.approx((lo[k], hi[k]))


def test_ignoring_the_seeds_undercovers_where_the_crossed_interval_does_not():
    # The interval a paired t test on seed-averaged prompt means implies treats the seeds as fixed: with
    # seed variance it is too narrow. The crossed interval on the same studies covers.
    studies = _study(np.random.default_rng(7), 3, 100, 0.3, 0.5, 0.5, n_studies=N_STUDIES)
    _, lo, hi = crossed_intervals(studies)
    assert np.mean((lo <= 0) & (0 <= hi)) >= 0.94
    per_prompt = studies.mean(axis=1)
    half = sps.t.isf(0.025, 99) * per_prompt.std(axis=1, ddof=1) / np.sqrt(100)
    assert np.mean(np.abs(per_prompt.mean(axis=1)) <= half) < 0.6


def test_crossed_bootstrap_draws_one_prompt_sample_for_all_seeds():
    # Cells equal across seeds (x[s, p] = b_p): resampling seeds changes nothing, so the replicates' variance
    # is var(b) / P, as with one seed. A bootstrap drawing prompts independently per seed would give / (S P).
    b = np.random.default_rng(3).normal(0, 1, size=80)
    x = np.tile(b, (4, 1))
    reps = crossed_bootstrap_means(x, 20000, seed=1)
    assert reps.var() == pytest.approx(b.var() / 80, rel=0.05)
    assert np.array_equal(crossed_bootstrap_means(b, 500, 7), crossed_bootstrap_means(b[None, :], 500, 7))
    assert not np.array_equal(crossed_bootstrap_means(x, 500, 7), crossed_bootstrap_means(x, 500, 8))
    # Seed-only variation: the replicates' variance is the seed means' plug-in variance / S.
    seeds = np.array([[0.0], [1.0], [2.0]]) + np.zeros((3, 50))
    assert crossed_bootstrap_means(seeds, 40000, seed=2).var() == pytest.approx(np.var([0, 1, 2]) / 3, rel=0.05)


def test_per_seed_t_hand_worked():
    est = per_seed_t([1.0, 2.0, 3.0])
    # mean 2, sd 1, t_{0.975, 2} = 4.302653 -> half-width 4.302653 / sqrt(3) = 2.484138.
    assert est.value == 2.0 and (est.minimum, est.maximum) == (1.0, 3.0)
    assert (est.ci_low, est.ci_high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-5)
    single = per_seed_t([0.7])
    assert single.ci_low is None and single.values == (0.7,)


def test_wilcoxon_matches_scipy_and_handles_all_zero():
    d = np.array([0.5, -0.2, 1.1, 0.7, 0.3, -0.4, 0.9, 1.3, 0.2, 0.6])
    assert wilcoxon_pvalue(d) == pytest.approx(sps.wilcoxon(d).pvalue)
    # Hand-worked: 10 positive differences, no ties -> exact two-sided p = 2 / 2**10.
    assert wilcoxon_pvalue(np.arange(1, 11, dtype=float)) == pytest.approx(2 / 1024)
    assert wilcoxon_pvalue(np.zeros(8)) == 1.0


def test_paired_t_is_analytic_below_any_resampling_floor():
    d = 5.0 + np.random.default_rng(0).normal(0, 0.1, size=50)
    assert 0 < paired_t_pvalue(d) < 1e-30
    assert 0 < crossed_mean(d).p_value < 1e-30
    assert paired_t_pvalue(np.zeros(5)) == 1.0


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


def test_min_detectable_difference_large_df_matches_normal_formula():
    # (z_0.975 + z_0.8) * se = (1.959964 + 0.841621) * 0.02 = 0.0560317.
    assert min_detectable_difference(0.02, 9999) == pytest.approx(0.0560317, rel=1e-3)
    assert min_detectable_difference(0.0, 49) == 0.0
    assert min_detectable_difference(1.0, 0) == float("inf")


def test_min_detectable_difference_has_power_080_by_simulation():
    # Independent check: simulate paired t-tests at the returned difference and count rejections.
    sd, n = 1.5, 12
    mdd = min_detectable_difference(sd / np.sqrt(n), n - 1)
    rng = np.random.default_rng(0)
    d = rng.normal(mdd, sd, size=(40000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(n))
    rejected = np.abs(t) > sps.t.ppf(0.975, n - 1)
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)
    # Small samples need a larger difference than the normal approximation says.
    assert mdd > 2.801585 * sd / np.sqrt(n)


def _hh_differences(variant: str, other: str, scorer: str, safe: bool = False) -> np.ndarray:
    """[3 seeds, 128 prompts] of variant minus other in the committed HH study's score files."""
    def read(unit: str) -> dict[str, float]:
        rows = [json.loads(line) for line in (HH / "scores" / f"{unit}.{scorer}.jsonl").read_text().splitlines()]
        return {r["prompt_id"]: (float(r["score"] <= 0) if safe else r["score"]) for r in rows}

    out = []
    for k in range(3):
        a, b = read(f"{variant}-seed{k}"), read(f"{other}-seed{k}")
        out.append([a[p] - b[p] for p in sorted(a)])
    return np.array(out)


def test_audit_of_the_hh_study_minimum_detectable_differences():
    # The audit's numbers (issue 15): the old report's bootstrap (seeds, then prompts within each seed)
    # has a replicate SD that, times z_0.975 + z_0.8, gives about 0.113 on cost and 0.071 on safe rate for
    # bDPO - DPO, where the old report stated 0.077 and 0.044 from the per-prompt SD alone.
    rng = np.random.default_rng(0)
    expected = {False: (0.113, 0.077), True: (0.071, 0.044)}
    for safe, (audit, old) in expected.items():
        d = _hh_differences("bdpo", "dpo", "cost", safe)
        seed_idx = rng.integers(0, 3, size=(4000, 3))
        prompt_idx = rng.integers(0, 128, size=(4000, 3, 128))
        nested = d[seed_idx[:, :, None], prompt_idx].mean(axis=(1, 2))
        assert 2.8016 * nested.std() == pytest.approx(audit, abs=0.004)
        per_prompt = d.mean(axis=0)
        assert min_detectable_difference(per_prompt.std(ddof=1) / np.sqrt(128), 127) == pytest.approx(old, abs=0.001)
        # The crossed test's own MDD includes the seed variance: larger than the per-prompt one.
        est = crossed_mean(d)
        assert min_detectable_difference(est.se, est.df) > old
