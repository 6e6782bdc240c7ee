"""The synthetic tabular experiment: the paper's Section 6.1 as DESIGN.md defines it.

A grid of X prompts x Y responses with a known utility u(x, y); Bradley-Terry preference pairs
drawn from the cells a mask leaves in the data; every method trains its own tabular policy from the
same start on the same pairs, and is scored by the true utility of what it learned.

Every run (method x seed x mask rate) trains at once. The runs' tables are stacked into one tensor
[R, X, Y] and each method's registered loss is applied to its slice of the pairs. Runs never
interact: the objective is a sum of per-run mean losses and Adam/SGD act elementwise, so each run
gets exactly the update it would get alone (tests/test_synthetic.py checks this against a loop).

Shapes: S seeds, M mask rates, K methods, R = K*S*M runs ordered (method, seed, mask), X prompts,
Y responses, P = X * pairs_per_prompt pairs per run. Everything is float64 on the CPU.

Randomness: seed s draws its grid (peaks mu_x), initial logits and mask order from
numpy's default_rng([s]); the pairs and labels at mask rate m from default_rng([s, round(m * 1e6)]).
So one (seed, mask rate) gives the same data whatever else the config contains, the masks are
nested (rate 0.4 hides the cells rate 0.2 hides, and more), and all methods share one data set.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import scipy.special
import torch
from torch import Tensor

from harness.config import ConfigError, SyntheticConfig, check_kwargs, to_dict
from harness.errors import UserError
from harness.io import atomic_write_json
from harness.progress import progress_bar
from harness.provenance import environment, timestamp
from harness.registries import LOSSES
from trainers.losses import LossOutput, PairLogps, log_grad_ratio

DTYPE = torch.float64
RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1
# Pooled quantiles of the log gradient ratio recorded at every logged step.
GRAD_RATIO_QUANTILES = (0.1, 0.5, 0.9)

METRICS = {
    "utility": ("expected true utility E_x E_{y~pi} u(x, y) of the learned policy", True),
    "regret": ("mean over prompts of max_y u(x, y) minus the policy's expected utility", False),
    "ood_mass": ("probability mass on the masked (out-of-distribution) cells, mean over prompts", False),
    "ood_overestimation": (
        "mean over masked cells of the implicit reward beta*log(pi/pi_ref) minus the true reward "
        "reward_scale*u, both centred on the prompt's unmasked cells (> 0: masked cells look better "
        "than they are; null without a mask, and for a loss without a reference)", False),
}


# --------------------------------------------------------------------------------------------
# The grid, the mask and the preference data.
# --------------------------------------------------------------------------------------------


def utility_table(mu: Tensor, n_responses: int, sigma: float) -> Tensor:
    """u[x, y] = exp(-(y - mu[x])^2 / (2 sigma^2)). mu [X] -> [X, Y]."""
    y = torch.arange(n_responses, dtype=DTYPE)
    return torch.exp(-((y[None, :] - mu[:, None]) ** 2) / (2 * sigma**2))


def preference_prob(u_a: Tensor, u_b: Tensor, reward_scale: float) -> Tensor:
    """Bradley-Terry probability that response a is preferred to b: sigmoid(reward_scale * (u_a - u_b))."""
    return torch.sigmoid(reward_scale * (u_a - u_b))


@dataclass(frozen=True)
class Problem:
    """One seed's grid; every tensor [X, Y]."""

    utility: Tensor
    init_logits: Tensor
    mask_order: Tensor  # long: per prompt, the responses in the order a growing mask hides them


def make_problem(cfg: SyntheticConfig, seed: int) -> Problem:
    rng = np.random.default_rng([seed])
    mu = rng.uniform(0.0, cfg.n_responses - 1, size=cfg.n_prompts)
    init = rng.normal(0.0, cfg.init_logit_std, size=(cfg.n_prompts, cfg.n_responses))
    order = np.argsort(rng.random((cfg.n_prompts, cfg.n_responses)), axis=1)
    return Problem(
        utility=utility_table(torch.tensor(mu, dtype=DTYPE), cfg.n_responses, cfg.utility_sigma),
        init_logits=torch.tensor(init, dtype=DTYPE),
        mask_order=torch.tensor(order),
    )


