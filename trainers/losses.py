"""Preference losses: pure functions from per-pair sequence log-probs to per-pair losses.

Every loss is one function `fn(logps: PairLogps, *, <params>) -> LossOutput`, registered in
`harness.registries.LOSSES` with the range checks of its parameters attached as `fn.check_params`
(config validation calls it through `harness.config.check_kwargs`). Notation, as in DESIGN.md:
`lw = log pi(yw|x)`, `ll = log pi(yl|x)` (summed over response tokens), `hw = lw - lw_ref`,
`hl = ll - ll_ref`.

Each loss here depends on the pair only through a margin `a * hw - b * hl` (plus constants), so its
gradient in probability space has the ratio
    |dL/dpi_w| / |dL/dpi_l| = (a / b) * (pi_l / pi_w),
whatever the outer function. `LossOutput` carries `a`, `b` and the log of that ratio, computed from
the weights rather than from autograd, so it stays finite where the sigmoid saturates.

Numerics: everything is in log space (`logsigmoid`, never `exp`); the bDPO weight `ll / (lw + ll)`
is defined as 1/2 where `lw + ll = 0`.
"""

from __future__ import annotations

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
    chosen_weight: Tensor  # detached coefficient a of hw in the loss's margin a*hw - b*hl
    rejected_weight: Tensor  # detached coefficient b of hl
    lam: Tensor | None  # detached lambda for bdpo/nbdpo; None for losses without one
    log_grad_ratio: Tensor  # log(|dL/dpi_w| / |dL/dpi_l|) = log a - log b + rejected - chosen (0 = balanced)


# --------------------------------------------------------------------------------------------
# Registration with parameter range checks.
# --------------------------------------------------------------------------------------------

# A range rule: (accepts(value), what a valid value is).
Rule = tuple[Callable[[float], bool], str]
POSITIVE: Rule = (lambda v: v > 0, "must be > 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, "must be >= 0")
SMOOTHING: Rule = (lambda v: 0 <= v < 0.5, "must be in [0, 0.5)")


def loss(name: str, **rules: Rule) -> Callable[[LossFn], LossFn]:
    """Register a loss under `name`; attach `check_params(**params)` enforcing `rules` per parameter.

    Names and types (including Literal choices) are checked by `harness.config.check_kwargs` from
    the signature; the rules add the numeric ranges a type cannot say.
    """

    def add(fn: LossFn) -> LossFn:
        def check_params(**params: Any) -> None:
            for key, value in params.items():
                if key in rules:
                    accepts, valid = rules[key]
                    if not accepts(value):
                        raise ValueError(f"{key}: {valid}, got {value!r}")

        fn.check_params = check_params  # type: ignore[attr-defined]
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


def _output(logps: PairLogps, beta: float, losses: Tensor, a: Tensor, b: Tensor, lam: Tensor | None = None) -> LossOutput:
    """Assemble a LossOutput from [B] losses and the margin weights a (of hw) and b (of hl)."""
    a, b = a.detach(), b.detach()
    hw, hl = _log_ratios(logps)
    log_grad_ratio = a.log() - b.log() + (logps.rejected - logps.chosen).detach()
    return LossOutput(
        losses=losses,
        chosen_rewards=beta * hw.detach(),
        rejected_rewards=beta * hl.detach(),
        chosen_weight=a,
        rejected_weight=b,
        lam=None if lam is None else lam.detach(),
        log_grad_ratio=log_grad_ratio,
    )


def _ones(logps: PairLogps) -> Tensor:
    return torch.ones_like(logps.chosen)


# --------------------------------------------------------------------------------------------
# DPO and the balanced variants.
# --------------------------------------------------------------------------------------------


@loss("dpo", beta=POSITIVE)
def dpo(logps: PairLogps, *, beta: float = 0.1) -> LossOutput:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * (hw - hl)); TRL's loss_type="sigmoid".

    Shapes: every field of `logps` [B]; every tensor of the output [B]. Margin weights a = b = 1.
    """
    hw, hl = _log_ratios(logps)
    losses = -F.logsigmoid(beta * (hw - hl))
    return _output(logps, beta, losses, _ones(logps), _ones(logps))


@loss("bdpo", beta=POSITIVE, clip=((lambda v: 0 <= v <= 0.5), "must be in [0, 0.5]"), scale=POSITIVE)
def bdpo(
    logps: PairLogps,
    *,
    beta: float = 0.1,
    clip: float = 0.3,
    scale: float = 2.0,
    lambda_from: Literal["sum", "mean"] = "sum",
) -> LossOutput:
    """Balanced-DPO: -log sigmoid(beta * scale * (lam*hw - (1-lam)*hl)), lam = ll/(lw+ll), clipped.

    lam comes from the detached policy log-probs (summed, or per-token means with
    lambda_from="mean"), is 1/2 where lw + ll = 0, and is clamped to [1/2 - clip, 1/2 + clip]
    (0.3 for LLMs, 0.5 in the synthetic experiment). scale=2 makes lam = 1/2 exactly DPO; scale=1
    is the literal form of the paper's summary. Within the clip range the probability-space
    gradient ratio is dL/dpi_w : dL/dpi_l = -(pi_l log pi_l) / (pi_w log pi_w).

    Shapes: every field of `logps` [B]; every tensor of the output [B]. Margin weights
    a = scale*lam, b = scale*(1-lam). With clip=0.5 a response of log-prob exactly 0 gives the other
    side weight 0, so log_grad_ratio is -inf/+inf there (its gradient really is 0).
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
    return _output(logps, beta, losses, scale * lam, scale * (1 - lam), lam)


