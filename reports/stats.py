"""Statistics for the reports: the crossed seeds x prompts model, paired tests, Holm, power.

Pure numpy/scipy functions. Per-sample scores arrive as a matrix `values[S, P]`: one row per
training seed, one column per evaluation prompt (samples of one prompt are averaged first). Every
seed answers the same prompts, so seeds and prompts are *crossed*: a cell is

    values[s, p] = mu + a_s + b_p + e_sp,   a ~ (0, var_seed), b ~ (0, var_prompt), e ~ (0, var_residual)

and the grand mean has variance var_seed / S + var_prompt / P + var_residual / (S P). The interval
(`crossed_mean`) estimates these parts by two-way ANOVA and gives the seed-to-seed part a t
quantile with S - 1 df; with one seed it is the paired t interval over prompts.
docs/statistics.md derives it and reports its coverage on simulated studies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq


@dataclass(frozen=True)
class Crossed:
    """The grand mean of values[S, P] under the crossed model, with its interval and the test of
    H0: mean == 0 that the interval inverts. `se` is the estimated standard error of the mean; `df`
    the effective (Satterthwaite) degrees of freedom of that estimate, used for power; the variance
    components are the truncated ANOVA estimates (var_seed and var_residual are 0 with one seed)."""

    value: float
    ci_low: float | None
    ci_high: float | None
    se: float
    df: float
    p_value: float | None
    n_prompts: int
    n_seeds: int
    var_seed: float
    var_prompt: float
    var_residual: float


def _as_matrix(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[None, :] if values.ndim == 1 else values


def _parts(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """x [..., S, P] -> grand mean, seed-part and prompt-part variances of the mean, var_seed,
    var_prompt, MS_res, each [...] (see crossed_mean)."""
    n_seeds, n_prompts = x.shape[-2:]
    mean = x.mean(axis=(-2, -1))
    row, col = x.mean(axis=-1), x.mean(axis=-2)
    ms_prompt = n_seeds * np.sum((col - mean[..., None]) ** 2, axis=-1) / (n_prompts - 1)
    if n_seeds == 1:
        zero = np.zeros_like(mean)
        return mean, zero, ms_prompt / n_prompts, zero, ms_prompt, zero
    ms_seed = n_prompts * np.sum((row - mean[..., None]) ** 2, axis=-1) / (n_seeds - 1)
    resid = x - row[..., :, None] - col[..., None, :] + mean[..., None, None]
    ms_res = np.sum(resid ** 2, axis=(-2, -1)) / ((n_seeds - 1) * (n_prompts - 1))
    var_seed = np.maximum(0.0, (ms_seed - ms_res) / n_prompts)
    var_prompt = np.maximum(0.0, (ms_prompt - ms_res) / n_seeds)
    return mean, ms_seed / (n_seeds * n_prompts), var_prompt / n_prompts, var_seed, var_prompt, ms_res


def crossed_intervals(values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised over studies: values [N, S, P] (P >= 2) -> mean, ci_low, ci_high, each [N]."""
    x = np.asarray(values, dtype=float)
    n_seeds, n_prompts = x.shape[-2:]
    mean, v_seed, v_prompt = _parts(x)[:3]
    q_seed = sps.t.isf((1 - confidence) / 2, n_seeds - 1) if n_seeds > 1 else 0.0
    q_prompt = sps.t.isf((1 - confidence) / 2, n_prompts - 1)
    half = np.sqrt(q_seed ** 2 * v_seed + q_prompt ** 2 * v_prompt)
    return mean, mean - half, mean + half