def masked_cells(mask_order: Tensor, rate: float) -> Tensor:
    """Bool [X, Y]: the first round(rate * Y) responses of each prompt's mask order."""
    n_masked = round(rate * mask_order.shape[1])
    masked = torch.zeros(mask_order.shape, dtype=torch.bool)
    return masked.scatter(1, mask_order[:, :n_masked], True)


@dataclass(frozen=True)
class Pairs:
    """Preference pairs; every tensor long [P]."""

    prompt: Tensor
    chosen: Tensor
    rejected: Tensor


def sample_pairs(utility: Tensor, masked: Tensor, pairs_per_prompt: int, reward_scale: float,
                 rng: np.random.Generator) -> Pairs:
    """Per prompt, `pairs_per_prompt` pairs of two distinct unmasked responses, labelled by Bradley-Terry.

    utility, masked [X, Y]. Pairs are drawn with replacement; masked responses never appear.
    """
    prompts, chosen, rejected = [], [], []
    for x in range(utility.shape[0]):
        allowed = np.flatnonzero(~masked[x].numpy())
        two = np.argsort(rng.random((pairs_per_prompt, len(allowed))), axis=1)[:, :2]
        a, b = torch.tensor(allowed[two[:, 0]]), torch.tensor(allowed[two[:, 1]])
        a_wins = torch.tensor(rng.random(pairs_per_prompt)) < preference_prob(utility[x, a], utility[x, b], reward_scale)
        prompts.append(torch.full((pairs_per_prompt,), x))
        chosen.append(torch.where(a_wins, a, b))
        rejected.append(torch.where(a_wins, b, a))
    return Pairs(torch.cat(prompts), torch.cat(chosen), torch.cat(rejected))


def data_rng(seed: int, rate: float) -> np.random.Generator:
    return np.random.default_rng([seed, round(rate * 1_000_000)])


# --------------------------------------------------------------------------------------------
# Policies and training.
# --------------------------------------------------------------------------------------------


def project_to_simplex(p: Tensor, floor: float) -> Tensor:
    """Euclidean projection of each row of p [..., Y] onto {q : q >= floor, sum q = 1}.

    The sort-based algorithm of Duchi et al. (2008) applied to p - floor with total 1 - Y*floor.
    """
    n = p.shape[-1]
    v = p - floor
    u = torch.sort(v, dim=-1, descending=True).values
    excess = torch.cumsum(u, dim=-1) - (1.0 - n * floor)
    k = torch.arange(1, n + 1, dtype=p.dtype)
    support = (u - excess / k > 0).sum(dim=-1, keepdim=True)  # >= 1: the largest entry always qualifies
    theta = excess.gather(-1, support - 1) / support
    return (v - theta).clamp(min=0.0) + floor


def log_policy(table: Tensor, parameterization: str) -> Tensor:
    """log pi(y|x) [R, X, Y] from the trained table [R, X, Y] (logits, or probabilities on the simplex)."""
    return torch.log_softmax(table, dim=-1) if parameterization == "softmax" else torch.log(table)


def initial_table(init_logits: Tensor, cfg: SyntheticConfig) -> Tensor:
    """The trainable table [..., X, Y] whose policy is softmax(init_logits)."""
    if cfg.parameterization == "softmax":
        return init_logits.clone()
    return project_to_simplex(torch.softmax(init_logits, dim=-1), cfg.prob_floor)


@dataclass(frozen=True)
class MethodGroup:
    """One method: its registered loss, fully resolved parameters, and its runs' slice of R."""

    name: str
    fn: Callable[..., LossOutput]
    params: dict[str, Any]
    runs: slice


