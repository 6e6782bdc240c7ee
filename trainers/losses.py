"""Preference losses: pure functions from per-pair sequence log-probs to per-pair losses.

Every loss is one function `fn(logps: PairLogps, *, <params>) -> LossOutput`, registered in
`harness.registries.LOSSES` with the range checks of its parameters attached as `fn.check_params`
(config validation calls it through `harness.config.check_kwargs`) and `fn.uses_reference` (False
for a loss that never reads the reference log-probs, so the trainer skips the reference pass).
Notation, as in DESIGN.md: `lw = log pi(yw|x)`, `ll = log pi(yl|x)` (summed over response tokens),
`hw = lw - lw_ref`, `hl = ll - ll_ref`, `|y|` a response's token count.

Every loss takes `sft_weight` (default 0): it adds `sft_weight * NLL(yw)` (RPO), NLL being TRL's
"sft" term, the mean negative log-likelihood per token of the batch's chosen responses.

The gradient-imbalance diagnostic `log_grad_ratio` works for any loss: it differentiates the loss
by autograd with respect to the [B] log-prob tensors, in float64, so it needs no closed form.

Numerics: everything is in log space (`logsigmoid`, never `exp` of a log-prob); the bDPO weight
`ll / (lw + ll)` is defined as 1/2 where `lw + ll = 0`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.registries import LOSSES

LossFn = TypeVar("LossFn", bound=Callable[..., Any])


@dataclass(frozen=True)
class PairLogps:
    """Per-pair sequence log-probs; every field a float tensor of shape [B]."""

    chosen: Tensor  # log pi(yw|x), summed over response tokens (differentiable)
    rejected: Tensor  # log pi(yl|x)
    ref_chosen: Tensor  # reference log-probs (no grad)
    ref_rejected: Tensor
    chosen_len: Tensor  # response token counts (float), for per-token-mean lambda and length-normalised DPO
    rejected_len: Tensor


@dataclass(frozen=True)
class LossOutput:
    """A loss's per-pair values and its detached diagnostics; every tensor of shape [B]."""

    losses: Tensor  # per-pair loss, differentiable
    chosen_rewards: Tensor  # detached implicit rewards, beta * (chosen - ref_chosen) (TRL's convention)
    rejected_rewards: Tensor
    lam: Tensor | None  # detached lambda for bdpo/nbdpo; None for losses without one


# --------------------------------------------------------------------------------------------
# Registration with parameter range checks.
# --------------------------------------------------------------------------------------------

