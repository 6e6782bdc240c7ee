"""GPU hours of a study config at the paper's scale, from measured token counts and a GPU throughput.

    python -m bench.paper_scale                       # configs/paper-hh-7b.yaml, 7B Llama, H100 at 35% MFU
    python -m bench.paper_scale --mfu 0.25 --json out.json
    python -m bench.paper_scale --config configs/paper-pku-7b.yaml --data-format pku-saferlhf-derived \
        --data ../shared/data/pku-saferlhf-derived/safety_pairs_5k.json --train-pairs 27000

Counted in model FLOPs (bench.gpu_throughput.flops_per_token: 6 N + 12 L H T per trained token,
a third of that per forward-only token):
- tokens: the config's own tokenisation (trainers.logprobs.tokenize_pairs: prompt template,
  truncation to train.max_length / max_prompt_length) of the pairs found locally (--data, in
  --data-format; for HH the test splits are the only ones offline and share the train splits'
  distribution; for PKU-SafeRLHF the 5,135 derived pairs), padded as
  training pads them (batches of train.batch_size pairs in a seeded random order), then scaled to
  --train-pairs (the harmless-base + helpful-base train splits: 42,537 + 43,835 rows). The
  tokenizer is --tokenizer (SmolLM2's by default: the 7B model's own is not available offline).
- per trained unit (variant x seed): epochs x pairs of forward + backward;
- per seed with a warmed-up reference: the warm-up's steps x batch x grad_accum pairs of training;
  per distinct reference: one forward pass over the pairs (the log-prob cache);
- scoring: every scorer (a 7B model) reads prompt + completion once per unit and prompt (forward).
- generation: decode-bound, so counted in tokens at --decode-tokens-per-s, not in FLOPs.
Throughput is an input, not measured here: peak bf16 FLOP/s x --mfu (bench.gpu_throughput
measures MFU on a GPU; 35% is its target) and --decode-tokens-per-s.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from bench.gpu_throughput import PEAK_BF16_TFLOPS, flops_per_token

# Llama-2/alpaca-7B: hidden 4096, 32 layers, MLP 11008, 32 heads, vocabulary 32,000.
LLAMA_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008, "vocab_size": 32000,
            "num_attention_heads": 32, "num_key_value_heads": 32}
HH_TEST = ("../shared/data/hh-rlhf/harmless-base/test.jsonl.gz", "../shared/data/hh-rlhf/helpful-base/test.jsonl.gz")


def padded_tokens_per_pair(rows: list[tuple[int, int]], batch: int, seed: int = 0) -> float:
    """rows: (chosen row length, rejected row length) per pair -> mean padded tokens per pair when
    batches of `batch` pairs (2 x batch rows) are padded to their longest row."""
    order = random.Random(seed).sample(range(len(rows)), len(rows))
    total = 0
    for i in range(0, len(order), batch):
        lengths = [n for j in order[i:i + batch] for n in rows[j]]
        total += max(lengths) * len(lengths)
    return total / len(rows)


def estimate(cfg: Any, tokens_per_pair: float, mean_prompt_tokens: float, train_pairs: int, model: dict[str, Any],
             peak_flops: float, mfu: float, decode_tokens_per_s: float) -> dict[str, Any]:
    """GPU seconds of each part of the study `cfg` (a RunConfig) at the given throughput."""
    from harness.config import to_dict, variant_train_config
    from harness.io import sha256_json
    from harness.pipeline import units_of

    train_fpt = flops_per_token(model, cfg.train.max_length)  # forward + backward; a forward is a third
    units = units_of(cfg)
    train_flops, base_reference = 0.0, False
    warmups: dict[tuple[int | None, str], int] = {}  # (seed, train settings) -> pairs the warm-up trains on
    for u in units:
        tcfg = variant_train_config(cfg, u.variant)
        per_step = tcfg.batch_size * tcfg.grad_accum
        pairs = tcfg.epochs * train_pairs if tcfg.epochs is not None else tcfg.max_steps * per_step
        train_flops += pairs * tokens_per_pair * train_fpt
        if tcfg.reference_warmup_steps:  # shared by units of one seed and train settings, as reference.warmup_dir
            warmups[(u.seed, sha256_json(to_dict(tcfg)))] = tcfg.reference_warmup_steps * per_step
        else:
            base_reference = True
    warmup_flops = sum(warmups.values()) * tokens_per_pair * train_fpt
    references = len(warmups) + base_reference
    reference_flops = references * train_pairs * tokens_per_pair * train_fpt / 3
    prompts = cfg.generate.max_prompts or cfg.data.eval_prompts
    policies = len(units) + 1  # and the untrained reference
    new_tokens = policies * prompts * cfg.generate.max_new_tokens * cfg.generate.n
    scoring_flops = (len(cfg.scorers) * policies * prompts * cfg.generate.n
                     * (mean_prompt_tokens + cfg.generate.max_new_tokens) * train_fpt / 3)
    rate = peak_flops * mfu
    seconds = {"policy training": train_flops / rate, "reference warm-up": warmup_flops / rate,
               "reference log-probs": reference_flops / rate, "generation": new_tokens / decode_tokens_per_s,
               "scoring": scoring_flops / rate}
    return {"units": len(units), "references": references, "generated_tokens": new_tokens,
            "gpu_hours": {k: v / 3600 for k, v in seconds.items()}, "gpu_hours_total": sum(seconds.values()) / 3600}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/paper-hh-7b.yaml")
    parser.add_argument("--data", nargs="+", default=list(HH_TEST), help="files to count tokens on")
    parser.add_argument("--data-format", default="hh-rlhf",
                        help="their data format (`bdpo ls data`), e.g. pku-saferlhf-derived for configs/paper-pku-7b.yaml")
    parser.add_argument("--tokenizer", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--train-pairs", type=int, default=42537 + 43835)
    parser.add_argument("--gpu", default="H100", choices=sorted(PEAK_BF16_TFLOPS))
    parser.add_argument("--mfu", type=float, default=0.35)
    parser.add_argument("--decode-tokens-per-s", type=float, default=2000.0,
                        help="vLLM decode rate of the 7B policy on one GPU (assumed)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from harness.config import DataConfig, DataSourceConfig, load_config
    from harness.data import load_sources
    from harness.models import resolve_model_path
    from trainers.logprobs import tokenize_pairs

    cfg = load_config(args.config)
    sources = tuple(DataSourceConfig(format=args.data_format, name=f"s{i}", path=p) for i, p in enumerate(args.data))
    pairs, _ = load_sources(DataConfig(sources=sources))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.tokenizer))
    tokenized, stats = tokenize_pairs(pairs, tokenizer, use_chat_template=cfg.model.use_chat_template,
                                      max_length=cfg.train.max_length, max_prompt_length=cfg.train.max_prompt_length)
    rows = [(len(p.prompt_ids) + len(p.chosen_ids), len(p.prompt_ids) + len(p.rejected_ids)) for p in tokenized]
    per_pair = padded_tokens_per_pair(rows, cfg.train.batch_size)
    mean_prompt = sum(len(p.prompt_ids) for p in tokenized) / len(tokenized)
    out = {
        "config": args.config, "tokenizer": args.tokenizer, "pairs_counted": len(tokenized),
        "mean_tokens_per_pair_unpadded": sum(a + b for a, b in rows) / len(rows),
        "mean_tokens_per_pair_padded": per_pair, "mean_prompt_tokens": mean_prompt,
        "truncation": stats.summary(), "train_pairs": args.train_pairs, "gpu": args.gpu, "mfu": args.mfu,
        "decode_tokens_per_s": args.decode_tokens_per_s,
        **estimate(cfg, per_pair, mean_prompt, args.train_pairs, LLAMA_7B, PEAK_BF16_TFLOPS[args.gpu] * 1e12,
                   args.mfu, args.decode_tokens_per_s),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
