"""`bdpo report`: numbers recomputed independently from the score files, escaping, byte-identical
results.json, bad inputs, and the page rendered in headless Chromium.

Each test writes a real run directory (manifest, generations, scores, train logs) with the layout
of harness/records.py; nothing is mocked.
"""

from __future__ import annotations

import csv
import html
import json
import math
import shutil
import statistics
import subprocess
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import torch
import pytest
from scipy import stats as sps

from harness.cli import main
from harness.errors import UserError
from harness.records import TRAIN_LOG_FIELDS
from reports.build import build_report
from reports.manifest import parse_manifest
from reports.results_folder import export_results_folder

HOSTILE = [
    "<script>alert('x')</script>",
    "</table></details><h1>broken</h1>",
    '"><img src=x onerror=alert(1)>',
]

# variant -> (loss, sweep, reward shift, cost shift)
VARIANTS = {
    "dpo": ("dpo", {"beta": 0.1}, 0.0, 0.0),
    "bdpo-c0.1": ("bdpo", {"beta": 0.1, "clip": 0.1}, 0.3, -0.2),
    "bdpo-c0.3": ("bdpo", {"beta": 0.1, "clip": 0.3}, 0.5, -0.4),
    "bdpo-b0.5": ("bdpo", {"beta": 0.5, "clip": 0.3}, 0.2, 0.1),
}
SEEDS = [0, 1]
SOURCES = ("helpful", "harmless")  # prompt ids are "<source>:<key>", as harness/data.py writes them
N_PROMPTS = 14
N_SAMPLES = 2


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


HELDOUT = {"accuracy": 0.653, "ci_low": 0.598, "ci_high": 0.705, "n": 300, "confidence": 0.95, "correct": 196}


