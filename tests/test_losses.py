"""The loss library: hand-worked values, agreement with TRL's own code, the gradient theory of
DESIGN.md checked by autograd, numerical robustness (hypothesis) and parameter range checks."""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.config import ConfigError, check_kwargs
from harness.registries import LOSSES
from trainers.losses import LossOutput, PairLogps, bdpo, diagnostics, dpo, nbdpo

ALL_LOSSES = ["bdpo", "cdpo", "dpo", "hinge", "ipo", "lndpo", "nbdpo", "robust"]


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
}


@pytest.mark.parametrize("name,params", list(HAND), ids=[f"{n}{dict(p)}" for n, p in HAND])
def test_hand_worked_loss(name, params):
    out = LOSSES.get(name)(PAIR, **dict(params))
    assert out.losses.item() == pytest.approx(HAND[name, params], rel=1e-12)
    # TRL's reward convention for every loss: beta * log-ratio.
    assert out.chosen_rewards.item() == pytest.approx(0.1 * HW)
    assert out.rejected_rewards.item() == pytest.approx(0.1 * HL)


@pytest.mark.parametrize("name,params,a,b,lam", [
    ("dpo", {}, 1.0, 1.0, None),
    ("bdpo", {}, 2 * 7 / 12, 2 * 5 / 12, 7 / 12),
    ("nbdpo", {}, 2.0, 1.0, 2.0),
    # symmetric dmin = 1/(1 + 1) - 1 = -0.5 would only bind for lw - ll < -0.5
    ("ipo", {}, 1 / 5, 1 / 4, None),
    ("lndpo", {}, 1 / 5, 1 / 4, None),
    ("hinge", {}, 1.0, 1.0, None),
])
def test_hand_worked_weights_and_log_grad_ratio(name, params, a, b, lam):
    out = LOSSES.get(name)(PAIR, **params)
    assert out.chosen_weight.item() == pytest.approx(a)
    assert out.rejected_weight.item() == pytest.approx(b)
    assert (out.lam is None) == (lam is None)
    if lam is not None:
        assert out.lam.item() == pytest.approx(lam)
    # log a - log b + ll - lw, with ll - lw = -14 - (-10) = -4
    assert out.log_grad_ratio.item() == pytest.approx(math.log(a) - math.log(b) - 4.0)


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
    d = diagnostics(dpo(p))
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
    d = diagnostics(bdpo(p))
    assert d["lambda/mean"] == pytest.approx((14 / 24 + 5 / 11 + 0.5) / 3)
    assert d["lambda/min"] == pytest.approx(5 / 11) and d["lambda/max"] == pytest.approx(14 / 24)


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

    def run(loss_type: str, beta: float, label_smoothing: float = 0.0, rows: list[int] | None = None):
        rows = list(range(B)) if rows is None else rows
        both = rows + [B + r for r in rows]
        trainer = types.SimpleNamespace(
            model=model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
            precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
            loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing, use_weighting=False,
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
])
def test_matches_trl_per_pair(trl_setup, ours, trl_name, params):
    logps, run, B = trl_setup
    out = LOSSES.get(ours)(logps, **params)
    trl = [run(trl_name, params["beta"], params.get("label_smoothing", 0.0), rows=[i])[0] for i in range(B)]
    assert out.losses.tolist() == pytest.approx(trl, rel=1e-5, abs=1e-6)
    if ours == "hinge":  # the cases cover an active and an inactive hinge
        assert 0.0 in trl and max(trl) > 0


def test_matches_trl_metrics(trl_setup):
    logps, run, _ = trl_setup
    loss, metrics = run("sigmoid", 0.1)
    out = dpo(logps, beta=0.1)
    assert out.losses.mean().item() == pytest.approx(loss, rel=1e-5)
    ours = diagnostics(out)
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


