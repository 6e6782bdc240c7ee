"""Statistics for the reports: bootstrap confidence intervals, paired tests, Holm, power.

Pure numpy/scipy functions. Every resampling function takes an explicit seed so a report is
byte-identical across rebuilds. Per-sample scores arrive as a matrix `values[S, P]`: one row per
training seed, one column per evaluation prompt (samples of one prompt are averaged first, so a
prompt is the resampling unit: its samples are not independent draws).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a confidence interval; n is the number of resampled units (prompts)."""

    value: float
    ci_low: float
    ci_high: float
    n: int


def bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of the grand mean of `values[S, P]`, shape [n_boot].

    One seed (S == 1): resample prompts. Several seeds: resample seeds, then prompts within each
    resampled seed (two-stage, so both training noise and prompt sampling widen the interval).
    """
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[None, :]
    n_seeds, n_prompts = values.shape
    rng = np.random.default_rng(seed)
    if n_seeds == 1:
        idx = rng.integers(0, n_prompts, size=(n_boot, n_prompts))
        return values[0, idx].mean(axis=1)
    seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    prompt_idx = rng.integers(0, n_prompts, size=(n_boot, n_seeds, n_prompts))
    return values[seed_idx[:, :, None], prompt_idx].mean(axis=(1, 2))


def percentile_ci(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(replicates, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_ci(values: np.ndarray, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """Mean of `values` ([P] or [S, P]) with a percentile bootstrap CI (hierarchical when S > 1)."""
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[None, :]
    lo, hi = percentile_ci(bootstrap_means(values, n_boot, seed), confidence)
    return Estimate(float(values.mean()), lo, hi, int(values.shape[1]))


def paired_bootstrap_pvalue(diffs: np.ndarray, n_boot: int = 2000, seed: int = 0) -> float:
    """Two-sided p-value of H0: mean(diffs) == 0, for paired differences `diffs` ([P] or [S, P]).

    The differences are centred (so H0 holds in the resampled world) and resampled like
    `bootstrap_means`; p = (1 + #{|centred replicate| >= |observed|}) / (n_boot + 1).
    """
    diffs = np.asarray(diffs, dtype=float)
    observed = diffs.mean()
    replicates = bootstrap_means(diffs - observed, n_boot, seed)
    # A tiny tolerance so that exact zeros (identical variants) count as "as extreme".
    extreme = np.abs(replicates) >= abs(observed) - 1e-12
    return float((1 + extreme.sum()) / (n_boot + 1))


def wilcoxon_pvalue(diffs: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences [n]; 1.0 when all are zero."""
    diffs = np.asarray(diffs, dtype=float).ravel()
    if not np.any(diffs != 0):
        return 1.0
    return float(sps.wilcoxon(diffs, zero_method="wilcox").pvalue)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Exact McNemar p-value for paired binary outcomes a[n], b[n] (e.g. safe / not safe).

    Only discordant pairs carry information: under H0 each is a fair coin, so the count of
    (a true, b false) among them is Binomial(discordant, 1/2).
    """
    a = np.asarray(a, dtype=bool).ravel()
    b = np.asarray(b, dtype=bool).ravel()
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(sps.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def holm(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted_sorted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return adjusted


def min_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired t-test on n pairs detects with `power`.

    Solves power(delta) = P(|T| > t_crit) for T ~ noncentral t(n - 1, delta * sqrt(n) / sd);
    for large n this tends to (z_{1-alpha/2} + z_power) * sd / sqrt(n).
    """
    if n < 2:
        return float("inf")
    if sd == 0:
        return 0.0
    df = n - 1
    t_crit = sps.t.ppf(1 - alpha / 2, df)

    def power_at(nc: float) -> float:
        # P(T < -c | nc) written as P(T > c | -nc): scipy's cdf returns NaN far in that tail.
        return sps.nct.sf(t_crit, df, nc) + sps.nct.sf(t_crit, df, -nc)

    # Power rises with the noncentrality; at t_crit + 10 it exceeds 0.85 even for df = 1, and the
    # bracket stays where scipy's noncentral t is numerically stable.
    nc = brentq(lambda x: power_at(x) - power, 0.0, t_crit + 10.0, xtol=1e-10)
    return float(nc * sd / np.sqrt(n))
