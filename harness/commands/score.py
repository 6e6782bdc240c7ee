"""`bdpo score`: scores of generations, in one of two ways.

- `bdpo score CONFIG [--variant V] [--scorer NAME]`: the pipeline's scoring stages, alone: each
  chosen unit's generations scored by each chosen scorer of the config into
  `<run_root>/<experiment>/scores/<unit>.<scorer>.jsonl`, exactly as `bdpo run` does (same stages,
  run directory and records; harness/stage_commands.py). What they read (trained scorers,
  generations, policies) is made first when missing.
- `bdpo score --generations FILE --scorer TYPE:PATH --out FILE`: one reward or cost model scores a
  generations file, outside any run directory.
"""

from __future__ import annotations

import argparse
import statistics

from harness.config import ScorerConfig

NAME = "score"
HELP = ("Score generations (prompt, response) with reward and cost models: the scoring stages of `bdpo run` for "
        "a config, or one model on a generations file (--generations, --scorer TYPE:PATH, --out).")

# Options of the generations-file mode only.
FILE_OPTIONS = ("generations", "out", "score_type", "threshold", "prompts", "batch_size", "name")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from harness.stage_commands import add_run_arguments, add_unit_arguments

    add_run_arguments(parser, "YAML config (default: the embedded quickstart); not with --generations")
    add_unit_arguments(parser, reference=True, seed=False)
    parser.add_argument("--scorer", action="append",
                        help="with a config: only this scorer of the config (repeat for several; default: all). "
                             "With --generations: TYPE:PATH, the scorer type and model folder, e.g. "
                             "bradley-terry:scorers/hh-reward or beaver:/models/beaver-7b-v1.0-cost (`bdpo ls scorer`)")
    parser.add_argument("--generations", help="generations-file mode: generations JSONL (prompt_id, sample_idx, "
                        "prompt, response)")
    parser.add_argument("--out", help="generations-file mode: scores JSONL to write (prompt_id, sample_idx, score)")
    parser.add_argument("--score-type", choices=["reward", "cost"],
                        help="reward: higher = more helpful; cost: higher = more harmful (must match the model) "
                             f"(default: {ScorerConfig.score_type})")
    parser.add_argument("--threshold", type=float, help="a response is safe when cost <= threshold "
                        f"(default: {ScorerConfig.threshold})")
    parser.add_argument("--prompts", default=None,
                        help="prompts JSONL (prompt_id, prompt as chat messages), e.g. a run's data/prompts.jsonl: "
                             "the scorer then sees the conversation instead of the generator's rendered prompt text")
    parser.add_argument("--batch-size", type=int, help="inputs per forward pass (length-bucketed) "
                        f"(default: {ScorerConfig.batch_size})")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the scorer type (scorers.<name>.options in a config), e.g. "
                             "categories=true for a guard; repeat for several")
    parser.add_argument("--name", default=None, help="scorer label in messages (default: the score type)")


def read_prompts(path: str) -> dict[str, tuple]:
    """prompt_id -> chat messages, from a PromptRecord JSONL file."""
    from harness.errors import UserError
    from harness.io import iter_jsonl
    from harness.records import require_fields

    prompts = {}
    for lineno, row in iter_jsonl(path):
        require_fields(row, ("prompt_id", "prompt"), f"{path}:{lineno}")
        if not isinstance(row["prompt"], list):
            raise UserError(f"{path}:{lineno}: field 'prompt' must be a list of chat messages.")
        prompts[str(row["prompt_id"])] = tuple(row["prompt"])
    return prompts


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from harness.stage_commands import load, refuse_options, run_stages, select_scorers, select_units

    if args.generations:
        refuse_options(args, ("config", "overrides", "variant", "dry_run"),
                       "with --generations (a config's stages are scored without it)")
        return score_file(args)
    refuse_options(args, FILE_OPTIONS, "without --generations (the config decides the scorers and their settings)")
    cfg = load(args)
    units = select_units(cfg, args.variant, reference=True)
    scorers = select_scorers(cfg, args.scorer)
    run_stages(cfg, [f"score/{u}.{s}" for u in units for s in scorers], args, Console(stderr=True))
    return 0