def test_bdpo_at_half_is_dpo_exactly():
    for dtype in (torch.float32, torch.float64):
        w = torch.tensor([-10.0, -3.5, -0.25, -700.0], dtype=dtype)
        l = torch.tensor([-14.0, -1.0, -0.75, -2.0], dtype=dtype)
        ref_w, ref_l = w.flip(0) * 0.9, l * 1.1
        lens = torch.ones_like(w)
        grads = []
        for fn, params in ((dpo, {"beta": 0.3}), (bdpo, {"beta": 0.3, "clip": 0.0, "scale": 2.0})):
            cw, cl = w.clone().requires_grad_(), l.clone().requires_grad_()
            out = fn(PairLogps(cw, cl, ref_w, ref_l, lens, lens), **params)
            grads.append((out.losses.detach(), *torch.autograd.grad(out.losses.sum(), (cw, cl))))
        for a, b in zip(*grads):
            assert torch.equal(a, b)


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
    a, b = out.chosen_weight, out.rejected_weight  # constants
    frozen = -torch.nn.functional.logsigmoid(0.1 * (a * (w - ref_w) - b * (l - ref_l)))
    assert torch.allclose(out.losses, frozen, rtol=1e-14)
    got = torch.autograd.grad(out.losses.sum(), (w, l))
    want = torch.autograd.grad(frozen.sum(), (w, l))
    for g, h in zip(got, want):
        assert torch.allclose(g, h, rtol=1e-14)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_log_grad_ratio_is_autograd_ratio(name):
    params = {"hinge": {"beta": 0.01}}.get(name, {})  # small beta keeps every hinge active
    _, _, gw, gl, out = prob_grads(name, **params)
    assert (gw != 0).all() and (gl != 0).all()
    assert torch.allclose(out.log_grad_ratio, (gw.abs() / gl.abs()).log(), rtol=1e-10, atol=1e-12)


def test_log_grad_ratio_finite_where_sigmoid_saturates():
    # beta * margin = 0.1 * 2000 = 200: sigmoid(-200) underflows in float32 and autograd gives 0/0.
    p = pairs([-1.0], [-2001.0], [-1.0], [-1.0], dtype=torch.float32)
    out = dpo(p)
    assert out.log_grad_ratio.item() == pytest.approx(-2000.0)


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
    out = bdpo(PairLogps(w, l, torch.tensor([-2.0]), torch.tensor([-1.0]), torch.ones(1), torch.ones(1)), clip=0.5)
    gw, gl = torch.autograd.grad(out.losses.sum(), (w, l))
    assert out.lam.item() == 0.0 and gw.item() == 0.0 and gl.item() != 0.0
    assert out.log_grad_ratio.item() == -math.inf
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

PARAMS = {
    "dpo": st.fixed_dictionaries({"beta": st.floats(1e-3, 10.0)}),
    "bdpo": st.fixed_dictionaries({
        "beta": st.floats(1e-3, 10.0), "clip": st.floats(0.0, 0.49), "scale": st.floats(0.5, 4.0),
        "lambda_from": st.sampled_from(["sum", "mean"])}),
    "nbdpo": st.fixed_dictionaries({
        "beta": st.floats(1e-3, 10.0), "clip": st.floats(0.0, 100.0),
        "clipping": st.sampled_from(["symmetric", "asymmetric"])}),
    "ipo": st.fixed_dictionaries({"beta": st.floats(1e-3, 10.0)}),
    "hinge": st.fixed_dictionaries({"beta": st.floats(1e-3, 10.0)}),
    "robust": st.fixed_dictionaries({"beta": st.floats(1e-3, 10.0), "label_smoothing": st.floats(0.0, 0.45)}),
    "cdpo": st.fixed_dictionaries({"beta": st.floats(1e-3, 10.0), "label_smoothing": st.floats(0.0, 0.49)}),
    "lndpo": st.fixed_dictionaries({"beta": st.floats(1e-3, 10.0)}),
}


@pytest.mark.parametrize("name", ALL_LOSSES)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_finite_everywhere(name, data):
    rows = data.draw(BATCH)
    params = data.draw(PARAMS[name])
    cols = [torch.tensor(c, dtype=torch.float32) for c in zip(*rows)]
    chosen, rejected = cols[0].clone().requires_grad_(), cols[1].clone().requires_grad_()
    out = LOSSES.get(name)(PairLogps(chosen, rejected, *cols[2:]), **params)
    grads = torch.autograd.grad(out.losses.sum(), (chosen, rejected))
    assert torch.isfinite(out.losses).all()
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(out.log_grad_ratio).all()
    assert all(math.isfinite(v) for v in diagnostics(out).values())
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
])
def test_bad_params_rejected(name, params, match):
    with pytest.raises(ConfigError, match=match):
        check_kwargs(LOSSES.get(name), params, "variants.v.params")


def test_valid_edge_params_accepted():
    check_kwargs(bdpo, {"clip": 0.0, "scale": 1.0, "lambda_from": "mean"}, "v")
    check_kwargs(bdpo, {"clip": 0.5}, "v")
    check_kwargs(nbdpo, {"clip": 0.0, "clipping": "asymmetric"}, "v")
