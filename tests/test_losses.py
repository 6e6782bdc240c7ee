"""The loss library: hand-worked values, agreement with TRL's own code, the gradient theory of
DESIGN.md checked by autograd, numerical robustness (hypothesis) and parameter range checks."""

from __future__ import annotations

import inspect
import math
import types
from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.config import ConfigError, check_kwargs
from harness.registries import LOSSES
from trainers.losses import LossOutput, PairLogps, bdpo, bounded_dpo, diagnostics, dpo, dpo_shift, dpop, log_grad_ratio, nbdpo, simpo

ALL_LOSSES = ["apo-zero", "bdpo", "bounded-dpo", "cal-dpo", "cdpo", "dpo", "dpo-shift", "dpop", "hinge", "ipo",
              "lndpo", "nbdpo", "nca", "robust", "simpo"]


def pairs(chosen, rejected, ref_chosen, ref_rejected, chosen_len=None, rejected_len=None, dtype=torch.float64) -> PairLogps:
    t = lambda v: torch.as_tensor(v, dtype=dtype)  # noqa: E731
    ones = [1.0] * len(chosen)
    return PairLogps(t(chosen), t(rejected), t(ref_chosen), t(ref_rejected),
                     t(chosen_len or ones), t(rejected_len or ones))


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), the hand-worked form of every logistic loss."""
    return math.log1p(math.exp(x))


def test_registered_losses_have_the_api():
    assert LOSSES.names() == ALL_LOSSES
    for name, fn in LOSSES.items():
        doc = fn.__doc__ or ""
        assert doc.strip().splitlines()[0], f"{name}: no summary line for `bdpo ls`"
        assert "Shapes:" in doc, f"{name}: tensor shapes missing from the docstring"
        assert callable(fn.check_params)
        # Every loss takes the SFT term, off by default; only SimPO reads no reference.
        assert inspect.signature(fn).parameters["sft_weight"].default == 0.0, name
        assert fn.uses_reference is (name != "simpo"), name


# --------------------------------------------------------------------------------------------
# Hand-worked values. One pair: lw = -10, ll = -14, lw_ref = -12, ll_ref = -13, lengths 5 and 4,
# so hw = -10 - (-12) = 2, hl = -14 - (-13) = -1, hw - hl = 3.
# --------------------------------------------------------------------------------------------

PAIR = pairs([-10.0], [-14.0], [-12.0], [-13.0], [5.0], [4.0])
HW, HL = 2.0, -1.0

HAND = {
    # -log sigmoid(0.1 * 3) = log(1 + e^-0.3)
    ("dpo", ()): softplus(-0.1 * 3),
    # lam = ll/(lw+ll) = -14/-24 = 7/12 (inside [0.2, 0.8]); margin 7/12*2 - 5/12*(-1) = 19/12
    ("bdpo", ()): softplus(-0.1 * 2.0 * (7 / 12 * HW - 5 / 12 * HL)),
    # per-token means -10/5 = -2, -14/4 = -3.5: lam = 3.5/5.5 = 7/11; scale 1
    ("bdpo", (("lambda_from", "mean"), ("scale", 1.0))): softplus(-0.1 * 1.0 * (7 / 11 * HW - 4 / 11 * HL)),
    # clip 0.05: lam = 7/12 = 0.583 is clamped to 0.55
    ("bdpo", (("clip", 0.05),)): softplus(-0.1 * 2.0 * (0.55 * HW - 0.45 * HL)),
    # lw - ll = 4, clamped to dmax = 1: lam = 2; margin 2*2 - (-1) = 5
    ("nbdpo", ()): softplus(-0.1 * (2 * HW - HL)),
    # dmax = 3: lam = 1 + 3 = 4
    ("nbdpo", (("clip", 3.0), ("clipping", "asymmetric"))): softplus(-0.1 * (4 * HW - HL)),
    # per-token log-ratios 2/5 = 0.4 and -1/4 = -0.25; (0.65 - 1/(2*0.1))^2 = (0.65 - 5)^2
    ("ipo", ()): (0.4 - (-0.25) - 5.0) ** 2,
    # max(0, 1 - 0.1 * 3)
    ("hinge", ()): 0.7,
    # ((1 - 0.1) * log(1 + e^-0.3) - 0.1 * log(1 + e^0.3)) / (1 - 0.2)
    ("robust", ()): (0.9 * softplus(-0.3) - 0.1 * softplus(0.3)) / 0.8,
    # (1 - 0.1) * log(1 + e^-0.3) + 0.1 * log(1 + e^0.3)
    ("cdpo", ()): 0.9 * softplus(-0.3) + 0.1 * softplus(0.3),
    ("cdpo", (("label_smoothing", 0.0),)): softplus(-0.3),
    # log(1 + e^-(0.1 * 0.65))
    ("lndpo", ()): softplus(-0.1 * 0.65),
    # hw = 2 >= 0: the penalty max(0, -hw) is 0 and DPOP is DPO
    ("dpop", ()): softplus(-0.1 * 3),
    # -log sigmoid(hw - hl) (no beta) + (2 - 1/(2*0.1))^2 + (-1 + 5)^2 = log(1 + e^-3) + 9 + 16
    ("cal-dpo", ()): softplus(-3.0) + 9.0 + 16.0,
    # the zephyr code's 0.5 weighting: log(1 + e^-3) + 0.5 * 25
    ("cal-dpo", (("weight", 0.5),)): softplus(-3.0) + 12.5,
    # rejected term log(0.5 e^-1 + 0.5); margin 0.1 * 2 - 0.1 * that
    ("bounded-dpo", ()): softplus(-(0.1 * 2 - 0.1 * math.log(0.5 * math.exp(-1) + 0.5))),
    # mix 1: log(1 * e^hl + 0) = hl, DPO
    ("bounded-dpo", (("mix", 1.0),)): softplus(-0.1 * 3),
    # SimPO, beta 2: per-token lw/5 = -2, ll/4 = -3.5; 2 * (-2 + 3.5) - 0.25 * 2 = 2.5
    ("simpo", ()): softplus(-2.5),
    # rw = 0.2, rl = -0.1: log(1 + e^-0.2) + 0.5 log(1 + e^0.2) + 0.5 log(1 + e^-0.1)
    ("nca", ()): softplus(-0.2) + 0.5 * softplus(0.2) + 0.5 * softplus(-0.1),
    # 0.1 * 2 - 0.95 * 0.1 * (-1) = 0.295
    ("dpo-shift", ()): softplus(-0.295),
    ("dpo-shift", (("shift", 1.0),)): softplus(-0.3),
    # (1 - sigmoid(0.2)) + sigmoid(-0.1)
    ("apo-zero", ()): (1 - 1 / (1 + math.exp(-0.2))) + 1 / (1 + math.exp(0.1)),
    # RPO: DPO + 0.5 * NLL(yw), NLL = -lw / |yw| = 10 / 5 = 2 for this one-pair batch
    ("dpo", (("sft_weight", 0.5),)): softplus(-0.3) + 0.5 * 2.0,
    ("nca", (("sft_weight", 2.0),)): softplus(-0.2) + 0.5 * softplus(0.2) + 0.5 * softplus(-0.1) + 2.0 * 2.0,
}


@pytest.mark.parametrize("name,params", list(HAND), ids=[f"{n}{dict(p)}" for n, p in HAND])
def test_hand_worked_loss(name, params):
    out = LOSSES.get(name)(PAIR, **dict(params))
    assert out.losses.item() == pytest.approx(HAND[name, params], rel=1e-12)
    # TRL's reward convention for every loss with a reference: beta * log-ratio; SimPO's (TRL's CPO):
    # beta * per-token log-prob, 2 * -2 and 2 * -3.5.
    rewards = (-4.0, -7.0) if name == "simpo" else (0.1 * HW, 0.1 * HL)
    assert out.chosen_rewards.item() == pytest.approx(rewards[0])
    assert out.rejected_rewards.item() == pytest.approx(rewards[1])


def test_hand_worked_log_grad_ratio():
    # DPO's gradient has the ratio dL/dlw : dL/dll = -1 (a = b = 1): log r = ll - lw = -14 - (-10) = -4.
    assert log_grad_ratio(dpo, PAIR, {}).item() == pytest.approx(-4.0)
    # bDPO: lam = 7/12, weights 2*7/12 and 2*5/12: log r = log(7/5) - 4.
    assert log_grad_ratio(bdpo, PAIR, {}).item() == pytest.approx(math.log(7 / 5) - 4.0)
    # nbDPO: lam = 2 (clipped): log r = log 2 - 4. DPO-Shift: b = 0.95: log r = -log 0.95 - 4.
    assert log_grad_ratio(nbdpo, PAIR, {}).item() == pytest.approx(math.log(2.0) - 4.0)
    assert log_grad_ratio(dpo_shift, PAIR, {}).item() == pytest.approx(-math.log(0.95) - 4.0)
    # SimPO: weights 1/5 and 1/4 on lw, ll: log r = log(4/5) - 4.
    assert log_grad_ratio(simpo, PAIR, {}).item() == pytest.approx(math.log(4 / 5) - 4.0)


def test_dpop_penalty_when_chosen_falls():
    # hw = -13 - (-12) = -1, hl = -14 - (-13) = -1: margin -1 - (-1) - 50 * max(0, 1) = -50.
    p = pairs([-13.0], [-14.0], [-12.0], [-13.0])
    assert dpop(p).losses.item() == pytest.approx(softplus(-0.1 * -50.0), rel=1e-12)
    # The chosen side's weight is 1 + 50 = 51: log r = log 51 + ll - lw = log 51 - 1.
    assert log_grad_ratio(dpop, p, {}).item() == pytest.approx(math.log(51.0) - 1.0)


def test_sft_term_is_the_batch_token_mean():
    # Two pairs, chosen log-probs -10 and -6 over 5 and 2 tokens: TRL pools the tokens, NLL = 16 / 7
    # (the mean of the per-sequence means would be (2 + 3) / 2 = 2.5).
    p = pairs([-10.0, -6.0], [-14.0, -5.0], [-12.0, -3.0], [-13.0, -6.0], [5.0, 2.0], [4.0, 4.0])
    with_sft, without = dpo(p, sft_weight=0.7), dpo(p)
    assert (with_sft.losses - without.losses).mean().item() == pytest.approx(0.7 * 16 / 7, rel=1e-12)
    # The rewards and the preference term are untouched.
    assert torch.equal(with_sft.chosen_rewards, without.chosen_rewards)


def test_nbdpo_symmetric_and_asymmetric_lower_clip():
    # lw - ll = -3: symmetric dmax = 1 gives dmin = 1/2 - 1 = -0.5, lam = 0.5; asymmetric dmin = 0, lam = 1.
    p = pairs([-5.0], [-2.0], [-4.0], [-4.0])  # hw = -1, hl = 2
    sym, asym = nbdpo(p, clip=1.0), nbdpo(p, clip=1.0, clipping="asymmetric")
    assert sym.lam.item() == 0.5 and asym.lam.item() == 1.0
    assert sym.losses.item() == pytest.approx(softplus(-0.1 * (0.5 * -1 - 2)))
    assert asym.losses.item() == pytest.approx(softplus(-0.1 * (1.0 * -1 - 2)))


def test_diagnostics_hand_worked():
    # Three pairs with beta = 0.1: rewards (0.2, -0.1), (-0.3, 0.1), (0.0, 0.0); ll - lw = -4, 1, 0.
    p = pairs([-10.0, -6.0, -2.0], [-14.0, -5.0, -2.0], [-12.0, -3.0, -2.0], [-13.0, -6.0, -2.0])
    d = diagnostics(dpo(p), log_grad_ratio(dpo, p, {}))
    assert d == pytest.approx({
        "rewards/chosen": (0.2 - 0.3 + 0.0) / 3,
        "rewards/rejected": (-0.1 + 0.1 + 0.0) / 3,
        "rewards/margins": (0.3 - 0.4 + 0.0) / 3,
        "rewards/accuracies": 1 / 3,  # strict >, as TRL: the tied third pair does not count
        "log_grad_ratio/mean": (-4 + 1 + 0) / 3,
        "log_grad_ratio/median": 0.0,
        "log_grad_ratio/rejected_dominates": 1 / 3,
    })
    # bdpo lam: 14/24, 5/11 and the tie 1/2.
    d = diagnostics(bdpo(p), log_grad_ratio(bdpo, p, {}))
    assert d["lambda/mean"] == pytest.approx((14 / 24 + 5 / 11 + 0.5) / 3)
    assert d["lambda/min"] == pytest.approx(5 / 11) and d["lambda/max"] == pytest.approx(14 / 24)


def test_diagnostics_leave_out_undefined_ratios():
    out = dpo(pairs([-1.0] * 5, [-2.0] * 5, [-1.0] * 5, [-1.0] * 5))
    # NaN (no gradient on either side) is in no statistic; -inf only in the rejected-dominates share.
    d = diagnostics(out, torch.tensor([-math.inf, 1.0, math.nan, -3.0, 4.0], dtype=torch.float64))
    assert d["log_grad_ratio/mean"] == pytest.approx((1.0 - 3.0 + 4.0) / 3)
    assert d["log_grad_ratio/median"] == 1.0  # of -3, 1, 4
    assert d["log_grad_ratio/rejected_dominates"] == pytest.approx(2 / 4)  # -inf and -3 of four
    # No defined value at all: the statistics are absent (null in the train log), not NaN.
    d = diagnostics(out, torch.full((5,), math.nan, dtype=torch.float64))
    assert not any(k.startswith("log_grad_ratio/") for k in d)
    assert all(math.isfinite(v) for v in d.values())


# --------------------------------------------------------------------------------------------
# Agreement with TRL 1.16: its own DPOTrainer._compute_loss, run on a tiny real (random-weight)
# transformers Llama, with a namespace standing in for the trainer's attributes it reads. Our
# losses get sequence log-probs computed independently from the model's logits.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trl_setup():
    from accelerate import Accelerator
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config).eval()
    # What DPOTrainer does to its model before training.
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))

    # Rows 0..B-1 chosen, B..2B-1 rejected (TRL's layout); completion spans differ in length.
    spans = [(4, 12), (3, 6), (5, 16), (2, 9), (4, 10), (3, 14), (5, 7), (2, 16)]
    B, T = len(spans) // 2, 16
    ids = torch.randint(0, 64, (2 * B, T))
    attention = torch.zeros_like(ids)
    completion = torch.zeros_like(ids)
    for row, (start, end) in enumerate(spans):
        attention[row, :end] = 1
        completion[row, start:end] = 1

    # Independent sequence log-probs: log-softmax of the logits, token t scored from position t-1.
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        token_logps = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
        seq = (token_logps * completion[:, 1:]).sum(1)
    lengths = completion.sum(1).float()
    # References chosen so that beta * margins span both signs and both sides of the hinge.
    hw = torch.tensor([3.0, -2.0, 15.0, 0.5])
    hl = torch.tensor([-4.0, 5.0, 0.0, -30.0])
    logps = PairLogps(seq[:B], seq[B:], seq[:B] - hw, seq[B:] - hl, lengths[:B], lengths[B:])

    accelerator = Accelerator(cpu=True)

    def run(loss_type: str | list[str], beta: float, label_smoothing: float = 0.0, rows: list[int] | None = None,
            loss_weights: list[float] | None = None):
        rows = list(range(B)) if rows is None else rows
        both = rows + [B + r for r in rows]
        loss_types = [loss_type] if isinstance(loss_type, str) else loss_type
        trainer = types.SimpleNamespace(
            model=model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
            precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=loss_types,
            loss_weights=loss_weights or [1.0] * len(loss_types), beta=beta, label_smoothing=label_smoothing, use_weighting=False,
            _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
        )
        inputs = {"input_ids": ids[both], "attention_mask": attention[both], "completion_mask": completion[both],
                  "ref_chosen_logps": logps.ref_chosen[rows], "ref_rejected_logps": logps.ref_rejected[rows]}
        with torch.no_grad():
            loss = DPOTrainer._compute_loss(trainer, model, inputs, False)
        return loss.item(), {k: v[0] for k, v in trainer._metrics["eval"].items()}

    return logps, run, B


@pytest.mark.parametrize("ours,trl_name,params", [
    ("dpo", "sigmoid", {"beta": 0.1}),
    ("dpo", "sigmoid", {"beta": 0.5}),
    ("ipo", "ipo", {"beta": 0.1}),
    ("ipo", "ipo", {"beta": 2.0}),
    ("hinge", "hinge", {"beta": 0.1}),
    ("robust", "robust", {"beta": 0.1, "label_smoothing": 0.2}),
    ("lndpo", "sigmoid_norm", {"beta": 0.3}),
    ("nca", "nca_pair", {"beta": 0.1}),
    ("nca", "nca_pair", {"beta": 0.7}),
    ("apo-zero", "apo_zero", {"beta": 0.1}),
    ("apo-zero", "apo_zero", {"beta": 0.4}),
])
def test_matches_trl_per_pair(trl_setup, ours, trl_name, params):
    logps, run, B = trl_setup
    out = LOSSES.get(ours)(logps, **params)
    trl = [run(trl_name, params["beta"], params.get("label_smoothing", 0.0), rows=[i])[0] for i in range(B)]
    assert out.losses.tolist() == pytest.approx(trl, rel=1e-5, abs=1e-6)
    if ours == "hinge":  # the cases cover an active and an inactive hinge
        assert 0.0 in trl and max(trl) > 0


@pytest.mark.parametrize("ours,params", [("dpo", {"beta": 0.1}), ("dpo", {"beta": 0.5}), ("nca", {"beta": 0.1})])
@pytest.mark.parametrize("sft_weight", [1.0, 0.3])
def test_sft_term_matches_trl(trl_setup, ours, params, sft_weight):
    # TRL's RPO: loss_type=[<loss>, "sft"], loss_weights=[1, sft_weight], on the whole batch (its
    # NLL pools every chosen token of the batch; the fixture's responses differ in length).
    logps, run, _ = trl_setup
    trl_name = {"dpo": "sigmoid", "nca": "nca_pair"}[ours]
    trl, _ = run([trl_name, "sft"], params["beta"], loss_weights=[1.0, sft_weight])
    out = LOSSES.get(ours)(logps, **params, sft_weight=sft_weight)
    assert out.losses.mean().item() == pytest.approx(trl, rel=1e-5)
    assert trl != pytest.approx(run(trl_name, params["beta"])[0], rel=1e-3)  # the term is really there


def test_matches_trl_metrics(trl_setup):
    logps, run, _ = trl_setup
    loss, metrics = run("sigmoid", 0.1)
    out = dpo(logps, beta=0.1)
    assert out.losses.mean().item() == pytest.approx(loss, rel=1e-5)
    ours = diagnostics(out, log_grad_ratio(dpo, logps, {"beta": 0.1}))
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert ours[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-6), key
    # TRL's own sequence log-probs (fused LM head) equal the ones our losses were given.
    assert metrics["logps/chosen"] == pytest.approx(logps.chosen.mean().item(), rel=1e-5)
    assert metrics["logps/rejected"] == pytest.approx(logps.rejected.mean().item(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# The gradient theory of DESIGN.md, by autograd on leaf probabilities pi_w, pi_l (lw = log pi_w).
# --------------------------------------------------------------------------------------------

PI_W = [0.3, 0.05, 0.6, 0.01, 0.2]
PI_L = [0.2, 0.4, 0.1, 0.02, 0.2]


def prob_grads(name: str, **params) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, LossOutput]:
    """pi_w, pi_l, dL/dpi_w, dL/dpi_l (float64) for the per-pair losses of `name`."""
    pi_w = torch.tensor(PI_W, dtype=torch.float64, requires_grad=True)
    pi_l = torch.tensor(PI_L, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.0, -3.0, -0.2, -5.0, -1.5], dtype=torch.float64)
    lengths = torch.tensor([3.0, 7.0, 1.0, 12.0, 4.0], dtype=torch.float64)
    logps = PairLogps(pi_w.log(), pi_l.log(), ref, ref.flip(0), lengths, lengths.flip(0))
    out = LOSSES.get(name)(logps, **params)
    gw, gl = torch.autograd.grad(out.losses.sum(), (pi_w, pi_l))  # each loss depends on its own pair only
    return pi_w.detach(), pi_l.detach(), gw, gl, out


def test_dpo_gradient_ratio():
    pi_w, pi_l, gw, gl, _ = prob_grads("dpo")
    assert torch.allclose(gw / gl, -pi_l / pi_w, rtol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 2.0, 3.7])
@pytest.mark.parametrize("clip", [0.5, 0.45])
def test_bdpo_gradient_ratio_inside_clip_range(scale, clip):
    pi_w, pi_l, gw, gl, out = prob_grads("bdpo", scale=scale, clip=clip)
    assert ((out.lam > 0.5 - clip) & (out.lam < 0.5 + clip)).all()  # the theory holds unclipped
    theory = -(pi_l * pi_l.log()) / (pi_w * pi_w.log())
    assert torch.allclose(gw / gl, theory, rtol=1e-12)


def test_bdpo_gradient_ratio_when_clipped():
    # clip 0.1: pairs with lam outside [0.4, 0.6] get the clip's weights: ratio -(0.6/0.4)(pi_l/pi_w) etc.
    pi_w, pi_l, gw, gl, out = prob_grads("bdpo", clip=0.1)
    assert (out.lam == 0.6).any() and (out.lam == 0.4).any()
    assert torch.allclose(gw / gl, -(out.lam / (1 - out.lam)) * pi_l / pi_w, rtol=1e-12)


@pytest.mark.parametrize("name,params", [("bdpo", {}), ("bdpo", {"lambda_from": "mean", "clip": 0.5}), ("nbdpo", {"clip": 10.0})])
def test_lambda_receives_no_gradient(name, params):
    # If lam depended on lw, ll in the graph, autograd would add dL/dlam * dlam/dlw; the gradient
    # must equal the one of the same loss with lam frozen to a constant.
    w = torch.tensor([-10.0, -3.0, -20.0], dtype=torch.float64, requires_grad=True)
    l = torch.tensor([-14.0, -1.0, -21.0], dtype=torch.float64, requires_grad=True)
    ref_w, ref_l = torch.tensor([-12.0, -2.0, -19.0], dtype=torch.float64), torch.tensor([-13.0, -3.0, -20.0], dtype=torch.float64)
    lens = torch.tensor([4.0, 2.0, 9.0], dtype=torch.float64)
    out = LOSSES.get(name)(PairLogps(w, l, ref_w, ref_l, lens, lens.flip(0)), **params)
    assert not out.lam.requires_grad
    # The margin weights, constants: bDPO 2*lam and 2*(1-lam) (scale 2), nbDPO lam and 1.
    a, b = (2 * out.lam, 2 * (1 - out.lam)) if name == "bdpo" else (out.lam, torch.ones_like(out.lam))
    frozen = -torch.nn.functional.logsigmoid(0.1 * (a * (w - ref_w) - b * (l - ref_l)))
    assert torch.allclose(out.losses, frozen, rtol=1e-14)
    got = torch.autograd.grad(out.losses.sum(), (w, l))
    want = torch.autograd.grad(frozen.sum(), (w, l))
    for g, h in zip(got, want):
        assert torch.allclose(g, h, rtol=1e-14)


@pytest.mark.parametrize("name,params", [(n, {}) for n in ALL_LOSSES] + [
    ("dpo", {"sft_weight": 1.0}), ("bdpo", {"sft_weight": 0.5}), ("simpo", {"sft_weight": 2.0}),
    ("dpop", {"penalty": 5.0}), ("bounded-dpo", {"mix": 0.1}), ("cal-dpo", {"weight": 0.01})])
def test_log_grad_ratio_is_the_probability_space_ratio(name, params):
    # The helper differentiates with respect to log-probs; here autograd runs through pi itself.
    params = {"hinge": {"beta": 0.01}}.get(name, params)  # small beta keeps every hinge active
    pi_w, pi_l, gw, gl, _ = prob_grads(name, **params)
    assert (gw != 0).all() and (gl != 0).all()
    ref = torch.tensor([-1.0, -3.0, -0.2, -5.0, -1.5], dtype=torch.float64)
    lengths = torch.tensor([3.0, 7.0, 1.0, 12.0, 4.0], dtype=torch.float64)
    logps = PairLogps(pi_w.log(), pi_l.log(), ref, ref.flip(0), lengths, lengths.flip(0))
    r = log_grad_ratio(LOSSES.get(name), logps, params)
    assert torch.allclose(r, (gw.abs() / gl.abs()).log(), rtol=1e-10, atol=1e-12)


def closed_form_log_grad_ratio(name: str, p: PairLogps, params: dict) -> torch.Tensor:
    """log|dL/dlw| - log|dL/dll| + ll - lw from each loss's derivatives worked by hand."""
    beta = params.get("beta", 2.0 if name == "simpo" else 0.1)
    hw, hl = p.chosen - p.ref_chosen, p.rejected - p.ref_rejected
    lw, ll, nw, nl = p.chosen, p.rejected, p.chosen_len, p.rejected_len
    s = torch.sigmoid
    if name in ("dpo", "hinge", "robust", "cdpo"):  # outer function of beta*(hw - hl): a = b = 1
        dw, dl = torch.ones_like(hw), torch.ones_like(hw)
    elif name in ("ipo", "lndpo", "simpo"):  # margin hw/|yw| - hl/|yl| (simpo: lw/|yw| - ll/|yl|)
        dw, dl = 1 / nw, 1 / nl
    elif name == "bdpo":  # a = 2 lam, b = 2 (1 - lam), lam = ll/(lw + ll) inside the clip range
        lam = ll / (lw + ll)
        dw, dl = lam, 1 - lam
    elif name == "nbdpo":  # a = lam = 1 + clamp(lw - ll, -1/2, 1), b = 1
        dw, dl = 1 + (lw - ll).clamp(-0.5, 1.0), torch.ones_like(hw)
    elif name == "dpop":  # a = 1 + penalty [hw < 0], b = 1
        dw, dl = 1 + params.get("penalty", 50.0) * (hw < 0), torch.ones_like(hw)
    elif name == "dpo-shift":  # a = 1, b = shift
        dw, dl = torch.ones_like(hw), torch.full_like(hw, params.get("shift", 0.95))
    elif name == "bounded-dpo":  # dL/dhw = -beta s(-z); dL/dhl = beta s(-z) * m e^hl / (m e^hl + 1 - m)
        m = params.get("mix", 0.5)
        dw, dl = torch.ones_like(hw), m * hl.exp() / (m * hl.exp() + 1 - m)
    elif name == "nca":  # d/drw = -s(-rw) + s(rw)/2, d/drl = s(rl)/2
        dw, dl = -s(-beta * hw) + 0.5 * s(beta * hw), 0.5 * s(beta * hl)
    elif name == "apo-zero":  # d/dhw = -beta s(beta hw) s(-beta hw), d/dhl = beta s(beta hl) s(-beta hl)
        dw, dl = s(beta * hw) * s(-beta * hw), s(beta * hl) * s(-beta * hl)
    elif name == "cal-dpo":  # d/dhw = -s(-(hw - hl)) + 2w(hw - t), d/dhl = s(-(hw - hl)) + 2w(hl + t)
        w, t = params.get("weight", 1.0), 1 / (2 * beta)
        dw, dl = -s(-(hw - hl)) + 2 * w * (hw - t), s(-(hw - hl)) + 2 * w * (hl + t)
    else:
        raise AssertionError(name)
    return dw.abs().log() - dl.abs().log() + ll - lw