def write_run(root: Path, seed: int = 0) -> Path:
    """A complete run directory: 4 variants x 2 seeds + the reference, reward and cost scorers."""
    rng = np.random.default_rng(seed)
    units = [{"unit": "reference", "variant": "reference", "seed": None, "loss": None, "params": {}, "train": {},
              "sweep": {}}]
    for name, (loss, sweep, _, _) in VARIANTS.items():
        for s in SEEDS:
            units.append({"unit": f"{name}-seed{s}", "variant": name, "seed": s, "loss": loss,
                          "params": dict(sweep), "train": {}, "sweep": dict(sweep)})
    prompt_effect = rng.normal(0, 1, N_PROMPTS)
    shifts = {"reference": (-0.5, 0.5), **{k: (v[2], v[3]) for k, v in VARIANTS.items()}}
    for u in units:
        r_shift, c_shift = shifts[u["variant"]]
        gens, rewards, costs = [], [], []
        for p in range(N_PROMPTS):
            for k in range(N_SAMPLES):
                pid = f"{SOURCES[p % 2]}:p{p:02d}"
                text = HOSTILE[(p + k) % 3] if p < 3 else f"Answer {p}.{k} from {u['unit']} & co"
                gens.append({"prompt_id": pid, "sample_idx": k, "prompt": f"USER: question {p} <b>bold?</b> ASSISTANT:",
                             "response": text, "n_tokens": int(rng.integers(5, 60)),
                             "finish_reason": "stop", "cache_key": f"{u['unit']}-{pid}-{k}"})
                # Rounded to one decimal so that ties occur and the 1/2 rule matters.
                rewards.append({"prompt_id": pid, "sample_idx": k,
                                "score": round(float(prompt_effect[p] + r_shift + rng.normal(0, 1)), 1)})
                costs.append({"prompt_id": pid, "sample_idx": k,
                              "score": round(float(-prompt_effect[p] + c_shift + rng.normal(0, 1)), 1)})
        # Rows in a shuffled order: the report must match by key, not by line.
        _jsonl(root / "generations" / f"{u['unit']}.jsonl", [gens[i] for i in rng.permutation(len(gens))])
        _jsonl(root / "scores" / f"{u['unit']}.reward.jsonl", rewards)
        _jsonl(root / "scores" / f"{u['unit']}.cost.jsonl", costs[::-1])
        if u["loss"] is not None:
            log = []
            for step in range(1, 6):
                row = {f: float(rng.normal()) for f in TRAIN_LOG_FIELDS}
                row["step"] = step
                if u["loss"] == "dpo":
                    row["lambda/mean"] = row["lambda/min"] = row["lambda/max"] = None
                log.append(row)
            _jsonl(root / "checkpoints" / u["unit"] / "train_log.jsonl", log)
    manifest = {
        "experiment": "report-test", "baseline": "dpo", "units": units,
        "scorers": [{"name": "reward", "score_type": "reward", "threshold": 0.0},
                    {"name": "cost", "score_type": "cost", "threshold": 0.0}],
        "config": {"experiment": "report-test", "report": {"bootstrap_samples": 400, "seed": 3}},
        "provenance": {"versions": {"torch": "2.13.0"}, "git_hash": "abc123"},
        "data_hashes": {"train_pairs": "d" * 64}, "model_hash": "m" * 64, "seeds": SEEDS,
        "timestamps": {"train/dpo-seed0": "2026-01-01T00:00:00+00:00"},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    # The run trained its reward scorer (scorer.json with the held-out accuracy); the cost model was given.
    (root / "scorers" / "reward").mkdir(parents=True)
    (root / "scorers" / "reward" / "scorer.json").write_text(json.dumps({"heldout": HELDOUT, "offset": 0.0}))
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    run = write_run(tmp_path_factory.mktemp("run") / "report-test")
    assert main(["report", str(run)]) == 0
    return run


# ---------------------------------------------------------------- independent recomputation (plain python)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _scores(run: Path, unit: str, scorer: str) -> dict[tuple[str, int], float]:
    return {(r["prompt_id"], r["sample_idx"]): r["score"] for r in _read(run / "scores" / f"{unit}.{scorer}.jsonl")}


def _units(run: Path) -> dict[str, list[dict]]:
    by_variant = defaultdict(list)
    for u in json.loads((run / "manifest.json").read_text())["units"]:
        by_variant[u["variant"]].append(u)
    return by_variant


def _pairs(run: Path, variant: str, other: str, scorer: str, keyed: bool = False) -> list:
    """(variant score, other score) on the same seed, prompt and sample; the reference pairs with every seed
    (with keyed: ((prompt_id, sample_idx), variant score, other score))."""
    units = _units(run)
    seeds = sorted({u["seed"] for u in units[variant] + units[other] if u["seed"] is not None})

    def at(v: str, seed: int) -> dict:
        return next(u for u in units[v] if u["seed"] in (None, seed))

    out = []
    for seed in seeds:
        a, b = _scores(run, at(variant, seed)["unit"], scorer), _scores(run, at(other, seed)["unit"], scorer)
        out += [(key, a[key], b[key]) if keyed else (a[key], b[key]) for key in sorted(a)]
    return out


def _mcnemar(a: list[bool], b: list[bool]) -> float:
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def test_numbers_match_the_score_files(built):
    results = json.loads((built / "results.json").read_text())
    board = {row["variant"]: row["metrics"] for row in results["leaderboard"]}
    units = _units(built)
    assert set(board) == {"reference", *VARIANTS}
    assert results["n_prompts"] == N_PROMPTS and results["n_samples_per_prompt"] == N_SAMPLES
    for variant, metrics in board.items():
        rewards = [s for u in units[variant] for s in _scores(built, u["unit"], "reward").values()]
        costs = [s for u in units[variant] for s in _scores(built, u["unit"], "cost").values()]
        lengths = [g["n_tokens"] for u in units[variant] for g in _read(built / "generations" / f"{u['unit']}.jsonl")]
        assert metrics["reward.mean"]["value"] == pytest.approx(sum(rewards) / len(rewards), abs=1e-12)
        assert metrics["cost.mean"]["value"] == pytest.approx(sum(costs) / len(costs), abs=1e-12)
        assert metrics["cost.safe_rate"]["value"] == pytest.approx(sum(c <= 0 for c in costs) / len(costs), abs=1e-12)
        assert metrics["length.mean"]["value"] == pytest.approx(sum(lengths) / len(lengths), abs=1e-12)
        assert metrics["reward.mean"]["n"] == N_PROMPTS
        assert metrics["reward.mean"]["n_seeds"] == len(units[variant])
        for key in ("reward.mean", "cost.mean", "cost.safe_rate", "length.mean"):
            m = metrics[key]
            assert m["ci_low"] <= m["value"] <= m["ci_high"], key
        assert metrics["reward.mean"]["higher_is_better"] is True
        assert metrics["cost.mean"]["higher_is_better"] is False
        for other, label in (("dpo", "baseline"), ("reference", "reference")):
            if other == variant:
                assert metrics[f"reward.win_vs_{label}"] is None
                continue
            pr = _pairs(built, variant, other, "reward")
            pc = _pairs(built, variant, other, "cost")
            win_r = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pr) / len(pr)
            win_c = sum(1.0 if a < b else 0.5 if a == b else 0.0 for a, b in pc) / len(pc)
            assert metrics[f"reward.win_vs_{label}"]["value"] == pytest.approx(win_r, abs=1e-12)
            assert metrics[f"cost.win_vs_{label}"]["value"] == pytest.approx(win_c, abs=1e-12)
        for key in ("reward.win_vs_baseline", "cost.win_vs_reference"):
            e = metrics[key]
            if e is not None:  # strict win, tie and loss shares; the win rate counts ties 1/2
                assert e["win"] + e["tie"] + e["loss"] == pytest.approx(1.0)
                assert e["value"] == pytest.approx(e["win"] + e["tie"] / 2)
        # Training diagnostics: one value per seed, their mean, a t interval over seeds and the range.
        if variant == "reference":
            assert metrics["train.chosen_logp_drift"] is None
            continue
        assert "train.reward_accuracy" not in metrics  # the last batch's 4 pairs: replaced by held-out accuracy
        logs = [_read(built / "checkpoints" / u["unit"] / "train_log.jsonl") for u in units[variant]]
        beta = VARIANTS[variant][1]["beta"]
        for key, field in (("train.chosen_logp_drift", "rewards/chosen"), ("train.rejected_logp_drift", "rewards/rejected")):
            # rewards/* = beta (log pi - log pi_ref) of each step's batch: / beta, mean over steps, then seeds.
            per_seed = [sum(r[field] for r in log) / len(log) / beta for log in logs]
            m = metrics[key]
            assert m["per_seed"] == pytest.approx(per_seed, abs=1e-12)
            assert m["value"] == pytest.approx(sum(per_seed) / len(per_seed), abs=1e-12)
            assert (m["min"], m["max"]) == pytest.approx((min(per_seed), max(per_seed)))
            sd = statistics.stdev(per_seed)
            half = sps.t.ppf(0.975, len(per_seed) - 1) * sd / math.sqrt(len(per_seed))
            assert (m["ci_low"], m["ci_high"]) == pytest.approx((m["value"] - half, m["value"] + half))
        if variant == "dpo":
            assert metrics["train.lambda_mean"] is None  # not defined for DPO (null in its log)
        else:
            # Per-batch quantities: the mean over every logged step, then over seeds.
            assert metrics["train.lambda_mean"]["value"] == pytest.approx(
                sum(sum(r["lambda/mean"] for r in log) / len(log) for log in logs) / len(logs), abs=1e-12)
        for key, field in (("train.log_grad_ratio", "log_grad_ratio/mean"),
                           ("train.rejected_dominates", "log_grad_ratio/rejected_dominates")):
            assert metrics[key]["value"] == pytest.approx(
                sum(sum(r[field] for r in log) / len(log) for log in logs) / len(logs), abs=1e-12)