def score_file(args: argparse.Namespace) -> int:
    """One scorer on a generations file: --generations FILE --scorer TYPE:PATH --out FILE."""
    import yaml
    from rich.console import Console

    from evaluators.scorers import ScoreError, build_scorer
    from harness.errors import UserError
    from harness.io import atomic_write_jsonl, iter_jsonl
    from harness.progress import progress_bar
    from harness.records import SCORE_FIELDS, require_fields

    if not args.out or not args.scorer or len(args.scorer) != 1:
        raise UserError("--generations needs --out FILE and one --scorer TYPE:PATH, e.g. "
                        "--scorer bradley-terry:scorers/hh-reward.")
    kind, sep, path = args.scorer[0].partition(":")
    if not sep or not path:
        raise UserError(f"--scorer '{args.scorer[0]}': expected TYPE:PATH, e.g. bradley-terry:scorers/hh-reward.")
    defaults = ScorerConfig()
    batch_size = defaults.batch_size if args.batch_size is None else args.batch_size
    score_type = args.score_type or defaults.score_type
    threshold = defaults.threshold if args.threshold is None else args.threshold
    if batch_size < 1:
        raise UserError("--batch-size: must be at least 1.")
    prompts = read_prompts(args.prompts) if args.prompts else None
    rows, inputs, lines = [], [], []
    for lineno, row in iter_jsonl(args.generations):
        where = f"{args.generations}:{lineno}"
        require_fields(row, ("prompt_id", "sample_idx", "prompt", "response"), where)
        if not isinstance(row["response"], str):
            raise UserError(f"{where}: field 'response' must be a string.")
        prompt = row["prompt"]
        if prompts is not None:
            if str(row["prompt_id"]) not in prompts:
                raise UserError(f"{where}: prompt_id {row['prompt_id']!r} is not in {args.prompts}.")
            prompt = prompts[str(row["prompt_id"])]
        rows.append({"prompt_id": row["prompt_id"], "sample_idx": row["sample_idx"]})
        inputs.append((prompt, row["response"]))
        lines.append(lineno)
    if not rows:
        raise UserError(f"{args.generations}: no generations to score.")

    options = {}
    for item in args.option:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"--option '{item}': expected KEY=VALUE, e.g. categories=true.")
        options[key] = yaml.safe_load(value) if value else ""
    config = ScorerConfig(name=args.name or score_type, type=kind, path=path, score_type=score_type,
                          threshold=threshold, batch_size=batch_size, options=options)
    scorer = build_scorer(config)
    scores: list[float] = []
    extra: list[dict] = []  # per-row metadata some scorers record (a guard's category)
    chunk = batch_size * 8  # several length-bucketed batches per progress update
    with progress_bar() as progress:
        task = progress.add_task(f"scoring with {kind}", total=len(inputs))
        for start in range(0, len(inputs), chunk):
            part = inputs[start:start + chunk]
            try:
                scores += scorer.score([p for p, _ in part], [r for _, r in part])
            except ScoreError as e:
                raise UserError(f"{args.generations}:{lines[start + e.row]}: scorer {e.scorer}: {e.reason}.") from None
            extra += scorer.metadata([p for p, _ in part], [r for _, r in part]) or [{}] * len(part)
            progress.update(task, advance=len(part))
    atomic_write_jsonl(args.out, [{**dict(zip(SCORE_FIELDS, (r["prompt_id"], r["sample_idx"], s))), **m}
                                  for r, s, m in zip(rows, scores, extra)])

    console = Console(highlight=False)
    sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
    console.print(f"{len(scores)} scores -> {args.out}: mean {statistics.fmean(scores):.4f} (sd {sd:.4f}), "
                  f"min {min(scores):.4f}, max {max(scores):.4f}")
    if scorer.score_type == "cost":
        safe = sum(s <= scorer.threshold for s in scores) / len(scores)
        console.print(f"safe rate (cost <= {scorer.threshold:g}): {safe:.3f}")
    return 0