# A range rule: (accepts(value), what a valid value is).
Rule = tuple[Callable[[float], bool], str]
POSITIVE: Rule = (lambda v: v > 0, "must be > 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, "must be >= 0")
SMOOTHING: Rule = (lambda v: 0 <= v < 0.5, "must be in [0, 0.5)")
UNIT: Rule = (lambda v: 0 < v <= 1, "must be in (0, 1]")


def loss(name: str, uses_reference: bool = True, **rules: Rule) -> Callable[[LossFn], LossFn]:
    """Register a loss under `name`; attach `check_params(**params)` enforcing `rules` per parameter
    (and sft_weight >= 0, which every loss takes) and `uses_reference`.

    Names and types (including Literal choices) are checked by `harness.config.check_kwargs` from
    the signature; the rules add the numeric ranges a type cannot say.
    """
    rules = {"sft_weight": NON_NEGATIVE, **rules}

    def add(fn: LossFn) -> LossFn:
        def check_params(**params: Any) -> None:
            for key, value in params.items():
                if key in rules:
                    accepts, valid = rules[key]
                    if not accepts(value):
                        raise ValueError(f"{key}: {valid}, got {value!r}")

        fn.check_params = check_params  # type: ignore[attr-defined]
        fn.uses_reference = uses_reference  # type: ignore[attr-defined]
        return LOSSES.register(name)(fn)

    return add


# --------------------------------------------------------------------------------------------
# Shared pieces.
# --------------------------------------------------------------------------------------------


def _log_ratios(logps: PairLogps) -> tuple[Tensor, Tensor]:
    """hw, hl: [B] policy-over-reference log-ratios of the chosen and rejected responses."""
    return logps.chosen - logps.ref_chosen, logps.rejected - logps.ref_rejected


def _lengths(logps: PairLogps) -> tuple[Tensor, Tensor]:
    """[B] response lengths, at least 1 (as TRL clamps them) so an empty response cannot divide by 0."""
    return logps.chosen_len.clamp(min=1.0), logps.rejected_len.clamp(min=1.0)


def sft_nll(logps: PairLogps) -> Tensor:
    """[B] per-pair share of TRL's "sft" loss: -lw_i * B / sum_j |yw_j|.

    TRL's NLL is the mean over every chosen-response token of the batch, -sum_j lw_j / sum_j |yw_j|
    (not a mean of per-sequence means); writing it per pair like this makes the mean over pairs,
    the training loss, exactly TRL's. The total token count is clamped to >= 1.
    """
    return -logps.chosen * (logps.chosen.numel() / logps.chosen_len.sum().clamp(min=1.0))


def _output(logps: PairLogps, beta: float, losses: Tensor, sft_weight: float, lam: Tensor | None = None,
            rewards: tuple[Tensor, Tensor] | None = None) -> LossOutput:
    """Assemble a LossOutput from [B] losses, adding sft_weight * NLL(yw) when sft_weight > 0.

    rewards: the [B] implicit rewards (chosen, rejected); default beta * (hw, hl), TRL's convention.
    """
    if sft_weight:
        losses = losses + sft_weight * sft_nll(logps)
    if rewards is None:
        hw, hl = _log_ratios(logps)
        rewards = (beta * hw, beta * hl)
    return LossOutput(
        losses=losses,
        chosen_rewards=rewards[0].detach(),
        rejected_rewards=rewards[1].detach(),
        lam=None if lam is None else lam.detach(),
    )


# --------------------------------------------------------------------------------------------
# DPO and the balanced variants.
# --------------------------------------------------------------------------------------------


@loss("dpo", beta=POSITIVE)
def dpo(logps: PairLogps, *, beta: float = 0.1, sft_weight: float = 0.0) -> LossOutput:
    """-log sigmoid(beta * (hw - hl)): DPO (Rafailov et al. 2023), TRL's loss_type="sigmoid".

    With sft_weight > 0 this is RPO: TRL's loss_type=["sigmoid", "sft"], loss_weights=[1, sft_weight].

    Shapes: every field of `logps` [B]; every tensor of the output [B].
    """
    hw, hl = _log_ratios(logps)
    losses = -F.logsigmoid(beta * (hw - hl))
    return _output(logps, beta, losses, sft_weight)


@loss("bdpo", beta=POSITIVE, clip=((lambda v: 0 <= v <= 0.5), "must be in [0, 0.5]"), scale=POSITIVE)
def bdpo(
    logps: PairLogps,
    *,
    beta: float = 0.1,
    clip: float = 0.3,
    scale: float = 2.0,
    lambda_from: Literal["sum", "mean"] = "sum",
    sft_weight: float = 0.0,
) -> LossOutput:
    """-log sigmoid(beta * scale * (lam*hw - (1-lam)*hl)), lam = ll/(lw+ll) clipped: Balanced-DPO.

    lam comes from the detached policy log-probs (summed, or per-token means with
    lambda_from="mean"), is 1/2 where lw + ll = 0, and is clamped to [1/2 - clip, 1/2 + clip]
    (0.3 for LLMs, 0.5 in the synthetic experiment). scale=2 makes lam = 1/2 exactly DPO; scale=1
    is the literal form of the paper's summary. Within the clip range the probability-space
    gradient ratio is dL/dpi_w : dL/dpi_l = -(pi_l log pi_l) / (pi_w log pi_w).

    Shapes: every field of `logps` [B]; every tensor of the output [B]. With clip=0.5 a response of
    log-prob exactly 0 gives the other side weight 0 (its gradient really is 0).
    """
    per_token = {"sum": False, "mean": True}[lambda_from]
    with torch.no_grad():
        # Log-probs are <= 0; clamp away rounding above 0 so lam stays in [0, 1] before clipping.
        lw, ll = logps.chosen.clamp(max=0.0), logps.rejected.clamp(max=0.0)
        if per_token:
            len_w, len_l = _lengths(logps)
            lw, ll = lw / len_w, ll / len_l
        total = lw + ll
        # total is 0 only when both log-probs are 0: the limit lw + ll -> 0 along lw = ll is 1/2.
        nonzero = total < 0
        lam = torch.where(nonzero, ll / torch.where(nonzero, total, -1.0), 0.5)
        lam = lam.clamp(0.5 - clip, 0.5 + clip)
    hw, hl = _log_ratios(logps)
    losses = -F.logsigmoid((beta * scale) * (lam * hw - (1 - lam) * hl))
    return _output(logps, beta, losses, sft_weight, lam)


@loss("nbdpo", beta=POSITIVE, clip=NON_NEGATIVE)
def nbdpo(
    logps: PairLogps,
    *,
    beta: float = 0.1,
    clip: float = 1.0,
    clipping: Literal["symmetric", "asymmetric"] = "symmetric",
    sft_weight: float = 0.0,
) -> LossOutput:
    """-log sigmoid(beta * (lam*hw - hl)), lam = 1 + clamp(lw - ll, dmin, clip) detached: naive bDPO.

    clip is dmax. Symmetric clipping: dmin = 1/(1 + dmax) - 1, so lam ranges over
    [1/(1+dmax), 1+dmax] (the winner is damped as much as it can be amplified); asymmetric:
    dmin = 0 (lam >= 1, only amplifies the winner).

    Shapes: every field of `logps` [B]; every tensor of the output [B].
    """
    # lam = 1 + clamp(lw - ll, dmin, dmax) = clamp(1 + lw - ll, 1 + dmin, 1 + dmax); clamping lam itself
    # keeps it exactly inside its range in float32 (1 + (1/(1+dmax) - 1) can round below 1/(1+dmax)).
    lam_min = {"symmetric": 1 / (1 + clip), "asymmetric": 1.0}[clipping]
    with torch.no_grad():
        lam = (1 + (logps.chosen - logps.rejected)).clamp(lam_min, 1 + clip)
    hw, hl = _log_ratios(logps)
    losses = -F.logsigmoid(beta * (lam * hw - hl))
    return _output(logps, beta, losses, sft_weight, lam)


# --------------------------------------------------------------------------------------------
# Baselines. ipo, hinge and robust follow TRL 1.16's DPOTrainer formulas of the same name.
# --------------------------------------------------------------------------------------------


@loss("ipo", beta=POSITIVE)
def ipo(logps: PairLogps, *, beta: float = 0.1, sft_weight: float = 0.0) -> LossOutput:
    """(hw/|yw| - hl/|yl| - 1/(2 beta))^2: IPO (Azar et al. 2023), per-token-averaged as in TRL.

    TRL 1.16 divides each summed log-ratio by its response length (clamped to >= 1) before the
    squared loss, a normalisation confirmed with the IPO authors; this matches it.

    Shapes: every field of `logps` [B]; every tensor of the output [B].
    """
    hw, hl = _log_ratios(logps)
    len_w, len_l = _lengths(logps)
    losses = (hw / len_w - hl / len_l - 1 / (2 * beta)) ** 2
    return _output(logps, beta, losses, sft_weight)


@loss("hinge", beta=POSITIVE)
def hinge(logps: PairLogps, *, beta: float = 0.1, sft_weight: float = 0.0) -> LossOutput:
    """max(0, 1 - beta * (hw - hl)): hinge / SLiC (Zhao et al. 2023), TRL's loss_type="hinge".

    Shapes: every field of `logps` [B]; every tensor of the output [B].
    """
    hw, hl = _log_ratios(logps)
    losses = torch.relu(1 - beta * (hw - hl))
    return _output(logps, beta, losses, sft_weight)


@loss("robust", beta=POSITIVE, label_smoothing=SMOOTHING)
def robust(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.1, sft_weight: float = 0.0) -> LossOutput:
    """((1-eps) * -log sigmoid(z) - eps * -log sigmoid(-z)) / (1 - 2 eps), z = beta*(hw - hl): robust DPO.

    Chowdhury et al. 2024, unbiased under label-flip rate eps = label_smoothing in [0, 0.5); TRL's
    "robust". eps = 0 is DPO.

    Shapes: every field of `logps` [B]; every tensor of the output [B].
    """
    hw, hl = _log_ratios(logps)
    z = beta * (hw - hl)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return _output(logps, beta, losses, sft_weight)


@loss("cdpo", beta=POSITIVE, label_smoothing=SMOOTHING)
def cdpo(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.1, sft_weight: float = 0.0) -> LossOutput:
    """-(1-eps) * log sigmoid(z) - eps * log sigmoid(-z), z = beta*(hw - hl): conservative DPO.

    Mitchell 2023: labels smoothed by eps = label_smoothing in [0, 0.5), a cross-entropy on
    flipped labels (eric-mitchell/direct-preference-optimization; older TRL's "sigmoid" with
    label_smoothing). eps = 0 is DPO.

    Shapes: every field of `logps` [B]; every tensor of the output [B].
    """
    hw, hl = _log_ratios(logps)
    z = beta * (hw - hl)
    eps = label_smoothing
    losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    return _output(logps, beta, losses, sft_weight)


@loss("lndpo", beta=POSITIVE)
def lndpo(logps: PairLogps, *, beta: float = 0.1, sft_weight: float = 0.0) -> LossOutput:
    """-log sigmoid(beta * (hw/|yw| - hl/|yl|)): length-normalised DPO, TRL's "sigmoid_norm".

    Lengths are clamped to >= 1 as in TRL.

    Shapes: every field of `logps` [B]; every tensor of the output [B].
    """
    hw, hl = _log_ratios(logps)
    len_w, len_l = _lengths(logps)
    losses = -F.logsigmoid(beta * (hw / len_w - hl / len_l))
    return _output(logps, beta, losses, sft_weight)


# --------------------------------------------------------------------------------------------
# The other published fixes for the same failure (the rejected gradient dominating, the chosen
# likelihood falling). nca and apo-zero follow TRL 1.16's "nca_pair" and "apo_zero".
# --------------------------------------------------------------------------------------------


@loss("dpop", beta=POSITIVE, penalty=NON_NEGATIVE)
def dpop(logps: PairLogps, *, beta: float = 0.1, penalty: float = 50.0, sft_weight: float = 0.0) -> LossOutput:
    """-log sigmoid(beta * (hw - hl - penalty * max(0, -hw))): DPO-Positive (Pal et al. 2024).

    arXiv 2402.13228, the corrected 2024-07 revision (the penalty sits inside beta). The penalty
    acts only while the chosen response is less likely than under the reference (hw < 0);
    penalty = 0 is DPO.

    Shapes: every field of `logps` [B]; every tensor of the output [B].
    """
    hw, hl = _log_ratios(logps)
    losses = -F.logsigmoid(beta * (hw - hl - penalty * torch.relu(-hw)))
    return _output(logps, beta, losses, sft_weight)


@loss("cal-dpo", beta=POSITIVE, weight=NON_NEGATIVE)
def cal_dpo(logps: PairLogps, *, beta: float = 0.1, weight: float = 1.0, sft_weight: float = 0.0) -> LossOutput:
    """-log sigmoid(hw - hl) + weight * ((hw - 1/(2 beta))^2 + (hl + 1/(2 beta))^2): Cal-DPO.

    Xiao et al. 2024, arXiv 2412.14516: the logistic term has no beta; the squares calibrate the
    implicit rewards beta*hw, beta*hl to +-1/2. weight 1 per pair is the paper's objective and the
    Pythia code (Cal-DPO/Cal-DPO); the zephyr code (tengxiao1/Cal-DPO) adds 0.5 times the batch-mean
    squared errors, which is weight = 0.5 here (the same mean loss and gradient).

    Shapes: every field of `logps` [B]; every tensor of the output [B].
    """
    hw, hl = _log_ratios(logps)
    target = 1 / (2 * beta)
    losses = -F.logsigmoid(hw - hl) + weight * ((hw - target) ** 2 + (hl + target) ** 2)
    return _output(logps, beta, losses, sft_weight)


@loss("bounded-dpo", beta=POSITIVE, mix=UNIT)
def bounded_dpo(logps: PairLogps, *, beta: float = 0.1, mix: float = 0.5, sft_weight: float = 0.0) -> LossOutput:
    """-log sigmoid(beta * hw - beta * log(mix * e^hl + 1 - mix)): Bounded-DPO, arXiv 2506.12725.

    The rejected term log(mix * pi_l/pi_ref_l + (1 - mix)) is bounded below by log(1 - mix), so
    pushing a rejected response's probability towards 0 stops paying. Computed as
    logaddexp(log(mix) + hl, log(1 - mix)); mix in (0, 1], mix = 1 is DPO exactly.

    Shapes: every field of `logps` [B]; every tensor of the output [B].
    """
    hw, hl = _log_ratios(logps)
    floor = torch.full_like(hl, math.log1p(-mix) if mix < 1 else -math.inf)
    rejected_term = torch.logaddexp(hl + math.log(mix), floor)
    losses = -F.logsigmoid(beta * (hw - rejected_term))  # = beta*hw - beta*log(...), DPO's rounding at mix = 1
    return _output(logps, beta, losses, sft_weight)


@loss("simpo", uses_reference=False, beta=POSITIVE, gamma_ratio=NON_NEGATIVE)
def simpo(logps: PairLogps, *, beta: float = 2.0, gamma_ratio: float = 0.25, sft_weight: float = 0.0) -> LossOutput:
    """-log sigmoid(beta * (lw/|yw| - ll/|yl|) - gamma_ratio * beta): SimPO, no reference.

    Meng et al. 2024, arXiv 2405.14734; the margin gamma = gamma_ratio * beta as in the official
    code's gamma_beta_ratio. Reads no reference log-probs (uses_reference = False: the trainer skips
    the reference pass). Its implicit rewards are beta * lw/|yw| and beta * ll/|yl| (TRL's CPO).

    Shapes: every field of `logps` [B] (ref_chosen, ref_rejected unused); every tensor of the output [B].
    """
    len_w, len_l = _lengths(logps)
    reward_w, reward_l = beta * logps.chosen / len_w, beta * logps.rejected / len_l
    losses = -F.logsigmoid(reward_w - reward_l - gamma_ratio * beta)
    return _output(logps, beta, losses, sft_weight, rewards=(reward_w, reward_l))


@loss("nca", beta=POSITIVE)
def nca(logps: PairLogps, *, beta: float = 0.1, sft_weight: float = 0.0) -> LossOutput:
    """-log sigmoid(rw) - 0.5 log sigmoid(-rw) - 0.5 log sigmoid(-rl), rw = beta*hw, rl = beta*hl: NCA.

    Chen et al. 2024, arXiv 2402.05369 (pairwise NCA); TRL's loss_type="nca_pair".

    Shapes: every field of `logps` [B]; every tensor of the output [B].
    """
    hw, hl = _log_ratios(logps)
    rw, rl = beta * hw, beta * hl
    losses = -F.logsigmoid(rw) - 0.5 * F.logsigmoid(-rw) - 0.5 * F.logsigmoid(-rl)
    return _output(logps, beta, losses, sft_weight)


@loss("dpo-shift", beta=POSITIVE, shift=UNIT)
def dpo_shift(logps: PairLogps, *, beta: float = 0.1, shift: float = 0.95, sft_weight: float = 0.0) -> LossOutput:
    """-log sigmoid(beta * hw - shift * beta * hl): DPO-Shift, arXiv 2502.07599.

    shift in (0, 1]: 1 is DPO; below 1 the rejected response is pushed down less, so the chosen
    likelihood falls less. shift = 0 would ignore the rejected response (no longer a preference
    loss), a negative shift would push it up: both are refused.

    Shapes: every field of `logps` [B]; every tensor of the output [B].
    """
    hw, hl = _log_ratios(logps)
    losses = -F.logsigmoid(beta * (hw - shift * hl))  # = beta*hw - shift*beta*hl, DPO's rounding at shift = 1
    return _output(logps, beta, losses, sft_weight)


@loss("apo-zero", beta=POSITIVE)
def apo_zero(logps: PairLogps, *, beta: float = 0.1, sft_weight: float = 0.0) -> LossOutput:
    """(1 - sigmoid(beta * hw)) + sigmoid(beta * hl): APO-zero, arXiv 2408.06266; TRL's "apo_zero".

    Raises the chosen and lowers the rejected likelihood separately (anchored to the reference).

    Shapes: every field of `logps` [B]; every tensor of the output [B].
    """
    hw, hl = _log_ratios(logps)
    losses = (1 - torch.sigmoid(beta * hw)) + torch.sigmoid(beta * hl)
    return _output(logps, beta, losses, sft_weight)


# --------------------------------------------------------------------------------------------
# Diagnostics for the training log.
# --------------------------------------------------------------------------------------------


def log_grad_ratio(fn: Callable[..., LossOutput], logps: PairLogps, params: dict[str, Any]) -> Tensor:
    """[B] log(|dL/dpi_w| / |dL/dpi_l|) = log|dL/dlw| - log|dL/dll| + ll - lw, for any loss `fn`.

    0 = balanced; < 0 = the rejected response gets the larger probability-space gradient. The loss
    is evaluated again on float64 leaf copies of the [B] log-probs and differentiated by autograd
    (exact, and cheap: no model in the graph), so no closed form is needed and a sigmoid that
    underflows in float32 still has a gradient. Each pair's loss depends on its own pair only (the
    SFT term through a constant batch normaliser), so the gradient of the sum is per pair.

    Zero gradients: where only one side's gradient is exactly 0 the ratio is -inf or +inf (it
    really is: bDPO with clip 0.5 at a log-prob of 0); where both are 0 (an inactive hinge, or a
    sigmoid saturated even in float64) there is no ratio and the value is NaN. `diagnostics`
    leaves NaN out of every statistic and infinities out of the mean and median.
    """
    with torch.enable_grad():
        f64 = {k: v.detach().to(torch.float64) for k, v in vars(logps).items()}
        chosen, rejected = f64["chosen"].requires_grad_(), f64["rejected"].requires_grad_()
        out = fn(PairLogps(**f64), **params)
        d_chosen, d_rejected = torch.autograd.grad(out.losses.sum(), (chosen, rejected))
    ratio = d_chosen.abs().log() - d_rejected.abs().log() + (rejected - chosen).detach()
    return ratio.to(logps.chosen.dtype)


def diagnostics(out: LossOutput, grad_ratio: Tensor) -> dict[str, float]:
    """Batch means of a loss's diagnostics, under TRL's metric names where TRL has one.

    out: the loss's output; grad_ratio: [B] `log_grad_ratio` of the same pairs.
    rewards/chosen|rejected|margins|accuracies (TRL's definitions); lambda/mean|min|max when the
    loss has a lambda; log_grad_ratio/mean and /median over the finite values (the median the
    lower middle value for even counts, as torch.median), /rejected_dominates the share below 0 of
    the non-NaN values (-inf counts: the rejected response gets the larger probability-space
    gradient). Every value is finite (train_log.jsonl is strict JSON); a statistic with no value to
    average is left out (null in the train log).
    """
    margins = out.chosen_rewards - out.rejected_rewards
    stats = {
        "rewards/chosen": out.chosen_rewards.mean(),
        "rewards/rejected": out.rejected_rewards.mean(),
        "rewards/margins": margins.mean(),
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float().mean(),
    }
    if out.lam is not None:
        stats.update({"lambda/mean": out.lam.mean(), "lambda/min": out.lam.min(), "lambda/max": out.lam.max()})
    defined = grad_ratio[~grad_ratio.isnan()]
    finite = grad_ratio[grad_ratio.isfinite()]
    if finite.numel():
        stats["log_grad_ratio/mean"] = finite.mean()
        stats["log_grad_ratio/median"] = finite.median()
    if defined.numel():
        stats["log_grad_ratio/rejected_dominates"] = (defined < 0).float().mean()
    return {k: float(v) for k, v in stats.items()}
