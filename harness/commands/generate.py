"""`bdpo generate`: completions, in one of two ways.

- `bdpo generate CONFIG [--variant V]`: the pipeline's generation stages, alone: each
  chosen unit (a trained policy, or `reference`) answers the config's held-out prompts into
  `<run_root>/<experiment>/generations/<unit>.jsonl`, exactly as `bdpo run` does (same stages, run
  directory and records; harness/stage_commands.py). Units not trained yet are trained first.
- `bdpo generate [CONFIG] --prompts FILE --out FILE`: one model (model.path, or --model) answers the
  prompts of a file, outside any run directory.

Settings come from a config's `model` and `generate` sections (the embedded default when none is
given), dotted overrides, and the shortcut flags below. Either way, rows already generated with the
same content key are reused, so rerunning after a crash or an edit generates only what is missing.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from harness.config import RunConfig

NAME = "generate"
HELP = ("Generate completions (vLLM or transformers): the generation stages of `bdpo run` for a config's units, "
        "or one model on a prompt file (--prompts, --out); reuses rows already generated.")

# Shortcut flag -> config key it overrides.
SHORTCUTS = {
    "model": "model.path", "generator": "generate.generator", "n": "generate.n",
    "temperature": "generate.temperature", "top_p": "generate.top_p", "max_new_tokens": "generate.max_new_tokens",
    "seed": "generate.seed", "batch_size": "generate.batch_size",
    "tensor_parallel_size": "generate.tensor_parallel_size",
}


# Options of the prompt-file mode only.
FILE_OPTIONS = ("out", "prompts", "limit")
# Options of the run-directory mode only.
STAGE_OPTIONS = ("variant", "dry_run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from harness.stage_commands import add_run_arguments, add_unit_arguments

    add_run_arguments(parser, "YAML config (default: the embedded quickstart)")
    add_unit_arguments(parser, reference=True, seed=False)
    parser.add_argument("--prompts", help="prompt-file mode: prompt JSONL (prompt_id, prompt: messages or text), "
                        "e.g. a run's data/prompts.jsonl")
    parser.add_argument("--out", help="prompt-file mode: output JSONL (one row per prompt and sample)")
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
    parser.add_argument("--limit", type=int, help="prompt-file mode: only the first N prompts")


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

    from harness.config import load_config
    from harness.stage_commands import refuse_options, run_stages, select_units

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    cfg = load_config(*_config_and_overrides(args))
    if args.prompts or args.out:
        refuse_options(args, STAGE_OPTIONS, "with --prompts/--out (they pick stages of the run directory)")
        return generate_file(args, cfg, console)
    refuse_options(args, FILE_OPTIONS, "without --prompts and --out (the run's held-out prompts are answered)")
    units = select_units(cfg, args.variant, reference=True)
    run_stages(cfg, [f"generate/{u}" for u in units], args, console)
    return 0


def generate_file(args: argparse.Namespace, cfg: RunConfig, console: Console) -> int:
    """One model answers a prompt file: --prompts FILE --out FILE."""
    from rich.table import Table

    from evaluators.generation_cache import generate_to_file, read_prompt_records
    from evaluators.engines import engine_pool, policy_of
    from harness.errors import UserError
    from harness.models import resolve_model_path

    if not (args.prompts and args.out):
        raise UserError("--prompts and --out go together (a prompt file in, a generations file out). Without "
                        "both, `bdpo generate CONFIG` answers the run's held-out prompts in its run directory.")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit: must be at least 1.")
    prompts = read_prompt_records(args.prompts)
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