def resolve_params(fn: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """The loss's keyword defaults updated with `params`: what the run really used."""
    defaults = {n: p.default for n, p in inspect.signature(fn).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return {**defaults, **params}


@dataclass
class Observation:
    """What `train` reports at a logged step; tensors over runs R (grad ratio over R x P)."""

    step: int
    log_pi: Tensor  # [R, X, Y]
    log_grad_ratio: Tensor  # [R, P]
    lam: list[Tensor | None]  # per group, [runs in group, P] or None


def train(table: Tensor, ref_log_pi: Tensor, pair_index: tuple[Tensor, Tensor], groups: list[MethodGroup],
          cfg: SyntheticConfig, steps: int, observe: Callable[[Observation], None] | None = None,
          on_step: Callable[[], None] | None = None) -> Tensor:
    """Full-batch training of every run's table; returns the trained tables [R, X, Y].

    table, ref_log_pi [R, X, Y]; pair_index = flat indices x*Y + y of the chosen and rejected
    responses, each long [R, P]. `observe` sees the policy and the losses' diagnostics at steps
    0, log_every, 2*log_every, ... and `steps` (before that step's update).
    """
    table = table.clone().requires_grad_(True)
    opt = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD)([table], lr=cfg.learning_rate)
    chosen_idx, rejected_idx = pair_index
    ref_flat = ref_log_pi.flatten(1)
    ref_chosen, ref_rejected = ref_flat.gather(1, chosen_idx), ref_flat.gather(1, rejected_idx)
    # One "token" per response: the lengths only matter to per-token options, which then equal sums.
    lengths = [torch.ones(chosen_idx[g.runs].numel(), dtype=DTYPE) for g in groups]
    for step in range(steps + 1):
        log_pi = log_policy(table, cfg.parameterization)
        flat = log_pi.flatten(1)
        chosen, rejected = flat.gather(1, chosen_idx), flat.gather(1, rejected_idx)
        total = torch.zeros((), dtype=DTYPE)
        outs, inputs = [], []
        for g, lens in zip(groups, lengths):
            n_runs = g.runs.stop - g.runs.start
            logps = PairLogps(chosen[g.runs].reshape(-1), rejected[g.runs].reshape(-1),
                              ref_chosen[g.runs].reshape(-1), ref_rejected[g.runs].reshape(-1), lens, lens)
            out = g.fn(logps, **g.params)
            # Sum over runs of each run's mean loss: runs stay independent.
            total = total + out.losses.view(n_runs, -1).mean(dim=1).sum()
            outs.append(out)
            inputs.append(logps)
        if observe is not None and (step % cfg.log_every == 0 or step == steps):
            observe(Observation(
                step=step,
                log_pi=log_pi.detach(),
                log_grad_ratio=torch.cat([log_grad_ratio(g.fn, logps, g.params).view(g.runs.stop - g.runs.start, -1)
                                          for g, logps in zip(groups, inputs)]),
                lam=[None if o.lam is None else o.lam.view(g.runs.stop - g.runs.start, -1)
                     for o, g in zip(outs, groups)],
            ))
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if cfg.parameterization == "probabilities":
            with torch.no_grad():
                table.copy_(project_to_simplex(table, cfg.prob_floor))
        if on_step is not None:
            on_step()
    return table.detach()


# --------------------------------------------------------------------------------------------
# The experiment.
# --------------------------------------------------------------------------------------------


def mask_key(rate: float) -> str:
    return f"{rate:g}"


def method_groups(cfg: SyntheticConfig, runs_per_method: int) -> list[MethodGroup]:
    groups = []
    for k, m in enumerate(cfg.methods):
        try:
            fn = LOSSES.get(m.loss)
        except UserError as e:
            raise ConfigError(f"config key 'synthetic.methods.{m.name}.loss': {e}") from None
        check_kwargs(fn, m.params, f"synthetic.methods.{m.name}.params")
        groups.append(MethodGroup(m.name, fn, resolve_params(fn, m.params),
                                  slice(k * runs_per_method, (k + 1) * runs_per_method)))
    return groups


def mean_ci(values: np.ndarray, confidence: float) -> dict[str, Any]:
    """Mean and Student-t confidence interval over the first axis (seeds); CI null when n < 2."""
    values = np.asarray(values, dtype=float)
    n = values.shape[0]
    mean = values.mean(axis=0)
    if n < 2:
        return {"mean": mean.tolist(), "ci_low": None, "ci_high": None, "n": n}
    # stdtrit is Student's t quantile (scipy.special loads far faster than scipy.stats).
    half = scipy.special.stdtrit(n - 1, 0.5 + confidence / 2) * values.std(axis=0, ddof=1) / math.sqrt(n)
    return {"mean": mean.tolist(), "ci_low": (mean - half).tolist(), "ci_high": (mean + half).tolist(), "n": n}


def policy_metrics(log_pi: Tensor, utility: Tensor, masked: Tensor) -> dict[str, Tensor]:
    """utility, regret, ood_mass, each [R], from log_pi, utility [R, X, Y] and masked (bool) [R, X, Y]."""
    pi = log_pi.exp()
    value = (pi * utility).sum(-1).mean(-1)
    return {
        "utility": value,
        "regret": utility.amax(-1).mean(-1) - value,
        "ood_mass": (pi * masked).sum(-1).mean(-1),
    }


def ood_overestimation(log_pi: Tensor, ref_log_pi: Tensor, beta: Tensor, true_reward: Tensor,
                       masked: Tensor) -> Tensor:
    """[R]: mean over masked cells of the centred implicit reward minus the centred true reward.

    log_pi, ref_log_pi, true_reward [R, X, Y]; beta [R]; masked bool [R, X, Y] with the same
    count per prompt and at least one masked cell per run. Centring on each prompt's unmasked cells
    removes the per-prompt constant (beta log Z(x)) that an implicit reward is only defined up to.
    """
    seen = (~masked).to(DTYPE)

    def centred(r: Tensor) -> Tensor:
        return r - (r * seen).sum(-1, keepdim=True) / seen.sum(-1, keepdim=True)

    gap = centred(beta[:, None, None] * (log_pi - ref_log_pi)) - centred(true_reward)
    return (gap * masked).sum((-1, -2)) / masked.sum((-1, -2))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: the per-op work here is too small for threads to pay (on a busy
    2-core machine two threads measured 10x slower), and a fixed count fixes reduction order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def simulate(cfg: SyntheticConfig, progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train every run; return per-run arrays (numpy, indexed [K, S, M, ...]) and the curves' raw data."""
    with single_thread():
        return _simulate(cfg, progress)


def _simulate(cfg: SyntheticConfig, progress: Callable[[], None] | None) -> dict[str, Any]:
    S, M, K = cfg.n_seeds, len(cfg.mask_rates), len(cfg.methods)
    Y = cfg.n_responses
    base = S * M
    groups = method_groups(cfg, base)

    # Per (seed, mask): the problem, the mask and the pairs; stacked in (seed, mask) order.
    utility, masked, init_logits, chosen_idx, rejected_idx = [], [], [], [], []
    for s in range(cfg.seed, cfg.seed + S):
        problem = make_problem(cfg, s)
        for rate in cfg.mask_rates:
            mask = masked_cells(problem.mask_order, rate)
            pairs = sample_pairs(problem.utility, mask, cfg.pairs_per_prompt, cfg.reward_scale, data_rng(s, rate))
            utility.append(problem.utility)
            masked.append(mask)
            init_logits.append(problem.init_logits)
            chosen_idx.append(pairs.prompt * Y + pairs.chosen)
            rejected_idx.append(pairs.prompt * Y + pairs.rejected)
    utility_b, masked_b = torch.stack(utility), torch.stack(masked)
    pair_index_b = (torch.stack(chosen_idx), torch.stack(rejected_idx))
    start_b = initial_table(torch.stack(init_logits), cfg)

    if cfg.ref_warmup_steps:
        warmup = [MethodGroup("warmup", LOSSES.get("dpo"), {"beta": cfg.ref_warmup_beta}, slice(0, base))]
        start_b = train(start_b, log_policy(start_b, cfg.parameterization), pair_index_b, warmup, cfg,
                        cfg.ref_warmup_steps, on_step=progress)
    ref_b = log_policy(start_b, cfg.parameterization)

    def runs(t: Tensor) -> Tensor:  # [S*M, ...] -> [K*S*M, ...], method-major
        return t.repeat(K, *([1] * (t.dim() - 1)))

    utility_r, masked_r, ref_r = runs(utility_b), runs(masked_b), runs(ref_b)
    edges = torch.linspace(-cfg.grad_ratio_range, cfg.grad_ratio_range, cfg.grad_ratio_bins + 1, dtype=DTYPE)
    curves: dict[str, list[Any]] = {"steps": [], "utility": [], "ood_mass": [], "grad_ratio_q": [], "lambda": []}
    hist = torch.zeros(K * base, cfg.grad_ratio_bins, dtype=DTYPE)
    qs = torch.tensor(GRAD_RATIO_QUANTILES, dtype=DTYPE)

    def observe(obs: Observation) -> None:
        nonlocal hist
        m = policy_metrics(obs.log_pi, utility_r, masked_r)
        # Clipping keeps the infinities of clip-0.5 bDPO (a log-prob of exactly 0) in the edge bins;
        # NaN (no gradient on either side: no ratio) is left out of the histogram and the quantiles.
        lgr = obs.log_grad_ratio.clamp(-cfg.grad_ratio_range, cfg.grad_ratio_range)
        defined = ~lgr.isnan()
        bins = ((lgr.nan_to_num(0.0) + cfg.grad_ratio_range) / (2 * cfg.grad_ratio_range) * cfg.grad_ratio_bins).long()
        hist = hist.scatter_add(1, bins.clamp(0, cfg.grad_ratio_bins - 1), defined.to(DTYPE))
        # Pooled over seeds and pairs per (method, mask): [K, M, S*P].
        pooled = lgr.view(K, S, M, -1).transpose(1, 2).reshape(K, M, -1)
        curves["steps"].append(obs.step)
        curves["utility"].append(m["utility"].view(K, S, M).numpy())
        curves["ood_mass"].append(m["ood_mass"].view(K, S, M).numpy())
        curves["grad_ratio_q"].append(torch.nanquantile(pooled, qs, dim=-1).permute(1, 2, 0).numpy())  # [K, M, Q]
        curves["lambda"].append([None if lam is None else lam.view(S, M, -1).mean((0, 2)).numpy() for lam in obs.lam])

    table = train(runs(start_b), ref_r, (runs(pair_index_b[0]), runs(pair_index_b[1])), groups, cfg, cfg.steps,
                  observe=observe, on_step=progress)
    log_pi = log_policy(table, cfg.parameterization)
    final = {k: v.view(K, S, M).numpy() for k, v in policy_metrics(log_pi, utility_r, masked_r).items()}
    ref_metrics = {k: v.view(S, M).numpy() for k, v in policy_metrics(ref_b, utility_b, masked_b).items()}
    if masked_b.any(-1).all(-1).any():
        beta = torch.tensor([g.params["beta"] for g in groups for _ in range(base)], dtype=DTYPE)
        # A loss without a reference (SimPO) has no implicit reward beta*log(pi/pi_ref): null for it.
        uses_ref = torch.tensor([g.fn.uses_reference for g in groups for _ in range(base)])
        has_mask = runs(masked_b.any(-1).all(-1)) & uses_ref
        over = torch.full((K * base,), float("nan"), dtype=DTYPE)
        over[has_mask] = ood_overestimation(log_pi[has_mask], ref_r[has_mask], beta[has_mask],
                                            cfg.reward_scale * utility_r[has_mask], masked_r[has_mask])
        final["ood_overestimation"] = over.view(K, S, M).numpy()
    else:
        final["ood_overestimation"] = np.full((K, S, M), np.nan)
    return {"groups": groups, "final": final, "reference": ref_metrics, "curves": curves,
            "hist": hist.view(K, S, M, -1).sum(1).numpy(), "edges": edges.numpy()}


def summarise(cfg: SyntheticConfig, sim: dict[str, Any]) -> dict[str, Any]:
    """The results document (JSON-able) from `simulate`'s arrays."""
    names = [m.name for m in cfg.methods]
    base_k = names.index(cfg.baseline)
    keys = [mask_key(r) for r in cfg.mask_rates]
    final, curves = sim["final"], sim["curves"]

    def stat(values: np.ndarray) -> dict[str, Any] | None:
        return None if np.isnan(values).any() else mean_ci(values, cfg.confidence)

    def listed(values: np.ndarray) -> list[float] | None:
        return None if np.isnan(values).any() else values.tolist()

    summary, vs_baseline, per_seed, curve_out, histogram = {}, {}, {}, {}, {}
    for k, name in enumerate(names):
        summary[name], vs_baseline[name], per_seed[name], curve_out[name], histogram[name] = {}, {}, {}, {}, {}
        for j, key in enumerate(keys):
            summary[name][key] = {metric: stat(final[metric][k, :, j]) for metric in METRICS}
            per_seed[name][key] = {metric: listed(final[metric][k, :, j]) for metric in METRICS}
            if k != base_k:
                vs_baseline[name][key] = {metric: stat(final[metric][k, :, j] - final[metric][base_k, :, j])
                                          for metric in METRICS}
            lam = [step[k] for step in curves["lambda"]]
            curve_out[name][key] = {
                "utility": mean_ci(np.stack([u[k, :, j] for u in curves["utility"]], axis=1), cfg.confidence),
                "ood_mass": mean_ci(np.stack([u[k, :, j] for u in curves["ood_mass"]], axis=1), cfg.confidence),
                "log_grad_ratio_quantiles": {f"{q:g}": [float(step[k, j, i]) for step in curves["grad_ratio_q"]]
                                             for i, q in enumerate(GRAD_RATIO_QUANTILES)},
                "lambda_mean": None if lam[0] is None else [float(v[j]) for v in lam],
            }
            histogram[name][key] = sim["hist"][k, j].astype(int).tolist()
        if k == base_k:
            del vs_baseline[name]
    reference = {key: {metric: mean_ci(sim["reference"][metric][:, j], cfg.confidence)
                       for metric in ("utility", "regret", "ood_mass")} for j, key in enumerate(keys)}
    reference_per_seed = {key: {metric: sim["reference"][metric][:, j].tolist()
                                for metric in ("utility", "regret", "ood_mass")} for j, key in enumerate(keys)}
    return {
        "schema_version": SCHEMA_VERSION,
        "experiment": "synthetic",
        "config": to_dict(cfg),
        "methods": [{"name": g.name, "loss": m.loss, "params": g.params} for m, g in zip(cfg.methods, sim["groups"])],
        "baseline": cfg.baseline,
        "mask_rates": keys,
        "seeds": list(range(cfg.seed, cfg.seed + cfg.n_seeds)),
        "confidence": cfg.confidence,
        "metrics": {m: {"description": d, "higher_is_better": h} for m, (d, h) in METRICS.items()},
        "summary": summary,
        "vs_baseline": vs_baseline,
        "reference": reference,
        "per_seed": per_seed,
        "reference_per_seed": reference_per_seed,
        "curves": {"steps": curves["steps"], "methods": curve_out},
        "grad_ratio_histogram": {"edges": sim["edges"].tolist(), "counts": histogram,
                                 "note": f"pooled over seeds, pairs and logged steps; values clipped to "
                                         f"+-{cfg.grad_ratio_range:g}"},
    }


def run_synthetic(cfg: SyntheticConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Run the whole grid and write `out_dir/results.json` atomically; return the results it wrote."""
    started = time.perf_counter()
    total = cfg.ref_warmup_steps + cfg.steps
    n_runs = len(cfg.methods) * cfg.n_seeds * len(cfg.mask_rates)
    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task(f"synthetic: {n_runs} runs, steps", total=total)
        sim = simulate(cfg, progress=lambda: bar.advance(task))
    results = summarise(cfg, sim)
    results["environment"] = environment()
    results["created"] = timestamp()
    results["wall_seconds"] = round(time.perf_counter() - started, 3)
    atomic_write_json(Path(out_dir) / RESULTS_FILE, results)
    return results