@pytest.mark.parametrize("name,params", [(n, {}) for n in ALL_LOSSES] + [
    ("dpop", {"penalty": 3.0}), ("bounded-dpo", {"mix": 0.9}), ("cal-dpo", {"weight": 0.5, "beta": 0.5}),
    ("dpo-shift", {"shift": 0.5}), ("nca", {"beta": 0.5}), ("apo-zero", {"beta": 1.0})])
def test_log_grad_ratio_equals_closed_form(name, params):
    # Log-probs of both signs of hw and hl, differing lengths; hinge active (beta*(hw - hl) < 1),
    # bDPO's lam inside [0.2, 0.8], cdpo away from its zero-gradient margin ln 9.
    p = pairs([-10.0, -6.0, -3.0, -40.0], [-14.0, -5.0, -4.0, -35.0], [-12.0, -3.0, -3.5, -38.0],
              [-13.0, -6.0, -4.2, -36.0], [5.0, 2.0, 3.0, 20.0], [4.0, 4.0, 1.0, 17.0])
    got = log_grad_ratio(LOSSES.get(name), p, params)
    assert torch.allclose(got, closed_form_log_grad_ratio(name, p, params), rtol=1e-8, atol=1e-8)


def test_log_grad_ratio_finite_where_sigmoid_saturates():
    # beta * margin = 0.1 * 2000 = 200: sigmoid(-200) underflows in float32, where autograd would
    # give 0/0; the helper differentiates in float64 (sigmoid(-200) = 1.4e-87).
    p = pairs([-1.0], [-2001.0], [-1.0], [-1.0], dtype=torch.float32)
    assert log_grad_ratio(dpo, p, {}).item() == pytest.approx(-2000.0)