def _subset_pairs(pairs_by_key: list[tuple[tuple[str, int], float, float]], subset: str) -> list[tuple[float, float]]:
    return [(a, b) for (pid, _), a, b in pairs_by_key if subset == "all" or pid.startswith(subset + ":")]


def test_comparisons_match_the_score_files(built):
    results = json.loads((built / "results.json").read_text())
    rows = {(c["variant"], c["against"], c["subset"], c["metric"]): c for c in results["comparisons"]}
    metrics = ("reward.mean", "cost.mean", "cost.safe_rate")
    subsets = ("all", *SOURCES)
    others = ["reference", *[v for v in VARIANTS if v != "dpo"]]
    expected = {(v, "dpo", sub, m) for v in others for sub in subsets for m in metrics}
    expected |= {(v, "reference", sub, m) for v in VARIANTS for sub in subsets for m in metrics}
    assert set(rows) == expected  # no matched arms: no dpo variant other than the baseline
    for v in others:
        for sub in subsets:
            for scorer in ("reward", "cost"):
                keyed = _pairs(built, v, "dpo", scorer, keyed=True)
                pairs = _subset_pairs(keyed, sub)
                c = rows[(v, "dpo", sub, f"{scorer}.mean")]
                assert c["difference"] == pytest.approx(sum(a - b for a, b in pairs) / len(pairs), abs=1e-12)
                assert c["ci_low"] <= c["difference"] <= c["ci_high"]
                assert c["n"] == (N_PROMPTS if sub == "all" else N_PROMPTS // 2)
                # Secondary analytic test, recomputed: paired t on seed-averaged per-prompt differences.
                per_prompt = defaultdict(list)
                for (pid, _), a, b in keyed:
                    if sub == "all" or pid.startswith(sub + ":"):
                        per_prompt[pid].append(a - b)
                means = [sum(d) / len(d) for d in per_prompt.values()]
                assert c["p_t_prompts"] == pytest.approx(sps.ttest_1samp(means, 0.0).pvalue, rel=1e-9)
                assert 0 < c["p_value"] <= 1 and c["test"].startswith("crossed t")
                assert len(c["per_seed"]) == len(SEEDS)
                assert sum(c["per_seed"]) / len(SEEDS) == pytest.approx(c["difference"], abs=1e-12)
            pairs = _subset_pairs(_pairs(built, v, "dpo", "cost", keyed=True), sub)
            safe_a, safe_b = [a <= 0 for a, _ in pairs], [b <= 0 for _, b in pairs]
            c = rows[(v, "dpo", sub, "cost.safe_rate")]
            assert c["difference"] == pytest.approx((sum(safe_a) - sum(safe_b)) / len(pairs), abs=1e-12)
            assert c["p_mcnemar"] == pytest.approx(_mcnemar(safe_a, safe_b), rel=1e-9)
    # No primary registered: every row is exploratory, and Holm runs over all of them, by hand: sort,
    # scale by (m - rank), running maximum, cap at 1.
    assert results["primary"] is None and {c["role"] for c in results["comparisons"]} == {"exploratory"}
    ps = [c["p_value"] for c in results["comparisons"]]
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    running, expected_holm = 0.0, [0.0] * len(ps)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        expected_holm[i] = running
    assert [c["p_holm"] for c in results["comparisons"]] == pytest.approx(expected_holm)


def test_subsets_and_positive_control(built):
    results = json.loads((built / "results.json").read_text())
    assert set(results["subsets"]) == set(SOURCES)
    units = _units(built)
    for sub in SOURCES:
        board = results["subsets"][sub]["leaderboard"]
        assert results["subsets"][sub]["n_prompts"] == N_PROMPTS // 2
        for variant, metrics in board.items():
            rewards = [s for u in units[variant] for (pid, _), s in _scores(built, u["unit"], "reward").items()
                       if pid.startswith(sub + ":")]
            assert metrics["reward.mean"]["value"] == pytest.approx(sum(rewards) / len(rewards), abs=1e-12)
            assert not any(k.startswith("train.") for k in metrics)
    pc = results["positive_control"]["all"]
    assert pc["heldout"] is None  # no heldout/ files in this run
    rows = {(c["variant"], c["against"], c["subset"], c["metric"]): c for c in results["comparisons"]}
    assert [e["metric"] for e in pc["scorers"]] == ["reward.mean", "cost.mean", "cost.safe_rate"]
    for e in pc["scorers"]:
        assert e["difference"] == rows[("dpo", "reference", "all", e["metric"])]["difference"]
        assert e["moved"] == (e["p_value"] < 0.05)
    assert pc["moved_on"] == [e["metric"] for e in pc["scorers"] if e["moved"]]
    md = (built / "report" / "leaderboard.md").read_text()
    assert md.index("## Primary comparison") < md.index("## Positive control") < md.index("## Leaderboard")
    assert "every comparison in this report is exploratory" in md
    assert "ties count 1/2" in md and "strict win" in md
    assert "### Source 'harmless'" in md


def test_leaderboard_csv_and_md_agree_with_results(built):
    results = json.loads((built / "results.json").read_text())
    board = {row["variant"]: row["metrics"] for row in results["leaderboard"]}
    with open(built / "report" / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == [row["variant"] for row in results["leaderboard"]]
    # Ordered by the primary metric (mean reward), best first.
    means = [float(r["reward.mean"]) for r in rows]
    assert means == sorted(means, reverse=True)
    for r in rows:
        assert float(r["cost.safe_rate"]) == board[r["variant"]]["cost.safe_rate"]["value"]
        assert float(r["reward.mean.ci_low"]) == board[r["variant"]]["reward.mean"]["ci_low"]
    md = (built / "report" / "leaderboard.md").read_text()
    dpo = board["dpo"]["reward.mean"]
    assert f"{dpo['value']:.3f} [{dpo['ci_low']:.3f}, {dpo['ci_high']:.3f}]" in md


def test_scorer_quality_is_reported(built):
    results = json.loads((built / "results.json").read_text())
    reward, cost = results["scorers"]
    assert reward["heldout"] == {k: HELDOUT[k] for k in ("accuracy", "ci_low", "ci_high", "n", "confidence")}
    assert cost["heldout"] is None
    assert "scorers/reward/scorer.json#heldout" in results["inputs"]
    md = (built / "report" / "leaderboard.md").read_text()
    assert "reward (reward): held-out pairwise accuracy 0.653 [0.598, 0.705] (95% CI, 300 pairs" in md
    assert "cost (cost; safe means score <= 0): a given model" in md
    assert "held-out pairwise accuracy 0.653" in (built / "report" / "index.html").read_text()


def test_ablation_pivots_follow_the_sweep(built):
    results = json.loads((built / "results.json").read_text())
    board = {row["variant"]: row["metrics"] for row in results["leaderboard"]}
    tables = {(t["field"], t["metric"]): t for t in results["ablations"]}
    clip = tables[("clip", "reward.mean")]
    assert clip["values"] == [0.1, 0.3]
    assert [(r["loss"], r["fixed"], r["variants"]) for r in clip["rows"]] == [
        ("bdpo", {"beta": 0.1}, ["bdpo-c0.1", "bdpo-c0.3"]),
        ("bdpo", {"beta": 0.5}, [None, "bdpo-b0.5"]),
    ]
    assert clip["rows"][0]["cells"][1] == board["bdpo-c0.3"]["reward.mean"]
    beta = tables[("beta", "cost.safe_rate")]
    assert beta["values"] == [0.1, 0.5]
    assert [(r["loss"], r["fixed"], r["variants"]) for r in beta["rows"]] == [
        ("bdpo", {"clip": 0.1}, ["bdpo-c0.1", None]),
        ("bdpo", {"clip": 0.3}, ["bdpo-c0.3", "bdpo-b0.5"]),
        ("dpo", {}, ["dpo", None]),
    ]
    md = " ".join((built / "report" / "ablations.md").read_text().split())  # columns are padded
    a, b = board["bdpo-c0.1"]["reward.mean"], board["bdpo-c0.3"]["reward.mean"]
    assert (f"| bdpo | beta=0.1 | reward mean ↑ | {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] | "
            f"{b['value']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}] |") in md
    # ablations.csv: the same cells in long form, at full precision.
    with open(built / "report" / "ablations.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if (r["field"], r["metric"], r["variant"]) == ("clip", "reward.mean", "bdpo-c0.3")]
    assert len(rows) == 1 and float(rows[0]["estimate"]) == b["value"] and float(rows[0]["ci_low"]) == b["ci_low"]


def test_results_carry_provenance_and_are_byte_identical(built, tmp_path):
    results = json.loads((built / "results.json").read_text())
    assert results["schema_version"] == 2
    assert results["provenance"]["git_hash"] == "abc123"
    assert results["model_hash"] == "m" * 64 and results["seeds"] == SEEDS
    assert results["settings"] == {"confidence": 0.95, "bootstrap_samples": 400, "seed": 3,
                                   "primary_metric": "reward.mean", "primary": None}
    assert results["timestamps"] == {"train/dpo-seed0": "2026-01-01T00:00:00+00:00"}
    assert "scores/dpo-seed0.reward.jsonl" in results["inputs"]
    assert "numpy" in results["report_environment"]["versions"]
    first = (built / "results.json").read_bytes()
    assert (built / "report" / "results.json").read_bytes() == first
    build_report(built, tmp_path / "again")
    assert (tmp_path / "again" / "results.json").read_bytes() == first
    for name in ("training_curves", "frontier", "distributions", "forest", "ablations"):
        png = (built / "report" / "plots" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_minimal_run_one_seed_no_reference_reward_only(tmp_path):
    run = write_run(tmp_path / "run")
    m = json.loads((run / "manifest.json").read_text())
    m["units"] = [{**u, "sweep": {}} for u in m["units"] if u["unit"] in ("dpo-seed0", "bdpo-c0.3-seed0")]
    m["scorers"] = m["scorers"][:1]
    m["seeds"] = [0]
    (run / "manifest.json").write_text(json.dumps(m))
    out = build_report(run, tmp_path / "out")
    assert not (run / "report").exists() and not (run / "results.json").exists()  # --out leaves the run alone
    results = json.loads((out / "results.json").read_text())
    assert results["reference"] is None and results["ablations"] == []
    board = {row["variant"]: row["metrics"] for row in results["leaderboard"]}
    assert set(board["dpo"]) == {"reward.mean", "reward.win_vs_baseline", "length.mean", *[
        k for k in board["dpo"] if k.startswith("train.")]}
    drift = board["bdpo-c0.3"]["train.chosen_logp_drift"]
    assert drift["n"] == 1 and drift["ci_low"] is None  # one seed: no interval over seeds
    pairs = _pairs(run, "bdpo-c0.3", "dpo", "reward")
    pooled = [c for c in results["comparisons"] if c["subset"] == "all"]
    (c,) = pooled
    assert c["test"] == "paired t (prompts)" and c["n_seeds"] == 1
    assert c["difference"] == pytest.approx(sum(a - b for a, b in pairs) / len(pairs), abs=1e-12)
    assert c["p_value"] == pytest.approx(c["p_t_prompts"])  # one seed: the crossed test is the paired t
    assert len(results["comparisons"]) == 3  # pooled and per source
    # No ablations, no cost scorer: no ablation or frontier plot.
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["distributions.png", "forest.png", "training_curves.png"]
    assert "nothing to plot" in (out / "index.html").read_text()
    assert "No config field was swept" in (out / "ablations.md").read_text()
    assert set(results["inputs"]) == {"manifest.json", "generations/dpo-seed0.jsonl", "generations/bdpo-c0.3-seed0.jsonl",
                                      "scores/dpo-seed0.reward.jsonl", "scores/bdpo-c0.3-seed0.reward.jsonl",
                                      "checkpoints/dpo-seed0/train_log.jsonl",
                                      "checkpoints/bdpo-c0.3-seed0/train_log.jsonl", "scorers/reward/scorer.json#heldout"}


# ---------------------------------------------------------------------------------------- escaping


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.open_tables = 0
        self.max_open_tables = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.open_tables += 1
            self.max_open_tables = max(self.max_open_tables, self.open_tables)

    def handle_endtag(self, tag):
        if tag == "table":
            self.open_tables -= 1

    def handle_data(self, data):
        self.text.append(data)


def test_untrusted_text_is_escaped(built):
    page = (built / "report" / "index.html").read_text()
    parser = _PageParser()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    # One script, the page's own sample browser; no completion opened another or an event handler.
    assert tags.count("script") == 1 and "alert(" not in page.split("<script>")[1]
    assert not any(k.startswith("on") for _, a in parser.tags for k in a)
    imgs = [a for t, a in parser.tags if t == "img"]
    assert len(imgs) == 5 and all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert "h1" in tags and tags.count("h1") == 1  # the completion's <h1> stays text
    assert parser.open_tables == 0 and parser.max_open_tables == 1  # no table closed or opened by a completion
    text = "".join(parser.text)
    for hostile in HOSTILE:
        assert hostile in text, hostile
    assert "question 1 <b>bold?</b>" in text
    # Scores reach the browser's script through single-quoted JSON attributes, escaped.
    scores = [json.loads(a["data-scores"]) for _, a in parser.tags if "data-scores" in a]
    assert len(scores) == 9 * N_PROMPTS * N_SAMPLES and set(scores[0]) == {"reward", "cost"}
    # Self-contained: nothing is fetched from anywhere.
    assert not any(v.startswith(("http:", "https:", "//")) for _, a in parser.tags for k, v in a.items()
                   if k in ("src", "href") and v)
    assert "<link" not in page


# -------------------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A run with a finished report, copied by each bad-input case before it breaks something."""
    run = write_run(tmp_path_factory.mktemp("pristine") / "run")
    build_report(run)
    return run


def _corrupt_line(path: Path, lineno: int, edit) -> None:
    lines = path.read_text().splitlines()
    row = json.loads(lines[lineno - 1])
    lines[lineno - 1] = edit(row)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("case, expected", [
    ("nan_score", ["scores/bdpo-c0.3-seed1.reward.jsonl:4", "field 'score'"]),
    ("string_score", ["scores/bdpo-c0.3-seed1.reward.jsonl:4", "field 'score'"]),
    ("missing_field", ["generations/dpo-seed0.jsonl:2", "n_tokens"]),
    ("missing_file", ["scores/bdpo-b0.5-seed0.cost.jsonl", "not found"]),
    ("missing_row", ["scores/dpo-seed1.reward.jsonl", "helpful:p00"]),
    ("missing_log_field", ["checkpoints/dpo-seed0/train_log.jsonl:3", "lambda/mean"]),
    ("bad_manifest", ["manifest.json", "baseline", "nope"]),
    ("scorer_without_accuracy", ["scorers/reward/scorer.json", "missing field 'ci_low'"]),
])
def test_bad_inputs_give_one_line_errors_and_keep_the_old_report(pristine, tmp_path, case, expected, capsys):
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    old = {p: p.read_bytes() for p in (run / "report").rglob("*") if p.is_file()}
    old_results = (run / "results.json").read_bytes()
    if case == "nan_score":
        _corrupt_line(run / "scores/bdpo-c0.3-seed1.reward.jsonl", 4, lambda r: json.dumps(r).replace(
            f'"score": {json.dumps(r["score"])}', '"score": NaN'))
    elif case == "string_score":
        _corrupt_line(run / "scores/bdpo-c0.3-seed1.reward.jsonl", 4, lambda r: json.dumps({**r, "score": "nan"}))
    elif case == "missing_field":
        _corrupt_line(run / "generations/dpo-seed0.jsonl", 2,
                      lambda r: json.dumps({k: v for k, v in r.items() if k != "n_tokens"}))
    elif case == "missing_file":
        (run / "scores/bdpo-b0.5-seed0.cost.jsonl").unlink()
    elif case == "missing_row":
        path = run / "scores/dpo-seed1.reward.jsonl"
        path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if '"helpful:p00"' not in line))
    elif case == "missing_log_field":
        _corrupt_line(run / "checkpoints/dpo-seed0/train_log.jsonl", 3,
                      lambda r: json.dumps({k: v for k, v in r.items() if k != "lambda/mean"}))
    elif case == "scorer_without_accuracy":
        (run / "scorers/reward/scorer.json").write_text(json.dumps({"heldout": {"accuracy": 0.6}}))
    elif case == "bad_manifest":
        m = json.loads((run / "manifest.json").read_text())
        m["baseline"] = "nope"
        (run / "manifest.json").write_text(json.dumps(m))

    with pytest.raises(UserError) as err:
        build_report(run)
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message
    # The CLI: exit code 2 and one line on stderr.
    capsys.readouterr()
    assert main(["report", str(run)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected[0] in lines[0]
    # The previous report is untouched and no temporary folder is left behind.
    assert {p: p.read_bytes() for p in (run / "report").rglob("*") if p.is_file()} == old
    assert (run / "results.json").read_bytes() == old_results
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "generations", "manifest.json", "report",
                                                     "results.json", "scorers", "scores"]


def test_manifest_validation_names_the_field():
    good = {"experiment": "x", "baseline": "dpo",
            "units": [{"unit": "dpo-seed0", "variant": "dpo", "seed": 0, "loss": "dpo"}],
            "scorers": [{"name": "reward", "score_type": "reward"}]}
    m = parse_manifest(good)
    assert m.seeds == (0,) and m.reference is None and m.scorers[0].threshold == 0.0
    bad_cases = [
        ({"units": [{**good["units"][0], "seed": "zero"}]}, "units[0]: field 'seed'"),
        ({"units": [{**good["units"][0], "unit": "../escape"}]}, "units[0]: field 'unit'"),
        ({"scorers": [{"name": "r", "score_type": "helpfulness"}]}, "scorers[0]: field 'score_type'"),
        ({"units": [good["units"][0], good["units"][0]]}, "duplicate unit name"),
        ({"units": [{**good["units"][0], "sweep": {"beta": [1, 2]}}]}, "field 'sweep.beta'"),
    ]
    for change, expected in bad_cases:
        with pytest.raises(UserError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            parse_manifest({**good, **change})
    with pytest.raises(UserError, match="missing field 'scorers'"):
        parse_manifest({k: v for k, v in good.items() if k != "scorers"})


# ---------------------------------------------------------------------------------- headless Chromium


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--enable-logging=stderr", "--v=0"]

# Run in a page that holds the report in a 1400 x 900 frame (the first screen): where the key
# elements are, then the sample browser's controls used as a person would, results written as JSON.
PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="f" src="REPORT" style="width:1400px;height:900px;border:0"></iframe><pre id="out"></pre>
<script>
document.getElementById("f").addEventListener("load", () => {
  const doc = document.getElementById("f").contentDocument, out = {};
  const top = (sel) => { const e = doc.querySelector(sel); return e ? e.getBoundingClientRect().top : null; };
  const bottom = (sel) => { const e = doc.querySelector(sel); return e ? e.getBoundingClientRect().bottom : null; };
  out.first_screen = {answer: top("#answer"), primary: top("#primary"), control: top("#positive-control"),
                      scorers: top("#scorers"), forest: bottom("#forest img"), leaderboard: top("#leaderboard")};
  const blocks = () => Array.from(doc.querySelectorAll("#prompts .prompt"));
  const set = (id, value) => { const e = doc.getElementById(id); e.value = value;
                               e.dispatchEvent(new Event("input", {bubbles: true})); };
  out.n_prompts = blocks().length;
  set("search", "Answer 5.1 from");
  out.search_shown = blocks().filter((b) => !b.hidden).map((b) => b.querySelector("code").textContent);
  set("search", "");
  set("filter-source", "harmless");
  out.source_shown = blocks().filter((b) => !b.hidden).map((b) => b.dataset.source);
  set("filter-source", "");
  set("sort-variant", "bdpo-c0.3"); set("sort-scorer", "reward"); set("sort-order", "desc");
  out.sorted = blocks().map((b) => [b.querySelector("code").textContent, parseFloat(b.dataset.diff)]);
  out.counter = doc.getElementById("shown-count").textContent;
  document.getElementById("out").textContent = JSON.stringify(out);
});
</script></body></html>"""


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def test_page_renders_in_headless_chromium(built, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary (install Debian's `chromium` to run this test)")
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    page = built / "report" / "index.html"
    assert page.stat().st_size < 2_000_000
    shot = tmp_path / "report.png"
    out = subprocess.run([browser, *flags, "--window-size=1400,900", f"--screenshot={shot}", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Uncaught" not in out.stderr and ":CONSOLE" not in out.stderr, out.stderr[-2000:]
    # The first screen shows a page, not a blank one: plenty of distinct colours (text, the forest plot).
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] >= 850 and pixels.shape[1] >= 1300
    assert len(np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200
    shutil.copy(shot, built / "report-screenshot.png")  # kept beside the run for a human look

    probe = tmp_path / "probe.html"
    probe.write_text(PROBE.replace("REPORT", page.resolve().as_uri()))
    dom = subprocess.run([browser, *flags, "--allow-file-access-from-files", "--virtual-time-budget=10000",
                          "--dump-dom", probe.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = json.loads(html.unescape(dom.stdout.split('<pre id="out">')[1].split("</pre>")[0]))
    # Key elements in the first 900 px: the answer boxes, the forest plot; the leaderboard just below.
    screen = found["first_screen"]
    for key in ("answer", "primary", "control", "scorers", "forest"):
        assert screen[key] is not None and 0 <= screen[key] <= 900, (key, screen)
    # Search finds the one prompt whose completions contain the text; the source filter keeps its source.
    assert found["n_prompts"] == N_PROMPTS
    assert found["search_shown"] == [f"{SOURCES[1]}:p05"]
    assert found["source_shown"] == ["harmless"] * (N_PROMPTS // 2)
    # Sorted by bdpo-c0.3 minus dpo on reward, largest first, and the differences are the score files'.
    diffs = [d for _, d in found["sorted"]]
    assert diffs == sorted(diffs, reverse=True)
    expected = defaultdict(list)
    for seed in SEEDS:
        a, b = _scores(built, f"bdpo-c0.3-seed{seed}", "reward"), _scores(built, f"dpo-seed{seed}", "reward")
        for (pid, _), value in a.items():
            expected[pid].append(value - b[(pid, _)])
    for pid, d in found["sorted"]:
        assert d == pytest.approx(np.mean(expected[pid]), abs=1e-3), pid
    assert found["counter"] == f"{N_PROMPTS} of {N_PROMPTS} prompts shown"


# ------------------------------------------------------------ positive control: held-out implicit rewards


def test_heldout_rows_on_the_tiny_model(one_thread, tmp_path):
    """A few DPO steps of stories260k on 8 HH pairs; implicit rewards on those pairs (which it learned)
    and on 8 others, recomputed by hand from the reference and policy log-probs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.config import DataSourceConfig, ModelConfig, TrainConfig, VariantConfig
    from harness.data import load_source
    from tests.conftest import shared_path
    from trainers.heldout import heldout_rows
    from trainers.logprobs import collate, sequence_logps, tokenize_pairs
    from trainers.trainer import train_policy

    model_cfg = ModelConfig(path=str(shared_path("models", "stories260k")), dtype="float32")
    source = DataSourceConfig(format="hh-rlhf", path=str(shared_path("data", "hh-rlhf")), max_pairs=16,
                              options={"subsets": ["harmless-base"], "split": "test"})
    pairs = load_source(source).pairs
    train, held = pairs[:8], pairs[8:]
    cfg = TrainConfig(max_steps=6, batch_size=8, learning_rate=2e-3, warmup_ratio=0.0, max_length=64,
                      max_prompt_length=32)
    cache = tmp_path / "cache"
    out = tmp_path / "dpo"
    train_policy(model_cfg, cfg, VariantConfig(), train, out, seed=0, cache_dir=cache, progress=False)

    seen = heldout_rows(model_cfg, cfg, out, train, 0.1, cache, progress=False)
    assert sum(r["correct"] for r in seen) / len(seen) >= 0.75  # the pairs it was trained on: learned
    rows = heldout_rows(model_cfg, cfg, out, held, 0.1, cache, progress=False)
    assert [r["pair_id"] for r in rows] == [p.id for p in held]
    assert all(r["source"] == held[0].source for r in rows)
    # One reference cache: the trained-on pairs reused training's entry; the held-out pairs added one.
    assert len(list((cache / "ref-logps").glob("*.safetensors"))) == 2
    tok = AutoTokenizer.from_pretrained(model_cfg.path)
    tokenized, _ = tokenize_pairs(held, tok, use_chat_template=True, max_length=64, max_prompt_length=32)
    batch = collate(tokenized, tok.pad_token_id)
    with torch.no_grad():
        policy = sequence_logps(AutoModelForCausalLM.from_pretrained(out).eval(), **batch)[0]
        ref = sequence_logps(AutoModelForCausalLM.from_pretrained(model_cfg.path).eval(), **batch)[0]
    n = len(held)
    for i, r in enumerate(rows):
        assert r["chosen_logp"] == pytest.approx(float(policy[i]), abs=1e-4)
        assert r["ref_rejected_logp"] == pytest.approx(float(ref[n + i]), abs=1e-4)
        margin = 0.1 * ((float(policy[i]) - float(ref[i])) - (float(policy[n + i]) - float(ref[n + i])))
        assert r["margin"] == pytest.approx(margin, abs=1e-5)
        assert r["correct"] == (1.0 if r["margin"] > 0 else 0.5 if r["margin"] == 0 else 0.0)


def _write_heldout(run: Path, shift: dict[str, float], n_pairs: int = 40) -> None:
    """heldout/<unit>.jsonl for every trained unit: margins ~ N(shift, 1) per pair."""
    rng = np.random.default_rng(5)
    for u in json.loads((run / "manifest.json").read_text())["units"]:
        if u["loss"] is None:
            continue
        rows = []
        for i in range(n_pairs):
            margin = float(rng.normal(shift[u["variant"]], 1.0))
            rows.append({"pair_id": f"{SOURCES[i % 2]}:e{i:03d}", "source": SOURCES[i % 2], "chosen_logp": -1.0,
                         "rejected_logp": -2.0, "ref_chosen_logp": -1.0, "ref_rejected_logp": -2.0, "beta": 0.1,
                         "margin": margin, "correct": 1.0 if margin > 0 else 0.0})
        _jsonl(run / "heldout" / f"{u['unit']}.jsonl", rows[::-1])


def test_heldout_accuracy_leads_the_report_and_the_primary_is_its_own_family(tmp_path):
    run = write_run(tmp_path / "run")
    _write_heldout(run, {"dpo": 1.5, "bdpo-c0.1": 0.0, "bdpo-c0.3": 1.0, "bdpo-b0.5": 0.5})
    m = json.loads((run / "manifest.json").read_text())
    m["config"]["report"]["primary"] = {"variant": "bdpo-c0.3", "metric": "cost.mean", "subset": "harmless"}
    (run / "manifest.json").write_text(json.dumps(m))
    out = build_report(run, tmp_path / "out")
    results = json.loads((out / "results.json").read_text())
    board = {row["variant"]: row["metrics"] for row in results["leaderboard"]}
    rows = [json.loads(line) for line in (run / "heldout" / "dpo-seed0.jsonl").read_text().splitlines()]
    rows += [json.loads(line) for line in (run / "heldout" / "dpo-seed1.jsonl").read_text().splitlines()]
    acc = board["dpo"]["heldout.accuracy"]
    assert acc["value"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows), abs=1e-12)
    assert board["dpo"]["heldout.margin"]["value"] == pytest.approx(sum(r["margin"] for r in rows) / len(rows))
    assert board["reference"]["heldout.accuracy"]["value"] == 0.5  # implicit reward 0: every pair a tie
    pc = results["positive_control"]["all"]["heldout"]
    assert pc["accuracy"] == pytest.approx(acc["value"]) and pc["moved"] and pc["p_value"] < 0.05
    assert results["positive_control"]["harmless"]["heldout"]["n"] == 20
    # The primary comparison: its own family (p_holm == p), the rest Holm-adjusted among themselves.
    primary = results["primary"]
    assert (primary["variant"], primary["against"], primary["metric"], primary["subset"]) == (
        "bdpo-c0.3", "dpo", "cost.mean", "harmless")
    assert primary["role"] == "primary" and primary["p_holm"] == primary["p_value"]
    roles = [c["role"] for c in results["comparisons"]]
    assert roles.count("primary") == 1
    assert any(c["metric"] == "heldout.accuracy" and c["kind"] == "baseline" for c in results["comparisons"])
    md = (out / "leaderboard.md").read_text()
    assert "Primary (pre-registered): bdpo-c0.3 minus dpo on cost.mean, prompts of source 'harmless'" in md
    assert "Held-out implicit-reward accuracy of dpo on 40 eval pairs" in md
    assert "The baseline moved detectably from the reference on: heldout.accuracy" in md
    # A baseline that did not move: the report says differences cannot be read as evidence.
    _write_heldout(run, {"dpo": 0.0, "bdpo-c0.1": 0.0, "bdpo-c0.3": 0.0, "bdpo-b0.5": 0.0})
    for u in ("dpo-seed0", "dpo-seed1"):
        for scorer in ("reward", "cost"):
            shutil.copy(run / "scores" / f"reference.{scorer}.jsonl", run / "scores" / f"{u}.{scorer}.jsonl")
    md = (build_report(run, tmp_path / "flat") / "leaderboard.md").read_text()
    assert "did NOT move detectably" in md and "cannot be read as evidence" in md


def test_primary_naming_an_unknown_metric_is_a_one_line_error(tmp_path):
    run = write_run(tmp_path / "run")
    m = json.loads((run / "manifest.json").read_text())
    m["config"]["report"]["primary"] = {"variant": "bdpo-c0.3", "metric": "heldout.accuracy", "subset": "all"}
    (run / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="report.primary.metric.*not measured in this run"):
        build_report(run, tmp_path / "out")


def test_report_primary_is_checked_when_the_config_loads(tmp_path):
    from harness.config import ConfigError, dump_config, load_config

    base = load_config(None, ["scorers=[{name: reward, score_type: reward}, {name: cost, score_type: cost}]",
                              "variants=[{name: dpo, loss: dpo}, {name: bdpo, loss: bdpo}]",
                              "data.sources=[{format: builtin-safety, name: harmless}]"])
    path = tmp_path / "c.yaml"

    def with_primary(primary: str):
        path.write_text(dump_config(base).replace("  primary: null\n", f"  primary: {primary}\n"))
        return load_config(path)

    cfg = with_primary("{variant: bdpo, metric: cost.mean, subset: harmless}")
    assert (cfg.report.primary.variant, cfg.report.primary.metric, cfg.report.primary.subset) == (
        "bdpo", "cost.mean", "harmless")
    assert with_primary("{variant: bdpo, metric: heldout.accuracy}").report.primary.subset == "all"
    for primary, key in [("{variant: bpdo, metric: cost.mean}", "report.primary.variant"),
                         ("{variant: dpo, metric: cost.mean}", "report.primary.variant"),
                         ("{variant: bdpo, metric: reward.safe_rate}", "report.primary.metric"),
                         ("{variant: bdpo, metric: cost.mean, subset: helpful}", "report.primary.subset"),
                         ("{variant: bdpo, metric: cost.mean, sub: all}", "report.primary")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            with_primary(primary)


def test_the_committed_hh_results_folder_rebuilds_byte_identically(tmp_path):
    """docs/results/hh-study/ is a results folder: its per-sample files rebuild its results.json."""
    folder = Path(__file__).resolve().parent.parent / "docs" / "results" / "hh-study"
    copy = tmp_path / "hh-study"
    shutil.copytree(folder, copy)
    (copy / "results.json").unlink()
    assert build_report(copy) == copy
    assert (copy / "results.json").read_bytes() == (folder / "results.json").read_bytes()
    results = json.loads((copy / "results.json").read_text())
    assert results["positive_control"]["all"]["heldout"] is None  # checkpoints not kept
    assert set(results["subsets"]) == {"harmless", "helpful"}
    page = (copy / "index.html").read_text()
    assert "completion texts are not part of it" in page
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in folder.iterdir())


def test_export_writes_a_results_folder_that_rebuilds_the_same_report(built, tmp_path, capsys):
    dest = tmp_path / "results" / "report-test"
    assert main(["report", str(built), "--export", str(dest)]) == 0
    names = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    units = [u["unit"] for u in json.loads((built / "manifest.json").read_text())["units"]]
    trained = [u for u in units if u != "reference"]
    assert {f"scores/{u}.{s}.jsonl" for u in units for s in ("reward", "cost")} <= names
    assert {f"train_logs/{u}.jsonl" for u in trained} <= names
    assert {"manifest.json", "lengths.csv", "scorers/reward/scorer.json", "results.json", "index.html"} <= names
    assert not any(n.startswith(("generations/", "checkpoints/")) for n in names)
    assert not [p for p in dest.parent.iterdir() if p.name != "report-test"]  # no partial folder left
    # lengths.csv holds every generation row's n_tokens, one row per (unit, prompt, sample).
    with open(dest / "lengths.csv", newline="") as f:
        lengths = {(r["unit"], r["prompt_id"], int(r["sample_idx"])): int(r["n_tokens"]) for r in csv.DictReader(f)}
    expected = {(u, r["prompt_id"], r["sample_idx"]): r["n_tokens"]
                for u in units for r in _read(built / "generations" / f"{u}.jsonl")}
    assert lengths == expected
    for u in trained:
        assert (dest / "train_logs" / f"{u}.jsonl").read_bytes() == (
            built / "checkpoints" / u / "train_log.jsonl").read_bytes()
    # The folder alone gives the run's own numbers.
    ours, theirs = (json.loads(p.read_text()) for p in (dest / "results.json", built / "results.json"))
    for key in ("leaderboard", "comparisons", "positive_control", "scorers"):
        assert ours[key] == theirs[key], key
    # A second export to the same folder is refused, and the folder is kept as it was.
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert main(["report", str(built), "--export", str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists and is not an empty folder" in err and len(err.splitlines()) == 1
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    # A results folder is not exported again; a run missing a score file leaves no folder behind.
    with pytest.raises(UserError, match="already a results folder"):
        export_results_folder(dest, tmp_path / "again")
    broken = tmp_path / "broken"
    shutil.copytree(built, broken)
    (broken / "scores" / "dpo-seed0.cost.jsonl").unlink()
    assert main(["report", str(broken), "--export", str(tmp_path / "out")]) == 2
    assert "dpo-seed0.cost.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
