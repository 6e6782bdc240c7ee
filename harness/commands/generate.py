"""`bdpo generate`: completions for a prompt file (or a config's held-out prompts) with one model.

Settings come from a config's `model` and `generate` sections (the embedded default when none is
given), dotted overrides, and the shortcut flags below. Rows already in --out with the same content key
are reused, so rerunning after a crash or an edit generates only what is missing.
"""

from __future__ import annotations

import argparse

NAME = "generate"
HELP = "Generate completions (vLLM or transformers) for prompts; reuses rows already generated."

# Shortcut flag -> config key it overrides.
SHORTCUTS = {
    "model": "model.path", "generator": "generate.generator", "n": "generate.n",
    "temperature": "generate.temperature", "top_p": "generate.top_p", "max_new_tokens": "generate.max_new_tokens",
    "seed": "generate.seed", "batch_size": "generate.batch_size",
    "tensor_parallel_size": "generate.tensor_parallel_size",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config for the model/generate/data sections "
                        "(default: the embedded quickstart)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. generate.temperature=0.7")
    parser.add_argument("--out", required=True, help="output JSONL (one row per prompt and sample)")
    parser.add_argument("--prompts", help="prompt JSONL (prompt_id, prompt: messages or text); "
                        "default: the held-out evaluation prompts of the config's data section")
    parser.add_argument("--model", help="model folder, Hub name or builtin:<name> (model.path)")
    parser.add_argument("--generator", help="auto, vllm or transformers (generate.generator)")
    parser.add_argument("--n", type=int, help="completions per prompt (generate.n)")
    parser.add_argument("--temperature", type=float, help="0 = greedy (generate.temperature)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling mass (generate.top_p)")
    parser.add_argument("--max-new-tokens", type=int, help="generate.max_new_tokens")
    parser.add_argument("--seed", type=int, help="sampling seed (generate.seed)")
    parser.add_argument("--stop", action="append", help="stop string; repeat for several (generate.stop)")
    parser.add_argument("--batch-size", type=int, help="prompts per batch and per resume step (generate.batch_size)")
    parser.add_argument("--tensor-parallel-size", type=int, help="GPUs per vLLM engine (generate.tensor_parallel_size)")
    parser.add_argument("--no-chat-template", action="store_true", help="plain-text prompts (model.use_chat_template=false)")
    parser.add_argument("--limit", type=int, help="only the first N prompts")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The config file and its overrides, the shortcut flags appended as overrides."""
    from harness.config import split_config_arg

    config_path, overrides = split_config_arg(args.config, args.overrides)
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag)
        if value is not None:
            # Strings are quoted so YAML keeps them strings ("1e-3" as a model name stays a name).
            overrides.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    if args.stop:
        overrides.append(f"generate.stop={list(args.stop)!r}")
    if args.no_chat_template:
        overrides.append("model.use_chat_template=false")
    return config_path, overrides


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from evaluators.generation_cache import generate_to_file, read_prompt_records
    from evaluators.engines import engine_pool, policy_of
    from harness.config import load_config
    from harness.errors import UserError
    from harness.models import resolve_model_path

    if args.limit is not None and args.limit < 1:
        raise UserError("--limit: must be at least 1.")
    cfg = load_config(*_config_and_overrides(args))
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if args.prompts:
        prompts = read_prompt_records(args.prompts)
    else:
        from harness.data import load_sources, split_data

        pairs, _ = load_sources(cfg.data)
        prompts = split_data(pairs, cfg.data).eval_prompts
    prompts = prompts[: args.limit] if args.limit else prompts

    # A full model folder, or a trained LoRA unit's adapter folder (its base named in adapter_config.json).
    policy = policy_of(resolve_model_path(cfg.model.path))
    with engine_pool(cfg.model, cfg.generate, console=console) as pool:
        stats = generate_to_file(pool.generator(policy), prompts, args.out, cfg.generate, progress=not args.no_progress,
                                 console=console, model_sha=policy.content_hash())
    table = Table(title=f"wrote {args.out}", title_justify="left", show_header=False)
    for label, value in (("generator", stats.generator), ("rows", stats.rows_total),
                         ("generated", stats.rows_generated), ("reused from cache", stats.rows_reused),
                         ("new tokens", stats.new_tokens), ("generation time", f"{stats.seconds:.1f} s"),
                         ("throughput", f"{stats.tokens_per_second:.1f} tok/s")):
        table.add_row(label, str(value))
    console.print(table)
    return 0