def test_log_grad_ratio_nan_without_gradient():
    # An inactive hinge (beta*(hw - hl) = 0.1 * 20 >= 1) has no gradient on either side: no ratio.
    p = pairs([-1.0, -1.0], [-21.0, -2.0], [-1.0, -1.0], [-1.0, -1.0])
    r = log_grad_ratio(LOSSES.get("hinge"), p, {})
    assert math.isnan(r[0].item()) and r[1].item() == pytest.approx(-1.0)
    d = diagnostics(LOSSES.get("hinge")(p), r)
    assert d["log_grad_ratio/mean"] == pytest.approx(-1.0) and d["log_grad_ratio/rejected_dominates"] == 1.0


@pytest.mark.parametrize("fn,params", [(bdpo, {"clip": 0.0, "scale": 2.0}), (bounded_dpo, {"mix": 1.0}),
                                       (dpo_shift, {"shift": 1.0}), (dpop, {"penalty": 0.0})])
def test_limits_that_are_dpo_exactly(fn, params):
    # bDPO at lambda = 1/2 with scale 2, Bounded-DPO at mix 1, DPO-Shift at shift 1, DPOP at penalty 0.
    for dtype in (torch.float32, torch.float64):
        w = torch.tensor([-10.0, -3.5, -0.25, -700.0], dtype=dtype)
        l = torch.tensor([-14.0, -1.0, -0.75, -2.0], dtype=dtype)
        ref_w, ref_l = w.flip(0) * 0.9, l * 1.1
        lens = torch.ones_like(w)
        grads = []
        for f, kw in ((dpo, {"beta": 0.3}), (fn, {"beta": 0.3, **params})):
            cw, cl = w.clone().requires_grad_(), l.clone().requires_grad_()
            out = f(PairLogps(cw, cl, ref_w, ref_l, lens, lens), **kw)
            grads.append((out.losses.detach(), *torch.autograd.grad(out.losses.sum(), (cw, cl))))
        for a, b in zip(*grads):
            assert torch.equal(a, b)