@loss("nbdpo", beta=POSITIVE, clip=NON_NEGATIVE)
def nbdpo(
    logps: PairLogps,
    *,
    beta: float = 0.1,
    clip: float = 1.0,
    clipping: Literal["symmetric", "asymmetric"] = "symmetric",
) -> LossOutput:
    """Naive bDPO: -log sigmoid(beta * (lam*hw - hl)), lam = 1 + clamp(lw - ll, dmin, clip), detached.

    clip is dmax. Symmetric clipping: dmin = 1/(1 + dmax) - 1, so lam ranges over
    [1/(1+dmax), 1+dmax] (the winner is damped as much as it can be amplified); asymmetric:
    dmin = 0 (lam >= 1, only amplifies the winner).

    Shapes: every field of `logps` [B]; every tensor of the output [B]. Margin weights a = lam, b = 1.
    """
    # lam = 1 + clamp(lw - ll, dmin, dmax) = clamp(1 + lw - ll, 1 + dmin, 1 + dmax); clamping lam itself
    # keeps it exactly inside its range in float32 (1 + (1/(1+dmax) - 1) can round below 1/(1+dmax)).
    lam_min = {"symmetric": 1 / (1 + clip), "asymmetric": 1.0}[clipping]
    with torch.no_grad():
        lam = (1 + (logps.chosen - logps.rejected)).clamp(lam_min, 1 + clip)
    hw, hl = _log_ratios(logps)
    losses = -F.logsigmoid(beta * (lam * hw - hl))
    return _output(logps, beta, losses, lam, _ones(logps), lam)


# --------------------------------------------------------------------------------------------
# Baselines. ipo, hinge and robust follow TRL 1.16's DPOTrainer formulas of the same name.
# --------------------------------------------------------------------------------------------


@loss("ipo", beta=POSITIVE)
def ipo(logps: PairLogps, *, beta: float = 0.1) -> LossOutput:
    """IPO (Azar et al. 2023): (hw/len_w - hl/len_l - 1/(2 beta))^2, per-token-averaged as in TRL.

    TRL 1.16 divides each summed log-ratio by its response length (clamped to >= 1) before the
    squared loss, a normalisation confirmed with the IPO authors; this matches it.

    Shapes: every field of `logps` [B]; every tensor of the output [B]. Margin weights
    a = 1/len_w, b = 1/len_l.
    """
    hw, hl = _log_ratios(logps)
    len_w, len_l = _lengths(logps)
    losses = (hw / len_w - hl / len_l - 1 / (2 * beta)) ** 2
    return _output(logps, beta, losses, 1 / len_w, 1 / len_l)


