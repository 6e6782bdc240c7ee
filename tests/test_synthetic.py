"""The synthetic experiment: grid and Bradley-Terry formulas, the mask, learning, determinism,
vectorised == loop, and the `bdpo synthetic` command with its report files."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.config import SyntheticConfig, SyntheticMethodConfig
from harness.io import read_json
from reports.synthetic import markdown_table, verdict, verdict_table, write_synthetic_report
from trainers.synthetic import (
    data_rng, make_problem, masked_cells, ood_overestimation, preference_prob, project_to_simplex,
    run_synthetic, sample_pairs, simulate, utility_table,
)

SMALL = SyntheticConfig(n_seeds=2, mask_rates=(0.0, 0.4), steps=30, log_every=10)


def test_utility_matches_formula():
    mu = torch.tensor([0.0, 7.3, 19.0], dtype=torch.float64)
    u = utility_table(mu, 20, 2.0)
    for x, m in enumerate(mu.tolist()):
        for y in range(20):
            assert u[x, y].item() == pytest.approx(math.exp(-((y - m) ** 2) / (2 * 2.0**2)), rel=1e-12)
    problem = make_problem(SyntheticConfig(), seed=3)
    # Each prompt peaks at the response nearest its mu; all values are in (0, 1].
    assert problem.utility.shape == (20, 20)
    assert (problem.utility > 0).all() and (problem.utility <= 1).all()
    assert (problem.utility.amax(1) > math.exp(-0.25 / 8)).all()  # the peak is within 0.5 of a response


def test_bradley_terry_probability_and_sampling_frequencies():
    ua, ub = torch.tensor([0.9, 0.1]), torch.tensor([0.2, 0.8])
    expected = [1 / (1 + math.exp(-5 * (0.9 - 0.2))), 1 / (1 + math.exp(-5 * (0.1 - 0.8)))]
    assert preference_prob(ua, ub, 5.0).tolist() == pytest.approx(expected, rel=1e-6)

    # One prompt, 4 responses: the empirical win rate of every ordered pair matches the formula.
    utility = torch.tensor([[0.0, 0.3, 0.6, 1.0]], dtype=torch.float64)
    n = 60_000
    pairs = sample_pairs(utility, torch.zeros(1, 4, dtype=torch.bool), n, 3.0, np.random.default_rng(0))
    assert (pairs.chosen != pairs.rejected).all()
    for a in range(4):
        for b in range(a + 1, 4):
            a_won = ((pairs.chosen == a) & (pairs.rejected == b)).sum().item()
            b_won = ((pairs.chosen == b) & (pairs.rejected == a)).sum().item()
            total = a_won + b_won
            assert total == pytest.approx(n / 6, rel=0.05)  # pairs are uniform over the 6 unordered pairs
            p = preference_prob(utility[0, a], utility[0, b], 3.0).item()
            assert a_won / total == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / total))


def test_masked_cells_never_appear_in_the_data_and_masks_are_nested():
    cfg = SyntheticConfig()
    problem = make_problem(cfg, seed=1)
    m2, m4 = masked_cells(problem.mask_order, 0.2), masked_cells(problem.mask_order, 0.4)
    assert (m2.sum(1) == 4).all() and (m4.sum(1) == 8).all()
    assert (m4 | m2).equal(m4)  # rate 0.4 hides everything rate 0.2 hides
    pairs = sample_pairs(problem.utility, m4, 500, cfg.reward_scale, data_rng(1, 0.4))
    assert not m4[pairs.prompt, pairs.chosen].any()
    assert not m4[pairs.prompt, pairs.rejected].any()
    # Every unmasked response still takes part.
    seen = torch.zeros_like(m4)
    seen[pairs.prompt, pairs.chosen] = True
    seen[pairs.prompt, pairs.rejected] = True
    assert seen.equal(~m4)


def test_simplex_projection():
    torch.manual_seed(0)
    v = torch.randn(50, 7, dtype=torch.float64)
    floor = 1e-3
    q = project_to_simplex(v, floor)
    assert torch.allclose(q.sum(-1), torch.ones(50, dtype=torch.float64))
    assert (q >= floor - 1e-15).all()
    assert torch.allclose(project_to_simplex(q, floor), q)  # idempotent
    # Closest feasible point: no random feasible point is closer to v.
    r = project_to_simplex(torch.rand(50, 1000, 7, dtype=torch.float64) * 3, floor)
    assert ((q - v).norm(dim=-1)[:, None] <= (r - v[:, None]).norm(dim=-1) + 1e-12).all()


def test_ood_overestimation_by_hand():
    # One run, one prompt, 3 responses, response 2 masked. Policy = reference: implicit reward 0,
    # so the gap is minus the centred true reward: -(r2 - mean(r0, r1)).
    log_pi = torch.log(torch.tensor([[[0.2, 0.3, 0.5]]], dtype=torch.float64))
    reward = torch.tensor([[[1.0, 3.0, 0.5]]], dtype=torch.float64)
    masked = torch.tensor([[[False, False, True]]])
    beta = torch.tensor([0.1], dtype=torch.float64)
    assert ood_overestimation(log_pi, log_pi, beta, reward, masked).item() == pytest.approx(-(0.5 - 2.0))
    # Doubling the masked response's probability adds beta*log 2 to its implicit reward.
    moved = torch.log(torch.tensor([[[0.2, 0.3, 1.0]]], dtype=torch.float64))
    assert ood_overestimation(moved, log_pi, beta, reward, masked).item() == pytest.approx(1.5 + 0.1 * math.log(2))


def test_every_method_learns_with_mask_zero_and_enough_data():
    cfg = SyntheticConfig(n_seeds=3, mask_rates=(0.0,), pairs_per_prompt=200, steps=300, log_every=100)
    sim = simulate(cfg)
    reference = sim["reference"]["utility"][:, 0]  # [S]
    for k, method in enumerate(cfg.methods):
        learned = sim["final"]["utility"][k, :, 0]
        assert (learned > reference + 0.1).all(), (method.name, learned, reference)


def _deterministic_part(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in ("environment", "created", "wall_seconds")}


def test_same_seed_same_results_and_other_seed_differs(tmp_path):
    a = run_synthetic(SMALL, tmp_path / "a", progress=False)
    b = run_synthetic(SMALL, tmp_path / "b", progress=False)
    assert _deterministic_part(a) == _deterministic_part(b)
    assert _deterministic_part(read_json(tmp_path / "a" / "results.json")) == _deterministic_part(a)
    c = run_synthetic(dataclasses.replace(SMALL, seed=5), tmp_path / "c", progress=False)
    assert c["per_seed"]["dpo"]["0"]["utility"] != a["per_seed"]["dpo"]["0"]["utility"]


@pytest.mark.parametrize("cfg", [
    SMALL,
    dataclasses.replace(SMALL, parameterization="probabilities", ref_warmup_steps=5, optimizer="sgd",
                        learning_rate=0.05),
], ids=["softmax-adam", "probabilities-sgd-warmup"])
def test_vectorised_run_equals_a_plain_loop(cfg):
    sim = simulate(cfg)
    for k, method in enumerate(cfg.methods):
        for i in range(cfg.n_seeds):
            for j, rate in enumerate(cfg.mask_rates):
                one = dataclasses.replace(cfg, seed=cfg.seed + i, n_seeds=1, mask_rates=(rate,),
                                          methods=(method,), baseline=method.name)
                alone = simulate(one)
                for metric, values in sim["final"].items():
                    np.testing.assert_allclose(values[k, i, j], alone["final"][metric][0, 0, 0],
                                               rtol=1e-10, atol=1e-12, err_msg=f"{method.name} {metric}")
                for step_v, step_a in zip(sim["curves"]["utility"], alone["curves"]["utility"]):
                    np.testing.assert_allclose(step_v[k, i, j], step_a[0, 0, 0], rtol=1e-10, atol=1e-12)


def test_command_writes_results_table_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["synthetic", "n_seeds=2", "steps=20", "log_every=10", "mask_rates=[0,0.2]", "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "nbdpo-asym" in printed and str(out / "results.json") in printed
    results = read_json(out / "results.json")
    assert results["config"]["n_seeds"] == 2 and results["config"]["steps"] == 20
    assert "torch" in results["environment"]["versions"] and results["environment"]["git_hash"]
    assert results["mask_rates"] == ["0", "0.2"]
    assert set(results["vs_baseline"]) == {"bdpo", "nbdpo-sym", "nbdpo-asym"}
    table = (out / "table.md").read_text()
    assert table == markdown_table(results) + "\n" + verdict_table(results) and "| 0.2 | bdpo |" in table
    for name in ("utility_curves.png", "ood_mass.png", "grad_ratio_hist.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The report rebuilds from the JSON alone, anywhere.
    paths = write_synthetic_report(out / "results.json", tmp_path / "elsewhere")
    assert paths["table"].read_text() == table

    # A different config does not silently replace those results.
    before = (out / "results.json").read_bytes()
    assert main(["synthetic", "n_seeds=3", "steps=20", "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


@pytest.mark.parametrize("override, names", [
    ("mask_rates=[0.95]", "mask_rates"),
    ("n_seedz=3", "n_seeds"),
    ("synthetic.parameterization=logits", "softmax"),
    ("methods.bdpo.params.clip=0.9", "synthetic.methods.bdpo.params.clip"),
    ("methods.bdpo.params.clipp=0.2", "clip"),
    ("methods.bdpo.loss=bdp", "bdpo"),
])
def test_bad_settings_are_one_line_errors(override, names, tmp_path, capsys):
    assert main(["synthetic", override, "steps=1", "n_seeds=1", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and names in err, err
    assert not (tmp_path / "results.json").exists()


def test_config_file_section_and_overrides(tmp_path):
    import yaml

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"run_root": str(tmp_path / "runs"),
                                    "synthetic": {"n_seeds": 2, "steps": 10, "mask_rates": [0.2]}}))
    assert main(["synthetic", str(path), "methods.bdpo.params.clip=0.3", "synthetic.log_every=5", "--no-progress"]) == 0
    results = read_json(tmp_path / "runs" / "synthetic" / "results.json")
    assert results["config"]["steps"] == 10 and results["config"]["log_every"] == 5
    bdpo = next(m for m in results["methods"] if m["name"] == "bdpo")
    assert bdpo["params"] == {"beta": 0.1, "clip": 0.3, "scale": 2.0, "lambda_from": "sum", "sft_weight": 0.0}
    assert results["curves"]["steps"] == [0, 5, 10]


def test_missing_config_file_is_a_user_error(tmp_path, capsys):
    assert main(["synthetic", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]) == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err


def test_family_config_and_methods_option(tmp_path, capsys):
    out = tmp_path / "family"
    args = ["synthetic", "configs/synthetic-family.yaml", "n_seeds=2", "steps=4", "log_every=2", "mask_rates=[0.4]",
            "--methods", "dpo,simpo,cal-dpo,rpo", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    results = read_json(out / "results.json")
    assert [m["name"] for m in results["methods"]] == ["dpo", "cal-dpo", "simpo", "rpo"]  # the config's order
    assert next(m for m in results["methods"] if m["name"] == "rpo")["params"] == {"beta": 0.1, "sft_weight": 1.0}
    # SimPO has no reference, so no implicit reward beta*log(pi/pi_ref) to overestimate with.
    assert results["summary"]["simpo"]["0.4"]["ood_overestimation"] is None
    assert results["summary"]["cal-dpo"]["0.4"]["ood_overestimation"] is not None
    assert "| simpo |" in (out / "table.md").read_text().split("Which methods beat dpo")[1]
    # The whole config (12 methods) is valid; an unknown or baseline-less selection is a one-line error.
    assert main(["synthetic", "configs/synthetic-family.yaml", "--methods", "dpo,simpp", "--out", str(tmp_path / "x")]) == 2
    assert "Did you mean 'simpo'" in capsys.readouterr().err
    assert main(["synthetic", "configs/synthetic-family.yaml", "--methods", "nca", "--out", str(tmp_path / "x")]) == 2
    assert "baseline 'dpo'" in capsys.readouterr().err
    assert not (tmp_path / "x" / "results.json").exists()


def test_verdict_needs_the_ci_to_exclude_zero():
    stat = lambda m, lo, hi: {"mean": m, "ci_low": lo, "ci_high": hi, "n": 20}  # noqa: E731
    assert verdict(stat(0.05, 0.01, 0.09), higher_is_better=True) == "better"
    assert verdict(stat(0.05, 0.01, 0.09), higher_is_better=False) == "worse"
    assert verdict(stat(-0.05, -0.09, -0.01), higher_is_better=True) == "worse"
    assert verdict(stat(0.05, -0.01, 0.11), higher_is_better=True) == "no difference"
    assert verdict(None, True) == "–" and verdict(stat(0.1, None, None), True) == "–"


def test_methods_are_config_entries():
    cfg = SyntheticConfig()
    assert [m.name for m in cfg.methods] == ["dpo", "bdpo", "nbdpo-sym", "nbdpo-asym"]
    assert cfg.methods[1] == SyntheticMethodConfig("bdpo", "bdpo", {"beta": 0.1, "clip": 0.5})
    with pytest.raises(ValueError, match="baseline"):
        SyntheticConfig(baseline="ipo")


def test_mean_ci_is_the_student_t_interval():
    import scipy.stats

    from trainers.synthetic import mean_ci

    values = np.array([0.1, 0.4, 0.35, 0.2, 0.9])
    got = mean_ci(values, 0.95)
    low, high = scipy.stats.t.interval(0.95, 4, loc=values.mean(), scale=scipy.stats.sem(values))
    assert (got["mean"], got["n"]) == (pytest.approx(values.mean()), 5)
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert mean_ci(np.array([0.3]), 0.95)["ci_low"] is None