def test_simpo_reads_no_reference():
    # The trainer hands SimPO NaN reference log-probs (trainers.reference.no_reference).
    nan = [math.nan] * 2
    p = pairs([-10.0, -6.0], [-14.0, -5.0], nan, nan, [5.0, 2.0], [4.0, 4.0])
    out = simpo(p, sft_weight=0.5)
    assert torch.isfinite(out.losses).all() and torch.isfinite(out.chosen_rewards).all()
    assert torch.isfinite(log_grad_ratio(simpo, p, {"sft_weight": 0.5})).all()


def test_bdpo_limits():
    # lw + ll = 0 exactly: lam = 1/2. Tiny log-probs: lam = ll/(lw+ll) exactly. Rounded above 0: clamped.
    p = pairs([0.0, -1e-30, 1e-7, -1e-44], [0.0, -3e-30, -2.0, -1e-44], [0.0] * 4, [0.0] * 4, dtype=torch.float32)
    out = bdpo(p, clip=0.5)
    assert out.lam.tolist() == pytest.approx([0.5, 0.75, 1.0, 0.5])
    assert torch.isfinite(out.losses).all()


def test_bdpo_clip_half_zero_weight_edge():
    # clip 0.5 and ll = 0 (pi_l = 1): lam = 0, the winner's gradient is exactly 0, log ratio -inf.
    w = torch.tensor([-3.0], requires_grad=True)
    l = torch.tensor([0.0], requires_grad=True)
    p = PairLogps(w, l, torch.tensor([-2.0]), torch.tensor([-1.0]), torch.ones(1), torch.ones(1))
    out = bdpo(p, clip=0.5)
    gw, gl = torch.autograd.grad(out.losses.sum(), (w, l))
    assert out.lam.item() == 0.0 and gw.item() == 0.0 and gl.item() != 0.0
    assert log_grad_ratio(bdpo, p, {"clip": 0.5}).item() == -math.inf
    assert math.isfinite(out.losses.item())