@loss("hinge", beta=POSITIVE)
def hinge(logps: PairLogps, *, beta: float = 0.1) -> LossOutput:
    """Hinge / SLiC (Zhao et al. 2023): max(0, 1 - beta * (hw - hl)), as TRL's loss_type="hinge".

    Shapes: every field of `logps` [B]; every tensor of the output [B]. Margin weights a = b = 1.
    """
    hw, hl = _log_ratios(logps)
    losses = torch.relu(1 - beta * (hw - hl))
    return _output(logps, beta, losses, _ones(logps), _ones(logps))


@loss("robust", beta=POSITIVE, label_smoothing=SMOOTHING)
def robust(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.1) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024): unbiased under label-flip rate eps, as TRL's "robust".

    L = ((1-eps) * -log sigmoid(z) - eps * -log sigmoid(-z)) / (1 - 2 eps), z = beta * (hw - hl),
    eps = label_smoothing in [0, 0.5). eps = 0 is DPO.

    Shapes: every field of `logps` [B]; every tensor of the output [B]. Margin weights a = b = 1.
    """
    hw, hl = _log_ratios(logps)
    z = beta * (hw - hl)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return _output(logps, beta, losses, _ones(logps), _ones(logps))


@loss("cdpo", beta=POSITIVE, label_smoothing=SMOOTHING)
def cdpo(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.1) -> LossOutput:
    """Conservative DPO (Mitchell 2023): labels smoothed by eps, a cross-entropy on flipped labels.

    L = -(1-eps) * log sigmoid(z) - eps * log sigmoid(-z), z = beta * (hw - hl),
    eps = label_smoothing in [0, 0.5) (eric-mitchell/direct-preference-optimization; older TRL's
    "sigmoid" with label_smoothing). eps = 0 is DPO.

    Shapes: every field of `logps` [B]; every tensor of the output [B]. Margin weights a = b = 1.
    """
    hw, hl = _log_ratios(logps)
    z = beta * (hw - hl)
    eps = label_smoothing
    losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    return _output(logps, beta, losses, _ones(logps), _ones(logps))


@loss("lndpo", beta=POSITIVE)
def lndpo(logps: PairLogps, *, beta: float = 0.1) -> LossOutput:
    """Length-normalised DPO: -log sigmoid(beta * (hw/len_w - hl/len_l)); TRL's "sigmoid_norm".

    Lengths are clamped to >= 1 as in TRL.

    Shapes: every field of `logps` [B]; every tensor of the output [B]. Margin weights
    a = 1/len_w, b = 1/len_l.
    """
    hw, hl = _log_ratios(logps)
    len_w, len_l = _lengths(logps)
    losses = -F.logsigmoid(beta * (hw / len_w - hl / len_l))
    return _output(logps, beta, losses, 1 / len_w, 1 / len_l)


# --------------------------------------------------------------------------------------------
# Diagnostics for the training log.
# --------------------------------------------------------------------------------------------


def diagnostics(out: LossOutput) -> dict[str, float]:
    """Batch means of a loss's diagnostics, under TRL's metric names where TRL has one.

    rewards/chosen|rejected|margins|accuracies (TRL's definitions); lambda/mean|min|max when the
    loss has a lambda; log_grad_ratio/mean, /median (the lower middle value for even batches, as
    torch.median) and /rejected_dominates (share of pairs with log_grad_ratio < 0, i.e. the
    rejected response gets the larger probability-space gradient).
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
    r = out.log_grad_ratio
    stats.update({
        "log_grad_ratio/mean": r.mean(),
        "log_grad_ratio/median": r.median(),
        "log_grad_ratio/rejected_dominates": (r < 0).float().mean(),
    })
    return {k: float(v) for k, v in stats.items()}