def crossed_mean(values: np.ndarray, confidence: float = 0.95) -> Crossed:
    """values [S, P] (or [P]) -> grand mean, interval and two-sided p under the crossed model.

    The grand mean is the average of the S per-seed means, which all contain the same prompt effects:
    mean - mu = (seed part: mean of a_s + e_s.) + (shared prompt part: mean of b_p). The seed part's
    variance, var(per-seed means) / S = MS_seed / (S P), is estimated with S - 1 df and gets a
    t_{S-1} quantile; the shared prompt part's, var_prompt / P = max(0, MS_prompt - MS_res) / (S P),
    gets a t_{P-1} quantile; the two half-widths combine in quadrature:

        half = sqrt(t_{S-1}^2 MS_seed / (S P) + t_{P-1}^2 max(0, MS_prompt - MS_res) / (S P))

    (MS_seed = P var(row means), MS_prompt = S var(column means), MS_res from the additive two-way
    fit.) With one seed this is the paired t interval over prompts. In simulated studies (tests,
    docs/statistics.md) it covers 95-97.5% where a Satterthwaite t interval on the same variance
    covers 90-93% once seeds carry variance. p is the level at which the interval just touches 0.
    With P < 2 there is no interval (ci_low, ci_high, p_value None); when every cell is equal the
    interval is [mean, mean] and p is 1 for a zero mean, else 0.
    """
    x = _as_matrix(values)
    n_seeds, n_prompts = x.shape
    mean = float(x.mean())
    if n_prompts < 2:
        return Crossed(mean, None, None, float("nan"), float("nan"), None, n_prompts, n_seeds, 0.0, 0.0, 0.0)
    _, v_seed, v_prompt, var_seed, var_prompt, ms_res = (float(v) for v in _parts(x))
    var_mean = v_seed + v_prompt
    if var_mean <= 0:
        return Crossed(mean, mean, mean, 0.0, float("inf"), 1.0 if mean == 0 else 0.0, n_prompts, n_seeds,
                       var_seed, var_prompt, ms_res)
    parts = [(np.sqrt(v), d) for v, d in ((v_seed, n_seeds - 1), (v_prompt, n_prompts - 1)) if v > 0]

    def half_width(log_alpha: float) -> float:
        with np.errstate(over="ignore"):  # far tails: an infinite width is the right answer
            return float(np.sqrt(sum((sps.t.isf(10.0 ** log_alpha / 2, d) * sd) ** 2 for sd, d in parts)))

    half = half_width(np.log10(1 - confidence))
    if len(parts) == 1:
        p = float(2 * sps.t.sf(abs(mean) / parts[0][0], parts[0][1]))
    elif mean == 0:
        p = 1.0
    elif half_width(-300.0) < abs(mean):
        p = 0.0  # beyond double precision: reported as 0, never as a resampling floor
    else:
        p = float(10.0 ** brentq(lambda la: half_width(la) - abs(mean), -300.0, 0.0, xtol=1e-12))
    df = var_mean ** 2 / sum(sd ** 4 / d for sd, d in parts)
    return Crossed(mean, mean - half, mean + half, float(np.sqrt(var_mean)), float(df), p, n_prompts, n_seeds,
                   var_seed, var_prompt, ms_res)


def crossed_bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates [n_boot] of the grand mean of values[S, P] for the crossed design: each
    replicate draws seeds with replacement and ONE prompt sample shared by all its seeds (with one
    seed, prompts only). A cross-check of `crossed_mean`: with few seeds its seed level is coarse
    (3 seeds give at most 10 distinct seed multisets)."""
    x = _as_matrix(values)
    n_seeds, n_prompts = x.shape
    rng = np.random.default_rng(seed)
    prompt_counts = _counts(rng.integers(0, n_prompts, size=(n_boot, n_prompts)), n_prompts)
    if n_seeds == 1:
        return prompt_counts @ x[0] / n_prompts
    seed_counts = _counts(rng.integers(0, n_seeds, size=(n_boot, n_seeds)), n_seeds)
    return np.einsum("bs,sp,bp->b", seed_counts, x, prompt_counts) / (n_seeds * n_prompts)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """idx [B, m] of draws from range(n) -> how often each value was drawn, [B, n]."""
    out = np.zeros((idx.shape[0], n))
    np.add.at(out, (np.arange(idx.shape[0])[:, None], idx), 1.0)
    return out


def percentile_ci(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(replicates, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PerSeed:
    """A quantity with one value per seed: the values, their mean, a t interval over seeds (None
    with one seed) and the range (labelled as the range, never as a CI)."""

    values: tuple[float, ...]
    value: float
    ci_low: float | None
    ci_high: float | None
    minimum: float
    maximum: float


def per_seed_t(values: list[float] | np.ndarray, confidence: float = 0.95) -> PerSeed:
    v = np.asarray(values, dtype=float).ravel()
    mean = float(v.mean())
    lo = hi = None
    if v.size > 1:
        half = float(sps.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
        lo, hi = mean - half, mean + half
    return PerSeed(tuple(float(x) for x in v), mean, lo, hi, float(v.min()), float(v.max()))


def paired_t_pvalue(diffs: np.ndarray) -> float:
    """Two-sided one-sample t p-value of paired differences [n] (1.0 when all are equal to 0)."""
    d = np.asarray(diffs, dtype=float).ravel()
    if d.size < 2 or np.all(d == d[0]):
        return 1.0 if d.size == 0 or d[0] == 0 else 0.0
    return float(sps.ttest_1samp(d, 0.0).pvalue)


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


def min_detectable_difference(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided t test with standard error `se` and `df` degrees of
    freedom detects with `power` at level `alpha`.

    Solves power(delta) = P(|T| > t_crit) for T ~ noncentral t(df, delta / se); for large df this
    tends to (z_{1-alpha/2} + z_power) * se. For a paired t test on n pairs, se = sd / sqrt(n) and
    df = n - 1.
    """
    if not np.isfinite(df) or df < 1:
        return float("inf")
    if se == 0:
        return 0.0
    t_crit = sps.t.ppf(1 - alpha / 2, df)

    def power_at(nc: float) -> float:
        # P(T < -c | nc) written as P(T > c | -nc): scipy's cdf returns NaN far in that tail.
        return sps.nct.sf(t_crit, df, nc) + sps.nct.sf(t_crit, df, -nc)

    # Power rises with the noncentrality; at t_crit + 10 it exceeds 0.85 even for df = 1, and the
    # bracket stays where scipy's noncentral t is numerically stable.
    nc = brentq(lambda x: power_at(x) - power, 0.0, t_crit + 10.0, xtol=1e-10)
    return float(nc * se)