# --------------------------------------------------------------------------------------------
# Robustness over the whole range of log-probs (hypothesis).
# --------------------------------------------------------------------------------------------

LOGP = st.floats(min_value=-1e4, max_value=0.0, allow_nan=False, width=32)
EXTREME = st.sampled_from([0.0, -0.0, -1e-44, -1e-30, -1e-7, -1.0, -1e4, -9999.999])
LENGTH = st.integers(min_value=0, max_value=4096).map(float)
PAIR_ROW = st.tuples(st.one_of(LOGP, EXTREME), st.one_of(LOGP, EXTREME), st.one_of(LOGP, EXTREME),
                     st.one_of(LOGP, EXTREME), LENGTH, LENGTH)
EQUAL_ROW = st.builds(lambda x, r, n: (x, x, r, r, n, n), st.one_of(LOGP, EXTREME), st.one_of(LOGP, EXTREME), LENGTH)
BATCH = st.lists(st.one_of(PAIR_ROW, EQUAL_ROW), min_size=1, max_size=8)

BETA = st.floats(1e-3, 10.0)
SFT = st.sampled_from([0.0, 0.0, 0.5, 10.0])


def params_of(**extra: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries({"beta": BETA, "sft_weight": SFT, **extra})


PARAMS = {
    "dpo": params_of(),
    "bdpo": params_of(clip=st.floats(0.0, 0.49), scale=st.floats(0.5, 4.0), lambda_from=st.sampled_from(["sum", "mean"])),
    "nbdpo": params_of(clip=st.floats(0.0, 100.0), clipping=st.sampled_from(["symmetric", "asymmetric"])),
    "ipo": params_of(),
    "hinge": params_of(),
    "robust": params_of(label_smoothing=st.floats(0.0, 0.45)),
    "cdpo": params_of(label_smoothing=st.floats(0.0, 0.49)),
    "lndpo": params_of(),
    "dpop": params_of(penalty=st.floats(0.0, 500.0)),
    "cal-dpo": params_of(weight=st.floats(0.0, 10.0)),
    "bounded-dpo": params_of(mix=st.one_of(st.floats(1e-6, 1.0), st.just(1.0))),
    "simpo": params_of(gamma_ratio=st.floats(0.0, 5.0)),
    "nca": params_of(),
    "dpo-shift": params_of(shift=st.one_of(st.floats(1e-6, 1.0), st.just(1.0))),
    "apo-zero": params_of(),
}


@pytest.mark.parametrize("name", ALL_LOSSES)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_finite_everywhere(name, data):
    rows = data.draw(BATCH)
    params = data.draw(PARAMS[name])
    cols = [torch.tensor(c, dtype=torch.float32) for c in zip(*rows)]
    chosen, rejected = cols[0].clone().requires_grad_(), cols[1].clone().requires_grad_()
    fn = LOSSES.get(name)
    logps = PairLogps(chosen, rejected, *cols[2:])
    out = fn(logps, **params)
    grads = torch.autograd.grad(out.losses.sum(), (chosen, rejected))
    assert torch.isfinite(out.losses).all()
    assert all(torch.isfinite(g).all() for g in grads)
    # The log gradient ratio is NaN exactly where the loss has no gradient on either side (in the
    # helper's float64), and then left out of the diagnostics, which stay finite.
    r = log_grad_ratio(fn, logps, params)
    c64, r64 = chosen.detach().double().requires_grad_(), rejected.detach().double().requires_grad_()
    g64 = torch.autograd.grad(fn(PairLogps(c64, r64, *(c.double() for c in cols[2:])), **params).losses.sum(), (c64, r64))
    assert torch.equal(r.isnan(), (g64[0] == 0) & (g64[1] == 0))
    assert all(math.isfinite(v) for v in diagnostics(out, r).values())
    if name == "bdpo":
        clip = params["clip"]
        assert ((out.lam >= 0.5 - clip) & (out.lam <= 0.5 + clip)).all()
    if name == "nbdpo":
        dmax = params["clip"]
        lam_min = 1 / (1 + dmax) if params["clipping"] == "symmetric" else 1.0  # 1 + dmin
        assert ((out.lam >= lam_min) & (out.lam <= 1 + dmax)).all()


# --------------------------------------------------------------------------------------------
# Parameter checks, as config validation runs them.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_beta_must_be_positive(name):
    fn = LOSSES.get(name)
    check_kwargs(fn, {"beta": 0.2}, f"variants.{name}.params")
    for bad in (-0.1, 0.0):
        with pytest.raises(ConfigError, match=rf"variants.{name}.params.beta': must be > 0"):
            check_kwargs(fn, {"beta": bad}, f"variants.{name}.params")


@pytest.mark.parametrize("name,params,match", [
    ("bdpo", {"clip": 0.6}, r"params.clip': must be in \[0, 0.5\]"),
    ("bdpo", {"clip": -0.1}, r"params.clip': must be in \[0, 0.5\]"),
    ("bdpo", {"scale": 0.0}, r"params.scale': must be > 0"),
    ("bdpo", {"lambda_from": "median"}, r"params.lambda_from': 'median' is not one of 'sum' \| 'mean'"),
    ("nbdpo", {"clip": -1.0}, r"params.clip': must be >= 0"),
    ("nbdpo", {"clipping": "symetric"}, r"params.clipping'.*Did you mean 'symmetric'"),
    ("robust", {"label_smoothing": 0.5}, r"params.label_smoothing': must be in \[0, 0.5\)"),
    ("cdpo", {"label_smoothing": -0.1}, r"params.label_smoothing': must be in \[0, 0.5\)"),
    ("dpo", {"clip": 0.1}, r"params.clip': unknown parameter"),
    ("dpop", {"penalty": -1.0}, r"params.penalty': must be >= 0"),
    ("cal-dpo", {"weight": -0.1}, r"params.weight': must be >= 0"),
    ("bounded-dpo", {"mix": 0.0}, r"params.mix': must be in \(0, 1\]"),
    ("bounded-dpo", {"mix": 1.5}, r"params.mix': must be in \(0, 1\]"),
    ("simpo", {"gamma_ratio": -0.25}, r"params.gamma_ratio': must be >= 0"),
    ("dpo-shift", {"shift": 0.0}, r"params.shift': must be in \(0, 1\]"),
    ("dpo-shift", {"shift": 1.05}, r"params.shift': must be in \(0, 1\]"),
    ("dpo-shift", {"shift": -0.5}, r"params.shift': must be in \(0, 1\]"),
    ("nca", {"sft_weight": -1.0}, r"params.sft_weight': must be >= 0"),
    ("simpo", {"sft_weight": -0.1}, r"params.sft_weight': must be >= 0"),
])
def test_bad_params_rejected(name, params, match):
    with pytest.raises(ConfigError, match=match):
        check_kwargs(LOSSES.get(name), params, "variants.v.params")


def test_valid_edge_params_accepted():
    check_kwargs(bdpo, {"clip": 0.0, "scale": 1.0, "lambda_from": "mean"}, "v")
    check_kwargs(bdpo, {"clip": 0.5}, "v")
    check_kwargs(nbdpo, {"clip": 0.0, "clipping": "asymmetric"}, "v")
    check_kwargs(dpop, {"penalty": 0.0}, "v")
    check_kwargs(LOSSES.get("cal-dpo"), {"weight": 0.0}, "v")
    check_kwargs(bounded_dpo, {"mix": 1.0}, "v")
    check_kwargs(simpo, {"gamma_ratio": 0.0}, "v")
    check_kwargs(dpo_shift, {"shift": 1.0}, "v")
    for name in ALL_LOSSES:
        check_kwargs(LOSSES.get(name), {"sft_weight": 0.0}, "v")
        check_kwargs(LOSSES.get(name), {"sft_weight": 2}, "v")
